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


def test_unseen_appearance_same_faces_other_look(model):
    """--appearance unseen: the same identities and poses for a seed, another look (flat skin
    tones, another lighting), deterministic on any machine."""
    from facefit.evaluation.appearance import SKIN_DARK, SKIN_LIGHT
    from facefit.evaluation.synthetic import SyntheticEvalConfig, make_synthetic_faces

    m = make_synthetic_faces(model, SyntheticEvalConfig(n=3, seed=2, image_size=128))
    u = make_synthetic_faces(model, SyntheticEvalConfig(n=3, seed=2, image_size=128, appearance="unseen"))
    u2 = make_synthetic_faces(model, SyntheticEvalConfig(n=3, seed=2, image_size=128, appearance="unseen"))
    np.testing.assert_array_equal(u.images, u2.images)
    np.testing.assert_array_equal(m.shape_coeffs, u.shape_coeffs)
    np.testing.assert_array_equal(m.yaw, u.yaw)
    np.testing.assert_allclose(m.landmarks, u.landmarks)  # same geometry on screen
    diff = np.abs(m.images.astype(int) - u.images.astype(int)).mean()
    assert diff > 5, diff  # but a visibly different face
    with pytest.raises(FacefitError, match="unknown appearance"):
        make_synthetic_faces(model, SyntheticEvalConfig(n=1, appearance="cartoon"))


def test_unseen_albedo_is_a_skin_tone_with_features():
    from facefit.evaluation.appearance import SKIN_DARK, SKIN_LIGHT, appearance_generator, feature_pattern, unseen_albedo

    g = appearance_generator(0)
    verts = torch.randn(4, 500, 3) * 60
    pattern = torch.ones(500, 1)
    pattern[:50] = 0.4  # "brows"
    col = unseen_albedo(verts, g, pattern)
    assert col.shape == (4, 500, 3) and bool(((col >= 0) & (col <= 1)).all())
    skin = col[:, 50:]
    # red > green > blue, as skin; within the tone range (plus the +-6 % variation and the shift)
    assert bool((skin[..., 0] > skin[..., 1]).all() and (skin[..., 1] > skin[..., 2]).all())
    assert float(skin[..., 1].min()) > SKIN_DARK[1] * 0.9 - 0.05 and float(skin[..., 1].max()) < SKIN_LIGHT[1] * 1.07
    assert float(col[:, :50].mean()) < 0.6 * float(skin.mean())  # the pattern darkens features
    # per face one tone with a smooth variation: small spread within a face, large between faces
    within = skin.std(1).mean()
    between = skin.mean(1).std(0).mean()
    assert within < 0.05 and between > within
    # the pattern of a real mean albedo: brows and lips darker than the median skin
    p = feature_pattern(torch.tensor([[0.8, 0.6, 0.5]] * 10 + [[0.3, 0.2, 0.2]] * 2))
    assert p.shape == (12, 1) and float(p[0]) == pytest.approx(1.0) and float(p[-1]) < 0.5


def test_synthetic_cli_both_appearances_and_refine_row(tmp_path, checkpoint):
    from facefit.cli_eval import eval_app

    root = typer.Typer()
    root.add_typer(eval_app, name="eval")
    root.callback()(lambda: None)
    out = tmp_path / "out"
    res = CliRunner().invoke(root, ["eval", "synthetic", "--n", "2", "--seed", "1", "--fit-steps", "0", "--size", "160",
                                    "--appearance", "both", "--refine", "1", "--checkpoint", str(checkpoint),
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rs = {a: json.loads((out / a / "results.json").read_text()) for a in ("model", "unseen")}
    for a, r in rs.items():
        assert r["config"]["appearance"] == a
        assert list(r["summary"]) == ["facefit", "facefit + refine", "mean face"]
        s = r["summary"]
        assert s["mean face"]["ratio_to_mean_face"] == pytest.approx(1.0)
        assert s["facefit"]["ratio_to_mean_face"] == pytest.approx(s["facefit"]["mean_mm"] / s["mean face"]["mean_mm"])
        # the default refinement moves the colour only: every face's geometry is the regressor's
        assert [f["facefit + refine"]["error_mm"] for f in r["faces"]] == [f["facefit"]["error_mm"] for f in r["faces"]]
        assert r["config"]["refine_shape"] is False
    # paired: the ground truth (mean face's error) is the same faces in both
    assert [f["yaw"] for f in rs["model"]["faces"]] == [f["yaw"] for f in rs["unseen"]["faces"]]
    bad = CliRunner().invoke(root, ["eval", "synthetic", "--n", "1", "--appearance", "cartoon", "--checkpoint",
                                    str(checkpoint), "-o", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--appearance must be one of" in str(bad.exception or bad.output)
    assert not (tmp_path / "bad").exists()
    bad = CliRunner().invoke(root, ["eval", "synthetic", "--n", "1", "--refine-shape", "--checkpoint",
                                    str(checkpoint), "-o", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--refine-shape needs --refine N" in str(bad.exception or bad.output)
    assert not (tmp_path / "bad").exists()
