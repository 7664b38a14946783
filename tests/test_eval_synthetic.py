"""``facefit eval synthetic``: rendered model samples with exact ground truth, and baselines."""
import json
import os
from pathlib import Path

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
    out.mkdir()
    (out / "left-by-an-earlier-run.png").write_bytes(b"old")
    res = CliRunner().invoke(root, ["eval", "synthetic", "--n", "3", "--seed", "1", "--fit-steps", "20",
                                    "--size", "224", "--checkpoint", str(checkpoint), "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "results.json", "errors.png", "error_vs_yaw.png", "examples.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in res.output  # the files of this report are listed ...
    assert "left-by-an-earlier-run.png" not in res.output  # ... and only those
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


# ------------------------------------------------------------------ all-or-nothing reports


def _listing(d):
    return sorted((p.name, p.read_bytes()) for p in d.iterdir())


def test_report_files_appear_together_or_not_at_all(tmp_path, monkeypatch):
    import errno

    import facefit.atomic as atomic
    from facefit.evaluation.report import Report, plot_boxes

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old report")
    (out / "errors.png").write_bytes(b"old figure")
    before = _listing(out)

    # a failure between two steps (a figure that cannot be drawn) leaves out/ as it was
    with pytest.raises(RuntimeError, match="plot failed"):
        with Report("t", out) as rep:
            rep.figure(plot_boxes({"a": [1.0, 2.0]}, rep.path("errors.png")), "errors")
            raise RuntimeError("plot failed")
    assert _listing(out) == before

    # the disk fills up while report.md is written (fsyncs: the figure, its folder, report.md)
    real = atomic.os.fsync
    calls = []

    def full(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(FacefitError, match="no space left on device") as ei:
        with Report("t", out) as rep:
            rep.figure(plot_boxes({"a": [1.0, 2.0]}, rep.path("errors.png")), "errors")
            rep.write({"x": 1})
    assert "\n" not in str(ei.value)
    assert _listing(out) == before  # no new errors.png without its report.md, no staging folder

    # a rename that fails midway removes what this call had already moved
    monkeypatch.setattr(atomic.os, "fsync", real)
    real_replace = os.replace

    fresh = tmp_path / "fresh"
    moved = []

    def replace(src, dst):
        if Path(dst).parent == fresh:  # moving out of the staging folder
            if Path(dst).name == "report.md":
                raise OSError(errno.EROFS, "Read-only file system")
            moved.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FacefitError, match="read-only"):
        with Report("t", fresh) as rep:
            rep.figure(plot_boxes({"a": [1.0, 2.0]}, rep.path("errors.png")), "errors")
            rep.write({"x": 1})
    assert moved == ["errors.png", "results.json"]  # report.md comes last ...
    assert not fresh.exists()  # ... and what was moved before it is gone again, with the folder
    monkeypatch.setattr(os, "replace", real_replace)

    with Report("t", out) as rep:
        rep.figure(plot_boxes({"a": [1.0, 2.0]}, rep.path("errors.png")), "errors")
        md, js = rep.write({"x": 1})
    assert sorted(p.name for p in out.iterdir()) == ["errors.png", "report.md", "results.json"]
    assert "![errors](errors.png)" in md.read_text() and json.loads(js.read_text()) == {"x": 1}
    assert (out / "errors.png").read_bytes().startswith(b"\x89PNG")


def test_synthetic_report_disk_full_at_any_point_leaves_nothing(tmp_path, monkeypatch, checkpoint, model):
    """A real synthetic report, with the disk filling up at each fsync in turn."""
    import errno

    import facefit.atomic as atomic
    from facefit.evaluation.synthetic import SyntheticEvalConfig, evaluate_synthetic, write_synthetic_report
    from facefit.reconstruction import Reconstructor

    res = evaluate_synthetic(Reconstructor(checkpoint, model, "cpu"),
                             SyntheticEvalConfig(n=2, seed=2, image_size=160, fit_steps=0))
    real = atomic.os.fsync
    count = {"n": 0, "fail_at": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] == count["fail_at"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    write_synthetic_report(res, tmp_path / "ok", model=model, sample_faces=2)
    total = count["n"]
    names = sorted(p.name for p in (tmp_path / "ok").iterdir())
    assert names == ["error_vs_yaw.png", "errors.png", "examples.png", "report.md", "results.json"]
    failed = 0
    for k in range(1, total + 1):
        out = tmp_path / f"run{k}"
        count.update(n=0, fail_at=k)
        try:
            write_synthetic_report(res, out, model=model, sample_faces=2)
        except FacefitError as e:
            assert "no space left on device" in str(e) and "\n" not in str(e)
            assert not out.exists(), k  # nothing half-done, no staging folder, not even the empty folder
            failed += 1
        else:  # a failed directory fsync is best effort: then everything is there
            assert sorted(p.name for p in out.iterdir()) == names, k
    assert failed >= 4  # every file's own fsync failing was caught


def test_staging_folders_left_by_a_killed_run_are_removed(tmp_path):
    import os
    import time

    from facefit.evaluation.report import Report

    out = tmp_path / "out"
    out.mkdir()
    old = out / ".report.killed.tmp"
    old.mkdir()
    (old / "report.md").write_text("half")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    fresh = out / ".report.another-process.tmp"  # a report being written right now
    fresh.mkdir()
    with Report("t", out) as rep:
        rep.write({"ok": True})
    assert not old.exists() and fresh.is_dir()
    assert (out / "report.md").is_file()
