"""A statistical per-vertex albedo (colour) model learned from ordinary photos.

In the spirit of Booth et al. 2017 ("3D Morphable Models in-the-wild") and Smith et al.
2020 ("A Morphable Face Albedo Model"), for models that ship no colour basis (ICT-FaceKit):

1. **Per photo** (:func:`sample_photos`): detect the main face and its 68 landmarks (dlib),
   fit pose, expression and identity shape to them (:func:`facefit.fitting.fit_landmarks`),
   find the visible vertices with the renderer's z-buffer (:func:`vertex_visibility`: the
   vertex's depth matches the z-buffer at its pixel, the surface faces the camera with
   ``cos > min_cos``, and it is at least ``edge_px`` inside the rendered silhouette) and read
   their colours by bilinear interpolation (:func:`sample_vertex_colors`). Colours are
   converted from sRGB to linear first, because light adds and multiplies in linear units.
2. **Lighting removal** (:func:`delight`): per photo, a second-order spherical-harmonics
   lighting (9 coefficients shared by R, G, B) is fitted in camera space against the fitted
   normals and the *current albedo estimate* (round 0: the photo's flat mean colour; later
   rounds: the photo's projection onto the current PCA model), robustly (Huber IRLS), and
   divided out. The shading is normalised to mean 1 over the visible vertices, so only
   shading *variation* is removed; overall brightness and colour cast stay in the albedo,
   because from one photo they cannot be told apart from skin tone (see ``docs/albedo.md``).
   Vertices in deep shadow get lower weight. The result is converted back to sRGB encoding:
   facefit's renderer applies no gamma, so albedo stored sRGB-encoded renders with the
   colours of photos under the renderer's roughly unit-brightness studio lighting.
3. **Missing data**: unseen vertices are missing (weight 0); where one side of the face is
   missing and its mirror vertex (``model.symmetry``) was seen, the mirror's de-lit colour
   is used as an extra observation with weight ``symmetry_weight`` (0.3) times the mirror's
   weight (:func:`symmetric_fill`). From round 1 on, per-vertex weights are also reduced where
   a photo disagrees strongly with its projection onto the model (occluders: hands, glasses,
   microphones, hair), Geman-McClure style.
4. **PCA with missing data** (:func:`weighted_pca`): weighted alternating least squares
   (ridge-regularised) on the (N, V, 3) data with per-vertex weights, then rotated into
   ordered orthonormal principal components; std per component, explained variance.
5. Photos are rejected (counted by reason in the provenance) when no face is found, the
   landmark fit is bad, too few vertices are visible, or the SH lighting model explains the
   photo badly.

:func:`build_albedo` runs it all and returns ``model.with_color_model(...)``; the colour
model alone is saved to a small ``.npz`` keyed by :func:`shape_key` (a hash of the shape
model only) that :func:`shipped_albedo_for` finds in ``models/albedo/`` of the repository.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from facefit.shipped import shipped_models_dir
from facefit.errors import FacefitError, InvalidFileError
from facefit.morphable import MorphableModel

__all__ = [
    "ALBEDO_DIR",
    "ALBEDO_FORMAT",
    "PhotoSamples",
    "PCAResult",
    "build_albedo",
    "delight",
    "list_photos",
    "load_albedo_file",
    "project_to_pca",
    "render_report",
    "sample_photos",
    "sample_vertex_colors",
    "save_albedo_file",
    "save_samples",
    "load_samples",
    "albedo_for",
    "render_albedo_views",
    "shape_key",
    "shipped_albedo_for",
    "symmetric_fill",
    "fill_unobserved",
    "vertex_visibility",
    "weighted_pca",
]

#: Where shipped albedo models live: ``<repository>/models/albedo`` (or its installed copy).
ALBEDO_DIR = shipped_models_dir() / "albedo"
#: Format name in the header of albedo files.
ALBEDO_FORMAT = "facefit-albedo-model"
_ALBEDO_VERSION = 1
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# =============================================================================== identity


def shape_key(model: MorphableModel) -> str:
    """Identity of a model's geometry, independent of its colour model.

    sha256 (first 16 hex digits) over ``mean_shape``, ``triangles``, ``shape_basis`` and
    ``shape_std`` (dtype, shape, bytes). Two models with the same key share the vertices an
    albedo model is defined on.
    """
    h = hashlib.sha256(b"facefit-shape-key/1")
    for name in ("mean_shape", "triangles", "shape_basis", "shape_std"):
        a = np.asarray(getattr(model, name))
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{name}{a.dtype.str}{a.shape}".encode() + b"\0")
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()[:16]


# =============================================================================== files


def save_albedo_file(path: str | os.PathLike, model: MorphableModel, provenance: dict | None = None) -> Path:
    """Save a model's colour model alone (small ``.npz``, no pickles).

    Arrays: ``mean_color`` (V, 3) float16, ``color_basis`` (V, 3, K) float16,
    ``color_std`` (K,) float32, ``header`` (JSON: format, version, ``shape_key``,
    ``model_name``, ``n_vertices``, ``description``, ``color_names``, ``provenance``).

    Returns:
        The path written (atomically).
    """
    from facefit.atomic import atomic_write

    if model.n_color == 0:
        raise FacefitError(f"model '{model.name}' has no colour basis to save")
    header = {
        "format": ALBEDO_FORMAT,
        "version": _ALBEDO_VERSION,
        "shape_key": shape_key(model),
        "model_name": model.name,
        "n_vertices": model.n_vertices,
        "n_components": model.n_color,
        "description": str(model.meta.get("color_model", "statistical")),
        "color_names": model.meta.get("color_names"),
        "provenance": provenance or model.meta.get("albedo", {}),
    }
    path = Path(path)
    with atomic_write(path, "wb", mkdir=True) as fh:
        np.savez_compressed(
            fh,
            header=np.array(json.dumps(header)),
            mean_color=np.asarray(model.mean_color, np.float16),
            color_basis=np.asarray(model.color_basis, np.float16),
            color_std=np.asarray(model.color_std, np.float32),
        )
    return path


def load_albedo_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_albedo_file`.

    Returns:
        dict with ``header`` (dict), ``mean_color`` (V, 3) float32, ``color_basis``
        (V, 3, K) float32, ``color_std`` (K,) float32.
    Raises:
        InvalidFileError: not an albedo file, or inconsistent arrays.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            arrays = {k: np.asarray(z[k], np.float32) for k in ("mean_color", "color_basis", "color_std")}
    except FileNotFoundError:
        raise InvalidFileError(f"{path}: no such file") from None
    except Exception as exc:
        raise InvalidFileError(f"{path}: not a facefit albedo file ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != ALBEDO_FORMAT:
        raise InvalidFileError(f"{path}: not a facefit albedo file")
    v = int(header.get("n_vertices", -1))
    mc, cb, cs = arrays["mean_color"], arrays["color_basis"], arrays["color_std"]
    if mc.shape != (v, 3) or cb.ndim != 3 or cb.shape[:2] != (v, 3) or cs.shape != (cb.shape[2],):
        raise InvalidFileError(f"{path}: inconsistent albedo arrays")
    if not (np.isfinite(mc).all() and np.isfinite(cb).all() and np.isfinite(cs).all()):
        raise InvalidFileError(f"{path}: non-finite values")
    return {"header": header, **arrays}


_SHIPPED_LOCK = threading.Lock()
_SHIPPED_HEADERS: dict[str, tuple[tuple[int, int], dict]] = {}


def _header_of(path: Path) -> dict | None:
    try:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        return None
    key = str(path)
    with _SHIPPED_LOCK:
        hit = _SHIPPED_HEADERS.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
    except Exception:
        header = None
    with _SHIPPED_LOCK:
        _SHIPPED_HEADERS[key] = (stamp, header)
    return header


def albedo_for(model: MorphableModel, path: str | os.PathLike) -> MorphableModel:
    """Attach the colour model stored in ``path`` to ``model``.

    Raises:
        InvalidFileError: unreadable file; FacefitError: it belongs to another shape model.
    """
    data = load_albedo_file(path)
    h = data["header"]
    if h.get("shape_key") != shape_key(model) or int(h.get("n_vertices", -1)) != model.n_vertices:
        raise FacefitError(f"{path}: albedo model belongs to another shape model ({h.get('model_name')})")
    out = model.with_color_model(
        np.clip(data["mean_color"], 0.0, 1.0), data["color_basis"], data["color_std"],
        description=h.get("description", "statistical"), names=h.get("color_names"),
    )
    out.meta["albedo_file"] = Path(path).name
    out.meta["albedo"] = h.get("provenance", {})
    return out


def shipped_albedo_for(model: MorphableModel, directory: str | os.PathLike | None = None) -> MorphableModel | None:
    """The model with the shipped statistical albedo model for its geometry, if any.

    Looks at every ``*.npz`` in ``directory`` (default :data:`ALBEDO_DIR`, i.e.
    ``<repo>/models/albedo``) whose header's ``shape_key`` equals :func:`shape_key` of
    ``model`` (headers are cached by file size and mtime).

    Returns:
        ``model.with_color_model(...)`` (``meta["albedo"]`` holds the provenance), or None
        when no file matches (or the matching file is unreadable).
    """
    d = Path(directory) if directory is not None else ALBEDO_DIR
    if not d.is_dir():
        return None
    key = None
    for p in sorted(d.glob("*.npz")):
        h = _header_of(p)
        if not h or h.get("format") != ALBEDO_FORMAT or int(h.get("n_vertices", -1)) != model.n_vertices:
            continue
        if key is None:
            key = shape_key(model)
        if h.get("shape_key") != key:
            continue
        try:
            return albedo_for(model, p)
        except FacefitError:
            continue
    return None


# =============================================================================== photos


def list_photos(photos_dir: str | os.PathLike, max_photos: int | None = None) -> list[Path]:
    """Image files under ``photos_dir`` (recursive, sorted by relative path).

    With ``max_photos`` a deterministic, evenly spread subset of that many is returned (every
    k-th file of the sorted list), so a subset covers all people of an alphabetical tree.

    Raises:
        FacefitError: the folder does not exist or holds no images.
    """
    root = Path(photos_dir).expanduser()
    if not root.is_dir():
        raise FacefitError(f"photo folder not found: {root}")
    paths = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not paths:
        raise FacefitError(f"no images (jpg, png, ...) found under {root}")
    if max_photos is not None and 0 < max_photos < len(paths):
        idx = np.unique(np.linspace(0, len(paths) - 1, int(max_photos)).round().astype(np.int64))
        paths = [paths[i] for i in idx]
    return paths


def sample_vertex_colors(images, uv):
    """Bilinear colours at continuous pixel positions.

    Args:
        images: (B, C, H, W) float tensor.
        uv: (B, V, 2) positions (u, v) in pixels (pixel centres at j + 0.5).
    Returns:
        (B, V, C); positions outside the image read the border colour.
    """
    import torch
    import torch.nn.functional as F

    B, C, H, W = images.shape
    grid = torch.stack([2.0 * uv[..., 0] / W - 1.0, 2.0 * uv[..., 1] / H - 1.0], -1).unsqueeze(1)  # (B,1,V,2)
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2)


def vertex_visibility(
    screen,
    faces,
    image_size: Sequence[int],
    verts_cam,
    min_cos: float = 0.3,
    depth_tol_px: float = 2.0,
    edge_px: int = 2,
    vertex_mask=None,
):
    """Which vertices are seen by the camera (z-buffer test plus a view-angle threshold).

    A vertex is visible when (1) it projects at least ``edge_px`` pixels inside the image
    and inside the rendered silhouette (coverage eroded by ``edge_px``), (2) its depth is at
    most the z-buffer depth of its pixel plus a tolerance of ``depth_tol_px`` pixel widths
    (in mm at that depth) divided by the cosine (slanted surfaces change depth faster
    across a pixel), and (3) its normal faces the camera: ``cos(normal, to-camera) > min_cos``.

    Args:
        screen: (B, V, 3) screen vertices (u, v, z).
        faces: (F, 3) int64 triangles.
        image_size: (H, W).
        verts_cam: (B, V, 3) camera-space vertices (for normals and view directions).
        min_cos: view-angle threshold.
        depth_tol_px: depth tolerance in pixel widths.
        edge_px: erosion of the silhouette / image border margin in pixels.
        vertex_mask: optional (V,) bool of vertices that may be visible (e.g. the face).
    Returns:
        ``(visible (B, V) bool, cos (B, V) float, normals (B, V, 3) camera-space unit normals)``.
    """
    import torch
    import torch.nn.functional as F

    from facefit.render import rasterize, vertex_normals

    H, W = int(image_size[0]), int(image_size[1])
    B, V, _ = screen.shape
    with torch.no_grad():
        frags = rasterize(screen, faces, (H, W), cull_backfaces=True, extend_outside=False)
        depth = frags.depth  # (B, H, W), 0 = background
        cover = (depth > 0).to(screen.dtype).unsqueeze(1)
        if edge_px > 0:
            k = 2 * int(edge_px) + 1
            cover = -F.max_pool2d(-cover, k, stride=1, padding=int(edge_px))
        u, v, z = screen.unbind(-1)
        j = torch.floor(u).long()
        i = torch.floor(v).long()
        inside = (u >= edge_px) & (u <= W - edge_px) & (v >= edge_px) & (v <= H - edge_px) & (z > 0)
        jc, ic = j.clamp(0, W - 1), i.clamp(0, H - 1)
        flat = (torch.arange(B, device=screen.device).view(B, 1) * (H * W) + ic * W + jc)
        zbuf = depth.reshape(-1)[flat]
        cov = cover.reshape(-1)[flat] > 0.5
        normals = vertex_normals(verts_cam, faces)
        to_cam = -F.normalize(verts_cam, dim=-1)
        cos = (normals * to_cam).sum(-1)
        # pixel width in mm at the vertex's depth: z / f, with f recovered from the screen
        # coordinates is not available here, so use the local scale of the projection
        pix_mm = _pixel_size_mm(screen, verts_cam)
        tol = depth_tol_px * pix_mm / cos.clamp_min(max(min_cos, 0.05))
        visible = inside & cov & (zbuf > 0) & (z <= zbuf + tol) & (cos > min_cos)
        if vertex_mask is not None:
            visible &= torch.tensor(np.asarray(vertex_mask), dtype=torch.bool, device=screen.device).view(1, V)
    return visible, cos, normals


def _pixel_size_mm(screen, verts_cam):
    """(B, V) size of one pixel in mm at each vertex's depth (``z / f``, f from the projection)."""
    # u - cx = f x / z for every vertex; f = median over vertices of (u - cx) z / x is fragile
    # near x = 0, so estimate f per image by least squares on all vertices, with cx unknown:
    # u = f (x / z) + cx  -> linear regression of u on x / z.
    import torch

    a = verts_cam[..., 0] / verts_cam[..., 2].clamp_min(1e-6)  # (B, V)
    u = screen[..., 0]
    am, um = a.mean(1, keepdim=True), u.mean(1, keepdim=True)
    f = ((a - am) * (u - um)).sum(1) / ((a - am) ** 2).sum(1).clamp_min(1e-12)  # (B,)
    return verts_cam[..., 2] / f.clamp_min(1e-6).unsqueeze(1)


