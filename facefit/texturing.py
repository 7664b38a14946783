"""``--texture photo``: project the photo onto the reconstructed mesh as a UV texture.

Beyond the paper: starting from the regressed neutral shape, fit pose and expression to the
photo's 68 landmarks (the paper's appendix A.1, :mod:`facefit.fitting`), find which surface
points the camera sees (z-buffer + view angle), and write a UV texture whose visible texels
come from the photo and whose hidden texels keep the model's predicted colour. The mesh
stays neutral (the expression is only used to place the photo correctly).
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import FacefitError
from .mesh_io import FaceMesh

TEXTURE_SIZE = 1024


def _srgb_bilinear(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample (3, H, W) image at (N, 2) pixel positions (continuous coords) -> (N, 3)."""
    H, W = image.shape[-2:]
    gx = uv[:, 0] / W * 2 - 1
    gy = uv[:, 1] / H * 2 - 1
    grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(image[None], grid, mode="bilinear", align_corners=False,
                                          padding_mode="border")
    return out[0, :, 0].T


def texture_from_photo(model, recon, image: np.ndarray, size: int = TEXTURE_SIZE, fit_steps: int = 150) -> FaceMesh:
    """A copy of ``recon.mesh`` with a UV texture taken from ``image``.

    Args:
        model: the :class:`~facefit.morphable.MorphableModel` (needs UVs and landmarks).
        recon: a :class:`~facefit.reconstruction.Reconstruction` with ``landmarks68``.
        image: (H, W, 3) uint8 RGB photo the face was detected in.
        size: texture side in pixels.
        fit_steps: optimisation steps of the landmark fit.
    Returns:
        FaceMesh with ``uv``, ``uv_triangles`` and ``texture``; ``meta['texture']`` says how
        many texels came from the photo.
    """
    from .albedo_build import vertex_visibility
    from .fitting import fit_landmarks, project_fit
    from .render import rasterize

    if model.uv is None or model.uv_triangles is None:
        raise FacefitError(f"model '{model.name}' has no UV coordinates: --texture photo needs them")
    if recon.landmarks68 is None:
        raise FacefitError("--texture photo needs 68 landmarks (use the dlib detector)")
    H, W = image.shape[:2]
    lm = torch.as_tensor(np.asarray(recon.landmarks68, np.float32))[None]
    init = {"shape_coeffs": torch.as_tensor(recon.shape_coeffs, dtype=torch.float32)[None]}
    fit = fit_landmarks(model, lm, (H, W), fit_shape=False, fit_expression=True, init=init, steps=fit_steps)
    screen = project_fit(fit)  # (1, V, 3)
    faces = model.torch_triangles()
    verts_cam = torch.matmul(fit.verts, fit.R_cam.transpose(-1, -2)) + fit.t[:, None]
    visible, cos, _ = vertex_visibility(screen, faces, (H, W), verts_cam)
    vis_w = (visible[0].float() * cos[0].clamp(0, 1)).clamp(0, 1)  # (V,)

    # rasterise the UV layout: each texel -> triangle + barycentrics
    uv = torch.tensor(np.asarray(model.uv, np.float32))
    uv_tris = torch.tensor(np.asarray(model.uv_triangles, np.int64))
    uv_screen = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones(len(uv))], -1)[None]
    with torch.no_grad():
        frags = rasterize(uv_screen, uv_tris, (size, size), cull_backfaces=False, extend_outside=False)
    ids = frags.face_ids[0]
    covered = frags.mask[0]
    bary = frags.bary[0][covered]  # (N, 3)
    tri = ids[covered]
    corners = faces[tri]  # (N, 3) vertex ids of each texel's triangle

    def interp(attr):  # (V, C) -> (N, C)
        return (attr[corners] * bary[..., None]).sum(1)

    img = torch.as_tensor(image).permute(2, 0, 1).float() / 255.0
    photo_rgb = _srgb_bilinear(img, interp(screen[0, :, :2]))
    w = interp(vis_w[:, None])[:, 0].clamp(0, 1)
    model_rgb = interp(torch.as_tensor(recon.mesh.colors))
    rgb = w[:, None] * photo_rgb + (1 - w[:, None]) * model_rgb
    tex = torch.zeros(size, size, 3)
    tex[covered] = rgb
    # pad the charts a few texels so bilinear lookups at seams do not pick up black
    tex_np = (tex.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    import cv2

    mask = covered.numpy().astype(np.uint8)
    tex_np = cv2.inpaint(tex_np, (1 - mask) * 255, 3, cv2.INPAINT_TELEA) if mask.mean() < 0.999 else tex_np
    meta = dict(recon.mesh.meta)
    meta["texture"] = (f"photo: {float((w > 0.5).float().mean()):.0%} of texels from {recon.source}, "
                       f"rest model colour; landmark fit error {float(fit.landmark_error_px[0]):.1f} px")
    m = recon.mesh
    return FaceMesh(m.vertices, m.triangles, colors=m.colors, uv=np.asarray(model.uv),
                    uv_triangles=np.asarray(model.uv_triangles), texture=tex_np, meta=meta)
