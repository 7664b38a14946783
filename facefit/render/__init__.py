"""Differentiable deferred renderer for faces (pure PyTorch; optional PyTorch3D visibility).

Primitives (each a function plus, where useful, a thin ``nn.Module``):

* camera: :func:`euler_to_matrix`, :class:`Camera`, :func:`world_to_camera`, :func:`project`,
  :func:`sample_poses`, :func:`frame_face`
* rasterisation: :func:`rasterize` -> :class:`Fragments` (:class:`Rasterizer`)
* interpolation: :func:`interpolate`, :func:`vertex_normals`
* shading: :class:`Lights`, :func:`sample_lights`, :func:`color_temperature_to_rgb`,
  :func:`phong_shade`
* high level: :func:`render` / :class:`FaceRenderer`, :func:`random_render_params`

Conventions (units, axes, pixel centres) are those of ``docs/conventions.md``.
"""
from facefit.render.camera import (
    Camera,
    camera_rotation,
    euler_to_matrix,
    frame_face,
    project,
    sample_poses,
    world_to_camera,
)
from facefit.render.interpolate import face_normals, interpolate, interpolate_packed, vertex_normals
from facefit.render.rasterize import Fragments, Rasterizer, rasterize
from facefit.render.renderer import FaceRenderer, RenderOutput, RenderParams, random_render_params, render
from facefit.render.shading import (
    Lights,
    color_temperature_to_rgb,
    frontal_lights,
    phong_shade,
    sample_light_colors,
    sample_lights,
)

__all__ = [
    "Camera",
    "camera_rotation",
    "euler_to_matrix",
    "frame_face",
    "project",
    "sample_poses",
    "world_to_camera",
    "Fragments",
    "Rasterizer",
    "rasterize",
    "interpolate",
    "interpolate_packed",
    "vertex_normals",
    "face_normals",
    "Lights",
    "sample_lights",
    "frontal_lights",
    "color_temperature_to_rgb",
    "sample_light_colors",
    "phong_shade",
    "render",
    "FaceRenderer",
    "RenderOutput",
    "RenderParams",
    "random_render_params",
]
