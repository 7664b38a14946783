"""Basel Face Model 2017/2019 (Statismo HDF5) and 2009 (``01_MorphableModel.mat``).

The BFM files need a registration with the University of Basel, so facefit cannot ship or
download them; users import their own copy.

BFM 2017/2019 (``model2017-1_bfm_nomouth.h5``, ``model2019_face12.h5``, ...), Statismo layout:

* ``shape/model/mean`` (3V,), ``shape/model/pcaBasis`` (3V, K) with unit-norm columns,
  ``shape/model/pcaVariance`` (K,) eigenvalues (std = sqrt); the same under ``color/`` (colour
  in [0, 1]) and, optionally, ``expression/``;
* ``shape/representer/cells`` (3, F) triangles (0-based; (F, 3) also accepted).
* Coordinates are in millimetres.

BFM 2009 (``01_MorphableModel.mat``): ``shapeMU`` (3V, 1), ``shapePC`` (3V, K),
``shapeEV`` (K, 1) standard deviations, ``texMU``/``texPC``/``texEV`` with colour in
0..255, ``tl`` (F, 3) 1-based triangles. Coordinates are in micrometres.

In both cases the unit is checked against the size of the face (it must span 60-600 mm
after conversion; see :func:`facefit.loaders.common.detect_scale_to_mm`), and every basis is
renormalised (so a basis stored already scaled by its std also converts correctly).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.loaders.common import assemble_model, cached_convert, detect_scale_to_mm, file_signature
from facefit.morphable import MorphableModel

__all__ = ["load_bfm2017", "load_bfm2009"]

_BFM_LICENSE = "Basel Face Model licence (registration with the University of Basel; not redistributable)"


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    return path


def _numeric(arr: Any, label: str, where: str) -> np.ndarray:
    """``arr`` as an array of real numbers, or InvalidFileError (strings, structs, complex...)."""
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf":
        kind = {"S": "text", "U": "text", "O": "text or other non-numeric data", "V": "compound records",
                "c": "complex numbers"}.get(a.dtype.kind, f"{a.dtype} data")
        raise InvalidFileError(f"{where}: {label} holds {kind}, not real numbers")
    return a


def _triangles(cells: np.ndarray, n_v: int, one_based: bool, where: str) -> np.ndarray:
    cells = _numeric(cells, "the triangle list", where)
    if cells.ndim != 2 or 3 not in cells.shape:
        raise InvalidFileError(f"{where}: triangles must be (F, 3) or (3, F), got {cells.shape}")
    if cells.shape[1] != 3:  # Statismo stores (3, F)
        cells = cells.T
    if cells.dtype.kind == "f":
        if not np.all(np.isfinite(cells)) or np.any(cells != np.round(cells)):
            raise InvalidFileError(f"{where}: triangle indices are not integers")
    tri = cells.astype(np.int64) - (1 if one_based else 0)
    if tri.size and (tri.min() < 0 or tri.max() >= n_v):
        raise InvalidFileError(f"{where}: triangle index out of range for {n_v} vertices")
    return np.ascontiguousarray(tri)


def _pca(mean: np.ndarray, basis: np.ndarray, std: np.ndarray, n_v: int, what: str, where: str):
    """Check and reshape a flattened PCA model: (3V,), (3V, K), (K,) -> (V,3), (V,3,K), (K,)."""
    mean = _numeric(mean, f"the {what} mean", where).astype(np.float64).reshape(-1)
    basis = _numeric(basis, f"the {what} basis", where).astype(np.float64)
    std = _numeric(std, f"the {what} variance vector", where).astype(np.float64).reshape(-1)
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2:
        raise InvalidFileError(f"{where}: {what} basis must be a (3V, K) matrix, got shape {basis.shape}")
    if mean.size != 3 * n_v:
        raise InvalidFileError(
            f"{where}: {what} mean has {mean.size} values, expected {3 * n_v} (x, y, z of {n_v} vertices)"
        )
    if basis.shape[0] != 3 * n_v:
        raise InvalidFileError(
            f"{where}: {what} basis has {basis.shape[0]} rows, expected {3 * n_v} (x, y, z of {n_v} vertices)"
        )
    if basis.shape[1] != std.size:
        raise InvalidFileError(f"{where}: {what} basis has {basis.shape[1]} columns but {std.size} variances")
    for label, arr in (("mean", mean), ("basis", basis), ("variance", std)):
        if not np.all(np.isfinite(arr)):
            raise InvalidFileError(f"{where}: {what} {label} has non-finite values")
    if np.any(std < 0):
        raise InvalidFileError(f"{where}: {what} has negative standard deviations/variances")
    return mean.reshape(n_v, 3), basis.reshape(n_v, 3, -1), std


# --------------------------------------------------------------------------- BFM 2017


def _h5(group: Any, key: str, where: str, required: bool = True):
    if key in group:
        obj = group[key]
        if not hasattr(obj, "dtype"):
            raise InvalidFileError(f"{where}: /{key} is a group, not a dataset; not a Basel Face Model 2017/2019 file?")
        try:
            data = obj[()]
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidFileError(f"{where}: cannot read /{key} ({exc})".splitlines()[0]) from None
        return _numeric(data, f"/{key}", where)
    if required:
        raise InvalidFileError(f"{where}: missing /{key}; not a Basel Face Model 2017/2019 file?")
    return None


def _build_2017(path: Path, units: str | None, landmarks) -> MorphableModel:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover
        raise FacefitError("reading BFM 2017 needs the h5py package (pip install h5py)") from exc
    where = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidFileError(f"{where}: not a readable HDF5 file ({exc})".splitlines()[0]) from None
    with f:
        mean = _h5(f, "shape/model/mean", where)
        n_v = mean.size // 3
        if mean.size % 3 or n_v < 3:
            raise InvalidFileError(f"{where}: shape mean has {mean.size} values, not 3 per vertex")
        s_mean, s_basis, s_var = _pca(
            mean, _h5(f, "shape/model/pcaBasis", where), _h5(f, "shape/model/pcaVariance", where), n_v, "shape", where
        )
        tri = _triangles(_h5(f, "shape/representer/cells", where), n_v, False, where)
        color = None
        if "color/model/mean" in f:
            color = _pca(
                _h5(f, "color/model/mean", where), _h5(f, "color/model/pcaBasis", where),
                _h5(f, "color/model/pcaVariance", where), n_v, "color", where,
            )
        expr = None
        if "expression/model/mean" in f:
            expr = _pca(
                _h5(f, "expression/model/mean", where), _h5(f, "expression/model/pcaBasis", where),
                _h5(f, "expression/model/pcaVariance", where), n_v, "expression", where,
            )
    scale, unit = detect_scale_to_mm(s_mean, units, where)
    meta: dict[str, Any] = {
        "source": "Basel Face Model 2017/2019 (Statismo HDF5)",
        "source_file": path.name,
        "license": _BFM_LICENSE,
        "units_source": unit,
        "shape_model": f"{s_basis.shape[2]} PCA components, coefficients N(0, 1)",
    }
    kw: dict[str, Any] = {}
    if color is not None:
        c_mean, c_basis, c_var = color
        c_std = np.sqrt(c_var)
        if c_mean.max() > 1.5:  # stored as 0..255
            c_mean, c_std = c_mean / 255.0, c_std / 255.0
        kw.update(mean_color=np.clip(c_mean, 0.0, 1.0), color_basis=c_basis, color_std=c_std)
        meta["color_model"] = f"statistical PCA from the Basel Face Model ({c_basis.shape[2]} components)"
    else:
        meta["color_model"] = "none (flat skin tone)"
    if expr is not None:
        e_mean, e_basis, e_var = expr
        kw.update(expr_basis=e_basis * scale, expr_std=np.sqrt(e_var))
        kw["expr_names"] = [f"bfm_expr{k:03d}" for k in range(e_basis.shape[2])]
        meta["expr_model"] = f"{e_basis.shape[2]} PCA expression components, coefficients N(0, 1)"
        meta["expr_model_kind"] = "pca"
        meta["expr_mean_rms_mm"] = round(float(np.sqrt(np.mean(e_mean**2))) * scale, 4)
    return assemble_model(
        "bfm2017",
        s_mean * scale,
        tri,
        shape_basis=s_basis * scale,
        shape_std=np.sqrt(s_var),
        landmarks=landmarks,
        meta=meta,
        **kw,
    )


def load_bfm2017(
    path: str | Path, *, units: str | None = None, landmarks=None, use_cache: bool = True
) -> MorphableModel:
    """Import a Basel Face Model 2017/2019 ``.h5`` (Statismo layout, see module docstring).

    Args:
        path: the ``.h5`` file.
        units: source unit ("mm" for BFM 2017/2019); default: detected from the face size.
        landmarks: optional 68 vertex indices (Multi-PIE order) for this topology.
        use_cache: reuse/store the converted model in the cache.
    Returns:
        MorphableModel with shape, colour and (if present) expression PCA models.
    Raises:
        ModelNotFoundError, InvalidFileError.
    """
    path = _check_path(path)
    lm = None if landmarks is None else np.asarray(landmarks, np.int64)
    key = file_signature(path) + [str(units), "" if lm is None else lm.tobytes().hex()]
    return cached_convert("bfm2017", "full", key, lambda: _build_2017(path, units, lm), use_cache)


# --------------------------------------------------------------------------- BFM 2009


def _read_mat(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file (v5 via scipy; v7.3/HDF5 via h5py, transposed back)."""
    import scipy.io

    where = str(path)
    try:
        data = scipy.io.loadmat(path, variable_names=keys)
        return {k: np.asarray(v) for k, v in data.items() if k in keys}
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k][()]).T for k in keys if k in f}
    except (ValueError, OSError, TypeError) as exc:
        raise InvalidFileError(f"{where}: not a readable MATLAB file ({exc})".splitlines()[0]) from None


