"""Synthetic training faces and differentiable render -> recognition-crop pipeline.

:func:`synthetic_batch` draws random faces from the morphable model's prior (shape, colour
and optionally a little expression), renders them in random poses under two random point
lights with a random colour temperature over a random background, and cuts the recognition
network's crop (e.g. dlib's 150 px chip) from each render differentiably with
:func:`facefit.faces.alignment.align_rendered`, using the projected 68 landmark vertices.
The same :func:`render_crops` pipeline renders the *predicted* faces of real photos for the
identity and loopback losses (:mod:`facefit.training`).

Framing: the crop is tight (dlib's chip shows the inner face), so instead of framing the
whole mesh, :func:`frame_for_crop` places each head so that the crop computed from its
projected landmarks is centred in the render and spans ``crop_fill`` of its side. The
render then holds (almost) only pixels the crop uses, at about one render pixel per crop
pixel for ``render_size ~ crop_size / crop_fill``.

Holes: face-region meshes such as ICT-FaceKit's have open eyes and an open mouth (the
eyeballs and the mouth interior are separate meshes), so a plain render shows the
background through them, unlike any photo. :func:`close_holes` fills each inner boundary
loop at render time with a fan of new vertices (eyes: a white-ish ring and a dark centre;
mouth: dark), placed as fixed combinations of the loop's vertices so that they follow the
predicted shape.

Everything random is drawn from a CPU ``torch.Generator`` (``generator=``), so a seed gives
the same batch on every run and device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from facefit.faces.alignment import CROPS, align_rendered, crop_transform_from_landmarks68
from facefit.render import Camera, Lights, RenderParams, euler_to_matrix, random_render_params, render
from facefit.render.camera import world_to_camera
from facefit.render.rasterize import _topology

__all__ = [
    "SyntheticSettings",
    "HoleFill",
    "hole_fill",
    "close_holes",
    "random_backgrounds",
    "frame_for_crop",
    "render_crops",
    "sample_coefficients",
    "synthetic_batch",
]


@dataclass
class SyntheticSettings:
    """How synthetic faces (and renders of predicted faces) are made.

    Attributes:
        render_size: side of the square render in pixels.
        crop: recognition crop name (``"dlib_chip"``, ``"facenet_160"``, ``"arcface_112"``).
        crop_size: crop side in pixels (default: the crop's standard size).
        crop_fill: fraction of the render side the crop spans (see :func:`frame_for_crop`).
        fov_deg: camera field of view (degrees).
        yaw_range, pitch_range, roll_range: uniform head-pose ranges (degrees).
        temperature_range: light colour temperatures (kelvin).
        light_distance_range: distance of the point lights from the face (mm).
        expr_scale, expr_prob: synthetic expressions: each expression coefficient is drawn
            from the model's prior with ``expr_scale`` and kept with probability
            ``expr_prob`` (0 disables expressions).
        background_noise: maximum amplitude of per-pixel noise added to backgrounds.
        fill_holes: close the mesh's eye and mouth holes when rendering
            (:func:`close_holes`).
    """

    render_size: int = 160
    crop: str = "dlib_chip"
    crop_size: Optional[int] = None
    crop_fill: float = 0.8
    fov_deg: float = 15.0
    yaw_range: Tuple[float, float] = (-40.0, 40.0)
    pitch_range: Tuple[float, float] = (-20.0, 20.0)
    roll_range: Tuple[float, float] = (-10.0, 10.0)
    temperature_range: Tuple[float, float] = (2700.0, 7500.0)
    light_distance_range: Tuple[float, float] = (2000.0, 4000.0)
    expr_scale: float = 0.5
    expr_prob: float = 0.05
    background_noise: float = 0.08
    fill_holes: bool = True

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; choose one of {tuple(CROPS)}")
        if self.crop_size is None:
            self.crop_size = int(CROPS[self.crop])
        if not 0.2 <= self.crop_fill <= 2.0:
            raise ValueError(f"crop_fill must be in [0.2, 2], got {self.crop_fill}")
        if int(self.render_size) < 16:
            raise ValueError(f"render_size must be >= 16, got {self.render_size}")

    @property
    def camera(self) -> Camera:
        return Camera.from_fov(self.fov_deg, int(self.render_size))


def random_backgrounds(
    n: int,
    size: int | Sequence[int],
    generator: Optional[torch.Generator] = None,
    noise: float = 0.08,
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Random backgrounds: plain colours, smooth colour fields and blurred noise.

    Each image gets a random colour field of resolution k x k (k in {1, 2, 4, 8, 16, 32}; k=1
    is a plain colour, small k smooth gradients, large k blurred blobs) upsampled
    bilinearly, plus per-pixel noise of random amplitude up to ``noise``.

    Args:
        n: batch size; size: side S or (H, W).
        generator: CPU generator.
        noise: maximum per-pixel noise amplitude.
    Returns:
        (n, 3, H, W) in [0, 1].
    """
    dtype = dtype or torch.float32
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    levels = (1, 2, 4, 8, 16, 32)
    choice = torch.randint(len(levels), (n,), generator=generator)
    base = torch.rand(n, 3, 1, 1, generator=generator, dtype=dtype)
    contrast = torch.rand(n, 1, 1, 1, generator=generator, dtype=dtype)
    amp = noise * torch.rand(n, 1, 1, 1, generator=generator, dtype=dtype)
    out = torch.empty(n, 3, h, w, dtype=dtype)
    for li, k in enumerate(levels):
        idx = torch.nonzero(choice == li).flatten()
        field = torch.rand(len(idx), 3, k, k, generator=generator, dtype=dtype) if len(idx) else None
        if field is None:
            continue
        field = base[idx] + contrast[idx] * (field - 0.5)
        out[idx] = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)
    out = out + amp * (torch.rand(n, 3, h, w, generator=generator, dtype=dtype) - 0.5) * 2.0
    return out.clamp_(0.0, 1.0).to(device=device)


