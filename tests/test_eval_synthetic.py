"""``facefit eval synthetic``: rendered model samples with exact ground truth, and baselines."""
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from facefit.errors import FacefitError


@pytest.fixture(scope="module")
def model():
    from facefit.model_io import resolve_model

    return resolve_model()  # the tests need ../shared's ICT-FaceKit (CI has it)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    dec = Decoder(256, model.n_shape, model.n_color, hidden=[16])
    path = tmp_path_factory.mktemp("ck") / "c.pt"
    return save_checkpoint(make_checkpoint(dec, "dlib", model.content_hash, model.name), path)


def test_synthetic_faces_are_deterministic(model):
    from facefit.evaluation.synthetic import SyntheticEvalConfig, make_synthetic_faces

    cfg = SyntheticEvalConfig(n=2, seed=5, image_size=128)
    a, b = make_synthetic_faces(model, cfg), make_synthetic_faces(model, cfg)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.shape_coeffs, b.shape_coeffs)
    assert a.images.shape == (2, 128, 128, 3) and a.images.dtype == np.uint8
    assert (a.landmarks > 0).all() and (a.landmarks < 128).all()  # the whole face is in the image
    assert np.all(np.abs(a.yaw) <= 30)
    c = make_synthetic_faces(model, SyntheticEvalConfig(n=2, seed=6, image_size=128))
    assert not np.array_equal(a.shape_coeffs, c.shape_coeffs)


def test_synthetic_cli_run(tmp_path, checkpoint):
    from facefit.cli_eval import eval_app

    root = typer.Typer()
    root.add_typer(eval_app, name="eval")
    root.callback()(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(root, ["eval", "synthetic", "--n", "3", "--seed", "1", "--fit-steps", "20",
                                    "--size", "224", "--checkpoint", str(checkpoint), "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "results.json", "errors.png", "error_vs_yaw.png", "examples.png"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    assert r["n_faces"] == 3 and len(r["faces"]) == 3
    assert list(r["summary"]) == ["facefit", "landmark fit", "mean face"]
    assert set(r["ratios"]) == {"landmark fit", "mean face"}
    for m, s in r["summary"].items():
        assert s["n"] == 3 and 0.1 < s["mean_mm"] < 5.0, (m, s)
        assert s["dense_mean_mm"] > s["mean_mm"] * 0.5  # the dense error sees sliding that point-to-plane forgives
    rr = r["ratios"]["mean face"]
    assert rr["ratio_of_means"] == pytest.approx(r["summary"]["facefit"]["mean_mm"] / r["summary"]["mean face"]["mean_mm"])
    assert 0 <= r["detector_fallbacks"] <= 3
    md = (out / "report.md").read_text()
    assert "facefit/method" in md and "landmark fit" in md


def test_detector_fallback_uses_ground_truth_landmarks(monkeypatch, checkpoint, model):
    import facefit.faces.detection as det
    from facefit.evaluation.synthetic import SyntheticEvalConfig, evaluate_synthetic
    from facefit.reconstruction import Reconstructor

    monkeypatch.setattr(det, "detect_faces", lambda *a, **k: [])
    rec = Reconstructor(checkpoint, model, "cpu")
    res = evaluate_synthetic(rec, SyntheticEvalConfig(n=2, seed=2, image_size=160, fit_steps=0))
    assert res["detector_fallbacks"] == 2
    assert [f["detected"] for f in res["faces"]] == [False, False]
    assert list(res["summary"]) == ["facefit", "mean face"]  # no landmark fit with fit_steps=0
    assert all(np.isfinite(f["facefit"]["error_mm"]) for f in res["faces"])
    # an untrained decoder predicts almost the mean face: same error as the mean face
    assert res["ratios"]["mean face"]["ratio_of_means"] == pytest.approx(1.0, abs=0.1)
