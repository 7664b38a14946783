"""Folder jobs with detection workers (facefit.batch): same files as one process, errors
reported the same way, and the torch-free pieces stay torch-free."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np

from facefit.coeffs_io import load_coeffs
from facefit.mesh_io import load_mesh
from facefit.reconstruction import run_batch

from conftest import DEV, REPO


def _folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    people = ("Tony_Blair", "Halle_Berry", "Colin_Powell")
    for k, person in enumerate(people):
        for j, p in enumerate(sorted((DEV / person).glob("*.jpg"))[:2]):
            shutil.copy(p, (src / "sub" if j else src) / f"{person}_{j}.jpg")
    (src / "text.jpg").write_text("not an image")
    cv2.imwrite(str(src / "blank.png"), np.full((90, 90, 3), 128, np.uint8))
    return src


def _run(src, out, checkpoint, workers, monkeypatch, **kw):
    monkeypatch.setenv("FACEFIT_WORKERS", str(workers))
    s = run_batch([src], out, checkpoint=checkpoint, progress=False, save_coeffs="json", batch_size=4, **kw)
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    return s, manifest


def test_workers_write_the_same_files_as_one_process(untrained_checkpoint, tmp_path, monkeypatch):
    src = _folder(tmp_path)
    s1, m1 = _run(src, tmp_path / "one", untrained_checkpoint, 0, monkeypatch)
    s2, m2 = _run(src, tmp_path / "two", untrained_checkpoint, 2, monkeypatch)
    assert (s1.processed, s1.failed, s1.faces) == (s2.processed, s2.failed, s2.faces) == (6, 2, 6)
    files1 = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert files1 == files2 and len(files1) == 6 * 4 + 1  # obj, mtl, texture, json per face + manifest
    for rel in files1:
        a, b = (tmp_path / "one" / rel), (tmp_path / "two" / rel)
        if rel.suffix in (".obj", ".mtl", ".png"):
            assert a.read_bytes() == b.read_bytes(), rel  # byte-identical
        elif rel.suffix == ".json" and rel.name != "manifest.jsonl":
            ra, rb = load_coeffs(a), load_coeffs(b)
            for key in ("shape_coeffs", "color_coeffs", "landmarks68", "box", "detector_score"):
                assert np.array_equal(np.asarray(ra[key]), np.asarray(rb[key])), (rel, key)
    # same manifest lines in the same order, timings aside
    def strip(manifest, out):
        return [json.loads(json.dumps({k: v for k, v in e.items() if k != "timing"}).replace(str(out), "OUT"))
                for e in manifest]

    assert strip(m1, tmp_path / "one") == strip(m2, tmp_path / "two")
    errors = {os.path.basename(e["input"]): e["error"] for e in m2 if e["status"] == "error"}
    assert set(errors) == {"text.jpg", "blank.png"} and "no face" in errors["blank.png"]
    assert load_mesh(tmp_path / "two" / "sub" / "Tony_Blair_1.obj").vertices.shape[1] == 3


def test_workers_skip_existing_and_photo_texture(untrained_checkpoint, tmp_path, monkeypatch):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    _run(src, out, untrained_checkpoint, 0, monkeypatch)
    done = out / "Tony_Blair_0.obj"
    mtime = done.stat().st_mtime_ns
    (out / "Halle_Berry_0.obj").unlink()  # one face to redo
    s, m = _run(src, out, untrained_checkpoint, 2, monkeypatch, skip_existing=True)
    assert (s.processed, s.skipped, s.failed) == (1, 5, 2)
    assert done.stat().st_mtime_ns == mtime and (out / "Halle_Berry_0.obj").is_file()
    assert [e["status"] for e in m if "Halle_Berry_0" in e["input"]] == ["ok"]

    # --texture photo needs the full image back from the worker: same texture as one process
    photo = sorted((DEV / "Colin_Powell").glob("*.jpg"))[:2]
    for workers, name in ((0, "t0"), (2, "t2")):
        monkeypatch.setenv("FACEFIT_WORKERS", str(workers))
        run_batch(photo, tmp_path / name, checkpoint=untrained_checkpoint, progress=False, texture="photo")
    for p in (tmp_path / "t0").glob("*_texture.png"):
        assert p.read_bytes() == (tmp_path / "t2" / p.name).read_bytes()


def test_detection_and_chips_load_without_torch():
    code = ("import sys, numpy as np\n"
            "from facefit.batch import workers\n"
            "from facefit.faces.chips import dlib_face_chip\n"
            "from facefit.faces.detection import detect_faces\n"
            "from facefit.faces.images import load_image\n"
            f"img = load_image({str(DEV / 'Tony_Blair')!r} + '/' + sorted(__import__('os').listdir({str(DEV / 'Tony_Blair')!r}))[0])\n"
            "status, (image, crops, timing) = workers.faces_of(None, 'x', img, 'dlib', False, 'dlib_chip', 150, False)\n"
            "assert status == 'ok' and crops[0][1].shape == (150, 150, 3)\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_chips_match_the_torch_alignment():
    import torch

    from facefit.faces.alignment import _dlib_chip_params
    from facefit.faces.chips import _DLIB_TEMPLATE_5, dlib_chip_params

    rng = np.random.default_rng(1)
    for _ in range(50):
        pts = 200 + _DLIB_TEMPLATE_5 * rng.uniform(40, 400) + rng.normal(0, 3, (5, 2))
        c, s, co, si = _dlib_chip_params(torch.as_tensor(pts)[None], 150, 0.25)
        c2, s2, co2, si2 = dlib_chip_params(pts, 150, 0.25)
        assert np.allclose(c[0].numpy(), c2, rtol=0, atol=1e-9)
        assert abs(float(s[0]) - s2) < 1e-12 and abs(float(co[0]) - co2) < 1e-12 and abs(float(si[0]) - si2) < 1e-12


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom facefit.cli import main\n"
            "rc = main(['--version']); assert rc == 0\n"
            "print('torch' in sys.modules, 'cv2' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"


def test_workers_die_with_a_killed_main_process():
    import time

    code = ("import os, signal\n"
            "from facefit.batch import workers\n"
            "from facefit.batch.ahead import _new_pool\n"
            "pool = _new_pool('yunet', 2)\n"
            "pids = {pool.submit(os.getpid).result() for _ in range(8)}\n"
            "print(' '.join(map(str, sorted(pids))), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == -9, r.stderr
    pids = [int(p) for p in r.stdout.split()]
    assert pids

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + 20
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_workers_start_after_opencv_threads_ran(untrained_checkpoint, tmp_path, monkeypatch):
    """A process whose OpenCV thread pool has run (resize, blur) forks workers that work."""
    img = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    for _ in range(3):
        cv2.resize(img, (600, 600), interpolation=cv2.INTER_AREA)
        cv2.GaussianBlur(img, (31, 31), 5)
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((DEV / "Tony_Blair").glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    monkeypatch.setenv("FACEFIT_WORKERS", "2")
    s = run_batch([src], tmp_path / "out", checkpoint=untrained_checkpoint, progress=False)
    assert s.processed == 2


def test_pyramid_down_in_uint16_is_exact():
    """dlib's pyramid level summed in uint16 (faster) equals the int32 sums, also for white."""
    from facefit.faces.chips import _pyramid_down

    def int32_reference(img):
        h, w = img.shape[:2]
        oh, ow = (h - 3) // 2, (w - 3) // 2
        x = img.astype(np.int32)
        k = (1, 4, 6, 4, 1)
        rows = sum(k[i] * x[:, i: i + 2 * ow: 2] for i in range(5))
        return (sum(k[i] * rows[i: i + 2 * oh: 2] for i in range(5)) // 256).astype(np.uint8)

    rng = np.random.default_rng(3)
    for img in (rng.integers(0, 256, (91, 64, 3), dtype=np.uint8), np.full((40, 33, 3), 255, np.uint8),
                rng.choice(np.array([0, 255], np.uint8), (50, 50, 3))):
        assert np.array_equal(_pyramid_down(img), int32_reference(img))


def test_two_workers_write_the_files_and_failures_stay_all_or_nothing(untrained_checkpoint, tmp_path, monkeypatch):
    """With two or more workers the files are written in the workers (not in this process);
    a face whose files cannot be written is reported as in one process, with none of its
    files left behind, and the manifest keeps input order."""
    import facefit.batch.job as recmod

    src = _folder(tmp_path)
    log = tmp_path / "writers.txt"
    real = recmod.write_outputs

    def logged(r, paths, *a, **kw):  # forked workers inherit this patch
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(r, paths, *a, **kw)

    monkeypatch.setattr(recmod, "write_outputs", logged)
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        (out / "Halle_Berry_0.obj").mkdir(parents=True)  # in the way of one face's mesh
        log.write_text("")
        s, m = _run(src, out, untrained_checkpoint, workers, monkeypatch)
        pids = {int(p) for p in log.read_text().split()}
        results[workers] = (s, m, out)
        if workers == 0:
            assert pids == {os.getpid()}
        else:
            assert pids and os.getpid() not in pids  # every face written by a worker
        assert (s.processed, s.failed) == (5, 3)
        bad = [e for e in m if e["input"].endswith("Halle_Berry_0.jpg")]
        assert len(bad) == 1 and bad[0]["status"] == "error" and "Halle_Berry_0.obj" in bad[0]["error"]
        left = sorted(p.name for p in out.iterdir() if p.name.startswith("Halle_Berry_0"))
        assert left == ["Halle_Berry_0.obj"]  # the blocking folder only: no .json, .mtl or texture
        assert not any(".tmp" in p.name for p in out.rglob("*"))

    (s0, m0, o0), (s2, m2, o2) = results[0], results[2]
    strip = [[(e["input"], e["status"], e.get("error", "").replace(str(o), "OUT"),
               [x.replace(str(o), "OUT") for x in e.get("outputs", [])]) for e in m] for m, o in ((m0, o0), (m2, o2))]
    assert strip[0] == strip[1]
    assert all("write" in e["timing"] for e in m2 if e["status"] == "ok")


def test_a_forked_child_writes_textured_objs(tmp_path, default_model):
    """The PNG helper thread of a process does not exist in a child forked from it: the
    child makes its own (else its first textured OBJ would wait forever)."""
    from facefit.mesh_io import FaceMesh, save_mesh

    m = default_model
    mesh = FaceMesh(m.mean_shape, m.triangles, colors=m.mean_color, uv=m.uv, uv_triangles=m.uv_triangles)
    save_mesh(mesh, tmp_path / "parent.obj")  # starts this process's helper thread
    pid = os.fork()
    if pid == 0:  # child: write, then leave without running pytest's teardown
        code = 1
        try:
            import signal

            signal.alarm(60)
            save_mesh(mesh, tmp_path / "child.obj")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "child_texture.png").read_bytes() == (tmp_path / "parent_texture.png").read_bytes()
