"""Faces with exactly known pose and expression, for checking the pose fit.

:func:`posed_test_faces` samples identities and colours from the model's prior, gives them a
known head pose (yaw up to +-40 degrees by default) and known weights of a few blend shapes
(``jawOpen``, ``mouthSmile_L/R``, sometimes ``eyeBlink_L/R`` and ``browInnerUp_L/R``),
renders them with facefit's renderer (eye and mouth holes closed, studio lighting, a plain
random background) and returns the images with the ground truth. The pose benchmark
(``benchmarks/bench_pose.py``) and the tests run facefit's face detector on these renders and
fit them like photos.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PosedFaces", "posed_test_faces", "rotation_error_deg", "SCORED_SHAPES"]

#: the blend shapes that get known non-zero weights (others are 0)
SCORED_SHAPES = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L", "browInnerUp_R")


@dataclass
class PosedFaces:
    """Rendered faces and their ground truth (N faces).

    Attributes:
        images: (N, S, S, 3) uint8 RGB.
        shape_coeffs: (N, Ks); expr_coeffs: (N, Ke) true blend-shape weights.
        yaw, pitch, roll: (N,) degrees; t: (N, 3) mm; focal: render focal length, px.
        landmarks: (N, 68, 2) projected landmark vertices (pixels).
    """

    images: np.ndarray
    shape_coeffs: np.ndarray
    expr_coeffs: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    t: np.ndarray
    focal: float
    landmarks: np.ndarray


@torch.no_grad()
def posed_test_faces(model, n: int, seed: int = 0, size: int = 320, yaw_max: float = 40.0, pitch_max: float = 15.0,
                     roll_max: float = 10.0, fov_deg: float = 15.0, face_fill: float = 0.45) -> PosedFaces:
    """Render ``n`` faces with known pose and expression (deterministic for a seed).

    Expression per face: ``jawOpen`` ~ U(0, 0.7); ``mouthSmile_L``/``_R`` ~ U(0, 1) each;
    with probability 1/2 ``eyeBlink_L = eyeBlink_R`` ~ U(0, 0.6); with probability 1/2
    ``browInnerUp_L = _R`` ~ U(0, 0.8). Identity and colour from the prior.
    """
    from facefit.render import Camera, euler_to_matrix, frontal_lights, render, world_to_camera
    from facefit.synthetic import close_holes, frame_for_crop

    g = torch.Generator().manual_seed(int(seed))
    c = model.sample(n, g, shape=True, color=True, expr=False)
    names = list(model.expr_names)
    expr = torch.zeros(n, model.n_expr)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def setw(name, w):
        if name in names:
            expr[:, names.index(name)] = w

    setw("jawOpen", u(0.0, 0.7))
    setw("mouthSmile_L", u(0.0, 1.0))
    setw("mouthSmile_R", u(0.0, 1.0))
    blink = u(0.0, 0.6) * (torch.rand(n, generator=g) < 0.5)
    setw("eyeBlink_L", blink)
    setw("eyeBlink_R", blink)
    brow = u(0.0, 0.8) * (torch.rand(n, generator=g) < 0.5)
    setw("browInnerUp_L", brow)
    setw("browInnerUp_R", brow)
    yaw, pitch, roll = u(-yaw_max, yaw_max), u(-pitch_max, pitch_max), u(-roll_max, roll_max)
    bg = 0.25 + 0.6 * torch.rand(n, 3, generator=g)
    cam = Camera.from_fov(fov_deg, size)
    verts, colors = model.decode(c["shape_coeffs"], c.get("color_coeffs"), expr)
    if colors is None:
        colors = torch.full_like(verts, 0.7)
    R = euler_to_matrix(yaw, pitch, roll).to(verts)
    lm_v = model.landmark_positions(verts)
    t = frame_for_crop(lm_v, R, cam, "dlib_chip", None, face_fill)
    images, lms = [], []
    for i in range(0, n, 8):
        sl = slice(i, min(n, i + 8))
        v2, c2, f2 = close_holes(model, verts[sl], colors[sl])
        centre = world_to_camera(lm_v[sl].mean(1, keepdim=True), R[sl], t[sl])[:, 0]
        out = render(v2, f2, c2, cam, R=R[sl], t=t[sl], lights=frontal_lights(v2.shape[0], target=centre),
                     background=bg[sl])
        images.append((out.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        lms.append(model.landmark_positions(out.screen_verts)[..., :2].numpy())
    return PosedFaces(np.concatenate(images), c["shape_coeffs"].numpy(), expr.numpy(), yaw.numpy(), pitch.numpy(),
                      roll.numpy(), t.numpy(), float(cam.focal), np.concatenate(lms).astype(np.float64))


def rotation_error_deg(yaw1, pitch1, roll1, yaw2, pitch2, roll2) -> np.ndarray:
    """(N,) angle of the rotation between two head poses (geodesic distance), degrees."""
    from facefit.render import euler_to_matrix

    def R(y, p, r):
        return euler_to_matrix(*(torch.as_tensor(np.asarray(a, np.float64).reshape(-1)) for a in (y, p, r)))

    M = R(yaw1, pitch1, roll1).transpose(1, 2) @ R(yaw2, pitch2, roll2)
    cos = ((M.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos)).numpy()