@dataclass
class PhotoSamples:
    """Colour samples of N photos (numpy, compact dtypes).

    Attributes:
        obs: (N, V, 3) float16 observed **linear** colours at the vertices (0 where unseen).
        normals: (N, V, 3) float16 camera-space unit normals of the fitted meshes.
        weights: (N, V) uint8 observation weight * 255 (0 = not seen).
        info: N dicts (``path``, ``landmark_error`` (fraction of the face scale),
            ``landmark_error_px``, ``visible`` (fraction of face vertices), ``yaw``,
            ``pitch``, ``roll``, ``ok``, ``reason``).
        fits: optional per-photo fit parameters (``shape_coeffs`` (N, Ks), ``expr_coeffs``,
            ``yaw``, ``pitch``, ``roll``, ``t``, ``focal``) as numpy arrays.
    """

    obs: np.ndarray
    normals: np.ndarray
    weights: np.ndarray
    info: list[dict]
    fits: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.info)

    def select(self, idx) -> "PhotoSamples":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        return PhotoSamples(
            self.obs[idx], self.normals[idx], self.weights[idx], [self.info[i] for i in idx],
            {k: v[idx] for k, v in self.fits.items()},
        )


def save_samples(path: str | os.PathLike, samples: PhotoSamples) -> Path:
    """Store :class:`PhotoSamples` in an uncompressed ``.npz`` (to rerun the lighting/PCA
    stage of :func:`build_albedo` without the photos)."""
    from facefit.atomic import atomic_write

    path = Path(path)
    with atomic_write(path, "wb", mkdir=True) as fh:
        np.savez(
            fh, obs=samples.obs, normals=samples.normals, weights=samples.weights,
            info=np.array(json.dumps(samples.info)), **{f"fit_{k}": v for k, v in samples.fits.items()},
        )
    return path


