"""Low-order lighting: second-order spherical harmonics (SH) for Lambertian surfaces.

Under distant lighting, the irradiance on a convex Lambertian surface is well approximated by
the first nine spherical harmonics of the surface normal (Ramamoorthi & Hanrahan 2001, Basri &
Jacobs 2003). facefit uses it to explain the smooth shading in photos so it can be divided out
of sampled vertex colours (:mod:`facefit.albedo_build`):

    observed[v, c] = albedo[v, c] * shading[v, c],   shading[v, c] = sh_basis(n_v) @ coeffs[:, c]

* :func:`sh_basis` evaluates the 9 *irradiance* basis functions: the real SH ``Y_lm(n)`` times
  the clamped-cosine band factors ``A_l / pi`` (``A_0 = pi``, ``A_1 = 2 pi / 3``,
  ``A_2 = pi / 4``), so ``coeffs`` are the SH coefficients of the incident radiance and
  ``coeffs[0] = 1 / Y_00`` alone gives a shading of exactly 1 everywhere.
* :func:`fit_sh_lighting` fits the coefficients to observations given an albedo estimate
  (weighted, optionally robust least squares; one shared "white" light or one per channel).
* :func:`sh_shading` / :func:`shade_sh` evaluate / apply a lighting.
* :func:`remove_lighting` divides a fitted lighting out of observations, normalising the
  shading to mean 1 over the observed vertices (so the overall brightness, which cannot be
  told apart from the albedo's, stays in the albedo; see ``docs/albedo.md``).
* :func:`srgb_to_linear` / :func:`linear_to_srgb`: the sRGB transfer function.

Normals may be given in any frame as long as the lighting is understood in the same frame
(facefit uses camera space). Shapes: ``(..., V, 3)`` with any leading batch dims ``B``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = [
    "SH_BAND_FACTORS",
    "SH_Y00",
    "sh_basis",
    "sh_shading",
    "shade_sh",
    "fit_sh_lighting",
    "remove_lighting",
    "ambient_sh",
    "srgb_to_linear",
    "linear_to_srgb",
    "SHLighting",
]

#: Constant of the real spherical harmonic Y_00.
SH_Y00 = 0.5 / math.sqrt(math.pi)
#: Clamped-cosine convolution factors A_l / pi for bands l = 0, 1, 2.
SH_BAND_FACTORS = (1.0, 2.0 / 3.0, 1.0 / 4.0)

_C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.488603
_C2 = 0.5 * math.sqrt(15.0 / math.pi)  # 1.092548
_C20 = 0.25 * math.sqrt(5.0 / math.pi)  # 0.315392
_C22 = 0.25 * math.sqrt(15.0 / math.pi)  # 0.546274


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 second-order SH irradiance basis functions at unit normals.

    Order: ``Y00; Y1-1 (y), Y10 (z), Y11 (x); Y2-2 (xy), Y2-1 (yz), Y20 (3z^2-1), Y21 (xz),
    Y22 (x^2-y^2)``, each multiplied by its band factor ``A_l / pi``.

    Args:
        normals: (..., 3) unit normals (normalised here; zero vectors give the ambient term).
    Returns:
        (..., 9) basis values; differentiable.
    """
    n = torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
    x, y, z = n.unbind(-1)
    a0, a1, a2 = SH_BAND_FACTORS
    one = torch.ones_like(x)
    return torch.stack(
        [
            a0 * SH_Y00 * one,
            a1 * _C1 * y,
            a1 * _C1 * z,
            a1 * _C1 * x,
            a2 * _C2 * x * y,
            a2 * _C2 * y * z,
            a2 * _C20 * (3.0 * z * z - 1.0),
            a2 * _C2 * x * z,
            a2 * _C22 * (x * x - y * y),
        ],
        -1,
    )


def ambient_sh(batch: int = 1, channels: int = 3, level: float = 1.0, *, dtype=None, device=None) -> torch.Tensor:
    """Coefficients of a uniform environment giving shading ``level`` everywhere.

    Returns:
        (B, 9, C) coefficients (only the first is non-zero).
    """
    c = torch.zeros(batch, 9, channels, dtype=dtype or torch.get_default_dtype(), device=device)
    c[:, 0, :] = level / SH_Y00
    return c


