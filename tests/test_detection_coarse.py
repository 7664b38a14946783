"""The dlib backend's coarse first pass: same faces as the full search, small landmark
differences, and the full search whenever the coarse pass could have missed the main face."""
import numpy as np

from facefit.faces import detection
from facefit.faces.detection import _detect_dlib, _detect_dlib_coarse, detect_faces
from facefit.faces.images import load_image

from conftest import DEV


def _photos(n=6, lfw=False):
    imgs = (load_image(p) for p in sorted(DEV.glob("*/*.jpg"))[::20])
    return [im for im in imgs if not lfw or im.shape[:2] == (250, 250)][:n]


def _iod(lm):
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def test_coarse_pass_finds_the_full_search_main_face():
    trusted = 0
    for img in _photos(8):
        coarse = _detect_dlib_coarse(img, 30.0, 0.0)
        if coarse is None:  # (a large photo whose face is small for the coarse copy)
            continue
        trusted += 1
        assert len(coarse) == 1
        full = _detect_dlib(img)
        order = detection.main_face_order(np.stack([b for b, _, _ in full]), img.shape)
        fb = full[int(order[0])][0]
        cb = coarse[0][0]
        assert np.abs(cb - fb).max() < 0.25 * (fb[2] - fb[0])  # the same face, box within a quarter width
        f = detect_faces(img)[0]
        lm_full, _ = detection._dlib_landmarks(img, fb)
        assert np.linalg.norm(f.landmarks68 - lm_full, axis=1).mean() < 0.1 * _iod(lm_full)
    assert trusted >= 6


def test_small_face_in_a_large_photo_falls_back_to_the_full_search(monkeypatch):
    img = _photos(1, lfw=True)[0]  # 250 x 250, face about 100 px
    canvas = np.full((1200, 1200, 3), 90, np.uint8)
    canvas[475:725, 475:725] = img
    assert _detect_dlib_coarse(canvas, 30.0, 0.0) is None  # too small for the coarse copy
    faces = detect_faces(canvas)
    assert len(faces) == 1 and 475 < faces[0].box[0] < faces[0].box[2] < 725


def test_all_faces_uses_the_full_search(monkeypatch):
    img = _photos(1)[0]
    calls = []
    real = detection._detect_dlib_coarse
    monkeypatch.setattr(detection, "_detect_dlib_coarse", lambda *a: calls.append(1) or real(*a))
    detect_faces(img, all_faces=True)
    assert calls == []
    detect_faces(img)
    assert calls == [1]
