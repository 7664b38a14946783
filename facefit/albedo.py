"""Colour (albedo) models for morphable models that ship none.

Two kinds live here:

* :func:`heuristic_albedo` — a small, hand-designed *linear* colour model. It is
  **not** a statistical model of human skin: its mean is a neutral mid skin tone, and
  each component is a named, interpretable direction (overall skin tone, red/yellow
  balance, lip, brow, cheek and nose colour). It exists so that faces of models without
  an albedo basis (ICT-FaceKit, FLAME) render with plausible, varied skin colour and
  a regressor has colour coefficients to learn. ``facefit model info`` reports it as
  heuristic.
* A statistical model learned from photos (see :mod:`facefit.albedo_build`) replaces it
  wherever it is available.

All colours are per-vertex RGB in [0, 1]; bases are (V, 3, K) with unit-norm columns and
a per-component standard deviation, like every other facefit basis.
"""
from __future__ import annotations

import numpy as np

# Mean colours (linear-ish RGB in [0, 1]) of a medium skin tone and of a few regions.
SKIN = np.array([0.74, 0.55, 0.45], np.float32)
LIPS = np.array([0.66, 0.38, 0.36], np.float32)
BROWS = np.array([0.38, 0.28, 0.22], np.float32)

# 68-point (Multi-PIE) landmark groups used to place regions.
_BROW_L = list(range(17, 22))
_BROW_R = list(range(22, 27))
_NOSE = list(range(27, 36))
_LIPS = list(range(48, 68))
_JAW = list(range(0, 17))

HEURISTIC_DESCRIPTION = (
    "heuristic: hand-designed linear colour model (skin tone, red/yellow balance, lips, "
    "brows, cheeks, nose); NOT a statistical albedo model"
)


def _region_weight(points: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Smooth weight in [0, 1] of each point's closeness to a set of region centres.

    Args:
        points: (V, 3) vertex positions in mm.
        centres: (N, 3) points that define the region.
        radius: falloff radius in mm.
    Returns:
        (V,) float32 weights, 1 on the region, falling off like a Gaussian.
    """
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(1)
    return np.exp(-d2 / (2.0 * radius**2)).astype(np.float32)


def heuristic_albedo(
    mean_shape: np.ndarray,
    landmarks: np.ndarray | None = None,
    face_mask: np.ndarray | None = None,
):
    """Build the heuristic linear colour model for a mesh.

    Args:
        mean_shape: (V, 3) mean vertex positions in mm (model space, +y up).
        landmarks: (68,) vertex indices in Multi-PIE order, or None (then only the
            global components exist).
        face_mask: (V,) bool face-region mask, or None.
    Returns:
        ``(mean_color (V,3), basis (V,3,K), std (K,), names list[str], description)``;
        basis columns (flattened to 3V) have unit norm, ``std`` is chosen so that
        coefficients ~ N(0, 1) give colours mostly inside [0, 1].
    """
    v = mean_shape.astype(np.float32)
    n = v.shape[0]
    mean = np.tile(SKIN, (n, 1))
    directions, stds, names = [], [], []

    # 1. Overall skin tone (melanin-like): scales all channels, blue a bit more.
    directions.append(np.tile(SKIN * np.array([1.0, 1.1, 1.25], np.float32), (n, 1)))
    stds.append(0.22)
    names.append("skin_tone")
    # 2. Red vs. yellow balance (haemoglobin vs. carotene-like hue shift).
    directions.append(np.tile(np.array([0.6, -0.2, -0.5], np.float32), (n, 1)))
    stds.append(0.05)
    names.append("red_yellow")

    if landmarks is not None and len(landmarks) == 68:
        lm = v[np.asarray(landmarks)]
        face_width = float(np.linalg.norm(lm[0] - lm[16])) or 140.0
        r = face_width / 14.0
        w_lips = _region_weight(v, lm[_LIPS], r * 0.9)
        w_brow = _region_weight(v, lm[_BROW_L + _BROW_R], r * 0.7)
        w_nose = _region_weight(v, lm[_NOSE[4:]], r * 1.2)
        # Cheeks: between the jaw line and the nose, below the eyes.
        cheeks = np.stack([(lm[2] + lm[31]) / 2, (lm[14] + lm[35]) / 2])
        w_cheek = _region_weight(v, cheeks, r * 2.0)
        if face_mask is not None:
            for w in (w_lips, w_brow, w_nose, w_cheek):
                w *= face_mask.astype(np.float32)
        # Mean: blend lips and brows into the skin.
        mean = mean * (1 - w_lips[:, None]) + LIPS * w_lips[:, None]
        mean = mean * (1 - w_brow[:, None]) + BROWS * w_brow[:, None]
        directions.append(w_lips[:, None] * np.array([0.5, -0.4, -0.3], np.float32))
        stds.append(0.08)
        names.append("lip_colour")
        directions.append(w_brow[:, None] * np.array([1.0, 0.9, 0.8], np.float32))
        stds.append(0.12)
        names.append("brow_darkness")
        directions.append(w_cheek[:, None] * np.array([0.6, -0.3, -0.3], np.float32))
        stds.append(0.05)
        names.append("cheek_redness")
        directions.append(w_nose[:, None] * np.array([0.6, -0.2, -0.2], np.float32))
        stds.append(0.04)
        names.append("nose_redness")

    basis = np.stack(directions, axis=-1).astype(np.float32)  # (V, 3, K)
    norms = np.linalg.norm(basis.reshape(-1, basis.shape[-1]), axis=0)
    basis /= norms
    # std is given per unit of the *per-vertex* direction; convert to the unit-norm basis.
    std = (np.asarray(stds, np.float32) * norms).astype(np.float32)
    # Per-vertex direction magnitude differs between components; the above keeps
    # coefficient 1 == the listed per-vertex change for a vertex of direction length 1.
    return mean.astype(np.float32), basis, std, names, HEURISTIC_DESCRIPTION


def attach_default_color(model):
    """Give a model without a colour basis facefit's default colour model.

    The statistical albedo model shipped in ``models/`` for this shape model (matched by
    the shape-only hash) is used when it exists; otherwise the heuristic model above.
    Models that already have a colour basis are returned unchanged.

    Args:
        model: a :class:`facefit.morphable.MorphableModel`.
    Returns:
        A MorphableModel with ``n_color > 0``.
    """
    if model.n_color > 0:
        return model
    try:
        from facefit.albedo_build import shipped_albedo_for
    except ImportError:  # the learned model is optional
        shipped_albedo_for = None
    if shipped_albedo_for is not None:
        learned = shipped_albedo_for(model)
        if learned is not None:
            return learned
    mean, basis, std, names, desc = heuristic_albedo(model.mean_shape, model.landmarks, model.face_mask)
    return model.with_color_model(mean, basis, std, description=desc, names=names)
