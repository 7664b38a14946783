"""The combined dlib + FaceNet encoder (``"dlib+facenet"``) on real faces-dev photos."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.faces.alignment import crop_for_net, facenet_crop_box, dlib_chip_transform
from facefit.recognition import get_net
from facefit.recognition.combined import FACENET_BOX_IN_WIDE, dlib_chip_of_wide, facenet_crop_of_wide

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def photos():
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    out = []
    for person in ("Tony_Blair", "Halle_Berry", "Kit_Harington"):
        img = load_image(sorted((DEV / person).glob("*.jpg"))[0])
        out.append((img, detect_faces(img)[0]))
    return out


def test_registered_with_its_crop_and_sizes():
    net = get_net("dlib+facenet")
    assert (net.crop, net.input_size, net.feature_dim, net.embedding_dim) == ("dlib_wide", 250, 768, 640)
    assert net.differentiable and net is get_net("dlib+facenet")
    assert net.dlib is not get_net("dlib")  # own instances: moving it moves no one else's


def test_features_are_both_networks_on_their_crops(photos):
    net, dl, fn = get_net("dlib+facenet"), get_net("dlib"), get_net("facenet")
    for img, face in photos:
        wide = _t(crop_for_net(img, face, "dlib_wide"))
        with torch.no_grad():
            f = net.features(wide)
            assert f.shape == (1, 768)
            # the first 256 are dlib's features of the centre, which is dlib's chip
            chip = _t(crop_for_net(img, face, "dlib_chip"))
            ref = dl.features(chip)
            assert float((f[:, :256] - ref).norm() / ref.norm()) < 0.01
            assert torch.equal(f[:, :256], dl.features(dlib_chip_of_wide(wide)))
            # the rest are FaceNet's, of a crop close to its own alignment
            assert torch.allclose(f[:, 256:], fn.features(facenet_crop_of_wide(wide)), atol=1e-5)
            own = fn.embed(_t(crop_for_net(img, face, "facenet_160")))
            cos = float((torch.nn.functional.normalize(f[:, 256:], dim=1) * own).sum())
            assert cos > 0.8
            # the embedding's cosine is the mean of the two networks' cosines
            e = net.embed(wide)
            assert torch.allclose(e.norm(dim=1), torch.ones(1), atol=1e-5)


def test_embedding_cosine_is_the_mean_of_both(photos):
    net, dl, fn = get_net("dlib+facenet"), get_net("dlib"), get_net("facenet")
    (a, fa), (b, fb) = photos[0], photos[1]
    wa, wb = _t(crop_for_net(a, fa, "dlib_wide")), _t(crop_for_net(b, fb, "dlib_wide"))
    with torch.no_grad():
        c = float((net.embed(wa) * net.embed(wb)).sum())
        cd = float((dl.embed(dlib_chip_of_wide(wa)) * dl.embed(dlib_chip_of_wide(wb))).sum())
        cf = float((fn.embed(facenet_crop_of_wide(wa)) * fn.embed(facenet_crop_of_wide(wb))).sum())
    assert c == pytest.approx(0.5 * (cd + cf), abs=1e-5)


def test_gradients_reach_the_crop():
    net = get_net("dlib+facenet")
    x = torch.rand(2, 3, 250, 250, requires_grad=True)
    net.embed(x).sum().backward()
    g = x.grad
    assert torch.isfinite(g).all()
    # dlib reads the centre, FaceNet its box: both parts of the crop get gradient
    assert g[:, :, 50:200, 50:200].abs().sum() > 0
    x0, y0, x1, y1 = FACENET_BOX_IN_WIDE
    assert g[:, :, int(y1) - 10:int(y1), int(x0) + 5:int(x0) + 20].abs().sum() > 0  # below dlib's chip
    with pytest.raises(ValueError):
        net.features(torch.rand(1, 3, 150, 150))


def test_facenet_box_is_the_median_box(photos):
    """FACENET_BOX_IN_WIDE is where FaceNet's own box lies in the wide crop (within ~15 px)."""
    for img, face in photos:
        pts = face.dlib5
        M = dlib_chip_transform(pts, size=150)  # the chip frame; the wide crop is it + 50 px
        box = facenet_crop_box(face.landmarks68)
        corners = np.array([[box[0], box[1]], [box[2], box[3]]]) @ M[:, :2].T + M[:, 2] + 50.0
        got = np.array(FACENET_BOX_IN_WIDE).reshape(2, 2)
        side = math.hypot(*(got[1] - got[0]))
        assert np.abs(corners - got).max() < 0.15 * side


def test_refine_uses_dlib_on_the_centre_chip(default_model, photos):
    """``--refine`` with a dlib+facenet regressor optimises against dlib's ResNet on the
    chip at the centre of the wide crop (as fast as the dlib-only model)."""
    from facefit.reconstruction import Reconstructor
    from facefit.refine import RefineSettings
    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    net = get_net("dlib+facenet")
    dl, cut = net.refine_network()
    assert dl is net.dlib and cut(torch.zeros(1, 3, 250, 250)).shape == (1, 3, 150, 150)
    plain = net.dlib
    assert plain.refine_network() == (plain, None)  # a plain network refines against itself
    torch.manual_seed(0)
    dec = Decoder(768, default_model.n_shape, default_model.n_color, hidden=(16,), init_scale=0.05)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / "c.pt"
        save_checkpoint(make_checkpoint(dec, "dlib+facenet", default_model.content_hash, default_model.name), ck)
        rec = Reconstructor(checkpoint=ck, refine=2)
        rec.refine_settings = RefineSettings(steps=2, views=1)
        img, face = photos[0]
        crop = rec.crop(img, face)
        assert crop.shape == (250, 250, 3)
        s0 = np.zeros((1, default_model.n_shape), np.float32)
        c0 = np.zeros((1, default_model.n_color), np.float32)
        s, c, info = rec.refine(crop[None], s0, c0)
    assert info[0]["steps"] == 2 and 0.5 < info[0]["identity_before"] <= 1.0  # a dlib cosine (compressed)
    assert np.abs(c - c0).max() > 0  # the colour moved
