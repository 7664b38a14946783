"""The command line: help, version, render, model info, errors as one line."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facefit import __version__
from facefit.cli import main
from facefit.mesh_io import FaceMesh, save_mesh


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_version(capsys):
    rc, out, _ = run(["--version"], capsys)
    assert rc == 0 and out.strip() == f"facefit {__version__}"


@pytest.mark.parametrize("cmd", [[], ["render"], ["model"], ["model", "import"], ["model", "info"],
                                 ["model", "list"], ["model", "fetch"], ["model", "build-albedo"]])
def test_every_command_has_help(cmd, capsys):
    rc, out, _ = run(cmd + ["--help"], capsys)
    assert rc == 0
    assert "Usage" in out and len(out.splitlines()) > 4


def test_console_script_runs():
    exe = [sys.executable, "-m", "facefit", "--version"]
    r = subprocess.run(exe, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and __version__ in r.stdout


def test_render_random_turntable(tmp_path, capsys):
    rc, out, err = run(["render", "--random", "--turntable", "--frames", "6", "--size", "96",
                        "-o", str(tmp_path / "face")], capsys)
    assert rc == 0, err
    gif, mp4, sheet = tmp_path / "face.gif", tmp_path / "face.mp4", tmp_path / "face_views.png"
    for p in (gif, mp4, sheet):
        assert p.is_file() and p.stat().st_size > 0
    with Image.open(gif) as im:
        assert im.n_frames >= 4  # Pillow may merge identical frames; 6 distinct yaws here
    sheet_img = np.asarray(Image.open(sheet).convert("RGB"))
    assert sheet_img.shape[1] >= 5 * 96  # five views side by side
    # the frontal view (middle third) has a face: non-background skin-coloured pixels
    mid = sheet_img[:, sheet_img.shape[1] * 2 // 5: sheet_img.shape[1] * 3 // 5]
    skin = (mid[..., 0] > mid[..., 2] + 20)
    assert skin.mean() > 0.05
    assert not list(tmp_path.glob("*.tmp*"))


def test_render_mesh_still(tmp_path, capsys):
    # a small square facing the camera, red
    v = np.array([[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    c = np.tile([[0.9, 0.1, 0.1]], (4, 1)).astype(np.float32)
    save_mesh(FaceMesh(v, f, colors=c), tmp_path / "sq.ply")
    rc, _, err = run(["render", str(tmp_path / "sq.ply"), "-o", str(tmp_path / "sq.png"), "--size", "64"], capsys)
    assert rc == 0, err
    img = np.asarray(Image.open(tmp_path / "sq.png").convert("RGB")).astype(int)
    centre = img[28:36, 28:36]
    assert (centre[..., 0] > centre[..., 1] + 50).all()  # red square in the middle
    corner = img[0:3, 0:3]
    assert (abs(corner[..., 0] - corner[..., 1]) < 5).all()  # grey background


def test_render_errors_are_one_line(tmp_path, capsys):
    rc, out, err = run(["render", str(tmp_path / "missing.obj"), "-o", str(tmp_path / "x.png")], capsys)
    assert rc == 1
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()

    bad = tmp_path / "bad.obj"
    bad.write_bytes(b"\x00\x01garbage")
    rc, _, err = run(["render", str(bad), "-o", str(tmp_path / "y.png")], capsys)
    assert rc == 1 and "Traceback" not in err and not (tmp_path / "y.png").exists()

    rc, _, err = run(["render", "--random", "-o", str(tmp_path / "z.jpg")], capsys)
    assert rc == 1 and "PNG" in err and not (tmp_path / "z.jpg").exists()

    rc, _, err = run(["render", "-o", str(tmp_path / "z.png")], capsys)
    assert rc == 1 and "--random" in err


def test_model_info_and_list(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFIT_MODEL_DIR", str(tmp_path / "store"))
    rc, out, err = run(["model", "info"], capsys)
    assert rc == 0, err
    assert "9409" in out and "content_hash" in out
    assert "statistical PCA from" in out  # the shipped albedo model is attached
    rc, out, _ = run(["model", "list"], capsys)
    assert rc == 0 and "no models" in out


def test_model_fetch_offline_fails_clearly(capsys, tmp_path, monkeypatch):
    from facefit import model_io

    monkeypatch.setenv("FACEFIT_MODEL_DIR", str(tmp_path / "store"))
    monkeypatch.setattr(model_io, "ICT_URL", "http://127.0.0.1:9/ict.zip")
    rc, _, err = run(["model", "fetch", "ict"], capsys)
    assert rc == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_render_bad_meshes_fail_with_one_line_naming_the_file(tmp_path, capsys):
    nan_obj = tmp_path / "nan face.obj"
    nan_obj.write_text("v 0 0 0\nv 10 0 0\nv 0 nan 0\nv 0 0 inf\nf 1 2 3\nf 1 2 4\n")
    rc, out, err = run(["render", str(nan_obj), "-o", str(tmp_path / "a.png"), "--size", "32"], capsys)
    assert rc == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "nan face.obj" in err and "non-finite" in err and "2 of 4 vertices" in err
    assert "Traceback" not in err and not (tmp_path / "a.png").exists()

    # not glTF 2 (a glTF 1 header): trimesh raises NotImplementedError
    old = tmp_path / "garbage.glb"
    old.write_bytes(b"glTF\x01\x00\x00\x00" + b"\x00" * 40)
    rc, _, err = run(["render", str(old), "-o", str(tmp_path / "b.png"), "--size", "32"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot read mesh" in err and "garbage.glb" in err
    assert "NotImplementedError" not in err and "FACEFIT_DEBUG" not in err
    assert not (tmp_path / "b.png").exists()

    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a gltf file at all" * 4)
    rc, _, err = run(["render", str(junk), "-o", str(tmp_path / "c.png"), "--size", "32"], capsys)
    assert rc == 1 and "cannot read mesh" in err and "junk.glb" in err and "FACEFIT_DEBUG" not in err


def test_render_mesh_that_covers_no_pixel_gives_background(tmp_path, capsys):
    # a single triangle seen from behind (culled) in every view of a still
    v = np.array([[-50, -50, 0], [0, 50, 0], [50, -50, 0]], np.float32)  # clockwise from +z: back face
    save_mesh(FaceMesh(v, np.array([[0, 1, 2]]), colors=np.full((3, 3), 0.9, np.float32)), tmp_path / "back.ply")
    rc, _, err = run(["render", str(tmp_path / "back.ply"), "-o", str(tmp_path / "back.png"), "--size", "32"], capsys)
    assert rc == 0, err
    img = np.asarray(Image.open(tmp_path / "back.png").convert("RGB")).astype(int)
    assert (img == img[0, 0]).all() and abs(img[0, 0, 0] - img[0, 0, 2]) < 3  # plain grey background


def test_render_glb_and_textured_obj_written_by_save_mesh(tmp_path, capsys):
    """Meshes with UVs (baked OBJ texture, GLB with COLOR_0) render in their vertex colours."""
    v = np.array([[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    c = np.tile([[0.1, 0.2, 0.9]], (4, 1)).astype(np.float32)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    mesh = FaceMesh(v, f, colors=c, uv=uv, uv_triangles=f)
    for name in ("sq.obj", "sq.glb"):
        save_mesh(mesh, tmp_path / name)
        rc, _, err = run(["render", str(tmp_path / name), "-o", str(tmp_path / f"{name}.png"), "--size", "48"],
                         capsys)
        assert rc == 0, err
        centre = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).astype(int)[20:28, 20:28]
        assert (centre[..., 2] > centre[..., 0] + 60).all(), name  # blue, not grey or dark
    assert (tmp_path / "sq_texture.png").is_file()  # the OBJ's baked texture
