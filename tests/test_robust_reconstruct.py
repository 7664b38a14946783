"""Robustness of the batch job: SIGKILL midway + --skip-existing; a corpus of bad inputs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefit.cli import main
from facefit.errors import FacefitError
from facefit.mesh_io import load_mesh

from conftest import DEV, REPO


def _photos(n):
    people = sorted(p for p in DEV.iterdir() if p.is_dir())
    out = []
    for d in people:
        out.extend(sorted(d.glob("*.jpg"))[:2])
        if len(out) >= n:
            break
    return out[:n]


def _children(pid):
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_midway_then_skip_existing(untrained_checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    photos = _photos(10)
    for k, p in enumerate(photos):
        shutil.copy(p, src / f"p{k:02d}.jpg")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facefit", "reconstruct", str(src), "-o", str(out), "--checkpoint",
           str(untrained_checkpoint), "--batch-size", "1", "--skip-existing"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    manifest = out / "manifest.jsonl"
    partial = out / "manifest.jsonl.partial"  # the lines of a run in progress
    deadline = time.time() + 240
    while time.time() < deadline:
        if partial.exists() and len(partial.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    workers = _children(proc.pid)  # they write files too: they must be gone before counting
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < gone:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "the workers die with the killed main process"

    def meshes_of(folder):  # not the hidden temporary files a killed writer leaves
        return [m for m in folder.glob("*.obj") if not m.name.startswith(".")]

    done_first = len(meshes_of(out))
    assert 0 < done_first < len(photos), "the kill should land midway"
    for m in meshes_of(out):  # nothing truncated
        assert load_mesh(m).vertices.shape[0] > 1000
    # the killed run's manifest lines survived (each line is one fsync-ed write)
    assert not manifest.exists()
    killed_ok = {os.path.basename(e["input"]) for e in map(json.loads, partial.read_text().splitlines())
                 if e["status"] == "ok"}
    done = {m.stem + ".jpg" for m in meshes_of(out)}
    assert killed_ok and killed_ok <= done
    mtimes = {m.name: m.stat().st_mtime_ns for m in meshes_of(out)}
    (out / ".p09.obj.killed_1.tmp.obj").write_text("v 0 0 0\n")  # as a kill during a write leaves
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    meshes = sorted(p.name for p in out.glob("*.obj"))
    assert meshes == [f"p{k:02d}.obj" for k in range(len(photos))]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert not partial.exists()
    entries = [json.loads(l) for l in manifest.read_text().splitlines()]
    assert len(entries) == len(photos)  # the manifest describes the rerun: one line per input
    ok = [os.path.basename(e["input"]) for e in entries if e["status"] == "ok"]
    skipped = [os.path.basename(e["input"]) for e in entries if e["status"] == "skipped"]
    # each photo processed exactly once: the rerun skipped all the killed run finished (their
    # meshes untouched) and processed exactly the others
    assert set(skipped) == done and len(skipped) == done_first
    assert sorted(ok + skipped) == [f"p{k:02d}.jpg" for k in range(len(photos))]
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes


def _bad_corpus(d):
    """Bad inputs generated here (never committed)."""
    good = _photos(1)[0]
    shutil.copy(good, d / "good photo é.jpg")
    (d / "empty.jpg").write_bytes(b"")
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (d / "text.png").write_text("hello")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    # a PNG whose header claims 30000 x 30000 pixels (decompression bomb)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    arr = np.asarray(Image.open(good).convert("RGB"))
    Image.fromarray(arr).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(arr).convert("P").save(d / "palette.png")
    Image.fromarray(arr).convert("RGBA").save(d / "rgba.png")
    Image.fromarray((arr.astype(np.uint16) * 257)[..., 0]).save(d / "gray16.png")
    frames = [Image.fromarray(arr), Image.fromarray(arr[:, ::-1].copy())]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    upside = Image.fromarray(arr[::-1, ::-1].copy())
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    upside.save(d / "exif_upside_down.jpg", exif=exif)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(d / "no_face.png")
    two = np.concatenate([arr, arr], axis=1)
    Image.fromarray(two).save(d / "two_faces.png")
    unreadable = d / "unreadable.jpg"
    shutil.copy(good, unreadable)
    os.chmod(unreadable, 0)
    loop = d / "loop"
    loop.mkdir()
    os.symlink("..", loop / "back")  # a symlink loop
    return {
        "good photo é.jpg": "ok", "empty.jpg": "error", "truncated.jpg": None, "corrupt.png": "error",
        "text.png": "error", "tiny.png": "error", "bomb.png": "error", "cmyk.jpg": "ok", "palette.png": "ok",
        "rgba.png": "ok", "gray16.png": "ok", "anim.gif": "ok", "exif_upside_down.jpg": "ok",
        "no_face.png": "error", "two_faces.png": "ok",
        "unreadable.jpg": "ok" if os.geteuid() == 0 else "error",
    }


def test_bad_input_corpus_folder_mode(untrained_checkpoint, tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    expected = _bad_corpus(src)
    out = tmp_path / "out"
    t0 = time.time()
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint), "--all-faces"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    assert time.time() - t0 < 300  # the bomb was refused, not decoded
    entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    got = {os.path.basename(e["input"]): e for e in entries}
    for name, status in expected.items():
        assert name in got, name
        if status is not None:  # a truncated JPEG may still decode partially
            assert got[name]["status"] == status, (name, got[name])
        if got[name]["status"] == "error":
            assert "\n" not in got[name]["error"] and got[name]["error"]
    assert got["two_faces.png"]["faces"] == 2
    assert (out / "two_faces.obj").is_file() and (out / "two_faces_face1.obj").is_file()
    assert "bomb" in got["bomb.png"]["error"] or "pixels" in got["bomb.png"]["error"]
    # no partial output anywhere
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for m in out.rglob("*.obj"):
        assert load_mesh(m).vertices.shape[0] > 1000


@pytest.mark.parametrize("name", ["empty.jpg", "corrupt.png", "text.png", "bomb.png", "no_face.png"])
def test_bad_input_single_mode(untrained_checkpoint, tmp_path, capsys, name):
    src = tmp_path / "bad"
    src.mkdir()
    _bad_corpus(src)
    target = tmp_path / "face.obj"
    rc = main(["reconstruct", str(src / name), "-o", str(target), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not target.exists() and not list(tmp_path.glob("*.tmp*"))


def test_read_only_output_folder(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    import facefit.atomic as atomic

    def refuse(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)  # the disk fills up at the last moment
    target = tmp_path / "face.obj"
    rc = main(["reconstruct", str(_photos(1)[0]), "-o", str(target), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "space" in err and "Traceback" not in err
    assert not target.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def _disk_full_for(monkeypatch, names):
    """The disk fills up when the files called ``names`` are committed (other writes work)."""
    import errno

    import facefit.atomic as atomic

    real = os.replace

    def replace(src, dst, *a, **k):
        if os.path.basename(dst) in names:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_failed_write_leaves_no_partial_item(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    a, b = _photos(2)
    shutil.copy(a, src / "p00.jpg")
    shutil.copy(b, src / "p01.jpg")
    arr = np.asarray(Image.open(a).convert("RGB"))
    Image.fromarray(np.concatenate([arr, arr], axis=1)).save(src / "two_faces.png")
    out = tmp_path / "out"
    # the mesh (written last) fails: the coefficients, turntable and texture written before it go too;
    # for a photo with two faces, the second face failing takes the first face's files with it
    _disk_full_for(monkeypatch, {"p01.obj", "two_faces_face1.obj"})
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint), "--all-faces",
               "--save-coeffs", "json", "--render", "--render-size", "32"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    got = {os.path.basename(e["input"]): e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert got["p00.jpg"]["status"] == "ok"
    for name in ("p01.jpg", "two_faces.png"):
        assert got[name]["status"] == "error" and "no space left" in got[name]["error"], got[name]
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(("p01", "two_faces"))], left
    assert not [n for n in left if ".tmp" in n]
    for suffix in (".obj", ".json", "_turntable.gif", "_turntable.mp4", "_turntable_views.png"):
        assert (out / f"p00{suffix}").stat().st_size > 0  # the good item is complete
    assert all(os.path.isfile(p) for p in got["p00.jpg"]["outputs"])


def test_unreadable_subfolder_is_reported(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    (src / "open").mkdir()
    shutil.copy(_photos(1)[0], src / "open" / "a.jpg")
    shutil.copy(_photos(1)[0], src / "locked" / "b.jpg")
    real = os.scandir

    def scandir(path="."):  # tests run as root, where chmod cannot take read access away
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(os.path.basename(e["input"]), e["status"]) for e in entries] == [("locked", "error"), ("a.jpg", "ok")]
    assert "cannot read folder" in entries[0]["error"] and "Permission denied" in entries[0]["error"]
    assert "cannot read folder" in err  # shown in the summary, counted as failed
    from facefit.reconstruction import expand_inputs, run_batch

    errors = []
    assert [rel for _, rel in expand_inputs([src], errors)] == ["open/a"] and len(errors) == 1
    with pytest.raises(FacefitError, match="cannot read folder"):
        expand_inputs([src])  # without an error list: raised
    s = run_batch([src], tmp_path / "out2", checkpoint=untrained_checkpoint, progress=False)
    assert (s.processed, s.failed) == (1, 1)


def test_unexpected_error_in_one_item_does_not_stop_the_batch(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    import facefit.texturing as texturing

    src = tmp_path / "in"
    src.mkdir()
    for k, p in enumerate(_photos(3)):
        shutil.copy(p, src / f"p{k}.jpg")

    def texture(model, recon, image, **kw):
        if recon.source.endswith("p1.jpg"):
            raise ValueError("index 70 is out of bounds\nfor axis 0")
        return recon.mesh

    monkeypatch.setattr(texturing, "texture_from_photo", texture)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint), "--texture", "photo"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    got = {os.path.basename(e["input"]): e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert [got[f"p{k}.jpg"]["status"] for k in range(3)] == ["ok", "error", "ok"]
    assert got["p1.jpg"]["error"] == "ValueError: index 70 is out of bounds for axis 0"
    assert sorted(p.name for p in out.glob("*.obj")) == ["p0.obj", "p2.obj"]


def test_unreadable_photo_is_one_line_in_single_and_folder_mode(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    """Permission denied (simulated at the open: the tests run as root, where chmod 000
    changes nothing): one line naming the file, exit 1, nothing written; in a folder a
    manifest entry. Typer's own multi-line 'not readable' usage error must not appear."""
    from PIL import Image as PILImage

    src = tmp_path / "in"
    src.mkdir()
    locked = src / "locked.jpg"
    shutil.copy(_photos(1)[0], locked)
    real_open = PILImage.open

    def guarded(fp, *a, **k):
        if os.fspath(fp) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(PILImage, "open", guarded)
    out = tmp_path / "one.obj"
    rc = main(["reconstruct", str(locked), "-o", str(out), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == f"error: {locked}: permission denied"
    assert not out.exists()
    rc = main(["reconstruct", str(src), "-o", str(tmp_path / "dir"), "--checkpoint", str(untrained_checkpoint)])
    capsys.readouterr()
    entry = json.loads((tmp_path / "dir" / "manifest.jsonl").read_text().splitlines()[0])
    assert rc == 1 and entry["status"] == "error" and entry["error"].endswith("permission denied")
