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


MICC_SEED, MICC_SUBJECTS = 3, 3


@pytest.fixture(scope="module")
def micc_data(model, tmp_path_factory):
    """A tiny MICC-like folder (3 subjects, 2 frames per video) and the subjects' true shapes."""
    from facefit.evaluation.micc import write_synthetic_micc

    data = tmp_path_factory.mktemp("micc") / "micc"
    dirs = write_synthetic_micc(data, model, n_subjects=MICC_SUBJECTS, frames=2, seed=MICC_SEED, image_size=224)
    # write_synthetic_micc draws the subjects' coefficients first from this generator
    g = torch.Generator().manual_seed(MICC_SEED)
    shapes = model.sample(MICC_SUBJECTS, g, shape=True, color=True)["shape_coeffs"].numpy()
    return data, {d.name: shapes[i] for i, d in enumerate(dirs)}


@pytest.fixture(scope="module")
def untrained_checkpoint(model, tmp_path_factory):
    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    dec = Decoder(256, model.n_shape, model.n_color, hidden=[16])
    return save_checkpoint(make_checkpoint(dec, "dlib", model.content_hash, model.name),
                           tmp_path_factory.mktemp("ck") / "c.pt")


def test_micc_run_on_synthetic_dataset(tmp_path, model, micc_data, untrained_checkpoint):
    from facefit.cli_eval import eval_app
    from facefit.evaluation import nose_tip_index
    from facefit.evaluation.geometry import scan_nose_tip

    data, _ = micc_data
    # the nose-tip heuristic finds the model's nose tip on a real face shape
    scan, _, _ = load_scan(next((data / "subject_01").rglob("*.obj")))
    assert np.linalg.norm(scan_nose_tip(scan) - scan[nose_tip_index(model)]) < 8.0

    root = typer.Typer()
    root.add_typer(eval_app, name="eval")
    root.callback()(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(root, ["eval", "micc", str(data), "--checkpoint", str(untrained_checkpoint),
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "results.json", "errors.png", "examples.png"):
        assert (out / name).is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    r = json.loads((out / "results.json").read_text())
    assert r["n_subjects"] == 3
    subs = {s["subject"]: s for s in r["subjects"]}
    assert subs["subject_02"]["scan_units_factor"] == 10.0  # the VRML scan is in centimetres
    assert subs["person_03"]["nose_tip"]["source"].endswith("nose.txt")
    assert subs["subject_01"]["nose_tip"]["source"] == "heuristic"
    for cond in ("cooperative", "indoor", "outdoor"):
        s = r["summary"][cond]
        assert s["n"] == 3  # a face was found in the frames of every subject
        # an untrained decoder starts at the mean face: the same errors as the mean face (a millimetre or two)
        assert 0.3 < s["mean_face_mean_mm"] < 3.0
        assert s["ratio"] == pytest.approx(1.0, abs=0.02)
    for sub in subs.values():
        for cond, rec in sub["conditions"].items():
            assert rec["error_mm"] is not None and rec["frames_with_face"] >= 1, (sub["subject"], cond)
            # the scans are the subjects' faces at their true size: a scale near 1 (different faces, so not exactly)
            assert 0.85 < rec["scale"] < 1.15 and rec["overlap_gt"] > 0.8, (sub["subject"], cond, rec)
    md = (out / "report.md").read_text()
    assert "| cooperative |" in md and "Table 1" in md


def test_micc_protocol_ranks_reconstructions_and_recovers_scale(tmp_path, model, micc_data, untrained_checkpoint,
                                                                monkeypatch):
    """An oracle that knows each subject's true shape: cooperative = the true shape, indoor =
    half of it, outdoor = the mean face. The errors must rank them, the true shape must score
    ~0 with the scan's known scale recovered by ICP, and the mean face must score exactly as
    the mean-face reference."""
    import shutil

    from facefit.evaluation import micc
    from facefit.mesh_io import FaceMesh, load_mesh, save_mesh
    from facefit.reconstruction import Reconstructor

    src, truth = micc_data
    data = tmp_path / "micc"
    shutil.copytree(src, data)
    # person_03's scan (PLY + nose.txt, mm) rescaled by a known factor
    known = 1.08
    m = load_mesh(data / "person_03" / "scan.ply", units="mm")
    save_mesh(FaceMesh(np.asarray(m.vertices) * known, np.asarray(m.triangles)), data / "person_03" / "scan.ply",
              units="mm")
    nose = np.array((data / "person_03" / "nose.txt").read_text().split(), float) * known
    (data / "person_03" / "nose.txt").write_text(" ".join(f"{x:.4f}" for x in nose))

    quality = {"cooperative": 1.0, "indoor": 0.5, "outdoor": 0.0}
    names = sorted(truth)
    real = micc.fused_features

    def oracle_features(rec, source, cfg):
        feats, n_read, n_used, frame = real(rec, source, cfg)  # real frames, real detection
        subject = next(p.name for p in source.parents if p.name in truth)
        cond = next(c for c, alias in micc.CONDITIONS.items() if micc._norm(source.stem) in alias)
        key = np.array([names.index(subject), quality[cond]], np.float32)
        return (None if feats is None else key), n_read, n_used, frame

    rec = Reconstructor(untrained_checkpoint, model, "cpu")
    monkeypatch.setattr(micc, "fused_features", oracle_features)
    monkeypatch.setattr(rec, "decode", lambda f: (truth[names[int(f[0, 0])]][None] * float(f[0, 1]),
                                                  np.zeros((1, model.n_color), np.float32)))
    res = micc.evaluate_micc(rec, data, micc.MiccEvalConfig())
    assert res["n_subjects"] == 3
    for sub in res["subjects"]:
        c, mf = sub["conditions"], sub["mean_face"]
        name = sub["subject"]
        scale = known if name == "person_03" else 1.0
        assert mf["error_mm"] > 0.4, name  # the subjects differ from the mean face
        # the true shape: ~0 (ICP's nearest-vertex pairs on subsampled points leave a few hundredths of a mm)
        assert c["cooperative"]["error_mm"] < min(0.15, 0.1 * mf["error_mm"]), (name, c["cooperative"], mf)
        assert c["cooperative"]["scale"] == pytest.approx(scale, abs=0.01), name
        assert c["cooperative"]["overlap_gt"] > 0.95, name
        assert 0.25 * mf["error_mm"] < c["indoor"]["error_mm"] < 0.75 * mf["error_mm"], (name, c["indoor"], mf)
        assert c["outdoor"]["error_mm"] == pytest.approx(mf["error_mm"], abs=1e-9), name
    summary = res["summary"]
    assert summary["cooperative"]["n"] == 3 and summary["cooperative"]["ratio"] < 0.1
    assert 0.25 < summary["indoor"]["ratio"] < 0.75
    assert summary["outdoor"]["ratio"] == pytest.approx(1.0, abs=1e-9)
