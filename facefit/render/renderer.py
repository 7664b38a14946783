"""High-level differentiable face renderer: pose -> project -> rasterise -> shade -> composite.

Deferred pipeline: the rasteriser gives, per pixel, a triangle and perspective-correct
barycentrics; camera-space positions, vertex normals and vertex colours are interpolated only
at the pixels that have a triangle (packed), Phong-shaded there and composited over the
background. Silhouette pixels just outside the mesh (``extend_outside``) get a soft alpha
``clamp(1 - dist / soft_edge, 0, 1)`` so the silhouette receives gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from facefit.errors import FacefitError
from facefit.render.camera import Camera, euler_to_matrix, frame_face, sample_poses, world_to_camera
from facefit.render.interpolate import _faces_around, _interpolate_soa, _vertex_normals_soa
from facefit.render.rasterize import Fragments, rasterize
from facefit.render.shading import (
    Lights,
    _phong_fast,
    frontal_lights,
    sample_light_colors,
    sample_lights,
)

__all__ = ["RenderOutput", "RenderParams", "render", "random_render_params", "FaceRenderer"]


@dataclass
class RenderOutput:
    """Result of :func:`render`.

    Attributes:
        images: (B, 3, H, W) RGB in [0, 1], composited over the background.
        alpha: (B, 1, H, W) soft coverage in [0, 1] (1 inside, soft on extended silhouette
            pixels, 0 elsewhere); differentiable.
        mask: (B, 1, H, W) bool, pixel centres covered by the mesh.
        fragments: the rasteriser output.
        screen_verts: (B, V, 3) projected vertices (u, v, z) (e.g. to project landmarks).
        verts_cam: (B, V, 3) camera-space vertices (mm).
    """

    images: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    fragments: Fragments
    screen_verts: torch.Tensor
    verts_cam: torch.Tensor


@dataclass
class RenderParams:
    """Random rendering conditions for synthetic training (see :func:`random_render_params`).

    Attributes:
        yaw, pitch, roll: (B,) degrees.
        lights: :class:`Lights` (camera space).
        light_color: (B, 3) linear RGB.
        kelvin: (B,) colour temperatures.
        shininess: (B,) Phong exponents.
        specular: (B,) specular strengths c.
    """

    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor
    lights: Lights
    light_color: torch.Tensor
    kelvin: torch.Tensor
    shininess: torch.Tensor
    specular: torch.Tensor

    @property
    def R(self) -> torch.Tensor:
        """(B, 3, 3) head rotations."""
        return euler_to_matrix(self.yaw, self.pitch, self.roll)

    def to(self, *args, **kwargs) -> "RenderParams":
        return RenderParams(
            *(x.to(*args, **kwargs) for x in (self.yaw, self.pitch, self.roll)),
            self.lights.to(*args, **kwargs),
            *(x.to(*args, **kwargs) for x in (self.light_color, self.kelvin, self.shininess, self.specular)),
        )


def random_render_params(
    n: int,
    generator: Optional[torch.Generator] = None,
    yaw_range: Tuple[float, float] = (-45.0, 45.0),
    pitch_range: Tuple[float, float] = (-20.0, 20.0),
    roll_range: Tuple[float, float] = (-15.0, 15.0),
    temperature_range: Tuple[float, float] = (2700.0, 7500.0),
    color_jitter: float = 0.03,
    num_lights: int = 2,
    light_target: Union[Sequence[float], torch.Tensor] = (0.0, 0.0, 850.0),
    light_distance_range: Tuple[float, float] = (2000.0, 4000.0),
    shininess_range: Tuple[float, float] = (5.0, 40.0),
    specular_range: Tuple[float, float] = (0.0, 0.3),
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> RenderParams:
    """Random poses, lights, light colours and specularity for synthetic renders.

    Args:
        n: batch size.
        generator: CPU ``torch.Generator`` (same seed -> same parameters).
        light_target: (3,) or (n, 3) face centre in camera space (e.g. ``t`` from
            :func:`frame_face`); lights are placed 2-4 m from it.
    Returns:
        :class:`RenderParams` on ``device``.
    """
    dtype = dtype or torch.get_default_dtype()
    yaw, pitch, roll = sample_poses(n, yaw_range, pitch_range, roll_range, generator=generator, dtype=dtype)
    tgt = light_target.detach().cpu() if isinstance(light_target, torch.Tensor) else light_target
    lights = sample_lights(
        n, generator, num_lights=num_lights, target=tgt, distance_range=light_distance_range, dtype=dtype
    )
    color, kelvin = sample_light_colors(n, generator, temperature_range, color_jitter, dtype=dtype)

    def uni(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=dtype)

    shin = uni(*shininess_range)
    spec = uni(*specular_range)
    return RenderParams(yaw, pitch, roll, lights, color, kelvin, shin, spec).to(device=device)


def _background(background, B: int, H: int, W: int, ref: torch.Tensor) -> torch.Tensor:
    """-> (B, 3, H, W) background (contiguous, values clamped to [0, 1])."""
    if background is None:
        return ref.new_zeros(B, 3, H, W)
    bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device)
    if bg.dim() == 1 and bg.shape[0] == 3:
        out = bg.view(1, 3, 1, 1).expand(B, 3, H, W)
    elif bg.dim() == 2 and bg.shape == (B, 3):
        out = bg.view(B, 3, 1, 1).expand(B, 3, H, W)
    elif bg.dim() == 4 and bg.shape[1] == 3 and bg.shape[2:] == (H, W) and bg.shape[0] in (1, B):
        out = bg.expand(B, 3, H, W)
    else:
        raise FacefitError(
            f"background must be (3,), ({B}, 3) or ({B}, 3, {H}, {W}), got {tuple(bg.shape)}"
        )
    return out.clamp(0.0, 1.0).contiguous()


def _pixel_rays(frags: Fragments, camera: Camera, bidx: torch.Tensor, dt, dev) -> torch.Tensor:
    """(3, N) camera-space rays ((u - cx) / f, (v - cy) / f, 1) through the packed pixels."""
    H, W = frags.image_size
    rem = frags.pix_index - bidx * (H * W)
    row = torch.div(rem, W, rounding_mode="floor")
    col = rem - row * W

    def per_pixel(a):
        a = torch.as_tensor(a, dtype=dt, device=dev).reshape(-1)
        return a.index_select(0, bidx) if a.numel() > 1 else a.reshape(())

    f, cx, cy = per_pixel(camera.focal), per_pixel(camera.cx), per_pixel(camera.cy)
    x = (col.to(dt) + 0.5 - cx) / f
    y = (row.to(dt) + 0.5 - cy) / f
    return torch.stack([x, y, torch.ones_like(x)], 0)


def _per_pixel_rows(x: torch.Tensor, bidx: torch.Tensor) -> torch.Tensor:
    """(B, K) per-image values -> (K, N) per-pixel rows (contiguous)."""
    return x.contiguous().index_select(0, bidx).t().contiguous()


def render(
    verts: torch.Tensor,
    faces: torch.Tensor,
    colors: torch.Tensor,
    camera: Camera,
    R: Optional[torch.Tensor] = None,
    pose: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    t: Optional[torch.Tensor] = None,
    lights: Optional[Lights] = None,
    light_color: Optional[torch.Tensor] = None,
    background=None,
    shininess: Union[float, torch.Tensor] = 20.0,
    specular: Union[float, torch.Tensor] = 0.2,
    cull_backfaces: bool = True,
    extend_outside: bool = True,
    soft_edge: float = 1.0,
    backend: str = "auto",
) -> RenderOutput:
    """Render shaded, coloured meshes.

    Args:
        verts: (B, V, 3) model-space vertices in mm.
        faces: (F, 3) int64, counter-clockwise from outside.
        colors: (B, V, 3) vertex albedo in [0, 1] (or (V, 3) shared).
        camera: :class:`Camera` (image size, focal, principal point).
        R: (B, 3, 3) head rotation (the frontal flip is added), or
        pose: (yaw, pitch, roll) tensors (B,) in degrees; neither = frontal.
        t: (B, 3) translation in mm; None = :func:`frame_face` (face fills 80 % of the image).
        lights: :class:`Lights` in camera space; None = fixed frontal studio lighting around
            the face centre.
        light_color: (B, 3) linear RGB (default white).
        background: None (black), (3,), (B, 3) colour or (B, 3, H, W) image.
        shininess, specular: float or (B,) Phong exponent and specular strength c.
        cull_backfaces, extend_outside, backend: see :func:`facefit.render.rasterize`.
        soft_edge: width (px) of the soft alpha ramp on extended silhouette pixels.
    Returns:
        :class:`RenderOutput`.
    """
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise FacefitError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    B, V, _ = verts.shape
    H, W = camera.image_size
    if R is None:
        if pose is not None:
            R = euler_to_matrix(*pose).to(device=verts.device, dtype=verts.dtype)
            if R.shape[0] == 1 and B > 1:
                R = R.expand(B, 3, 3)
        else:
            R = torch.eye(3, dtype=verts.dtype, device=verts.device).expand(B, 3, 3)
    if t is None:
        _, t = frame_face(verts.detach(), None, camera=camera, R=R.detach())
    verts_cam = world_to_camera(verts, R, t)
    screen = camera.project(verts_cam)
    frags = rasterize(
        screen, faces, (H, W), cull_backfaces=cull_backfaces, backend=backend, extend_outside=extend_outside
    )
    faces = faces.to(device=verts.device, dtype=torch.int64)
    dt, dev = verts.dtype, verts.device

    # G-buffer, structure of arrays: (6, B*V) = normals, albedo. Vertex normals only from
    # the faces around the drawn triangles' vertices (all that the drawn pixels use).
    pos_soa = verts_cam.reshape(B * V, 3).t().contiguous()
    bidx = frags.batch_index
    subset = _faces_around(faces, B, V, bidx * faces.shape[0] + frags.pix_face)
    nrm_soa = _vertex_normals_soa(pos_soa, faces, B, V, subset=subset)
    if colors.dim() == 2:
        colors = colors.unsqueeze(0).expand(B, V, 3)
    col_soa = colors.to(dt).reshape(B * V, 3).t()
    g = _interpolate_soa(torch.cat([nrm_soa, col_soa], 0), faces, frags, V)  # (6, N)
    nrm, kd = torch.split(g, 3, 0)
    # The perspective-correct interpolated camera-space position of a pixel is its depth
    # times its ray ((u - cx) / f, (v - cy) / f, 1) (same function of the vertices, fewer
    # operations); the direction to the camera is then the (constant) reversed unit ray.
    ray = _pixel_rays(frags, camera, bidx, dt, dev)  # (3, N)
    pos = ray * frags.pix_depth
    view = ray * -torch.rsqrt((ray * ray).sum(0))

    if lights is None:
        lights = frontal_lights(B, target=verts_cam.detach().mean(1), dtype=dt, device=dev)
    if lights.batch_size != B:
        raise FacefitError(f"lights batch {lights.batch_size} does not match mesh batch {B}")
    lights = lights.to(device=dev, dtype=dt)
    if light_color is None:
        light_color = verts.new_ones(B, 3)
    L = lights.positions.shape[1]  # explicit: N may be 0 (nothing covered)

    def per_pixel(x):
        x = torch.as_tensor(x, dtype=dt, device=dev)
        return x.index_select(0, bidx) if x.dim() >= 1 else x

    shaded = _phong_fast(
        pos,
        nrm,
        kd,
        _per_pixel_rows(lights.positions.reshape(B, -1), bidx).view(L, 3, bidx.numel()),  # (L, 3, N)
        _per_pixel_rows(lights.intensities, bidx),  # (L, N)
        lights.ambient.index_select(0, bidx),
        _per_pixel_rows(light_color.to(device=dev, dtype=dt), bidx),  # (3, N)
        per_pixel(shininess),
        per_pixel(specular),
        view,
    ).clamp(0.0, 1.0)  # (3, N)

    ext = frags.extended.reshape(-1).index_select(0, frags.pix_index)
    if extend_outside:
        soft = (1.0 - frags.pix_dist / soft_edge).clamp(0.0, 1.0)
        alpha_p = torch.where(ext, soft, torch.ones_like(soft))
    else:
        alpha_p = (~ext).to(dt)
    # composite straight into the (B, 3, H, W) layout: channel c of packed pixel p lives at
    # b * 3HW + c * HW + (p - b * HW)
    HW = H * W
    bg = _background(background, B, H, W, verts).reshape(-1)
    base = frags.pix_index + bidx * (2 * HW)
    idx = (base.unsqueeze(0) + (torch.arange(3, device=dev) * HW).unsqueeze(1)).reshape(-1)  # (3N,)
    bg_p = bg.index_select(0, idx).view(3, -1)
    comp = alpha_p * shaded + (1.0 - alpha_p) * bg_p
    # _background returns a new tensor: write into it unless autograd needs it unchanged
    put = bg.index_put if bg.requires_grad else bg.index_put_
    images = put((idx,), comp.reshape(-1)).view(B, 3, H, W)
    alpha = verts.new_zeros(B * HW).index_put((frags.pix_index,), alpha_p).view(B, 1, H, W)
    return RenderOutput(
        images=images,
        alpha=alpha,
        mask=frags.mask.unsqueeze(1),
        fragments=frags,
        screen_verts=screen,
        verts_cam=verts_cam,
    )


class FaceRenderer(nn.Module):
    """Module wrapper of :func:`render` holding the topology, camera and settings.

    Args:
        faces: (F, 3) int64 (buffer); camera: :class:`Camera`.
    forward(verts (B, V, 3), colors (B, V, 3), R=None, pose=None, t=None, lights=None,
    light_color=None, background=None, shininess=None, specular=None) -> :class:`RenderOutput`.
    """

    def __init__(
        self,
        faces: torch.Tensor,
        camera: Camera,
        cull_backfaces: bool = True,
        extend_outside: bool = True,
        soft_edge: float = 1.0,
        shininess: float = 20.0,
        specular: float = 0.2,
        backend: str = "auto",
    ):
        super().__init__()
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.int64), persistent=False)
        self.camera = camera
        self.cull_backfaces = cull_backfaces
        self.extend_outside = extend_outside
        self.soft_edge = soft_edge
        self.shininess = shininess
        self.specular = specular
        self.backend = backend

    def forward(
        self,
        verts: torch.Tensor,
        colors: torch.Tensor,
        R: Optional[torch.Tensor] = None,
        pose=None,
        t: Optional[torch.Tensor] = None,
        lights: Optional[Lights] = None,
        light_color: Optional[torch.Tensor] = None,
        background=None,
        shininess=None,
        specular=None,
    ) -> RenderOutput:
        return render(
            verts,
            self.faces,
            colors,
            self.camera,
            R=R,
            pose=pose,
            t=t,
            lights=lights,
            light_color=light_color,
            background=background,
            shininess=self.shininess if shininess is None else shininess,
            specular=self.specular if specular is None else specular,
            cull_backfaces=self.cull_backfaces,
            extend_outside=self.extend_outside,
            soft_edge=self.soft_edge,
            backend=self.backend,
        )
