"""MorphableModel: decode formula, gradients, sampling, subset, colour models, native files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.morphable import DEFAULT_SKIN_TONE, MorphableModel, compute_symmetry


def grid_face(nx: int = 7, ny: int = 6, width: float = 150.0, height: float = 200.0):
    """A face-like open shell facing +z: (V, 3) mm points and CCW-from-front triangles."""
    xs = np.linspace(-width / 2, width / 2, nx)
    ys = np.linspace(-height / 2, height / 2, ny)
    X, Y = np.meshgrid(xs, ys, indexing="xy")  # row j = y index, col i = x index
    Z = 60.0 * np.cos(X / width * 2.5) * np.cos(Y / height * 2.0)
    pts = np.stack([X, Y, Z], -1).reshape(-1, 3)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b = j * nx + i, j * nx + i + 1
            c, d = (j + 1) * nx + i + 1, (j + 1) * nx + i
            tris += [(a, b, c), (a, c, d)]
    return pts.astype(np.float32), np.asarray(tris, np.int64)


def tiny_model(seed: int = 0, ks: int = 4, kc: int = 3, ke: int = 2, landmarks: bool = True) -> MorphableModel:
    rng = np.random.default_rng(seed)
    pts, tri = grid_face()
    v = len(pts)
    lms = rng.choice(v, 68, replace=True) if landmarks else None
    return MorphableModel(
        name="tiny",
        mean_shape=pts,
        triangles=tri,
        shape_basis=rng.normal(size=(v, 3, ks)) * 3.0,
        shape_std=None,
        mean_color=rng.uniform(0.3, 0.7, size=(v, 3)),
        color_basis=rng.normal(size=(v, 3, kc)),
        color_std=np.full(kc, 0.05),
        expr_basis=rng.normal(size=(v, 3, ke)),
        expr_std=np.full(ke, 2.0),
        expr_names=[f"e{k}" for k in range(ke)],
        uv=rng.uniform(size=(v + 5, 2)),
        uv_triangles=tri,
        landmarks=lms,
        face_mask=pts[:, 1] > -60,
        symmetry=compute_symmetry(pts)[0],
        meta={"source": "test", "color_model": "statistical PCA from test"},
    )


def reference_decode(m: MorphableModel, s=None, c=None, e=None):
    """The documented formula in numpy (float64)."""
    v = m.mean_shape.astype(np.float64).reshape(-1)
    col = m.mean_color.astype(np.float64).reshape(-1)
    if s is not None:
        k = s.shape[1]
        v = v + (m.shape_basis.reshape(-1, m.n_shape)[:, :k] @ (s * m.shape_std[:k]).T).T
    if e is not None:
        k = e.shape[1]
        v = v + (m.expr_basis.reshape(-1, m.n_expr)[:, :k] @ (e * m.expr_std[:k]).T).T
    if c is not None:
        k = c.shape[1]
        col = col + (m.color_basis.reshape(-1, m.n_color)[:, :k] @ (c * m.color_std[:k]).T).T
    b = next((x.shape[0] for x in (s, c, e) if x is not None), 1)
    return np.broadcast_to(v, (b, v.shape[-1])).reshape(b, -1, 3), np.broadcast_to(col, (b, col.shape[-1])).reshape(b, -1, 3)


def test_bases_are_unit_norm_and_std_folds_the_scale():
    m = tiny_model()
    for b in (m.shape_basis, m.color_basis, m.expr_basis):
        norms = np.linalg.norm(b.reshape(-1, b.shape[2]), axis=0)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert m.shape_std.dtype == np.float32 and (m.shape_std > 3.0).all()  # 3 * sqrt(90) ~ 28
    assert m.triangles.dtype == np.int64 and m.face_mask.dtype == bool
    with pytest.raises(ValueError):
        m.mean_shape[0, 0] = 1.0  # read-only


def test_decode_matches_formula_and_partial_coefficients():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, m.n_shape, generator=g)
    c = torch.randn(3, 2, generator=g)  # fewer colour coefficients than components
    e = torch.randn(3, m.n_expr, generator=g)
    verts, cols = m.decode(s, c, e, clamp_colors=False)
    rv, rc = reference_decode(m, s.numpy(), c.numpy(), e.numpy())
    assert verts.shape == (3, m.n_vertices, 3) and cols.shape == (3, m.n_vertices, 3)
    np.testing.assert_allclose(verts.numpy(), rv, atol=1e-3)
    np.testing.assert_allclose(cols.numpy(), rc, atol=1e-5)
    # first k coefficients == all coefficients padded with zeros
    v2, _ = m.decode(torch.cat([s[:, :2], torch.zeros(3, m.n_shape - 2)], 1))
    v3, _ = m.decode(s[:, :2])
    torch.testing.assert_close(v2, v3)


def test_decode_defaults_dtype_device_and_clamp():
    m = tiny_model()
    verts, cols = m.decode(batch_size=2)
    assert verts.dtype == torch.float32 and verts.device.type == "cpu" and verts.shape[0] == 2
    np.testing.assert_allclose(verts[0].numpy(), m.mean_shape)
    v64, _ = m.decode(torch.zeros(1, 2, dtype=torch.float64))
    assert v64.dtype == torch.float64
    big = torch.full((1, m.n_color), 100.0)
    _, clamped = m.decode(color_coeffs=big)
    _, raw = m.decode(color_coeffs=big, clamp_colors=False)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert raw.max() > 1 or raw.min() < 0
    _, numpy_in = m.decode(color_coeffs=np.zeros((1, 1), np.float32))
    np.testing.assert_allclose(numpy_in[0].numpy(), m.mean_color, atol=1e-6)
    with pytest.raises(ValueError, match="coefficients but the model has"):
        m.decode(torch.zeros(1, m.n_shape + 1))
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.decode(torch.zeros(1, 2), torch.zeros(2, 2))


def test_decode_is_differentiable():
    m = tiny_model(ks=3, kc=2, ke=2)
    s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    e = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def f(s, c, e):
        v, col = m.decode(s, c, e, clamp_colors=False)
        return v.sum(-1), col.sum(-1)

    assert torch.autograd.gradcheck(f, (s, c, e), eps=1e-6, atol=1e-4)


def test_sample_is_seeded_and_decodes():
    m = tiny_model()
    a = m.sample(5, torch.Generator().manual_seed(3), expr=True)
    b = m.sample(5, torch.Generator().manual_seed(3), expr=True)
    assert set(a) == {"shape_coeffs", "color_coeffs", "expr_coeffs"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert a["shape_coeffs"].shape == (5, m.n_shape) and a["color_coeffs"].shape == (5, m.n_color)
    verts, cols = m.decode(**a)
    assert verts.shape == (5, m.n_vertices, 3)
    big = m.sample(4000, torch.Generator().manual_seed(0), color=False)
    assert abs(big["shape_coeffs"].std().item() - 1.0) < 0.05
    bs = m.replace(meta={**m.meta, "expr_model_kind": "blendshape"})
    w = bs.sample(100, torch.Generator().manual_seed(0), shape=False, color=False, expr=True)["expr_coeffs"]
    assert w.min() >= 0 and w.max() <= 1


def test_landmarks_and_triangles_helpers():
    m = tiny_model()
    verts, _ = m.decode(batch_size=2)
    lp = m.landmark_positions(verts)
    assert lp.shape == (2, 68, 3)
    torch.testing.assert_close(lp[0], verts[0, torch.tensor(np.array(m.landmarks))])
    np.testing.assert_array_equal(m.landmark_positions(m.mean_shape), m.mean_shape[m.landmarks])
    t = m.torch_triangles()
    assert t.dtype == torch.int64 and t.shape == (m.n_triangles, 3)
    assert m.torch_triangles() is t  # cached
    with pytest.raises(FacefitError, match="no 68-point"):
        tiny_model(landmarks=False).landmark_positions(verts)


def test_subset_reindexes_and_keeps_decoding():
    m = tiny_model(landmarks=False)
    keep = m.mean_shape[:, 0] <= 30  # drop the right-most columns
    sub = m.subset(keep)
    assert sub.n_vertices == keep.sum()
    assert sub.triangles.max() < sub.n_vertices and sub.n_triangles < m.n_triangles
    # every kept triangle maps back to an original one
    orig = np.nonzero(keep)[0]
    full_tris = {tuple(t) for t in m.triangles.tolist()}
    assert all(tuple(orig[t]) in full_tris for t in sub.triangles)
    assert len(sub.uv) == len(np.unique(sub.uv_triangles)) and sub.uv_triangles.max() < len(sub.uv)
    for b in (sub.shape_basis, sub.expr_basis):
        np.testing.assert_allclose(np.linalg.norm(b.reshape(-1, b.shape[2]), axis=0), 1.0, rtol=1e-5)
    s = torch.randn(2, m.n_shape)
    e = torch.randn(2, m.n_expr)
    c = torch.randn(2, m.n_color)
    v_full, c_full = m.decode(s, c, e)
    v_sub, c_sub = sub.decode(s, c, e)
    torch.testing.assert_close(v_sub, v_full[:, torch.tensor(orig)], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(c_sub, c_full[:, torch.tensor(orig)], atol=1e-5, rtol=1e-4)
    assert sub.symmetry is not None and sub.symmetry.max() < sub.n_vertices


def test_subset_refuses_to_drop_landmarks():
    m = tiny_model()
    keep = np.ones(m.n_vertices, bool)
    keep[m.landmarks[5]] = False
    with pytest.raises(FacefitError, match="landmark"):
        m.subset(keep)
    sub = m.subset(np.ones(m.n_vertices, bool))
    np.testing.assert_array_equal(sub.landmarks, m.landmarks)


def test_with_color_model_and_content_hash():
    m = tiny_model()
    h = m.content_hash
    assert len(h) == 16 and int(h, 16) >= 0
    assert m.with_name("other").content_hash == h  # name and meta are not hashed
    assert m.replace(meta={"x": 1}).content_hash == h
    rng = np.random.default_rng(1)
    m2 = m.with_color_model(np.full((m.n_vertices, 3), 0.5), rng.normal(size=(m.n_vertices, 3, 5)), None, "heuristic test", names=list("abcde"))
    assert m2.n_color == 5 and m2.meta["color_model"] == "heuristic test" and m2.meta["color_names"] == list("abcde")
    assert m2.content_hash != h
    m3 = m.with_color_model(np.full((m.n_vertices, 3), 0.5), description="none")
    assert m3.n_color == 0
    _, cols = m3.decode(color_coeffs=torch.zeros(1, 0))
    assert torch.allclose(cols, torch.full_like(cols, 0.5))


def test_default_colour_is_flat_skin_tone():
    pts, tri = grid_face()
    m = MorphableModel("plain", pts, tri)
    assert m.n_shape == m.n_color == m.n_expr == 0
    np.testing.assert_allclose(m.mean_color, np.tile(DEFAULT_SKIN_TONE, (len(pts), 1)), atol=1e-6)
    assert m.meta["color_model"] == "none"
    with pytest.raises(ValueError):
        MorphableModel("bad", pts, tri + len(pts))


def test_save_load_roundtrip(tmp_path):
    m = tiny_model()
    p = m.save(tmp_path / "m.npz")
    with np.load(p, allow_pickle=False) as z:  # plain arrays only
        header = json.loads(str(z["header"][()]))
    assert header["format"] == "facefit-morphable-model" and header["summary"]["n_shape"] == m.n_shape
    back = MorphableModel.load(p)
    assert back.content_hash == m.content_hash
    assert back.name == "tiny" and back.expr_names == m.expr_names and back.meta["source"] == "test"
    np.testing.assert_array_equal(back.symmetry, m.symmetry)
    assert MorphableModel.read_header(p)["content_hash"] == m.content_hash
    s = torch.randn(2, m.n_shape)
    torch.testing.assert_close(back.decode(s)[0], m.decode(s)[0])


def _arrays(m: MorphableModel, folder: Path) -> dict:
    with np.load(m.save(folder / "src.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("header"), "no header"),
        (lambda a: a.pop("triangles"), "lacks array"),
        (lambda a: a.__setitem__("mean_shape", a["mean_shape"].astype(np.float64)), "expected float32"),
        (lambda a: a.__setitem__("shape_basis", a["shape_basis"] * 2), "unit norm"),
        (lambda a: a["mean_color"].__setitem__((0, 0), np.nan), "non-finite"),
        (lambda a: a["triangles"].__setitem__((0, 0), 10_000), "out of range"),
        (lambda a: a.__setitem__("shape_std", a["shape_std"][:2]), "shape_std"),
        (lambda a: a.__setitem__("header", np.array(json.dumps({"format": "x"}))), "not a facefit model"),
    ],
)
def test_load_rejects_bad_files_with_one_line(tmp_path, mutate, message):
    arrays = _arrays(tiny_model(), tmp_path)
    mutate(arrays)
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, **arrays)
    with pytest.raises(InvalidFileError, match=message) as exc:
        MorphableModel.load(bad)
    assert "\n" not in str(exc.value)


def test_load_rejects_non_npz_and_pickles(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(InvalidFileError):
        MorphableModel.load(junk)
    obj = tmp_path / "obj.npz"
    np.savez(obj, header=np.array([{"format": "facefit-morphable-model"}], dtype=object))
    with pytest.raises(InvalidFileError):
        MorphableModel.load(obj)
    with pytest.raises(ModelNotFoundError):
        MorphableModel.load(tmp_path / "missing.npz")


def test_compute_symmetry_on_symmetric_grid():
    pts, _ = grid_face()
    sym, err = compute_symmetry(pts)
    assert err < 1e-4
    np.testing.assert_allclose(pts[sym][:, 0], -pts[:, 0], atol=1e-4)
    np.testing.assert_array_equal(sym[sym], np.arange(len(pts)))


def test_import_has_no_torch_side_effect():
    code = "import sys, facefit.morphable, facefit.model_io; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
