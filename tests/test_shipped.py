"""The shipped models are found in a checkout and travel with a wheel."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import facefit.shipped as shipped

REPO = Path(__file__).resolve().parents[1]


def test_checkout_models_folder_is_found():
    d = shipped.shipped_models_dir()
    assert d == REPO / "models"
    assert (d / "facefit-ict-dlib-facenet.pt").is_file() and (d / "facefit-ict-dlib.pt").is_file() and any((d / "albedo").glob("*.npz"))


def test_installed_copy_is_found_when_there_is_no_checkout(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "facefit" / "models"
    (installed / "albedo").mkdir(parents=True)
    monkeypatch.setattr(shipped, "_candidates", lambda: [tmp_path / "no-checkout" / "models", installed])
    assert shipped.shipped_models_dir() == installed


def test_every_shipped_file_is_in_the_wheel_data_files():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = {f for files in cfg["tool"]["setuptools"]["data-files"].values() for f in files}
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "models").rglob("*")
               if p.is_file() and p.suffix in (".pt", ".npz")}
    assert on_disk and on_disk <= listed, f"not packaged: {sorted(on_disk - listed)}"
    assert all((REPO / f).is_file() for f in listed)


def test_shipped_regressor_is_recognisable_to_a_held_out_network():
    """The shipped model's renders look like their people to SFace (never trained with)."""
    from facefit.evaluation.identity import IdentityEvalConfig, evaluate_identity
    from facefit.reconstruction import default_checkpoint

    from conftest import DEV

    cfg = IdentityEvalConfig(people=8, per_person=2)
    res = evaluate_identity(DEV, {"shipped": default_checkpoint()}, cfg)
    m, mean = res["checkpoints"]["shipped"], res["mean_face"]
    assert res["photos"]["n"] == 16
    # measured 0.35 on all of faces-dev; the mean face scores 0.05
    assert m["mean_own"] > mean["mean_own"] + 0.15, (m["mean_own"], mean["mean_own"])
    assert m["mean_render_vs_other_photos_same_person"] > mean["mean_render_vs_other_photos_same_person"] + 0.1
    assert m["top1"] >= 0.5 > mean["top1"]  # chance: 1/8
