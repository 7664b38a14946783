"""Phong shading, lights and colour temperature."""
import pytest
import torch

from facefit.errors import FacefitError
from facefit.render import (
    Lights,
    color_temperature_to_rgb,
    phong_shade,
    sample_light_colors,
    sample_lights,
)


def _lights(pos, intens, amb):
    return Lights(torch.tensor(pos, dtype=torch.float64), torch.tensor(intens, dtype=torch.float64),
                  torch.tensor(amb, dtype=torch.float64))


def test_diffuse_matches_lambert_and_specular_rule():
    P = torch.tensor([[[[0.0, 0.0, 1000.0]]]], dtype=torch.float64)  # (1, 1, 1, 3)
    N = torch.tensor([[[[0.0, 0.0, -1.0]]]], dtype=torch.float64)  # facing the camera
    Kd = torch.tensor([[[[0.5, 0.25, 0.75]]]], dtype=torch.float64)
    # light straight behind the camera: N.L = 1, mirror direction = view direction
    L = _lights([[[0.0, 0.0, -2000.0]]], [[0.6]], [0.2])
    out = phong_shade(P, N, Kd, L, shininess=10.0, ks_scale=0.0)
    assert torch.allclose(out, Kd * (0.2 + 0.6))
    spec = phong_shade(P, N, Kd, L, shininess=10.0, ks_scale=0.3) - out
    # Ks = c - c Kd, R.V = 1
    assert torch.allclose(spec, (0.3 - 0.3 * Kd) * 0.6)
    # white albedo has no specular (Ks = 0)
    white = torch.ones_like(Kd)
    assert torch.allclose(phong_shade(P, N, white, L, ks_scale=0.3), white * 0.8)
    # light behind the surface: ambient only
    Lb = _lights([[[0.0, 0.0, 5000.0]]], [[0.6]], [0.2])
    assert torch.allclose(phong_shade(P, N, Kd, Lb, ks_scale=0.3), Kd * 0.2)
    # light colour multiplies
    col = torch.tensor([[1.0, 0.5, 2.0]], dtype=torch.float64)
    assert torch.allclose(phong_shade(P, N, Kd, L, col, ks_scale=0.0), Kd * 0.8 * col.view(1, 1, 1, 3))


def test_oblique_light_cosine():
    P = torch.zeros(1, 1, 1, 3, dtype=torch.float64) + torch.tensor([0.0, 0.0, 1000.0], dtype=torch.float64)
    N = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).view(1, 1, 1, 3)
    Kd = torch.full((1, 1, 1, 3), 0.5, dtype=torch.float64)
    L = _lights([[[3000.0, 0.0, -2000.0]]], [[1.0]], [0.0])  # 45 degrees
    out = phong_shade(P, N, Kd, L, ks_scale=0.0)
    assert torch.allclose(out, 0.5 * torch.tensor(2 ** -0.5, dtype=torch.float64).expand(1, 1, 1, 3))


def test_shading_gradcheck():
    g = torch.Generator().manual_seed(0)
    B, H, W = 2, 2, 3
    P = torch.randn(B, H, W, 3, generator=g, dtype=torch.float64) * 20 + torch.tensor([0, 0, 800.0], dtype=torch.float64)
    N = torch.randn(B, H, W, 3, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, -1.0], dtype=torch.float64)
    Kd = torch.rand(B, H, W, 3, generator=g, dtype=torch.float64)
    lights = sample_lights(B, g, target=(0.0, 0.0, 800.0), dtype=torch.float64)
    col = torch.rand(B, 3, generator=g, dtype=torch.float64) + 0.5
    fn = lambda p, n, kd: phong_shade(p, n, kd, lights, col, shininess=torch.tensor([8.0, 20.0], dtype=torch.float64),
                                       ks_scale=0.25)  # noqa: E731
    args = tuple(x.clone().requires_grad_() for x in (P, N, Kd))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_light_sampling_reproducible_and_plausible():
    a = sample_lights(32, torch.Generator().manual_seed(1))
    b = sample_lights(32, torch.Generator().manual_seed(1))
    c = sample_lights(32, torch.Generator().manual_seed(2))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.intensities, b.intensities)
    assert not torch.equal(a.positions, c.positions)
    assert a.positions.shape == (32, 2, 3) and a.intensities.shape == (32, 2) and a.ambient.shape == (32,)
    rel = a.positions - torch.tensor([0.0, 0.0, 850.0])
    dist = rel.norm(dim=-1)
    assert dist.min() >= 2000 - 1e-3 and dist.max() <= 4000 + 1e-3  # a few metres
    assert (rel[..., 2] < 0).all()  # frontal hemisphere (towards the camera)
    assert (a.intensities > 0).all() and (a.ambient > 0).all()
    colors, kelvin = sample_light_colors(16, torch.Generator().manual_seed(1))
    colors2, kelvin2 = sample_light_colors(16, torch.Generator().manual_seed(1))
    assert torch.equal(colors, colors2) and torch.equal(kelvin, kelvin2)
    assert kelvin.min() >= 2700 - 1e-3 and kelvin.max() <= 7500 + 1e-3
    assert not torch.equal(colors, sample_light_colors(16, torch.Generator().manual_seed(3))[0])


def test_colour_temperature_ordering_and_normalisation():
    k = torch.tensor([2700.0, 3500.0, 4500.0, 5500.0, 6500.0, 7500.0])
    rgb = color_temperature_to_rgb(k)
    assert rgb.shape == (6, 3)
    rb = rgb[:, 0] / rgb[:, 2]
    assert (rb[:-1] > rb[1:]).all()  # lower K is redder
    assert rgb[0, 0] > rgb[0, 1] > rgb[0, 2]  # tungsten: orange
    assert torch.allclose(rgb[4], torch.ones(3), atol=0.06)  # ~6500 K is close to white (D65)
    lum = rgb @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert torch.allclose(lum, torch.ones(6), atol=0.02)
    with pytest.raises(FacefitError):
        color_temperature_to_rgb(torch.tensor([-5.0]))
