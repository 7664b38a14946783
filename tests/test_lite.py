"""The torch-free engine of plain reconstructions (facefit.batch.lite): the same files as the torch
path within the documented tolerance, no torch in the main process, the torch path where a
job needs it, and clear errors."""
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from facefit.errors import FacefitError
from facefit.batch.lite import lite_reason, load_lite, make_lite_reconstructor
from facefit.reconstruction import run_batch

from conftest import DEV, REPO

# the tolerance documented in docs/speed.md ("Plain reconstructions without torch")
TOL_MM, TOL_COLOR, TOL_COEFF, TOL_PIXEL = 1e-3, 1e-5, 1e-4, 1


def _photos(tmp_path, people=("Tony_Blair", "Halle_Berry", "Colin_Powell")):
    src = tmp_path / "in"
    src.mkdir()
    for person in people:
        p = sorted((DEV / person).glob("*.jpg"))[0]
        shutil.copy(p, src / p.name)
    return src


def _obj_lines(path):
    v, other = [], []
    for line in path.read_text().splitlines():
        (v if line.startswith("v ") else other).append(line)
    return np.array([[float(x) for x in line.split()[1:]] for line in v]), other


def _strip(manifest, out):
    return [{k: val for k, val in json.loads(line.replace(str(out), "OUT")).items() if k != "timing"}
            for line in manifest.read_text().splitlines()]


def test_lite_files_match_the_torch_path(tmp_path, monkeypatch):
    """Shipped regressor, real faces-dev photos: only the vertex/colour numbers differ, by
    less than the documented tolerance; texture pixels by at most one level."""
    src = _photos(tmp_path)
    (src / "broken.jpg").write_text("not an image")
    monkeypatch.setenv("FACEFIT_WORKERS", "2")
    s_lite = run_batch([src], tmp_path / "lite", progress=False, save_coeffs="json")
    monkeypatch.setenv("FACEFIT_ENGINE", "torch")
    s_torch = run_batch([src], tmp_path / "torch", progress=False, save_coeffs="json")
    assert (s_lite.engine, s_torch.engine) == ("lite", "torch")
    assert (s_lite.processed, s_lite.failed) == (s_torch.processed, s_torch.failed) == (3, 1)
    assert _strip(tmp_path / "lite" / "manifest.jsonl", tmp_path / "lite") == \
        _strip(tmp_path / "torch" / "manifest.jsonl", tmp_path / "torch")
    for obj in sorted((tmp_path / "lite").glob("*.obj")):
        twin = tmp_path / "torch" / obj.name
        va, other_a = _obj_lines(obj)
        vb, other_b = _obj_lines(twin)
        assert other_a == other_b  # header, provenance, vt, f: identical text
        assert va.shape == vb.shape == (9409, 6)
        assert np.abs(va[:, :3] - vb[:, :3]).max() < TOL_MM
        assert np.abs(va[:, 3:] - vb[:, 3:]).max() < TOL_COLOR
        assert obj.with_suffix(".mtl").read_bytes() == twin.with_suffix(".mtl").read_bytes()
        ta = cv2.imread(str(obj.with_name(obj.stem + "_texture.png"))).astype(int)
        tb = cv2.imread(str(twin.with_name(twin.stem + "_texture.png"))).astype(int)
        assert np.abs(ta - tb).max() <= TOL_PIXEL and (ta != tb).mean() < 1e-3
        ca, cb = (json.loads(p.with_suffix(".json").read_text()) for p in (obj, twin))
        for key in ("shape_coeffs", "color_coeffs"):
            assert np.abs(np.asarray(ca[key]) - np.asarray(cb[key])).max() < TOL_COEFF
        for key in ("box", "landmarks68", "detector_score", "regressor_sha256", "regressor_step", "model_hash"):
            assert ca[key] == cb[key], key


