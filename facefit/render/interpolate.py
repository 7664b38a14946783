"""Attribute interpolation over rasterised fragments and vertex normals.

Internally vertex data is handled "structure of arrays" ((C, B*V) with contiguous rows) and
gathered with ``index_select`` (whose backward is a fast ``index_add``); this is several times
faster on CPU than (..., 3)-shaped tensors with advanced indexing.
"""
from __future__ import annotations

import torch

from facefit.errors import FacefitError
from facefit.render.rasterize import Fragments, corner_index, faces_soa

__all__ = ["interpolate", "interpolate_packed", "vertex_normals", "face_normals"]


def _corner_index(faces: torch.Tensor, B: int, V: int) -> torch.Tensor:
    """(3, B*F) int64 flat vertex indices into B*V, corner-major: [k, b*F + f]."""
    return corner_index(faces, B, V)


def _interpolate_soa(attrs_soa: torch.Tensor, faces: torch.Tensor, fragments: Fragments, V: int) -> torch.Tensor:
    """(C, B*V) or (C, V) (with ``V`` = its vertex count, shared) -> (C, N) at packed pixels."""
    faces = faces.to(device=attrs_soa.device, dtype=torch.int64)
    batched = attrs_soa.shape[1] != V
    if batched and fragments.pix_verts is not None and fragments.pix_verts.device == attrs_soa.device:
        vid = fragments.pix_verts  # (3, N), image * V + vertex
    else:
        vid = faces_soa(faces).index_select(1, fragments.pix_face)  # (3, N)
        if batched:
            vid = vid + fragments.batch_index * V
    C, N = attrs_soa.shape[0], vid.shape[1]
    # explicit C (not -1): N == 0 (nothing covered) must give (C, 0), not a reshape error
    v0, v1, v2 = attrs_soa.index_select(1, vid.reshape(-1)).view(C, 3, N).unbind(1)
    w0, w1, w2 = fragments.pix_bary.t().to(attrs_soa.dtype).unbind(0)
    return v0 * w0 + v1 * w1 + v2 * w2


def interpolate_packed(attrs: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate vertex attributes at the packed pixels of ``fragments``.

    Args:
        attrs: (B, V, C) per-image or (V, C) shared vertex attributes.
        faces: (F, 3) int64.
        fragments: from :func:`facefit.render.rasterize`.
    Returns:
        (N, C) values at the N pixels ``fragments.pix_index`` (covered and extended pixels).
        Differentiable w.r.t. ``attrs`` and, through the barycentrics, vertex positions.
    """
    if attrs.dim() == 3:
        V = attrs.shape[1]
        soa = attrs.reshape(-1, attrs.shape[-1]).t()
    elif attrs.dim() == 2:
        V = attrs.shape[0]
        soa = attrs.t()
    else:
        raise FacefitError(f"attrs must be (B, V, C) or (V, C), got {tuple(attrs.shape)}")
    if attrs.dim() == 3 and attrs.shape[0] == 1 and fragments.face_ids.shape[0] > 1:
        soa = attrs[0].t()  # one mesh's attributes shared by the batch
    return _interpolate_soa(soa.contiguous(), faces, fragments, V).t()


def interpolate(attrs: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate vertex attributes to every pixel.

    Args:
        attrs: (B, V, C) or (V, C).
        faces: (F, 3) int64.
        fragments: rasteriser output for B images of H x W.
    Returns:
        (B, H, W, C); zeros where ``fragments.face_ids == -1``. Extended silhouette pixels get
        extrapolated values. Gradients flow to ``attrs`` and to the vertex positions through
        the barycentrics, not through the triangle ids.
    """
    B, H, W = fragments.face_ids.shape
    vals = interpolate_packed(attrs, faces, fragments)
    out = vals.new_zeros(B * H * W, vals.shape[-1]).index_put((fragments.pix_index,), vals)
    return out.view(B, H, W, -1)


def _face_normals_soa(soa: torch.Tensor, faces: torch.Tensor, B: int, V: int, vid=None) -> torch.Tensor:
    """(3, B*V) vertices -> (3, B*F) unnormalised face normals (v1 - v0) x (v2 - v0).

    ``vid``: optional (3, K) corner indices (a subset of :func:`_corner_index`'s columns);
    then the K face normals of those faces."""
    if vid is None:
        vid = _corner_index(faces, B, V)
    p0, p1, p2 = soa.index_select(1, vid.reshape(-1)).view(3, 3, -1).unbind(1)  # (3, BF) each
    ax, ay, az = (p1 - p0).unbind(0)
    bx, by, bz = (p2 - p0).unbind(0)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], 0)


