"""The morphable face model type shared by every part of facefit.

A :class:`MorphableModel` is a linear model of face shape, colour and (optionally)
expression, independent of where it came from (ICT-FaceKit, Basel Face Model, FLAME,
...; see :mod:`facefit.model_io` for the loaders)::

    verts  = mean_shape + shape_basis @ (shape_coeffs * shape_std)
                        + expr_basis  @ (expr_coeffs  * expr_std)
    colors = mean_color + color_basis @ (color_coeffs * color_std)

with every basis stored as ``(V, 3, K)`` whose columns, flattened to ``(3V,)``, have unit
norm, and ``*_std`` the per-component standard deviation (in mm for shape and expression,
in colour units for colour). Identity coefficients are therefore distributed N(0, 1)
under the model's prior.

Units are millimetres, axes follow ``docs/conventions.md`` (+y up, +z out of the face,
+x towards the viewer's right). Arrays are numpy (float32 / int64 / bool) and read-only;
:meth:`MorphableModel.decode` turns coefficients into torch tensors and caches the bases
per device and dtype.

The native file format (:meth:`MorphableModel.save` / :meth:`MorphableModel.load`) is a
compressed ``.npz`` holding only plain arrays plus a JSON header stored as a unicode
array, so ``np.load(path, allow_pickle=False)`` reads it.

Importing this module does not import torch; torch is imported on first use of the
torch-facing methods.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MorphableModel",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DEFAULT_SKIN_TONE",
    "compute_symmetry",
    "normalize_basis",
]

#: Identifies facefit's native model files (stored in the JSON header).
FORMAT_NAME = "facefit-morphable-model"
#: Version of the native file layout. Bump on incompatible changes.
FORMAT_VERSION = 1

#: Flat mean colour (linear-ish RGB in [0, 1], a medium skin tone) used for models
#: without a colour model.
DEFAULT_SKIN_TONE = (0.74, 0.55, 0.45)

# Canonical order of the array fields: the content hash and the file layout use it.
_ARRAY_FIELDS = (
    "mean_shape",
    "shape_basis",
    "shape_std",
    "mean_color",
    "color_basis",
    "color_std",
    "expr_basis",
    "expr_std",
    "triangles",
    "uv",
    "uv_triangles",
    "landmarks",
    "face_mask",
    "symmetry",
)
_OPTIONAL_FIELDS = frozenset({"uv", "uv_triangles", "landmarks", "symmetry"})
_FLOAT_FIELDS = frozenset(
    {"mean_shape", "shape_basis", "shape_std", "mean_color", "color_basis", "color_std",
     "expr_basis", "expr_std", "uv"}
)
_INT_FIELDS = frozenset({"triangles", "uv_triangles", "landmarks", "symmetry"})

# A column whose norm is below this is treated as an all-zero component (std 0).
_ZERO_NORM = 1e-12
# Tolerance on unit-norm columns when loading a file.
_UNIT_TOL = 1e-3


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (the caller's array itself stays writeable)."""
    v = a.view()
    v.flags.writeable = False
    return v


