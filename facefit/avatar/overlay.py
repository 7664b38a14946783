"""The overlay sheet of a posed face (Genova et al. 2018, Figure 18).

Four square panels side by side, each the same crop of the photo around the face (2.2 times
the landmarks' extent, resized to ``PANEL_SIZE`` pixels):

1. the photo with its 68 detected landmarks (green) and the fitted model's projected
   landmark vertices (red),
2. the neutral reconstruction, frontal, studio lighting,
3. the shaded geometry (grey, with the photo's expression) rendered with the fitted camera
   over the photo,
4. the albedo (the predicted colours, unlit) rendered the same way over the photo.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from facefit.mesh_io import FaceMesh

from .pose import PoseFit, posed_vertices

__all__ = ["overlay_panels", "overlay_sheet", "write_overlay", "PANEL_LABELS"]

PANEL_LABELS = ("photo + landmarks", "neutral reconstruction", "shaded geometry", "albedo")
#: side of each panel in pixels
PANEL_SIZE = 384
#: side of the crop around the face, in units of the landmarks' larger extent
CROP_FACTOR = 2.2


def face_crop(landmarks68: np.ndarray, size: int = PANEL_SIZE, factor: float = CROP_FACTOR) -> tuple[float, float, float]:
    """The square crop around a face: (x0, y0, scale) with panel pixel = (photo pixel - (x0, y0)) * scale.

    Args:
        landmarks68: (68, 2) pixels.
    """
    lm = np.asarray(landmarks68, np.float64)
    lo, hi = lm.min(0), lm.max(0)
    side = max(float((hi - lo).max()) * factor, 8.0)
    c = (lo + hi) / 2
    return float(c[0] - side / 2), float(c[1] - side / 2), size / side


def _draw_points(img: np.ndarray, pts: np.ndarray, color, r: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    for x, y in np.asarray(pts, np.float64):
        if np.isfinite(x) and np.isfinite(y):
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(color))
    return np.asarray(pil)


def overlay_panels(model, neutral: FaceMesh, shape_coeffs, pose: PoseFit, photo: np.ndarray) -> list[np.ndarray]:
    """The four panels (see the module docstring), each (h, w, 3) uint8.

    Args:
        model: the morphable model of the reconstruction.
        neutral: the neutral mesh (its colours are the albedo).
        shape_coeffs: (Ks,) identity coefficients.
        pose: the photo's :class:`PoseFit`.
        photo: (H, W, 3) uint8 RGB.
    """
    from facefit.render import Lights, frontal_lights, render
    from facefit.turntable import render_views

    import cv2

    from facefit.render import Camera

    P = PANEL_SIZE
    x0, y0, s = face_crop(pose.landmarks68, P)
    off = np.array([x0, y0])
    cam = Camera((P, P), pose.focal * s, (pose.cx - x0) * s, (pose.cy - y0) * s)
    h = P
    A = np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]])
    small = cv2.warpAffine(np.ascontiguousarray(photo), A, (P, P), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    r = max(1.5, P / 160)
    lm_panel = _draw_points(small, (np.asarray(pose.landmarks68) - off) * s, (40, 230, 40), r)
    verts = torch.as_tensor(posed_vertices(model, shape_coeffs, pose, camera_space=False), dtype=torch.float32)[None]
    lm_fit = (pose.project(verts[0].double().numpy()[np.asarray(model.landmarks)]) - off) * s
    lm_panel = _draw_points(lm_panel, lm_fit, (230, 40, 40), 0.6 * r)

    neutral_panel = render_views(neutral, [0.0], size=h, model=model)[0]

    faces = model.torch_triangles()
    bg = torch.as_tensor(small).permute(2, 0, 1).float()[None] / 255.0
    R = torch.as_tensor(pose.R_head, dtype=torch.float32)[None]
    t = torch.as_tensor(pose.translation, dtype=torch.float32)[None]
    grey = torch.full_like(verts[0], 0.72)
    centre = torch.as_tensor(pose.to_camera(verts[0].double().numpy()).mean(0), dtype=torch.float32)
    with torch.no_grad():
        shaded = render(verts, faces, grey, cam, R=R, t=t, lights=frontal_lights(1, target=centre),
                        background=bg, specular=0.1)
        colors = torch.as_tensor(np.asarray(neutral.colors if neutral.colors is not None else grey.numpy()),
                                 dtype=torch.float32)
        unlit = Lights(torch.zeros(1, 1, 3), torch.zeros(1, 1), torch.ones(1))
        albedo = render(verts, faces, colors, cam, R=R, t=t, lights=unlit, background=bg, specular=0.0)

    def u8(x):
        return (x.images[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()

    return [lm_panel, neutral_panel, u8(shaded), u8(albedo)]


def overlay_sheet(model, neutral: FaceMesh, shape_coeffs, pose: PoseFit, photo: np.ndarray) -> np.ndarray:
    """The labelled four-panel sheet, (h', w', 3) uint8 (see :func:`overlay_panels`)."""
    from facefit.media import contact_sheet

    return contact_sheet(overlay_panels(model, neutral, shape_coeffs, pose, photo), list(PANEL_LABELS), ncols=4)


def write_overlay(model, neutral: FaceMesh, shape_coeffs, pose: PoseFit, photo: np.ndarray,
                  path: str | os.PathLike) -> Path:
    """Write :func:`overlay_sheet` as a PNG (atomically)."""
    from facefit.media import write_png

    return write_png(overlay_sheet(model, neutral, shape_coeffs, pose, photo), path)