def _build_2009(path: Path, units: str | None, landmarks) -> MorphableModel:
    where = str(path)
    d = _read_mat(path, ["shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl"])
    for k in ("shapeMU", "shapePC", "shapeEV", "tl"):
        if k not in d:
            raise InvalidFileError(f"{where}: missing variable '{k}'; not a BFM 2009 01_MorphableModel.mat?")
    n_v = d["shapeMU"].size // 3
    if d["shapeMU"].size % 3 or n_v < 3:
        raise InvalidFileError(f"{where}: shapeMU has {d['shapeMU'].size} values, not 3 per vertex")
    s_mean, s_basis, s_std = _pca(d["shapeMU"], d["shapePC"], d["shapeEV"], n_v, "shape", where)
    tri = _triangles(d["tl"], n_v, True, where)
    scale, unit = detect_scale_to_mm(s_mean, units, where)
    meta: dict[str, Any] = {
        "source": "Basel Face Model 2009 (01_MorphableModel.mat)",
        "source_file": path.name,
        "license": _BFM_LICENSE,
        "units_source": unit,
        "shape_model": f"{s_basis.shape[2]} PCA components, coefficients N(0, 1)",
    }
    kw: dict[str, Any] = {}
    if all(k in d for k in ("texMU", "texPC", "texEV")):
        c_mean, c_basis, c_std = _pca(d["texMU"], d["texPC"], d["texEV"], n_v, "texture", where)
        div = 255.0 if c_mean.max() > 1.5 else 1.0
        kw.update(mean_color=np.clip(c_mean / div, 0.0, 1.0), color_basis=c_basis, color_std=c_std / div)
        meta["color_model"] = f"statistical PCA from the Basel Face Model 2009 ({c_basis.shape[2]} components)"
    else:
        meta["color_model"] = "none (flat skin tone)"
    return assemble_model(
        "bfm2009", s_mean * scale, tri, shape_basis=s_basis * scale, shape_std=s_std,
        landmarks=landmarks, meta=meta, **kw,
    )


def load_bfm2009(
    path: str | Path, *, units: str | None = None, landmarks=None, use_cache: bool = True
) -> MorphableModel:
    """Import the Basel Face Model 2009 ``01_MorphableModel.mat`` (see module docstring).

    Args:
        path: the ``.mat`` file.
        units: source unit ("um" for BFM 2009); default: detected from the face size.
        landmarks: optional 68 vertex indices (Multi-PIE order) for this topology.
        use_cache: reuse/store the converted model in the cache.
    Returns:
        MorphableModel with shape and colour PCA models (no expressions).
    Raises:
        ModelNotFoundError, InvalidFileError.
    """
    path = _check_path(path)
    lm = None if landmarks is None else np.asarray(landmarks, np.int64)
    key = file_signature(path) + [str(units), "" if lm is None else lm.tobytes().hex()]
    return cached_convert("bfm2009", "full", key, lambda: _build_2009(path, units, lm), use_cache)