def load_samples(path: str | os.PathLike) -> PhotoSamples:
    """Read :func:`save_samples` output. Raises InvalidFileError when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            fits = {k[4:]: z[k] for k in z.files if k.startswith("fit_")}
            return PhotoSamples(z["obs"], z["normals"], z["weights"], json.loads(str(z["info"][()])), fits)
    except Exception as exc:
        raise InvalidFileError(f"{path}: not a readable samples file ({type(exc).__name__})") from None


def _load_landmark_cache(path: Path | None) -> dict[str, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = [str(k) for k in z["keys"]]
            lms = z["landmarks"]
        return {k: lms[i] for i, k in enumerate(keys)}
    except Exception:
        return {}


def _save_landmark_cache(path: Path | None, cache: dict[str, np.ndarray]) -> None:
    if path is None:
        return
    from facefit.atomic import atomic_write

    keys = sorted(cache)
    arr = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 68, 2))
    with atomic_write(path, "wb", mkdir=True) as fh:
        np.savez(fh, keys=np.array(keys), landmarks=arr.astype(np.float64))


def _cache_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def sample_photos(
    model: MorphableModel,
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
    fit_steps: int = 150,
    n_shape: int = 40,
    min_cos: float = 0.3,
    edge_px: int = 2,
    max_landmark_error: float = 0.08,
    min_visible: float = 0.3,
    landmark_cache: str | os.PathLike | None = None,
    on_photo: Callable[[int], None] | None = None,
) -> PhotoSamples:
    """Detect, fit, find visible vertices and sample linear colours for each photo.

    Args:
        model: the morphable model (with 68 landmarks).
        paths: image files.
        batch_size: photos fitted / rasterised together.
        fit_steps: Adam steps of the landmark fit.
        n_shape: identity components fitted.
        min_cos, edge_px: see :func:`vertex_visibility`.
        max_landmark_error: reject fits whose mean landmark error exceeds this fraction of
            the face scale (RMS distance of the landmarks from their centroid).
        min_visible: reject photos where fewer than this fraction of the face vertices are
            visible.
        landmark_cache: optional ``.npz`` remembering detections (path + size + mtime ->
            68 points, NaN = no face), so repeated runs skip the detector.
        on_photo: called with the number of photos just finished (progress).
    Returns:
        :class:`PhotoSamples` for **all** paths (rejected ones have weight 0 and
        ``info[i]["ok"] == False`` with ``reason`` ``"unreadable"``, ``"no_face"``,
        ``"landmark_fit"`` or ``"visibility"``).
    """
    import torch

    from facefit.faces import detect_main_face, load_image
    from facefit.fitting import fit_landmarks
    from facefit.lighting import srgb_to_linear

    N, V = len(paths), model.n_vertices
    obs = np.zeros((N, V, 3), np.float16)
    nrm = np.zeros((N, V, 3), np.float16)
    wts = np.zeros((N, V), np.uint8)
    info: list[dict] = [{"path": str(p), "ok": False, "reason": "pending"} for p in paths]
    fits = {
        "shape_coeffs": np.zeros((N, min(n_shape, model.n_shape)), np.float32),
        "expr_coeffs": np.zeros((N, model.n_expr), np.float32),
        "yaw": np.zeros(N, np.float32), "pitch": np.zeros(N, np.float32), "roll": np.zeros(N, np.float32),
        "t": np.zeros((N, 3), np.float32), "focal": np.zeros(N, np.float32),
    }
    cache_path = Path(landmark_cache) if landmark_cache is not None else None
    cache = _load_landmark_cache(cache_path)
    cache_dirty = False
    faces_t = model.torch_triangles()
    face_mask = np.asarray(model.face_mask)
    n_face = max(1, int(face_mask.sum()))

    for start in range(0, N, batch_size):
        idx = list(range(start, min(N, start + batch_size)))
        groups: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i in idx:
            p = Path(paths[i])
            try:
                img = load_image(p)
            except FacefitError:
                info[i]["reason"] = "unreadable"
                continue
            key = None
            try:
                key = _cache_key(p)
            except OSError:
                pass
            lm = cache.get(key) if key is not None else None
            if lm is None:
                try:
                    lm = np.asarray(detect_main_face(img, name=p.name).landmarks68, np.float64)
                except FacefitError:
                    lm = np.full((68, 2), np.nan)
                if key is not None:
                    cache[key] = lm
                    cache_dirty = True
            if not np.isfinite(lm).all():
                info[i]["reason"] = "no_face"
                continue
            groups.setdefault(img.shape[:2], []).append((i, img, lm))
        for (H, W), items in groups.items():
            ids = [it[0] for it in items]
            lms = torch.as_tensor(np.stack([it[2] for it in items]), dtype=torch.float32)
            fit = fit_landmarks(model, lms, (H, W), n_shape=n_shape, steps=fit_steps)
            imgs = torch.as_tensor(np.stack([it[1] for it in items])).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                verts_cam = torch.matmul(fit.verts, fit.R_cam.transpose(1, 2)) + fit.t.unsqueeze(1)
                from facefit.render import project

                screen = project(verts_cam, fit.focal, fit.cx, fit.cy)
                vis, cos, normals = vertex_visibility(
                    screen, faces_t, (H, W), verts_cam, min_cos=min_cos, edge_px=edge_px, vertex_mask=face_mask
                )
                cols = sample_vertex_colors(srgb_to_linear(imgs), screen[..., :2])
                w = (vis.float() * ((cos - min_cos) / 0.3).clamp(0.0, 1.0))
            lerr = (fit.landmark_error_px / fit.face_scale_px).numpy()
            for k, i in enumerate(ids):
                frac = float(vis[k].sum()) / n_face
                info[i].update(
                    landmark_error=float(lerr[k]), landmark_error_px=float(fit.landmark_error_px[k]),
                    face_scale_px=float(fit.face_scale_px[k]), visible=frac,
                    yaw=float(fit.yaw[k]), pitch=float(fit.pitch[k]), roll=float(fit.roll[k]),
                )
                for name in ("yaw", "pitch", "roll", "focal"):
                    fits[name][i] = float(getattr(fit, name)[k])
                fits["t"][i] = fit.t[k].numpy()
                fits["shape_coeffs"][i] = fit.shape_coeffs[k, : fits["shape_coeffs"].shape[1]].numpy()
                if model.n_expr:
                    fits["expr_coeffs"][i] = fit.expr_coeffs[k].numpy()
                if lerr[k] > max_landmark_error:
                    info[i]["reason"] = "landmark_fit"
                    continue
                if frac < min_visible:
                    info[i]["reason"] = "visibility"
                    continue
                info[i]["ok"] = True
                info[i]["reason"] = ""
                obs[i] = cols[k].numpy().astype(np.float16)
                nrm[i] = normals[k].numpy().astype(np.float16)
                wts[i] = np.round(w[k].numpy() * 255.0).astype(np.uint8)
        if on_photo is not None:
            on_photo(len(idx))
    if cache_dirty:
        _save_landmark_cache(cache_path, cache)
    return PhotoSamples(obs, nrm, wts, info, fits)


# =============================================================================== lighting


def delight(
    obs,
    normals,
    weights,
    albedo_estimate=None,
    robust_iters: int = 2,
    min_shading: float = 0.25,
):
    """Fit and divide out SH lighting for a batch of photos.

    Args:
        obs: (B, V, 3) linear observed colours (torch).
        normals: (B, V, 3) camera-space normals.
        weights: (B, V) observation weights in [0, 1].
        albedo_estimate: (B, V, 3) linear albedo estimate, or None for each photo's flat
            weighted mean colour.
        robust_iters, min_shading: see :func:`facefit.lighting.fit_sh_lighting` /
            :func:`facefit.lighting.remove_lighting`.
    Returns:
        ``(albedo_srgb (B, V, 3) in [0, 1], weights (B, V) times the shading reliability,
        coeffs (B, 9), rel_residual (B,))``; ``rel_residual`` is the weighted RMS of
        ``obs - albedo_estimate * shading`` over the RMS of ``obs`` (how well
        "estimate x SH lighting" explains the photo).
    """
    import torch

    from facefit.lighting import fit_sh_lighting, linear_to_srgb, remove_lighting, sh_shading

    w = weights
    if albedo_estimate is None:
        m = (w.unsqueeze(-1) * obs).sum(1, keepdim=True) / w.sum(1).clamp_min(1e-9).view(-1, 1, 1)
        albedo_estimate = m.expand_as(obs)
    coeffs = fit_sh_lighting(obs, albedo_estimate, normals, w, per_channel=False, robust_iters=robust_iters)
    s = sh_shading(normals, coeffs)
    pred = albedo_estimate * s
    num = (w * ((obs - pred) ** 2).sum(-1)).sum(1)
    den = (w * (obs**2).sum(-1)).sum(1).clamp_min(1e-12)
    rel = (num / den).sqrt()
    alb, _, rel_w = remove_lighting(obs, normals, coeffs, w, min_shading=min_shading)
    return linear_to_srgb(alb), w * rel_w, coeffs, rel


def symmetric_fill(X, W, symmetry, weight: float = 0.3):
    """Fill unseen vertices from their mirror vertex (extra, lower-weight observations).

    Args:
        X: (B, V, C) values (torch); W: (B, V) weights.
        symmetry: (V,) int64 mirror vertex of each vertex.
        weight: weight factor of a mirrored observation.
    Returns:
        ``(X', W')``: where ``W == 0`` and the mirror's weight is > 0, ``X'`` takes the
        mirror's value and ``W'`` = ``weight`` times the mirror's weight.
    """
    import torch

    sym = torch.tensor(np.asarray(symmetry), dtype=torch.int64, device=X.device)
    Xm, Wm = X[:, sym], W[:, sym]
    fill = (W <= 0) & (Wm > 0)
    X2 = torch.where(fill.unsqueeze(-1), Xm, X)
    W2 = torch.where(fill, weight * Wm, W)
    return X2, W2


def fill_unobserved(
    mean: np.ndarray,
    basis: np.ndarray,
    triangles: np.ndarray,
    unknown: np.ndarray,
    rings: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the albedo of vertices the photos never showed, smoothly from their neighbours.

    Vertices no photo saw (typically the outer border of a face-area mesh) come out of the
    weighted PCA with colour 0 and no variation, which renders as a black outline. Their
    ``rings`` nearest rings of neighbours are filled too: those were seen only at grazing
    angles, where the samples mix in hair and background. The filled values are the
    harmonic extension (graph Laplace equation on the mesh edges) of the remaining
    vertices' mean and basis, so the colour continues the face's and the components keep
    varying there. A connected piece without any known vertex gets the average known colour
    and no variation.

    Args:
        mean: (V, 3) mean colour.
        basis: (V, 3, K) colour basis (any column scale).
        triangles: (F, 3) int vertex indices.
        unknown: (V,) bool, vertices without (usable) observations.
        rings: graph rings of neighbours of ``unknown`` that are filled as well (>= 0).
    Returns:
        ``(mean', basis', filled)``: arrays of the input shapes (float32) and the (V,) bool
        mask of filled vertices. Known vertices are unchanged.
    """
    import scipy.sparse as sp
    import scipy.sparse.csgraph as csgraph
    import scipy.sparse.linalg as spla

    mean = np.asarray(mean, np.float32)
    basis = np.asarray(basis, np.float32)
    V = mean.shape[0]
    unknown = np.asarray(unknown, bool).reshape(-1)
    if unknown.shape[0] != V or basis.shape[0] != V:
        raise FacefitError(f"fill_unobserved: {V} vertices, but a mask of {unknown.shape[0]} and a basis of {basis.shape[0]}")
    if rings < 0:
        raise FacefitError("fill_unobserved: rings must be >= 0")
    tri = np.asarray(triangles, np.int64)
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(V, V)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    fill = unknown.copy()
    for _ in range(int(rings)):
        if not fill.any():
            break
        fill = fill | (adj @ fill.astype(np.float64) > 0)
    if not fill.any():
        return mean, basis, fill
    K = basis.shape[2] if basis.ndim == 3 else 0
    values = np.concatenate([mean.reshape(V, -1), basis.reshape(V, -1)], 1).astype(np.float64)  # (V, 3 + 3K)
    out = values.copy()
    known = ~fill
    # pieces of the mesh graph without any known vertex: average colour, no variation
    _, comp = csgraph.connected_components(adj, directed=False)
    has_known = np.zeros(comp.max() + 1, bool)
    has_known[comp[known]] = True
    orphan = fill & ~has_known[comp]
    if known.any():
        out[orphan, :3] = values[known, :3].mean(0)
    out[orphan, 3:] = 0.0
    solve = fill & ~orphan
    if solve.any():
        deg = np.asarray(adj.sum(1)).reshape(-1)
        lap = (sp.diags(deg) - adj).tocsr()
        iu, ik = np.nonzero(solve)[0], np.nonzero(known)[0]
        l_uu = lap[iu][:, iu].tocsc()
        rhs = -(lap[iu][:, ik] @ values[ik])
        out[iu] = spla.splu(l_uu).solve(np.asarray(rhs))
    mean2 = out[:, :3].reshape(mean.shape).astype(np.float32)
    basis2 = out[:, 3:].reshape(V, 3, K).astype(np.float32) if K else basis
    return mean2, basis2, fill