@torch.no_grad()
def frame_for_crop(
    landmark_verts: torch.Tensor,
    R: torch.Tensor,
    camera: Camera,
    crop: str = "dlib_chip",
    crop_size: Optional[int] = None,
    crop_fill: float = 0.8,
    distance: float = 850.0,
    iterations: int = 2,
) -> torch.Tensor:
    """Head translations that centre the recognition crop in the render at a set size.

    Starting with the landmarks' centroid on the optical axis at ``distance`` mm, the
    crop transform of the projected landmarks is computed; the head is then moved along
    the axis so that the crop spans ``crop_fill * min(H, W)`` render pixels and sideways so
    that the crop's centre falls on the principal point (repeated ``iterations`` times to
    absorb perspective effects). Not differentiable (like ``frame_face``).

    Args:
        landmark_verts: (B, 68, 3) model-space landmark vertices (mm).
        R: (B, 3, 3) head rotations.
        camera: the render camera.
        crop, crop_size: the recognition crop (see :mod:`facefit.faces.alignment`).
        crop_fill: fraction of the render side the crop should span.
        distance: starting distance (mm).
        iterations: refinement passes.
    Returns:
        (B, 3) translations ``t`` for :func:`facefit.render.world_to_camera` (mm).
    """
    lm = landmark_verts.detach()
    R = R.detach().to(lm)
    B = lm.shape[0]
    size = int(crop_size or CROPS[crop])
    want = crop_fill * min(camera.image_size)
    Rc = R * lm.new_tensor([1.0, -1.0, -1.0]).view(1, 3, 1)
    centre = lm.mean(1)  # (B, 3)
    t = -(Rc @ centre.unsqueeze(-1)).squeeze(-1)
    t = t + lm.new_tensor([0.0, 0.0, float(distance)])
    half = lm.new_tensor([size / 2.0, size / 2.0])
    for _ in range(max(1, iterations)):
        cam_pts = world_to_camera(lm, R, t)
        scr = camera.project(cam_pts)[..., :2]
        M = crop_transform_from_landmarks68(scr, crop, size).to(lm)  # (B, 2, 3) image -> crop
        A, b = M[:, :, :2], M[:, :, 2]
        c_img = torch.linalg.solve(A, (half - b).unsqueeze(-1)).squeeze(-1)  # crop centre (B, 2)
        side = size / torch.linalg.det(A).abs().sqrt()  # crop side in render px
        ratio = side / want
        z = cam_pts[..., 2].mean(1)  # (B,)
        # point of the crop centre at the landmarks' mean depth, in camera space
        x = (c_img[:, 0] - camera.cx) * z / camera.focal
        y = (c_img[:, 1] - camera.cy) * z / camera.focal
        t = t - torch.stack([x, y, torch.zeros_like(x)], -1)
        t[:, 2] = t[:, 2] + z * (ratio - 1.0)
    return t


