"""Albedo model building: missing-data PCA, SH lighting removal, visibility, sampling, files."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.albedo_build import (
    albedo_for,
    build_albedo,
    delight,
    load_albedo_file,
    project_to_pca,
    sample_vertex_colors,
    save_albedo_file,
    shape_key,
    shipped_albedo_for,
    fill_unobserved,
    symmetric_fill,
    vertex_visibility,
    weighted_pca,
)
from facefit.errors import FacefitError, InvalidFileError
from facefit.lighting import (
    ambient_sh,
    fit_sh_lighting,
    linear_to_srgb,
    remove_lighting,
    sh_basis,
    sh_shading,
    srgb_to_linear,
)
from facefit.morphable import MorphableModel
from facefit.render import Camera, project, world_to_camera

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEV = SHARED / "data" / "faces-dev"


def grid(nx=12, ny=12, size=100.0, z=0.0):
    """A flat square facing +z (towards a frontal viewer): (V, 3) points, CCW triangles."""
    xs = np.linspace(-size / 2, size / 2, nx)
    ys = np.linspace(-size / 2, size / 2, ny)
    X, Y = np.meshgrid(xs, ys, indexing="xy")
    pts = np.stack([X, Y, np.full_like(X, z)], -1).reshape(-1, 3)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            tris += [(a, b, c), (a, c, d)]
    return pts.astype(np.float32), np.asarray(tris, np.int64)


def principal_angles_deg(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1, 1)))


# ------------------------------------------------------------------------------- PCA


def test_weighted_pca_recovers_low_rank_model_with_missing_data():
    rng = np.random.default_rng(0)
    N, V, C, K = 400, 250, 3, 5
    mean = rng.uniform(0.3, 0.7, (V, C))
    basis = np.linalg.qr(rng.normal(size=(V * C, K)))[0]
    std = np.array([3.0, 2.0, 1.5, 1.0, 0.7])
    z = rng.normal(size=(N, K)) * std
    X = mean + (z @ basis.T).reshape(N, V, C) + 0.01 * rng.normal(size=(N, V, C))
    W = (rng.random((N, V)) > 0.3).astype(np.float32)  # 30 % of the vertices missing per row
    X_obs = np.where(W[..., None] > 0, X, 0.0).astype(np.float32)  # missing entries are garbage (0)

    res = weighted_pca(X_obs, W, K, iters=40)
    ang = principal_angles_deg(basis, res.basis.reshape(V * C, K))
    assert ang.max() < 3.0, ang
    assert np.abs(res.mean - mean).max() < 0.1
    assert np.allclose(res.std, std, rtol=0.12), (res.std, std)
    assert np.all(np.diff(res.std) <= 1e-6)  # ordered
    assert np.allclose(res.basis.reshape(V * C, K).T @ res.basis.reshape(V * C, K), np.eye(K), atol=1e-4)
    assert res.explained.sum() > 0.95
    np.testing.assert_allclose(res.weight_sum, W.sum(0), rtol=1e-6)  # per-vertex coverage

    # imputing the missing entries with the mean and running ordinary PCA is clearly worse
    Xi = np.where(W[..., None] > 0, X, res.mean[None]).reshape(N, -1)
    _, _, Vt = np.linalg.svd(Xi - Xi.mean(0), full_matrices=False)
    naive = principal_angles_deg(basis, Vt[:K].T)
    assert naive.max() > 2 * ang.max()

    # projecting a held-out row's observed part recovers its unseen part
    z_new = rng.normal(size=(1, K)) * std
    x_new = mean + (z_new @ basis.T).reshape(1, V, C)
    w_new = (rng.random((1, V)) > 0.5).astype(np.float32)
    _, rec = project_to_pca(torch.tensor(x_new, dtype=torch.float32), torch.tensor(w_new), res.mean, res.basis, res.std, noise=0.01)
    unseen = w_new[0] == 0
    assert np.abs(rec[0].numpy()[unseen] - x_new[0][unseen]).max() < 0.1


# ------------------------------------------------------------------------------- lighting


def hemisphere_normals(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 3, generator=g)
    v[:, 2] = -v[:, 2].abs()  # facing the camera (camera space: towards -z)
    return torch.nn.functional.normalize(v, dim=-1)


def test_sh_basis_and_fit_exact():
    n = hemisphere_normals(500)
    Y = sh_basis(n)
    assert Y.shape == (500, 9)
    # ambient coefficients give a shading of exactly 1
    s = sh_shading(n.unsqueeze(0), ambient_sh(1, 3))
    assert torch.allclose(s, torch.ones_like(s), atol=1e-6)
    # a known lighting is recovered from noise-free observations with a known albedo
    g = torch.Generator().manual_seed(1)
    L = ambient_sh(1, 1)[..., 0] + 0.3 * torch.randn(1, 9, generator=g) * torch.tensor([0] + [1] * 8)
    albedo = 0.3 + 0.5 * torch.rand(1, 500, 3, generator=g)
    obs = albedo * sh_shading(n.unsqueeze(0), L)
    L_fit = fit_sh_lighting(obs, albedo, n.unsqueeze(0), reg=0.0)
    assert torch.allclose(L_fit, L, atol=2e-3)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(albedo)), albedo, atol=1e-5)


def test_lighting_removal_brings_albedo_closer_to_truth():
    """A synthetically SH-lit known albedo: de-lighting against a flat estimate helps a lot."""
    g = torch.Generator().manual_seed(2)
    n = hemisphere_normals(2000, seed=3).unsqueeze(0)
    x, y = n[..., 0], n[..., 1]
    # smooth albedo pattern plus a dark "brow" patch (not explained by low-order lighting)
    base = torch.tensor([0.55, 0.4, 0.33])
    albedo = base * (1.0 + 0.15 * torch.sin(9 * x) * torch.cos(7 * y)).unsqueeze(-1)
    brow = (((x - 0.3).abs() < 0.1) & ((y + 0.4).abs() < 0.05)).unsqueeze(-1)
    albedo = torch.where(brow, 0.3 * albedo, albedo)
    # strong side light from the upper left plus ambient
    L = ambient_sh(1, 1)[..., 0] * 0.8
    L[0, 3] = -0.9  # x
    L[0, 1] = -0.5  # y
    L[0, 7] = 0.2
    obs = albedo * sh_shading(n, L)
    w = torch.ones(1, 2000)

    def err(a):  # compare up to the (unobservable) global brightness
        a = a * (albedo.mean() / a.mean())
        return (a - albedo).abs().mean().item()

    alb_srgb, w2, coeffs, rel = delight(obs, n, w, None)
    alb = srgb_to_linear(alb_srgb)
    assert err(alb) < 0.35 * err(obs), (err(alb), err(obs))
    # with the true albedo as estimate (later rounds use the model's) it is better still
    alb2, _, _, rel2 = delight(obs, n, w, albedo)
    assert err(srgb_to_linear(alb2)) < 0.5 * err(alb)
    assert rel2.item() < rel.item()
    # the normalised shading has mean 1 and the overall brightness stays
    _, s, rw = remove_lighting(obs, n, coeffs, w)
    assert abs(s.mean().item() - 1.0) < 1e-4
    assert rw.min() >= 0 and rw.max() <= 1


# ------------------------------------------------------------------------------- visibility, sampling


def test_vertex_visibility_zbuffer_and_view_angle():
    front, tri = grid(z=20.0, size=60.0)  # small plate in front
    back, _ = grid(z=0.0, size=120.0)  # big plate behind it
    verts = torch.as_tensor(np.concatenate([front, back]))[None]
    faces = torch.as_tensor(np.concatenate([tri, tri + len(front)]))
    cam = Camera((128, 128), 400.0)
    R = torch.eye(3)[None]
    t = torch.tensor([[0.0, 0.0, 500.0]])
    vc = world_to_camera(verts, R, t)
    scr = project(vc, cam.focal, cam.cx, cam.cy)
    vis, cos, normals = vertex_visibility(scr, faces, (128, 128), vc, edge_px=1)
    nf = len(front)
    bx, by = back[:, 0], back[:, 1]
    hidden = (np.abs(bx) < 28) & (np.abs(by) < 28)
    cheb = np.maximum(np.abs(bx), np.abs(by))
    outer = (cheb > 34) & (cheb < 55)  # ring between the front plate and the back plate's rim
    rim = cheb > 59
    assert vis[0, nf:][torch.as_tensor(hidden)].sum() == 0  # occluded by the front plate
    assert vis[0, nf:][torch.as_tensor(outer)].all()
    assert not vis[0, nf:][torch.as_tensor(rim)].any()  # on the silhouette: eroded away
    inner_front = (np.abs(front[:, 0]) < 25) & (np.abs(front[:, 1]) < 25)
    assert vis[0, :nf][torch.as_tensor(inner_front)].all()
    assert torch.allclose(cos[0, :nf][torch.as_tensor(inner_front)], torch.ones(int(inner_front.sum())), atol=0.05)
    # turned 80 degrees: the view angle threshold removes everything
    R80 = torch.tensor([[math.cos(1.396), 0, math.sin(1.396)], [0, 1, 0], [-math.sin(1.396), 0, math.cos(1.396)]])[None]
    vc2 = world_to_camera(verts, R80.float(), t)
    vis2, _, _ = vertex_visibility(project(vc2, cam.focal, cam.cx, cam.cy), faces, (128, 128), vc2, min_cos=0.3)
    assert vis2.sum() == 0


def test_sample_vertex_colors_pixel_centres():
    img = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    uv = torch.tensor([[[0.5, 0.5], [6.5, 4.5], [3.0, 2.5]]]).expand(2, 3, 2)
    c = sample_vertex_colors(img, uv)
    assert c.shape == (2, 3, 3)
    assert torch.allclose(c[:, 0], img[:, :, 0, 0])
    assert torch.allclose(c[:, 1], img[:, :, 4, 6])
    assert torch.allclose(c[:, 2], 0.5 * (img[:, :, 2, 2] + img[:, :, 2, 3]))


def test_symmetric_fill():
    X = torch.tensor([[[1.0], [2.0], [3.0]]])
    W = torch.tensor([[1.0, 0.0, 0.5]])
    sym = np.array([2, 1, 0])
    X2, W2 = symmetric_fill(X, W, sym, weight=0.3)
    assert torch.equal(X2, X) and torch.equal(W2, W)  # nothing missing whose mirror is seen
    W = torch.tensor([[0.0, 0.0, 0.5]])
    X2, W2 = symmetric_fill(X, W, sym, weight=0.3)
    assert X2[0, 0, 0] == 3.0 and abs(W2[0, 0].item() - 0.15) < 1e-6 and W2[0, 1] == 0


def test_fill_unobserved_continues_the_colour_smoothly():
    pts, tri = grid(9, 9)
    V = len(pts)
    xy = np.asarray(pts)[:, :2]
    # a linear colour field and a linear basis column: harmonic on a regular triangulated grid
    lin = 0.5 + 0.002 * xy[:, :1] + 0.001 * xy[:, 1:2]
    mean = np.repeat(lin, 3, 1).astype(np.float32)
    basis = np.stack([mean - 0.2, 2 * (mean - 0.2)], -1).astype(np.float32)  # (V, 3, 2)
    r = np.hypot(*(xy - xy.mean(0)).T)
    hole = r < 0.3 * r.max()  # an interior patch no photo saw
    m0, b0 = mean.copy(), basis.copy()
    m0[hole], b0[hole] = 0.0, 0.0
    m1, b1, filled = fill_unobserved(m0, b0, tri, hole, rings=0)
    assert np.array_equal(filled, hole)
    np.testing.assert_allclose(m1, mean, atol=1e-5)  # exact continuation of a linear field
    np.testing.assert_allclose(b1, basis, atol=1e-5)
    # one ring more is filled too and everything else is untouched
    m2, b2, filled2 = fill_unobserved(m0, b0, tri, hole, rings=1)
    assert filled2.sum() > hole.sum() and np.all(filled2[hole])
    assert np.array_equal(m2[~filled2], m0[~filled2]) and np.array_equal(b2[~filled2], b0[~filled2])
    # the mesh border (neighbours on one side only): values stay within the known range
    border = (xy[:, 0] == xy[:, 0].min())
    m3, _, _ = fill_unobserved(mean, basis, tri, border, rings=0)
    assert np.all(m3[border] >= mean[~border].min() - 1e-6) and np.all(m3[border] <= mean[~border].max() + 1e-6)
    assert np.all(m3[border] > 0.1)
    # nothing unknown: unchanged; a mesh piece with no known vertex: average colour, no variation
    m4, b4, f4 = fill_unobserved(mean, basis, tri, np.zeros(V, bool))
    assert not f4.any() and np.array_equal(m4, mean)
    tri2 = np.concatenate([tri, np.array([[V, V + 1, V + 2]])])
    mean2 = np.concatenate([mean, np.zeros((3, 3), np.float32)])
    basis2 = np.concatenate([basis, np.ones((3, 3, 2), np.float32)])
    unk = np.zeros(V + 3, bool)
    unk[V:] = True
    m5, b5, _ = fill_unobserved(mean2, basis2, tri2, unk, rings=0)
    np.testing.assert_allclose(m5[V:], np.broadcast_to(mean.mean(0), (3, 3)), atol=1e-5)
    assert np.all(b5[V:] == 0)
    with pytest.raises(FacefitError):
        fill_unobserved(mean, basis, tri, np.zeros(V - 1, bool))


# ------------------------------------------------------------------------------- files


def tiny(seed=0):
    pts, tri = grid(6, 6)
    rng = np.random.default_rng(seed)
    return MorphableModel("tiny", pts, tri, shape_basis=rng.normal(size=(len(pts), 3, 3)), shape_std=np.ones(3))


def test_albedo_file_roundtrip_and_shipped_lookup(tmp_path):
    m = tiny()
    rng = np.random.default_rng(1)
    V = m.n_vertices
    colored = m.with_color_model(rng.uniform(0.2, 0.8, (V, 3)), rng.normal(size=(V, 3, 4)), np.array([0.3, 0.2, 0.1, 0.05]),
                                 description="statistical test")
    # colour does not change the shape key, geometry does
    assert shape_key(colored) == shape_key(m)
    assert shape_key(tiny(seed=5)) != shape_key(m)
    p = save_albedo_file(tmp_path / "tiny-albedo.npz", colored, {"used": 3})
    data = load_albedo_file(p)
    assert data["color_basis"].shape == (V, 3, 4) and data["header"]["provenance"] == {"used": 3}
    got = shipped_albedo_for(m, tmp_path)
    assert got is not None and got.n_color == 4
    assert np.allclose(got.mean_color, colored.mean_color, atol=2e-3)  # float16 storage
    assert np.allclose(got.color_std, colored.color_std, rtol=1e-3)
    assert got.meta["color_model"] == "statistical test" and got.meta["albedo"]["used"] == 3
    assert shipped_albedo_for(tiny(seed=5), tmp_path) is None
    assert shipped_albedo_for(m, tmp_path / "missing") is None
    with pytest.raises(FacefitError):
        albedo_for(tiny(seed=5), p)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidFileError):
        load_albedo_file(tmp_path / "junk.npz")
    assert shipped_albedo_for(m, tmp_path) is not None  # junk next to it is skipped


def test_shipped_ict_albedo_is_attached():
    shipped = REPO / "models" / "albedo" / "ict-face-albedo.npz"
    assert shipped.is_file() and (SHARED / "models" / "ICT-FaceKit").is_dir(), "shipped albedo / ../shared missing"
    assert shipped.stat().st_size < 5e6
    from facefit.model_io import convert_model, find_shared_ict

    m = convert_model("ict", find_shared_ict(), "face")
    assert m.meta["color_model"].startswith("statistical")
    assert m.n_color >= 10 and m.meta["albedo"]["used"] > 1000
    # components are in PCA order of the variance the photos showed (color_std also covers
    # the filled never-seen vertices, so it need not be sorted exactly)
    assert np.all(np.diff(m.meta["albedo"]["explained_variance"]) <= 1e-6) and np.all(m.color_std > 0)
    # no black outline: every vertex has a skin-like colour, border and never-seen ones included
    assert m.meta["albedo"]["filled_vertices"] > 0
    assert float(m.mean_color.sum(1).min()) > 0.3
    # the mean skin is skin-coloured: red > green > blue on the cheeks
    cheek = m.mean_color[m.landmarks[[2, 14]]].mean(0)
    assert cheek[0] > cheek[1] > cheek[2]


# ------------------------------------------------------------------------------- end to end


def test_build_albedo_on_a_few_real_photos(tmp_path):
    assert DEV.is_dir() and (SHARED / "models" / "ICT-FaceKit").is_dir(), "faces-dev / ICT-FaceKit not in ../shared"
    from facefit.model_io import convert_model, find_shared_ict

    model = convert_model("ict", find_shared_ict(), "face")
    photos = tmp_path / "photos"
    photos.mkdir()
    lfw = sorted(p for p in DEV.rglob("*.jpg") if p.stat().st_size < 40_000)[:6]
    for i, p in enumerate(lfw):
        shutil.copy(p, photos / f"{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "alb.npz"
    res = build_albedo(photos, model, out, n_components=3, progress=False, rounds=2, fit_steps=80, pca_iters=8,
                       report=tmp_path / "report.png", log=lambda s: None)
    assert res.n_color == 3 and res.meta["color_model"].startswith("statistical PCA from")
    prov = res.meta["albedo"]
    assert prov["photos"] == 7 and prov["rejected_by_reason"].get("unreadable") == 1
    assert prov["used"] >= 4
    assert out.is_file() and (tmp_path / "report.png").stat().st_size > 10_000
    # the output is a normal facefit model: loadable by path, provenance in `model info`
    from facefit.model_io import load_model, model_info

    loaded = load_model(out)
    assert loaded.n_color == 3 and loaded.n_shape == model.n_shape and loaded.content_hash == res.content_hash
    info = model_info(loaded)
    assert info["albedo_photos"].startswith(f"{prov['used']} used of 7") and "unreadable 1" in info["albedo_photos"]
    assert "components" in info["albedo_explained"]
    assert info["albedo_filled"].startswith(f"{prov['filled_vertices']} vertices filled")
    # the colour-only file (what models/albedo ships) is found for the bare shape model
    small = tmp_path / "small"
    save_albedo_file(small / "alb.npz", res, prov)
    again = shipped_albedo_for(model.with_color_model(model.mean_color, None, None, "none"), small)
    assert again is not None and again.n_color == 3
    face_cols = res.mean_color[res.face_mask]
    assert 0.2 < float(face_cols.mean()) < 0.8
    # six photos leave parts of the mesh unseen: filled, never black
    assert prov["unseen_vertices"] > 0 and prov["filled_vertices"] > prov["unseen_vertices"]
    assert float(res.mean_color.sum(1).min()) > 0.1
    with pytest.raises(FacefitError):
        build_albedo(tmp_path / "nothing-here", model, None, progress=False)


def test_colour_only_file_loads_onto_its_shape_model(tmp_path, monkeypatch):
    """`--model models/albedo/ict-face-albedo.npz` means the default ICT model with that albedo."""
    from facefit.albedo_build import ALBEDO_DIR
    from facefit.model_io import load_model, resolve_model

    monkeypatch.setenv("FACEFIT_MODEL_DIR", str(tmp_path / "store"))  # no store default: shared ICT
    monkeypatch.delenv("FACEFIT_MODEL", raising=False)
    shipped = sorted(ALBEDO_DIR.glob("*.npz"))[0]
    m = load_model(shipped)
    assert m.n_color == 30 and m.content_hash == resolve_model(None).content_hash
    # a colour file for another shape model is refused, naming it
    other = tmp_path / "other.npz"
    with np.load(shipped, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    import json

    h = json.loads(str(arrays["header"][()]))
    h.update(shape_key="0" * 16, model_name="someone-elses-model")
    arrays["header"] = np.array(json.dumps(h))
    np.savez(other, **arrays)
    with pytest.raises(FacefitError, match="someone-elses-model"):
        load_model(other)


def test_cli_build_albedo_small_file_and_errors(tmp_path, capsys):
    assert DEV.is_dir() and (SHARED / "models" / "ICT-FaceKit").is_dir(), "faces-dev / ICT-FaceKit not in ../shared"
    from facefit.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(sorted(p for p in DEV.rglob("*.jpg") if p.stat().st_size < 40_000)[:4]):
        shutil.copy(p, photos / f"{i}.jpg")
    out = tmp_path / "alb.npz"
    rc = main(["model", "build-albedo", "--photos", str(photos), "-o", str(out), "--components", "2",
               "--albedo-only", "--fill-rings", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "2 colour components" in cap.out and "vertices filled" in cap.out
    data = load_albedo_file(out)
    prov = data["header"]["provenance"]
    assert data["color_basis"].shape[2] == 2 and prov["settings"]["fill_rings"] == 2 and prov["filled_vertices"] > 0
    assert float(np.asarray(data["mean_color"], np.float32).sum(1).min()) > 0.1  # no black vertices
    # bad input: one line, non-zero exit, nothing written
    for args in (["--photos", str(tmp_path / "missing"), "-o", str(tmp_path / "x.npz")],
                 ["--photos", str(photos), "-o", str(tmp_path / "x.txt")],
                 ["--photos", str(photos), "-o", str(tmp_path / "x.npz"), "--fill-rings", "-5"]):
        rc = main(["model", "build-albedo", *args])
        cap = capsys.readouterr()
        assert rc != 0 and "Traceback" not in cap.err and cap.err.strip()
        assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.txt").exists()
