"""Loaders on small synthetic files in the exact source layouts (BFM 2017/2009, FLAME,
ICT-FaceKit tree), the safe unpickler, the model store and the offline fetch."""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit import model_io
from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.loaders.common import detect_scale_to_mm, landmark_frame, outward_flux
from facefit.loaders.obj import parse_obj_mesh, parse_obj_vertices
from facefit.morphable import MorphableModel
from facefit.safe_pickle import safe_loads


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Model store and cache in tmp; no $FACEFIT_MODEL."""
    monkeypatch.setenv("FACEFIT_MODEL_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("FACEFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACEFIT_MODEL", raising=False)


def grid_face(nx: int = 8, ny: int = 7, width: float = 150.0, height: float = 200.0):
    """Face-like shell facing +z in mm and triangles counter-clockwise seen from +z."""
    xs = np.linspace(-width / 2, width / 2, nx)
    ys = np.linspace(-height / 2, height / 2, ny)
    X, Y = np.meshgrid(xs, ys, indexing="xy")
    Z = 60.0 * np.cos(X / width * 2.5) * np.cos(Y / height * 2.0)
    pts = np.stack([X, Y, Z], -1).reshape(-1, 3)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            tris += [(a, b, c), (a, c, d)]
    return pts, np.asarray(tris, np.int64)


def orthonormal(rows: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, k)))
    return q


# --------------------------------------------------------------------------- BFM 2017


def write_bfm2017(path: Path, *, flip: bool = False, ks=5, kc=4, ke=3):
    import h5py

    pts, tri = grid_face()
    v = len(pts)
    rng = np.random.default_rng(0)
    cells = tri[:, [0, 2, 1]] if flip else tri
    data = {
        "shape": (pts.reshape(-1), orthonormal(3 * v, ks, 1), np.linspace(30, 2, ks) ** 2),
        "color": (rng.uniform(0.3, 0.7, 3 * v), orthonormal(3 * v, kc, 2), np.linspace(0.4, 0.1, kc) ** 2),
        "expression": (np.zeros(3 * v), orthonormal(3 * v, ke, 3), np.linspace(10, 1, ke) ** 2),
    }
    with h5py.File(path, "w") as f:
        for part, (mean, basis, var) in data.items():
            f[f"{part}/model/mean"] = mean.astype(np.float32)
            f[f"{part}/model/pcaBasis"] = basis.astype(np.float32)
            f[f"{part}/model/pcaVariance"] = var.astype(np.float32)
            f[f"{part}/model/noiseVariance"] = np.float32(0.0)
            f[f"{part}/representer/points"] = pts.T.astype(np.float32)
            f[f"{part}/representer/cells"] = cells.T.astype(np.uint32)
    return data, tri


def test_bfm2017_decode_matches_statismo_formula(tmp_path):
    path = tmp_path / "model2017-1_bfm_nomouth.h5"
    data, tri = write_bfm2017(path)
    m = model_io.convert_model("bfm2017", path)
    assert (m.n_shape, m.n_color, m.n_expr) == (5, 4, 3)
    assert m.meta["units_source"] == "mm" and m.meta["color_model"].startswith("statistical PCA")
    np.testing.assert_array_equal(m.triangles, tri)
    assert m.symmetry is not None and m.landmarks is None
    g = torch.Generator().manual_seed(0)
    s, c, e = torch.randn(2, 5, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 3, generator=g)
    verts, cols = m.decode(s, c, e, clamp_colors=False)
    ref_v = data["shape"][0] + (data["shape"][1] @ (s.numpy() * np.sqrt(data["shape"][2])).T).T
    ref_v += (data["expression"][1] @ (e.numpy() * np.sqrt(data["expression"][2])).T).T
    ref_c = data["color"][0] + (data["color"][1] @ (c.numpy() * np.sqrt(data["color"][2])).T).T
    np.testing.assert_allclose(verts.numpy().reshape(2, -1), ref_v, atol=2e-3)
    np.testing.assert_allclose(cols.numpy().reshape(2, -1), ref_c, atol=1e-5)


def test_bfm2017_winding_is_fixed(tmp_path):
    path = tmp_path / "flipped.h5"
    _, tri = write_bfm2017(path, flip=True)
    m = model_io.convert_model("bfm2017", path)
    assert m.meta.get("winding_flipped") is True
    assert outward_flux(m.mean_shape, m.triangles) > 0


def test_bfm2017_missing_dataset_is_clear(tmp_path):
    import h5py

    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f["shape/model/mean"] = np.zeros(30, np.float32)
    with pytest.raises(InvalidFileError, match="pcaBasis") as exc:
        model_io.convert_model("bfm2017", path)
    assert "\n" not in str(exc.value)
    not_h5 = tmp_path / "x.h5"
    not_h5.write_bytes(b"hello")
    with pytest.raises(InvalidFileError):
        model_io.convert_model("bfm2017", not_h5)


def _replace_dataset(path, key, data, **kw):
    import h5py

    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, data=data, **kw)


def test_bfm2017_wrong_basis_rows_names_both_counts(tmp_path):
    path = tmp_path / "rows.h5"
    data, _ = write_bfm2017(path)
    v = data["shape"][0].size // 3
    _replace_dataset(path, "shape/model/pcaBasis", data["shape"][1][:-3].astype(np.float32))
    with pytest.raises(InvalidFileError) as ei:
        model_io.convert_model("bfm2017", path)
    msg = str(ei.value)
    assert f"shape basis has {3 * v - 3} rows, expected {3 * v} (x, y, z of {v} vertices)" in msg, msg
    assert "\n" not in msg
    path2 = tmp_path / "colour.h5"
    data, _ = write_bfm2017(path2)
    _replace_dataset(path2, "color/model/mean", data["color"][0][:-6].astype(np.float32))
    with pytest.raises(InvalidFileError, match=rf"color mean has {3 * v - 6} values, expected {3 * v}"):
        model_io.convert_model("bfm2017", path2)


@pytest.mark.parametrize("key", ["shape/model/mean", "shape/model/pcaVariance", "shape/representer/cells",
                                 "color/model/pcaBasis"])
@pytest.mark.parametrize("kind", ["bytes", "vlen"])
def test_bfm2017_string_data_is_refused_clearly(tmp_path, key, kind):
    import h5py

    path = tmp_path / "strings.h5"
    write_bfm2017(path)
    with h5py.File(path, "r") as f:
        shape = f[key].shape
    if kind == "bytes":
        _replace_dataset(path, key, np.full(shape, b"1.5"))
    else:
        _replace_dataset(path, key, np.full(shape, "1.5", dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(InvalidFileError) as ei:
        model_io.convert_model("bfm2017", path)
    msg = str(ei.value)
    assert f"/{key} holds text" in msg and "not real numbers" in msg and str(path) in msg, msg


def test_bfm2017_group_instead_of_dataset(tmp_path):
    import h5py

    path = tmp_path / "group.h5"
    write_bfm2017(path)
    with h5py.File(path, "a") as f:
        del f["shape/model/pcaBasis"]
        f.create_group("shape/model/pcaBasis")
    with pytest.raises(InvalidFileError, match="pcaBasis is a group, not a dataset"):
        model_io.convert_model("bfm2017", path)


# --------------------------------------------------------------------------- BFM 2009


def write_bfm2009(path: Path, ks=6, kc=4):
    import scipy.io

    pts, tri = grid_face()
    v = len(pts)
    um = 1000.0
    rng = np.random.default_rng(5)
    d = {
        "shapeMU": (pts.reshape(-1, 1) * um),
        "shapePC": orthonormal(3 * v, ks, 6),
        "shapeEV": (np.linspace(20, 1, ks) * um).reshape(-1, 1),  # standard deviations
        "texMU": rng.uniform(60, 200, (3 * v, 1)),
        "texPC": orthonormal(3 * v, kc, 7),
        "texEV": np.linspace(30, 5, kc).reshape(-1, 1),
        "tl": (tri + 1).astype(np.float64),
        "segbin": np.zeros((v, 4)),
    }
    scipy.io.savemat(path, d)
    return d, tri


def test_bfm2009_micrometres_and_0_255_colour(tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    d, tri = write_bfm2009(path)
    assert model_io.detect_kind(path) == "bfm2009"
    m = model_io.convert_model("bfm2009", path)
    assert m.meta["units_source"] == "um"
    width = np.ptp(m.mean_shape[:, 0])
    assert 140 <= width <= 160
    np.testing.assert_array_equal(m.triangles, tri)
    s = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    c = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    verts, cols = m.decode(s, c, clamp_colors=False)
    ref_v = (d["shapeMU"][:, 0] + (d["shapePC"] @ (s.numpy() * d["shapeEV"][:, 0]).T).T) / 1000.0
    ref_c = (d["texMU"][:, 0] + (d["texPC"] @ (c.numpy() * d["texEV"][:, 0]).T).T) / 255.0
    np.testing.assert_allclose(verts.numpy().reshape(3, -1), ref_v, atol=2e-3)
    np.testing.assert_allclose(cols.numpy().reshape(3, -1), ref_c, atol=1e-5)
    assert 0.2 < float(m.mean_color.mean()) < 0.8


def test_bfm2009_text_variable_is_refused_clearly(tmp_path):
    import scipy.io

    path = tmp_path / "01_MorphableModel.mat"
    d, _ = write_bfm2009(path)
    d["shapeEV"] = np.array(["abcdef"] * len(d["shapeEV"]))
    scipy.io.savemat(path, d)
    with pytest.raises(InvalidFileError, match="the shape variance vector holds text, not real numbers"):
        model_io.convert_model("bfm2009", path)


def test_units_detection():
    pts, _ = grid_face()
    assert detect_scale_to_mm(pts)[1] == "mm"
    assert detect_scale_to_mm(pts / 10)[1] == "cm"
    assert detect_scale_to_mm(pts / 1000)[1] == "m"
    assert detect_scale_to_mm(pts * 1000)[1] == "um"
    with pytest.raises(InvalidFileError, match="units"):
        detect_scale_to_mm(pts * 1e7)


# --------------------------------------------------------------------------- FLAME


@pytest.fixture
def fake_chumpy(monkeypatch):
    """A stand-in ``chumpy.ch.Ch`` class so the test can write FLAME-style pickles."""

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    mod.Ch = Ch
    pkg.ch = mod
    monkeypatch.setitem(sys.modules, "chumpy", pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    return Ch


def flame_dict(Ch, n_s=300, n_e=100):
    import scipy.sparse

    pts, tri = grid_face()
    v = len(pts)
    rng = np.random.default_rng(9)
    dirs = rng.normal(size=(v, 3, n_s + n_e)) * 1e-4  # metres
    return {
        "v_template": Ch(pts / 1000.0),
        "shapedirs": Ch(dirs),
        "f": tri.astype(np.uint32),
        "J_regressor": scipy.sparse.csc_matrix(rng.uniform(size=(5, v)) * (rng.uniform(size=(5, v)) > 0.8)),
        "weights": rng.uniform(size=(v, 5)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "posedirs": rng.normal(size=(v, 3, 36)) * 1e-5,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@pytest.mark.parametrize("protocol", [1, 2])
def test_flame_pickle_with_chumpy_loads(tmp_path, fake_chumpy, protocol):
    d = flame_dict(fake_chumpy)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    m = model_io.load_model(path)
    # FLAME has no albedo: facefit attaches its default (heuristic) colour model, and says so
    assert (m.n_shape, m.n_expr) == (300, 100)
    assert m.n_color >= 2 and m.meta["color_model"].startswith("heuristic")
    assert m.meta["units_source"] == "m" and m.meta["source"] == "FLAME"
    assert "J_regressor" in m.meta["unused_keys"]
    verts_m = d["v_template"].x
    dirs = d["shapedirs"].x
    s = torch.randn(2, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    verts, _ = m.decode(s, expr_coeffs=e)
    ref = verts_m[None] + np.einsum("vck,bk->bvc", dirs[:, :, :300], s.numpy()) + np.einsum("vck,bk->bvc", dirs[:, :, 300:], e.numpy())
    np.testing.assert_allclose(verts.numpy(), ref * 1000.0, atol=1e-3)
    # std = column norm in mm
    np.testing.assert_allclose(m.shape_std, np.linalg.norm(dirs[:, :, :300].reshape(-1, 300), axis=0) * 1000, rtol=1e-5)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(marker), "f": np.zeros((1, 3))}, protocol=2))
    with pytest.raises(InvalidFileError, match="refusing") as exc:
        model_io.convert_model("flame", path)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(V__import__('os').system('true')\ntR.",
        b"csubprocess\nPopen\n((Vtrue\nltR.",
        b"cposix\nsystem\n(Vtrue\ntR.",
        b"ccopy_reg\n_reconstructor\n(cos\n_wrap_close\nc__builtin__\nobject\nNtR.",
        b"c_codecs\nencode\n(Vx\nVrot13\ntR.",
    ],
)
def test_safe_unpickler_refuses_code(payload):
    with pytest.raises(InvalidFileError, match="refusing"):
        safe_loads(payload, name="evil.pkl")


def test_safe_unpickler_accepts_plain_data():
    import scipy.sparse

    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x"], "s": scipy.sparse.csr_matrix(np.eye(3)),
           "n": np.float64(2.0), "t": (np.int64(3), b"bytes")}
    for proto in (2, 4, 5):
        back = safe_loads(pickle.dumps(obj, protocol=proto))
        np.testing.assert_array_equal(back["a"], obj["a"])
        assert back["b"] == obj["b"] and back["t"][1] == b"bytes"
        np.testing.assert_array_equal(back["s"].toarray(), np.eye(3))
    with pytest.raises(InvalidFileError):
        safe_loads(b"\x80\x02}q\x00(X")  # truncated


# --------------------------------------------------------------------------- OBJ + ICT tree


def test_obj_parsers():
    text = b"# c\nmtllib x.mtl\nv 1 2 3\nv 4 5 6\nv -1 -2 -3.5e-1\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl A\nf 1/1 2/2 3/3\nf 1/1 2/2 3/3 1/4\n"
    v = parse_obj_vertices(text)
    np.testing.assert_allclose(v, [[1, 2, 3], [4, 5, 6], [-1, -2, -0.35]])
    np.testing.assert_allclose(parse_obj_vertices(text, max_vertices=2), v[:2])
    np.testing.assert_allclose(parse_obj_vertices(text[:25], max_vertices=3, truncated=True), v[:1])
    # non-contiguous vertex lines use the careful parser
    np.testing.assert_allclose(parse_obj_vertices(b"v 1 2 3\nvt 0 0\nv 4 5 6\n"), [[1, 2, 3], [4, 5, 6]])
    mesh = parse_obj_mesh(text)
    np.testing.assert_array_equal(mesh["triangles"], [[0, 1, 2], [0, 1, 2], [0, 2, 0]])
    np.testing.assert_array_equal(mesh["uv_triangles"], [[0, 1, 2], [0, 1, 2], [0, 2, 3]])
    assert mesh["materials"] == ["A"]
    with pytest.raises(InvalidFileError):
        parse_obj_mesh(b"v 1 2 3\nf 1 2 9\n")


def _lm_indices(pts_cm: np.ndarray) -> list[int]:
    """68 'landmarks' on the synthetic grid: eyes, chin and nose where orientation needs them."""
    targets = {36: (-4.5, 3.0), 45: (4.5, 3.0), 8: (0.0, -7.0), 30: (0.0, 0.0)}
    lms = [0] * 68
    for k, (x, y) in targets.items():
        lms[k] = int(np.argmin((pts_cm[:, 0] - x) ** 2 + (pts_cm[:, 1] - y) ** 2))
    for k in range(68):
        if k not in targets:
            lms[k] = k * 7
    return lms


def write_ict_tree(root: Path, n_id: int = 3, expr=("jawOpen", "mouthSmile_L")) -> dict:
    """A tiny tree in the ICT-FaceKit layout: 100x100 grid (10,000 vertices) in cm, quads, UVs."""
    n = 100
    xs = np.linspace(-9, 9, n)
    ys = np.linspace(-12, 12, n)
    X, Y = np.meshgrid(xs, ys, indexing="xy")
    Z = 6 * np.cos(X / 9 * 1.2) * np.cos(Y / 12 * 1.0)
    neutral = np.stack([X, Y, Z], -1).reshape(-1, 3)
    quads = []
    for j in range(n - 1):
        for i in range(n - 1):
            a = j * n + i
            quads.append((a, a + 1, a + n + 1, a + n))
    quads = np.asarray(quads) + 1
    faces = "".join(f"f {a}/{a} {b}/{b} {c}/{c} {d}/{d}\n" for a, b, c, d in quads)
    uvs = "".join(f"vt {u:.5f} {w:.5f}\n" for u, w in np.stack([(X.ravel() + 9) / 18, (Y.ravel() + 12) / 24], 1))

    def obj(v):
        return ("# ICT-like\nmtllib ICTFaceModelMaterial.mtl\n" + "".join(f"v {a:.9g} {b:.9g} {c:.9g}\n" for a, b, c in v)
                + uvs + "usemtl M_Face\n" + faces).encode()

    fx = root / "ICT-FaceKit-abc1234" / "FaceXModel"
    fx.mkdir(parents=True)
    (fx / "generic_neutral_mesh.obj").write_bytes(obj(neutral))
    rng = np.random.default_rng(0)
    offsets = {}
    for k in range(n_id):
        off = rng.normal(size=neutral.shape) * 0.05 * (k + 1)  # cm
        offsets[f"identity{k:03d}"] = off
        (fx / f"identity{k:03d}.obj").write_bytes(obj(neutral + off))
    for e in expr:
        off = np.zeros_like(neutral)
        off[:, 1] = -0.5 * (neutral[:, 1] < -3)  # 'jaw' moves down 5 mm
        offsets[e] = off
        (fx / f"{e}.obj").write_bytes(obj(neutral + off))
    (fx / "vertex_indices.json").write_text(json.dumps({"expressions": list(expr), "idx_to_landmark_verts": _lm_indices(neutral)}))
    return {"root": root / "ICT-FaceKit-abc1234", "neutral": neutral, "offsets": offsets, "expr": list(expr)}


def test_ict_tree_folder_and_zip_agree(tmp_path):
    info = write_ict_tree(tmp_path / "src")
    m = model_io.convert_model("ict", info["root"])
    assert model_io.detect_kind(info["root"]) == "ict"
    assert m.n_vertices == 9409 and m.n_shape == 3 and m.n_expr == 2 and m.expr_names == info["expr"]
    assert m.meta["source_commit"] == "abc1234" and m.meta.get("rotated_to_conventions") is None
    np.testing.assert_allclose(m.mean_shape, info["neutral"][:9409] * 10, atol=1e-4)
    # identity mode k = identity_k - neutral (cm -> mm), N(0,1) coefficient
    off0 = info["offsets"]["identity000"][:9409] * 10
    np.testing.assert_allclose(m.shape_basis[..., 0] * m.shape_std[0], off0, atol=2e-3)
    v, _ = m.decode(torch.tensor([[1.0, 0, 0]]))
    np.testing.assert_allclose(v[0].numpy(), info["neutral"][:9409] * 10 + off0, atol=2e-3)
    assert m.uv is not None and m.uv_triangles.shape == m.triangles.shape
    assert outward_flux(m.mean_shape, m.triangles) > 0  # quads split keeping CCW winding
    assert m.symmetry is None  # the cut at vertex 9409 leaves a partial grid row: not symmetric
    zpath = tmp_path / "ICT-FaceKit-abc1234.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(info["root"].rglob("*")):
            zf.write(p, p.relative_to(info["root"].parent).as_posix())
    mz = model_io.convert_model("ict", zpath)
    assert mz.content_hash == m.content_hash
    head = model_io.convert_model("ict", zpath, "head")
    assert head.n_vertices == 10_000 and head.face_mask.sum() == 9409
    assert head.symmetry is not None and head.meta["symmetry_max_error_mm"] < 1e-3


def test_ict_rotated_source_is_brought_to_conventions(tmp_path):
    info = write_ict_tree(tmp_path / "src", n_id=1, expr=("jawOpen",))
    fx = info["root"] / "FaceXModel"
    # rotate the whole tree by 90 degrees about z (y becomes -x)
    for p in fx.glob("*.obj"):
        lines = []
        for line in p.read_bytes().split(b"\n"):
            if line.startswith(b"v "):
                x, y, z = map(float, line.split()[1:])
                line = f"v {y:.9g} {-x:.9g} {z:.9g}".encode()
            lines.append(line)
        p.write_bytes(b"\n".join(lines))
    m = model_io.convert_model("ict", info["root"])
    assert m.meta.get("rotated_to_conventions") is not None
    np.testing.assert_allclose(m.mean_shape, info["neutral"][:9409] * 10, atol=1e-3)
    lm = m.mean_shape[m.landmarks]
    assert lm[8, 1] < lm[36, 1] and lm[36, 0] < lm[45, 0]
    np.testing.assert_allclose(landmark_frame(m.mean_shape, m.landmarks), np.eye(3))


# --------------------------------------------------------------------------- store


def test_store_import_list_resolve_and_precedence(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "find_shared_ict", lambda: None)
    with pytest.raises(ModelNotFoundError, match="facefit model fetch ict") as exc:
        model_io.resolve_model()
    assert "\n" not in str(exc.value)

    h5 = tmp_path / "bfm.h5"
    write_bfm2017(h5)
    stored = model_io.import_model("bfm2017", h5)
    assert stored == Path(os.environ["FACEFIT_MODEL_DIR"]) / "bfm2017.npz" and stored.is_file()
    rows = model_io.list_models()
    assert [(r["name"], r["default"], r["shape"]) for r in rows] == [("bfm2017", True, 5)]
    m = model_io.resolve_model()
    assert m.name == "bfm2017" and model_io.resolve_model("bfm2017") is m  # memoised load

    mat = tmp_path / "01_MorphableModel.mat"
    write_bfm2009(mat)
    model_io.import_model("bfm2009", mat, name="basel09")
    assert model_io.default_model_name() == "bfm2017"  # first stays default
    model_io.set_default_model("basel09")
    assert model_io.resolve_model().name == "basel09"
    out = model_io.import_model("bfm2017", h5, out=tmp_path / "elsewhere.npz")
    assert model_io.resolve_model(out).name == "bfm2017"  # explicit path wins
    monkeypatch.setenv("FACEFIT_MODEL", "bfm2017")
    assert model_io.resolve_model().name == "bfm2017"  # env beats the store default
    with pytest.raises(ModelNotFoundError):
        model_io.resolve_model("no-such-model")
    with pytest.raises(FacefitError, match="invalid model name"):
        model_io.import_model("bfm2017", h5, name="../evil")
    with pytest.raises(FacefitError, match="unknown model kind"):
        model_io.import_model("nope", h5)

    info = model_io.model_info(model_io.resolve_model("bfm2017"))
    assert info["units"] == "mm" and info["shape_components"] == 5 and info["color_components"] == 4
    assert "no 68-point landmarks" in info["lacks"] and len(info["content_hash"]) == 16


def test_detect_kind(tmp_path):
    pts, tri = grid_face()
    native = MorphableModel("x", pts, tri).save(tmp_path / "x.npz")
    assert model_io.detect_kind(native) == "native"
    bad = tmp_path / "what.xyz"
    bad.write_bytes(b"hello")
    with pytest.raises(InvalidFileError, match="unknown model format"):
        model_io.detect_kind(bad)
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(InvalidFileError, match="neither"):
        model_io.load_model(z)


def test_fetch_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "ICT_URL", "http://127.0.0.1:9/ICT-FaceKit.zip")
    t0 = time.time()
    with pytest.raises(FacefitError) as exc:
        model_io.fetch_ict(tmp_path / "dl", timeout=5)
    assert time.time() - t0 < 10
    msg = str(exc.value)
    assert "\n" not in msg and "could not download" in msg and "facefit model import ict" in msg
    assert not list((tmp_path / "dl").glob("*.zip"))


def test_verify_rejects_wrong_archive(tmp_path):
    info = write_ict_tree(tmp_path / "src", n_id=1, expr=("jawOpen",))
    zpath = tmp_path / "fake.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(info["root"].rglob("*")):
            zf.write(p, p.relative_to(info["root"].parent).as_posix())
    with pytest.raises(InvalidFileError, match="checksum mismatch"):
        model_io.verify_ict_archive(zpath)