# =============================================================================== PCA


@dataclass
class PCAResult:
    """A PCA model of (N, V, C) data with missing entries.

    Attributes:
        mean: (V, C) float32.
        basis: (V, C, K) float32, orthonormal columns (flattened to V*C), ordered by
            decreasing variance.
        std: (K,) float32 standard deviation of the data along each component.
        scores: (N, K) float32 coordinates of the training rows along the components
            (``x ~= mean + basis @ scores``; divide by ``std`` for N(0, 1) coefficients).
        explained: (K,) fraction of the total (weighted) variance each component explains.
        total_variance: float, summed per-dimension weighted variance around the mean.
        iterations: ALS iterations run.
        weight_sum: (V,) float64 total weight of each vertex over all rows (0 = never seen).
    """

    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    scores: np.ndarray
    explained: np.ndarray
    total_variance: float
    iterations: int
    weight_sum: np.ndarray | None = None


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def weighted_pca(
    X: np.ndarray,
    W: np.ndarray,
    n_components: int,
    iters: int = 30,
    tol: float = 1e-4,
    reg: float = 1e-3,
    chunk: int = 512,
    init: PCAResult | None = None,
    generator_seed: int = 0,
    on_iter: Callable[[int, float], None] | None = None,
) -> PCAResult:
    """PCA with missing / weighted data by alternating weighted least squares.

    Minimises ``sum_{n,v,c} W[n,v] (X[n,v,c] - mu[v,c] - C[v,c,:] z_n)^2
    + reg_z |z|^2 + reg_c |C|^2`` over ``mu``, ``C`` and ``z`` (the z and C steps are exact
    weighted ridge solves; ``mu`` is fitted jointly with C, unregularised), then rotates
    ``span(C)`` into orthonormal principal directions ordered by variance (SVD of the
    low-rank reconstruction). Entries with weight 0 do not influence the result.

    Args:
        X: (N, V, C) data (any float dtype; processed in float32 chunks).
        W: (N, V) non-negative weights (uint8 weights are divided by 255).
        n_components: K.
        iters: maximum ALS iterations.
        tol: stop when the relative decrease of the weighted residual is below this.
        reg: ridge strength relative to the mean weighted squared norm of a row.
        chunk: rows processed at once (memory).
        init: a previous :class:`PCAResult` to start from (warm start).
        generator_seed: seed of the random start.
        on_iter: called with (iteration, weighted RMS residual).
    Returns:
        :class:`PCAResult`.
    """
    import torch

    N, V, Cc = X.shape
    K = int(n_components)
    if K < 1:
        raise FacefitError("n_components must be >= 1")
    if W.shape != (N, V):
        raise FacefitError(f"weights must be ({N}, {V}), got {W.shape}")
    wscale = 255.0 if W.dtype == np.uint8 else 1.0

    def rows(sl):
        x = torch.as_tensor(np.asarray(X[sl], np.float32))
        w = torch.as_tensor(np.asarray(W[sl], np.float32)) / wscale
        return x, w

    # weighted mean and total variance
    sw = torch.zeros(V, dtype=torch.float64)
    sx = torch.zeros(V, Cc, dtype=torch.float64)
    for sl in _chunks(N, chunk):
        x, w = rows(sl)
        sw += w.sum(0).double()
        sx += (w.unsqueeze(-1) * x).sum(0).double()
    mu = (sx / sw.clamp_min(1e-12).unsqueeze(-1)).float()
    seen = sw > 0
    tv = torch.zeros(V, Cc, dtype=torch.float64)
    for sl in _chunks(N, chunk):
        x, w = rows(sl)
        tv += (w.unsqueeze(-1) * (x - mu) ** 2).sum(0).double()
    total_var = float((tv / sw.clamp_min(1e-12).unsqueeze(-1)).sum())
    row_energy = float((tv.sum() / max(N, 1)))  # mean weighted squared norm of a centred row
    lam = max(reg * row_energy, 1e-8)

    # initial basis
    if init is not None and init.basis.shape[2] >= 1:
        k0 = min(K, init.basis.shape[2])
        Cb = torch.zeros(V, Cc, K)
        Cb[..., :k0] = torch.as_tensor(init.basis[..., :k0] * init.std[:k0])
        if k0 < K:
            g = torch.Generator().manual_seed(generator_seed)
            Cb[..., k0:] = 1e-3 * torch.randn(V, Cc, K - k0, generator=g)
        mu = torch.as_tensor(init.mean, dtype=torch.float32).clone()
    else:
        # randomized SVD of the mean-imputed, centred data on up to 2000 rows
        g = torch.Generator().manual_seed(generator_seed)
        take = np.sort(np.random.default_rng(generator_seed).permutation(N)[: min(N, 2000)])
        x, w = rows(take)
        xc = ((x - mu) * (w > 0).unsqueeze(-1)).reshape(len(take), -1)
        q = min(K + 10, min(xc.shape))
        U, S, Vt = torch.svd_lowrank(xc, q=q, niter=3)
        k_eff = min(K, S.shape[0])
        Cb = torch.zeros(V, Cc, K)
        Cb[..., :k_eff] = (Vt[:, :k_eff] * (S[:k_eff] / math.sqrt(max(len(take), 1)))).reshape(V, Cc, k_eff)
        if k_eff < K:
            Cb[..., k_eff:] = 1e-3 * torch.randn(V, Cc, K - k_eff, generator=g)

    eyeK = torch.eye(K)
    Z = torch.zeros(N, K)
    prev = None
    it = 0
    for it in range(1, iters + 1):
        # ---- z step: per row (sum_v w G_v + lam I) z = sum_v w C_v^T (x - mu)
        G = torch.einsum("vck,vcl->vkl", Cb, Cb).reshape(V, K * K)
        for sl in _chunks(N, chunk):
            x, w = rows(sl)
            M = (w @ G).view(-1, K, K) + lam * eyeK
            rhs = torch.einsum("nvc,vck->nk", w.unsqueeze(-1) * (x - mu), Cb)
            Z[sl] = torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1)
        # ---- C, mu step: per vertex (sum_n w zt zt^T + lam diag) [C; mu] = sum_n w x zt
        K1 = K + 1
        A = torch.zeros(V, K1 * K1)
        Bv = torch.zeros(V, Cc, K1)
        for sl in _chunks(N, chunk):
            x, w = rows(sl)
            zt = torch.cat([Z[sl], torch.ones(Z[sl].shape[0], 1)], 1)  # (n, K+1)
            A += w.t() @ (zt.unsqueeze(2) * zt.unsqueeze(1)).reshape(-1, K1 * K1)
            Bv += torch.einsum("nvc,nk->vck", w.unsqueeze(-1) * x, zt)
        ridge = torch.full((K1,), lam)
        ridge[-1] = 1e-8
        A = A.view(V, K1, K1) + torch.diag(ridge)
        sol = torch.linalg.solve(A, Bv.transpose(1, 2))  # (V, K+1, C)
        Cb = sol[:, :K, :].permute(0, 2, 1).contiguous()
        mu = torch.where(seen.unsqueeze(-1), sol[:, K, :], mu)
        # ---- residual
        res = 0.0
        for sl in _chunks(N, chunk):
            x, w = rows(sl)
            rec = mu + torch.einsum("nk,vck->nvc", Z[sl], Cb)
            res += float((w.unsqueeze(-1) * (x - rec) ** 2).sum())
        rms = math.sqrt(res / max(float(sw.sum()) * Cc, 1e-12))
        if on_iter is not None:
            on_iter(it, rms)
        if prev is not None and (prev - rms) / max(prev, 1e-12) < tol:
            break
        prev = rms

    # ---- centre the scores, rotate to principal directions
    zbar = Z.mean(0)
    mu = mu + torch.einsum("vck,k->vc", Cb, zbar)
    Zc = Z - zbar
    Qc, Rc = torch.linalg.qr(Cb.reshape(V * Cc, K).double())
    Qz, Rz = torch.linalg.qr(Zc.double())
    U, S, Vt = torch.linalg.svd(Rc @ Rz.t())
    basis = (Qc @ U).float()  # (D, K)
    scores = (Qz @ Vt.t() * S).float()  # (N, K)
    std = (S / math.sqrt(max(N - 1, 1))).float()
    # sign convention: each component's largest-magnitude mean-direction is positive
    sign = torch.sign((basis * mu.reshape(-1, 1)).sum(0))
    sign[sign == 0] = 1.0
    basis, scores = basis * sign, scores * sign
    explained = (std.double() ** 2 / max(total_var, 1e-12)).float()
    return PCAResult(
        mean=mu.numpy().astype(np.float32),
        basis=basis.reshape(V, Cc, K).numpy().astype(np.float32),
        std=std.numpy().astype(np.float32),
        scores=scores.numpy().astype(np.float32),
        explained=explained.numpy(),
        total_variance=total_var,
        iterations=it,
        weight_sum=sw.numpy(),
    )


