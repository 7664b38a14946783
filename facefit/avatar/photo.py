"""Photo textures of the complete head: only skin the photo really shows.

A photo shows the face well; around it, what lands on the neck, ears and scalp is often
not skin (a collar, hair, background). :func:`restrict_to_skin` keeps the photo on
"trusted" texels (the inner face) and, elsewhere, only where the photo's colour is
plausible skin of this person: a Gaussian colour model (mean and covariance in RGB,
trimmed) of the photo's trusted face texels; texels further than ``accept`` Mahalanobis
units from it fade out by ``reject``. The colour the other texels keep (the model's skin
continuation) is shifted to the photo's skin tone, so that the photo face and the
continued skin meet without a seam.
"""
from __future__ import annotations

import torch

__all__ = ["restrict_to_skin", "ACCEPT", "REJECT"]

#: Mahalanobis distance up to which a photo colour counts as skin
ACCEPT = 2.5
#: ... and from which it counts as not skin (linear fade between)
REJECT = 4.0


def restrict_to_skin(photo_rgb: torch.Tensor, w: torch.Tensor, model_rgb: torch.Tensor, trust: torch.Tensor,
                     accept: float = ACCEPT, reject: float = REJECT) -> tuple[torch.Tensor, torch.Tensor]:
    """Photo weights of texels limited to skin, and the model colour moved to the photo's skin tone.

    Args:
        photo_rgb: (N, 3) photo colour at each texel, [0, 1].
        w: (N,) visibility weight of the photo at each texel, [0, 1].
        model_rgb: (N, 3) model colour at each texel.
        trust: (N,) 1 = trust the photo (inner face), 0 = only skin-coloured photo texels,
            < 0 = never the photo (eyes, teeth, mouth inside).
    Returns:
        ``(w' (N,), model_rgb' (N,))``.
    """
    trust = trust.clamp(-1, 1)
    never = trust < 0
    t = trust.clamp(0, 1)
    ref = (w > 0.6) & (t > 0.95)
    if int(ref.sum()) < 200:  # too little trusted face to learn the skin colour
        return torch.where(never, torch.zeros_like(w), w * t), model_rgb
    x = photo_rgb[ref].double()
    lum = x.mean(1)
    lo, hi = torch.quantile(lum, 0.1), torch.quantile(lum, 0.9)
    x = x[(lum >= lo) & (lum <= hi)]  # trimmed: no highlights, no dark nostrils / brows
    mean = x.mean(0)
    cov = torch.cov(x.T) + torch.eye(3, dtype=x.dtype) * 1e-4
    d = photo_rgb.double() - mean
    m = torch.sqrt((d @ torch.linalg.inv(cov) * d).sum(1).clamp(min=0))
    skin = ((reject - m) / (reject - accept)).clamp(0, 1).float()
    w2 = w * (t + (1 - t) * skin)
    w2 = torch.where(never, torch.zeros_like(w2), w2)
    shift = (mean.float() - model_rgb[ref].median(0).values)
    moved = (model_rgb + shift).clamp(0, 1)
    model2 = torch.where(never[:, None], model_rgb, moved)
    return w2, model2
