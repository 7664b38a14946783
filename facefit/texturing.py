"""UV textures of face meshes: ``--texture photo`` and vertex colours baked into a texture.

``--texture photo`` (beyond the paper): starting from the regressed neutral shape, fit pose
and expression to the photo's 68 landmarks (the paper's appendix A.1,
:mod:`facefit.fitting`), find which surface points the camera sees (z-buffer + view angle),
and write a UV texture whose visible texels come from the photo and whose hidden texels keep
the model's predicted colour. The mesh stays neutral (the expression is only used to place
the photo correctly).

:func:`bake_vertex_colors` writes per-vertex colours into a UV texture (what
:func:`facefit.mesh_io.save_mesh` puts beside an OBJ whose mesh has UVs but no texture).

Both go through :func:`uv_raster`: which triangle and barycentrics cover each texel of a
UV layout, plus the nearest covered texel of every texel (to pad the charts so bilinear
lookups and mipmaps at the seams do not pick up the empty background). It is computed once
per (UV layout, size) and cached, so texturing many faces of one model only pays for the
gathers.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import FacefitError
from .mesh_io import FaceMesh

__all__ = ["TEXTURE_SIZE", "BAKE_SIZE", "UVRaster", "uv_raster", "fill_texture", "bake_vertex_colors",
           "texture_from_photo"]

#: side in pixels of ``--texture photo`` textures
TEXTURE_SIZE = 1024
#: side in pixels of textures baked from vertex colours (plenty for ~10k-vertex meshes)
BAKE_SIZE = 512


@dataclass(frozen=True)
class UVRaster:
    """Texel -> triangle lookup of one UV layout at one texture size (see :func:`uv_raster`).

    Texel (row i, col j) has its centre at uv = ((j + 0.5) / size, 1 - (i + 0.5) / size)
    (OBJ convention, origin bottom-left). N is the number of covered texels.

    Attributes:
        size: texture side in pixels.
        texels: (N,) int64 row-major flat indices (i * size + j) of the covered texels.
        triangles: (N,) int64 index of the triangle covering each of them.
        bary: (N, 3) float32 barycentrics of the texel centre in that triangle.
        nearest: (size * size,) int64 index into the N covered texels of each texel's
            nearest covered texel (itself when covered); empty when N == 0.
    """

    size: int
    texels: np.ndarray
    triangles: np.ndarray
    bary: np.ndarray
    nearest: np.ndarray

    @property
    def coverage(self) -> float:
        """Share of the texture's texels covered by a triangle."""
        return len(self.texels) / float(self.size * self.size)

    @property
    def mask(self) -> np.ndarray:
        """(size, size) bool, texel covered."""
        m = np.zeros(self.size * self.size, bool)
        m[self.texels] = True
        return m.reshape(self.size, self.size)