def project_to_pca(X, W, mean, basis, std, noise: float = 0.05, n_components: int | None = None):
    """MAP coefficients of rows under a PCA model (weighted ridge; Gaussian prior).

    Minimises ``sum_v W (X - mean - basis (std * c))^2 / noise^2 + |c|^2``.

    Args:
        X: (B, V, C) torch; W: (B, V) torch weights in [0, 1].
        mean: (V, C), basis: (V, C, K), std: (K,) (numpy or torch).
        noise: per-entry noise std (colour units).
        n_components: use only the first k components.
    Returns:
        ``(coeffs (B, k) in std units, reconstruction (B, V, C))``.
    """
    import torch

    mean = torch.as_tensor(np.asarray(mean), dtype=X.dtype, device=X.device)
    basis = torch.as_tensor(np.asarray(basis), dtype=X.dtype, device=X.device)
    std = torch.as_tensor(np.asarray(std), dtype=X.dtype, device=X.device)
    if n_components is not None:
        basis, std = basis[..., :n_components], std[:n_components]
    Bs = basis * std  # (V, C, k)
    k = Bs.shape[-1]
    G = torch.einsum("vck,vcl->vkl", Bs, Bs).reshape(Bs.shape[0], k * k)
    M = (W @ G).view(-1, k, k) / noise**2 + torch.eye(k, dtype=X.dtype, device=X.device)
    rhs = torch.einsum("nvc,vck->nk", W.unsqueeze(-1) * (X - mean), Bs) / noise**2
    c = torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1)
    rec = mean + torch.einsum("nk,vck->nvc", c, Bs)
    return c, rec


