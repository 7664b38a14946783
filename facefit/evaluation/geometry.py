"""Geometric error of a reconstructed face against a ground-truth surface.

The protocol of Genova et al. 2018, Table 1 (after Tran et al. 2017), in four steps:

1. **Crop** the ground truth to a sphere of ``radius`` mm (95 by default) around its nose
   tip (:func:`crop_mesh`); scans use :func:`scan_nose_tip` or a user-given point, meshes
   of the model its landmark 30 (the nose tip of the 68-point scheme). The prediction is
   *not* cropped: where it extends beyond the cropped ground truth, its vertices pair with
   the crop's border and fall outside the region of overlap (step 4). (Cropping it too, at
   the same radius around its own nose tip, cuts it at a sphere that no longer matches the
   ground truth's once ICP has scaled it, which biased the scale and shrank the overlap.)
2. **Align** the prediction to the ground truth with ICP including an isotropic scale
   (:func:`icp`): start with the nose tips on top of each other (the prediction's comes
   from the model's landmark 30), then alternate
   closest-point correspondences (in both directions, trimmed, away from the meshes'
   borders) with the closed-form similarity transform of Umeyama (1991)
   (:func:`similarity_transform`).
3. **Measure** the symmetric point-to-plane distance (:func:`symmetric_point_to_plane`):
   every predicted vertex to its nearest ground-truth vertex and every ground-truth vertex
   to its nearest predicted vertex, the distance measured along the *ground truth's*
   vertex normal in both directions, ``|(p - q) . n_q|``.
4. **Overlap**: a pair whose nearest neighbour is a border vertex of the other surface
   (an edge used by one triangle: the crop sphere, holes, the scan's edge) is outside the
   region of overlap and left out. The reported error is the mean of the two directions'
   means, in mm.

All functions work on numpy float arrays in millimetres; nearest neighbours use
:class:`scipy.spatial.cKDTree`. Entry point: :func:`evaluate_geometry`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from facefit.errors import FacefitError

__all__ = [
    "NOSE_TIP_LANDMARK",
    "DEFAULT_RADIUS_MM",
    "Similarity",
    "ICPResult",
    "GeometryResult",
    "vertex_normals",
    "boundary_vertices",
    "crop_mask",
    "crop_mesh",
    "similarity_transform",
    "icp",
    "point_to_plane",
    "symmetric_point_to_plane",
    "scan_nose_tip",
    "guess_units_scale",
    "evaluate_geometry",
    "dense_error",
]

#: Index of the nose tip in the 68-point (Multi-PIE / dlib) landmark scheme.
NOSE_TIP_LANDMARK = 30
#: Crop radius of the MICC protocol (Tran et al. 2017; Genova et al. 2018), mm.
DEFAULT_RADIUS_MM = 95.0


# ---------------------------------------------------------------------------------------
# mesh helpers


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals.

    Args:
        verts: (V, 3) float; tris: (F, 3) int, counter-clockwise seen from outside.
    Returns:
        (V, 3) float64 unit normals pointing outwards; zero for vertices in no triangle.
    """
    v = np.asarray(verts, np.float64)
    t = np.asarray(tris, np.int64).reshape(-1, 3)
    n = np.zeros_like(v)
    if len(t):
        fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # length = 2 * area
        for k in range(3):
            np.add.at(n, t[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), 0.0)


