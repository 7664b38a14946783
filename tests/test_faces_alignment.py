"""Alignment transforms and warps: cv2 / dlib equivalence, differentiability.

The dlib comparisons need dlib and face_recognition_models (dependencies) and faces-dev in
../shared; a missing one fails the tests (no skips).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from facefit.faces.alignment import (
    ARCFACE_TEMPLATE_112,
    FACENET_MARGIN,
    align_rendered,
    arcface_transform,
    crop_for_net,
    crop_transform_from_landmarks68,
    dlib5_from_landmarks68,
    dlib_chip_transform,
    dlib_face_chip,
    facenet_box_from_landmarks,
    facenet_crop_box,
    facenet_transform,
    invert_affine,
    similarity_transform,
    similarity_transform_torch,
    warp_image,
    warp_tensor,
)

from conftest import DEV


@pytest.fixture(scope="module")
def dev():
    """The faces-dev folder; missing ../shared data fails (project rule, no skip)."""
    assert DEV.is_dir(), f"faces-dev not in ../shared ({DEV})"
    return DEV


def _smooth_image(h=64, w=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((h, w, 3)).astype(np.float32)
    a = cv2.GaussianBlur(a, (0, 0), 3.0)
    a = (a - a.min()) / (a.max() - a.min())
    return (a * 255.0).astype(np.float32)


def _rot_scale(angle_deg, scale, tx, ty) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]]
    )


def _to_cv2(M: np.ndarray) -> np.ndarray:
    """Continuous-coordinate forward affine -> cv2's pixel-index convention."""
    A, t = M[:, :2], M[:, 2]
    return np.concatenate([A, (t + 0.5 * A.sum(1) - 0.5)[:, None]], 1)


