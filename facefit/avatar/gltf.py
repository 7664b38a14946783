"""glTF 2.0 binary (GLB) writer for animatable avatars: morph targets + animation.

trimesh (which :func:`facefit.mesh_io.save_mesh` uses for GLB) writes no morph targets,
so avatars are written here directly (numpy + json + struct), following the same
conventions as facefit's plain GLBs (docs/conventions.md):

* metres by default (``units``), provenance in ``asset.extras.facefit``, generator
  ``facefit <version>``;
* one white, non-metallic, fully rough material; per-vertex colour in ``COLOR_0``
  (uint8 RGBA, normalised) unless the mesh has a texture, which then becomes the
  material's ``baseColorTexture`` (PNG) and the vertex colours travel in ``_FACEFIT_COLOR``;
* a mesh with UVs is unwelded into one glTF vertex per distinct (vertex, uv) pair, with
  ``_FACEFIT_VERTEX_ID`` (float) so that :func:`facefit.mesh_io.load_mesh` welds it back;
  ``TEXCOORD_0`` has v flipped (glTF's origin is the top-left of the image).

Morph targets (glTF 2.0, 3.7.2.2): each target is a ``POSITION`` displacement (file units)
stored as a *sparse* accessor when fewer than ~2/3 of the vertices move (blend shapes
usually touch a small part of the head; displacements under 1 µm count as none); every ``POSITION`` accessor has ``min``/``max``.
Target names are written to ``mesh.extras.targetNames`` (what three.js, Babylon.js and
Blender read), default weights to ``mesh.weights``.

Animation (optional, :class:`AvatarAnimation`): one glTF animation on the mesh's node with
per-frame times, morph weights (``weights`` channel) and/or node rotations (unit
quaternions ``x, y, z, w``) and translations, ``LINEAR`` interpolation (rotations are
slerped by viewers). The node sits at the model origin; rotations turn the head about it.

Typical use::

    from facefit.avatar.gltf import save_glb_avatar, AvatarAnimation
    save_glb_avatar(mesh, "me.glb", {"jawOpen": offsets_mm}, default_weights={"jawOpen": 0.2})
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from facefit import __version__
from facefit.atomic import atomic_write
from facefit.errors import FacefitError

__all__ = ["AvatarAnimation", "save_glb_avatar", "read_glb", "accessor_array", "SPARSE_FRACTION"]

#: a target is stored sparse when at most this share of its vertices move
SPARSE_FRACTION = 0.66
#: displacements shorter than this (mm) are written as exactly 0 (ICT-FaceKit's blend shapes
#: carry sub-micron noise from their text files on most of the head)
ZERO_MM = 1e-3

_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class AvatarAnimation:
    """A sampled animation of the avatar's node.

    Attributes:
        times: (T,) seconds, strictly increasing, T >= 1.
        weights: (T, K) morph weights per frame, K = number of morph targets, in the
            order of the ``morph_targets`` mapping given to :func:`save_glb_avatar`; or a
            mapping name -> (T,) (targets not named stay 0); or None.
        rotations: (T, 4) unit quaternions ``(x, y, z, w)`` (glTF order) of the head node,
            or None.
        translations: (T, 3) node translations in millimetres (converted to the file's
            units), or None.
        name: the animation's name.
    """

    times: np.ndarray
    weights: np.ndarray | Mapping[str, np.ndarray] | None = None
    rotations: np.ndarray | None = None
    translations: np.ndarray | None = None
    name: str = "facefit_track"
    extras: dict = field(default_factory=dict)


class _Builder:
    """Accumulates the binary buffer, bufferViews and accessors of one GLB."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.length) % 4
        if pad:
            self.chunks.append(b"\0" * pad)
            self.length += pad
        v = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        self.chunks.append(data)
        self.length += len(data)
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, *, target: int | None = _ARRAY_BUFFER,
                 minmax: bool = False, normalized: bool = False) -> int:
        a = np.ascontiguousarray(array)
        ctype = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UBYTE, np.dtype(np.uint32): _UINT}[a.dtype]
        acc = {"bufferView": self.view(a.tobytes(), target), "componentType": ctype,
               "count": int(a.shape[0]), "type": kind}
        if normalized:
            acc["normalized"] = True
        if minmax:
            flat = a.reshape(len(a), -1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def sparse_vec3(self, offsets: np.ndarray, zero: float) -> int:
        """A VEC3 float accessor of ``offsets`` (N, 3), sparse over its rows longer than ``zero``."""
        offsets = np.array(offsets, np.float32)
        still = np.linalg.norm(offsets, axis=1) < zero
        offsets[still] = 0.0
        moving = np.nonzero(~still)[0].astype(np.uint32)
        if len(moving) > SPARSE_FRACTION * len(offsets):
            return self.accessor(offsets, "VEC3", minmax=True)
        if len(moving) == 0:  # glTF needs sparse.count >= 1: store one explicit zero
            moving = np.zeros(1, np.uint32)
        acc = {
            "componentType": _FLOAT, "count": int(len(offsets)), "type": "VEC3",
            "min": [float(x) for x in offsets.min(0)],
            "max": [float(x) for x in offsets.max(0)],
            "sparse": {
                "count": int(len(moving)),
                "indices": {"bufferView": self.view(moving.tobytes()), "componentType": _UINT},
                "values": {"bufferView": self.view(offsets[moving].tobytes())},
            },
        }
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        data = b"".join(self.chunks)
        return data + b"\0" * ((-len(data)) % 4)


def _weights_matrix(weights, names: list[str], n_frames: int) -> np.ndarray:
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in names]
        if unknown:
            raise FacefitError(f"animation weights for unknown morph target(s): {', '.join(map(str, unknown[:5]))}")
        w = np.zeros((n_frames, len(names)), np.float32)
        for k, v in weights.items():
            w[:, names.index(k)] = np.asarray(v, np.float32).reshape(n_frames)
        return w
    w = np.asarray(weights, np.float32)
    if w.shape != (n_frames, len(names)):
        raise FacefitError(f"animation weights must be (frames, targets) = ({n_frames}, {len(names)}), got {w.shape}")
    return w


