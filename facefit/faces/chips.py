"""dlib face chips in numpy alone (no torch): what the recognition ResNet's crop needs.

:func:`dlib_face_chip` re-implements ``dlib.get_face_chip`` bit-exactly (see its
docstring). It lives here, apart from :mod:`facefit.faces.alignment` (whose differentiable
crops need torch), so that the detection workers of a folder job
(:mod:`facefit.batch`) can crop without importing torch. The chip similarity
(:func:`dlib_chip_params`) is the closed-form 2-D Umeyama estimate of
:func:`facefit.faces.alignment.similarity_transform_torch` computed in float64 numpy; it
agrees with the torch version to about 1e-13 px.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["DLIB_WIDE_PADDING", "DLIB5_FROM_68", "dlib_chip_params", "dlib_face_chip", "dlib_chip_of_face"]

#: dlib padding of the ``dlib_wide`` crop: a dlib chip of the same pixel scale as the
#: 150 px, padding 0.25 one (100 px per template unit at the default sizes), 50 px wider on
#: every side, so that it holds the ``dlib_chip`` as its centre and FaceNet's box around it.
DLIB_WIDE_PADDING = 0.75

# dlib's normalised template for its 5-point shape (get_face_chip_details).
_DLIB_TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# dlib's mean face shape for 68-point indices 17..67 (get_face_chip_details).
_DLIB_MEAN_FACE_X = [
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
]  # fmt: skip
_DLIB_MEAN_FACE_Y = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
]  # fmt: skip
# dlib fits the 68-point chip on points 27..67 without the lower lip (55-59, 65-67).
_DLIB_68_USED = np.array(
    [i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)], dtype=np.int64
)
_DLIB_TEMPLATE_68 = np.array(
    [[_DLIB_MEAN_FACE_X[i - 17], _DLIB_MEAN_FACE_Y[i - 17]] for i in _DLIB_68_USED],
    dtype=np.float64,
)

#: 68-point indices of dlib's 5 points (image-right eye outer, inner; image-left eye outer,
#: inner; bottom of the nose).
DLIB5_FROM_68 = (45, 42, 36, 39, 33)


def dlib_chip_params(points: np.ndarray, size: int, padding: float) -> tuple[np.ndarray, float, float, float]:
    """Centre (2,), scale, cos and sin of dlib's chip_details for one face.

    Args:
        points: (5, 2) dlib 5-point shape or (68, 2) landmarks in dlib's pixel-index
            coordinates (continuous coordinates - 0.5).
        size: chip side; padding: dlib's padding.
    Returns:
        ``(centre, scale, cos, sin)``: the chip -> image similarity; ``centre`` is the image
        position of chip point (size/2, size/2).
    """
    points = np.asarray(points, np.float64)
    n = points.shape[-2]
    if n == 5:
        tmpl, pts = _DLIB_TEMPLATE_5, points
    elif n == 68:
        tmpl, pts = _DLIB_TEMPLATE_68, points[_DLIB_68_USED]
    else:
        raise ValueError(f"dlib chips need 5 or 68 landmarks, got {n}")
    src = (padding + tmpl) / (2 * padding + 1) * size  # chip template -> image points
    ms, md = src.mean(0), pts.mean(0)
    s, d = src - ms, pts - md
    ss = (s * s).sum()
    a = (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum() / ss
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / ss
    tx = md[0] - (a * ms[0] - b * ms[1])
    ty = md[1] - (b * ms[0] + a * ms[1])
    scale = math.sqrt(a * a + b * b)
    half = size / 2.0
    centre = np.array([a * half - b * half + tx, b * half + a * half + ty])
    return centre, scale, a / scale, b / scale


def _pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>``: 5x5 binomial filter [1 4 6 4 1]^2 / 256, every 2nd pixel.

    Output pixel (r, c) is centred on input index (2r + 2, 2c + 2); the output is
    ((H-3)//2, (W-3)//2, C). uint8 input is summed in integers and floor-divided by 256
    like dlib; float input is filtered exactly.
    """
    h, w = img.shape[:2]
    oh, ow = (h - 3) // 2, (w - 3) // 2
    if oh <= 0 or ow <= 0:
        raise ValueError("image too small for a pyramid level")
    integer = img.dtype == np.uint8
    # uint16 is exact: a row sum is at most 16 * 255, a full one 256 * 255 = 65280 (and a
    # third less time than int32)
    x = img.astype(np.uint16 if integer else np.float64)
    k = (1, 4, 6, 4, 1)
    rows = sum(k[i] * x[:, i : i + 2 * ow : 2] for i in range(5))  # (h, ow, C)
    out = sum(k[i] * rows[i : i + 2 * oh : 2] for i in range(5))  # (oh, ow, C)
    if integer:
        return (out // 256).astype(np.uint8)
    return out / 256.0


def dlib_face_chip(image: np.ndarray, points, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Exact re-implementation of ``dlib.get_face_chip(image, shape, size, padding)``.

    Follows dlib's ``extract_image_chips``: the chip rectangle from
    :func:`dlib_chip_params` (the similarity of
    :func:`facefit.faces.alignment.dlib_chip_transform`, in numpy); when the rectangle is more than twice the chip
    size, dlib's ``pyramid_down<2>`` levels of the (grown, clipped) bounding box are built
    and the chip is sampled from the level dlib picks, with dlib's own level-to-level point
    mapping (``p/2 - (1.25, 0.75)``); bilinear sampling where all four neighbours are inside,
    black elsewhere.

    Args:
        image: (H, W, 3) uint8 RGB.
        points: dlib 5-point shape (5, 2) or 68 landmarks (68, 2), continuous coordinates
            (``Face.dlib5`` / ``Face.landmarks68``).
        size: chip side.
        padding: dlib's padding.

    Returns:
        (size, size, 3) uint8.
    """
    img = np.ascontiguousarray(image)
    H, W = img.shape[:2]
    centre, s, c_, s_ = dlib_chip_params(np.asarray(points, np.float64) - 0.5, size, padding)
    cx, cy = float(centre[0]), float(centre[1])
    half = (s * size - 1) / 2.0  # dlib centered_drect(width w) spans w - 1
    rect = (cx - half, cy - half, cx + half, cy + half)  # l, t, r, b
    chip_area = size * size

    def area(r):
        if r[0] > r[2] or r[1] > r[3]:
            return 0.0
        return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)

    def down(r):
        return (r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75)

    depth, grow = 0, 2.0
    r = down(rect)
    while area(r) > chip_area:
        r = down(r)
        depth += 1
        grow = grow * 2 + 2

    def rot(p, ctr):
        dx, dy = p[0] - ctr[0], p[1] - ctr[1]
        return (c_ * dx - s_ * dy + ctr[0], s_ * dx + c_ * dy + ctr[1])

    ctr = ((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)
    l_, t_, r_, b_ = rect
    corners = [rot(p, ctr) for p in ((l_, t_), (r_, t_), (l_, b_), (r_, b_))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    bb = (
        max(min(xs) - grow, 0.0),
        max(min(ys) - grow, 0.0),
        min(max(xs) + grow, W - 1.0),
        min(max(ys) + grow, H - 1.0),
    )
    bl, bt, br, bb_ = (int(math.floor(v + 0.5)) for v in bb)
    if br < bl or bb_ < bt:
        return np.zeros((size, size, 3), np.uint8)
    src = img[bt : bb_ + 1, bl : br + 1]

    level = -1
    r = (rect[0] - bl, rect[1] - bt, rect[2] - bl, rect[3] - bt)
    while area(down(r)) > chip_area:
        level += 1
        r = down(r)
    for _ in range(level + 1):
        if src.shape[0] <= 8 or src.shape[1] <= 8:
            return np.zeros((size, size, 3), np.uint8)
        src = _pyramid_down(src)

    # chip (0,0), (size-1,0), (0,size-1) -> rotated corners of r about its centre
    ctr = ((r[0] + r[2]) / 2, (r[1] + r[3]) / 2)
    p00 = np.array(rot((r[0], r[1]), ctr))
    p10 = np.array(rot((r[2], r[1]), ctr))
    p01 = np.array(rot((r[0], r[3]), ctr))
    ex, ey = (p10 - p00) / (size - 1), (p01 - p00) / (size - 1)
    jj, ii = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    x = p00[0] + ex[0] * jj + ey[0] * ii
    y = p00[1] + ex[1] * jj + ey[1] * ii

    h, w = src.shape[:2]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0c, y0c = np.clip(x0, 0, max(w - 2, 0)), np.clip(y0, 0, max(h - 2, 0))
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    f = src.astype(np.float64)
    x1c, y1c = np.minimum(x0c + 1, w - 1), np.minimum(y0c + 1, h - 1)
    tl, tr = f[y0c, x0c], f[y0c, x1c]
    bl_, br_ = f[y1c, x0c], f[y1c, x1c]
    val = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl_ + fx * br_)
    # dlib's assign_pixel(uint8, double) truncates
    out = np.clip(np.floor(val + 1e-9), 0, 255).astype(np.uint8)
    out[~inside] = 0
    return out


def dlib_chip_of_face(image: np.ndarray, face, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The ``dlib_chip`` crop of a detected face (what
    :func:`facefit.faces.alignment.crop_for_net` returns for it): dlib's real 5-point shape
    when the face has one, else the 5 points taken from its 68 landmarks.

    Args:
        image: (H, W, 3) uint8 RGB; face: a :class:`~facefit.faces.detection.Face`.
        size, padding: the chip's (``dlib_wide``: 250, 0.75).
    Returns:
        (size, size, 3) uint8.
    """
    pts = face.dlib5
    if pts is None:
        if face.landmarks68 is None:
            raise ValueError("dlib chips need Face.dlib5 or Face.landmarks68")
        pts = np.asarray(face.landmarks68)[list(DLIB5_FROM_68)]
    return dlib_face_chip(image, pts, size=size, padding=padding)
