"""Similarity alignment of faces to the crops recognition networks expect.

Conventions
-----------
All coordinates are continuous pixel coordinates (docs/conventions.md): the centre of pixel
(row i, col j) is at (u, v) = (j + 0.5, i + 0.5). An affine ``M`` (2, 3) always maps
**image coordinates to crop coordinates** (the forward direction, like ``cv2.warpAffine``'s
matrix, but in continuous coordinates): ``[u', v'] = M[:, :2] @ [u, v] + M[:, 2]``.
Warping samples the image at ``M^-1`` of each crop pixel centre with bilinear interpolation;
samples outside the image read zeros (black).

Crops (``CROPS``)
-----------------
``"dlib_chip"`` (150 px)
    dlib's face chip, ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)``, as
    computed by dlib's ``get_face_chip_details``: a least-squares similarity from dlib's
    normalised template (5 points for the 5-point shape, the 33 nose/eye/upper-mouth points
    of its mean face for a 68-point shape) scaled by ``(padding + p) / (1 + 2 padding) * size``
    onto the landmarks; the chip then spans the rectangle of side ``scale * size`` around
    the template centre (dlib maps the chip's corner *pixel centres* onto the rectangle's
    corners, so the effective scale is ``(scale*size - 1) / (size - 1)``).
    :func:`dlib_face_chip` reproduces dlib's extraction exactly, including the image
    pyramid dlib uses when the face is more than twice the chip size.
``"arcface_112"`` (112 px)
    The standard 5-point ArcFace / InsightFace template (``ARCFACE_TEMPLATE_112``) fitted by
    least squares (Umeyama without reflection); used by SFace.
``"dlib_wide"`` (250 px)
    The same dlib chip with padding 0.75 (:data:`DLIB_WIDE_PADDING`): at 250 px it has the
    150 px chip's pixel scale, and its centre 150 x 150 pixels are that chip (up to dlib's
    corner-pixel convention: 0.1 px at the chip's edge). Used by the combined dlib + FaceNet
    encoder (:mod:`facefit.recognition.combined`), which cuts both networks' crops from it.
``"facenet_160"`` (160 px)
    The crop FaceNet was validated with (Sandberg's ``align_dataset_mtcnn.py --image_size 160
    --margin 32`` on LFW): an MTCNN-like box from the landmarks grown by a margin
    (:func:`facenet_crop_box`) and resized to ``size`` x ``size``. :func:`facenet_transform`
    also does facenet_pytorch's ``extract_face`` crop of a given box (``margin`` in output
    pixels). Unlike both, the box is not clipped to the image (outside is black) nor rounded
    to integers.

Rendered faces
--------------
:func:`align_rendered` cuts the same crops differentiably from rendered images, using 68
projected model landmarks (dlib/iBUG order):

* ``dlib_chip``: dlib's 5 points are taken from the 68 (:func:`dlib5_from_landmarks68`):
  dlib's 5-point model marks the outer and inner corners of both eyes and the bottom of the
  nose, i.e. 68-point indices (45, 42, 36, 39, 33) in dlib's 5-point order. Measured on
  faces-dev, their mean offset from the 5-point model's own points is at most 0.01
  inter-ocular distances per point, and the chip they give is displaced from the 5-point
  chip by 2.1 px on average (of 150; 3.9 px for dlib's 68-point template), so they are the
  closer substitute.
* ``arcface_112``: :func:`~facefit.faces.detection.landmarks5_from_68` (eye centres = mean
  of the six eye-contour points, nose tip 30, mouth corners 48/54).
* ``facenet_160``: a box derived from the landmarks (:func:`facenet_box_from_landmarks`),
  grown by Sandberg's LFW margin (:func:`facenet_crop_box`, :data:`FACENET_MARGIN`).

:func:`crop_for_net` uses the same landmark-derived points for photos (except dlib chips,
which use dlib's real 5-point shape when present), so photo and render crops match.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facefit.faces.chips import (  # noqa: F401 - re-exported: the chip is part of this module's API
    _DLIB_68_USED,
    _DLIB_MEAN_FACE_X,
    _DLIB_MEAN_FACE_Y,
    _DLIB_TEMPLATE_5,
    _DLIB_TEMPLATE_68,
    DLIB5_FROM_68,
    DLIB_WIDE_PADDING,
    _pyramid_down,
    dlib_face_chip,
)
from facefit.faces.detection import landmarks5_from_68

if TYPE_CHECKING:  # pragma: no cover
    from facefit.faces.detection import Face

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "CROPS",
    "DLIB5_FROM_68",
    "align_rendered",
    "arcface_transform",
    "crop_for_net",
    "crop_transform_from_landmarks68",
    "dlib5_from_landmarks68",
    "dlib_chip_transform",
    "dlib_face_chip",
    "facenet_box_from_landmarks",
    "facenet_crop_box",
    "facenet_transform",
    "invert_affine",
    "similarity_transform",
    "similarity_transform_torch",
    "warp_image",
    "warp_tensor",
]

#: Crop name -> default output size in pixels.
CROPS = {"dlib_chip": 150, "arcface_112": 112, "facenet_160": 160, "dlib_wide": 250}


#: ArcFace/InsightFace 5-point template for 112x112 crops, in the published *pixel-index*
#: coordinates (image-left eye, image-right eye, nose tip, image-left / image-right mouth
#: corner). Add 0.5 for continuous coordinates.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# facenet_160 box from 5 points: with e = eye midpoint, m = mouth-corner midpoint and
# d = |m - e|, the box centre is e + (m - e) * FACENET_BOX[0] and its width / height are
# FACENET_BOX[1] * d / FACENET_BOX[2] * d. Medians of MTCNN boxes against the 68-point
# derived 5 points on 144 faces-dev photos (every 2nd photo; see docs/detection.md).
FACENET_BOX = (0.295, 2.06, 2.75)

# facenet_160 margin: Sandberg's FaceNet models were validated on LFW cropped as
# ``align_dataset_mtcnn.py --image_size 160 --margin 32``: the MTCNN box grown by 32 source
# pixels in width and in height, resized to 160x160. On LFW's 250x250 photos the box has a
# geometric-mean side sqrt(w h) of 107 px (median over the 275 LFW photos of faces-dev), so
# the scale-free margin is 32 / 107 = 0.30 of sqrt(w h), added to both sides.
FACENET_MARGIN = 0.30


# ---------------------------------------------------------------------------------------
# small helpers


def _as_tensor(x, dtype=torch.float64) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy)."""
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype), True


