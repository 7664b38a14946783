"""The paper's benchmarks as ``facefit eval``: geometry against ground truth and likeness.

* :mod:`facefit.evaluation.geometry` — ground truth cropped at 95 mm around the nose tip,
  ICP with isotropic scale, symmetric point-to-plane distance (Genova et al. 2018, Table 1).
* :mod:`facefit.evaluation.micc` — the MICC Florence protocol (``facefit eval micc``).
* :mod:`facefit.evaluation.synthetic` — the same protocol on faces sampled from the model
  and rendered, with mean-face and landmark-fit baselines (``facefit eval synthetic``).
* :mod:`facefit.evaluation.identity` — likeness on labelled photos with a held-out
  recognition network: similarity distributions, earth mover's distances, identity
  clustering recall, ablations (Tables 2 and 3, Figures 3 and 5; ``facefit eval identity``).
* :mod:`facefit.evaluation.report` — Markdown + JSON + PNG reports, rich summary tables.

This module holds the small helpers the benchmarks share (heavy imports happen inside).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["neutral_vertices", "nose_tip_index", "render_frontal", "checkpoint_summary"]


def nose_tip_index(model) -> int:
    """Vertex index of the nose tip of a morphable model (its landmark 30, 68-point scheme).

    Raises:
        FacefitError: the model has no landmarks.
    """
    from facefit.errors import FacefitError

    from .geometry import NOSE_TIP_LANDMARK

    if model.landmarks is None:
        raise FacefitError(f"model '{model.name}' has no 68 landmark vertices, so no nose tip to crop around")
    return int(model.landmarks[NOSE_TIP_LANDMARK])


def neutral_vertices(model, shape_coeffs) -> np.ndarray:
    """Neutral (no expression) vertices of shape coefficients.

    Args:
        model: MorphableModel; shape_coeffs: (B, k) or (k,) array/tensor (k <= Ks), or None
            for the mean face.
    Returns:
        (B, V, 3) float64 numpy (B = 1 for None or a 1-D input), mm.
    """
    import torch

    if shape_coeffs is None:
        v, _ = model.decode(None, None)
    else:
        s = torch.as_tensor(np.asarray(shape_coeffs, np.float32))
        if s.dim() == 1:
            s = s.unsqueeze(0)
        with torch.no_grad():
            v, _ = model.decode(s, None)
    return v.detach().cpu().numpy().astype(np.float64)


def render_frontal(
    model,
    shape_coeffs,
    color_coeffs=None,
    *,
    crop: str = "arcface_112",
    crop_size: Optional[int] = None,
    render_size: int = 224,
    crop_fill: float = 0.5,
    background: float = 0.5,
    grey: bool = False,
    device=None,
) -> dict:
    """Frontal renders under fixed studio lighting, with a recognition crop of each.

    The camera looks straight at the face (yaw = pitch = roll = 0, 15 degree field of
    view), lit by :func:`facefit.render.frontal_lights` with white light, over a plain grey
    background; eye and mouth holes are closed (:func:`facefit.synthetic.close_holes`). The
    crop is cut from the projected landmark vertices (exact, no detector).

    Args:
        model: MorphableModel.
        shape_coeffs: (B, k) array/tensor; color_coeffs: (B, k') or None (mean colour).
        crop, crop_size: recognition crop of the embedding network.
        render_size: render side in pixels; crop_fill: fraction of it the crop spans.
        background: grey level of the background.
        grey: render a uniform grey albedo (to show shape only).
        device: where to render (default CPU).
    Returns:
        dict with ``crops`` (B, 3, S, S) and ``images`` (B, 3, H, W) float in [0, 1] (CPU).
    """
    import torch

    from facefit.render import RenderParams
    from facefit.render.shading import frontal_lights
    from facefit.synthetic import SyntheticSettings, render_crops

    dev = torch.device(device) if device is not None else torch.device("cpu")
    s = torch.as_tensor(np.asarray(shape_coeffs, np.float32), device=dev)
    if s.dim() == 1:
        s = s.unsqueeze(0)
    n = s.shape[0]
    c = None
    if color_coeffs is not None and model.n_color:
        c = torch.as_tensor(np.asarray(color_coeffs, np.float32), device=dev)
        if c.dim() == 1:
            c = c.unsqueeze(0)
        if c.shape[1] == 0:
            c = None
    settings = SyntheticSettings(render_size=int(render_size), crop=crop, crop_size=crop_size,
                                 crop_fill=float(crop_fill), fill_holes=True)
    z = torch.zeros(n)
    params = RenderParams(z, z, z, frontal_lights(n, target=(0.0, 0.0, 0.0)), torch.ones(n, 3),
                          torch.full((n,), 6500.0), torch.full((n,), 20.0), torch.full((n,), 0.1))
    out_c, out_i = [], []
    with torch.no_grad():
        for i in range(0, n, 16):
            sl = slice(i, i + 16)
            verts, colors = model.decode(s[sl], None if c is None else c[sl])
            if grey:
                colors = torch.full_like(colors, 0.7)
            k = verts.shape[0]
            bg = torch.full((k, 3, int(render_size), int(render_size)), float(background), device=dev)
            p = RenderParams(params.yaw[sl], params.pitch[sl], params.roll[sl], params.lights[sl],
                             params.light_color[sl], params.kelvin[sl], params.shininess[sl], params.specular[sl])
            r = render_crops(model, verts, colors, p, settings, background=bg)
            out_c.append(r["crops"].clamp(0, 1).cpu())
            out_i.append(r["images"].clamp(0, 1).cpu())
    return {"crops": torch.cat(out_c), "images": torch.cat(out_i)}


def checkpoint_summary(path) -> dict:
    """What a regressor checkpoint says about itself: encoder, model, training switches.

    Returns:
        dict with ``encoder``, ``identity_nets`` (the networks its identity loss used;
        ``[encoder]`` for older checkpoints), ``model_name``, ``model_hash``, ``step``, ``stage`` and, for
        checkpoints written by :mod:`facefit.training`, ``batch_loss``, ``loopback``,
        ``views`` and ``ablation`` (a short description such as "no loopback").
    """
    from facefit.regressor import load_checkpoint

    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    cfg = ck.get("config") or {}
    out = {
        "encoder": str(ck.get("encoder", "")),
        "model_name": str(ck.get("model_name", "")),
        "model_hash": str(ck.get("model_hash", "")),
        "step": meta.get("step"),
        "stage": meta.get("stage"),
    }
    if isinstance(cfg, dict) and cfg:
        flat = {}
        for k, v in cfg.items():  # configs may be flat or grouped in sections
            if isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v
        out.update({k: flat.get(k) for k in ("batch_loss", "loopback", "views")})
        parts = []
        if flat.get("batch_loss") is False or flat.get("w_batch") == 0:
            parts.append("no batch loss")
        if flat.get("loopback") is False or flat.get("w_loop") == 0:
            parts.append("no loopback")
        if flat.get("views") == 1:
            parts.append("single view")
        out["ablation"] = ", ".join(parts) if parts else "full"
        nets = flat.get("identity_nets") or []
        out["identity_nets"] = [str(n) for n in nets] if isinstance(nets, list) else []
    out["identity_nets"] = out.get("identity_nets") or [out["encoder"]]
    return out
