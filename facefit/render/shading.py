"""Phong shading with point lights and colour-temperature light colours.

Lighting model (camera space, camera at the origin):

``I = c_light * ( Kd * (ambient + sum_l I_l max(N.L_l, 0))
                 + Ks * sum_l I_l [N.L_l > 0] max(R_l.V, 0)^shininess )``

with ``Ks = c - c * Kd`` (a scalar specular strength ``c`` as in Genova et al. 2018), L_l the
unit direction to light l, V the unit direction to the camera and R_l the mirror direction
of L_l. Lights have no distance attenuation: they sit a few metres away, far compared with
the face, so their ``intensity`` is directly the irradiance factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from facefit.errors import FacefitError

__all__ = [
    "Lights",
    "sample_lights",
    "frontal_lights",
    "color_temperature_to_rgb",
    "sample_light_colors",
    "phong_shade",
]


@dataclass
class Lights:
    """Point lights in camera space.

    Attributes:
        positions: (B, L, 3) light positions in mm (camera space).
        intensities: (B, L) non-negative intensities.
        ambient: (B,) ambient term.
    """

    positions: torch.Tensor
    intensities: torch.Tensor
    ambient: torch.Tensor

    def to(self, *args, **kwargs) -> "Lights":
        return Lights(
            self.positions.to(*args, **kwargs),
            self.intensities.to(*args, **kwargs),
            self.ambient.to(*args, **kwargs),
        )

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def __getitem__(self, idx) -> "Lights":
        """Select images (index tensor or slice) of the batch."""
        return Lights(self.positions[idx], self.intensities[idx], self.ambient[idx])


def _target(target, n: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=dtype, device=device)
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(n, 3)
    if t.shape != (n, 3):
        raise FacefitError(f"light target must be (3,) or ({n}, 3), got {tuple(t.shape)}")
    return t


def sample_lights(
    n: int,
    generator: Optional[torch.Generator] = None,
    num_lights: int = 2,
    target: Union[Sequence[float], torch.Tensor] = (0.0, 0.0, 850.0),
    distance_range: Tuple[float, float] = (2000.0, 4000.0),
    max_angle_deg: float = 70.0,
    intensity_range: Tuple[float, float] = (0.25, 0.6),
    ambient_range: Tuple[float, float] = (0.15, 0.4),
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> Lights:
    """Random point lights in the frontal hemisphere of the face.

    Each light is placed at ``target + r * d`` where ``r`` is uniform in ``distance_range`` (mm)
    and ``d`` is uniform on the spherical cap of half-angle ``max_angle_deg`` around the
    direction from the face towards the camera (-z in camera space).

    Args:
        n: batch size.
        generator: CPU ``torch.Generator`` for reproducibility.
        target: (3,) or (n, 3) face centre in camera space, mm (e.g. ``t`` from ``frame_face``).
    Returns:
        :class:`Lights` with positions (n, L, 3), intensities (n, L), ambient (n,).
    """
    dtype = dtype or torch.get_default_dtype()
    if num_lights < 1:
        raise FacefitError(f"num_lights must be >= 1, got {num_lights}")

    def uni(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=dtype)

    cos_max = math.cos(math.radians(max_angle_deg))
    cos_t = uni((n, num_lights), cos_max, 1.0)
    sin_t = (1.0 - cos_t**2).clamp_min(0).sqrt()
    phi = uni((n, num_lights), 0.0, 2.0 * math.pi)
    d = torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), -cos_t], -1)
    r = uni((n, num_lights), *distance_range).unsqueeze(-1)
    intens = uni((n, num_lights), *intensity_range)
    amb = uni((n,), *ambient_range)
    tgt = _target(target, n, "cpu", dtype)
    pos = tgt.unsqueeze(1) + r * d
    return Lights(pos, intens, amb).to(device=device)


def frontal_lights(
    n: int,
    target: Union[Sequence[float], torch.Tensor] = (0.0, 0.0, 850.0),
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> Lights:
    """Fixed "studio" lighting: a key light above-right of the camera, a weaker fill light
    left, both 3 m from the face, ambient 0.3 (a face comes out about as bright as its albedo).

    Args:
        n: batch size; target: (3,) or (n, 3) face centre in camera space (mm).
    Returns:
        :class:`Lights` with L = 2.
    """
    dtype = dtype or torch.get_default_dtype()
    tgt = _target(target, n, device, dtype)
    dirs = torch.tensor([[0.3, -0.4, -1.0], [-0.5, -0.1, -1.0]], dtype=dtype, device=tgt.device)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    pos = tgt.unsqueeze(1) + 3000.0 * dirs.unsqueeze(0)
    intens = torch.tensor([0.7, 0.3], dtype=dtype, device=tgt.device).expand(n, 2).clone()
    amb = torch.full((n,), 0.3, dtype=dtype, device=tgt.device)
    return Lights(pos, intens, amb)


# --------------------------------------------------------------------------------------
# colour temperature

# Multi-lobe piecewise-Gaussian fit of the CIE 1931 2-degree colour matching functions
# (Wyman, Sloan & Shirley, "Simple Analytic Approximations to the CIE XYZ Color Matching
# Functions", JCGT 2013): (weight, mean nm, sigma left, sigma right).
_CMF_LOBES = {
    "x": ((1.056, 599.8, 37.9, 31.0), (0.362, 442.0, 16.0, 26.7), (-0.065, 501.1, 20.4, 26.2)),
    "y": ((0.821, 568.8, 46.9, 40.5), (0.286, 530.9, 16.3, 31.1)),
    "z": ((1.217, 437.0, 11.8, 36.0), (0.681, 459.0, 26.0, 13.8)),
}
# XYZ -> linear sRGB (D65 white)
_XYZ_TO_RGB = (
    (3.2406, -1.5372, -0.4986),
    (-0.9689, 1.8758, 0.0415),
    (0.0557, -0.2040, 1.0570),
)


def _cmf(lam: torch.Tensor) -> torch.Tensor:
    """(K,) wavelengths in nm -> (K, 3) approximate CIE xbar, ybar, zbar."""
    out = []
    for key in ("x", "y", "z"):
        acc = torch.zeros_like(lam)
        for w, mu, s1, s2 in _CMF_LOBES[key]:
            s = torch.where(lam < mu, torch.full_like(lam, s1), torch.full_like(lam, s2))
            acc = acc + w * torch.exp(-0.5 * ((lam - mu) / s) ** 2)
        out.append(acc)
    return torch.stack(out, -1)


def color_temperature_to_rgb(kelvin: torch.Tensor) -> torch.Tensor:
    """Linear-sRGB colour of a black-body illuminant of the given temperature.

    Planck's law integrated against the CIE 1931 colour matching functions (analytic fit),
    converted to linear sRGB and normalised to unit luminance (Y = 1, so brightness does not
    change with temperature). The black body is a good model of tungsten light (~2700-3200 K)
    and approximates daylight (CIE D series, ~5000-7500 K) to within a small green/magenta
    shift; 6500 K is close to neutral white (1, 1, 1). Lower temperatures are redder.

    Args:
        kelvin: (B,) temperatures in K (sensible range ~1500-15000).
    Returns:
        (B, 3) non-negative RGB, same dtype/device as ``kelvin`` (float).
    """
    kelvin = torch.as_tensor(kelvin)
    if not kelvin.is_floating_point():
        kelvin = kelvin.to(torch.get_default_dtype())
    if bool((kelvin <= 0).any()):
        raise FacefitError("colour temperature must be positive")
    dev, dt = kelvin.device, kelvin.dtype
    lam = torch.linspace(380.0, 780.0, 81, dtype=torch.float64, device=dev)  # nm
    cmf = _cmf(lam)  # (K, 3)
    c2 = 1.4388e7  # second radiation constant, nm*K
    T = kelvin.to(torch.float64).reshape(-1, 1)
    spd = lam.pow(-5) / torch.expm1(c2 / (lam * T))  # (B, K), arbitrary scale
    xyz = spd @ cmf  # (B, 3)
    xyz = xyz / xyz[:, 1:2]  # Y = 1
    m = torch.tensor(_XYZ_TO_RGB, dtype=torch.float64, device=dev)
    rgb = (xyz @ m.T).clamp_min(0.0)
    return rgb.to(dt).reshape(*kelvin.shape, 3)


def sample_light_colors(
    n: int,
    generator: Optional[torch.Generator] = None,
    temperature_range: Tuple[float, float] = (2700.0, 7500.0),
    jitter: float = 0.03,
    device=None,
    dtype: Optional[torch.dtype] = None,
    white_balance: float = 0.7,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random light colours: a colour temperature per image plus a small RGB perturbation.

    Cameras white-balance most photos, so the raw black-body colour (2700 K is about
    (1.9, 0.8, 0.2)) is partially balanced: ``rgb ** (1 - white_balance)``, renormalised to
    luminance 1 (0 = raw illuminant colour, 1 = white). The default 0.7 keeps a visible warm
    or cool cast, like photos under tungsten or overcast light.

    Temperatures are uniform in mired (1e6 / K), which is closer to perceptually uniform than
    uniform in kelvin. Each channel is then multiplied by ``exp(jitter * N(0, 1))``.

    Returns:
        colors: (n, 3) linear RGB light colours; kelvin: (n,) sampled temperatures.
    """
    dtype = dtype or torch.get_default_dtype()
    lo, hi = temperature_range
    if not 0 < lo <= hi:
        raise FacefitError(f"invalid temperature range {temperature_range}")
    m = 1e6 / hi + (1e6 / lo - 1e6 / hi) * torch.rand(n, generator=generator, dtype=dtype)
    kelvin = 1e6 / m
    rgb = color_temperature_to_rgb(kelvin)
    if not 0.0 <= white_balance <= 1.0:
        raise FacefitError(f"white_balance must be in [0, 1], got {white_balance}")
    rgb = rgb.clamp_min(1e-6) ** (1.0 - white_balance)
    lum = rgb @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype)
    rgb = rgb / lum.unsqueeze(-1)
    rgb = rgb * torch.exp(jitter * torch.randn(n, 3, generator=generator, dtype=dtype))
    return rgb.to(device), kelvin.to(device)