def boundary_vertices(tris: np.ndarray, n_vertices: int) -> np.ndarray:
    """Vertices on a border edge (an edge used by exactly one triangle).

    Args:
        tris: (F, 3) int; n_vertices: V.
    Returns:
        (V,) bool.
    """
    t = np.asarray(tris, np.int64).reshape(-1, 3)
    out = np.zeros(int(n_vertices), bool)
    if not len(t):
        return out
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    e.sort(axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    out[uniq[counts == 1].ravel()] = True
    return out


def crop_mask(verts: np.ndarray, center: np.ndarray, radius: float = DEFAULT_RADIUS_MM) -> np.ndarray:
    """Vertices within ``radius`` of ``center``.

    Args:
        verts: (V, 3); center: (3,); radius: mm.
    Returns:
        (V,) bool.
    """
    d = np.linalg.norm(np.asarray(verts, np.float64) - np.asarray(center, np.float64).reshape(1, 3), axis=1)
    return d <= float(radius)


def crop_mesh(
    verts: np.ndarray, tris: Optional[np.ndarray], center: np.ndarray, radius: float = DEFAULT_RADIUS_MM
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part of a mesh within ``radius`` of ``center``.

    A triangle is kept when all three corners are inside; vertices are renumbered.

    Args:
        verts: (V, 3); tris: (F, 3) or None (point cloud); center: (3,); radius: mm.
    Returns:
        ``(verts (V', 3) float64, tris (F', 3) int64, kept (V,) bool)``.
    """
    v = np.asarray(verts, np.float64)
    keep = crop_mask(v, center, radius)
    new_index = np.full(len(v), -1, np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    if tris is None or len(tris) == 0:
        return v[keep], np.zeros((0, 3), np.int64), keep
    t = np.asarray(tris, np.int64)
    t = t[keep[t].all(1)]
    return v[keep], new_index[t], keep


def guess_units_scale(verts: np.ndarray) -> float:
    """Factor that turns a head scan's coordinates into millimetres, guessed from its size.

    A head (or face) spans 100-400 mm; a largest bounding-box side under 1 is taken to be
    metres (x1000), under 50 centimetres (x10), else millimetres (x1).

    Args:
        verts: (V, 3).
    Returns:
        1.0, 10.0 or 1000.0.
    """
    v = np.asarray(verts, np.float64)
    side = float((v.max(0) - v.min(0)).max()) if len(v) else 0.0
    if side <= 0:
        raise FacefitError("the scan has no extent (all vertices at one point)")
    if side < 1.0:
        return 1000.0
    if side < 50.0:
        return 10.0
    return 1.0


def scan_nose_tip(verts: np.ndarray, central_fraction: float = 0.3, top_fraction: float = 0.002) -> np.ndarray:
    """Nose tip of a head scan by the "most protruding point near the centre" heuristic.

    Assumes the scan is roughly frontal in facefit's model frame (+y up, +z towards the
    viewer), as 3dMD scans (MICC Florence) are. Among the vertices whose (x, y) lies within
    ``central_fraction`` of the scan's largest (x, y) extent from the median (x, y), the
    ``top_fraction`` with the largest z are taken and their median is the nose tip (a median
    of a few points, so that single noise spikes cannot win).

    Args:
        verts: (V, 3) scan vertices in mm.
        central_fraction: radius of the central cylinder as a fraction of the extent.
        top_fraction: fraction of the central vertices that vote.
    Returns:
        (3,) float64 nose tip.
    Raises:
        FacefitError: empty scan.
    """
    v = np.asarray(verts, np.float64)
    if len(v) == 0:
        raise FacefitError("cannot find the nose tip of an empty scan")
    xy = v[:, :2]
    med = np.median(xy, axis=0)
    extent = float((xy.max(0) - xy.min(0)).max())
    central = np.linalg.norm(xy - med, axis=1) <= central_fraction * extent
    cand = v[central] if central.any() else v
    k = max(1, int(round(top_fraction * len(cand))))
    top = cand[np.argsort(-cand[:, 2])[:k]]
    return np.median(top, axis=0)


# ---------------------------------------------------------------------------------------
# similarity transforms and ICP


@dataclass
class Similarity:
    """``x -> s R x + t``.

    Attributes:
        s: scale; R: (3, 3) rotation (det +1); t: (3,) translation (mm).
    """

    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.s * np.asarray(x, np.float64) @ self.R.T + self.t

    def compose(self, first: "Similarity") -> "Similarity":
        """The transform ``self(first(x))``."""
        return Similarity(self.s * first.s, self.R @ first.R, self.s * self.R @ first.t + self.t)

    def inverse(self) -> "Similarity":
        Ri = self.R.T
        return Similarity(1.0 / self.s, Ri, -(Ri @ self.t) / self.s)

    def as_dict(self) -> dict:
        return {"scale": float(self.s), "R": self.R.tolist(), "t": self.t.tolist()}


def similarity_transform(
    src: np.ndarray, dst: np.ndarray, weights: Optional[np.ndarray] = None, scale: bool = True
) -> Similarity:
    """Least-squares similarity (or rigid) transform taking ``src`` onto ``dst`` (Umeyama 1991).

    Minimises ``sum_i w_i |s R src_i + t - dst_i|^2``.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 (not all collinear).
        weights: (N,) non-negative weights or None.
        scale: estimate the isotropic scale (else s = 1).
    Returns:
        :class:`Similarity`.
    """
    x = np.asarray(src, np.float64)
    y = np.asarray(dst, np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3 or len(x) < 3:
        raise ValueError(f"need two (N >= 3, 3) point sets of equal shape, got {x.shape} and {y.shape}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    w = w / max(w.sum(), 1e-300)
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    cov = (yc * w[:, None]).T @ xc  # (3, 3) = sum w y x^T
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_x = float(w @ (xc**2).sum(1))
    s = float(np.trace(np.diag(S) @ D) / var_x) if scale and var_x > 0 else 1.0
    t = my - s * R @ mx
    return Similarity(s, R, t)


@dataclass
class ICPResult:
    """Result of :func:`icp`.

    Attributes:
        transform: the :class:`Similarity` taking the source onto the target (including the
            initial one).
        aligned: (N, 3) transformed source points.
        rmse: root mean square distance of the returned state's kept pairs, mm.
        iterations: iterations run; converged: whether the update fell below ``tol``.
    """

    transform: Similarity
    aligned: np.ndarray
    rmse: float
    iterations: int
    converged: bool


def _plane_step(a: np.ndarray, b: np.ndarray, n: np.ndarray, scale: bool) -> Similarity:
    """One linearised point-to-plane step with scale: the small similarity (about the
    centroid of ``a``) that best moves ``a`` onto the planes through ``b`` with normals ``n``.

    Args:
        a: (K, 3) current source points; b: (K, 3) paired target points; n: (K, 3) unit
            normals of the pairs' planes; scale: include the scale unknown.
    Returns:
        :class:`Similarity` to apply to the current source points.
    """
    from scipy.spatial.transform import Rotation

    c = a.mean(0)
    x = a - c
    cols = [np.cross(x, n), n]  # rotation (3), translation (3)
    if scale:
        cols.insert(0, np.sum(x * n, axis=1, keepdims=True))
    A = np.concatenate(cols, axis=1)
    r = -np.sum((a - b) * n, axis=1)
    AtA = A.T @ A
    sol = np.linalg.solve(AtA + 1e-9 * np.trace(AtA) * np.eye(A.shape[1]), A.T @ r)
    ds = float(sol[0]) if scale else 0.0
    w, dt = sol[-6:-3], sol[-3:]
    s = float(np.exp(ds))
    R = Rotation.from_rotvec(w).as_matrix()
    return Similarity(s, R, c + dt - s * R @ c)


def icp(
    source: np.ndarray,
    target: np.ndarray,
    target_normals: Optional[np.ndarray] = None,
    source_normals: Optional[np.ndarray] = None,
    *,
    init: Optional[Similarity] = None,
    scale: bool = True,
    source_boundary: Optional[np.ndarray] = None,
    target_boundary: Optional[np.ndarray] = None,
    trim: float = 0.98,
    point_iterations: int = 5,
    max_iterations: int = 100,
    tol: float = 1e-4,
    patience: int = 10,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> ICPResult:
    """Iterative closest point alignment with an optional isotropic scale.

    Each iteration pairs every source point with its nearest target point and every target
    point with its nearest (transformed) source point, drops pairs whose partner is a border
    vertex (outside the region of overlap), and keeps the ``trim`` fraction of the remaining
    pairs with the smallest distances (per direction, against scan noise). Pairing in both
    directions keeps the scale from shrinking the source into a part of the target.

    The first ``point_iterations`` iterations solve the point-to-point similarity in closed
    form (:func:`similarity_transform`; robust from a rough start). Later ones, when
    ``target_normals`` are given, take linearised point-to-plane steps with scale whose plane
    normal is the target's normal, or with ``source_normals`` also given, the normalised
    sum of both ("symmetric" point-to-plane, Rusinkiewicz 2019), which converges faster and
    does not slide along flat directions.

    With scale, nearest-vertex ICP between two *different* faces can cycle between a few
    nearly equal states; the iteration stops when the points move less than ``tol`` or the
    RMS pair distance has not improved for ``patience`` iterations, and the best state seen
    is returned.

    Args:
        source: (N, 3) points to move (e.g. the reconstruction).
        target: (M, 3) fixed points (e.g. the ground truth).
        target_normals: (M, 3) unit normals of the target, or None (point-to-point only).
        source_normals: (N, 3) unit normals of the source (before ``init``), or None.
        init: starting transform of the source (default identity).
        scale: estimate an isotropic scale.
        source_boundary: (N,) bool border flags of the source, or None.
        target_boundary: (M,) bool border flags of the target, or None.
        trim: fraction of pairs kept per direction, in (0, 1].
        point_iterations: point-to-point iterations before switching to point-to-plane.
        max_iterations: iteration limit.
        tol: stop when an iteration moves the points by less than this (RMS, mm).
        patience: stop after this many iterations without a better RMS pair distance.
        scale_range: the total scale is clamped to this range (a guard against collapse).
    Returns:
        :class:`ICPResult` (the state with the lowest RMS pair distance).
    """
    from scipy.spatial import cKDTree

    src = np.asarray(source, np.float64)
    tgt = np.asarray(target, np.float64)
    if len(src) < 3 or len(tgt) < 3:
        raise FacefitError(f"ICP needs at least 3 points on each side (got {len(src)} and {len(tgt)})")
    if not 0 < trim <= 1:
        raise ValueError(f"trim must be in (0, 1], got {trim}")
    tn = None if target_normals is None else np.asarray(target_normals, np.float64)
    sn = None if source_normals is None else np.asarray(source_normals, np.float64)
    sb = np.zeros(len(src), bool) if source_boundary is None else np.asarray(source_boundary, bool)
    tb = np.zeros(len(tgt), bool) if target_boundary is None else np.asarray(target_boundary, bool)
    T = init or Similarity()
    tgt_tree = cKDTree(tgt)
    cur = T.apply(src)
    lo, hi = scale_range
    best = (float("inf"), T, cur, 0)
    converged, it = False, 0

    def kept(d: np.ndarray, ok: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(ok)
        if len(idx) > 3 and trim < 1:
            idx = idx[d[idx] <= np.quantile(d[idx], trim)]
        return idx

    for it in range(1, max_iterations + 1):
        d1, j1 = tgt_tree.query(cur)
        k1 = kept(d1, ~tb[j1])
        d2, j2 = cKDTree(cur).query(tgt)
        k2 = kept(d2, ~sb[j2])
        src_idx = np.concatenate([k1, j2[k2]])
        tgt_idx = np.concatenate([j1[k1], k2])
        if len(src_idx) < 7:
            raise FacefitError("ICP lost the overlap between the surfaces (check units and orientation)")
        a, b = cur[src_idx], tgt[tgt_idx]
        rmse = float(np.sqrt(np.mean(np.sum((a - b) ** 2, 1))))
        if it > point_iterations:  # point-to-plane stage: remember the best state
            if rmse < best[0] * (1 - 1e-6):
                best = (rmse, T, cur, it)
            elif it - best[3] >= patience:
                break
        if tn is None or it <= point_iterations:
            T_new = similarity_transform(src[src_idx], b, scale=scale)  # from the original source
        else:
            n = tn[tgt_idx]
            if sn is not None:
                n = n + sn[src_idx] @ T.R.T
                n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            T_new = _plane_step(a, b, n, scale).compose(T)
        if not lo <= T_new.s <= hi:
            T_new = Similarity(float(np.clip(T_new.s, lo, hi)), T_new.R, T_new.t)
        new = T_new.apply(src)
        move = float(np.sqrt(np.mean(np.sum((new - cur) ** 2, 1))))
        T, cur = T_new, new
        if move < tol and it > point_iterations:
            converged = True
            break
    if converged or not np.isfinite(best[0]):
        # the final state: evaluate its pairs once more to report its RMS
        d1, j1 = tgt_tree.query(cur)
        k1 = kept(d1, ~tb[j1])
        d2, j2 = cKDTree(cur).query(tgt)
        k2 = kept(d2, ~sb[j2])
        rm = float(np.sqrt(np.mean(np.concatenate([d1[k1], d2[k2]]) ** 2)))
        if rm <= best[0]:
            best = (rm, T, cur, it)
    return ICPResult(best[1], best[2], best[0], it, converged)


# ---------------------------------------------------------------------------------------
# distances


def point_to_plane(
    points: np.ndarray,
    target: np.ndarray,
    target_normals: np.ndarray,
    target_boundary: Optional[np.ndarray] = None,
    max_distance: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the tangent plane of its nearest target vertex.

    ``d_i = |(p_i - q_j) . n_j|`` with ``q_j`` the nearest target vertex of ``p_i``.

    Args:
        points: (N, 3); target: (M, 3); target_normals: (M, 3) unit normals.
        target_boundary: (M,) bool; pairs whose nearest vertex is on the border are invalid.
        max_distance: pairs whose Euclidean nearest-neighbour distance exceeds this are
            invalid (None: no limit).
    Returns:
        ``(distances (N,), valid (N,) bool)``.
    """
    from scipy.spatial import cKDTree

    p = np.asarray(points, np.float64)
    q = np.asarray(target, np.float64)
    n = np.asarray(target_normals, np.float64)
    dist, j = cKDTree(q).query(p)
    d = np.abs(np.sum((p - q[j]) * n[j], axis=1))
    valid = np.ones(len(p), bool)
    if target_boundary is not None:
        valid &= ~np.asarray(target_boundary, bool)[j]
    if max_distance is not None:
        valid &= dist <= max_distance
    return d, valid


def symmetric_point_to_plane(
    pred: np.ndarray,
    pred_tris: Optional[np.ndarray],
    gt: np.ndarray,
    gt_tris: Optional[np.ndarray],
    gt_normals: Optional[np.ndarray] = None,
    max_distance: Optional[float] = None,
) -> dict:
    """Symmetric point-to-plane distance within the region of overlap, using the ground
    truth's normals in both directions.

    * prediction -> ground truth: each predicted vertex ``p``, its nearest ground-truth
      vertex ``q``: ``|(p - q) . n_q|``; invalid when ``q`` is on the ground truth's border.
    * ground truth -> prediction: each ground-truth vertex ``q``, its nearest predicted
      vertex ``p``: ``|(p - q) . n_q|``; invalid when ``p`` is on the prediction's border.

    Args:
        pred: (N, 3) aligned predicted vertices; pred_tris: (F, 3) or None.
        gt: (M, 3) ground-truth vertices; gt_tris: (G, 3) or None (then ``gt_normals`` is
            required).
        gt_normals: (M, 3) or None (computed from ``gt_tris``).
        max_distance: optional extra limit on the nearest-neighbour distance (mm).
    Returns:
        dict with ``mean_mm`` (mean of the two directional means), ``pred_to_gt_mm``,
        ``gt_to_pred_mm``, ``median_mm`` (of all valid distances), ``overlap_pred`` and
        ``overlap_gt`` (fractions of vertices in the overlap), and ``per_vertex_pred`` (N,)
        distances of the predicted vertices (NaN outside the overlap).
    """
    from scipy.spatial import cKDTree

    p = np.asarray(pred, np.float64)
    q = np.asarray(gt, np.float64)
    if gt_normals is None:
        if gt_tris is None or len(gt_tris) == 0:
            raise FacefitError("point-to-plane distances need the ground truth's triangles or normals")
        gt_normals = vertex_normals(q, gt_tris)
    nq = np.asarray(gt_normals, np.float64)
    gt_border = boundary_vertices(gt_tris, len(q)) if gt_tris is not None and len(gt_tris) else None
    pred_border = boundary_vertices(pred_tris, len(p)) if pred_tris is not None and len(pred_tris) else None

    d1, v1 = point_to_plane(p, q, nq, gt_border, max_distance)
    dist2, j2 = cKDTree(p).query(q)
    d2 = np.abs(np.sum((p[j2] - q) * nq, axis=1))
    v2 = np.ones(len(q), bool)
    if pred_border is not None:
        v2 &= ~pred_border[j2]
    if max_distance is not None:
        v2 &= dist2 <= max_distance
    if not v1.any() or not v2.any():
        raise FacefitError("the surfaces do not overlap after alignment")
    m1, m2 = float(d1[v1].mean()), float(d2[v2].mean())
    per_vertex = np.where(v1, d1, np.nan)
    return {
        "mean_mm": 0.5 * (m1 + m2),
        "pred_to_gt_mm": m1,
        "gt_to_pred_mm": m2,
        "median_mm": float(np.median(np.concatenate([d1[v1], d2[v2]]))),
        "overlap_pred": float(v1.mean()),
        "overlap_gt": float(v2.mean()),
        "per_vertex_pred": per_vertex,
    }


def dense_error(pred: np.ndarray, gt: np.ndarray, scale: bool = True) -> float:
    """Mean vertex distance (mm) after the best similarity alignment, for meshes in dense
    correspondence (the same topology, e.g. two faces of one morphable model).

    Args:
        pred, gt: (V, 3) corresponding vertices.
        scale: allow an isotropic scale.
    Returns:
        mean Euclidean distance, mm.
    """
    T = similarity_transform(pred, gt, scale=scale)
    return float(np.linalg.norm(T.apply(pred) - np.asarray(gt, np.float64), axis=1).mean())


# ---------------------------------------------------------------------------------------
# the whole protocol


@dataclass
class GeometryResult:
    """What :func:`evaluate_geometry` measured for one reconstruction.

    Attributes:
        error_mm: symmetric point-to-plane distance (the headline number).
        pred_to_gt_mm, gt_to_pred_mm, median_mm: its parts / median.
        overlap_pred, overlap_gt: fractions of the prediction's vertices and of the
            cropped ground truth's vertices inside the overlap.
        scale: ICP scale applied to the prediction; icp_rmse: last ICP RMS pair distance.
        icp_iterations: iterations run.
        transform: the :class:`Similarity` prediction -> ground truth.
        n_pred, n_gt: vertices of the prediction and of the cropped ground truth.
    """

    error_mm: float
    pred_to_gt_mm: float
    gt_to_pred_mm: float
    median_mm: float
    overlap_pred: float
    overlap_gt: float
    scale: float
    icp_rmse: float
    icp_iterations: int
    transform: Similarity
    n_pred: int
    n_gt: int

    def as_dict(self) -> dict:
        return {
            "error_mm": self.error_mm,
            "pred_to_gt_mm": self.pred_to_gt_mm,
            "gt_to_pred_mm": self.gt_to_pred_mm,
            "median_mm": self.median_mm,
            "overlap_pred": self.overlap_pred,
            "overlap_gt": self.overlap_gt,
            "scale": self.scale,
            "icp_rmse": self.icp_rmse,
            "icp_iterations": self.icp_iterations,
            "n_pred": self.n_pred,
            "n_gt": self.n_gt,
        }


def _used_vertices(verts: np.ndarray, tris: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no triangle uses (they have no normal and no border), renumbering."""
    if tris is None or len(tris) == 0:
        return verts, np.zeros((0, 3), np.int64)
    t = np.asarray(tris, np.int64)
    used = np.unique(t)
    if len(used) == len(verts):
        return verts, t
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[t]


def evaluate_geometry(
    pred_verts: np.ndarray,
    pred_tris: np.ndarray,
    pred_nose: np.ndarray,
    gt_verts: np.ndarray,
    gt_tris: Optional[np.ndarray],
    gt_nose: np.ndarray,
    radius: float = DEFAULT_RADIUS_MM,
    scale: bool = True,
    init_rotation: Optional[np.ndarray] = None,
    icp_points: int = 4000,
) -> GeometryResult:
    """The full protocol: crop the ground truth at ``radius`` around its nose tip, ICP with
    scale (starting with the nose tips together), symmetric point-to-plane distance within
    the region of overlap (see the module docstring; the prediction is not cropped).

    Args:
        pred_verts: (N, 3) reconstruction (mm); pred_tris: (F, 3); pred_nose: (3,), used
            to start ICP.
        gt_verts: (M, 3) ground truth (mm); gt_tris: (G, 3) or None; gt_nose: (3,).
        radius: crop radius (mm).
        scale: let ICP scale the prediction.
        init_rotation: optional (3, 3) rotation taking the prediction's frame to the
            ground truth's (default: the frames agree, +y up and +z to the viewer).
        icp_points: ICP runs on at most this many (evenly strided) vertices of each
            surface; the distances are then measured on all of them.
    Returns:
        :class:`GeometryResult`.
    Raises:
        FacefitError: an empty crop, a tiny prediction or no overlap.
    """
    pv, pt = _used_vertices(np.asarray(pred_verts, np.float64), pred_tris)
    gv, gt_, _ = crop_mesh(gt_verts, gt_tris, gt_nose, radius)
    if len(gv) < 10:
        raise FacefitError(
            f"fewer than 10 ground-truth vertices within {radius:g} mm of its nose tip ({len(gv)}): "
            "check the nose tip and units"
        )
    if len(pv) < 10:
        raise FacefitError(f"the prediction has only {len(pv)} vertices")
    R0 = np.eye(3) if init_rotation is None else np.asarray(init_rotation, np.float64)
    nose_p = np.asarray(pred_nose, np.float64)
    init = Similarity(1.0, R0, np.asarray(gt_nose, np.float64) - R0 @ nose_p)
    p_border = boundary_vertices(pt, len(pv)) if len(pt) else None
    g_border = boundary_vertices(gt_, len(gv)) if len(gt_) else None
    if not len(gt_):
        raise FacefitError("the ground truth has no triangles (point-to-plane needs normals)")
    gn = vertex_normals(gv, gt_)
    sp = np.arange(0, len(pv), max(1, int(np.ceil(len(pv) / icp_points))))
    sg = np.arange(0, len(gv), max(1, int(np.ceil(len(gv) / icp_points))))
    pn = vertex_normals(pv, pt) if len(pt) else None
    res = icp(pv[sp], gv[sg], gn[sg], None if pn is None else pn[sp], init=init, scale=scale,
              source_boundary=None if p_border is None else p_border[sp],
              target_boundary=None if g_border is None else g_border[sg])
    aligned = res.transform.apply(pv)
    d = symmetric_point_to_plane(aligned, pt, gv, gt_, gn)
    return GeometryResult(
        error_mm=d["mean_mm"],
        pred_to_gt_mm=d["pred_to_gt_mm"],
        gt_to_pred_mm=d["gt_to_pred_mm"],
        median_mm=d["median_mm"],
        overlap_pred=d["overlap_pred"],
        overlap_gt=d["overlap_gt"],
        scale=float(res.transform.s),
        icp_rmse=res.rmse,
        icp_iterations=res.iterations,
        transform=res.transform,
        n_pred=len(pv),
        n_gt=len(gv),
    )
