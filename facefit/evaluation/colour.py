"""Colour consistency of reconstructions: CIEDE2000 between predicted face colours.

A regressor whose colour follows the person (not the photo's lighting) gives two photos of
the same person similar face colours and two people different ones. For every photo the
median colour of its predicted face (over the mesh's vertices, per channel) is converted
to CIELAB and the CIEDE2000 colour difference is averaged over same-person and over
different-people photo pairs (:func:`colour_consistency`).

:func:`ciede2000` follows G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference
formula: implementation notes, supplementary test data, and mathematical observations",
Color Research & Application 30(1), 2005 (equations 1-22; ``kL = kC = kH = 1``); the test
suite checks it on their published test pairs. :func:`srgb_to_lab` is the standard sRGB
(IEC 61966-2-1) -> XYZ -> CIELAB conversion with the D65 white point.
"""
from __future__ import annotations

import numpy as np

__all__ = ["srgb_to_lab", "ciede2000", "median_face_colours", "colour_consistency"]

_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])


def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65).

    Args:
        rgb: (..., 3) sRGB values (clipped to [0, 1]).
    Returns:
        (..., 3) float64 ``L*, a*, b*``.
    """
    c = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _D65
    eps, kappa = 216.0 / 24389.0, 24389.0 / 27.0
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16.0) / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], -1)


def ciede2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma et al. 2005), ``kL = kC = kH = 1``.

    Args:
        lab1, lab2: (..., 3) CIELAB colours (broadcast against each other).
    Returns:
        (...) float64 ΔE00.
    """
    lab1 = np.asarray(lab1, np.float64)
    lab2 = np.asarray(lab2, np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    # (2)-(7): a' with the G correction, C', h'
    C1 = np.hypot(a1, b1)
    C2 = np.hypot(a2, b2)
    Cbar7 = ((C1 + C2) / 2.0) ** 7
    G = 0.5 * (1.0 - np.sqrt(Cbar7 / (Cbar7 + 25.0 ** 7)))
    a1p, a2p = (1.0 + G) * a1, (1.0 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360.0)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360.0)
    # (8)-(10): differences
    dLp = L2 - L1
    dCp = C2p - C1p
    prod = C1p * C2p
    dh = h2p - h1p
    dhp = np.where(prod == 0, 0.0, np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh)))
    dHp = 2.0 * np.sqrt(prod) * np.sin(np.radians(dhp / 2.0))
    # (12)-(22): weighting functions and rotation term
    Lbp = (L1 + L2) / 2.0
    Cbp = (C1p + C2p) / 2.0
    hsum = h1p + h2p
    hbp = np.where(prod == 0, hsum,
                   np.where(np.abs(h1p - h2p) <= 180.0, hsum / 2.0,
                            np.where(hsum < 360.0, (hsum + 360.0) / 2.0, (hsum - 360.0) / 2.0)))
    T = (1.0 - 0.17 * np.cos(np.radians(hbp - 30.0)) + 0.24 * np.cos(np.radians(2.0 * hbp))
         + 0.32 * np.cos(np.radians(3.0 * hbp + 6.0)) - 0.20 * np.cos(np.radians(4.0 * hbp - 63.0)))
    dtheta = 30.0 * np.exp(-(((hbp - 275.0) / 25.0) ** 2))
    Cbp7 = Cbp ** 7
    RC = 2.0 * np.sqrt(Cbp7 / (Cbp7 + 25.0 ** 7))
    SL = 1.0 + 0.015 * (Lbp - 50.0) ** 2 / np.sqrt(20.0 + (Lbp - 50.0) ** 2)
    SC = 1.0 + 0.045 * Cbp
    SH = 1.0 + 0.015 * Cbp * T
    RT = -np.sin(np.radians(2.0 * dtheta)) * RC
    tL, tC, tH = dLp / SL, dCp / SC, dHp / SH
    return np.sqrt(tL ** 2 + tC ** 2 + tH ** 2 + RT * tC * tH)


def median_face_colours(colors) -> np.ndarray:
    """Per-face median colour over vertices.

    Args:
        colors: (N, V, 3) vertex colours (sRGB, [0, 1]), numpy or torch.
    Returns:
        (N, 3) float64.
    """
    c = colors.detach().cpu().numpy() if hasattr(colors, "detach") else np.asarray(colors)
    return np.median(np.asarray(c, np.float64), axis=1)


def colour_consistency(face_rgb, labels) -> dict:
    """Mean CIEDE2000 between the face colours of photo pairs, split by identity.

    Args:
        face_rgb: (N, 3) one colour per photo (e.g. :func:`median_face_colours`), sRGB [0, 1].
        labels: (N,) identities.
    Returns:
        dict: ``de00_same`` (mean over same-person pairs), ``de00_diff`` (different
        people), ``n_same_pairs``, ``n_diff_pairs`` (NaN means when a kind has no pair).
    """
    lab = srgb_to_lab(np.asarray(face_rgb, np.float64))
    labels = np.asarray([str(x) for x in labels])
    iu = np.triu_indices(len(labels), k=1)
    d = ciede2000(lab[iu[0]], lab[iu[1]])
    same = labels[iu[0]] == labels[iu[1]]
    return {
        "de00_same": float(d[same].mean()) if same.any() else float("nan"),
        "de00_diff": float(d[~same].mean()) if (~same).any() else float("nan"),
        "n_same_pairs": int(same.sum()),
        "n_diff_pairs": int((~same).sum()),
    }