# --------------------------------------------------------------------------------------
# Phong


def _phong_soa(P, Nrm, Kd, lp, li, amb, col, shin, c, view=None) -> torch.Tensor:
    """Phong shading, structure-of-arrays layout (rows contiguous, fast on CPU).

    Args:
        P: (3, N) camera-space points (mm); Nrm: (3, N) normals (normalised here);
        Kd: (3, N) albedo; lp: (L, 3, N) light positions; li: (L, N) intensities;
        amb: (N,) ambient; col: (3, N) light colour; shin, c: (N,) or 0-d Phong exponent and
        specular strength (all trailing N dims may be 1 to broadcast); view: optional
        (3, N) unit directions to the camera (default: -P / |P|).
    Returns:
        (3, N) radiance (not clamped).
    """
    nx, ny, nz = Nrm.unbind(0)
    inv = torch.rsqrt((nx * nx + ny * ny + nz * nz).clamp_min(1e-24))
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    if view is None:
        px, py, pz = P.unbind(0)
        vinv = torch.rsqrt((px * px + py * py + pz * pz).clamp_min(1e-24))
        vx, vy, vz = -px * vinv, -py * vinv, -pz * vinv  # unit direction to the camera
    else:
        vx, vy, vz = view.unbind(0)
    ndv = nx * vx + ny * vy + nz * vz
    diffuse = 0.0
    spec = 0.0
    for l in range(lp.shape[0]):
        lx, ly, lz = (lp[l] - P).unbind(0)
        linv = torch.rsqrt((lx * lx + ly * ly + lz * lz).clamp_min(1e-24))
        lx, ly, lz = lx * linv, ly * linv, lz * linv
        ndl = nx * lx + ny * ly + nz * lz
        diffuse = diffuse + torch.relu(ndl) * li[l]
        # mirror direction R = 2 (N.L) N - L, so R.V = 2 (N.L)(N.V) - L.V
        rdv = (2.0 * ndl * ndv - (lx * vx + ly * vy + lz * vz)).clamp_min(0.0)
        spec = spec + rdv.pow(shin) * (li[l] * (ndl > 0).to(P.dtype))
    ks = c - c * Kd  # (3, N)
    return col * (Kd * (amb + diffuse) + ks * spec)