def normalize_basis(basis: np.ndarray, std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rescale basis columns to unit norm, folding the norms into the std.

    Args:
        basis: (V, 3, K) directions (any scale).
        std: (K,) per-component scale; default ones.
    Returns:
        ``(unit_basis (V,3,K) float32, std (K,) float32)`` with
        ``unit_basis * std == basis * std_in`` for every column; all-zero columns stay
        zero and get std 0.
    """
    basis = np.asarray(basis, dtype=np.float32)
    k = basis.shape[2]
    std = np.ones(k, np.float32) if std is None else np.asarray(std, np.float32).reshape(k)
    norms = np.sqrt(np.einsum("vck,vck->k", basis, basis, dtype=np.float64))
    # Columns already unit-norm to float32 precision are left bit-identical, so that
    # renormalising a normalised basis is a no-op (and keeps the content hash).
    norms = np.where(np.abs(norms - 1.0) < 1e-6, 1.0, norms)
    zero = norms < _ZERO_NORM
    inv = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, norms))
    unit = (basis * inv.astype(np.float32)[None, None, :]).astype(np.float32, copy=False)
    new_std = np.where(zero, 0.0, std.astype(np.float64) * norms).astype(np.float32)
    return unit, new_std


def compute_symmetry(points: np.ndarray, center_x: float | None = None) -> tuple[np.ndarray, float]:
    """Mirror vertex index of each vertex by nearest neighbour (a KD-tree query).

    Args:
        points: (V, 3) vertex positions in mm.
        center_x: x of the mirror plane; default the mean x of ``points`` (0 for a
            symmetric model centred on its midline).
    Returns:
        ``(symmetry (V,) int64, max_error_mm)``: ``symmetry[i]`` is the vertex closest to
        the mirror image of vertex i; the second value is the largest such distance (a
        small value means the mesh really is symmetric).
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    if len(pts) == 0:
        return np.zeros(0, np.int64), 0.0
    cx = float(pts[:, 0].mean()) if center_x is None else float(center_x)
    mirrored = pts.copy()
    mirrored[:, 0] = 2.0 * cx - mirrored[:, 0]
    dist, idx = cKDTree(pts).query(mirrored, k=1)
    return idx.astype(np.int64), float(dist.max())


class _TorchCache:
    """Per-(device, dtype) torch copies of the model arrays, created lazily."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[tuple[str, str, str], Any] = {}


class MorphableModel:
    """A linear 3D morphable face model (shape, colour, expression) in millimetres.

    Attributes (numpy arrays, read-only):
        name: short name (``"ict-face"``, ``"bfm2017"``, ...).
        mean_shape: (V, 3) float32 mean vertex positions in mm.
        shape_basis: (V, 3, Ks) float32, unit-norm flattened columns.
        shape_std: (Ks,) float32 standard deviation (mm) of each shape component.
        mean_color: (V, 3) float32 mean per-vertex colour in [0, 1]; a flat skin tone
            when the source has no colour model.
        color_basis: (V, 3, Kc) float32 (Kc may be 0); color_std: (Kc,).
        expr_basis: (V, 3, Ke) float32 (Ke may be 0); expr_std: (Ke,); expr_names: Ke names.
        triangles: (F, 3) int64, counter-clockwise seen from outside (quads split in two).
        uv: (T, 2) float32 texture coordinates or None; uv_triangles: (F, 3) int64 or None
            (UVs indexed separately from vertices, as in OBJ).
        landmarks: (68,) int64 vertex indices in Multi-PIE 68-point order, or None.
        face_mask: (V,) bool, True on the face region.
        symmetry: (V,) int64 mirror vertex of each vertex, or None.
        units: always ``"mm"``.
        meta: JSON-serialisable dict (``source``, ``color_model``, provenance, ...).

    ``MorphableModel`` objects are immutable by convention (their arrays are read-only);
    methods that change something return a new model.
    """

    def __init__(
        self,
        name: str,
        mean_shape: np.ndarray,
        triangles: np.ndarray,
        shape_basis: np.ndarray | None = None,
        shape_std: np.ndarray | None = None,
        mean_color: np.ndarray | None = None,
        color_basis: np.ndarray | None = None,
        color_std: np.ndarray | None = None,
        expr_basis: np.ndarray | None = None,
        expr_std: np.ndarray | None = None,
        expr_names: Sequence[str] | None = None,
        uv: np.ndarray | None = None,
        uv_triangles: np.ndarray | None = None,
        landmarks: np.ndarray | None = None,
        face_mask: np.ndarray | None = None,
        symmetry: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
        units: str = "mm",
        normalize: bool = True,
    ) -> None:
        """Build a model from arrays (see the class docstring for shapes).

        Args:
            normalize: rescale basis columns to unit norm (folding the norm into the std;
                ``basis`` may then be given unscaled with ``std=None`` meaning ones).
                With False the bases must already be unit-norm (checked by :meth:`load`).
        Raises:
            ValueError: inconsistent shapes, non-finite values or out-of-range indices.
        """
        if units != "mm":
            raise ValueError(f"units must be 'mm' (convert before building), got {units!r}")
        mean_shape = np.asarray(mean_shape, np.float32)
        if mean_shape.ndim != 2 or mean_shape.shape[1] != 3:
            raise ValueError(f"mean_shape must be (V, 3), got {mean_shape.shape}")
        n_v = mean_shape.shape[0]

        def basis_and_std(basis, std, what):
            if basis is None:
                if std is not None and np.size(std) != 0:
                    raise ValueError(f"{what}_std given without {what}_basis")
                return np.zeros((n_v, 3, 0), np.float32), np.zeros((0,), np.float32)
            basis = np.asarray(basis, np.float32)
            if basis.ndim == 2 and basis.shape[0] == 3 * n_v:
                basis = basis.reshape(n_v, 3, -1)
            if basis.ndim != 3 or basis.shape[:2] != (n_v, 3):
                raise ValueError(f"{what}_basis must be (V={n_v}, 3, K), got {basis.shape}")
            k = basis.shape[2]
            if std is None:
                if not normalize:
                    raise ValueError(f"{what}_std is required when normalize=False")
                std = np.ones(k, np.float32)
            std = np.asarray(std, np.float32).reshape(-1)
            if std.shape != (k,):
                raise ValueError(f"{what}_std must be ({k},), got {std.shape}")
            if normalize:
                basis, std = normalize_basis(basis, std)
            if np.any(std < 0):
                raise ValueError(f"{what}_std must be >= 0")
            return basis, std

        self.name = str(name)
        self.units = "mm"
        self.mean_shape = mean_shape
        self.shape_basis, self.shape_std = basis_and_std(shape_basis, shape_std, "shape")
        if mean_color is None:
            mean_color = np.tile(np.asarray(DEFAULT_SKIN_TONE, np.float32), (n_v, 1))
        self.mean_color = np.asarray(mean_color, np.float32)
        if self.mean_color.shape != (n_v, 3):
            raise ValueError(f"mean_color must be ({n_v}, 3), got {self.mean_color.shape}")
        self.color_basis, self.color_std = basis_and_std(color_basis, color_std, "color")
        self.expr_basis, self.expr_std = basis_and_std(expr_basis, expr_std, "expr")
        n_e = self.expr_basis.shape[2]
        if expr_names is None:
            expr_names = [f"expr{k:03d}" for k in range(n_e)]
        self.expr_names = [str(s) for s in expr_names]
        if len(self.expr_names) != n_e:
            raise ValueError(f"expr_names has {len(self.expr_names)} names for {n_e} components")

        tri = np.asarray(triangles)
        if tri.ndim != 2 or tri.shape[1] != 3 or (tri.size and tri.dtype.kind not in "iu"):
            raise ValueError(f"triangles must be (F, 3) integers, got {tri.shape} {tri.dtype}")
        self.triangles = tri.astype(np.int64, copy=False)
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n_v):
            raise ValueError(f"triangle indices out of range [0, {n_v})")

        if (uv is None) != (uv_triangles is None):
            raise ValueError("uv and uv_triangles must be given together")
        self.uv = None if uv is None else np.asarray(uv, np.float32)
        self.uv_triangles = None if uv_triangles is None else np.asarray(uv_triangles).astype(np.int64, copy=False)
        if self.uv is not None:
            if self.uv.ndim != 2 or self.uv.shape[1] != 2:
                raise ValueError(f"uv must be (T, 2), got {self.uv.shape}")
            if self.uv_triangles.shape != self.triangles.shape:
                raise ValueError(f"uv_triangles must be {self.triangles.shape}, got {self.uv_triangles.shape}")
            if self.uv_triangles.size and (self.uv_triangles.min() < 0 or self.uv_triangles.max() >= len(self.uv)):
                raise ValueError("uv_triangles indices out of range")

        self.landmarks = None if landmarks is None else np.asarray(landmarks).astype(np.int64, copy=False).reshape(-1)
        if self.landmarks is not None:
            if self.landmarks.shape != (68,):
                raise ValueError(f"landmarks must be (68,) vertex indices, got {self.landmarks.shape}")
            if self.landmarks.min() < 0 or self.landmarks.max() >= n_v:
                raise ValueError("landmark indices out of range")

        if face_mask is None:
            face_mask = np.ones(n_v, bool)
        self.face_mask = np.asarray(face_mask).astype(bool, copy=False).reshape(-1)
        if self.face_mask.shape != (n_v,):
            raise ValueError(f"face_mask must be ({n_v},), got {self.face_mask.shape}")

        self.symmetry = None if symmetry is None else np.asarray(symmetry).astype(np.int64, copy=False).reshape(-1)
        if self.symmetry is not None:
            if self.symmetry.shape != (n_v,):
                raise ValueError(f"symmetry must be ({n_v},), got {self.symmetry.shape}")
            if self.symmetry.min() < 0 or self.symmetry.max() >= n_v:
                raise ValueError("symmetry indices out of range")

        self.meta: dict[str, Any] = json.loads(json.dumps(dict(meta or {})))  # deep copy, JSON check
        self.meta.setdefault("color_model", "none" if self.n_color == 0 else "statistical")

        for f in _ARRAY_FIELDS:
            a = getattr(self, f)
            if a is not None:
                setattr(self, f, _readonly(a))
        for f in _FLOAT_FIELDS:
            a = getattr(self, f)
            if a is not None and not np.all(np.isfinite(a)):
                raise ValueError(f"{f} contains non-finite values")
        self._hash: str | None = None
        self._torch = _TorchCache()

    # ------------------------------------------------------------------ sizes
    @property
    def n_vertices(self) -> int:
        """Number of vertices V."""
        return int(self.mean_shape.shape[0])

    @property
    def n_triangles(self) -> int:
        """Number of triangles F."""
        return int(self.triangles.shape[0])

    @property
    def n_shape(self) -> int:
        """Number of shape (identity) components Ks."""
        return int(self.shape_basis.shape[2])

    @property
    def n_color(self) -> int:
        """Number of colour components Kc (0 when the model has no colour model)."""
        return int(self.color_basis.shape[2])

    @property
    def n_expr(self) -> int:
        """Number of expression components Ke (0 when none)."""
        return int(self.expr_basis.shape[2])

    def __repr__(self) -> str:
        return (
            f"MorphableModel(name={self.name!r}, V={self.n_vertices}, F={self.n_triangles}, "
            f"shape={self.n_shape}, color={self.n_color}, expr={self.n_expr}, units='mm')"
        )

    # ------------------------------------------------------------------ hashing
    @property
    def content_hash(self) -> str:
        """First 16 hex digits of a sha256 over all arrays in canonical order.

        Covers every array field (name, dtype, shape and bytes; absent optional arrays
        hash as absent) but not ``name``, ``meta`` or ``expr_names``.
        """
        if self._hash is None:
            h = hashlib.sha256(b"facefit-morphable-model/1")
            for f in _ARRAY_FIELDS:
                a = getattr(self, f)
                h.update(f.encode() + b"\0")
                if a is None:
                    h.update(b"<absent>\0")
                    continue
                a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
                h.update(f"{a.dtype.str}{a.shape}".encode() + b"\0")
                h.update(a.reshape(-1).view(np.uint8))
            self._hash = h.hexdigest()[:16]
        return self._hash

    # ------------------------------------------------------------------ torch side
    def _torch_item(self, part: str, device: "torch.device", dtype: "torch.dtype"):
        """Cached torch tensor for ``part`` on (device, dtype).

        Parts: ``mean_shape``/``mean_color`` -> (3V,); ``shape``/``color``/``expr`` ->
        (K, 3V) rows = basis column * std (row-major so ``coeffs @ rows[:k]`` is one
        matmul); ``triangles`` -> (F, 3) int64; ``landmarks`` -> (68,) int64.
        """
        import torch

        key = (str(device), str(dtype), part)
        item = self._torch.items.get(key)
        if item is not None:
            return item
        with self._torch.lock:
            item = self._torch.items.get(key)
            if item is not None:
                return item
            if part in ("mean_shape", "mean_color"):
                arr = np.asarray(getattr(self, part)).reshape(-1)
                item = torch.tensor(arr, dtype=dtype, device=device)
            elif part in ("shape", "color", "expr"):
                basis = getattr(self, f"{part}_basis")
                std = getattr(self, f"{part}_std")
                rows = (basis.reshape(-1, basis.shape[2]) * std[None, :]).T
                item = torch.tensor(np.ascontiguousarray(rows), dtype=dtype, device=device)
            elif part in ("triangles", "landmarks"):
                item = torch.tensor(np.asarray(getattr(self, part)), dtype=torch.int64, device=device)
            else:  # pragma: no cover
                raise KeyError(part)
            self._torch.items[key] = item
            return item

    def torch_triangles(self, device: "torch.device | str | None" = None) -> "torch.Tensor":
        """Triangles as a cached (F, 3) int64 tensor on ``device`` (default CPU)."""
        import torch

        return self._torch_item("triangles", torch.device(device or "cpu"), torch.int64)

    def decode(
        self,
        shape_coeffs: "torch.Tensor | np.ndarray | None" = None,
        color_coeffs: "torch.Tensor | np.ndarray | None" = None,
        expr_coeffs: "torch.Tensor | np.ndarray | None" = None,
        *,
        device: "torch.device | str | None" = None,
        dtype: "torch.dtype | None" = None,
        batch_size: int | None = None,
        clamp_colors: bool = True,
    ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Vertices and vertex colours for a batch of coefficients.

        ``verts = mean_shape + shape_basis @ (s * shape_std) + expr_basis @ (e * expr_std)``,
        ``colors = mean_color + color_basis @ (c * color_std)``.

        Args:
            shape_coeffs: (B, k) with k <= Ks (the first k components are used), or None
                for the mean shape.
            color_coeffs: (B, k) with k <= Kc, or None for the mean colour.
            expr_coeffs: (B, k) with k <= Ke, or None for no expression.
            device: used when no coefficient tensor is given (default CPU); otherwise the
                coefficients' device is used.
            dtype: floating dtype when no floating coefficient tensor is given
                (default float32).
            batch_size: B when no coefficients are given (default 1).
            clamp_colors: clamp colours to [0, 1] with :func:`torch.clamp` (its gradient is
                zero for channels outside the range). Pass False to get the raw linear
                colours, e.g. for a loss that should keep pulling saturated colours back.
        Returns:
            ``(verts (B, V, 3) mm, colors (B, V, 3))`` on the coefficients' device,
            differentiable with respect to the coefficients.
        Raises:
            ValueError: coefficient tensors with mismatched batch sizes or devices, or more
                coefficients than the model has components.
        """
        import torch

        raw = {"shape": shape_coeffs, "color": color_coeffs, "expr": expr_coeffs}
        given = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)) for k, v in raw.items() if v is not None}
        ref = next((t for t in given.values() if t.is_floating_point()), None)
        if given:
            dev = next(iter(given.values())).device
        else:
            dev = torch.device(device) if device is not None else torch.device("cpu")
        dt = ref.dtype if ref is not None else (dtype or torch.float32)
        n_b = None
        for part, t in given.items():
            if t.ndim == 1:
                raise ValueError(f"{part}_coeffs must be (B, k), got a 1-D tensor of shape {tuple(t.shape)}")
            if t.ndim != 2:
                raise ValueError(f"{part}_coeffs must be (B, k), got {tuple(t.shape)}")
            if t.device != dev:
                raise ValueError(f"coefficient tensors are on different devices ({t.device} vs {dev})")
            if n_b is None:
                n_b = t.shape[0]
            elif t.shape[0] != n_b:
                raise ValueError(f"coefficient batch sizes differ ({t.shape[0]} vs {n_b})")
            k_max = getattr(self, f"n_{part}")
            if t.shape[1] > k_max:
                raise ValueError(f"{part}_coeffs has {t.shape[1]} coefficients but the model has {k_max}")
            given[part] = t.to(dt)
        if n_b is None:
            n_b = int(batch_size or 1)

        def combine(mean_part: str, parts: Iterable[str]) -> "torch.Tensor":
            out = self._torch_item(mean_part, dev, dt).unsqueeze(0).expand(n_b, -1)
            used = False
            for part in parts:
                c = given.get(part)
                if c is None or c.shape[1] == 0:
                    continue
                rows = self._torch_item(part, dev, dt)[: c.shape[1]]
                out = torch.addmm(out, c, rows)
                used = True
            return out if used else out.clone()

        verts = combine("mean_shape", ("shape", "expr")).reshape(n_b, self.n_vertices, 3)
        colors = combine("mean_color", ("color",)).reshape(n_b, self.n_vertices, 3)
        if clamp_colors:
            colors = colors.clamp(0.0, 1.0)
        return verts, colors

    def sample(
        self,
        n: int,
        generator: "torch.Generator | None" = None,
        shape: bool = True,
        color: bool = True,
        expr: bool = False,
        expr_scale: float = 0.5,
        *,
        device: "torch.device | str | None" = None,
        dtype: "torch.dtype | None" = None,
    ) -> dict[str, "torch.Tensor"]:
        """Random coefficients from the model's prior.

        Shape and colour coefficients are N(0, 1). Expression coefficients are
        ``expr_scale * N(0, 1)`` for PCA expression models; for blend-shape models
        (``meta["expr_model_kind"] == "blendshape"``, e.g. ICT-FaceKit, where a coefficient
        is a blend-shape weight) they are ``min(expr_scale * |N(0, 1)|, 1)``.

        Args:
            n: batch size B.
            generator: torch.Generator for reproducibility; its device is used when
                ``device`` is None.
            shape, color, expr: which coefficient sets to draw.
            expr_scale: scale of the expression coefficients.
            device, dtype: output placement (default: the generator's device / CPU, float32).
        Returns:
            dict with ``"shape_coeffs"`` (B, Ks), ``"color_coeffs"`` (B, Kc),
            ``"expr_coeffs"`` (B, Ke) for the requested sets, so that
            ``model.decode(**model.sample(n))`` works.
        """
        import torch

        gen_dev = generator.device if generator is not None else torch.device("cpu")
        out_dev = torch.device(device) if device is not None else gen_dev
        dt = dtype or torch.float32
        out: dict[str, torch.Tensor] = {}

        def draw(k: int) -> torch.Tensor:
            return torch.randn(n, k, generator=generator, device=gen_dev, dtype=dt).to(out_dev)

        if shape:
            out["shape_coeffs"] = draw(self.n_shape)
        if color:
            out["color_coeffs"] = draw(self.n_color)
        if expr:
            e = draw(self.n_expr) * float(expr_scale)
            if self.meta.get("expr_model_kind") == "blendshape":
                e = e.abs().clamp(max=1.0)
            out["expr_coeffs"] = e
        return out

    def landmark_positions(self, verts: "torch.Tensor | np.ndarray") -> "torch.Tensor | np.ndarray":
        """The 68 landmark vertices of a batch of meshes.

        Args:
            verts: (B, V, 3) torch tensor or numpy array (or (V, 3)).
        Returns:
            (B, 68, 3) (or (68, 3)) of the same kind, Multi-PIE 68-point order.
        Raises:
            FacefitError: the model has no landmarks.
        """
        if self.landmarks is None:
            raise FacefitError(f"model '{self.name}' has no 68-point landmark vertices")
        if isinstance(verts, np.ndarray):
            return verts[..., self.landmarks, :]
        idx = self._torch_item("landmarks", verts.device, None)
        return verts.index_select(verts.ndim - 2, idx)

    # ------------------------------------------------------------------ derived models
    def _fields(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in _ARRAY_FIELDS}
        d.update(name=self.name, expr_names=list(self.expr_names), meta=dict(self.meta))
        return d

    def with_name(self, name: str) -> "MorphableModel":
        """The same model under another name (arrays shared, no copy)."""
        import copy

        new = copy.copy(self)
        new.name = str(name)
        new.meta = dict(self.meta)
        new._torch = _TorchCache()
        return new

    def replace(self, **changes: Any) -> "MorphableModel":
        """A copy with some fields replaced (bases are renormalised)."""
        d = self._fields()
        d.update(changes)
        return MorphableModel(**d)

    def subset(self, vertex_mask: np.ndarray) -> "MorphableModel":
        """The model restricted to a set of vertices.

        Keeps the triangles whose three vertices are kept (and their UV triangles; unused
        UVs are dropped), re-indexes landmarks and symmetry, renormalises the basis
        columns over the kept vertices (so decoding the kept vertices is unchanged).

        Args:
            vertex_mask: (V,) bool, or an array of vertex indices to keep (kept in
                ascending order).
        Returns:
            A new MorphableModel with V' = mask.sum() vertices.
        Raises:
            FacefitError: a landmark vertex would be dropped.
        """
        m = np.asarray(vertex_mask)
        if m.dtype != bool:
            idx = m.astype(np.int64).reshape(-1)
            m = np.zeros(self.n_vertices, bool)
            m[idx] = True
        if m.shape != (self.n_vertices,):
            raise ValueError(f"vertex_mask must be ({self.n_vertices},), got {m.shape}")
        new_index = np.full(self.n_vertices, -1, np.int64)
        new_index[m] = np.arange(int(m.sum()))
        keep_tri = m[self.triangles].all(axis=1)
        tri = new_index[self.triangles[keep_tri]]

        uv = uv_tri = None
        if self.uv is not None:
            used_tri = self.uv_triangles[keep_tri]
            used = np.unique(used_tri)
            remap = np.full(len(self.uv), -1, np.int64)
            remap[used] = np.arange(len(used))
            uv, uv_tri = self.uv[used], remap[used_tri]

        lms = None
        if self.landmarks is not None:
            dropped = np.nonzero(~m[self.landmarks])[0]
            if len(dropped):
                raise FacefitError(
                    f"subset of model '{self.name}' would drop landmark(s) {dropped.tolist()[:5]}"
                )
            lms = new_index[self.landmarks]

        meta = dict(self.meta)
        sym = None
        if self.symmetry is not None:
            if m[self.symmetry[m]].all():
                sym = new_index[self.symmetry[m]]
            else:
                sym, err = compute_symmetry(self.mean_shape[m])
                meta["symmetry_max_error_mm"] = round(err, 4)

        def sub_basis(b):
            return b[m]

        return MorphableModel(
            name=self.name,
            mean_shape=self.mean_shape[m],
            triangles=tri,
            shape_basis=sub_basis(self.shape_basis),
            shape_std=self.shape_std,
            mean_color=self.mean_color[m],
            color_basis=sub_basis(self.color_basis),
            color_std=self.color_std,
            expr_basis=sub_basis(self.expr_basis),
            expr_std=self.expr_std,
            expr_names=self.expr_names,
            uv=uv,
            uv_triangles=uv_tri,
            landmarks=lms,
            face_mask=self.face_mask[m],
            symmetry=sym,
            meta=meta,
        )

    def with_color_model(
        self,
        mean_color: np.ndarray,
        color_basis: np.ndarray | None = None,
        color_std: np.ndarray | None = None,
        description: str = "custom",
        names: Sequence[str] | None = None,
    ) -> "MorphableModel":
        """A copy with another colour model.

        Args:
            mean_color: (V, 3) mean colour in [0, 1].
            color_basis: (V, 3, Kc) (any column scale; renormalised) or None for none.
            color_std: (Kc,) or None (ones).
            description: stored as ``meta["color_model"]`` (e.g. "statistical PCA from
                ...", "heuristic ...").
            names: optional Kc component names, stored as ``meta["color_names"]``.
        Returns:
            A new MorphableModel (its content hash differs).
        """
        meta = dict(self.meta)
        meta["color_model"] = str(description)
        if names is not None:
            meta["color_names"] = [str(s) for s in names]
        else:
            meta.pop("color_names", None)
        return self.replace(mean_color=mean_color, color_basis=color_basis, color_std=color_std, meta=meta)

    # ------------------------------------------------------------------ files
    def header(self) -> dict[str, Any]:
        """The JSON header written to native files (format, name, names, meta, counts)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "units": self.units,
            "expr_names": list(self.expr_names),
            "content_hash": self.content_hash,
            "summary": {
                "n_vertices": self.n_vertices,
                "n_triangles": self.n_triangles,
                "n_shape": self.n_shape,
                "n_color": self.n_color,
                "n_expr": self.n_expr,
            },
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike, *, compress: bool = True) -> Path:
        """Write the model to facefit's native compressed ``.npz`` (atomically).

        Args:
            path: target file (``.npz`` recommended; the name is used as given).
            compress: zlib-compress the arrays (default).
        Returns:
            The path written.
        Raises:
            FacefitError: the file cannot be written.
        """
        from facefit.atomic import atomic_write

        path = Path(path)
        arrays = {f: getattr(self, f) for f in _ARRAY_FIELDS if getattr(self, f) is not None}
        arrays["header"] = np.array(json.dumps(self.header()))
        writer = np.savez_compressed if compress else np.savez
        with atomic_write(path, "wb", mkdir=True) as fh:
            writer(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MorphableModel":
        """Read a native ``.npz`` written by :meth:`save`, validating it.

        Args:
            path: the file.
        Returns:
            The model.
        Raises:
            ModelNotFoundError: the file does not exist.
            InvalidFileError: not a facefit model file, or wrong shapes/dtypes, non-finite
                values, out-of-range indices or non-unit-norm bases (one-line message).
        """
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                files = set(z.files)
                if "header" not in files:
                    raise InvalidFileError(f"{path}: not a facefit model file (no header)")
                header = json.loads(str(z["header"][()]))
                if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                    raise InvalidFileError(f"{path}: not a facefit model file (format {header.get('format')!r})")
                if int(header.get("version", -1)) > FORMAT_VERSION:
                    raise InvalidFileError(
                        f"{path}: model file version {header.get('version')} is newer than this facefit "
                        f"supports ({FORMAT_VERSION}); upgrade facefit"
                    )
                missing = [f for f in _ARRAY_FIELDS if f not in _OPTIONAL_FIELDS and f not in files]
                if missing:
                    raise InvalidFileError(f"{path}: model file lacks array(s) {', '.join(missing)}")
                arrays = {f: z[f] for f in _ARRAY_FIELDS if f in files}
        except FacefitError:
            raise
        except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidFileError(f"{path}: not a readable facefit model file ({msg})") from exc
        except Exception as exc:  # zipfile.BadZipFile, zlib.error, ...
            raise InvalidFileError(f"{path}: corrupt model file ({type(exc).__name__}: {exc})") from exc

        for f, a in arrays.items():
            if f in _FLOAT_FIELDS and a.dtype != np.float32:
                raise InvalidFileError(f"{path}: array '{f}' has dtype {a.dtype}, expected float32")
            if f in _INT_FIELDS and a.dtype != np.int64:
                raise InvalidFileError(f"{path}: array '{f}' has dtype {a.dtype}, expected int64")
            if f == "face_mask" and a.dtype != bool:
                raise InvalidFileError(f"{path}: array 'face_mask' has dtype {a.dtype}, expected bool")
        for part in ("shape", "color", "expr"):
            b = arrays[f"{part}_basis"]
            if b.ndim == 3 and b.shape[2]:
                norms = np.sqrt(np.einsum("vck,vck->k", b, b, dtype=np.float64))
                std = arrays[f"{part}_std"]
                bad = np.abs(norms - 1.0) > _UNIT_TOL
                if std.shape == norms.shape:
                    bad &= ~((norms < _ZERO_NORM) & (std == 0))
                if bad.any():
                    k = int(np.nonzero(bad)[0][0])
                    raise InvalidFileError(
                        f"{path}: {part}_basis column {k} has norm {norms[k]:.4g}, expected unit norm"
                    )
        try:
            return cls(
                name=header.get("name", path.stem),
                expr_names=header.get("expr_names"),
                meta=header.get("meta") or {},
                units=header.get("units", "mm"),
                normalize=False,
                **arrays,
            )
        except (ValueError, TypeError) as exc:
            raise InvalidFileError(f"{path}: invalid model file: {exc}") from exc

    @staticmethod
    def read_header(path: str | os.PathLike) -> dict[str, Any]:
        """The JSON header of a native model file without loading its arrays.

        Raises:
            InvalidFileError: not a facefit model file.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"][()]))
        except Exception as exc:
            raise InvalidFileError(f"{path}: not a facefit model file ({type(exc).__name__})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise InvalidFileError(f"{path}: not a facefit model file")
        return header
