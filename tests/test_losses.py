"""Training losses on hand-made inputs with known values."""
import math

import pytest
import torch

from facefit import losses as L


def test_param_loss_known_value():
    pred_s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    true_s = torch.zeros(2, 2)
    pred_t = torch.tensor([[1.0], [0.0]])
    true_t = torch.tensor([[3.0], [0.0]])
    # sample 0: 0.5 * (1 + 4) + 0.1 * 4 = 2.9; sample 1: 0 -> mean 1.45
    v = L.param_loss(pred_s, true_s, pred_t, true_t, w_s=0.5, w_t=0.1)
    assert v.shape == ()
    assert v.item() == pytest.approx(1.45)
    # no colour term
    assert L.param_loss(pred_s, true_s, w_s=1.0).item() == pytest.approx(2.5)
    # empty colour model
    e = torch.zeros(2, 0)
    assert L.param_loss(pred_s, true_s, e, e, w_s=1.0).item() == pytest.approx(2.5)


def test_param_loss_shape_mismatch():
    with pytest.raises(ValueError):
        L.param_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_identity_loss_known_value():
    photo = torch.tensor([[2.0, 0.0]])  # not unit length on purpose
    renders = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # cos 1, 0, -1
    assert L.identity_loss(photo, renders).item() == pytest.approx(1.0)
    renders2 = torch.tensor([[[1.0, 1.0], [5.0, 0.0]]])  # cos 1/sqrt2, 1
    expect = 1.0 - (1.0 / math.sqrt(2.0) + 1.0) / 2.0
    assert L.identity_loss(photo, renders2).item() == pytest.approx(expect, abs=1e-6)
    # (B*V, E) photo-major layout gives the same value
    assert L.identity_loss(photo, renders2.reshape(2, 2)).item() == pytest.approx(expect, abs=1e-6)
    # perfect match -> 0
    assert L.identity_loss(photo, photo.unsqueeze(1).repeat(1, 3, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_scores_per_view_order():
    photos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    renders = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # (B*V, E), V = 2
    s = L.cosine_scores(photos, renders)
    assert torch.allclose(s, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError):
        L.cosine_scores(photos, torch.zeros(3, 2))


def test_batch_distribution_loss_known_value():
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # component 0: mean 2, unbiased var 2 -> 4 + 1 = 5; component 1: mean 0, var 0 -> 0 + 1
    assert L.batch_distribution_loss(s).item() == pytest.approx(6.0)
    assert L.batch_distribution_loss(s, reduction="mean").item() == pytest.approx(3.0)
    # a batch with exactly mean 0 and unbiased variance 1 scores 0
    z = torch.tensor([[-1.0], [1.0]]) / math.sqrt(2.0)
    assert L.batch_distribution_loss(z).item() == pytest.approx(0.0, abs=1e-7)
    assert L.batch_distribution_loss(torch.zeros(4, 0)).item() == 0.0
    with pytest.raises(ValueError):
        L.batch_distribution_loss(torch.zeros(1, 3))
    with pytest.raises(ValueError):
        L.batch_distribution_loss(s, reduction="max")


def test_loopback_loss_is_param_loss_with_both_gradients():
    pred_s = torch.tensor([[1.0, -1.0]], requires_grad=True)
    loop_s = torch.tensor([[0.0, 1.0]], requires_grad=True)
    pred_t = torch.tensor([[0.5]], requires_grad=True)
    loop_t = torch.tensor([[0.0]], requires_grad=True)
    v = L.loopback_loss(pred_s, loop_s, pred_t, loop_t, w_s=2.0, w_t=4.0)
    # 2 * (1 + 4) + 4 * 0.25 = 11
    assert v.item() == pytest.approx(11.0)
    v.backward()
    # d/d pred = 2 w (pred - loop), d/d loop = -(that): both paths get gradients
    assert torch.allclose(pred_s.grad, torch.tensor([[4.0, -8.0]]))
    assert torch.allclose(loop_s.grad, -pred_s.grad)
    assert torch.allclose(pred_t.grad, torch.tensor([[4.0]]))
    assert torch.allclose(loop_t.grad, -pred_t.grad)


def test_gradients_of_identity_and_batch_losses():
    photo = torch.tensor([[1.0, 0.0]])
    r = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    L.identity_loss(photo, r).backward()
    # moving the render towards the photo lowers the loss
    assert r.grad[0, 0, 0] < 0
    s = torch.tensor([[2.0], [2.0]], requires_grad=True)
    L.batch_distribution_loss(s).backward()
    assert torch.all(s.grad > 0)  # mean 2 is pulled down


def test_default_param_weights_per_model():
    from types import SimpleNamespace

    # the sources facefit's loaders record (facefit/loaders/*.py)
    for source in ("Basel Face Model 2017/2019 (Statismo HDF5)", "Basel Face Model 2009 (01_MorphableModel.mat)"):
        m = SimpleNamespace(meta={"source": source})
        assert L.is_basel_model(m)
        assert L.default_param_weights(m) == (L.BFM_W_SHAPE, L.BFM_W_COLOR) == (0.4, 0.002)
    for source in ("ICT-FaceKit", "FLAME", "", None):
        m = SimpleNamespace(meta={"source": source} if source is not None else {})
        assert not L.is_basel_model(m)
        assert L.default_param_weights(m) == (L.DEFAULT_W_SHAPE, L.DEFAULT_W_COLOR) == (0.05, 0.05)
    assert not L.is_basel_model(SimpleNamespace())  # no meta at all


def test_default_param_weights_of_real_models(default_model):
    # the shipped default (ICT-FaceKit) model, and the same arrays recorded as a BFM
    assert default_model.meta["source"] == "ICT-FaceKit"
    assert L.default_param_weights(default_model) == (0.05, 0.05)
    bfm = default_model.replace(meta={**default_model.meta, "source": "Basel Face Model 2009 (01_MorphableModel.mat)"})
    assert L.default_param_weights(bfm) == (0.4, 0.002)
    # the provenance survives a rename
    assert L.is_basel_model(bfm.with_name("my-bfm"))
