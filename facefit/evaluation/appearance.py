"""Test-face appearances that training never used (``facefit eval synthetic --appearance``).

facefit's regressor is trained on faces rendered with the morphable model's own colour
model under two random point lights (``facefit/synthetic.py``). A synthetic benchmark that
renders its test faces the same way can reward a regressor for having learned the
renderer, not faces. The **unseen** appearance changes everything but the geometry:

* **albedo**: a flat skin colour per face, drawn from a range of human skin tones
  (sRGB, light to dark, with a random warm/cool shift), times the *brightness pattern* of
  the colour model's mean with exaggerated contrast (brows, lids and lips darker than the
  mean has them; without them a face detector misses most faces), times a smooth
  multiplicative variation over the face (three random low-frequency sinusoids, +-6 %),
  instead of a sample of the colour model;
* **lighting**: one key light (not two), closer (1.2-2.5 m) and from a wider cone (up to
  75 deg off the camera axis) than training's (2-4 m, 70 deg), stronger (0.5-0.85) with
  ambient 0.15-0.3: harder shadows and falloff;
* **light colour**: 2200-10000 K (training: 2700-7500 K);
* **specularity**: Ks 0.3-0.6 with shininess 40-80 (training: 0-0.3 and 5-40): shinier skin.

The poses, identities and backgrounds are the same as the model appearance's for the same
seed (a second random stream is used for the appearance), so the two rows of a report are
paired, face by face.
"""
from __future__ import annotations

import math

import torch

__all__ = ["APPEARANCES", "SKIN_LIGHT", "SKIN_DARK", "unseen_albedo", "unseen_lighting", "feature_pattern", "appearance_generator"]

#: Appearances ``facefit eval synthetic`` knows.
APPEARANCES = ("model", "unseen")

#: The light and the dark end of the skin-tone range (sRGB in [0, 1]).
SKIN_LIGHT = (0.93, 0.78, 0.67)
SKIN_DARK = (0.33, 0.21, 0.15)


def appearance_generator(seed: int) -> torch.Generator:
    """The random stream of the unseen appearance for a benchmark ``seed`` (independent of
    the stream that draws identities and poses, so both appearances show the same faces)."""
    return torch.Generator().manual_seed((int(seed) * 7_368_787 + 2_750_159) % (2**63 - 1))


def feature_pattern(mean_colors: torch.Tensor, contrast: float = 1.5) -> torch.Tensor:
    """(V, 3) mean colours -> (V, 1) brightness pattern, 1 at the median, contrast raised."""
    lum = (mean_colors.detach().cpu().double() * torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)).sum(-1)
    rel = lum / lum.median().clamp_min(1e-6)
    return rel.clamp(0.05, 2.0).pow(float(contrast)).clamp(0.25, 1.3)[:, None]


def unseen_albedo(verts: torch.Tensor, generator: torch.Generator, pattern: torch.Tensor | None = None) -> torch.Tensor:
    """Flat skin colours with the facial features' brightness and a smooth variation.

    Args:
        verts: (B, V, 3) vertices in mm (model space).
        generator: CPU generator.
        pattern: (V, 1) brightness pattern (:func:`feature_pattern` of the model's mean
            colours), or None for none.
    Returns:
        (B, V, 3) colours in [0, 1].
    """
    B = verts.shape[0]
    dt = verts.dtype
    t = torch.rand(B, 1, generator=generator, dtype=torch.float64)
    lo = torch.tensor(SKIN_LIGHT, dtype=torch.float64)
    hi = torch.tensor(SKIN_DARK, dtype=torch.float64)
    base = lo * (1 - t) + hi * t  # (B, 3)
    shift = (torch.rand(B, 1, generator=generator, dtype=torch.float64) - 0.5) * 0.08
    base = base + torch.cat([shift, torch.zeros_like(shift), -shift], 1)  # warm/cool
    # smooth multiplicative variation: three random plane waves of 6-15 cm wavelength
    d = torch.randn(B, 3, 3, generator=generator, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    wl = 60.0 + 90.0 * torch.rand(B, 3, generator=generator, dtype=torch.float64)
    ph = 2 * math.pi * torch.rand(B, 3, generator=generator, dtype=torch.float64)
    v = verts.detach().cpu().double()
    x = torch.einsum("bvk,bwk->bvw", v - v.mean(1, keepdim=True), d)  # (B, V, 3 waves)
    var = 1.0 + 0.02 * torch.sin(2 * math.pi * x / wl[:, None] + ph[:, None]).sum(-1, keepdim=True)
    out = base[:, None] * var
    if pattern is not None:
        out = out * pattern.to(out)[None]
    out = out.clamp(0.0, 1.0)
    return out.to(dtype=dt, device=verts.device)


def unseen_lighting(n: int, generator: torch.Generator, target: torch.Tensor):
    """One close, strong key light per face with a wide range of colours and shinier skin.

    Args:
        n: faces.
        generator: CPU generator.
        target: (n, 3) face centres in camera space (mm).
    Returns:
        ``(lights, light_color (n, 3), kelvin (n,), shininess (n,), specular (n,))``.
    """
    from facefit.render import sample_light_colors, sample_lights

    lights = sample_lights(n, generator, num_lights=1, target=target.detach().cpu(), distance_range=(1200.0, 2500.0),
                           max_angle_deg=75.0, intensity_range=(0.5, 0.85), ambient_range=(0.15, 0.3))
    color, kelvin = sample_light_colors(n, generator, (2200.0, 10000.0), 0.05)

    def uni(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    shininess = uni(40.0, 80.0)
    specular = uni(0.3, 0.6)
    return lights, color, kelvin, shininess, specular
