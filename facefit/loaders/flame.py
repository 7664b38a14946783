"""FLAME (Li et al. 2017) ``generic_model.pkl`` / ``flame2020`` / ``flame2023`` -> MorphableModel.

The ``.pkl`` is a Python 2 pickle of a dict with ``v_template`` (V, 3) in metres,
``shapedirs`` (V, 3, 400): the first 300 columns are identity shape, the last 100
expression, ``f`` (F, 3) triangles, and skinning data facefit does not use
(``J_regressor`` as a scipy sparse matrix, ``weights``, ``kintree_table``, ``posedirs``).
Some arrays are chumpy objects. It is read with :func:`facefit.safe_pickle.safe_load`,
which never runs code from the file.

FLAME's ``shapedirs`` columns are principal directions already multiplied by their
standard deviation, so FLAME's own coefficients (betas) are roughly N(0, 1). facefit
stores each column as a unit direction plus std = the column's norm (in mm), so facefit
coefficients equal FLAME betas. FLAME needs a registration at flame.is.tue.mpg.de.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facefit.errors import InvalidFileError, ModelNotFoundError
from facefit.loaders.common import assemble_model, cached_convert, detect_scale_to_mm, file_signature
from facefit.morphable import MorphableModel
from facefit.safe_pickle import safe_load

__all__ = ["load_flame"]

_FLAME_SHAPE = 300


def _array(d: dict, key: str, where: str) -> np.ndarray:
    if key not in d:
        raise InvalidFileError(f"{where}: missing '{key}'; not a FLAME model .pkl?")
    v = d[key]
    if hasattr(v, "toarray"):
        v = v.toarray()
    try:
        a = np.asarray(v)
    except Exception as exc:
        raise InvalidFileError(f"{where}: '{key}' is not an array ({type(v).__name__})") from exc
    if a.dtype.kind not in "fiu":
        raise InvalidFileError(f"{where}: '{key}' is not numeric (dtype {a.dtype})")
    return a


def _build(path: Path, n_shape: int, units: str | None, landmarks) -> MorphableModel:
    where = str(path)
    d = safe_load(path)
    if not isinstance(d, dict):
        raise InvalidFileError(f"{where}: expected a dict of arrays, got {type(d).__name__}")
    v = _array(d, "v_template", where).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InvalidFileError(f"{where}: v_template must be (V, 3), got {v.shape}")
    n_v = v.shape[0]
    dirs = _array(d, "shapedirs", where).astype(np.float64)
    if dirs.ndim != 3 or dirs.shape[:2] != (n_v, 3):
        raise InvalidFileError(f"{where}: shapedirs must be ({n_v}, 3, K), got {dirs.shape}")
    f = _array(d, "f", where)
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
        raise InvalidFileError(f"{where}: f must be (F, 3) integers, got {f.shape} {f.dtype}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= n_v):
        raise InvalidFileError(f"{where}: triangle index out of range")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(dirs))):
        raise InvalidFileError(f"{where}: non-finite values in v_template/shapedirs")
    scale, unit = detect_scale_to_mm(v, units if units is not None else "m", where)
    k_s = min(n_shape, dirs.shape[2])
    shape, expr = dirs[:, :, :k_s] * scale, dirs[:, :, k_s:] * scale
    meta: dict[str, Any] = {
        "source": "FLAME",
        "source_file": path.name,
        "license": "FLAME licence (registration at flame.is.tue.mpg.de; not redistributable)",
        "units_source": unit,
        "shape_model": (
            f"{k_s} FLAME shape components; FLAME shapedirs are scaled by their std, so facefit "
            "coefficients equal FLAME betas and are roughly N(0, 1)"
        ),
        "color_model": "none (flat skin tone; FLAME's albedo model is a separate download)",
        "unused_keys": sorted(str(k) for k in d if k not in ("v_template", "shapedirs", "f")),
    }
    if expr.shape[2]:
        meta["expr_model"] = f"{expr.shape[2]} FLAME expression components (linear, roughly N(0, 1))"
        meta["expr_model_kind"] = "pca"
    return assemble_model(
        "flame",
        v * scale,
        f,
        shape_basis=shape,
        expr_basis=expr if expr.shape[2] else None,
        expr_names=[f"flame_expr{k:03d}" for k in range(expr.shape[2])] if expr.shape[2] else None,
        landmarks=landmarks,
        meta=meta,
    )


def load_flame(
    path: str | Path, *, n_shape: int = _FLAME_SHAPE, units: str | None = None, landmarks=None, use_cache: bool = True
) -> MorphableModel:
    """Import a FLAME model ``.pkl`` (see the module docstring).

    Args:
        path: the ``.pkl`` file.
        n_shape: how many leading ``shapedirs`` columns are identity shape (300 in FLAME
            2017/2020/2023); the rest are expression.
        units: source unit (default "m").
        landmarks: optional 68 vertex indices for this topology (FLAME ships its landmark
            embedding separately, as barycentric coordinates).
        use_cache: reuse/store the converted model in the cache.
    Returns:
        MorphableModel (whole head; no colour model; ``face_mask`` all True).
    Raises:
        ModelNotFoundError, InvalidFileError (also for pickles that try to run code).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    lm = None if landmarks is None else np.asarray(landmarks, np.int64)
    key = file_signature(path) + [str(n_shape), str(units), "" if lm is None else lm.tobytes().hex()]
    return cached_convert("flame", "head", key, lambda: _build(path, n_shape, units, lm), use_cache)
