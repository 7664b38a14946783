"""``facefit eval micc``: dataset layouts, scan/video readers and a run on a tiny synthetic MICC."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from facefit.errors import FacefitError, InvalidFileError
from facefit.evaluation.micc import find_subjects, iter_frames, load_scan, load_vrml, write_vrml

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def touch(p: Path, data: bytes = b"") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_find_subjects_in_micc_and_simple_layouts(tmp_path):
    # MICC as distributed
    s1 = tmp_path / "subject_01"
    touch(s1 / "Model" / "frontal2" / "obj" / "b.obj")
    touch(s1 / "Model" / "frontal1" / "vrml" / "a.wrl")
    touch(s1 / "Model" / "frontal1" / "obj" / "a.obj")
    touch(s1 / "Model" / "sider" / "obj" / "c.obj")
    for v in ("Indoor-Cooperative.mjpg", "PTZ-Indoor.mjpg", "PTZ-Outdoor.mjpg"):
        touch(s1 / "Video" / v)
    # frontal1 missing: frontal2 is used
    s2 = tmp_path / "subject_02"
    touch(s2 / "Model" / "frontal2" / "obj" / "b.obj")
    touch(s2 / "Video" / "indoor-cooperative.MJPEG")
    # simple layout, frame folder, nose file
    s3 = tmp_path / "alice"
    touch(s3 / "scan.wrl")
    touch(s3 / "notes.txt")
    touch(s3 / "nose.txt", b"1 2 3")
    touch(s3 / "cooperative" / "0001.jpg")
    touch(s3 / "outdoor.mp4")
    # no video: left out; no scan: left out
    touch(tmp_path / "bob" / "scan.obj")
    touch(tmp_path / "carol" / "cooperative.mp4")
    subs = {s.name: s for s in find_subjects(tmp_path)}
    assert sorted(subs) == ["alice", "subject_01", "subject_02"]
    assert subs["subject_01"].scan == s1 / "Model" / "frontal1" / "obj" / "a.obj"  # OBJ before VRML
    assert subs["subject_01"].sources == {"cooperative": s1 / "Video" / "Indoor-Cooperative.mjpg",
                                          "indoor": s1 / "Video" / "PTZ-Indoor.mjpg",
                                          "outdoor": s1 / "Video" / "PTZ-Outdoor.mjpg"}
    assert subs["subject_02"].scan.name == "b.obj" and set(subs["subject_02"].sources) == {"cooperative"}
    assert subs["alice"].scan == s3 / "scan.wrl" and subs["alice"].nose_file == s3 / "nose.txt"
    assert subs["alice"].sources == {"cooperative": s3 / "cooperative", "outdoor": s3 / "outdoor.mp4"}
    assert [s.name for s in find_subjects(tmp_path, ["alice"])] == ["alice"]
    with pytest.raises(FacefitError, match="no subject"):
        find_subjects(tmp_path / "bob")
    with pytest.raises(FacefitError, match="not a folder"):
        find_subjects(tmp_path / "nowhere")


def test_vrml_round_trip_and_polygons(tmp_path):
    v = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0], [5, 5, 5]], float)
    t = np.array([[0, 1, 2], [0, 2, 3]])
    p = write_vrml(tmp_path / "a.wrl", v, t)
    v2, t2 = load_vrml(p)
    np.testing.assert_allclose(v2[:4], v[:4])
    np.testing.assert_array_equal(t2, t)
    # a quad, a comment and two shapes
    text = """#VRML V2.0 utf8
    Transform { children [ Shape { geometry IndexedFaceSet { # comment [ with bracket
      coord Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0 ] }
      coordIndex [ 0, 1, 2, 3, -1 ] } }
      Shape { geometry IndexedFaceSet { coord Coordinate { point [ 0 0 1, 1 0 1, 1 1 1 ] } coordIndex [ 0 1 2 ] } } ] }
    """
    (tmp_path / "b.wrl").write_text(text)
    v3, t3 = load_vrml(tmp_path / "b.wrl")
    assert v3.shape == (7, 3)
    np.testing.assert_array_equal(t3, [[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    (tmp_path / "c.wrl").write_text("#VRML V2.0 utf8\nShape {}\n")
    with pytest.raises(InvalidFileError):
        load_vrml(tmp_path / "c.wrl")


def test_load_scan_units_and_unused_vertices(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.uniform(-9, 9, size=(30, 3))  # a "head" 18 units wide: centimetres
    t = np.array([[i, i + 1, i + 2] for i in range(0, 27, 3)])
    write_vrml(tmp_path / "s.wrl", v, t)
    mm, tri, f = load_scan(tmp_path / "s.wrl")
    assert f == 10.0 and len(mm) == 27  # the 3 vertices no triangle uses are dropped
    np.testing.assert_allclose(mm, v[:27] * 10.0, atol=1e-4)
    assert tri.max() == 26
    assert load_scan(tmp_path / "s.wrl", "mm")[2] == 1.0
    with pytest.raises(FacefitError):
        load_scan(tmp_path / "s.wrl", "inch")


def test_iter_frames_of_raw_mjpeg_and_folder(tmp_path):
    with open(tmp_path / "v.mjpg", "wb") as f:
        for i in range(7):
            b = io.BytesIO()
            Image.fromarray(np.full((48, 64, 3), 30 * i, np.uint8)).save(b, "JPEG")
            f.write(b.getvalue())
    got = list(iter_frames(tmp_path / "v.mjpg", step=2))
    assert [i for i, _ in got] == [0, 2, 4, 6]
    assert got[1][1].shape == (48, 64, 3) and abs(float(got[1][1].mean()) - 60) < 3
    assert len(list(iter_frames(tmp_path / "v.mjpg", step=1, max_frames=3))) == 3
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(d / f"{i:03d}.png")
    assert [i for i, _ in iter_frames(d, step=2)] == [0, 2, 4]
    with pytest.raises(InvalidFileError):
        list(iter_frames(touch(tmp_path / "bad.mp4", b"nonsense")))


@pytest.fixture(scope="module")
def model():
    from facefit.model_io import resolve_model

    return resolve_model()  # the tests need ../shared's ICT-FaceKit (CI has it)


def test_micc_run_on_synthetic_dataset(tmp_path, model):
    from facefit.cli_eval import eval_app
    from facefit.evaluation import nose_tip_index
    from facefit.evaluation.geometry import scan_nose_tip
    from facefit.evaluation.micc import write_synthetic_micc
    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    data = tmp_path / "micc"
    write_synthetic_micc(data, model, n_subjects=3, frames=2, seed=3, image_size=224)
    # the nose-tip heuristic finds the model's nose tip on a real face shape
    scan, _, _ = load_scan(next((data / "subject_01").rglob("*.obj")))
    assert np.linalg.norm(scan_nose_tip(scan) - scan[nose_tip_index(model)]) < 8.0

    torch.manual_seed(0)
    dec = Decoder(256, model.n_shape, model.n_color, hidden=[16])
    ck = save_checkpoint(make_checkpoint(dec, "dlib", model.content_hash, model.name), tmp_path / "c.pt")
    root = typer.Typer()
    root.add_typer(eval_app, name="eval")
    root.callback()(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(root, ["eval", "micc", str(data), "--checkpoint", str(ck), "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "results.json", "errors.png", "examples.png"):
        assert (out / name).is_file()
    r = json.loads((out / "results.json").read_text())
    assert r["n_subjects"] == 3
    subs = {s["subject"]: s for s in r["subjects"]}
    assert subs["subject_02"]["scan_units_factor"] == 10.0  # the VRML scan is in centimetres
    assert subs["person_03"]["nose_tip"]["source"].endswith("nose.txt")
    assert subs["subject_01"]["nose_tip"]["source"] == "heuristic"
    for cond in ("cooperative", "indoor", "outdoor"):
        s = r["summary"][cond]
        assert s["n"] >= 2  # a face was found in the frames of most subjects
        # an untrained decoder predicts about the mean face: errors of a few mm, close to the mean face's
        assert 0.2 < s["facefit_mean_mm"] < 4.0 and 0.2 < s["mean_face_mean_mm"] < 4.0
        assert 0.5 < s["ratio"] < 2.0
    rec = subs["subject_01"]["conditions"]["cooperative"]
    if np.isfinite(rec["error_mm"] or np.nan):
        assert 0.9 < rec["scale"] < 1.1 and rec["overlap_gt"] > 0.7
    md = (out / "report.md").read_text()
    assert "| cooperative |" in md and "Table 1" in md
