"""Reconstruction: Python API, single photo, folder batch job, fuse, video, errors."""
import json
import os
import shutil

import cv2
import numpy as np

from facefit.cli import main
from facefit.coeffs_io import load_coeffs
from facefit.mesh_io import load_mesh
from facefit.reconstruction import reconstruct

from conftest import DEV, EXAMPLE


def dev_photos(person, n=3):
    return sorted((DEV / person).glob("*.jpg"))[:n]


def test_api_returns_meshes_without_writing(untrained_checkpoint, tmp_path, monkeypatch, default_model):
    monkeypatch.chdir(tmp_path)
    faces = reconstruct(EXAMPLE, checkpoint=untrained_checkpoint)
    assert len(faces) == 1
    f = faces[0]
    assert f.mesh.vertices.shape == (default_model.n_vertices, 3)
    assert f.shape_coeffs.shape == (default_model.n_shape,) and np.isfinite(f.shape_coeffs).all()
    assert f.mesh.meta["model_hash"] == default_model.content_hash
    x0, y0, x1, y1 = f.box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the astronaut's face
    assert list(tmp_path.iterdir()) == []  # nothing written
    # different people get different coefficients
    other = reconstruct(dev_photos("Tony_Blair", 1)[0], checkpoint=untrained_checkpoint)[0]
    assert np.abs(other.shape_coeffs - f.shape_coeffs).max() > 1e-3


def test_single_photo_cli(untrained_checkpoint, tmp_path, capsys, default_model):
    out = tmp_path / "face.obj"
    rc = main(["reconstruct", str(EXAMPLE), "-o", str(out), "--checkpoint", str(untrained_checkpoint),
               "--save-coeffs", "json", "--render", "--render-size", "64"])
    err = capsys.readouterr().err
    assert rc == 0, err
    mesh = load_mesh(out)
    assert mesh.vertices.shape[0] == default_model.n_vertices and mesh.colors is not None
    rec = load_coeffs(tmp_path / "face.json")
    assert rec["model_hash"] == default_model.content_hash and len(rec["shape_coeffs"]) == default_model.n_shape
    assert len(rec["landmarks68"]) == 68
    for p in ("face_turntable.gif", "face_turntable.mp4", "face_turntable_views.png"):
        assert (tmp_path / p).stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp*"))


def test_folder_batch_survives_bad_files_and_resumes(untrained_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub dir").mkdir(parents=True)
    good = dev_photos("Tony_Blair", 2)
    shutil.copy(good[0], src / "a.jpg")
    shutil.copy(good[1], src / "sub dir" / "ä b.jpg")
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("not an image")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "noise.png"), rng.integers(0, 255, (120, 120, 3), dtype=np.uint8))
    (src / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint), "--format", "ply"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err
    assert (out / "a.ply").is_file() and (out / "sub dir" / "ä b.ply").is_file()
    entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    status = {os.path.basename(e["input"]): e["status"] for e in entries}
    assert status == {"a.jpg": "ok", "ä b.jpg": "ok", "empty.jpg": "error", "text.jpg": "error", "noise.png": "error"}
    assert any("no face" in e.get("error", "") for e in entries)
    assert sorted(p.name for p in out.rglob("*.ply")) == ["a.ply", "ä b.ply"]

    # a rerun with --skip-existing does nothing twice
    mtime = (out / "a.ply").stat().st_mtime_ns
    rc = main(["reconstruct", str(src), "-o", str(out), "--checkpoint", str(untrained_checkpoint), "--format", "ply",
               "--skip-existing"])
    capsys.readouterr()
    assert rc == 0 and (out / "a.ply").stat().st_mtime_ns == mtime
    entries = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()][5:]
    assert sorted(e["status"] for e in entries if e["status"] != "error") == ["skipped", "skipped"]


def test_fuse_one_person(untrained_checkpoint, tmp_path, capsys):
    photos = dev_photos("Colin_Powell", 3)
    rc = main(["reconstruct", *map(str, photos), "--fuse", "-o", str(tmp_path / "cp.glb"),
               "--checkpoint", str(untrained_checkpoint), "--save-coeffs", "npz"])
    assert rc == 0, capsys.readouterr().err
    rec = load_coeffs(tmp_path / "cp.npz")
    assert rec["n_fused"] == 3 and rec["consistency_mm_mean"] >= 0
    single = [reconstruct(p, checkpoint=untrained_checkpoint)[0].shape_coeffs for p in photos]
    assert not np.allclose(rec["shape_coeffs"], single[0])
    assert load_mesh(tmp_path / "cp.glb").vertices.shape[0] > 1000


def test_video_input(untrained_checkpoint, tmp_path):
    img = cv2.imread(str(dev_photos("Tony_Blair", 1)[0]))
    vid = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 10, (img.shape[1], img.shape[0]))
    for k in range(12):
        w.write(np.roll(img, k, axis=1))
    w.release()
    faces = reconstruct(vid, checkpoint=untrained_checkpoint)
    assert len(faces) >= 2 and all("frame" in f.name for f in faces)
    fused = reconstruct(vid, checkpoint=untrained_checkpoint, fuse=True)
    assert len(fused) == 1 and fused[0].extra["n_fused"] == len(faces)


def test_errors_are_one_line(untrained_checkpoint, tmp_path, capsys, monkeypatch):
    rc = main(["reconstruct", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "x.obj"),
               "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.obj").exists()

    noface = tmp_path / "noise.png"
    cv2.imwrite(str(noface), np.full((100, 100, 3), 128, np.uint8))
    rc = main(["reconstruct", str(noface), "-o", str(tmp_path / "y.obj"), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "no face" in err and not (tmp_path / "y.obj").exists()

    monkeypatch.setenv("FACEFIT_MODEL", str(tmp_path / "nowhere.npz"))
    rc = main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "z.obj"), "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "model" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_for_another_model_is_refused(untrained_checkpoint, tmp_path, capsys, default_model):
    other = default_model.replace(mean_shape=np.asarray(default_model.mean_shape) * 1.01).with_name("other")
    assert other.content_hash != default_model.content_hash
    other.save(tmp_path / "other.npz")
    rc = main(["reconstruct", str(EXAMPLE), "-o", str(tmp_path / "z.obj"), "--checkpoint", str(untrained_checkpoint),
               "--model", str(tmp_path / "other.npz")])
    err = capsys.readouterr().err
    assert rc == 1 and default_model.content_hash in err and "Traceback" not in err


def test_texture_from_photo(untrained_checkpoint, tmp_path, capsys):
    out = tmp_path / "tex.obj"
    rc = main(["reconstruct", str(EXAMPLE), "-o", str(out), "--checkpoint", str(untrained_checkpoint),
               "--texture", "photo"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "tex.mtl").is_file() and (tmp_path / "tex.png").is_file()
    mesh = load_mesh(out)
    assert mesh.texture is not None and mesh.texture.shape[0] >= 256
    frac = float(mesh.meta["texture"].split("%")[0].split()[-1])
    assert frac > 20  # a good share of the texture comes from the photo
    # the photo's skin (astronaut: light skin) shows in the face texels around the nose
    from facefit.turntable import texture_vertex_colors
    from facefit.model_io import resolve_model

    m = resolve_model(None)
    nose = texture_vertex_colors(mesh)[m.landmarks[30]]
    assert nose[0] > nose[2] and nose.mean() > 0.3