# ---------------------------------------------------------------------------------------
# hole filling

#: Colours of the fill: eyes (ring, centre) and mouth (ring, centre), linear RGB albedo.
_EYE_COLORS = ((0.78, 0.74, 0.70), (0.10, 0.07, 0.06))
_MOUTH_COLORS = ((0.30, 0.10, 0.10), (0.12, 0.04, 0.04))
#: Ring vertices sit this fraction of the way from the loop's centre to its vertices.
_RING = 0.6


@dataclass
class HoleFill:
    """Precomputed closing of a mesh's inner boundary loops (see :func:`hole_fill`).

    Attributes:
        loops: list of (n_i,) int64 vertex indices, one boundary loop per hole.
        kinds: ``"eye"`` or ``"mouth"`` per loop.
        triangles: (F', 3) int64 new triangles indexing ``V + new vertex`` positions
            (per loop: n_i ring vertices then 1 centre vertex).
        colors: (K, 3) float32 albedo of the K new vertices.
    """

    loops: list
    kinds: list
    triangles: np.ndarray
    colors: np.ndarray

    @property
    def n_new(self) -> int:
        return int(self.colors.shape[0])


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a triangle mesh, longest first.

    Args:
        triangles: (F, 3) int64, consistently oriented.
    Returns:
        list of (n,) int64 vertex loops ordered along the boundary edges (each boundary
        edge a -> b is an edge of a triangle in that orientation).
    """
    tri = np.asarray(triangles, np.int64)
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    fwd = set(map(tuple, e.tolist()))
    nxt: dict[int, int] = {}
    for a, b in e.tolist():
        if (b, a) not in fwd:
            nxt.setdefault(a, b)
    loops, seen = [], set()
    for start in list(nxt):
        if start in seen:
            continue
        loop, cur = [], start
        while cur not in seen and cur in nxt:
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        if len(loop) >= 3:
            loops.append(np.asarray(loop, np.int64))
    return sorted(loops, key=len, reverse=True)


_HOLE_CACHE: dict[str, HoleFill] = {}


def hole_fill(model) -> HoleFill:
    """How to close ``model``'s eye/mouth holes (cached per model content hash).

    Every boundary loop except the longest (the outer rim of the face region) is a hole.
    A hole whose centre is closer to the mean of the mouth landmarks (48-67) than to the
    eye landmarks is a mouth; otherwise an eye (without landmarks: all eyes).

    Args:
        model: MorphableModel.
    Returns:
        :class:`HoleFill` (no loops when the mesh has no holes).
    """
    key = model.content_hash
    if key in _HOLE_CACHE:
        return _HOLE_CACHE[key]
    loops = boundary_loops(model.triangles)[1:]
    V = model.n_vertices
    mean = np.asarray(model.mean_shape, np.float64)
    mouth_c = eye_c = None
    if model.landmarks is not None:
        lms = mean[np.asarray(model.landmarks)]
        mouth_c, eye_c = lms[48:68].mean(0), lms[36:48]
    kinds, tris, cols = [], [], []
    base = V
    for loop in loops:
        c = mean[loop].mean(0)
        kind = "eye"
        if mouth_c is not None and np.linalg.norm(c - mouth_c) < np.linalg.norm(eye_c - c, axis=1).min():
            kind = "mouth"
        kinds.append(kind)
        n = len(loop)
        ring = base + np.arange(n)
        centre = base + n
        nxt = np.roll(np.arange(n), -1)
        # boundary edge a -> b is used a -> b by the mesh, so new faces use b -> a
        a, b = loop, loop[nxt]
        ra, rb = ring, ring[nxt]
        tris += [np.stack([b, a, ra], 1), np.stack([b, ra, rb], 1), np.stack([rb, ra, np.full(n, centre)], 1)]
        ring_col, centre_col = _EYE_COLORS if kind == "eye" else _MOUTH_COLORS
        cols += [np.tile(np.asarray(ring_col, np.float32), (n, 1)), np.asarray([centre_col], np.float32)]
        base += n + 1
    fill = HoleFill(
        loops=loops,
        kinds=kinds,
        triangles=np.concatenate(tris).astype(np.int64) if tris else np.zeros((0, 3), np.int64),
        colors=np.concatenate(cols).astype(np.float32) if cols else np.zeros((0, 3), np.float32),
    )
    _HOLE_CACHE[key] = fill
    return fill


def close_holes(
    model, verts: torch.Tensor, colors: torch.Tensor, faces: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append fill vertices/triangles that close the mesh's eye and mouth holes.

    Per hole: a ring of vertices ``centre + 0.6 (v_i - centre)`` and a centre vertex (the
    mean of the loop), so the fill follows the (differentiable) shape.

    Args:
        model: MorphableModel; verts: (B, V, 3); colors: (B, V, 3).
        faces: (F, 3) the model's triangles on the verts' device (default: fetched).
    Returns:
        ``(verts (B, V+K, 3), colors (B, V+K, 3), faces (F+F', 3))``; the first V vertices
        are unchanged, so landmark indices stay valid.
    """
    dev = verts.device
    if faces is None:
        faces = model.torch_triangles(dev)
    fill = hole_fill(model)
    if not fill.loops:
        return verts, colors, faces
    parts = []
    for loop in fill.loops:
        idx = torch.as_tensor(loop, device=dev)
        ring = verts.index_select(1, idx)
        centre = ring.mean(1, keepdim=True)
        parts += [centre + _RING * (ring - centre), centre]
    new_v = torch.cat([verts] + parts, 1)
    fc = torch.as_tensor(fill.colors, device=dev, dtype=colors.dtype).unsqueeze(0).expand(verts.shape[0], -1, -1)
    new_c = torch.cat([colors, fc], 1)
    # the same closed topology every call (one tensor object per faces tensor, so that the
    # renderer's per-topology index caches are reused)
    new_f = _topology(faces, ("closed", id(fill)), lambda: torch.cat([faces, torch.as_tensor(fill.triangles, device=dev)], 0))
    return new_v, new_c, new_f