def _default_weights(default_weights, names: list[str]) -> list[float]:
    if default_weights is None:
        return [0.0] * len(names)
    if isinstance(default_weights, Mapping):
        unknown = [k for k in default_weights if k not in names]
        if unknown:
            raise FacefitError(f"default weights for unknown morph target(s): {', '.join(map(str, unknown[:5]))}")
        w = np.array([float(default_weights.get(n, 0.0)) for n in names])
    else:
        w = np.asarray(default_weights, np.float64).reshape(-1)
    if len(w) != len(names):
        raise FacefitError(f"default_weights has {len(w)} values for {len(names)} morph targets")
    if not np.isfinite(w).all():
        raise FacefitError("default_weights must be finite")
    return [float(x) for x in w]


def save_glb_avatar(
    mesh,
    path: str | os.PathLike,
    morph_targets: Mapping[str, np.ndarray] | None = None,
    default_weights: Mapping[str, float] | Sequence[float] | None = None,
    animation: AvatarAnimation | None = None,
    units: str | None = None,
    extras: Mapping | None = None,
) -> list[Path]:
    """Write a :class:`~facefit.mesh_io.FaceMesh` as a GLB with morph targets (and animation).

    Args:
        mesh: FaceMesh in mm (colours, UVs, texture and meta are used as in ``save_mesh``).
        path: output ``.glb`` (written atomically).
        morph_targets: ordered mapping target name -> (V, 3) vertex displacements in mm
            (same vertex order as ``mesh.vertices``). None/empty: a plain mesh.
        default_weights: the mesh's rest weights: mapping name -> weight (others 0) or a
            sequence in target order. None: all 0.
        animation: optional :class:`AvatarAnimation` (times, morph weights, rotations,
            translations).
        units: "mm", "cm" or "m" (default "m", as glTF viewers expect).
        extras: more JSON for ``asset.extras.facefit`` (merged over ``mesh.meta``).
    Returns:
        ``[path]``.
    Raises:
        FacefitError: shapes that do not fit, unknown target names, non-finite values,
            bad units or suffix.
    """
    from facefit.mesh_io import UNIT_SCALE, _colors_u8, _encode_png, _file_meta, _meta_json, _unweld, _vertex_normals

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise FacefitError(f"cannot write {path}: an avatar is written as .glb")
    units = units or "m"
    if units not in UNIT_SCALE:
        raise FacefitError(f"unknown units {units!r}; use one of: {', '.join(UNIT_SCALE)}")
    scale = UNIT_SCALE[units]
    targets = dict(morph_targets or {})
    names = [str(n) for n in targets]
    V = mesh.num_vertices
    offsets = []
    for n in names:
        d = np.asarray(targets[n], np.float64)
        if d.shape != (V, 3):
            raise FacefitError(f"morph target {n!r} must be ({V}, 3), got {d.shape}")
        if not np.isfinite(d).all():
            raise FacefitError(f"morph target {n!r} has non-finite values")
        offsets.append(d)
    if not np.isfinite(mesh.vertices).all():
        raise FacefitError("the mesh has non-finite vertices")

    # one glTF vertex per (vertex, uv) pair when there are UVs
    if mesh.uv is not None:
        ids, uv_index, faces = _unweld(mesh)
        uv = np.where(uv_index[:, None] >= 0, mesh.uv[np.maximum(uv_index, 0)], 0.0)
    else:
        ids, faces, uv = np.arange(V), mesh.triangles, None
    verts = (mesh.vertices.astype(np.float64) * scale)
    normals = _vertex_normals(verts, mesh.triangles)

    b = _Builder()
    attrs = {
        "POSITION": b.accessor(verts[ids].astype(np.float32), "VEC3", minmax=True),
        "NORMAL": b.accessor(normals[ids].astype(np.float32), "VEC3"),
    }
    textured = mesh.texture is not None
    if uv is not None:
        tc = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1).astype(np.float32)
        attrs["TEXCOORD_0"] = b.accessor(tc, "VEC2")
    if mesh.colors is not None:
        rgba = np.concatenate([_colors_u8(mesh.colors), np.full((V, 1), 255, np.uint8)], 1)[ids]
        attrs["_FACEFIT_COLOR" if textured else "COLOR_0"] = b.accessor(rgba, "VEC4", normalized=True)
    if mesh.uv is not None:
        attrs["_FACEFIT_VERTEX_ID"] = b.accessor(ids.astype(np.float32), "SCALAR")
    primitive = {"attributes": attrs, "mode": 4,
                 "indices": b.accessor(faces.astype(np.uint32).reshape(-1), "SCALAR", target=_ELEMENT_ARRAY_BUFFER),
                 "material": 0}
    if names:
        primitive["targets"] = [{"POSITION": b.sparse_vec3((d * scale)[ids], ZERO_MM * scale)} for d in offsets]

    material = {"name": "facefit_texture" if textured else "facefit_vertex_colors",
                "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                         "roughnessFactor": 1.0}}
    tree: dict = {}
    if textured:
        img = b.view(_encode_png(mesh.texture))
        tree["images"] = [{"bufferView": img, "mimeType": "image/png"}]
        tree["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        tree["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0, "texCoord": 0}

    gl_mesh: dict = {"name": path.stem, "primitives": [primitive]}
    if names:
        gl_mesh["weights"] = _default_weights(default_weights, names)
        gl_mesh["extras"] = {"targetNames": names}
    elif default_weights:
        raise FacefitError("default_weights given without morph targets")
    node = {"name": path.stem, "mesh": 0}
    meta = _file_meta(mesh, units)
    if names:
        meta["morph_targets"] = len(names)
    meta.update(extras or {})

    animations = []
    if animation is not None:
        animations.append(_animation(b, animation, names, scale))

    tree.update({
        "asset": {"version": "2.0", "generator": f"facefit {__version__}",
                  "extras": {"facefit": json.loads(_meta_json(meta))}},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [node],
        "meshes": [gl_mesh],
        "materials": [material],
        "accessors": b.accessors,
        "bufferViews": b.views,
    })
    if animations:
        tree["animations"] = animations
    binary = b.binary()
    tree["buffers"] = [{"byteLength": len(binary)}]
    js = json.dumps(tree, separators=(",", ":"), allow_nan=False).encode("utf-8")
    js += b" " * ((-len(js)) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    data = b"".join([struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(js), b"JSON"), js,
                     struct.pack("<I4s", len(binary), b"BIN\0"), binary])
    with atomic_write(path, "wb") as f:
        f.write(data)
    return [path]


def _animation(b: _Builder, anim: AvatarAnimation, names: list[str], scale: float) -> dict:
    t = np.asarray(anim.times, np.float32).reshape(-1)
    T = len(t)
    if T == 0 or not np.isfinite(t).all() or (T > 1 and not (np.diff(t) > 0).all()) or t[0] < 0:
        raise FacefitError("animation times must be finite, >= 0 and strictly increasing (at least one frame)")
    time_acc = b.accessor(t, "SCALAR", target=None, minmax=True)
    samplers, channels = [], []

    def add(output: int, path: str):
        samplers.append({"input": time_acc, "output": output, "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": path}})

    if anim.weights is not None:
        if not names:
            raise FacefitError("animation weights need morph targets")
        w = _weights_matrix(anim.weights, names, T)
        if not np.isfinite(w).all():
            raise FacefitError("animation weights must be finite")
        add(b.accessor(w.reshape(-1), "SCALAR", target=None), "weights")
    if anim.rotations is not None:
        q = np.asarray(anim.rotations, np.float64)
        if q.shape != (T, 4) or not np.isfinite(q).all():
            raise FacefitError(f"animation rotations must be finite (frames, 4) = ({T}, 4) quaternions (x, y, z, w)")
        n = np.linalg.norm(q, axis=1, keepdims=True)
        if (n < 1e-8).any():
            raise FacefitError("animation rotations contain a zero quaternion")
        add(b.accessor((q / n).astype(np.float32), "VEC4", target=None), "rotation")
    if anim.translations is not None:
        tr = np.asarray(anim.translations, np.float64)
        if tr.shape != (T, 3) or not np.isfinite(tr).all():
            raise FacefitError(f"animation translations must be finite (frames, 3) = ({T}, 3)")
        add(b.accessor((tr * scale).astype(np.float32), "VEC3", target=None), "translation")
    if not channels:
        raise FacefitError("an animation needs weights, rotations or translations")
    out = {"name": anim.name, "samplers": samplers, "channels": channels}
    if anim.extras:
        out["extras"] = json.loads(json.dumps(anim.extras, default=str))
    return out


