"""Helpers shared by the model loaders: units, orientation, winding and the import cache."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facefit.errors import FacefitError, InvalidFileError

__all__ = [
    "LOADER_VERSION",
    "UNIT_SCALES",
    "detect_scale_to_mm",
    "landmark_frame",
    "rotate_vectors",
    "outward_flux",
    "cache_dir",
    "cached_convert",
    "assemble_model",
    "file_signature",
    "SYMMETRY_TOLERANCE_MM",
]

#: Bump when any conversion changes its output, to invalidate cached imports.
LOADER_VERSION = "1"

#: Multipliers from a unit to millimetres.
UNIT_SCALES = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0, "um": 1e-3}

# A converted model's extent (largest of its x/y sizes) must fall in this range (mm):
# a face mask is ~100-200 mm wide, a full head with neck ~ 200-350 mm tall.
_PLAUSIBLE_MM = (60.0, 600.0)


def detect_scale_to_mm(points: np.ndarray, declared: str | None = None, name: str = "model") -> tuple[float, str]:
    """Scale factor that converts a model's coordinates to millimetres.

    Args:
        points: (V, 3) mean shape in the source units.
        declared: the source unit if known ("mm", "cm", "m", "um", ...); else guessed
            from the size: the unit for which the face/head spans 60-600 mm.
        name: for error messages.
    Returns:
        ``(scale, unit)`` with ``points * scale`` in mm.
    Raises:
        InvalidFileError: no unit gives a plausible face size.
    """
    if declared is not None:
        if declared not in UNIT_SCALES:
            raise FacefitError(f"unknown unit {declared!r}; use one of {', '.join(UNIT_SCALES)}")
        return UNIT_SCALES[declared], declared
    ext = float(np.max(np.ptp(np.asarray(points, np.float64)[:, :2], axis=0)))
    for unit in ("mm", "cm", "m", "um", "dm"):
        size = ext * UNIT_SCALES[unit]
        if _PLAUSIBLE_MM[0] <= size <= _PLAUSIBLE_MM[1]:
            return UNIT_SCALES[unit], unit
    raise InvalidFileError(f"{name}: cannot tell the units (model spans {ext:.4g} units in x/y)")


def landmark_frame(points: np.ndarray, landmarks: Sequence[int]) -> np.ndarray:
    """Rotation that brings a face into facefit's axes, judged from its 68 landmarks.

    Right = from landmark 36 (subject's right eye, outer corner) to 45; up = from the chin
    (8) to the eye midpoint, orthogonalised; forward = right x up. When these are within
    ~25 degrees of coordinate axes the result is snapped to an exact signed permutation,
    so an already correctly oriented model gets exactly the identity.

    Args:
        points: (V, 3) mean shape.
        landmarks: 68 vertex indices (Multi-PIE order).
    Returns:
        (3, 3) rotation R (det +1); corrected points are ``points @ R.T``.
    Raises:
        InvalidFileError: the landmarks are degenerate or the nose points backwards
            (a mirrored model).
    """
    p = np.asarray(points, np.float64)[np.asarray(landmarks)]
    right = p[45] - p[36]
    up = (p[36] + p[45]) / 2 - p[8]
    if np.linalg.norm(right) < 1e-9 or np.linalg.norm(up) < 1e-9:
        raise InvalidFileError("model landmarks are degenerate (eyes or chin coincide)")
    right /= np.linalg.norm(right)
    up -= right * (up @ right)
    up /= np.linalg.norm(up)
    fwd = np.cross(right, up)
    rot = np.stack([right, up, fwd])
    if np.all(np.abs(rot).max(axis=1) > 0.9):
        snapped = np.zeros((3, 3))
        for i in range(3):
            j = int(np.argmax(np.abs(rot[i])))
            snapped[i, j] = np.sign(rot[i, j])
        if abs(np.linalg.det(snapped) - 1.0) < 1e-6:
            rot = snapped
    nose = rot @ (p[30] - (p[36] + p[45]) / 2)
    if nose[2] <= 0:
        raise InvalidFileError("model landmarks put the nose behind the eyes (mirrored model?)")
    return rot


def rotate_vectors(arr: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Apply a rotation to (V, 3) points or (V, 3, K) basis vectors.

    Args:
        arr: (V, 3) or (V, 3, K).
        rot: (3, 3).
    Returns:
        Same shape, float32, ``rot @ x`` for every 3-vector x.
    """
    rot = np.asarray(rot, np.float32)
    if arr.ndim == 2:
        return (arr @ rot.T).astype(np.float32)
    return np.einsum("ij,vjk->vik", rot, arr).astype(np.float32)


def outward_flux(points: np.ndarray, triangles: np.ndarray) -> float:
    """Sum over triangles of (centroid - mesh centroid) . (area normal).

    Positive when the triangles are counter-clockwise seen from outside (normals point
    away from the middle), for closed heads and open face masks alike.

    Args:
        points: (V, 3); triangles: (F, 3) int.
    Returns:
        The flux (units^3).
    """
    p = np.asarray(points, np.float64)
    a, b, c = p[triangles[:, 0]], p[triangles[:, 1]], p[triangles[:, 2]]
    n = np.cross(b - a, c - a)
    centre = p[np.unique(triangles)].mean(axis=0)
    return float(np.einsum("fi,fi->", (a + b + c) / 3 - centre, n))


def cache_dir() -> Path:
    """Folder of converted models: ``<facefit cache>/models`` (see :mod:`facefit.cache`)."""
    from facefit.cache import cache_dir as root

    return root("models")


def cached_convert(kind: str, tag: str, key_parts: Sequence[str], build: Callable[[], "object"], use_cache: bool = True):
    """Return a converted model from the cache, or build and cache it.

    Args:
        kind: loader kind (part of the file name).
        tag: short readable tag (e.g. region) for the file name.
        key_parts: strings identifying the source content and options; hashed with
            :data:`LOADER_VERSION`.
        build: zero-argument function returning a MorphableModel.
        use_cache: False to always build (and not write).
    Returns:
        MorphableModel.
    """
    from facefit.morphable import MorphableModel

    if not use_cache:
        return build()
    digest = hashlib.sha256("\n".join([LOADER_VERSION, kind, tag, *key_parts]).encode()).hexdigest()[:24]
    path = cache_dir() / f"{kind}-{tag}-{digest}.npz"
    if path.is_file():
        try:
            return MorphableModel.load(path)
        except FacefitError:
            pass  # corrupt or stale entry: rebuild below
    model = build()
    try:
        model.save(path, compress=True)
    except (FacefitError, OSError) as exc:
        warnings.warn(f"facefit: could not cache the converted model in {path.parent}: {exc}", stacklevel=2)
    return model


#: A nearest-neighbour symmetry map is kept only if every vertex has a mirror partner
#: within this distance (mm); otherwise the mesh is not symmetric enough to use one.
SYMMETRY_TOLERANCE_MM = 2.0


def assemble_model(
    name: str,
    mean_mm: np.ndarray,
    triangles: np.ndarray,
    *,
    shape_basis: np.ndarray | None = None,
    shape_std: np.ndarray | None = None,
    mean_color: np.ndarray | None = None,
    color_basis: np.ndarray | None = None,
    color_std: np.ndarray | None = None,
    expr_basis: np.ndarray | None = None,
    expr_std: np.ndarray | None = None,
    expr_names: list[str] | None = None,
    uv: np.ndarray | None = None,
    uv_triangles: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    face_mask: np.ndarray | None = None,
    meta: dict | None = None,
):
    """Bring converted arrays to facefit's conventions and build the model.

    Steps: rotate to +y up / +z forward when 68 landmarks are known
    (:func:`landmark_frame`), make triangles counter-clockwise from outside
    (:func:`outward_flux`), compute a symmetry map (kept when within
    :data:`SYMMETRY_TOLERANCE_MM`), normalise the bases.

    Args:
        mean_mm: (V, 3) in mm; bases (V, 3, K) in mm (shape/expression) with any column
            scale, std (K,) or None; see :class:`facefit.morphable.MorphableModel`.
    Returns:
        MorphableModel. ``meta`` records what was changed.
    """
    from facefit.morphable import MorphableModel, compute_symmetry

    meta = dict(meta or {})
    mean = np.asarray(mean_mm, np.float32)
    tri = np.asarray(triangles, np.int64)
    if landmarks is not None:
        rot = landmark_frame(mean, landmarks)
        if not np.allclose(rot, np.eye(3)):
            mean = rotate_vectors(mean, rot)
            if shape_basis is not None:
                shape_basis = rotate_vectors(np.asarray(shape_basis, np.float32), rot)
            if expr_basis is not None:
                expr_basis = rotate_vectors(np.asarray(expr_basis, np.float32), rot)
            meta["rotated_to_conventions"] = rot.round(6).tolist()
    if len(tri) and outward_flux(mean, tri) < 0:
        tri = tri[:, [0, 2, 1]]
        if uv_triangles is not None:
            uv_triangles = np.asarray(uv_triangles)[:, [0, 2, 1]]
        meta["winding_flipped"] = True
    sym, err = compute_symmetry(mean)
    meta["symmetry_max_error_mm"] = round(err, 4)
    if err > SYMMETRY_TOLERANCE_MM:
        sym = None
    return MorphableModel(
        name=name,
        mean_shape=mean,
        triangles=tri,
        shape_basis=shape_basis,
        shape_std=shape_std,
        mean_color=mean_color,
        color_basis=color_basis,
        color_std=color_std,
        expr_basis=expr_basis,
        expr_std=expr_std,
        expr_names=expr_names,
        uv=uv,
        uv_triangles=uv_triangles,
        landmarks=landmarks,
        face_mask=face_mask,
        symmetry=sym,
        meta=meta,
    )


def file_signature(path: Path) -> list[str]:
    """Strings identifying a source file for the cache: resolved path, size, mtime."""
    st = path.stat()
    return [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