# =============================================================================== build


def _delight_all(samples: PhotoSamples, pca: PCAResult | None, symmetry, sym_weight: float, occlusion: bool,
                 n_est: int, inner: int = 2, chunk: int = 256):
    """De-light every photo against the current model.

    Without a model, each photo is de-lit against its flat mean colour. With one, the albedo
    estimate and the lighting are alternated ``inner`` times per photo: de-light, project the
    de-lit colours onto the first ``n_est`` components, use that as the estimate, repeat.

    Returns:
        ``(X (N, V, 3) float16 sRGB albedo, W (N, V) float32 weights, rel_residual (N,))``.
    """
    import torch

    from facefit.lighting import srgb_to_linear

    N, V, _ = samples.obs.shape
    X = np.zeros((N, V, 3), np.float16)
    Wout = np.zeros((N, V), np.float32)
    rel = np.zeros(N, np.float32)
    for sl in _chunks(N, chunk):
        obs = torch.as_tensor(samples.obs[sl].astype(np.float32))
        nrm = torch.as_tensor(samples.normals[sl].astype(np.float32))
        w = torch.as_tensor(samples.weights[sl].astype(np.float32)) / 255.0
        alb, w2, _, r = delight(obs, nrm, w, None)
        if pca is not None:
            for _ in range(inner):
                _, rec = project_to_pca(alb, w2, pca.mean, pca.basis, pca.std, n_components=n_est)
                alb, w2, _, r = delight(obs, nrm, w, srgb_to_linear(rec.clamp(0.0, 1.0)))
            if occlusion:
                _, rec = project_to_pca(alb, w2, pca.mean, pca.basis, pca.std)
                e = (alb - rec).norm(dim=-1)  # (n, V)
                tau = 3.0 * torch.stack([ei[wi > 0].median() if bool((wi > 0).any()) else ei.new_tensor(0.1)
                                         for ei, wi in zip(e, w2)]).clamp_min(0.02)
                w2 = w2 / (1.0 + (e / tau.unsqueeze(1)) ** 2)
        if symmetry is not None:
            alb, w2 = symmetric_fill(alb, w2, symmetry, sym_weight)
        X[sl] = alb.numpy().astype(np.float16)
        Wout[sl] = w2.numpy()
        rel[sl] = r.numpy()
    return X, Wout, rel


