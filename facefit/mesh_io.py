"""Reading and writing face meshes (OBJ, PLY, GLB) with provenance.

One entry point per direction, format chosen from the file suffix (as in trimesh):

* :func:`save_mesh` writes ``.obj`` (+ ``.mtl`` and ``.png`` when the mesh has UVs and a
  texture or vertex colours), ``.ply`` (binary little endian) or ``.glb`` (binary glTF
  2.0, through trimesh).
* :func:`load_mesh` reads facefit's own files back exactly (vertex order, triangles,
  colours, UVs, texture, metadata, units) and other meshes (``.obj .ply .glb .gltf
  .stl .off``) as well as it can.

In memory a :class:`FaceMesh` is always in **millimetres** (see docs/conventions.md).
Files can store mm, cm or m; the chosen unit is recorded in the file and undone on load.

Provenance (``FaceMesh.meta`` plus ``units`` and ``facefit_version``) is stored as
one JSON object, in a way each format's readers ignore:

* OBJ: header comments; the machine-readable line is ``# facefit-meta: {...}``.
* PLY: header comments; the machine-readable line is ``comment facefit-meta {...}``.
* GLB: ``asset.extras.facefit`` in the glTF JSON (added through trimesh's
  ``tree_postprocessor`` hook and read back by parsing the GLB's JSON chunk here,
  because trimesh does not expose ``asset.extras`` on load).

Colours and materials, written so that viewers show the colours as they are:

* OBJ: ``v x y z r g b`` vertex colours. A mesh with UVs also gets ``<stem>.mtl`` +
  ``<stem>.png``: its texture, or (no texture) its vertex colours baked into a
  512 px UV texture (:func:`facefit.texturing.bake_vertex_colors`; material
  ``facefit_vertex_colors``, which :func:`load_mesh` recognises and skips, keeping the
  exact vertex colours). An existing ``.png``/``.mtl`` of that name that facefit did not
  write (e.g. the input photo ``face.png`` beside ``face.obj``) is never overwritten.
* GLB: viewers multiply the material's base colour (factor x texture) with ``COLOR_0``.
  Untextured meshes get a white, non-metallic, fully rough material without texture plus
  ``COLOR_0``. Textured meshes get the texture and no ``COLOR_0``; their vertex colours
  travel in the custom attribute ``_FACEFIT_COLOR`` (uint8 RGBA) for facefit's own round
  trip.

Texture coordinates follow the OBJ convention: ``uv`` in [0, 1], origin at the
*bottom-left* of the texture image (texture row = (1 - v) * H). glTF stores v flipped;
trimesh converts on export and import.

GLB has one index buffer shared by all vertex attributes, so a mesh with separately
indexed UVs (``uv_triangles`` != ``triangles``, i.e. UV seams) is written with one glTF
vertex per distinct (vertex, uv) pair plus a custom attribute ``_FACEFIT_VERTEX_ID``
(float, original vertex index; custom attributes start with "_" per the glTF spec)
that :func:`load_mesh` uses to weld the vertices back together.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefit import __version__
from facefit.atomic import atomic_write
from facefit.errors import FacefitError, InvalidFileError

__all__ = [
    "FaceMesh",
    "save_mesh",
    "load_mesh",
    "SAVE_SUFFIXES",
    "LOAD_SUFFIXES",
    "UNIT_SCALE",
]

#: Suffixes :func:`save_mesh` can write.
SAVE_SUFFIXES = (".obj", ".ply", ".glb")
#: Suffixes :func:`load_mesh` can read.
LOAD_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
#: value stored in the file = value in mm * UNIT_SCALE[unit]
UNIT_SCALE = {"mm": 1.0, "cm": 0.1, "m": 0.001}
#: Unit used when save_mesh gets units=None. glTF is defined in metres by its spec.
DEFAULT_UNITS = {".obj": "mm", ".ply": "mm", ".glb": "m"}
#: Unit assumed when loading a file that does not record one.
ASSUMED_UNITS = {".glb": "m", ".gltf": "m"}  # everything else: mm

_META_TAG = "facefit-meta"
_VERTEX_ID_ATTR = "_FACEFIT_VERTEX_ID"
_COLOR_ATTR = "_FACEFIT_COLOR"
_MATERIAL_NAME = "facefit_texture"
#: material of an untextured mesh (GLB) / of vertex colours baked into a texture (OBJ)
_VERTEX_COLOR_MATERIAL = "facefit_vertex_colors"
#: PNG tEXt chunk that marks a texture as written by facefit (safe to overwrite)


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or a (CPU/GPU) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class FaceMesh:
    """A triangle mesh in millimetres with optional colours, UVs, texture and metadata.

    Attributes:
        vertices: (V, 3) float32, millimetres, model space (+y up, +z out of the face).
        triangles: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        colors: (V, 3) float32 per-vertex RGB in [0, 1], or None.
        uv: (T, 2) float32 texture coordinates (OBJ convention, origin bottom-left),
            or None.
        uv_triangles: (F, 3) int64 indices into ``uv`` per triangle corner, or None
            (required iff ``uv`` is given).
        texture: (H, W, 3) uint8 RGB texture image, or None (needs ``uv``).
        meta: provenance, JSON-serialisable values, e.g. ``{"model": "ict-facekit",
            "model_hash": "...", "facefit_version": "0.1.0", "units": "mm"}``.

    Inputs are converted to the dtypes above (torch tensors are accepted); shapes and
    index ranges are checked (ValueError).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    uv_triangles: np.ndarray | None = None
    texture: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = _as_numpy(self.vertices).astype(np.float32, copy=False)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {v.shape}")
        t = _as_numpy(self.triangles)
        if t.size == 0:
            t = t.reshape(0, 3)
        if t.ndim != 2 or t.shape[1] != 3:
            raise ValueError(f"triangles must be (F, 3), got {t.shape}")
        if t.dtype.kind not in "iu":
            raise ValueError(f"triangles must be integers, got {t.dtype}")
        t = t.astype(np.int64, copy=False)
        if t.size and (t.min() < 0 or t.max() >= len(v)):
            raise ValueError(f"triangle indices out of range [0, {len(v)})")
        self.vertices, self.triangles = v, t

        if self.colors is not None:
            c = _as_numpy(self.colors).astype(np.float32, copy=False)
            if c.shape != v.shape:
                raise ValueError(f"colors must be (V, 3) = {v.shape}, got {c.shape}")
            self.colors = c

        if (self.uv is None) != (self.uv_triangles is None):
            raise ValueError("uv and uv_triangles must be given together")
        if self.uv is not None:
            uv = _as_numpy(self.uv).astype(np.float32, copy=False)
            if uv.ndim != 2 or uv.shape[1] != 2:
                raise ValueError(f"uv must be (T, 2), got {uv.shape}")
            ut = _as_numpy(self.uv_triangles)
            if ut.shape != t.shape or ut.dtype.kind not in "iu":
                raise ValueError(f"uv_triangles must be integer (F, 3) = {t.shape}, got {ut.shape}")
            ut = ut.astype(np.int64, copy=False)
            if ut.size and (ut.min() < 0 or ut.max() >= len(uv)):
                raise ValueError(f"uv_triangles indices out of range [0, {len(uv)})")
            self.uv, self.uv_triangles = uv, ut

        if self.texture is not None:
            if self.uv is None:
                raise ValueError("a texture needs uv and uv_triangles")
            tex = _as_numpy(self.texture)
            if tex.ndim == 3 and tex.shape[2] == 4:
                tex = tex[:, :, :3]
            if tex.ndim != 3 or tex.shape[2] != 3:
                raise ValueError(f"texture must be (H, W, 3), got {tex.shape}")
            if tex.dtype != np.uint8:
                raise ValueError(f"texture must be uint8, got {tex.dtype}")
            self.texture = np.ascontiguousarray(tex)

        self.meta = dict(self.meta or {})

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])