class _PhongFused(torch.autograd.Function):
    """:func:`_phong_soa` with a hand-written backward for P, Nrm and Kd (lights, colours and
    Phong parameters constant): the same values with far fewer passes over the pixels than
    autograd's graph of the same formula."""

    @staticmethod
    def forward(ctx, P, Nrm, Kd, view, lp, li, amb, col, shin, c):
        nn = (Nrm * Nrm).sum(0)
        ninv = torch.rsqrt(nn.clamp_min(1e-24))
        n = Nrm * ninv
        ndv = (n * view).sum(0)
        diffuse = torch.zeros_like(ndv)
        spec = torch.zeros_like(ndv)
        saved = []
        for l in range(lp.shape[0]):
            d = lp[l] - P
            linv = torch.rsqrt((d * d).sum(0).clamp_min(1e-24))
            Ld = d * linv
            ndl = (n * Ld).sum(0)
            lit = ndl > 0
            w = li[l] * lit.to(P.dtype)  # li where the light reaches the surface
            diffuse += ndl.clamp_min(0.0) * li[l]
            raw = 2.0 * ndl * ndv - (Ld * view).sum(0)
            rdv = raw.clamp_min(0.0)
            spec += rdv.pow(shin) * w
            saved.append((Ld, linv, ndl, w, raw, rdv))
        ks = c - c * Kd
        amb_diff = amb + diffuse
        out = col * (Kd * amb_diff + ks * spec)
        ctx.saved = (n, ninv, nn, ndv, view, Kd, amb_diff, spec, col, shin, c, ks, saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        n, ninv, nn, ndv, view, Kd, amb_diff, spec, col, shin, c, ks, saved = ctx.saved
        h = go * col
        g_Kd = h * (amb_diff - c * spec)
        g_diff = (h * Kd).sum(0)
        g_spec = (h * ks).sum(0)
        g_n = torch.zeros_like(n)
        g_ndv = torch.zeros_like(ndv)
        g_P = torch.zeros_like(n)
        for Ld, linv, ndl, w, raw, rdv in saved:
            # spec_l = rdv^shin * w, rdv = max(raw, 0); diffuse_l = max(ndl, 0) * li = ndl * w
            g_raw = g_spec * w * shin * rdv.pow(shin - 1.0)
            g_raw = torch.where(raw >= 0, g_raw, torch.zeros_like(g_raw))
            g_ndl = g_diff * w + 2.0 * g_raw * ndv
            g_ndv += 2.0 * g_raw * ndl
            g_L = g_ndl * n - g_raw * view
            g_n += g_ndl * Ld
            # L = d / |d|, d = lp - P
            g_d = (g_L - Ld * (Ld * g_L).sum(0)) * linv
            g_P -= g_d
        g_n += g_ndv * view
        proj = (n * g_n).sum(0)
        g_Nrm = torch.where(nn >= 1e-24, g_n - n * proj, g_n) * ninv
        return g_P, g_Nrm, g_Kd, None, None, None, None, None, None, None


def _phong_fast(P, Nrm, Kd, lp, li, amb, col, shin, c, view) -> torch.Tensor:
    """:func:`_phong_soa` with ``view`` given, through :class:`_PhongFused` when only P, Nrm
    and Kd may need gradients (else the autograd formula)."""
    consts = [x for x in (view, lp, li, amb, col, shin, c) if isinstance(x, torch.Tensor)]
    if torch.is_grad_enabled() and any(x.requires_grad for x in consts):
        return _phong_soa(P, Nrm, Kd, lp, li, amb, col, shin, c, view=view)
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in (P, Nrm, Kd)):
        with torch.no_grad():
            return _PhongFused.forward(_NoCtx(), P, Nrm, Kd, view, lp, li, amb, col, shin, c)
    return _PhongFused.apply(P, Nrm, Kd, view, lp, li, amb, col, shin, c)