def sh_shading(normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Shading (irradiance / pi) of a lighting at the given normals.

    Args:
        normals: (B, V, 3).
        coeffs: (B, 9) one light for all channels, or (B, 9, C) per channel.
    Returns:
        (B, V, 1) or (B, V, C) shading.
    """
    Y = sh_basis(normals)  # (B, V, 9)
    if coeffs.dim() == 2:
        coeffs = coeffs.unsqueeze(-1)
    return torch.matmul(Y, coeffs.to(Y.dtype))


def shade_sh(albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Lambertian radiance ``albedo * shading``.

    Args:
        albedo: (B, V, 3) or (V, 3) (linear colour).
        normals: (B, V, 3); coeffs: (B, 9) or (B, 9, 3).
    Returns:
        (B, V, 3).
    """
    return albedo * sh_shading(normals, coeffs)


def fit_sh_lighting(
    observed: torch.Tensor,
    albedo: torch.Tensor,
    normals: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    per_channel: bool = False,
    reg: float = 1e-3,
    robust_iters: int = 0,
    robust_scale: float = 2.5,
) -> torch.Tensor:
    """Least-squares SH lighting explaining ``observed ~= albedo * (sh_basis(n) @ coeffs)``.

    Args:
        observed: (B, V, 3) observed linear colours.
        albedo: (B, V, 3) or (V, 3) albedo estimate (linear).
        normals: (B, V, 3) normals.
        weights: (B, V) non-negative vertex weights (0 = not observed); default all 1.
        per_channel: fit 9 coefficients per channel (27) instead of one shared lighting
            (9, "white light").
        reg: ridge on the 8 non-constant coefficients, relative to the data term's scale
            (keeps lighting tame where normals cover few directions).
        robust_iters: extra iteratively reweighted rounds with Huber weights on the per-vertex
            residual (down-weights highlights, occluders and misfit pixels).
        robust_scale: Huber threshold in units of the weighted residual RMS.
    Returns:
        (B, 9) coefficients (shared), or (B, 9, 3) with ``per_channel``.
    """
    B, V, C = observed.shape
    dt = observed.dtype
    if albedo.dim() == 2:
        albedo = albedo.unsqueeze(0).expand(B, V, C)
    w = observed.new_ones(B, V) if weights is None else weights.to(dt)
    Y = sh_basis(normals.to(dt))  # (B, V, 9)
    ridge = torch.ones(9, dtype=dt, device=observed.device)
    ridge[0] = 0.0
    w_eff = w.clone()
    for it in range(robust_iters + 1):
        if per_channel:
            # per channel c: sum_v w a_c^2 Y Y^T x = sum_v w a_c o_c Y
            wa2 = w_eff.unsqueeze(-1) * albedo * albedo  # (B, V, C)
            M = torch.einsum("bvc,bvi,bvj->bcij", wa2, Y, Y)  # (B, C, 9, 9)
            rhs = torch.einsum("bvc,bvi->bci", w_eff.unsqueeze(-1) * albedo * observed, Y)  # (B, C, 9)
            scale = M.diagonal(dim1=-2, dim2=-1)[..., :1].clamp_min(1e-12)  # (B, C, 1)
            M = M + torch.diag_embed(reg * scale * ridge)
            coeffs = torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (B, 9, C)
            pred = albedo * torch.matmul(Y, coeffs)
        else:
            wa2 = w_eff * (albedo * albedo).sum(-1)  # (B, V)
            M = torch.einsum("bv,bvi,bvj->bij", wa2, Y, Y)
            rhs = torch.einsum("bv,bvi->bi", w_eff * (albedo * observed).sum(-1), Y)
            scale = M[:, :1, :1].clamp_min(1e-12)
            M = M + reg * scale * torch.diag(ridge).unsqueeze(0)
            coeffs = torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1)  # (B, 9)
            pred = albedo * torch.matmul(Y, coeffs.unsqueeze(-1))
        if it == robust_iters:
            break
        r = (observed - pred).norm(dim=-1)  # (B, V)
        rms = ((w * r * r).sum(1) / w.sum(1).clamp_min(1e-12)).sqrt().clamp_min(1e-6)  # (B,)
        thr = robust_scale * rms.unsqueeze(1)
        huber = torch.where(r <= thr, torch.ones_like(r), thr / r.clamp_min(1e-12))
        w_eff = w * huber
    return coeffs


def remove_lighting(
    observed: torch.Tensor,
    normals: torch.Tensor,
    coeffs: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    min_shading: float = 0.25,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divide a fitted SH lighting out of observed colours.

    The shading is first normalised to a weighted mean of 1 over the observed vertices, so
    only its *variation* across the face (directional light, shadows) is removed and the
    overall brightness/colour of the photo stays in the albedo (they are indistinguishable).

    Args:
        observed: (B, V, 3) linear colours.
        normals: (B, V, 3).
        coeffs: (B, 9) or (B, 9, 3) from :func:`fit_sh_lighting`.
        weights: (B, V) observation weights (default 1).
        min_shading: normalised shading is clamped from below to this before dividing.
    Returns:
        ``(albedo (B, V, 3), shading (B, V, C) normalised, reliability (B, V))`` where
        ``reliability = clamp(shading / (2 min_shading), 0, 1)`` (min over channels): vertices in
        deep shadow, whose division amplifies noise, get less than 1.
    """
    B, V, _ = observed.shape
    w = observed.new_ones(B, V) if weights is None else weights.to(observed.dtype)
    s = sh_shading(normals.to(observed.dtype), coeffs)  # (B, V, C)
    mean = (w.unsqueeze(-1) * s).sum(1, keepdim=True) / w.sum(1).clamp_min(1e-12).view(B, 1, 1)
    s = s / mean.clamp_min(1e-6)
    albedo = observed / s.clamp_min(min_shading)
    rel = (s.amin(-1) / (2.0 * min_shading)).clamp(0.0, 1.0)
    return albedo, s, rel


class SHLighting(torch.nn.Module):
    """Module wrapper: ``forward(albedo (B,V,3), normals (B,V,3)) -> (B,V,3)`` with learnable
    coefficients (B, 9, C) initialised to ambient light of level 1."""

    def __init__(self, batch: int = 1, channels: int = 3):
        super().__init__()
        self.coeffs = torch.nn.Parameter(ambient_sh(batch, channels))

    def forward(self, albedo: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        return shade_sh(albedo, normals, self.coeffs)


# ------------------------------------------------------------------------------- sRGB


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear (IEC 61966-2-1). Same shape."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear values -> sRGB-encoded (clamped to [0, 1]). Same shape."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)