# --------------------------------------------------------------------------- helpers


def _suffix(path: Path, allowed: tuple[str, ...], verb: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise FacefitError(
            f"cannot {verb} {path}: unsupported mesh format {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(allowed)}"
        )
    return suffix


def _file_meta(mesh: FaceMesh, units: str) -> dict:
    """Metadata written to a file: mesh.meta + storage units + writer version."""
    meta = {k: v for k, v in mesh.meta.items() if k not in ("units", "file_units")}
    meta["units"] = units
    meta["facefit_version"] = __version__
    return meta


def _meta_json(meta: dict) -> str:
    """One-line ASCII JSON (safe inside OBJ/PLY header comments)."""
    return json.dumps(meta, default=str, ensure_ascii=True, separators=(", ", ": "))


def _loaded_meta(recorded: dict | None, file_units: str) -> dict:
    """Metadata of a loaded FaceMesh: recorded meta, units now mm, file unit kept."""
    meta = dict(recorded or {})
    meta["units"] = "mm"
    meta["file_units"] = file_units
    return meta


def _colors_u8(colors: np.ndarray) -> np.ndarray:
    """(V, 3) float [0, 1] -> (V, 3) uint8, rounded and clipped."""
    return np.clip(np.rint(colors.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _check_units(units: str) -> float:
    if units not in UNIT_SCALE:
        raise FacefitError(f"unknown units {units!r}; use one of: {', '.join(UNIT_SCALE)}")
    return UNIT_SCALE[units]


# --------------------------------------------------------------------------- saving


def save_mesh(mesh: FaceMesh, path: str | os.PathLike, units: str | None = None) -> list[Path]:
    """Write ``mesh`` to ``path``; the format comes from the suffix.

    Args:
        mesh: the mesh (vertices in mm).
        path: ``*.obj``, ``*.ply`` or ``*.glb``.
        units: ``"mm"``, ``"cm"`` or ``"m"``: vertices are scaled to this unit in the
            file and the unit is recorded. None: mm for OBJ/PLY, m for GLB (the glTF
            spec defines metres and viewers assume them).
    Returns:
        The files written. An OBJ of a mesh with UVs and a texture or vertex colours also
        writes ``<stem>.mtl`` and ``<stem>.png`` beside it (without a texture, the vertex
        colours baked into a 512 px texture). Every file is written atomically; the
        texture and material are written before the OBJ that references them.
    Notes:
        PLY stores positions, vertex colours (uchar RGB) and triangles; UVs and texture
        are not written to PLY. Colours are quantised to 8 bits in PLY and GLB.
    Raises:
        FacefitError: unsupported suffix or units, output location problems, a
            ``<stem>.png``/``<stem>.mtl`` in the way that facefit did not write.
    """
    path = Path(path)
    suffix = _suffix(path, SAVE_SUFFIXES, "write")
    units = units or DEFAULT_UNITS[suffix]
    scale = _check_units(units)
    if not isinstance(mesh, FaceMesh):
        raise TypeError(f"save_mesh expects a FaceMesh, got {type(mesh).__name__}")
    meta = _file_meta(mesh, units)
    vertices = mesh.vertices.astype(np.float64) * scale
    if suffix == ".obj":
        return _save_obj(mesh, vertices, meta, path)
    if suffix == ".ply":
        return _save_ply(mesh, vertices, meta, path)
    return _save_glb(mesh, vertices, meta, path)


def _header_lines(meta: dict) -> list[str]:
    """Human-readable provenance lines (without comment prefix)."""
    lines = [f"facefit {__version__}: neutral 3D face mesh"]
    for key, value in meta.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            lines.append(f"{key}: {str(value).splitlines()[0] if str(value) else ''}")
    return lines


def _format_rows(fmt: str, rows: np.ndarray) -> str:
    """'\\n'-joined ``fmt % row`` for every row of a 2-D array (plus trailing newline)."""
    if len(rows) == 0:
        return ""
    # one %-format over the whole array: about twice as fast as a per-row join
    return ((fmt + "\n") * len(rows)) % tuple(rows.ravel().tolist())


_BACKGROUND: list = []
# a forked child (a batch worker that writes files) inherits the list but not the thread
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BACKGROUND.clear)


def _background():
    """One helper thread for work that releases the GIL (PNG encoding) while the calling
    thread formats text; created on first use."""
    if not _BACKGROUND:
        from concurrent.futures import ThreadPoolExecutor

        _BACKGROUND.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="facefit-png"))
    return _BACKGROUND[0]


