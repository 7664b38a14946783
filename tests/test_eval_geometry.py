"""Geometric metric code of ``facefit eval`` on hand-made cases (no model, no network)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from facefit.errors import FacefitError
from facefit.evaluation.geometry import (
    Similarity,
    boundary_vertices,
    crop_mask,
    crop_mesh,
    dense_error,
    evaluate_geometry,
    guess_units_scale,
    icp,
    point_to_plane,
    scan_nose_tip,
    similarity_transform,
    symmetric_point_to_plane,
    vertex_normals,
)


def grid(n=40, half=(80.0, 100.0), height=None, z=0.0):
    """A regular (n x n) grid mesh in the x-y plane (z = height(x, y) or the constant z)."""
    x, y = np.meshgrid(np.linspace(-half[0], half[0], n), np.linspace(-half[1], half[1], n))
    zz = height(x, y) if height is not None else np.full_like(x, z)
    V = np.stack([x, y, zz], -1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    T = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])  # counter-clockwise seen from +z
    return V, T


def face_like(x, y):
    """A head-like height field: a dome, a nose bump and some cheek relief (mm)."""
    return (60 * np.exp(-(x**2 + y**2) / (2 * 50**2)) + 25 * np.exp(-(x**2 + (y + 5) ** 2) / (2 * 12**2))
            + 5 * np.sin(x / 15))


def test_similarity_transform_exact():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3)) * 30
    R = Rotation.from_euler("xyz", [20, -35, 10], degrees=True).as_matrix()
    dst = 1.3 * src @ R.T + np.array([5.0, -2.0, 40.0])
    T = similarity_transform(src, dst)
    assert T.s == pytest.approx(1.3, abs=1e-9)
    np.testing.assert_allclose(T.R, R, atol=1e-9)
    np.testing.assert_allclose(T.apply(src), dst, atol=1e-8)
    rigid = similarity_transform(src, dst, scale=False)
    assert rigid.s == 1.0
    # composition and inverse
    np.testing.assert_allclose(T.inverse().apply(T.apply(src)), src, atol=1e-8)
    U = Similarity(0.5, np.eye(3), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(U.compose(T).apply(src), U.apply(T.apply(src)), atol=1e-8)


@pytest.mark.parametrize("scale,angles,shift", [(1.08, (8, -10, 5), (3.0, -4.0, 6.0)), (0.9, (-6, 4, -3), (-8.0, 2.0, 1.0))])
def test_icp_recovers_known_similarity(scale, angles, shift):
    V, T = grid(50, height=face_like)
    N = vertex_normals(V, T)
    true = Similarity(scale, Rotation.from_euler("xyz", angles, degrees=True).as_matrix(), np.array(shift))
    src = true.inverse().apply(V)  # the target seen in another frame
    res = icp(src, V, N, vertex_normals(src, T), scale=True)
    assert res.transform.s == pytest.approx(scale, abs=1e-6)
    np.testing.assert_allclose(res.transform.R, true.R, atol=1e-6)
    np.testing.assert_allclose(res.transform.t, true.t, atol=1e-4)
    assert res.rmse < 1e-4


def test_icp_with_partial_overlap_and_without_scale():
    V, T = grid(50, height=face_like)
    true = Similarity(1.0, Rotation.from_euler("xyz", [4, 3, -2], degrees=True).as_matrix(), np.array([2.0, 1.0, -3.0]))
    # the source covers only part of the target: a crop around the bump
    sv, st, _ = crop_mesh(true.inverse().apply(V), T, true.inverse().apply(np.array([[0.0, -5.0, 85.0]]))[0], 60.0)
    res = icp(sv, V, vertex_normals(V, T), scale=False, source_boundary=boundary_vertices(st, len(sv)),
              target_boundary=boundary_vertices(T, len(V)))
    assert res.transform.s == 1.0
    np.testing.assert_allclose(res.transform.R, true.R, atol=1e-5)
    np.testing.assert_allclose(res.transform.t, true.t, atol=1e-3)


@pytest.mark.parametrize("d", [0.0, 0.5, 2.0, -3.0])
def test_point_to_plane_of_offset_plane_is_d(d):
    gt, gt_t = grid(30, z=0.0)
    pred, pred_t = grid(30, z=d)
    pred[:, :2] += 0.37  # a different sampling must not matter for a plane
    n = vertex_normals(gt, gt_t)
    np.testing.assert_allclose(n, np.tile([0.0, 0.0, 1.0], (len(gt), 1)), atol=1e-12)
    dist, valid = point_to_plane(pred, gt, n)
    np.testing.assert_allclose(dist, abs(d), atol=1e-9)
    out = symmetric_point_to_plane(pred, pred_t, gt, gt_t)
    assert out["mean_mm"] == pytest.approx(abs(d), abs=1e-9)
    assert out["pred_to_gt_mm"] == pytest.approx(abs(d), abs=1e-9)
    assert out["gt_to_pred_mm"] == pytest.approx(abs(d), abs=1e-9)
    # pairs whose nearest vertex is on the other surface's border are outside the overlap
    assert 0.8 < out["overlap_pred"] < 1.0 and 0.8 < out["overlap_gt"] < 1.0


def test_point_to_plane_ignores_sliding_and_uses_gt_normals():
    gt, gt_t = grid(30, z=0.0)
    tilted = gt.copy()
    tilted[:, 2] = 0.1 * tilted[:, 0]  # points off the plane by 0.1 x
    dist, _ = point_to_plane(tilted, gt, vertex_normals(gt, gt_t))
    np.testing.assert_allclose(dist, np.abs(0.1 * gt[:, 0]), atol=1e-9)


def test_overlap_excludes_points_beyond_the_ground_truth():
    gt, gt_t = grid(21, half=(50.0, 50.0), z=0.0)
    pred, pred_t = grid(41, half=(100.0, 100.0), z=1.0)  # four times the area, 1 mm above
    pred[np.abs(pred[:, 0]) > 60, 2] += 30.0  # far outside the ground truth: must not count
    out = symmetric_point_to_plane(pred, pred_t, gt, gt_t)
    assert out["mean_mm"] == pytest.approx(1.0, abs=1e-9)
    assert out["overlap_pred"] < 0.4


def test_crop_radius():
    pts = np.array([[0, 0, 0], [94.9, 0, 0], [0, 95.0, 0], [0, 0, 95.1], [60, 60, 60]], float)
    np.testing.assert_array_equal(crop_mask(pts, np.zeros(3), 95.0), [True, True, True, False, False])
    V, T = grid(40, half=(150.0, 150.0), height=face_like)
    c = np.array([0.0, -5.0, 85.0])
    cv, ct, keep = crop_mesh(V, T, c, 95.0)
    assert np.linalg.norm(cv - c, axis=1).max() <= 95.0
    assert np.linalg.norm(V[~keep] - c, axis=1).min() > 95.0
    assert ct.max() < len(cv) and len(ct) > 0
    np.testing.assert_allclose(cv[ct], V[T[keep[T].all(1)]])  # the same triangles, renumbered


def test_boundary_vertices_of_grid():
    V, T = grid(6)
    b = boundary_vertices(T, len(V)).reshape(6, 6)
    assert b[0].all() and b[-1].all() and b[:, 0].all() and b[:, -1].all()
    assert not b[1:-1, 1:-1].any()


def test_evaluate_geometry_zero_for_a_moved_copy():
    V, T = grid(50, height=face_like)
    nose = V[np.argmax(V[:, 2])]
    move = Similarity(1.05, Rotation.from_euler("xyz", [5, -5, 3], degrees=True).as_matrix(), np.array([10.0, -20.0, 5.0]))
    r = evaluate_geometry(move.apply(V), T, move.apply(nose[None])[0], V, T, nose, radius=95.0)
    assert r.error_mm < 1e-6
    assert r.scale == pytest.approx(1 / 1.05, abs=1e-6)
    # a 2 mm offset along the view direction is removed by ICP (translation is free) ...
    assert evaluate_geometry(V + [0, 0, 2.0], T, nose + [0, 0, 2.0], V, T, nose).error_mm < 1e-6
    # ... while a real shape difference is not
    V2 = V.copy()
    V2[:, 2] += 4 * np.exp(-(V2[:, 0] ** 2 + (V2[:, 1] - 40) ** 2) / (2 * 15**2))
    assert evaluate_geometry(V2, T, nose, V, T, nose).error_mm > 0.1
    with pytest.raises(FacefitError):
        evaluate_geometry(V, T, nose + 1000.0, V, T, nose)


@pytest.mark.parametrize("size", [0.8, 1.25])
def test_evaluate_geometry_does_not_crop_the_prediction(size):
    """A prediction of the right shape at the wrong size: ICP's scale undoes the size, and the
    whole cropped ground truth stays in the overlap. (Cropping the prediction at 95 mm of its
    own size would cut it at a sphere of 95 / size mm of the ground truth's: a smaller
    overlap for a prediction that is too large, and a border that pulls the scale.)"""
    V, T = grid(60, half=(150.0, 150.0), height=face_like)  # a surface well beyond the 95 mm crop
    nose = V[np.argmax(V[:, 2])]
    pred = size * V
    r = evaluate_geometry(pred, T, size * nose, V, T, nose, radius=95.0)
    assert r.error_mm < 0.05
    assert r.scale == pytest.approx(1 / size, abs=0.01)
    assert r.overlap_gt > 0.97
    assert r.n_pred == len(V)  # the whole prediction took part
    assert r.n_gt == int(crop_mask(V, nose, 95.0).sum())
    # the wrong nose tip of a prediction only moves ICP's start; a wrong ground-truth nose tip empties its crop
    with pytest.raises(FacefitError, match="ground-truth vertices within 95 mm"):
        evaluate_geometry(V, T, nose, V, T, nose + 1000.0)


def test_dense_error():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 3)) * 40
    R = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    assert dense_error(2.0 * a @ R.T + 5, a) < 1e-9
    b = a.copy()
    b[:, 2] += rng.choice([-1.0, 1.0], size=100)
    assert 0.5 < dense_error(b, a) < 1.0


def test_scan_nose_tip_and_units():
    V, _ = grid(60, half=(100.0, 130.0), height=face_like)
    V = V + np.array([5.0, 20.0, 300.0])
    tip = scan_nose_tip(V)
    true = V[np.argmax(V[:, 2])]
    assert np.linalg.norm(tip - true) < 6.0
    # a spike far from the centre (e.g. a shoulder) does not win
    V2 = np.concatenate([V, [[95.0, -120.0, 500.0]]])
    assert np.linalg.norm(scan_nose_tip(V2) - true) < 6.0
    assert guess_units_scale(V) == 1.0
    assert guess_units_scale(V / 10.0) == 10.0
    assert guess_units_scale(V / 1000.0) == 1000.0
