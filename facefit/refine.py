"""Per-photo identity refinement (``facefit reconstruct --refine N``; beyond the paper).

The regressor predicts coefficients in one pass. Refinement then spends ``N`` optimisation
steps per face on the paper's own identity loss, applied to that one face instead of to
the decoder's weights: starting from the prediction, the colour coefficients (and, with
``--refine-shape``, the shape's) are moved so that the frozen recognition network's
embedding of renders of the face in ``views`` random poses and lightings comes closer to
the embedding of the photo (``1 - cosine``, as :func:`facefit.losses.identity_loss`),
with a weak pull towards the model's N(0, 1) prior. Renders are cropped differentiably
exactly as in training (:func:`facefit.synthetic.render_crops`).

Measured on ``../shared/data/faces-dev`` with the held-out SFace network (``facefit eval
identity --refine``, see ``docs/evaluation.md``): refinement raises photo-vs-render
similarity and identity recall well beyond the regressor alone, also against *other*
photos of the same person, so it is not just fitting the one photo's recognition network
response. Cost: about 0.1 s per face and step on one CPU core (three 150 px crops through
dlib's ResNet, forwards and backwards).

The recognition network rewards shapes that are not the true ones (the paper's "fooling").
Measured on exact ground truth (``docs/evaluation.md``, "Refinement and geometry"), the
identity gradient on the shape points *away* from the true shape (vertex-space cosine
with the regressor's error about -0.1): unanchored, 40 steps made synthetic faces 7 %
worse; anchored towards the regressor's prediction still +0.8 % on the shipped model,
while adding almost no likeness over moving the colour alone. So by default refinement
moves the **colour only** and leaves the regressor's shape exactly as it is
(``shape_lr=0``); ``shape_lr > 0`` (``--refine-shape``) also moves the shape, pulled
towards the regressor's prediction by ``anchor``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FacefitError

__all__ = ["RefineSettings", "refine_identity"]


@dataclasses.dataclass
class RefineSettings:
    """How :func:`refine_identity` optimises.

    Attributes:
        steps: optimisation steps per face (0 = no refinement).
        views: random renders per face and step (the paper's multi-view identity loss).
        lr: Adam step size on the N(0, 1) coefficients.
        prior: weight of ``mean(s^2) + mean(c^2)`` (pull towards the prior's mean).
        anchor: weight of ``mean((s - s0)^2)``: a pull of the shape towards the
            regressor's prediction ``s0`` when the shape moves (``shape_lr > 0``; the
            colour is free); 0 is the unanchored refinement of earlier versions (more
            likeness, worse shapes).
        shape_lr: the shape's step size relative to ``lr``. 0 (the default): the shape is
            the regressor's, exactly, and only the colour is refined; 1: the shape moves as
            fast as the colour (``--refine-shape``; geometry slightly worse, see the
            module docstring).
        render_size: side of the renders the crops are cut from (px), for face-sized
            crops; the combined encoder's 250 px ``dlib_wide`` crop renders 5/3 as large
            (:func:`facefit.faces.alignment.render_size_for`), so the face keeps its pixels.
        yaw_range, pitch_range, roll_range: pose ranges of the views (degrees).
        batch: faces optimised together (memory bound; results do not depend on it).
        seed: random seed of the views (same seed, same result).
    """

    steps: int = 40
    views: int = 3
    lr: float = 0.05
    prior: float = 1e-3
    anchor: float = 2.0
    shape_lr: float = 0.0
    render_size: int = 160
    yaw_range: tuple = (-30.0, 30.0)
    pitch_range: tuple = (-15.0, 15.0)
    roll_range: tuple = (-5.0, 5.0)
    batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.steps) < 0:
            raise FacefitError(f"refine steps must be >= 0, got {self.steps}")
        if int(self.views) < 1:
            raise FacefitError(f"refine views must be >= 1, got {self.views}")
        if not float(self.lr) > 0:
            raise FacefitError(f"refine lr must be > 0, got {self.lr}")
        if int(self.batch) < 1:
            raise FacefitError(f"refine batch must be >= 1, got {self.batch}")
        for k in ("prior", "anchor", "shape_lr"):
            v = float(getattr(self, k))
            if not (v >= 0 and np.isfinite(v)):
                raise FacefitError(f"refine {k} must be a finite number >= 0, got {getattr(self, k)}")


def _embed(net, crops: torch.Tensor) -> torch.Tensor:
    from .regressor import encode

    return encode(net, crops)[1]


def refine_identity(
    model,
    net,
    target_emb,
    shape,
    color,
    settings: Optional[RefineSettings] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Refine coefficients so that renders look like the photos to ``net``.

    Args:
        model: the :class:`~facefit.morphable.MorphableModel` the coefficients belong to.
        net: a differentiable :class:`~facefit.recognition.RecognitionNet` (the regressor's
            encoder; its crop and size are used for the renders).
        target_emb: (N, E) embeddings of the photos by ``net`` (normalised here); for a
            fused face the mean of its photos' unit embeddings.
        shape: (N, Ks) and color: (N, Kc) starting coefficients (the regressor's).
        settings: :class:`RefineSettings` (default settings if None).
        on_step: called with ``(faces done, faces in all)`` after each batch of faces.
    Returns:
        ``(shape (N, Ks), color (N, Kc), info)`` as float32 numpy; ``info`` holds
        ``identity_before`` / ``identity_after`` ((N,) mean cosine of each face's views
        at the first / last step) and the settings.
    Raises:
        FacefitError: a network without gradients (e.g. SFace) or mismatched inputs.
    """
    from .synthetic import SyntheticSettings, random_backgrounds, random_params, render_crops

    cfg = settings or RefineSettings()
    if not getattr(net, "differentiable", True):
        raise FacefitError(f"cannot refine with '{getattr(net, 'name', net)}': the network is not differentiable")
    dev = next(net.parameters()).device
    target = F.normalize(torch.as_tensor(np.asarray(target_emb), dtype=torch.float32, device=dev), dim=-1)
    s_all = torch.as_tensor(np.asarray(shape), dtype=torch.float32, device=dev)
    c_all = torch.as_tensor(np.asarray(color), dtype=torch.float32, device=dev)
    n = len(s_all)
    if len(target) != n or len(c_all) != n:
        raise FacefitError(f"refine: {len(target)} embeddings for {n} shapes and {len(c_all)} colours")
    before = np.full(n, np.nan, np.float32)
    after = np.full(n, np.nan, np.float32)
    if cfg.steps == 0 or n == 0:
        return s_all.cpu().numpy(), c_all.cpu().numpy(), {"steps": 0}
    from .faces.alignment import render_size_for

    syn = SyntheticSettings(
        render_size=render_size_for(net.crop, cfg.render_size), crop=net.crop, crop_size=int(net.input_size),
        yaw_range=tuple(cfg.yaw_range), pitch_range=tuple(cfg.pitch_range), roll_range=tuple(cfg.roll_range),
    )
    V = int(cfg.views)
    s_out, c_out = s_all.clone(), c_all.clone()
    was_training = net.training
    net.eval()
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    move_shape = float(cfg.shape_lr) > 0
    try:
        for a in range(0, n, int(cfg.batch)):
            b = min(n, a + int(cfg.batch))
            s = s_all[a:b].clone().requires_grad_(move_shape)  # a fixed shape costs no gradients
            c = c_all[a:b].clone().requires_grad_(True)
            s0 = s_all[a:b]
            groups = [{"params": [c], "lr": float(cfg.lr)}]
            if move_shape:
                groups.append({"params": [s], "lr": float(cfg.lr) * float(cfg.shape_lr)})
            opt = torch.optim.Adam(groups)
            m = b - a
            frozen = torch.zeros(m, dtype=torch.bool, device=dev)  # faces whose update went non-finite
            for step in range(int(cfg.steps)):
                # the views of face i at step k depend on (seed, i, k) only, not on the batching
                params, bgs = [], []
                for i in range(a, b):
                    g = torch.Generator().manual_seed(_view_seed(int(cfg.seed), i, step))
                    params.append(random_params(V, syn, g))
                    bgs.append(random_backgrounds(V, syn.render_size, g, syn.background_noise, device=dev))
                p = _cat_params(params)
                verts, cols = model.decode(s, c, clamp_colors=True)
                verts = verts.repeat_interleave(V, 0)
                cols = cols.repeat_interleave(V, 0)
                rc = render_crops(model, verts, cols, p, syn, background=torch.cat(bgs))
                emb = F.normalize(_embed(net, rc["crops"]), dim=-1).view(m, V, -1)
                cos = (emb * target[a:b, None]).sum(-1).mean(1)  # (m,)
                loss = (1.0 - cos).sum() + float(cfg.prior) * (s.pow(2).mean(1) + c.pow(2).mean(1)).sum()
                if cfg.anchor and move_shape:
                    loss = loss + float(cfg.anchor) * (s - s0).pow(2).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                keep_s, keep_c = s.detach().clone(), c.detach().clone()
                opt.step()
                with torch.no_grad():
                    # a face whose step went non-finite (a degenerate render) keeps its last
                    # good coefficients and takes no further steps
                    bad = frozen | ~torch.isfinite(s).all(1) | ~torch.isfinite(c).all(1)
                    bad |= ~torch.isfinite(cos.detach())
                    if bad.any():
                        s[bad] = keep_s[bad]
                        c[bad] = keep_c[bad]
                        frozen |= bad
                cos_np = cos.detach().cpu().numpy()
                if step == 0:
                    before[a:b] = cos_np
                ok = np.isfinite(cos_np)
                after[a:b][ok] = cos_np[ok]
            s_out[a:b] = s.detach()
            c_out[a:b] = c.detach()
            if on_step is not None:
                on_step(b, n)
    finally:
        for p, r in zip(net.parameters(), grads):
            p.requires_grad_(r)
        net.train(was_training)
    info = {"steps": int(cfg.steps), "views": V, "lr": float(cfg.lr), "prior": float(cfg.prior), "seed": int(cfg.seed),
            "anchor": float(cfg.anchor), "shape_lr": float(cfg.shape_lr),
            "identity_before": before, "identity_after": after}
    return s_out.cpu().numpy(), c_out.cpu().numpy(), info


def _view_seed(seed: int, face: int, step: int) -> int:
    """Seed of the views of ``face`` at ``step`` (a fixed mix, the same in every process)."""
    return (seed * 1_000_003 + face * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def _cat_params(params):
    """Concatenate :class:`~facefit.render.RenderParams` along the batch."""
    first = params[0]
    fields = {}
    for f in dataclasses.fields(first):
        vals = [getattr(p, f.name) for p in params]
        fields[f.name] = _cat_value(vals)
    return type(first)(**fields)


def _cat_value(vals):
    v0 = vals[0]
    if isinstance(v0, torch.Tensor):
        return torch.cat(vals)
    if dataclasses.is_dataclass(v0):
        return type(v0)(**{f.name: _cat_value([getattr(v, f.name) for v in vals]) for f in dataclasses.fields(v0)})
    if v0 is None:
        return None
    raise TypeError(f"cannot concatenate {type(v0).__name__}")