def _shift_lights(lights: Lights, centre: torch.Tensor) -> Lights:
    """Lights sampled around the origin moved to be around ``centre`` (B, 3)."""
    return Lights(lights.positions + centre.unsqueeze(1).to(lights.positions), lights.intensities, lights.ambient)


def render_crops(
    model,
    verts: torch.Tensor,
    colors: torch.Tensor,
    params: RenderParams,
    settings: SyntheticSettings,
    background: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Render faces and cut their recognition crops, differentiably.

    Args:
        model: the :class:`~facefit.morphable.MorphableModel` (topology, landmarks).
        verts: (B, V, 3) model-space vertices (mm); colors: (B, V, 3) albedo in [0, 1].
        params: :class:`~facefit.render.RenderParams` for B images whose lights were sampled
            around the origin (``light_target=(0, 0, 0)``); they are moved to the face.
        settings: render size, crop, framing.
        background: (B, 3, H, W) backgrounds or None (black).
    Returns:
        dict with ``crops`` (B, 3, S, S), ``images`` (B, 3, H, W) and ``landmarks``
        (B, 68, 2) projected landmark positions in the render; gradients flow from
        ``crops`` to ``verts`` and ``colors``.
    """
    dev, dt = verts.device, verts.dtype
    cam = settings.camera
    R = euler_to_matrix(params.yaw, params.pitch, params.roll).to(device=dev, dtype=dt)
    lm_verts = model.landmark_positions(verts.detach())
    t = frame_for_crop(lm_verts, R, cam, settings.crop, settings.crop_size, settings.crop_fill)
    centre = world_to_camera(lm_verts.mean(1, keepdim=True), R, t)[:, 0]  # (B, 3)
    p = params.to(device=dev, dtype=dt)
    faces = model.torch_triangles(dev)
    if settings.fill_holes:
        verts, colors, faces = close_holes(model, verts, colors, faces)
    out = render(
        verts,
        faces,
        colors,
        cam,
        R=R,
        t=t,
        lights=_shift_lights(p.lights, centre),
        light_color=p.light_color,
        background=background,
        shininess=p.shininess,
        specular=p.specular,
    )
    lm2d = model.landmark_positions(out.screen_verts)[..., :2]
    crops = align_rendered(out.images, lm2d, crop=settings.crop, size=settings.crop_size)
    return {"crops": crops, "images": out.images, "landmarks": lm2d}


def random_params(n: int, settings: SyntheticSettings, generator: Optional[torch.Generator]) -> RenderParams:
    """Random poses, lights (around the origin), light colours and specularity.

    Args:
        n: batch size; settings: the ranges; generator: CPU generator.
    Returns:
        :class:`~facefit.render.RenderParams` on the CPU (lights to be moved to the face,
        which :func:`render_crops` does).
    """
    return random_render_params(
        n,
        generator,
        yaw_range=tuple(settings.yaw_range),
        pitch_range=tuple(settings.pitch_range),
        roll_range=tuple(settings.roll_range),
        temperature_range=tuple(settings.temperature_range),
        light_target=(0.0, 0.0, 0.0),
        light_distance_range=tuple(settings.light_distance_range),
    )


def sample_coefficients(
    model, n: int, generator: Optional[torch.Generator], expr_scale: float = 0.5, expr_prob: float = 0.1
) -> dict[str, torch.Tensor]:
    """Random coefficients from the prior (on the CPU).

    Args:
        model: MorphableModel; n: batch size; generator: CPU generator.
        expr_scale, expr_prob: expression coefficients are ``model.sample(expr_scale=...)``
            values, each kept with probability ``expr_prob`` (sparse, small expressions).
    Returns:
        dict with ``shape_coeffs`` (n, Ks), ``color_coeffs`` (n, Kc) and, when the model has
        expressions and ``expr_prob > 0``, ``expr_coeffs`` (n, Ke).
    """
    out = model.sample(n, generator, shape=True, color=True, expr=False)
    if model.n_expr and expr_prob > 0 and expr_scale > 0:
        e = model.sample(n, generator, shape=False, color=False, expr=True, expr_scale=expr_scale)["expr_coeffs"]
        keep = torch.rand(e.shape, generator=generator) < expr_prob
        out["expr_coeffs"] = e * keep
    return out


def synthetic_batch(
    model,
    n: int,
    generator: Optional[torch.Generator] = None,
    settings: Optional[SyntheticSettings] = None,
    device=None,
) -> dict[str, torch.Tensor]:
    """A batch of random synthetic faces, rendered and cropped for the encoder.

    Args:
        model: MorphableModel.
        n: batch size.
        generator: CPU ``torch.Generator`` (same seed -> same batch).
        settings: :class:`SyntheticSettings` (default settings if None).
        device: where to render (default CPU).
    Returns:
        dict with ``crops`` (n, 3, S, S) in [0, 1], ``images`` (n, 3, H, W) renders,
        ``shape_coeffs`` (n, Ks), ``color_coeffs`` (n, Kc) (the true coefficients) and
        ``expr_coeffs`` (n, Ke) when expressions are used; all on ``device``.
    """
    settings = settings or SyntheticSettings()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    coeffs = sample_coefficients(model, n, generator, settings.expr_scale, settings.expr_prob)
    params = random_params(n, settings, generator)
    bg = random_backgrounds(n, settings.render_size, generator, settings.background_noise, device=dev)
    coeffs = {k: v.to(dev) for k, v in coeffs.items()}
    verts, colors = model.decode(
        coeffs["shape_coeffs"], coeffs["color_coeffs"], coeffs.get("expr_coeffs"), clamp_colors=True
    )
    out = render_crops(model, verts, colors, params, settings, background=bg)
    out.update(coeffs)
    return out