_ROWS_CACHE: dict = {}
_ROWS_CACHE_MAX = 8


def _format_rows_cached(fmt: str, rows: np.ndarray) -> str:
    """:func:`_format_rows` for rows that repeat from mesh to mesh (UVs, face indices of
    one model): the text is kept for the last few distinct arrays (by content hash), so a
    folder of faces of one model formats them once."""
    import hashlib

    rows = np.ascontiguousarray(rows)
    key = (fmt, rows.dtype.str, rows.shape, hashlib.blake2b(rows.data, digest_size=16).digest())
    text = _ROWS_CACHE.get(key)
    if text is None:
        text = _format_rows(fmt, rows)
        if len(_ROWS_CACHE) >= _ROWS_CACHE_MAX:
            _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
        _ROWS_CACHE[key] = text
    return text


def _save_obj(mesh: FaceMesh, vertices: np.ndarray, meta: dict, path: Path) -> list[Path]:
    """OBJ text (+ .mtl/.png when textured); all files committed together at the end.

    The three files are prepared as temporaries first; only when all are complete are
    they renamed into place, texture and material before the OBJ that refers to them.
    A failure while preparing leaves none of them behind.
    """
    bake = mesh.texture is None and mesh.uv is not None and mesh.colors is not None
    textured = bake or mesh.texture is not None
    material = _VERTEX_COLOR_MATERIAL if bake else _MATERIAL_NAME
    mtl_path, png_path = obj_companions(path)
    if textured:  # baking + PNG encoding (about 10 ms for 512 px, GIL released) beside the OBJ text
        png_job = _background().submit(_texture_png, mesh, bake)
    out = io.StringIO()
    for line in _header_lines(meta):
        out.write(f"# {line}\n")
    out.write(f"# {_META_TAG}: {_meta_json(meta)}\n")
    if textured:
        out.write(f"mtllib {mtl_path.name}\n")
    out.write(f"o {path.stem}\n")
    if mesh.colors is not None:
        out.write(_format_rows("v %.9g %.9g %.9g %.6g %.6g %.6g",
                               np.hstack([vertices, np.clip(mesh.colors, 0.0, 1.0)])))
    else:
        out.write(_format_rows("v %.9g %.9g %.9g", vertices))
    if mesh.uv is not None:
        out.write(_format_rows_cached("vt %.9g %.9g", mesh.uv))
    if textured:
        out.write(f"usemtl {material}\n")
    if mesh.uv is not None:
        corners = np.stack([mesh.triangles + 1, mesh.uv_triangles + 1], axis=2).reshape(-1, 6)
        out.write(_format_rows_cached("f %d/%d %d/%d %d/%d", corners))
    else:
        out.write(_format_rows_cached("f %d %d %d", mesh.triangles + 1))

    if textured:
        png = png_job.result()
    # ExitStack exits last-in first-out: enter the OBJ first so it is committed last.
    with contextlib.ExitStack() as stack:
        f_obj = stack.enter_context(atomic_write(path, "w", encoding="utf-8", newline="\n"))
        if textured:
            f_mtl = stack.enter_context(
                atomic_write(mtl_path, "w", encoding="utf-8", newline="\n")
            )
            f_png = stack.enter_context(atomic_write(png_path, "wb"))
            f_png.write(png)
            f_mtl.write(f"# facefit {__version__}\n")
            if bake:
                f_mtl.write(f"# {png_path.name}: the vertex colours of {path.name} baked into its UV layout\n")
            f_mtl.write(f"newmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n")
            f_mtl.write(f"map_Kd {png_path.name}\n")
        f_obj.write(out.getvalue())
    return [path, mtl_path, png_path] if textured else [path]