def _faces_around(faces: torch.Tensor, B: int, V: int, face_ids: torch.Tensor) -> torch.Tensor:
    """Faces whose normals the vertex normals of the drawn triangles need.

    Args:
        faces: (F, 3); face_ids: (N,) int64 indices into B*F (image * F + face) of the drawn
            triangles (repeats allowed).
    Returns:
        (K,) int64 increasing indices into B*F: every face sharing a vertex with a drawn one.
    """
    F = faces.shape[0]
    vid = _corner_index(faces, B, V)  # (3, BF)
    drawn = torch.zeros(B * F, dtype=torch.bool, device=faces.device)
    drawn[face_ids] = True
    used = torch.zeros(B * V, dtype=torch.bool, device=faces.device)
    used[vid[:, drawn].reshape(-1)] = True
    u = used.take(vid)  # (3, BF)
    return (u[0] | u[1] | u[2]).nonzero().squeeze(1)


def _vertex_normals_soa(
    soa: torch.Tensor, faces: torch.Tensor, B: int, V: int, eps: float = 1e-12, subset=None
) -> torch.Tensor:
    """(3, B*V) vertices -> (3, B*V) unit area-weighted vertex normals.

    ``subset``: optional (K,) increasing indices into B*F (:func:`_faces_around`); only those
    faces are accumulated, so only the vertices all of whose faces are in the subset get their
    full normal (the same values as without a subset: same faces, same order).
    """
    vid = _corner_index(faces, B, V)  # (3, BF)
    if subset is not None:
        vid = vid.index_select(1, subset)
    fn = _face_normals_soa(soa, faces, B, V, vid)  # (3, BF) or (3, K)
    n = soa.new_zeros(3, B * V)
    for k in range(3):  # each face normal goes to its three corners
        n = n.index_add(1, vid[k], fn)
    nx, ny, nz = n.unbind(0)
    inv = torch.rsqrt((nx * nx + ny * ny + nz * nz).clamp_min(eps * eps))
    return n * inv


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted (unnormalised) face normals ``(v1 - v0) x (v2 - v0)``.

    Args:
        verts: (B, V, 3); faces: (F, 3).
    Returns:
        (B, F, 3), length = twice the triangle area; points outwards for counter-clockwise
        (seen from outside) faces.
    """
    faces = faces.to(device=verts.device, dtype=torch.int64)
    B, V, _ = verts.shape
    soa = verts.reshape(B * V, 3).t().contiguous()
    return _face_normals_soa(soa, faces, B, V).t().reshape(B, faces.shape[0], 3)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit vertex normals, area-weighted average of the incident face normals.

    Args:
        verts: (B, V, 3) or (V, 3).
        faces: (F, 3) int64.
    Returns:
        Same shape as ``verts``; differentiable. Isolated vertices get a zero normal.
    """
    squeeze = verts.dim() == 2
    if squeeze:
        verts = verts.unsqueeze(0)
    faces = faces.to(device=verts.device, dtype=torch.int64)
    B, V, _ = verts.shape
    soa = verts.reshape(B * V, 3).t().contiguous()
    n = _vertex_normals_soa(soa, faces, B, V, eps).t().reshape(B, V, 3)
    return n.squeeze(0) if squeeze else n