def test_lite_workers_and_one_process_write_the_same_bytes(untrained_checkpoint, tmp_path, monkeypatch):
    src = _photos(tmp_path, ("Tony_Blair", "Colin_Powell"))
    for workers in (0, 2):
        monkeypatch.setenv("FACEFIT_WORKERS", str(workers))
        s = run_batch([src], tmp_path / f"w{workers}", checkpoint=untrained_checkpoint, progress=False)
        assert s.engine == "lite" and s.processed == 2
    for p in (tmp_path / "w0").iterdir():
        if p.name != "manifest.jsonl":
            assert p.read_bytes() == (tmp_path / "w2" / p.name).read_bytes(), p.name


def test_plain_reconstruct_does_not_import_torch(tmp_path):
    make_lite_reconstructor()  # the cached decoder and encoder exist (their first export needs torch)
    photo = sorted((DEV / "Tony_Blair").glob("*.jpg"))[0]
    src = _photos(tmp_path, ("Halle_Berry", "Colin_Powell"))
    code = ("import sys\nfrom facefit.cli import main\n"
            f"assert main(['reconstruct', {str(photo)!r}, '-o', {str(tmp_path / 'face.obj')!r}]) == 0\n"
            f"assert main(['reconstruct', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}, '--save-coeffs', 'npz']) == 0\n"
            "from facefit.faces.detection import _CACHE\n"
            "print('torch' in sys.modules, 'dlib' in _CACHE)\n")
    # everything in the main process / detection + encoding in a worker / two workers, which
    # share the dlib models the main process loaded before forking them (prestart's preload)
    for workers, preloaded in (("0", "True"), ("1", "False"), ("2", "True")):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**__import__("os").environ, "FACEFIT_WORKERS": workers})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == f"False {preloaded}"
        assert (tmp_path / "face.obj").is_file() and (tmp_path / "out" / "Colin_Powell_0001.npz").is_file()


def test_which_jobs_need_torch(monkeypatch):
    monkeypatch.delenv("FACEFIT_ENGINE", raising=False)
    assert lite_reason() is None and lite_reason(texture=None, device="cpu") is None
    assert lite_reason(refine=40) == "refine"
    assert lite_reason(render=True) == "render"
    assert lite_reason(texture="photo") == "texture photo"
    for flag in ("fuse", "head", "blendshapes", "pose"):
        assert lite_reason(**{flag: True}) == flag
    assert lite_reason(device="cuda") == "device cuda"
    monkeypatch.setenv("FACEFIT_ENGINE", "torch")
    assert lite_reason() == "FACEFIT_ENGINE=torch"
    monkeypatch.setenv("FACEFIT_ENGINE", "tensorflow")
    with pytest.raises(FacefitError, match="FACEFIT_ENGINE must be 'auto' or 'torch', not 'tensorflow'"):
        lite_reason()


def test_bad_engine_setting_is_one_line(tmp_path):
    photo = sorted((DEV / "Tony_Blair").glob("*.jpg"))[0]
    r = subprocess.run([sys.executable, "-m", "facefit", "reconstruct", str(photo), "-o", str(tmp_path / "f.obj")],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**__import__("os").environ, "FACEFIT_ENGINE": "fast"})
    assert r.returncode == 1
    assert r.stderr.strip() == "error: FACEFIT_ENGINE must be 'auto' or 'torch', not 'fast'"