def obj_companions(path: str | os.PathLike) -> tuple[Path, Path]:
    """The material and texture files an OBJ written by :func:`save_mesh` may have beside it:
    ``<stem>.mtl`` and ``<stem>_texture.png`` (never ``<stem>.png``, which may be the
    photo the mesh was made from)."""
    path = Path(path)
    return path.with_suffix(".mtl"), path.with_name(path.stem + "_texture.png")


def _texture_png(mesh: FaceMesh, bake: bool) -> bytes:
    """PNG bytes of the mesh's texture, or (``bake``) of its vertex colours baked into its UVs."""
    if bake:
        from facefit.texturing import BAKE_SIZE, bake_vertex_colors

        texture = bake_vertex_colors(mesh.uv, mesh.uv_triangles, mesh.triangles, mesh.colors, BAKE_SIZE)
    else:
        texture = mesh.texture
    # baked vertex colours are smooth and re-made on every save: fastest deflate, and the
    # "up" filter alone (smooth rows: 1/3 less time than libpng's adaptive choice, and smaller)
    return _encode_png(texture, level=1, png_filter="up") if bake else _encode_png(texture, level=6)


def _encode_png(image: np.ndarray, level: int = 6, png_filter: str | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB ``image`` (OpenCV; zlib ``level`` 0-9;
    ``png_filter`` "up"/"sub"/"none" for one row filter, None: libpng's adaptive choice)."""
    import cv2

    image = np.ascontiguousarray(image, dtype=np.uint8)
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    flag = getattr(cv2, f"IMWRITE_PNG_FILTER_{(png_filter or '').upper()}", None) if png_filter else None
    if flag is not None and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
        params += [cv2.IMWRITE_PNG_FILTER, flag]
    ok, buf = cv2.imencode(".png", image[..., ::-1], params)
    if not ok:
        raise FacefitError("could not encode the texture as PNG")
    return buf.tobytes()


def _save_ply(mesh: FaceMesh, vertices: np.ndarray, meta: dict, path: Path) -> list[Path]:
    has_color = mesh.colors is not None
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {line}" for line in _header_lines(meta)]
    header.append(f"comment {_META_TAG} {_meta_json(meta)}")
    header += [f"element vertex {mesh.num_vertices}",
               "property float x", "property float y", "property float z"]
    vdtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if has_color:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        vdtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header += [f"element face {mesh.num_triangles}",
               "property list uchar int vertex_indices", "end_header"]
    vdata = np.empty(mesh.num_vertices, dtype=vdtype)
    vdata["x"], vdata["y"], vdata["z"] = vertices.T
    if has_color:
        c = _colors_u8(mesh.colors)
        vdata["red"], vdata["green"], vdata["blue"] = c.T
    fdata = np.empty(mesh.num_triangles, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    fdata["n"] = 3
    fdata["i"] = mesh.triangles
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii", errors="replace"))
        f.write(vdata.tobytes())
        f.write(fdata.tobytes())
    return [path]


def _unweld(mesh: FaceMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, uv) corner pair, for formats with a single index.

    Returns:
        ids: (N,) int64 original vertex index of each new vertex (every original vertex
            appears at least once, unreferenced ones with uv (0, 0)),
        uv_index: (N,) int64 index into mesh.uv, or -1 for unreferenced vertices,
        faces: (F, 3) int64 triangles over the new vertices.
    """
    pairs = np.stack([mesh.triangles.ravel(), mesh.uv_triangles.ravel()], axis=1)
    unused = np.setdiff1d(np.arange(mesh.num_vertices), mesh.triangles.ravel())
    pairs = np.concatenate([pairs, np.stack([unused, np.full_like(unused, -1)], axis=1)])
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[: mesh.triangles.size].reshape(-1, 3)
    return unique[:, 0], unique[:, 1], faces


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals (zero-area/unreferenced: +z)."""
    tri = vertices[triangles]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 0, normals / np.maximum(length, 1e-30), [0.0, 0.0, 1.0])
    return normals


def _save_glb(mesh: FaceMesh, vertices: np.ndarray, meta: dict, path: Path) -> list[Path]:
    import trimesh
    from trimesh.exchange.gltf import export_glb

    normals = _vertex_normals(vertices, mesh.triangles)
    rgba = None
    if mesh.colors is not None:
        rgba = np.concatenate(
            [_colors_u8(mesh.colors), np.full((mesh.num_vertices, 1), 255, np.uint8)], axis=1
        )
    ids = uv = None
    if mesh.uv is not None:
        ids, uv_index, faces = _unweld(mesh)
        uv = np.where(uv_index[:, None] >= 0, mesh.uv[np.maximum(uv_index, 0)], 0.0)
        tm = trimesh.Trimesh(vertices[ids], faces, vertex_normals=normals[ids], process=False)
        tm.vertex_attributes[_VERTEX_ID_ATTR] = ids.astype(np.float32)
    else:
        tm = trimesh.Trimesh(vertices, mesh.triangles, vertex_normals=normals, process=False)
    # Viewers show baseColorFactor x baseColorTexture x COLOR_0 (glTF 2.0, 3.9.2); the
    # default material (no material at all, or trimesh's for UVs without one) is metallic
    # or grey and would darken the colours.
    textured = mesh.texture is not None
    extra = {}
    if textured:
        from PIL import Image

        extra["baseColorTexture"] = Image.fromarray(mesh.texture, "RGB")
    material = trimesh.visual.material.PBRMaterial(
        name=_MATERIAL_NAME if textured else _VERTEX_COLOR_MATERIAL,
        baseColorFactor=[1.0, 1.0, 1.0, 1.0],
        metallicFactor=0.0,
        roughnessFactor=1.0,
        **extra,
    )
    tm.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    if rgba is not None:
        per_vertex = rgba if ids is None else rgba[ids]
        if mesh.texture is None:
            tm.visual.vertex_attributes["color"] = per_vertex  # -> COLOR_0
        else:  # not COLOR_0: viewers would multiply it with the texture
            tm.vertex_attributes[_COLOR_ATTR] = per_vertex

    def add_provenance(tree: dict) -> None:
        asset = tree.setdefault("asset", {"version": "2.0"})
        asset["generator"] = f"facefit {__version__} (trimesh)"
        asset.setdefault("extras", {})["facefit"] = json.loads(_meta_json(meta))

    data = export_glb(trimesh.Scene(tm), include_normals=True, tree_postprocessor=add_provenance)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return [path]


# --------------------------------------------------------------------------- loading


def load_mesh(path: str | os.PathLike, units: str | None = None) -> FaceMesh:
    """Read a mesh file into a :class:`FaceMesh` in millimetres.

    Args:
        path: ``.obj``, ``.ply``, ``.glb``, ``.gltf``, ``.stl`` or ``.off``.
        units: unit of the file's coordinates, overriding what the file records.
            None: the recorded unit for facefit files, otherwise metres for glTF and
            millimetres for everything else.
    Returns:
        FaceMesh with vertices (V, 3) in mm in the file's vertex order (nothing merged,
        removed or reordered), triangles (polygons fan-triangulated), colours / UVs /
        texture / meta when present. ``meta["units"]`` is "mm" and
        ``meta["file_units"]`` the unit the file was in.
    Raises:
        InvalidFileError: missing, unreadable or corrupt file (also: not glTF 2.0,
            non-finite vertex coordinates).
        FacefitError: unsupported suffix or units.
    """
    path = Path(path)
    suffix = _suffix(path, LOAD_SUFFIXES, "read")
    if units is not None:
        _check_units(units)
    if not path.is_file():
        raise InvalidFileError(f"cannot read {path}: no such file")
    try:
        if path.stat().st_size == 0:
            raise InvalidFileError(f"cannot read mesh {path}: empty file")
        if suffix == ".obj":
            raw = _load_obj(path)
        else:
            raw = _load_trimesh(path, suffix)
    except FacefitError:
        raise
    except (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError, struct.error,
            zlib.error, EOFError, NotImplementedError, AssertionError, RecursionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            msg = f"missing {msg}"
        elif isinstance(exc, FileNotFoundError):  # e.g. a .gltf's external buffer
            msg = f"a file it refers to is missing: {exc.filename or msg}"
        raise InvalidFileError(f"cannot read mesh {path}: {msg}") from exc

    recorded = raw.pop("meta")
    file_units = units or (recorded or {}).get("units") or ASSUMED_UNITS.get(suffix, "mm")
    if file_units not in UNIT_SCALE:
        raise InvalidFileError(f"cannot read mesh {path}: unknown recorded units {file_units!r}")
    vertices = raw.pop("vertices").astype(np.float64) / UNIT_SCALE[file_units]
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise InvalidFileError(
            f"cannot read mesh {path}: {int(bad.sum())} of {len(vertices)} vertices have non-finite "
            f"(NaN or infinite) coordinates, the first is vertex number {int(np.argmax(bad)) + 1}"
        )
    for key in ("colors", "uv"):
        if raw.get(key) is not None and not np.isfinite(raw[key]).all():
            raise InvalidFileError(f"cannot read mesh {path}: non-finite (NaN or infinite) {key}")
    try:
        return FaceMesh(vertices=vertices, meta=_loaded_meta(recorded, file_units), **raw)
    except ValueError as exc:
        raise InvalidFileError(f"cannot read mesh {path}: {exc}") from exc


def _parse_meta_json(text: str) -> dict | None:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) else None


def _load_obj(path: Path) -> dict:
    """Parse an OBJ (own parser: keeps separate v/vt indexing, vertex order, colours).

    Supports ``v x y z [r g b]``, ``vt u v``, ``f`` with ``a``, ``a/b``, ``a//c``,
    ``a/b/c`` corners, negative indices, polygons (fan-triangulated), ``mtllib`` +
    ``usemtl`` with ``map_Kd`` (texture of the first material used).
    """
    verts: list[list[float]] = []
    colors: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[tuple[int, int, int]] = []
    uv_faces: list[tuple[int, int, int]] = []
    faces_without_uv = 0
    meta = None
    mtllibs: list[str] = []
    first_material: str | None = None
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            body = line[1:].lstrip()
            if meta is None and body.startswith(_META_TAG + ":"):
                meta = _parse_meta_json(body[len(_META_TAG) + 1:])
            continue
        parts = line.split()
        tag = parts[0]
        try:
            if tag == "v":
                nums = [float(p) for p in parts[1:]]
                if len(nums) < 3:
                    raise ValueError("vertex with fewer than 3 coordinates")
                verts.append(nums[:3])
                if len(nums) >= 6:
                    colors.append(nums[-3:])
            elif tag == "vt":
                nums = [float(p) for p in parts[1:3]]
                if len(nums) == 1:
                    nums.append(0.0)
                uvs.append(nums)
            elif tag == "f":
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) < 3:
                    raise ValueError("face with fewer than 3 corners")
                vi = [_obj_index(c[0], len(verts)) for c in corners]
                has_uv = all(len(c) > 1 and c[1] for c in corners)
                ti = [_obj_index(c[1], len(uvs)) for c in corners] if has_uv else None
                for k in range(1, len(corners) - 1):
                    faces.append((vi[0], vi[k], vi[k + 1]))
                    if ti is not None:
                        uv_faces.append((ti[0], ti[k], ti[k + 1]))
                    else:
                        faces_without_uv += 1
            elif tag == "mtllib":
                mtllibs.append(line[len("mtllib"):].strip())
            elif tag == "usemtl" and first_material is None and len(parts) > 1:
                first_material = parts[1]
        except (ValueError, IndexError) as exc:
            raise ValueError(f"line {lineno}: {exc}") from exc

    vertices = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    raw: dict[str, Any] = {
        "vertices": vertices,
        "triangles": np.asarray(faces, dtype=np.int64).reshape(-1, 3),
        "meta": meta,
    }
    if colors and len(colors) == len(verts):
        c = np.asarray(colors, dtype=np.float64)
        if c.max(initial=0.0) > 1.0:  # some writers use 0..255
            c = c / 255.0
        raw["colors"] = c
    if uvs and faces and faces_without_uv == 0:
        raw["uv"] = np.asarray(uvs, dtype=np.float64)
        raw["uv_triangles"] = np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3)
        if first_material == _VERTEX_COLOR_MATERIAL and "colors" in raw:
            raw["texture"] = None  # facefit's bake of the colours just read: keep them exact
        else:
            raw["texture"] = _obj_texture(path, mtllibs, first_material)
    return raw