_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_CACHE_MAX = 4  # entries (rasters and bake matrices): ~10 MB each at 512 px, ~40 MB at 1024
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple, build):
    """LRU cache shared by :func:`uv_raster` and :func:`bake_vertex_colors`."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = build()  # outside the lock; a duplicate build is harmless
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return value


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _check_layout(uv, uv_triangles, size) -> tuple[np.ndarray, np.ndarray, int]:
    uv = np.asarray(uv, np.float32)
    ut = np.asarray(uv_triangles)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise FacefitError(f"uv must be (T, 2), got {uv.shape}")
    if ut.ndim != 2 or ut.shape[1] != 3 or (ut.size and ut.dtype.kind not in "iu"):
        raise FacefitError(f"uv_triangles must be integer (F, 3), got {ut.shape}")
    ut = ut.astype(np.int64, copy=False)
    if ut.size and (ut.min() < 0 or ut.max() >= len(uv)):
        raise FacefitError(f"uv_triangles indices out of range [0, {len(uv)})")
    size = int(size)
    if not 1 <= size <= 8192:
        raise FacefitError(f"texture size must be in 1..8192, got {size}")
    return uv, ut, size


def _build_raster(uv: np.ndarray, uv_triangles: np.ndarray, size: int) -> UVRaster:
    import torch
    from scipy.ndimage import distance_transform_edt

    from .render import rasterize

    if len(uv_triangles):
        uvt = torch.tensor(uv, dtype=torch.float32)
        screen = torch.stack([uvt[:, 0] * size, (1 - uvt[:, 1]) * size, torch.ones(len(uvt))], -1)[None]
        with torch.no_grad():
            frags = rasterize(screen, torch.tensor(uv_triangles), (size, size), cull_backfaces=False,
                              extend_outside=False, backend="torch")
        texels = frags.pix_index.numpy().astype(np.int64)  # B = 1: flat index into size * size
        tris = frags.pix_face.numpy().astype(np.int64)
        bary = frags.pix_bary.numpy().astype(np.float32)
    else:
        texels = tris = np.zeros(0, np.int64)
        bary = np.zeros((0, 3), np.float32)
    if len(texels) == 0:
        nearest = np.zeros(0, np.int64)
    else:
        covered = np.zeros(size * size, bool)
        covered[texels] = True
        position = np.full(size * size, -1, np.int64)
        position[texels] = np.arange(len(texels))
        # nearest covered texel of every texel (edt: nearest zero of the input)
        _, (iy, ix) = distance_transform_edt(~covered.reshape(size, size), return_indices=True)
        nearest = position[(iy * size + ix).reshape(-1)]
    for a in (texels, tris, bary, nearest):
        a.flags.writeable = False  # shared through the cache
    return UVRaster(size, texels, tris, bary, nearest)


def _disk_raster(uv: np.ndarray, uv_triangles: np.ndarray, size: int, layout: str) -> UVRaster:
    """:func:`_build_raster`, kept in facefit's cache folder (``uv/``) across processes: a
    cold ``facefit reconstruct`` then reads a few MB instead of rasterising the layout
    (about 0.3 s, more for 1024 px). A missing, unreadable or mismatched file is rebuilt."""
    from .cache import cache_dir

    try:
        path = cache_dir("uv") / f"{layout}-{size}.npz"
    except OSError:
        return _build_raster(uv, uv_triangles, size)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in ("texels", "triangles", "bary", "nearest")]
        n = len(arrays[0])
        if (arrays[1].shape == (n,) and arrays[2].shape == (n, 3) and arrays[3].shape == ((size * size,) if n else (0,))
                and (n == 0 or (arrays[0].max() < size * size and arrays[1].max() < len(uv_triangles)
                                and arrays[3].max() < n))):
            for a in arrays:
                a.flags.writeable = False
            return UVRaster(size, *arrays)
    except (OSError, KeyError, ValueError, EOFError):
        pass
    raster = _build_raster(uv, uv_triangles, size)
    try:
        from .atomic import atomic_write

        with atomic_write(path, "wb") as f:
            np.savez(f, texels=raster.texels, triangles=raster.triangles, bary=raster.bary, nearest=raster.nearest)
    except (OSError, FacefitError):
        pass  # the cache is an optimisation only
    return raster


def uv_raster(uv, uv_triangles, size: int) -> UVRaster:
    """Which triangle covers each texel of a UV layout (cached per layout and size).

    Args:
        uv: (T, 2) texture coordinates in [0, 1] (OBJ convention, origin bottom-left).
        uv_triangles: (F, 3) int64 indices into ``uv``.
        size: texture side in pixels.
    Returns:
        :class:`UVRaster`. The first call for a layout rasterises it (tens of ms to a
        second, by size); later calls with the same arrays' contents return the cached one.
        Overlapping charts: one of the overlapping triangles wins each texel.
    Raises:
        FacefitError: malformed arrays or size.
    """
    uv, ut, size = _check_layout(uv, uv_triangles, size)
    layout = _digest(uv, ut)
    return _cached(("raster", layout, size), lambda: _disk_raster(uv, ut, size, layout))


def fill_texture(raster: UVRaster, values: np.ndarray, empty=(0, 0, 0)) -> np.ndarray:
    """Texture image from the values of the covered texels, charts padded to the full image.

    Args:
        raster: from :func:`uv_raster`.
        values: (N, 3) uint8 colours of ``raster.texels`` in order.
        empty: colour of the whole image when no texel is covered (N == 0).
    Returns:
        (size, size, 3) uint8; every uncovered texel takes the colour of its nearest
        covered texel.
    """
    values = np.asarray(values)
    if values.shape != (len(raster.texels), 3):
        raise FacefitError(f"values must be ({len(raster.texels)}, 3), got {values.shape}")
    S = raster.size
    if len(raster.texels) == 0:
        return np.broadcast_to(np.asarray(empty, np.uint8), (S, S, 3)).copy()
    return values.astype(np.uint8, copy=False)[raster.nearest].reshape(S, S, 3)


def bake_vertex_colors(uv, uv_triangles, triangles, colors, size: int = BAKE_SIZE) -> np.ndarray:
    """Bake per-vertex colours into a UV texture.

    Each covered texel gets the barycentric interpolation of its triangle's three vertex
    colours (what a viewer shows for vertex colours); the charts are then padded outwards by
    the nearest covered texel. Cheap once :func:`uv_raster` has cached the layout.

    Args:
        uv: (T, 2) texture coordinates (OBJ convention, origin bottom-left).
        uv_triangles: (F, 3) int64 indices into ``uv`` per triangle corner.
        triangles: (F, 3) int64 vertex indices (same triangles, into ``colors``).
        colors: (V, 3) float RGB in [0, 1].
        size: texture side in pixels.
    Returns:
        (size, size, 3) uint8 RGB texture, row 0 at the top (v = 1). A layout covering no
        texel gives the mean colour everywhere.
    Raises:
        FacefitError: shapes that do not fit together.
    """
    tri = np.asarray(triangles)
    col = np.asarray(colors, np.float32)
    if col.ndim != 2 or col.shape[1] != 3:
        raise FacefitError(f"colors must be (V, 3), got {col.shape}")
    if tri.shape != np.shape(uv_triangles) or tri.dtype.kind not in "iu":
        raise FacefitError(f"triangles must be integer (F, 3) like uv_triangles {np.shape(uv_triangles)}, "
                           f"got {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= len(col)):
        raise FacefitError(f"triangle indices out of range [0, {len(col)})")
    uv, ut, size = _check_layout(uv, uv_triangles, size)
    layout = _digest(uv, ut)
    raster = _cached(("raster", layout, size), lambda: _disk_raster(uv, ut, size, layout))
    col = np.clip(col, 0.0, 1.0)
    if len(raster.texels) == 0:
        return fill_texture(raster, np.zeros((0, 3), np.uint8), empty=_to_u8(col.mean(0)) if len(col) else (0, 0, 0))
    tri = tri.astype(np.int64, copy=False)
    weights = _cached(("bake", layout, size, _digest(tri), len(col)),
                      lambda: _bake_weights(raster, tri, len(col)))
    return _to_u8(weights @ col).reshape(size, size, 3)


def _to_u8(x: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded."""
    return np.clip(np.asarray(x, np.float32) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _bake_weights(raster: UVRaster, triangles: np.ndarray, n_vertices: int):
    """(size * size, V) sparse matrix: texel colour = its row @ vertex colours.

    Each texel (covered, or padded from its nearest covered texel) has the three
    barycentric weights of its triangle's vertices, so baking is one sparse product.
    """
    import scipy.sparse as sp

    src = raster.nearest  # covered texel each texel takes its colour from
    corners = triangles[raster.triangles[src]]  # (S^2, 3) vertex ids
    bary = raster.bary[src]  # (S^2, 3)
    n = len(src)
    return sp.csr_matrix((bary.reshape(-1), corners.reshape(-1), np.arange(0, 3 * n + 1, 3)),
                         shape=(n, n_vertices))


def _srgb_bilinear(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample (3, H, W) image at (N, 2) pixel positions (continuous coords) -> (N, 3)."""
    import torch

    H, W = image.shape[-2:]
    gx = uv[:, 0] / W * 2 - 1
    gy = uv[:, 1] / H * 2 - 1
    grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(image[None], grid, mode="bilinear", align_corners=False,
                                          padding_mode="border")
    return out[0, :, 0].T


def texture_from_photo(model, recon, image: np.ndarray, size: int = TEXTURE_SIZE, fit_steps: int = 150,
                       skin_trust: np.ndarray | None = None) -> FaceMesh:
    """A copy of ``recon.mesh`` with a UV texture taken from ``image``.

    Args:
        model: the :class:`~facefit.morphable.MorphableModel` (needs UVs and landmarks).
        recon: a :class:`~facefit.reconstruction.Reconstruction` with ``landmarks68``.
        image: (H, W, 3) uint8 RGB photo the face was detected in.
        size: texture side in pixels.
        fit_steps: optimisation steps of the landmark fit.
        skin_trust: optional (V,) per vertex: 1 = take the photo wherever visible, 0 = only
            where the photo shows skin, < 0 = never (see
            :func:`facefit.avatar.photo.restrict_to_skin`; the complete head uses it).
    Returns:
        FaceMesh with ``uv``, ``uv_triangles`` and ``texture``; ``meta['texture']`` says how
        many texels came from the photo.
    """
    import torch

    from .albedo_build import vertex_visibility
    from .fitting import fit_landmarks, project_fit
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

    # the UV layout, rasterised once per model and size: each texel -> triangle + barycentrics
    raster = uv_raster(model.uv, model.uv_triangles, size)
    bary = torch.tensor(raster.bary)  # (N, 3)
    corners = faces[torch.tensor(raster.triangles)]  # (N, 3) vertex ids of each texel's triangle

    def interp(attr):  # (V, C) -> (N, C)
        return (attr[corners] * bary[..., None]).sum(1)

    img = torch.as_tensor(image).permute(2, 0, 1).float() / 255.0
    photo_rgb = _srgb_bilinear(img, interp(screen[0, :, :2]))
    w = interp(vis_w[:, None])[:, 0].clamp(0, 1)
    model_rgb = interp(torch.as_tensor(recon.mesh.colors))
    if skin_trust is not None:
        from .avatar.photo import restrict_to_skin

        trust = interp(torch.as_tensor(np.asarray(skin_trust, np.float32))[:, None])[:, 0]
        w, model_rgb = restrict_to_skin(photo_rgb, w, model_rgb, trust)
    rgb = w[:, None] * photo_rgb + (1 - w[:, None]) * model_rgb
    # pad the charts (nearest covered texel) so bilinear lookups at seams do not pick up black
    tex_np = fill_texture(raster, _to_u8(rgb.numpy()))
    meta = dict(recon.mesh.meta)
    meta["texture"] = (f"photo: {float((w > 0.5).float().mean()):.0%} of texels from {recon.source}, "
                       f"rest model colour; landmark fit error {float(fit.landmark_error_px[0]):.1f} px")
    m = recon.mesh
    return FaceMesh(m.vertices, m.triangles, colors=m.colors, uv=np.asarray(model.uv),
                    uv_triangles=np.asarray(model.uv_triangles), texture=tex_np, meta=meta)
