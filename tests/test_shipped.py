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
    assert (d / "facefit-ict-dlib.pt").is_file() and any((d / "albedo").glob("*.npz"))


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