class _NoCtx:
    """Stand-in for the autograd context when nothing needs gradients."""


def phong_shade(
    positions: torch.Tensor,
    normals: torch.Tensor,
    albedo: torch.Tensor,
    lights: Lights,
    light_color: Optional[torch.Tensor] = None,
    shininess: Union[float, torch.Tensor] = 20.0,
    ks_scale: Union[float, torch.Tensor] = 0.2,
) -> torch.Tensor:
    """Deferred Phong shading of G-buffers (camera at the origin).

    Args:
        positions: (B, H, W, 3) camera-space points in mm (any (B, ..., 3) works).
        normals: (B, H, W, 3) normals (normalised here).
        albedo: (B, H, W, 3) diffuse albedo Kd in [0, 1].
        lights: :class:`Lights` with batch B.
        light_color: (B, 3) light colour (default white).
        shininess: float or (B,) Phong exponent (>= 1).
        ks_scale: float or (B,) specular strength c; Ks = c - c * Kd.
    Returns:
        (B, H, W, 3) radiance, not clamped (composite and clamp in the renderer).
    """
    B = positions.shape[0]
    if lights.batch_size != B:
        raise FacefitError(f"lights batch {lights.batch_size} does not match images batch {B}")
    shape = positions.shape
    S = positions[0, ..., 0].numel()  # pixels per image
    bidx = torch.arange(B, device=positions.device).repeat_interleave(S)
    dt, dev = positions.dtype, positions.device
    soa = lambda x: x.reshape(-1, 3).t()  # noqa: E731  (B*S, 3) -> (3, B*S)
    lights = lights.to(device=dev, dtype=dt)
    rows = lambda x: x.contiguous().index_select(0, bidx).t().contiguous()  # noqa: E731  (B, K) -> (K, N)
    lp = rows(lights.positions.reshape(B, -1)).view(lights.positions.shape[1], 3, bidx.numel())  # (L, 3, N)
    li = rows(lights.intensities)  # (L, N)
    amb = lights.ambient.index_select(0, bidx)
    if light_color is None:
        light_color = positions.new_ones(B, 3)
    col = rows(light_color.to(device=dev, dtype=dt))

    def per_pixel(x):
        x = torch.as_tensor(x, dtype=dt, device=dev)
        return x.index_select(0, bidx) if x.dim() == 1 else x

    out = _phong_soa(
        soa(positions), soa(normals), soa(albedo), lp, li, amb, col, per_pixel(shininess), per_pixel(ks_scale)
    )
    return out.t().reshape(shape)
