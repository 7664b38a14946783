"""Robustness: training killed with SIGKILL resumes to the same parameters; arbitrary bytes
never crash image loading; eval and render refuse bad input in one line."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facefit.cli import main
from facefit.errors import InvalidFileError
from facefit.faces.images import load_image

from conftest import REPO, chmod_is_effective

TRAIN = ["train", "--set", "stage=1", "--set", "stage1_steps=40", "--set", "batch_stage1=2",
         "--set", "render_size=64", "--set", "hidden=[16]", "--set", "checkpoint_every=1",
         "--set", "sample_every=0", "--set", "device=cpu", "--set", "seed=5", "--set", "threads=1",
         "--set", "deterministic=true"]


def test_training_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "facefit"] + TRAIN
    a, b = tmp_path / "a", tmp_path / "b"
    r = subprocess.run(base + ["--out", str(a), "--max-steps", "12"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(base + ["--out", str(b), "--max-steps", "12"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    log = b / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = torch.load(b / "checkpoint.pt", weights_only=True)  # never half-written
    assert 0 < ck["step"] < 12, "the kill should land midway"
    # a kill during a checkpoint write leaves a hidden temp file; make that case certain
    (b / ".checkpoint.pt.killed_1.tmp.pt").write_bytes(b"half-written")
    r = subprocess.run(base + ["--out", str(b), "--resume", "--max-steps", "12"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 12
    for k in ca["decoder"]:
        assert torch.equal(ca["decoder"][k], cb["decoder"][k]), k
    assert not [p for p in b.iterdir() if ".tmp" in p.name]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".tif", ".webp"]),
       header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00"]))
def test_arbitrary_bytes_never_crash_image_loading(tmp_path, data, suffix, header):
    p = tmp_path / f"x{suffix}"
    p.write_bytes(header + data)
    try:
        img = load_image(p)
    except InvalidFileError as e:
        assert "\n" not in str(e) and str(p.name) in str(e)
    else:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def _valid_mesh_bytes():
    """A small facefit mesh in each format, written once (the fuzz test corrupts them)."""
    global _MESH_BYTES
    try:
        return _MESH_BYTES
    except NameError:
        pass
    import tempfile

    from facefit.mesh_io import FaceMesh, save_mesh

    rng = np.random.default_rng(0)
    v = rng.normal(size=(12, 3)) * 10
    tri = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7], [8, 9, 10], [1, 4, 11]])
    mesh = FaceMesh(v, tri, colors=rng.uniform(size=(12, 3)))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for suf in (".obj", ".ply", ".glb"):
            save_mesh(mesh, Path(d) / f"m{suf}")
            out[suf] = (Path(d) / f"m{suf}").read_bytes()
    _MESH_BYTES = out
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".obj", ".ply", ".glb"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
       junk=st.binary(max_size=64))
def test_corrupted_mesh_files_never_crash_loading(tmp_path, suffix, cut, flips, junk):
    """Truncated, bit-flipped and junk-extended mesh files: a mesh or one clean error."""
    from facefit.errors import FacefitError
    from facefit.mesh_io import load_mesh

    data = bytearray(_valid_mesh_bytes()[suffix])
    for where, byte in flips:
        data[min(len(data) - 1, int(where * len(data)))] = byte
    data = bytes(data[: max(0, int(cut * len(data)))]) + junk
    p = tmp_path / f"x{suffix}"
    p.write_bytes(data)
    try:
        m = load_mesh(p)
    except FacefitError as e:
        assert "\n" not in str(e)
    else:
        assert np.isfinite(m.vertices).all() and (m.triangles < len(m.vertices)).all() and (m.triangles >= 0).all()


def test_eval_and_render_refuse_bad_input(tmp_path, capsys):
    for args in (["eval", "identity", str(tmp_path / "missing"), "-o", str(tmp_path / "r")],
                 ["eval", "micc", str(tmp_path / "missing"), "-o", str(tmp_path / "r")],
                 ["render", str(tmp_path / "x.ply"), "-o", str(tmp_path / "r.png")]):
        if args[0] == "render":
            (tmp_path / "x.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")
        rc = main(args)
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err, args
        assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.png").exists()


# ------------------------------------------------------------------ coefficient files


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "Error:" not in err.split("error:", 1)[1], err  # no "ValueError: ..."
    return err


@pytest.mark.parametrize("name,content,expect", [
    ("many.json", {"shape_coeffs": [0.0] * 5, "color_coeffs": [0.0] * 32},
     "color_coeffs has 32 coefficients but the model 'ict-face' has 30"),
    ("many_shape.npz", {"shape_coeffs": np.zeros(101, np.float32)},
     "shape_coeffs has 101 coefficients but the model 'ict-face' has 100"),
    ("many_expr.json", {"shape_coeffs": [0.0], "expr_coeffs": [0.0] * 54}, "expr_coeffs has 54 coefficients"),
    ("text.json", {"shape_coeffs": ["a", 1.0]}, "shape_coeffs holds non-numeric values"),
    ("text.npz", {"shape_coeffs": np.array(["a", "b"])}, "shape_coeffs holds non-numeric values"),
    ("bool.json", {"shape_coeffs": [True, False]}, "shape_coeffs holds non-numeric values"),
    ("ragged.json", {"shape_coeffs": [[1.0, 2.0], [3.0]]}, "shape_coeffs must be a flat list of numbers"),
    ("matrix.json", {"shape_coeffs": [[1.0, 2.0], [3.0, 4.0]]}, "shape_coeffs must be a 1-D array"),
    ("complex.npz", {"shape_coeffs": np.array([1 + 2j, 0j])}, "shape_coeffs holds complex numbers"),
    ("overflow.json", '{"shape_coeffs": [1e39, 0.0]}', "shape_coeffs[0] = 1e+39 is too large"),
    ("infinite.json", '{"shape_coeffs": [0.0, 1e400]}', "shape_coeffs[1] is not a finite number"),
    ("nan.npz", {"shape_coeffs": np.array([0.0, np.nan], np.float32)}, "shape_coeffs[1] is not a finite number"),
    ("notdict.json", "[1, 2, 3]", "not a facefit coefficient file (the JSON is not an object)"),
    ("broken.json", '{"shape', "not a facefit coefficient file (invalid JSON"),
    ("junk.npz", "\x00junk", "not a facefit coefficient file (not a valid .npz archive)"),
    ("pickled.npz", {"shape_coeffs": np.array([{"a": 1}], dtype=object)}, "holds pickled objects; refusing"),
])
def test_render_refuses_bad_coefficient_files(tmp_path, capsys, recwarn, name, content, expect):
    import json

    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".json"):
        path.write_text(json.dumps(content))
    else:
        np.savez(path, **content)
    out = tmp_path / "face.png"
    rc = main(["render", str(path), "-o", str(out)])
    err = _one_line_error(capsys)
    assert rc != 0 and expect in err and str(path) in err, err
    assert not [str(w.message) for w in recwarn if issubclass(w.category, (RuntimeWarning, np.exceptions.ComplexWarning))]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [name]


def test_valid_coefficient_files_still_load(tmp_path):
    from facefit.coeffs_io import load_coeffs, save_coeffs
    from facefit.turntable import load_renderable

    rec = {"shape_coeffs": np.linspace(-1, 1, 10), "color_coeffs": np.zeros(3), "model_name": "ict-face"}
    for suffix in (".json", ".npz"):
        p = save_coeffs(rec, tmp_path / f"c{suffix}")
        back = load_coeffs(p)
        assert back["shape_coeffs"].dtype == np.float32 and len(back["shape_coeffs"]) == 10
        mesh = load_renderable(p)  # fewer coefficients than the model has: the rest are zero
        assert np.isfinite(mesh.vertices).all() and len(mesh.vertices) > 1000


# ------------------------------------------------------------------ eval output folders


def _no_computation(monkeypatch):
    """Make any eval computation fail loudly, so a refusal must come before it."""
    import facefit.cli_eval as ce
    import facefit.evaluation.identity as ident

    def boom(*a, **k):
        raise AssertionError("the computation started before --out was checked")

    monkeypatch.setattr(ce, "_reconstructor", boom)
    monkeypatch.setattr(ident, "evaluate_identity", boom)


def _eval_args(kind, tmp_path, out):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return {"identity": ["eval", "identity", str(data), "-o", str(out)],
            "micc": ["eval", "micc", str(data), "-o", str(out)],
            "synthetic": ["eval", "synthetic", "--n", "2", "-o", str(out)]}[kind]


@pytest.mark.parametrize("kind", ["identity", "micc", "synthetic"])
def test_eval_refuses_a_file_as_output_folder_first(tmp_path, capsys, monkeypatch, kind):
    _no_computation(monkeypatch)
    out = tmp_path / "report.md"
    out.write_text("precious")
    rc = main(_eval_args(kind, tmp_path, out))
    err = _one_line_error(capsys)
    assert rc != 0 and "it is a file, not a folder" in err and str(out) in err, err
    assert out.read_text() == "precious"
    # a missing parent folder is fine (it is created), but not one whose parent is a file
    rc = main(_eval_args(kind, tmp_path, out / "sub"))
    err = _one_line_error(capsys)
    assert rc != 0 and "is a file, not a folder" in err, err


@pytest.mark.parametrize("kind", ["identity", "micc", "synthetic"])
@pytest.mark.parametrize("missing", [False, True])
def test_eval_refuses_a_read_only_output_folder_first(tmp_path, capsys, monkeypatch, kind, missing):
    import errno
    import tempfile

    _no_computation(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    if chmod_is_effective(tmp_path):
        ro.chmod(0o500)
    else:  # root: simulate what a read-only folder answers
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = ro / "new" / "report" if missing else ro
    try:
        rc = main(_eval_args(kind, tmp_path, out))
    finally:
        ro.chmod(0o700)
    err = _one_line_error(capsys)
    assert rc != 0 and "permission denied" in err and str(out) in err, err
    assert list(ro.iterdir()) == []


def test_cli_never_answers_unreadable_paths_with_a_usage_error(tmp_path, capsys, monkeypatch):
    """The CLI layer's own 'path is not readable' check would print a multi-line usage
    error (exit 2); facefit reports unreadable files itself, in one line. Simulated with
    os.access (the tests run as root, where chmod 000 changes nothing)."""
    from facefit.cli import main

    locked = tmp_path / "locked.jpg"
    locked.write_bytes(b"x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (
        os.fspath(p) == os.fspath(locked) and mode & os.R_OK) else real_access(p, mode, *a, **k))
    for args in (["reconstruct", str(locked), "-o", str(tmp_path / "a.obj")],
                 ["render", str(locked), "-o", str(tmp_path / "a.png")],
                 ["eval", "identity", str(locked), "-o", str(tmp_path / "ev")],
                 ["model", "import", "ict", str(locked)]):
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 1 and "Usage:" not in err and len(err.strip().splitlines()) == 1, (args, err)
