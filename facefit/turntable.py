"""Stills and turntables of faces: the Python API behind ``facefit render``.

A turntable rotates the head in yaw in front of a fixed camera and fixed lights and writes
an animated GIF, an MP4 and a PNG contact sheet of the views at -90, -45, 0, 45 and 90
degrees.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import __version__
from .errors import FacefitError
from .mesh_io import FaceMesh, load_mesh
from .media import turntable_paths as _turntable_paths  # (torch-free: the batch job imports it from media)
from .media import (
    CONTACT_SHEET_YAWS,
    turntable_angles,
    write_contact_sheet,
    write_gif,
    write_mp4,
    write_png,
    yaw_label,
)

LIGHTINGS = ("studio", "random")
BACKGROUND = (0.93, 0.93, 0.93)


def mesh_from_coeffs(model, shape_coeffs, color_coeffs=None, expr_coeffs=None, meta: Optional[dict] = None) -> FaceMesh:
    """Decode one face of ``model`` into a :class:`FaceMesh`.

    Args:
        model: :class:`facefit.morphable.MorphableModel`.
        shape_coeffs: (Ks,) array/tensor; color_coeffs: (Kc,) or None; expr_coeffs: (Ke,) or None.
        meta: extra provenance to record.
    Returns:
        FaceMesh in mm with per-vertex colours, the model's UVs and provenance meta.
    """
    def t(x):
        return None if x is None else torch.as_tensor(np.asarray(x, np.float32)).view(1, -1)

    with torch.no_grad():
        verts, colors = model.decode(t(shape_coeffs), t(color_coeffs), t(expr_coeffs))
    info = {
        "model": model.name,
        "model_hash": model.content_hash,
        "facefit_version": __version__,
        "units": "mm",
    }
    info.update(meta or {})
    return FaceMesh(
        vertices=verts[0].numpy(),
        triangles=np.asarray(model.triangles),
        colors=colors[0].numpy(),
        uv=model.uv,
        uv_triangles=model.uv_triangles,
        meta=info,
    )


def random_face_mesh(model=None, seed: int = 0) -> FaceMesh:
    """A random face (shape and colour from the prior) of ``model`` (default model if None)."""
    from .model_io import resolve_model

    if model is None or isinstance(model, (str, os.PathLike)):
        model = resolve_model(model)
    g = torch.Generator().manual_seed(int(seed))
    c = model.sample(1, generator=g)
    return mesh_from_coeffs(
        model, c["shape_coeffs"][0], c.get("color_coeffs", [None])[0] if model.n_color else None,
        meta={"source": f"random face, seed {seed}"},
    )


def load_renderable(path: str | os.PathLike, model=None) -> FaceMesh:
    """Load a mesh file or a coefficient file (decoded with its morphable model).

    Args:
        path: ``.obj``/``.ply``/``.glb`` mesh, or ``.npz``/``.json`` coefficients.
        model: model name/path for coefficient files (default: the default model); its
            hash must match the one recorded in the file.
    """
    from .coeffs_io import check_coeffs_fit_model, load_coeffs
    from .model_io import resolve_model

    path = Path(path)
    if not path.exists():
        raise FacefitError(f"{path}: no such file")
    if path.suffix.lower() in (".npz", ".json"):
        rec = load_coeffs(path)
        m = resolve_model(model)
        want = rec.get("model_hash")
        if want and want != m.content_hash:
            raise FacefitError(
                f"{path.name} was made with model '{rec.get('model_name', '?')}' ({want}) but the model in use is "
                f"'{m.name}' ({m.content_hash}); pass --model"
            )
        check_coeffs_fit_model(rec, m, path)
        return mesh_from_coeffs(m, rec["shape_coeffs"], rec.get("color_coeffs"), rec.get("expr_coeffs"),
                                meta={"source": path.name})
    return load_mesh(path)


def render_views(
    mesh: FaceMesh,
    yaws: Sequence[float],
    size: int = 512,
    lighting: str = "studio",
    seed: int = 0,
    pitch: float = 0.0,
    batch: int = 8,
    background=BACKGROUND,
    model=None,
) -> list[np.ndarray]:
    """Render a mesh at several yaw angles with a fixed camera and lights.

    Args:
        mesh: :class:`FaceMesh` (mm). Meshes without colours render in light grey.
        yaws: angles in degrees.
        size: output image side in pixels.
        lighting: ``"studio"`` (fixed key + fill light) or ``"random"`` (two random point
            lights and a random colour temperature, from ``seed``, the same for all views).
        model: the mesh's morphable model, if at hand (used to close its eye/mouth holes).
    Returns:
        list of (size, size, 3) uint8 RGB images.
    """
    from .render import Camera, frame_face, frontal_lights, random_render_params, render

    if lighting not in LIGHTINGS:
        raise FacefitError(f"unknown lighting '{lighting}' (use {' or '.join(LIGHTINGS)})")
    verts = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    faces = torch.tensor(np.asarray(mesh.triangles), dtype=torch.int64)
    if len(faces) == 0:
        raise FacefitError("the mesh has no triangles to render")
    if mesh.texture is not None:
        colors = torch.as_tensor(texture_vertex_colors(mesh))
    elif mesh.colors is not None:
        colors = torch.tensor(np.asarray(mesh.colors), dtype=torch.float32)
    else:
        colors = torch.full_like(verts, 0.75)
    verts, colors, faces = _close_model_holes(mesh, verts, colors, faces, model)
    # Frame once, frontally, with the head's bounding box centre on the axis so that it
    # turns in place; a fill of 0.72 leaves room for the profile views.
    camera = Camera.from_fov(15.0, int(size))
    _, t0 = frame_face(verts[None], None, camera=camera, fill=0.72)
    centre = (verts.amax(0) + verts.amin(0)) / 2
    out = []
    yaws = [float(y) for y in yaws]
    for i in range(0, len(yaws), batch):
        ys = torch.tensor(yaws[i:i + batch])
        n = len(ys)
        pose = (ys, torch.full((n,), float(pitch)), torch.zeros(n))
        v = (verts - centre).expand(n, -1, -1)
        t = torch.tensor([0.0, 0.0, float(t0[0, 2])]).expand(n, 3)
        if lighting == "studio":
            lights = frontal_lights(n, target=t[0])
            light_color = None
        else:
            g = torch.Generator().manual_seed(int(seed))
            p = random_render_params(1, generator=g, light_target=t[0])
            lights = type(p.lights)(p.lights.positions.expand(n, -1, -1), p.lights.intensities.expand(n, -1),
                                    p.lights.ambient.expand(n))
            light_color = p.light_color.expand(n, 3)
        with torch.no_grad():
            r = render(v, faces, colors, camera, pose=pose, t=t, lights=lights, light_color=light_color,
                       background=torch.tensor(background))
        imgs = (r.images.permute(0, 2, 3, 1).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        out.extend(list(imgs))
    return out


def _close_model_holes(mesh: FaceMesh, verts, colors, faces, model=None):
    """Close the eye/mouth holes of a mesh of ``model`` (default: the default model) for
    display; the saved mesh keeps them. Meshes of other models are returned unchanged."""
    from .synthetic import close_holes

    if not mesh.meta.get("model_hash"):
        return verts, colors, faces  # not a facefit model mesh
    if model is None:
        try:
            from .model_io import resolve_model

            model = resolve_model(None)
        except Exception:  # no model at hand: render as is
            return verts, colors, faces
    if mesh.meta.get("model_hash") != model.content_hash or mesh.num_vertices != model.n_vertices:
        return verts, colors, faces
    v, c, f = close_holes(model, verts[None], colors[None], faces)
    return v[0], c[0], f


def texture_vertex_colors(mesh: FaceMesh) -> np.ndarray:
    """Per-vertex colours sampled from a textured mesh's texture (the renderer shades
    vertex colours; a vertex on a UV seam averages its corners).

    Returns:
        (V, 3) float32 in [0, 1].
    """
    tex = np.asarray(mesh.texture, np.float32) / 255.0
    h, w = tex.shape[:2]
    uv = np.asarray(mesh.uv, np.float64)
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1).round().astype(int)
    y = np.clip((1 - uv[:, 1]) * h - 0.5, 0, h - 1).round().astype(int)
    per_uv = tex[y, x]  # (T, 3)
    acc = np.zeros((mesh.num_vertices, 3))
    cnt = np.zeros(mesh.num_vertices)
    np.add.at(acc, mesh.triangles.ravel(), per_uv[mesh.uv_triangles.ravel()])
    np.add.at(cnt, mesh.triangles.ravel(), 1)
    out = acc / np.maximum(cnt, 1)[:, None]
    if mesh.colors is not None:
        out[cnt == 0] = np.asarray(mesh.colors)[cnt == 0]
    return out.astype(np.float32)


def write_turntable(
    mesh: FaceMesh,
    out: str | os.PathLike,
    frames: int = 36,
    size: int = 512,
    lighting: str = "studio",
    seed: int = 0,
    fps: float = 15.0,
    model=None,
) -> list[Path]:
    """Write ``<out>.gif``, ``<out>.mp4`` and ``<out>_views.png`` (contact sheet).

    Args:
        mesh: the face.
        out: path prefix (a ``.gif``/``.mp4``/``.png`` suffix is dropped).
        frames: number of turntable frames (yaw sweeps -90..90 and back).
        size: image side in pixels.
    Returns:
        The three paths written.
    """
    gif, mp4, sheet = _turntable_paths(Path(out))
    gif.parent.mkdir(parents=True, exist_ok=True) if not gif.parent.exists() else None
    angles = turntable_angles(int(frames), 90.0)
    views = render_views(mesh, list(angles) + list(CONTACT_SHEET_YAWS), size=size, lighting=lighting, seed=seed,
                         model=model)
    anim, stills = views[: len(angles)], views[len(angles):]
    write_gif(anim, gif, fps=fps)
    write_mp4(anim, mp4, fps=fps)
    write_contact_sheet(stills, [yaw_label(y) for y in CONTACT_SHEET_YAWS], sheet, ncols=len(stills))
    return [gif, mp4, sheet]


def write_still(mesh: FaceMesh, out: str | os.PathLike, size: int = 512, yaw: float = 0.0,
                lighting: str = "studio", seed: int = 0) -> Path:
    """Render one view to a PNG."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise FacefitError(f"a still is written as PNG; got '{out.suffix or out.name}'")
    img = render_views(mesh, [yaw], size=size, lighting=lighting, seed=seed)[0]
    return write_png(img, out)