def _back(t: torch.Tensor, was_numpy: bool):
    return t.detach().cpu().numpy() if was_numpy else t


def invert_affine(M):
    """Inverse of a 2-D affine map.

    Args:
        M: (..., 2, 3) numpy array or tensor (differentiable).

    Returns:
        (..., 2, 3) of the same type.
    """
    t, was_np = _as_tensor(M)
    a, b, tx = t[..., 0, 0], t[..., 0, 1], t[..., 0, 2]
    c, d, ty = t[..., 1, 0], t[..., 1, 1], t[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    out = torch.stack(
        [torch.stack([ia, ib, itx], -1), torch.stack([ic, id_, ity], -1)], -2
    )
    return _back(out, was_np)


def _apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:, :2].T + M[:, 2]


# ---------------------------------------------------------------------------------------
# similarity fitting


def similarity_transform_torch(
    src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Least-squares 2-D similarity (rotation, uniform scale, translation; no reflection).

    Closed form of Umeyama's estimate in 2-D: with centred points,
    ``a = sum(s . d) / sum|s|^2``, ``b = sum(s x d) / sum|s|^2`` and ``A = [[a, -b], [b, a]]``.
    Differentiable w.r.t. ``src`` and ``dst`` (no SVD).

    Args:
        src: (B, N, 2) source points (e.g. landmarks in the image).
        dst: (N, 2) or (B, N, 2) target points (e.g. the crop template).
        weights: optional (N,) or (B, N) non-negative point weights.

    Returns:
        (B, 2, 3) affine ``M`` with ``dst ~= src @ M[:, :, :2]^T + M[:, :, 2]``.
    """
    if src.dim() == 2:
        src = src.unsqueeze(0)
    dst = dst.to(src.dtype).to(src.device)
    if dst.dim() == 2:
        dst = dst.unsqueeze(0).expand(src.shape[0], -1, -1)
    if weights is None:
        w = torch.ones(src.shape[:2], dtype=src.dtype, device=src.device)
    else:
        w = weights.to(src.dtype).to(src.device)
        if w.dim() == 1:
            w = w.unsqueeze(0).expand(src.shape[0], -1)
    w = w / w.sum(-1, keepdim=True)
    ms = (w.unsqueeze(-1) * src).sum(1)  # (B, 2)
    md = (w.unsqueeze(-1) * dst).sum(1)
    s = src - ms.unsqueeze(1)
    d = dst - md.unsqueeze(1)
    ss = (w * (s * s).sum(-1)).sum(-1)  # (B,)
    a = (w * (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1])).sum(-1) / ss
    b = (w * (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0])).sum(-1) / ss
    tx = md[:, 0] - (a * ms[:, 0] - b * ms[:, 1])
    ty = md[:, 1] - (b * ms[:, 0] + a * ms[:, 1])
    return torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], -2)


def similarity_transform(src, dst, weights=None):
    """numpy / torch front end of :func:`similarity_transform_torch`.

    Args:
        src: (N, 2) or (B, N, 2) points (numpy or tensor).
        dst: (N, 2) or (B, N, 2).
        weights: optional (N,) weights.

    Returns:
        (2, 3) for unbatched numpy input, else (B, 2, 3); numpy in -> numpy out.
    """
    s, was_np = _as_tensor(src)
    d, _ = _as_tensor(dst)
    w = None if weights is None else _as_tensor(weights)[0]
    unbatched = s.dim() == 2
    M = similarity_transform_torch(s, d.to(s), w)
    if unbatched:
        M = M[0]
    return _back(M, was_np)


# ---------------------------------------------------------------------------------------
# crop transforms


def dlib5_from_landmarks68(lm68):
    """dlib 5-point shape from 68 landmarks: indices (45, 42, 36, 39, 33).

    Args:
        lm68: (..., 68, 2) numpy array or tensor.

    Returns:
        (..., 5, 2) of the same type.
    """
    return lm68[..., list(DLIB5_FROM_68), :]


def _dlib_chip_params(points: torch.Tensor, size: int, padding: float):
    """Centre (B, 2), scale (B,), rotation (cos, sin) (B,) of dlib's chip_details.

    ``points`` are in dlib's pixel-index coordinates. Returns the parameters of dlib's
    similarity chip -> image: centre = image position of chip point (size/2, size/2).
    """
    n = points.shape[-2]
    if n == 5:
        tmpl = torch.as_tensor(_DLIB_TEMPLATE_5, dtype=points.dtype, device=points.device)
        pts = points
    elif n == 68:
        tmpl = torch.as_tensor(_DLIB_TEMPLATE_68, dtype=points.dtype, device=points.device)
        pts = points[..., _DLIB_68_USED, :]
    else:
        raise ValueError(f"dlib chips need 5 or 68 landmarks, got {n}")
    chip_pts = (padding + tmpl) / (2 * padding + 1) * size
    S = similarity_transform_torch(chip_pts.unsqueeze(0).expand(pts.shape[0], -1, -1), pts)
    a, b = S[:, 0, 0], S[:, 1, 0]
    scale = torch.sqrt(a * a + b * b)
    half = torch.tensor([size / 2.0, size / 2.0], dtype=points.dtype, device=points.device)
    centre = S[:, :, :2] @ half + S[:, :, 2]
    return centre, scale, a / scale, b / scale


def dlib_chip_transform(points, size: int = 150, padding: float = 0.25):
    """Image -> chip affine of dlib's ``get_face_chip(img, shape, size, padding)``.

    Args:
        points: dlib's 5-point shape (5, 2) (``Face.dlib5``) or 68 landmarks (68, 2), in
            continuous pixel coordinates; batched (B, 5|68, 2) tensors are accepted too
            (differentiable).
        size: chip side in pixels.
        padding: dlib's padding (0.25 for the recognition ResNet).

    Returns:
        (2, 3) numpy for numpy input, (B, 2, 3) tensor for tensor input. Matches dlib's
        mapping exactly when dlib samples the full-resolution image (faces up to about
        twice the chip size; see :func:`dlib_face_chip` for larger ones).
    """
    t, was_np = _as_tensor(points)
    unbatched = t.dim() == 2
    if unbatched:
        t = t.unsqueeze(0)
    centre, scale, cos, sin = _dlib_chip_params(t - 0.5, size, padding)
    # chip index (x) -> image index: centre + k R (x - (size-1)/2), k = (scale*size-1)/(size-1)
    # continuous: image_u = centre + 0.5 + k R (chip_u - size/2). Invert it:
    inv_k = (size - 1) / (scale * size - 1)
    r00, r01 = cos * inv_k, sin * inv_k
    r10, r11 = -sin * inv_k, cos * inv_k
    cx, cy = centre[:, 0] + 0.5, centre[:, 1] + 0.5
    tx = size / 2.0 - (r00 * cx + r01 * cy)
    ty = size / 2.0 - (r10 * cx + r11 * cy)
    M = torch.stack([torch.stack([r00, r01, tx], -1), torch.stack([r10, r11, ty], -1)], -2)
    if unbatched:
        M = M[0]
    return _back(M, was_np)


def arcface_transform(landmarks5, size: int = 112):
    """Image -> crop affine of the ArcFace 5-point alignment.

    Args:
        landmarks5: (5, 2) or (B, 5, 2) points in :attr:`Face.landmarks5` order (continuous
            coordinates), numpy or tensor (differentiable).
        size: crop side; the 112-px template is scaled by ``size / 112``.

    Returns:
        (2, 3) numpy or (B, 2, 3) tensor.
    """
    dst = (ARCFACE_TEMPLATE_112 + 0.5) * (size / 112.0)
    if isinstance(landmarks5, torch.Tensor):
        dst_t = torch.as_tensor(dst, dtype=landmarks5.dtype, device=landmarks5.device)
        src = landmarks5 if landmarks5.dim() == 3 else landmarks5.unsqueeze(0)
        M = similarity_transform_torch(src, dst_t)
        return M if landmarks5.dim() == 3 else M[0]
    return similarity_transform(np.asarray(landmarks5, np.float64), dst)


def facenet_box_from_landmarks(landmarks):
    """An MTCNN-like face box from 68 or 5 landmarks (constants :data:`FACENET_BOX`).

    Args:
        landmarks: (..., 68, 2) or (..., 5, 2) (``Face.landmarks5`` order), numpy or tensor.

    Returns:
        (..., 4) ``x0, y0, x1, y1`` of the same type (differentiable for tensors).
    """
    lm5 = landmarks5_from_68(landmarks) if landmarks.shape[-2] == 68 else landmarks
    eyes = 0.5 * (lm5[..., 0, :] + lm5[..., 1, :])
    mouth = 0.5 * (lm5[..., 3, :] + lm5[..., 4, :])
    diff = mouth - eyes
    if isinstance(lm5, torch.Tensor):
        d = torch.sqrt((diff * diff).sum(-1))
    else:
        d = np.sqrt((diff * diff).sum(-1))
    c = eyes + diff * FACENET_BOX[0]
    hw = 0.5 * FACENET_BOX[1] * d
    hh = 0.5 * FACENET_BOX[2] * d
    parts = [c[..., 0] - hw, c[..., 1] - hh, c[..., 0] + hw, c[..., 1] + hh]
    if isinstance(lm5, torch.Tensor):
        return torch.stack(parts, -1)
    return np.stack(parts, -1)


def facenet_crop_box(landmarks, margin: float = FACENET_MARGIN):
    """The ``facenet_160`` crop box: :func:`facenet_box_from_landmarks` grown by
    ``margin * sqrt(w h)`` in width and in height (Sandberg's 32 px on LFW, see
    :data:`FACENET_MARGIN`).

    Args:
        landmarks: (..., 68, 2) or (..., 5, 2), numpy or tensor.
        margin: relative margin.

    Returns:
        (..., 4) ``x0, y0, x1, y1`` of the same type (differentiable for tensors).
    """
    box = facenet_box_from_landmarks(landmarks)
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    half = 0.5 * margin * ((w * h) ** 0.5)
    if isinstance(box, torch.Tensor):
        return box + torch.stack([-half, -half, half, half], -1)
    return box + np.stack([-half, -half, half, half], -1)


def facenet_transform(box_or_landmarks, size: int = 160, margin: float = 0.0, square: bool = False):
    """Image -> crop affine of facenet_pytorch's ``extract_face`` (box + margin, resized).

    Args:
        box_or_landmarks: (4,) box ``x0, y0, x1, y1``, or (68, 2) / (5, 2) landmarks (then
            :func:`facenet_box_from_landmarks` gives the box, without the ``facenet_160``
            margin: use :func:`facenet_crop_box` for that); batched tensors (B, 4) /
            (B, N, 2) give (B, 2, 3) (differentiable).
        size: crop side.
        margin: extra border in *output* pixels, as facenet_pytorch's ``margin`` (the box
            grows by ``margin * w / (size - margin)`` in x, likewise in y).
        square: first make the box square (side = max(w, h)) about its centre.

    Returns:
        (2, 3) numpy or (B, 2, 3) tensor (anisotropic scale when the box is not square).
    """
    t, was_np = _as_tensor(box_or_landmarks)
    if t.shape[-1] == 2:  # landmarks
        box = facenet_box_from_landmarks(t)
    else:
        box = t
    unbatched = box.dim() == 1
    if unbatched:
        box = box.unsqueeze(0)
    x0, y0, x1, y1 = box.unbind(-1)
    if square:
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        side = torch.maximum(x1 - x0, y1 - y0)
        x0, x1, y0, y1 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    mx = margin * (x1 - x0) / (size - margin)
    my = margin * (y1 - y0) / (size - margin)
    x0, x1, y0, y1 = x0 - mx / 2, x1 + mx / 2, y0 - my / 2, y1 + my / 2
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    zero = torch.zeros_like(sx)
    M = torch.stack(
        [torch.stack([sx, zero, -sx * x0], -1), torch.stack([zero, sy, -sy * y0], -1)], -2
    )
    if unbatched:
        M = M[0]
    return _back(M, was_np)


# ---------------------------------------------------------------------------------------
# warping


def warp_tensor(images: torch.Tensor, M: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Differentiable affine crop of image tensors (``F.affine_grid`` + ``F.grid_sample``).

    Bilinear, zeros outside the image, ``align_corners=False`` so that normalised -1/+1 are
    the outer pixel *edges*, which is exactly the continuous pixel convention (u = 0 .. W).
    Gradients flow to ``images`` and to ``M`` (hence to landmarks when ``M`` is computed from
    them with the differentiable transforms of this module). No anti-aliasing: keep faces
    within about twice the crop size.

    Args:
        images: (B, C, H, W) float.
        M: (B, 2, 3) (or (2, 3), broadcast) image -> crop affine in continuous coordinates.
        size: crop side S, or (S_h, S_w).

    Returns:
        (B, C, S_h, S_w).
    """
    if isinstance(size, int):
        sh = sw = size
    else:
        sh, sw = int(size[0]), int(size[1])
    b, _, h, w = images.shape
    M = M.to(dtype=images.dtype, device=images.device)
    if M.dim() == 2:
        M = M.unsqueeze(0).expand(b, -1, -1)
    Minv = invert_affine(M)  # crop -> image
    # normalised crop -> crop pixels: u' = (x' + 1) * sw / 2
    dt, dv = images.dtype, images.device
    out_from_norm = torch.tensor(
        [[sw / 2.0, 0.0, sw / 2.0], [0.0, sh / 2.0, sh / 2.0], [0.0, 0.0, 1.0]], dtype=dt, device=dv
    )
    # image pixels -> normalised image: x = 2u / W - 1
    norm_from_img = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0]], dtype=dt, device=dv)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=dt, device=dv).expand(b, 1, 3)
    Minv3 = torch.cat([Minv, bottom], 1)  # (B, 3, 3)
    theta = norm_from_img @ Minv3 @ out_from_norm  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, images.shape[1], sh, sw], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _bilinear_zero_pad(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples at pixel-index coordinates (x, y); outside pixels count as 0.

    Args:
        img: (H, W, C); x, y: (...) float arrays.

    Returns:
        (..., C) float64.
    """
    h, w = img.shape[:2]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    out = np.zeros(x.shape + (img.shape[2],), np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            vals = img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float64)
            out += (wx * wy * ok)[..., None] * vals
    return out


def warp_image(
    image: np.ndarray, M: np.ndarray, size: int | Sequence[int], antialias: bool = True
) -> np.ndarray:
    """Affine crop of a numpy image (same sampling as :func:`warp_tensor`).

    Args:
        image: (H, W, C) uint8 or float.
        M: (2, 3) image -> crop affine (continuous coordinates).
        size: crop side S or (S_h, S_w).
        antialias: when the crop shrinks the image by more than 2x, first reduce the image
            with dlib-style binomial pyramid levels (exact geometry) until it does not.

    Returns:
        (S_h, S_w, C) with the input dtype (uint8 is rounded and clipped).
    """
    if isinstance(size, int):
        sh = sw = size
    else:
        sh, sw = int(size[0]), int(size[1])
    img = image if image.ndim == 3 else image[:, :, None]
    M = np.asarray(M, np.float64)
    Minv = invert_affine(M)
    jj, ii = np.meshgrid(np.arange(sw) + 0.5, np.arange(sh) + 0.5)
    u = Minv[0, 0] * jj + Minv[0, 1] * ii + Minv[0, 2]
    v = Minv[1, 0] * jj + Minv[1, 1] * ii + Minv[1, 2]
    src = img
    if antialias:
        shrink = 1.0 / math.sqrt(abs(np.linalg.det(M[:, :2])))
        if shrink > 2.0:
            # crop to the sampled region (+ filter margin) before building levels
            levels = int(math.floor(math.log2(shrink)))
            pad = 4 * 2**levels
            h, w = img.shape[:2]
            x_lo = int(max(0, math.floor(u.min()) - pad))
            x_hi = int(min(w, math.ceil(u.max()) + pad))
            y_lo = int(max(0, math.floor(v.min()) - pad))
            y_hi = int(min(h, math.ceil(v.max()) + pad))
            if x_hi - x_lo > 8 and y_hi - y_lo > 8:
                src = img[y_lo:y_hi, x_lo:x_hi].astype(np.float64)
                u, v = u - x_lo, v - y_lo
                for _ in range(levels):
                    if min(src.shape[:2]) < 12:
                        break
                    src = _pyramid_down(src)
                    # level pixel c is centred on input index 2c + 2: u = 2 u_d + 1.5
                    u, v = (u - 1.5) / 2.0, (v - 1.5) / 2.0
    out = _bilinear_zero_pad(src, u - 0.5, v - 0.5)
    if image.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    else:
        out = out.astype(image.dtype)
    return out if image.ndim == 3 else out[:, :, 0]


# ---------------------------------------------------------------------------------------
# high-level


#: How much larger a render must be for a crop than for a ``dlib_chip`` to give the face
#: the same pixels (``dlib_wide``: the face is its centre 150 of 250 px).
RENDER_SCALE = {"dlib_wide": 250.0 / 150.0}


def render_size_for(crop: str, render_size: int) -> int:
    """The render side to use for ``crop`` where ``render_size`` is meant for face-sized
    crops (150-160 px): ``render_size`` scaled by :data:`RENDER_SCALE` (1 for most crops)."""
    return int(round(int(render_size) * RENDER_SCALE.get(crop, 1.0)))


def _crop_size(crop: str, size: int | None) -> int:
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {tuple(CROPS)}")
    return CROPS[crop] if size is None else int(size)


def crop_transform_from_landmarks68(landmarks68, crop: str, size: int | None = None):
    """Image -> crop affine for ``crop`` from 68 landmarks (the rule :func:`align_rendered`
    uses).

    Args:
        landmarks68: (68, 2) numpy or (B, 68, 2) tensor (differentiable).
        crop: "dlib_chip", "dlib_wide", "arcface_112" or "facenet_160".
        size: crop side (default per crop).

    Returns:
        (2, 3) numpy or (B, 2, 3) tensor.
    """
    size = _crop_size(crop, size)
    if crop == "dlib_chip":
        return dlib_chip_transform(dlib5_from_landmarks68(landmarks68), size=size)
    if crop == "dlib_wide":
        return dlib_chip_transform(dlib5_from_landmarks68(landmarks68), size=size, padding=DLIB_WIDE_PADDING)
    if crop == "arcface_112":
        return arcface_transform(landmarks5_from_68(landmarks68), size=size)
    return facenet_transform(facenet_crop_box(landmarks68), size=size)


def align_rendered(
    images: torch.Tensor,
    landmarks68: torch.Tensor,
    crop: str = "dlib_chip",
    size: int | None = None,
) -> torch.Tensor:
    """Differentiable recognition crops of rendered faces.

    Args:
        images: (B, 3, H, W) float renders.
        landmarks68: (B, 68, 2) projected model landmark vertices (u, v) in pixels of
            ``images`` (dlib/iBUG order).
        crop: "dlib_chip" (150), "arcface_112" (112) or "facenet_160" (160); how the points
            are derived is described in the module docstring.
        size: crop side (default per crop).

    Returns:
        (B, 3, S, S); differentiable w.r.t. ``images`` and ``landmarks68``.
    """
    size = _crop_size(crop, size)
    lm = landmarks68.to(images.dtype)
    M = crop_transform_from_landmarks68(lm, crop, size)
    return warp_tensor(images, M, size)


def crop_for_net(
    image: np.ndarray,
    face: "Face",
    net_crop: str,
    size: int | None = None,
    *,
    dlib_exact: bool = True,
) -> np.ndarray:
    """Recognition crop of a detected face in a photo.

    * ``dlib_chip`` / ``dlib_wide``: dlib's real 5-point shape (``face.dlib5``) when present, else
      :func:`dlib5_from_landmarks68`; extracted with :func:`dlib_face_chip` (bit-exact dlib
      emulation) or, with ``dlib_exact=False``, :func:`warp_image`.
    * ``arcface_112``: 5 points from the 68 landmarks when present (as for renders), else
      ``face.landmarks5``.
    * ``facenet_160``: box from the landmarks plus margin (:func:`facenet_crop_box`, as
      for renders).

    Args:
        image: (H, W, 3) uint8 RGB.
        face: a :class:`~facefit.faces.detection.Face` from this image.
        net_crop: crop name (see ``CROPS``).
        size: crop side (default per crop).

    Returns:
        (S, S, 3) uint8.
    """
    size = _crop_size(net_crop, size)
    lm68 = face.landmarks68
    if net_crop in ("dlib_chip", "dlib_wide"):
        pts = face.dlib5 if face.dlib5 is not None else (
            dlib5_from_landmarks68(lm68) if lm68 is not None else None
        )
        if pts is None:
            raise ValueError("dlib chips need Face.dlib5 or Face.landmarks68")
        pad = 0.25 if net_crop == "dlib_chip" else DLIB_WIDE_PADDING
        if dlib_exact:
            return dlib_face_chip(image, pts, size=size, padding=pad)
        return warp_image(image, dlib_chip_transform(pts, size=size, padding=pad), size)
    if net_crop == "arcface_112":
        lm5 = landmarks5_from_68(lm68) if lm68 is not None else face.landmarks5
        return warp_image(image, arcface_transform(lm5, size=size), size)
    src = lm68 if lm68 is not None else face.landmarks5
    return warp_image(image, facenet_transform(facenet_crop_box(src), size=size), size)