def test_warp_tensor_matches_cv2_warpaffine():
    img = _smooth_image()
    M = _rot_scale(17.0, 0.8, 5.3, -2.1)
    size = 48
    ref = cv2.warpAffine(img, _to_cv2(M), (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    out = warp_tensor(t, torch.from_numpy(M)[None], size)[0].permute(1, 2, 0).numpy()
    # compare where the whole bilinear footprint is inside the image
    Minv = invert_affine(M)
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    u = Minv[0, 0] * jj + Minv[0, 1] * ii + Minv[0, 2]
    v = Minv[1, 0] * jj + Minv[1, 1] * ii + Minv[1, 2]
    inside = (u > 1.5) & (u < img.shape[1] - 1.5) & (v > 1.5) & (v < img.shape[0] - 1.5)
    assert inside.sum() > 0.5 * size * size
    diff = np.abs(out - ref)[inside]
    assert diff.max() < 1.0  # cv2 quantises weights to 1/32 pixel
    assert diff.mean() < 0.2
    # numpy warp uses the same sampling as the tensor warp
    np.testing.assert_allclose(warp_image(img, M, size, antialias=False), out, atol=1e-3)


def test_warp_tensor_identity_and_shift():
    img = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    out = warp_tensor(img, eye.expand(2, 2, 3), (10, 12))
    torch.testing.assert_close(out, img)
    shift = torch.tensor([[1.0, 0, -2.0], [0, 1.0, -1.0]], dtype=torch.float64)  # crop = image - (2, 1)
    out = warp_tensor(img, shift, (5, 6))
    torch.testing.assert_close(out, img[:, :, 1:6, 2:8])


def test_warp_tensor_gradcheck_wrt_M_and_image():
    torch.manual_seed(0)
    img = torch.rand(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    M = torch.tensor([[[0.83, 0.21, 0.37], [-0.19, 0.91, 0.53]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: warp_tensor(img.detach(), m, 4), (M,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda x: warp_tensor(x, M.detach(), 4), (img,), eps=1e-6, atol=1e-5)


def test_similarity_transform_recovers_and_is_differentiable():
    rng = np.random.default_rng(3)
    src = rng.random((7, 2)) * 100
    M = _rot_scale(-33.0, 1.7, 12.0, -4.0)
    dst = src @ M[:, :2].T + M[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), M, atol=1e-9)
    s = torch.tensor(src[None], requires_grad=True)
    d = torch.tensor(dst + rng.normal(0, 1.0, dst.shape))
    assert torch.autograd.gradcheck(lambda x: similarity_transform_torch(x, d), (s,))
    # batched, with per-batch targets
    Mb = similarity_transform_torch(torch.tensor(np.stack([src, src * 2])), torch.tensor(np.stack([dst, dst])))
    np.testing.assert_allclose(Mb[0].numpy(), M, atol=1e-9)


def test_arcface_template_maps_to_itself():
    tmpl = ARCFACE_TEMPLATE_112 + 0.5
    np.testing.assert_allclose(arcface_transform(tmpl), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    # a rotated, scaled, shifted copy of the template is mapped back onto the template
    M = _rot_scale(25.0, 2.3, 200.0, 80.0)
    pts = tmpl @ M[:, :2].T + M[:, 2]
    A = arcface_transform(pts)
    np.testing.assert_allclose(pts @ A[:, :2].T + A[:, 2], tmpl, atol=1e-9)
    # other sizes scale the template; tensors give batched output
    A224 = arcface_transform(torch.tensor(pts)[None], size=224)[0].numpy()
    np.testing.assert_allclose(pts @ A224[:, :2].T + A224[:, 2], tmpl * 2, atol=1e-9)


def test_facenet_transform_box_geometry():
    box = np.array([10.0, 20.0, 110.0, 140.0])
    M = facenet_transform(box, size=160)
    corners = np.array([[10.0, 20.0], [110.0, 140.0]])
    np.testing.assert_allclose(corners @ M[:, :2].T + M[:, 2], [[0, 0], [160, 160]], atol=1e-9)
    # margin in output pixels: the box occupies size - margin pixels of the crop
    Mm = facenet_transform(box, size=160, margin=32)
    out = corners @ Mm[:, :2].T + Mm[:, 2]
    np.testing.assert_allclose(out, [[16, 16], [144, 144]], atol=1e-9)
    # square boxes keep the aspect ratio
    Ms = facenet_transform(box, size=160, square=True)
    assert Ms[0, 0] == pytest.approx(Ms[1, 1])
    # landmarks -> box -> transform, batched tensors work and are differentiable
    lm = torch.tensor(ARCFACE_TEMPLATE_112[None] + 0.5, requires_grad=True)
    Mt = facenet_transform(lm)
    Mt.sum().backward()
    assert lm.grad is not None and torch.isfinite(lm.grad).all()
    b = facenet_box_from_landmarks(ARCFACE_TEMPLATE_112 + 0.5)
    assert b[0] < 38 and b[2] > 74 and b[1] < 52 and b[3] > 93  # box contains the points
    # the facenet_160 crop box: Sandberg's LFW margin, the same absolute growth in x and y
    c = facenet_crop_box(ARCFACE_TEMPLATE_112 + 0.5)
    grow = FACENET_MARGIN * np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
    np.testing.assert_allclose(c - b, [-grow / 2, -grow / 2, grow / 2, grow / 2], atol=1e-9)
    ct = facenet_crop_box(lm.detach())
    np.testing.assert_allclose(ct[0].numpy(), c, atol=1e-9)
    # the landmark crop rule (photos and renders) uses it
    from facefit.faces.alignment import _DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y

    lm68 = np.zeros((68, 2))
    lm68[17:] = np.stack([_DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y], 1) * 100 + 30
    M = crop_transform_from_landmarks68(lm68, "facenet_160")
    np.testing.assert_allclose(M, facenet_transform(facenet_crop_box(lm68)), atol=1e-12)
    assert M[0, 0] < facenet_transform(lm68)[0, 0]  # a larger region than the bare box


def test_align_rendered_gradients_reach_landmarks():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    # a plausible 68-point layout: dlib's mean face scaled into the image
    from facefit.faces.alignment import _DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y

    mean = np.stack([_DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y], 1)
    lm = np.zeros((68, 2))
    lm[17:] = mean
    lm[:17] = np.stack([np.linspace(0, 1, 17), 0.5 + 0.5 * np.sin(np.linspace(0, np.pi, 17))], 1)
    lm = torch.tensor(np.stack([lm * 40 + 12, lm * 36 + 14]), requires_grad=True)
    for crop, size in (("dlib_chip", 150), ("arcface_112", 112), ("facenet_160", 160)):
        out = align_rendered(img, lm, crop)
        assert out.shape == (2, 3, size, size)
        (g_img, g_lm) = torch.autograd.grad(out.square().sum(), (img, lm))
        assert torch.isfinite(g_lm).all() and g_lm.abs().sum() > 0
        assert g_img.abs().sum() > 0
    small = align_rendered(img, lm, "arcface_112", size=56)
    assert small.shape == (2, 3, 56, 56)
    with pytest.raises(ValueError):
        align_rendered(img, lm, "vggface")


def _dlib_shape(points: np.ndarray):
    import dlib

    parts = [dlib.point(int(x), int(y)) for x, y in np.rint(points - 0.5)]
    return dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), parts)


@pytest.mark.parametrize(
    "rel",
    [
        "Bill_Gates/Bill_Gates_0013.jpg",  # LFW 250x250: dlib samples the image directly
        "Kit_Harington/face_recognition_john2.jpg",
        "Barack_Obama/face_recognition_obama1.jpg",  # large face: dlib uses a pyramid level
    ],
)
def test_dlib_chip_matches_dlib(dev, rel):
    import dlib

    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    img = load_image(dev / rel)
    face = detect_faces(img, backend="dlib")[0]
    shape5 = _dlib_shape(face.dlib5)
    ref = dlib.get_face_chip(img, shape5, 150, 0.25)
    chip = crop_for_net(img, face, "dlib_chip")
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    diff = np.abs(chip.astype(int) - ref.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05

    # the affine reproduces dlib's chip_details geometry
    det = dlib.get_face_chip_details(shape5, 150, 0.25)
    M = dlib_chip_transform(face.dlib5)
    Minv = invert_affine(M)
    centre = Minv[:, :2] @ [75.0, 75.0] + Minv[:, 2]
    cx = 0.5 * (det.rect.left() + det.rect.right()) + 0.5
    cy = 0.5 * (det.rect.top() + det.rect.bottom()) + 0.5
    np.testing.assert_allclose(centre, [cx, cy], atol=1e-6)
    assert math.atan2(Minv[1, 0], Minv[0, 0]) == pytest.approx(det.angle, abs=1e-9)
    side = math.hypot(Minv[0, 0], Minv[1, 0]) * 149 + 1  # dlib rect spans side - 1
    assert side == pytest.approx(det.rect.right() - det.rect.left() + 1, rel=1e-9)

    # the 68-point variant of get_face_chip_details
    ref68 = dlib.get_face_chip(img, _dlib_shape(face.landmarks68), 150, 0.25)
    assert np.abs(dlib_face_chip(img, face.landmarks68).astype(int) - ref68.astype(int)).max() <= 2

    # the plain affine warp equals dlib where dlib does not use its pyramid
    scale = 1.0 / math.sqrt(abs(np.linalg.det(M[:, :2])))
    if scale < 2.0:
        warped = warp_image(img, M, 150)
        assert np.abs(warped.astype(int) - ref.astype(int)).max() <= 2


def test_photo_and_render_crops_agree(dev):
    """align_rendered on a photo tensor equals crop_for_net on the photo (same points)."""
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    img = load_image(dev / "Tony_Blair/Tony_Blair_0002.jpg")
    face = detect_faces(img)[0]
    t = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255.0
    lm = torch.from_numpy(face.landmarks68)[None]
    for crop in ("arcface_112", "facenet_160"):
        a = align_rendered(t, lm, crop)[0].permute(1, 2, 0).numpy() * 255.0
        b = crop_for_net(img, face, crop).astype(np.float64)
        assert np.abs(a - b).max() <= 0.51
        M = crop_transform_from_landmarks68(face.landmarks68, crop)
        assert M.shape == (2, 3)
    # dlib chip from the 68 points is close to the real 5-point chip (~1% of its size)
    M5 = dlib_chip_transform(face.dlib5)
    M68 = dlib_chip_transform(dlib5_from_landmarks68(face.landmarks68))
    pts = face.landmarks68[[36, 45, 30, 48, 54]]
    d = np.abs((pts @ M5[:, :2].T + M5[:, 2]) - (pts @ M68[:, :2].T + M68[:, 2]))
    assert d.max() < 6.0  # chip pixels (of 150)
    # an ArcFace crop puts the eyes where the template says
    A = arcface_transform(face.landmarks5)
    eyes = face.landmarks5[:2] @ A[:, :2].T + A[:, 2]
    assert np.abs(eyes - (ARCFACE_TEMPLATE_112[:2] + 0.5)).max() < 4.0


def test_dlib_wide_is_dlibs_chip_with_padding_and_holds_the_dlib_chip(dev):
    """``dlib_wide`` is dlib's own 250 px chip at padding 0.75, its centre is the 150 px chip."""
    import dlib

    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    for rel in ("Bill_Gates/Bill_Gates_0013.jpg", "Barack_Obama/face_recognition_obama1.jpg"):
        img = load_image(dev / rel)
        face = detect_faces(img, backend="dlib")[0]
        wide = crop_for_net(img, face, "dlib_wide")
        assert wide.shape == (250, 250, 3) and wide.dtype == np.uint8
        ref = dlib.get_face_chip(img, _dlib_shape(face.dlib5), 250, 0.75)
        assert np.abs(wide.astype(int) - ref.astype(int)).max() <= 2
        chip = crop_for_net(img, face, "dlib_chip").astype(int)
        centre = wide[50:200, 50:200].astype(int)
        assert np.abs(centre - chip).mean() < 1.0  # dlib's corner-pixel rule: <= 0.1 px apart
        # the transform: same scale and rotation as the chip's, shifted by 50 px
        Mw = crop_transform_from_landmarks68(face.landmarks68, "dlib_wide")
        Mc = crop_transform_from_landmarks68(face.landmarks68, "dlib_chip")
        pts = face.landmarks68[[36, 45, 30]]
        d = (pts @ Mw[:, :2].T + Mw[:, 2]) - (pts @ Mc[:, :2].T + Mc[:, 2])
        assert np.abs(d - 50.0).max() < 0.2