def test_other_encoders_and_broken_caches(default_model, tmp_path, monkeypatch):
    import torch

    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    monkeypatch.setenv("FACEFIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    facenet = tmp_path / "facenet.pt"
    save_checkpoint(make_checkpoint(Decoder(512, default_model.n_shape, default_model.n_color, hidden=(8,)),
                                    "facenet", default_model.content_hash, default_model.name), facenet)
    assert load_lite(facenet, default_model) is None  # another encoder: the torch path does the job
    dlib = tmp_path / "dlib.pt"
    dec = Decoder(256, default_model.n_shape, default_model.n_color, hidden=(8,), init_scale=0.05)
    save_checkpoint(make_checkpoint(dec, "dlib", default_model.content_hash, default_model.name), dlib)
    first = load_lite(dlib, default_model)
    for cached in (tmp_path / "cache" / "lite").glob("regressor-*.npz"):
        cached.write_bytes(b"garbage")  # a damaged cache file is made again
    again = load_lite(dlib, default_model)
    feats = np.random.default_rng(0).uniform(0, 2, (3, 256)).astype(np.float32)
    for a, b in zip(first.decode(feats), again.decode(feats)):
        assert np.array_equal(a, b)
    with torch.no_grad():
        s, c = dec(torch.from_numpy(feats))
    assert np.abs(first.decode(feats)[0] - s.numpy()).max() < 1e-5
    assert np.abs(first.decode(feats)[1] - c.numpy()).max() < 1e-5
    # a checkpoint of another morphable model: the torch path's message
    other = tmp_path / "other.pt"
    save_checkpoint(make_checkpoint(dec, "dlib", "0123456789abcdef", "elsewhere"), other)
    with pytest.raises(FacefitError, match="trained for morphable model 'elsewhere'"):
        load_lite(other, default_model)


def test_onnx_encoder_matches_the_torch_network():
    import torch

    from facefit.faces.chips import dlib_chip_of_face
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image
    from facefit.batch.lite import encode_chip, features_onnx_path
    from facefit.recognition import get_net

    from facefit.batch.lite import _BLOCKS
    from facefit.recognition.dlib_resnet import DLIB_BLOCKS

    assert _BLOCKS == DLIB_BLOCKS  # (repeated in facefit.batch.lite, which must not import torch)
    net = get_net("dlib")
    onnx = features_onnx_path()
    for person in ("Tony_Blair", "Halle_Berry"):
        img = load_image(sorted((DEV / person).glob("*.jpg"))[0])
        chip = dlib_chip_of_face(img, detect_faces(img)[0], 150)
        with torch.no_grad():
            ref = net.features(torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 255.0)[0].numpy()
        got = encode_chip(onnx, chip)
        assert got.shape == (256,) and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-5


def test_no_room_for_the_encoder_file_means_the_torch_path(tmp_path, monkeypatch, untrained_checkpoint):
    import facefit.batch.lite as lite

    def no_room(path, write):  # the cache folder takes nothing (read-only, full disk, ...)
        return None

    monkeypatch.setenv("FACEFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lite, "atomic_write_bytes", no_room)
    assert make_lite_reconstructor(untrained_checkpoint) is None
    monkeypatch.setenv("FACEFIT_WORKERS", "0")
    s = run_batch([sorted((DEV / "Tony_Blair").glob("*.jpg"))[0]], tmp_path / "face.obj",
                  checkpoint=untrained_checkpoint, progress=False)
    assert s.engine == "torch" and s.processed == 1 and (tmp_path / "face.obj").is_file()


def test_python_api_plain_calls_run_without_torch_and_match(untrained_checkpoint, tmp_path, monkeypatch):
    """facefit.reconstruct() without a reconstructor takes the torch-free engine for plain
    calls: the same faces, coefficients and meshes as the torch Reconstructor within the
    documented tolerance; FACEFIT_ENGINE=torch and torch-only options take the torch path."""
    from facefit.batch.lite import LiteReconstructor
    from facefit.reconstruction import Reconstructor, reconstruct

    photos = [sorted((DEV / p).glob("*.jpg"))[0] for p in ("Tony_Blair", "Colin_Powell")]
    image = cv2.cvtColor(cv2.imread(str(photos[1])), cv2.COLOR_BGR2RGB)
    lite = reconstruct([photos[0], image], checkpoint=untrained_checkpoint)
    ref = reconstruct([photos[0], image], reconstructor=Reconstructor(untrained_checkpoint))
    assert [r.source for r in lite] == [r.source for r in ref] and len(lite) == 2
    for a, b in zip(lite, ref):
        assert np.array_equal(a.box, b.box) and np.array_equal(a.landmarks68, b.landmarks68)
        assert np.abs(a.shape_coeffs - b.shape_coeffs).max() < TOL_COEFF
        assert np.abs(a.color_coeffs - b.color_coeffs).max() < TOL_COEFF
        assert np.abs(a.mesh.vertices - b.mesh.vertices).max() < TOL_MM
        assert np.abs(a.mesh.colors - b.mesh.colors).max() < TOL_COLOR
        assert a.mesh.meta == b.mesh.meta and a.features.shape == b.features.shape == (256,)
        assert a.timing["encode"] > 0
    seen = []
    real = Reconstructor.__init__

    def spy(self, *a, **kw):
        seen.append(kw)
        real(self, *a, **kw)

    monkeypatch.setattr(Reconstructor, "__init__", spy)
    reconstruct(photos[0], checkpoint=untrained_checkpoint)
    assert seen == []  # the lite engine
    monkeypatch.setenv("FACEFIT_ENGINE", "torch")
    reconstruct(photos[0], checkpoint=untrained_checkpoint)
    assert len(seen) == 1
    monkeypatch.delenv("FACEFIT_ENGINE")
    reconstruct(photos[0], checkpoint=untrained_checkpoint, fuse=True)  # fuse needs torch
    assert len(seen) == 2
    assert isinstance(make_lite_reconstructor(untrained_checkpoint), LiteReconstructor)

    code = ("import sys, facefit\n"
            f"r = facefit.reconstruct({str(photos[0])!r})\n"
            "print(len(r), r[0].mesh.vertices.shape[0], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "9409", "False"]


def test_combined_encoder_runs_without_torch_and_matches(default_model, tmp_path, monkeypatch):
    """A ``dlib+facenet`` regressor: the engine's ONNX encoder (exported from torch once) gives
    the torch path's features, coefficients and manifest on real photos."""
    import torch

    from facefit.batch.lite import LITE_ENCODERS, encode_chip, features_onnx_path
    from facefit.recognition import get_net
    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    dec = Decoder(768, default_model.n_shape, default_model.n_color, hidden=(32,), init_scale=0.05)
    ckpt = tmp_path / "combined.pt"
    save_checkpoint(make_checkpoint(dec, "dlib+facenet", default_model.content_hash, default_model.name), ckpt)
    lite = make_lite_reconstructor(ckpt)
    assert lite is not None and (lite.encoder.crop, lite.encoder.input_size) == LITE_ENCODERS["dlib+facenet"][:2]
    onnx = features_onnx_path(encoder="dlib+facenet")
    assert onnx == features_onnx_path(encoder="dlib+facenet")  # cached (and its graph hash remembered)
    from facefit.faces.alignment import crop_for_net
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    img = load_image(sorted((DEV / "Halle_Berry").glob("*.jpg"))[0])
    wide = crop_for_net(img, detect_faces(img)[0], "dlib_wide")
    with torch.no_grad():
        ref = get_net("dlib+facenet").features(torch.from_numpy(wide).permute(2, 0, 1)[None].float() / 255.0)[0]
    got = encode_chip(onnx, wide)
    assert got.shape == (768,) and np.abs(got - ref.numpy()).max() < 1e-4
    src = _photos(tmp_path, ("Tony_Blair", "Colin_Powell"))
    monkeypatch.setenv("FACEFIT_WORKERS", "2")
    s_lite = run_batch([src], tmp_path / "lite", checkpoint=ckpt, progress=False, save_coeffs="json")
    monkeypatch.setenv("FACEFIT_ENGINE", "torch")
    s_torch = run_batch([src], tmp_path / "torch", checkpoint=ckpt, progress=False, save_coeffs="json")
    assert (s_lite.engine, s_torch.engine) == ("lite", "torch") and s_lite.processed == s_torch.processed == 2
    assert _strip(tmp_path / "lite" / "manifest.jsonl", tmp_path / "lite") == \
        _strip(tmp_path / "torch" / "manifest.jsonl", tmp_path / "torch")
    for p in sorted((tmp_path / "lite").glob("*.json")):
        a, b = json.loads(p.read_text()), json.loads((tmp_path / "torch" / p.name).read_text())
        for key in ("shape_coeffs", "color_coeffs"):
            assert np.abs(np.asarray(a[key]) - np.asarray(b[key])).max() < TOL_COEFF