def _obj_index(token: str, count: int) -> int:
    """1-based (or negative, relative) OBJ index -> 0-based."""
    i = int(token)
    if i > 0:
        return i - 1
    if i < 0:
        return count + i
    raise ValueError("OBJ index 0")


def _obj_texture(obj_path: Path, mtllibs: list[str], material: str | None) -> np.ndarray | None:
    """(H, W, 3) uint8 diffuse texture (map_Kd) of ``material`` from the OBJ's .mtl files."""
    from PIL import Image

    for lib in mtllibs:
        mtl_path = obj_path.parent / lib
        if not mtl_path.is_file():
            warnings.warn(f"{obj_path}: material library {lib!r} not found", stacklevel=3)
            continue
        current = None
        for line in mtl_path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split()
            if not parts:
                continue
            if parts[0] == "newmtl":
                current = parts[1] if len(parts) > 1 else ""
            elif parts[0] == "map_Kd" and len(parts) > 1 and (material is None or current == material):
                tex_path = mtl_path.parent / parts[-1]  # options (-s, -o ...) come first
                if not tex_path.is_file():
                    warnings.warn(f"{obj_path}: texture {parts[-1]!r} not found", stacklevel=3)
                    return None
                with Image.open(tex_path) as img:
                    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return None


def _glb_json(path: Path) -> dict | None:
    """The JSON chunk of a binary glTF file (None if it is not a valid GLB)."""
    with open(path, "rb") as f:
        header = f.read(20)
        if len(header) < 20 or header[:4] != b"glTF":
            return None
        length, chunk_type = struct.unpack("<II", header[12:20])
        if chunk_type != 0x4E4F534A:  # b"JSON"
            return None
        return json.loads(f.read(length).decode("utf-8"))


