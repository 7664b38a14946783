"""The real ICT-FaceKit ZIP from ../shared: import (cold, then cached), facts, decoding."""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit import model_io
from facefit.loaders.common import outward_flux
from facefit.morphable import MorphableModel

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ICT_ZIP = SHARED / "models" / "ICT-FaceKit" / "ICT-FaceKit-da5f95a.zip"

pytestmark = pytest.mark.skipif(not ICT_ZIP.is_file(), reason="needs ../shared/models/ICT-FaceKit")


@pytest.fixture(scope="module")
def ict(tmp_path_factory):
    """(model, cold seconds, cached seconds, cache dir), converted once into a private cache."""
    cache = tmp_path_factory.mktemp("ict-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEFIT_CACHE", str(cache))
        t0 = time.perf_counter()
        cold = model_io.convert_model("ict", ICT_ZIP, "face")
        t1 = time.perf_counter()
        cached = model_io.convert_model("ict", ICT_ZIP, "face")
        t2 = time.perf_counter()
    assert cached.content_hash == cold.content_hash
    return cached, t1 - t0, t2 - t1, cache


def test_import_times(ict):
    _, cold, cached, _ = ict
    print(f"ICT face import: cold {cold:.2f} s, cached {cached:.2f} s")
    assert cold < 60
    assert cached < 2.0


def test_counts_units_and_landmarks(ict):
    m = ict[0]
    assert isinstance(m, MorphableModel) and m.name == "ict-face"
    assert m.n_vertices == 9409 and m.n_shape == 100 and m.n_expr == 53
    # no albedo in ICT: a default colour model is attached and labelled as such
    assert m.n_color > 0
    assert m.meta["color_model"].startswith(("heuristic", "statistical"))
    assert m.units == "mm" and m.meta["units_source"] == "cm"
    assert m.meta["source_commit"] == model_io.ICT_COMMIT
    assert m.face_mask.all() and m.uv is not None and m.symmetry is not None
    with zipfile.ZipFile(ICT_ZIP) as zf:
        idx = json.loads(zf.read("ICT-FaceKit-da5f95a/FaceXModel/vertex_indices.json"))
    np.testing.assert_array_equal(m.landmarks, idx["idx_to_landmark_verts"])
    assert m.expr_names == idx["expressions"] and "jawOpen" in m.expr_names
    width = float(np.ptp(m.mean_shape[:, 0]))
    assert 150 <= width <= 200, width  # about 184 mm


def test_orientation_and_winding_follow_conventions(ict):
    m = ict[0]
    lm = m.mean_shape[m.landmarks]
    eyes_y = (lm[36, 1] + lm[45, 1]) / 2
    assert lm[8, 1] < lm[30, 1] < eyes_y  # chin below nose below eyes: +y up
    assert lm[30, 2] > lm[36, 2] + 10  # nose tip in front of the eye corners: +z out
    assert lm[36, 0] < 0 < lm[45, 0]  # subject's right eye on the viewer's left
    assert outward_flux(m.mean_shape, m.triangles) > 0
    assert m.meta.get("rotated_to_conventions") is None and not m.meta.get("winding_flipped")


def test_component_scales_match_the_documented_facts(ict):
    m = ict[0]
    # Mode 0 moves face-area vertices ~3.9 mm RMS, mode 99 ~0.09 mm (coefficient 1 = 1 std).
    rms = m.shape_std / np.sqrt(m.n_vertices)
    assert 3.5 < rms[0] < 4.3 and 0.05 < rms[99] < 0.15
    np.testing.assert_allclose(np.linalg.norm(m.shape_basis.reshape(-1, 100), axis=0), 1.0, rtol=1e-4)
    # the symmetry map pairs the eye corners
    assert m.symmetry[m.landmarks[36]] == m.landmarks[45]


def test_decode_and_expressions(ict):
    m = ict[0]
    coeffs = m.sample(4, torch.Generator().manual_seed(0))
    verts, cols = m.decode(**coeffs)
    assert verts.shape == (4, 9409, 3) and cols.shape == (4, 9409, 3)
    assert torch.isfinite(verts).all() and (cols >= 0).all() and (cols <= 1).all()
    dev = (verts - torch.from_numpy(np.array(m.mean_shape))).norm(dim=-1).mean()
    assert 1.0 < dev < 30.0
    jaw = torch.zeros(1, m.n_expr)
    jaw[0, m.expr_names.index("jawOpen")] = 1.0
    v_open, _ = m.decode(expr_coeffs=jaw)
    chin_drop = m.mean_shape[m.landmarks[8], 1] - v_open[0, m.landmarks[8], 1].item()
    assert chin_drop > 5.0  # mm


def test_archive_checksum_is_pinned():
    assert model_io.verify_ict_archive(ICT_ZIP) == "archive"


def test_resolve_model_falls_back_to_the_shared_zip(ict, tmp_path, monkeypatch):
    """With an empty store and no $FACEFIT_MODEL, the shared ZIP is imported (from the cache)."""
    m, cache = ict[0], ict[3]
    monkeypatch.setenv("FACEFIT_MODEL_DIR", str(tmp_path / "empty-store"))
    monkeypatch.setenv("FACEFIT_CACHE", str(cache))
    monkeypatch.delenv("FACEFIT_MODEL", raising=False)
    assert model_io.find_shared_ict() == ICT_ZIP.resolve()
    t0 = time.perf_counter()
    r = model_io.resolve_model()
    assert time.perf_counter() - t0 < 2.0
    assert r.content_hash == m.content_hash
    info = model_io.model_info(r)
    assert info["vertices"] == 9409 and info["landmarks"] == 68 and info["units"] == "mm"
    # ICT has no albedo; facefit's shipped statistical colour model is attached
    assert info["color_model"].startswith("statistical") and info["color_components"] == 30