def build_albedo(
    photos_dir: str | os.PathLike,
    model: MorphableModel,
    out: str | os.PathLike | None = None,
    n_components: int = 30,
    variance: float | None = None,
    max_photos: int | None = None,
    progress: bool = True,
    *,
    rounds: int = 3,
    batch_size: int = 32,
    fit_steps: int = 150,
    symmetry_weight: float = 0.3,
    max_landmark_error: float = 0.08,
    min_visible: float = 0.3,
    max_light_residual: float | None = None,
    pca_iters: int = 25,
    report: str | os.PathLike | None | bool = True,
    landmark_cache: str | os.PathLike | None = None,
    samples: PhotoSamples | None = None,
    samples_cache: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    albedo_only: bool = False,
    fill_rings: int = 1,
) -> MorphableModel:
    """Learn a statistical albedo model for ``model`` from a folder of photos.

    Args:
        photos_dir: folder of photos (searched recursively; one main face each).
        model: the morphable model (needs 68 landmarks; its colour model is replaced).
        out: where to save the result: a complete facefit model ``.npz`` (the input shape
            model + the new colour model, loadable with ``--model OUT``), or with
            ``albedo_only`` just the colour model (small ``.npz`` of the kind
            :func:`shipped_albedo_for` finds in ``models/albedo``); None = don't save.
        n_components: number of colour components to keep (at most).
        variance: keep the fewest components that explain this fraction of the variance
            (e.g. 0.9), capped by ``n_components``.
        max_photos: use a deterministic, evenly spread subset of this many photos.
        progress: show rich progress bars.
        rounds: lighting/PCA rounds (round 0 de-lights against a flat colour, later ones
            against each photo's projection onto the previous round's model).
        batch_size, fit_steps: see :func:`sample_photos`.
        symmetry_weight: weight factor of mirrored observations.
        max_landmark_error, min_visible: photo rejection thresholds (:func:`sample_photos`).
        max_light_residual: reject photos whose relative residual under "model albedo x SH
            lighting" exceeds this; default: the upper Tukey fence (Q3 + 1.5 IQR) of the
            photos' residuals.
        pca_iters: ALS iterations per round (warm-started after round 0).
        report: True = write ``<out stem>-report.png`` beside ``out``; a path = there;
            False/None = no report.
        landmark_cache: optional detection cache file (see :func:`sample_photos`).
        samples: reuse previously computed :class:`PhotoSamples` (skips photos_dir).
        samples_cache: ``.npz`` file: loaded instead of processing the photos when it exists
            and lists the same photos, else written after processing them (see
            :func:`save_samples`; about 0.12 MB per photo for a 9.4k-vertex model).
        log: called with progress messages (default: print when ``progress``).
        albedo_only: write only the colour model to ``out`` (see ``out``).
        fill_rings: vertices no kept photo saw, and this many rings of their neighbours,
            get the smooth continuation of the rest (:func:`fill_unobserved`) instead of
            black; -1 = no filling.
    Returns:
        ``model.with_color_model(mean, basis, std, description=...)`` with provenance in
        ``meta["albedo"]``.
    Raises:
        FacefitError: bad folder, no landmarks, or too few usable photos.
    """
    if model.landmarks is None:
        raise FacefitError(f"model '{model.name}' has no 68-point landmarks; cannot fit photos")
    if n_components < 1:
        raise FacefitError("n_components must be >= 1")
    if variance is not None and not 0.0 < variance <= 1.0:
        raise FacefitError("variance must be in (0, 1]")
    say = log or (print if progress else (lambda s: None))
    t_start = time.time()
    base = model if model.n_color == 0 else model.with_color_model(model.mean_color, None, None, "none")

    # ---------------------------------------------------------------- photos
    if samples is None:
        paths = list_photos(photos_dir, max_photos)
        say(f"albedo: {len(paths)} photos from {photos_dir}")
        if samples_cache is not None and Path(samples_cache).is_file():
            cached = load_samples(samples_cache)
            if [i["path"] for i in cached.info] == [str(p) for p in paths]:
                samples = cached
                say(f"albedo: reusing samples from {samples_cache}")
    if samples is None:
        with _progress(progress) as prog:
            task = prog.add_task("detect, fit, sample", total=len(paths)) if prog else None
            samples = sample_photos(
                base, paths, batch_size=batch_size, fit_steps=fit_steps,
                max_landmark_error=max_landmark_error, min_visible=min_visible,
                landmark_cache=landmark_cache,
                on_photo=(lambda n: prog.advance(task, n)) if prog else None,
            )
        if samples_cache is not None:
            save_samples(samples_cache, samples)
    t_sampled = time.time()
    ok = np.array([i["ok"] for i in samples.info])
    reasons: dict[str, int] = {}
    for i in samples.info:
        if not i["ok"]:
            reasons[i["reason"]] = reasons.get(i["reason"], 0) + 1
    say(f"albedo: {int(ok.sum())} of {len(samples)} photos usable after fitting ({reasons or 'none rejected'})")
    if ok.sum() < max(n_components + 1, 3):
        raise FacefitError(f"only {int(ok.sum())} usable photos; need more than n_components={n_components}")
    used = samples.select(ok)

    # ---------------------------------------------------------------- lighting + PCA rounds
    sym = model.symmetry
    pca = None
    n_est = min(10, n_components)
    light_rel = np.zeros(len(used), np.float32)
    keep = np.ones(len(used), bool)
    history = []
    with _progress(progress) as prog:
        task = prog.add_task("lighting + PCA", total=rounds) if prog else None
        for r in range(rounds):
            last = r == rounds - 1
            k_round = n_components if last else min(n_components, max(n_est, 10))
            X, Wt, light_rel = _delight_all(used, pca, sym, symmetry_weight, occlusion=r > 0, n_est=n_est)
            if last and pca is not None:
                thr = max_light_residual
                if thr is None:
                    q1, q3 = np.percentile(light_rel, [25, 75])
                    thr = float(q3 + 1.5 * (q3 - q1))
                keep = light_rel <= thr
                history.append({"light_residual_threshold": float(thr)})
            Xk, Wk = (X, Wt) if keep.all() else (X[keep], Wt[keep])
            pca = weighted_pca(
                Xk, Wk, k_round, iters=pca_iters if r == 0 else max(8, pca_iters // 2),
                init=pca if (pca is not None and pca.basis.shape[2] <= k_round) else None,
            )
            cum = float(np.cumsum(pca.explained)[-1])
            history.append({"round": r, "components": k_round, "photos": int(keep.sum()), "iterations": pca.iterations,
                            "explained": round(cum, 4), "median_light_residual": float(np.median(light_rel))})
            say(f"albedo: round {r}: {int(keep.sum())} photos, K={k_round}, explained {cum:.3f}, "
                f"median lighting residual {np.median(light_rel):.3f}")
            if prog:
                prog.advance(task, 1)
    del X, Wt, Xk, Wk
    coverage = pca.weight_sum  # (V,) total weight of the kept photos' observations

    # ---------------------------------------------------------------- choose K, build model
    k = n_components
    cum = np.cumsum(pca.explained)
    if variance is not None:
        reach = np.nonzero(cum >= variance)[0]
        k = int(reach[0]) + 1 if len(reach) else n_components
    k = max(1, min(k, pca.basis.shape[2]))
    mean, basis_k = pca.mean, pca.basis[..., :k]
    n_filled = 0
    if fill_rings >= 0:
        mean, basis_k, filled = fill_unobserved(mean, basis_k, model.triangles, coverage <= 0, rings=fill_rings)
        n_filled = int(filled.sum())
        if n_filled:
            say(f"albedo: {int((coverage <= 0).sum())} vertices never seen; filled {n_filled} "
                f"(with {fill_rings} ring(s) of neighbours) from the rest")
    mean = np.clip(mean, 0.0, 1.0)
    n_used = int(keep.sum())
    rejected = dict(reasons)
    if (~keep).sum():
        rejected["lighting_residual"] = int((~keep).sum())
    desc = (
        f"statistical PCA from {n_used} photos ({Path(str(photos_dir)).name}), {k} components; "
        "SH-de-lit per-vertex albedo, sRGB-encoded"
    )
    provenance = {
        "photos_dir": str(photos_dir),
        "photos": len(samples),
        "used": n_used,
        "rejected": int(len(samples) - n_used),
        "rejected_by_reason": rejected,
        "components": k,
        "explained_variance": [round(float(x), 5) for x in pca.explained[:k]],
        "explained_variance_total": round(float(cum[k - 1]), 4),
        "settings": {
            "n_components": n_components, "variance": variance, "max_photos": max_photos, "rounds": rounds,
            "fit_steps": fit_steps, "symmetry_weight": symmetry_weight, "max_landmark_error": max_landmark_error,
            "min_visible": min_visible, "fill_rings": fill_rings, "lighting": "2nd-order SH, shared RGB, normalised to mean 1",
            "color_space": "sRGB-encoded albedo (sampled and de-lit in linear RGB)",
        },
        "rounds": history,
        "unseen_vertices": int((coverage <= 0).sum()),
        "filled_vertices": n_filled,
        "shape_key": shape_key(model),
        "seconds": {"sampling": round(t_sampled - t_start, 1), "total": round(time.time() - t_start, 1)},
    }
    result = base.with_color_model(mean, basis_k, pca.std[:k], description=desc)
    result.meta["albedo"] = provenance
    if out is not None:
        out = Path(out)
        if albedo_only:
            save_albedo_file(out, result, provenance)
        else:
            result.save(out)
        say(f"albedo: wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
        if report is True:
            report = out.with_name(out.stem + "-report.png")
    if report not in (None, False, True):
        render_report(result, pca, report, n_show=min(5, k))
        say(f"albedo: wrote {report}")
    return result


class _NullProgress:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NullProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
    )


# =============================================================================== report


def render_albedo_views(model: MorphableModel, color_coeffs=None, size: int = 192, lit: bool = True):
    """Frontal renders of the mean shape with given colour coefficients.

    Args:
        model: a model with a colour basis.
        color_coeffs: (B, k) coefficients (None = the mean colour).
        size: image side in pixels.
        lit: studio lighting (else flat albedo).
    Returns:
        (B, H, W, 3) uint8 numpy.
    """
    import torch

    from facefit.render import Camera, Lights, render

    cam = Camera.from_fov(15.0, size)
    c = None if color_coeffs is None else torch.as_tensor(color_coeffs, dtype=torch.float32)
    B = 1 if c is None else c.shape[0]
    verts, cols = model.decode(color_coeffs=c, batch_size=B)
    if not lit:
        lights = Lights(torch.zeros(B, 1, 3), torch.zeros(B, 1), torch.ones(B))
        outp = render(verts, model.torch_triangles(), cols, cam, lights=lights, specular=0.0, background=(1, 1, 1))
    else:
        outp = render(verts, model.torch_triangles(), cols, cam, background=(1, 1, 1))
    return (outp.images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _crop_white(images: np.ndarray, pad: int = 4) -> np.ndarray:
    """Crop a batch of renders on white to the union of their non-white pixels."""
    fg = (images < 250).any(-1).any(0)
    ys, xs = np.nonzero(fg)
    if len(ys) == 0:
        return images
    y0, y1 = max(0, ys.min() - pad), min(images.shape[1], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(images.shape[2], xs.max() + pad + 1)
    return images[:, y0:y1, x0:x1]


def render_report(model: MorphableModel, pca: PCAResult | None, path: str | os.PathLike, n_show: int = 5) -> Path:
    """A PNG with the mean albedo, the first components at -2/+2 std and the variance curve.

    Renders are frontal views of the mean shape: flat albedo (no shading) and, for the mean,
    the renderer's studio lighting.

    Args:
        model: the model with its new colour model.
        pca: the PCA result (for the full explained-variance curve; None = from
            ``model.meta["albedo"]``).
        path: output PNG.
        n_show: components shown.
    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_show = max(0, min(n_show, model.n_color))
    coeffs = np.zeros((2 + 2 * n_show, max(model.n_color, 1)), np.float32)[:, : model.n_color]
    for i in range(n_show):
        coeffs[2 + 2 * i, i] = -2.0
        coeffs[3 + 2 * i, i] = 2.0
    flat = render_albedo_views(model, coeffs, size=256, lit=False)
    lit = render_albedo_views(model, coeffs[:1], size=256, lit=True)
    flat[1] = lit[0]
    tiles = _crop_white(flat)
    cols = max(3, n_show)
    fig = plt.figure(figsize=(2.4 * cols, 9.0))
    ax = fig.add_subplot(3, cols, 1)
    ax.imshow(tiles[0]); ax.set_title("mean albedo"); ax.axis("off")
    ax = fig.add_subplot(3, cols, 2)
    ax.imshow(tiles[1]); ax.set_title("mean, studio light"); ax.axis("off")
    for i in range(n_show):
        for row, sgn in ((1, -2), (2, 2)):
            ax = fig.add_subplot(3, cols, row * cols + i + 1)
            ax.imshow(tiles[2 + 2 * i + (row - 1)])
            ax.set_title(f"PC{i + 1} {sgn:+d}σ (std {model.color_std[i]:.2f})", fontsize=9)
            ax.axis("off")
    prov = model.meta.get("albedo", {})
    expl = pca.explained if pca is not None else np.asarray(prov.get("explained_variance", []))
    ax = fig.add_subplot(3, cols, 3)
    if len(expl):
        ax.plot(np.arange(1, len(expl) + 1), np.cumsum(expl), "o-", ms=2)
        ax.axvline(model.n_color, color="r", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("components"); ax.set_ylabel("cumulative explained variance")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{model.name} albedo: {prov.get('used', '?')} of {prov.get('photos', '?')} photos, {model.n_color} components",
        fontsize=11,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