def _recorded_meta_ply(path: Path) -> dict | None:
    """facefit metadata from a PLY header comment, if any."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    for line in head[: end if end >= 0 else len(head)].decode("ascii", "replace").splitlines():
        line = line.strip()
        prefix = f"comment {_META_TAG} "
        if line.startswith(prefix):
            return _parse_meta_json(line[len(prefix):])
    return None


def _load_trimesh(path: Path, suffix: str) -> dict:
    """Load through trimesh without processing (vertex order kept)."""
    import trimesh

    meta = None
    if suffix == ".ply":
        meta = _recorded_meta_ply(path)
    elif suffix == ".gltf":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a glTF (JSON) file: {exc}") from exc
    elif suffix == ".glb":
        tree = _glb_json(path)
        if tree is not None:
            extras = tree.get("asset", {}).get("extras", {})
            if isinstance(extras, dict) and isinstance(extras.get("facefit"), dict):
                meta = extras["facefit"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = _single_mesh(trimesh.load(str(path), process=False, maintain_order=True))
    if not isinstance(tm, trimesh.Trimesh) or len(tm.vertices) == 0:
        raise ValueError("no triangle mesh found")

    vertices = np.asarray(tm.vertices, dtype=np.float64)
    faces = np.asarray(tm.faces, dtype=np.int64).reshape(-1, 3)
    custom = tm.vertex_attributes if hasattr(tm, "vertex_attributes") else {}
    visual = tm.visual
    colors = uv = texture = None
    if getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
    elif getattr(visual, "kind", None) == "texture":
        if visual.uv is not None and len(visual.uv) == len(vertices):
            uv = np.asarray(visual.uv, dtype=np.float64)
        vcol = visual.vertex_attributes.get("color") if hasattr(visual, "vertex_attributes") else None
        if vcol is not None and len(vcol) == len(vertices):
            colors = _normalised_colors(np.asarray(vcol))
        material = getattr(visual, "material", None)
        if uv is not None and (meta is None or getattr(material, "name", None) == _MATERIAL_NAME):
            # a facefit file has a texture only in its own material (older versions wrote
            # trimesh's default 2x2 grey one for meshes with UVs but no texture)
            texture = _trimesh_texture(material)
    ext_colors = custom.get(_COLOR_ATTR)
    if colors is None and ext_colors is not None and len(ext_colors) == len(vertices):
        colors = _normalised_colors(np.asarray(ext_colors))

    raw: dict[str, Any] = {"meta": meta}
    ids = custom.get(_VERTEX_ID_ATTR)
    if ids is not None and len(ids) == len(vertices):
        # weld a facefit GLB back: new vertex k is original vertex ids[k]
        ids = np.rint(np.asarray(ids, dtype=np.float64).reshape(-1)).astype(np.int64)
        n = int(ids.max()) + 1
        welded = np.zeros((n, 3))
        welded[ids] = vertices
        raw.update(vertices=welded, triangles=ids[faces])
        if colors is not None:
            wc = np.zeros((n, 3))
            wc[ids] = colors
            raw["colors"] = wc
        if uv is not None:
            raw.update(uv=uv, uv_triangles=faces, texture=texture)
        return raw
    raw.update(vertices=vertices, triangles=faces, colors=colors)
    if uv is not None:
        raw.update(uv=uv, uv_triangles=faces, texture=texture)
    return raw


def _normalised_colors(c: np.ndarray) -> np.ndarray:
    """(V, 3|4) float or normalised-integer colours -> (V, 3) float64 RGB in [0, 1]."""
    colors = c.reshape(len(c), -1)[:, :3].astype(np.float64)
    if c.dtype.kind in "ui":  # glTF normalised integer colours
        colors = colors / float(np.iinfo(c.dtype).max)
    return colors


def _single_mesh(loaded: Any) -> Any:
    """One Trimesh from what trimesh.load returned.

    A scene holding a single mesh placed with an identity transform (what save_mesh
    writes) is returned as is, keeping its visuals and custom vertex attributes (which
    trimesh's scene concatenation drops); other scenes are flattened (transforms
    applied, meshes concatenated).
    """
    import trimesh

    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    if isinstance(loaded, trimesh.Scene):
        nodes = loaded.graph.nodes_geometry
        if len(nodes) == 1:
            transform, name = loaded.graph[nodes[0]]
            geom = loaded.geometry.get(name)
            if isinstance(geom, trimesh.Trimesh) and np.allclose(transform, np.eye(4)):
                return geom
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loaded.to_mesh()
    return loaded


def _trimesh_texture(material: Any) -> np.ndarray | None:
    """(H, W, 3) uint8 base-colour image of a trimesh material, if any."""
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    if image is None:
        return None
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
