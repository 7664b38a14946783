"""Optional PyTorch3D visibility pass for :func:`facefit.render.rasterize` (CUDA).

Only the non-differentiable "which triangle is nearest at this pixel centre" pass runs in
PyTorch3D (``pytorch3d.renderer.mesh.rasterize_meshes`` with ``faces_per_pixel=1``); the
differentiable barycentrics, depth and silhouette extension are computed by the shared code
in ``rasterize.py``, so both backends have the same conventions and gradients.

Conversion to PyTorch3D's NDC (``align_corners=False``; +x left, +y up; the shorter image
side spans [-1, 1]): with ``s = min(H, W)``,
``x_ndc = -(u - W/2) * 2/s``, ``y_ndc = -(v - H/2) * 2/s``, ``z_ndc = z`` (camera depth, used
for perspective-correct depth ordering). Pixel (i, j) of the output corresponds to our
pixel centre (j + 0.5, i + 0.5).

Back-face culling, near-plane and degenerate-triangle rejection are done here (same test as
the torch backend) by passing each image only its drawable faces, so we do not depend on
PyTorch3D's winding convention.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["available", "visibility_pytorch3d"]

try:  # PyTorch3D is optional and often not installable; never required.
    from pytorch3d.renderer.mesh import rasterize_meshes as _p3d_rasterize_meshes
    from pytorch3d.structures import Meshes as _P3DMeshes

    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _p3d_rasterize_meshes = None
    _P3DMeshes = None
    _IMPORT_ERROR = exc


def available() -> bool:
    """True when PyTorch3D imported successfully."""
    return _p3d_rasterize_meshes is not None


def to_ndc(screen_verts: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """(B, V, 3) screen (u, v, z) -> (B, V, 3) PyTorch3D NDC (x, y, z)."""
    H, W = image_size
    s = float(min(H, W))
    u, v, z = screen_verts.unbind(-1)
    return torch.stack([-(u - W / 2.0) * (2.0 / s), -(v - H / 2.0) * (2.0 / s), z], -1)


@torch.no_grad()
def visibility_pytorch3d(
    screen_verts: torch.Tensor,
    faces: torch.Tensor,
    image_size: Tuple[int, int],
    cull_backfaces: bool = True,
    near: float = 1e-3,
    bin_size: Optional[int] = None,
    max_faces_per_bin: Optional[int] = None,
) -> torch.Tensor:
    """Nearest visible triangle per pixel centre using PyTorch3D.

    Args:
        screen_verts: (B, V, 3) screen vertices (u, v, z).
        faces: (F, 3) int64.
        image_size: (H, W).
        bin_size, max_faces_per_bin: passed to ``rasterize_meshes`` (None = its heuristics;
            ``bin_size=0`` = naive rasterisation).
    Returns:
        face_ids: (B, H, W) int64 into ``faces``, -1 = background.
    """
    if not available():
        raise RuntimeError(f"PyTorch3D is not available: {_IMPORT_ERROR}")
    from facefit.render.rasterize import triangle_validity

    H, W = image_size
    B = screen_verts.shape[0]
    device = screen_verts.device
    faces = faces.to(device=device, dtype=torch.int64)
    ndc = to_ndc(screen_verts.float(), (H, W))
    valid, _ = triangle_validity(screen_verts[:, faces], cull_backfaces, near)  # (B, F)

    faces_list, kept_list = [], []
    dummy = torch.zeros(1, 3, dtype=torch.int64, device=device)  # degenerate: never drawn
    for b in range(B):
        kept = valid[b].nonzero().squeeze(1)
        if kept.numel() == 0:
            faces_list.append(dummy)
            kept_list.append(torch.full((1,), -1, dtype=torch.int64, device=device))
        else:
            faces_list.append(faces[kept])
            kept_list.append(kept)
    meshes = _P3DMeshes(verts=list(ndc.unbind(0)), faces=faces_list)
    pix_to_face, _zbuf, _bary, _dists = _p3d_rasterize_meshes(
        meshes,
        image_size=(H, W),
        blur_radius=0.0,
        faces_per_pixel=1,
        bin_size=bin_size,
        max_faces_per_bin=max_faces_per_bin,
        perspective_correct=True,
        clip_barycentric_coords=False,
        cull_backfaces=False,
    )
    p2f = pix_to_face[..., 0].long()  # (B, H, W) index into the packed faces
    table = torch.cat(kept_list)  # packed face index -> original face id (or -1)
    out = torch.where(p2f >= 0, table[p2f.clamp_min(0)], torch.full_like(p2f, -1))
    return out