def read_glb(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The JSON tree and the binary chunk of a GLB (for tests and tools).

    Raises:
        FacefitError: not a GLB 2.0 file.
    """
    data = Path(path).read_bytes()
    if len(data) < 20 or data[:4] != b"glTF":
        raise FacefitError(f"{path}: not a binary glTF file")
    version, total = struct.unpack("<II", data[4:12])
    if version != 2 or total != len(data):
        raise FacefitError(f"{path}: not a complete glTF 2.0 binary")
    jlen, jtype = struct.unpack("<I4s", data[12:20])
    if jtype != b"JSON":
        raise FacefitError(f"{path}: first chunk is not JSON")
    tree = json.loads(data[20:20 + jlen])
    rest = data[20 + jlen:]
    binary = b""
    if len(rest) >= 8:
        blen, btype = struct.unpack("<I4s", rest[:8])
        if btype == b"BIN\0":
            binary = rest[8:8 + blen]
    return tree, binary


def accessor_array(tree: dict, binary: bytes, index: int) -> np.ndarray:
    """Decode accessor ``index`` (dense or sparse, float/uint8/uint32) to a numpy array (count, n)."""
    acc = tree["accessors"][index]
    n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dt = {_FLOAT: np.float32, _UBYTE: np.uint8, _UINT: np.uint32, 5123: np.uint16}[acc["componentType"]]

    def view(vi: int, offset: int, count: int, dtype, comps: int) -> np.ndarray:
        v = tree["bufferViews"][vi]
        start = v.get("byteOffset", 0) + offset
        return np.frombuffer(binary, dtype, count * comps, start).reshape(count, comps)

    if "bufferView" in acc:
        out = view(acc["bufferView"], acc.get("byteOffset", 0), acc["count"], dt, n).copy()
    else:
        out = np.zeros((acc["count"], n), dt)
    sp = acc.get("sparse")
    if sp:
        it = {_UINT: np.uint32, 5123: np.uint16, _UBYTE: np.uint8}[sp["indices"]["componentType"]]
        idx = view(sp["indices"]["bufferView"], sp["indices"].get("byteOffset", 0), sp["count"], it, 1)[:, 0]
        out[idx.astype(np.int64)] = view(sp["values"]["bufferView"], sp["values"].get("byteOffset", 0), sp["count"], dt, n)
    return out
