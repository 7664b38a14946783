"""Tests for facefit.mesh_io: OBJ/PLY/GLB round trips, units, provenance, errors."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import facefit
import facefit.atomic as atomic
from facefit.errors import FacefitError, InvalidFileError
from facefit.mesh_io import FaceMesh, load_mesh, save_mesh

META = {"model": "ict-facekit", "model_hash": "sha256:0123abcd", "note": "test"}


def _random_mesh(seed=0, n_vertices=60, n_faces=90, textured=False, colors=True):
    rng = np.random.default_rng(seed)
    vertices = rng.normal(scale=60.0, size=(n_vertices, 3)) + [0.0, 20.0, 90.0]
    triangles = np.stack(
        [rng.permutation(n_vertices)[:3] for _ in range(n_faces)]
    )  # distinct corners per face
    kwargs = {}
    if colors:
        kwargs["colors"] = rng.random((n_vertices, 3))
    if textured:
        n_uv = n_vertices + 17  # more UVs than vertices: seams
        kwargs["uv"] = rng.random((n_uv, 2))
        kwargs["uv_triangles"] = rng.integers(0, n_uv, size=(n_faces, 3))
        kwargs["texture"] = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    return FaceMesh(vertices=vertices, triangles=triangles, meta=dict(META), **kwargs)


def _assert_same_geometry(loaded: FaceMesh, mesh: FaceMesh):
    assert loaded.vertices.dtype == np.float32 and loaded.triangles.dtype == np.int64
    assert loaded.vertices.shape == mesh.vertices.shape
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, rtol=1e-4 / 1000, atol=1e-4)
    np.testing.assert_array_equal(loaded.triangles, mesh.triangles)


def _assert_same_uv(loaded: FaceMesh, mesh: FaceMesh):
    """UVs may be re-indexed (GLB), but every triangle corner must get the same uv."""
    assert loaded.uv is not None and loaded.uv_triangles is not None
    np.testing.assert_allclose(
        loaded.uv[loaded.uv_triangles], mesh.uv[mesh.uv_triangles], atol=1e-6
    )


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_round_trip_colored(tmp_path, suffix):
    mesh = _random_mesh()
    path = tmp_path / f"face{suffix}"
    written = save_mesh(mesh, path, units="mm")
    assert written == [path]
    loaded = load_mesh(path)
    _assert_same_geometry(loaded, mesh)
    assert loaded.colors is not None
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=1 / 255 + 1e-6)
    assert loaded.meta["model_hash"] == META["model_hash"]
    assert loaded.meta["model"] == META["model"]
    assert loaded.meta["facefit_version"] == facefit.__version__
    assert loaded.meta["units"] == "mm" and loaded.meta["file_units"] == "mm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_round_trip_without_colors(tmp_path, suffix):
    mesh = _random_mesh(seed=1, colors=False)
    save_mesh(mesh, tmp_path / f"m{suffix}")
    loaded = load_mesh(tmp_path / f"m{suffix}")
    _assert_same_geometry(loaded, mesh)
    assert loaded.colors is None


def _save_obj_with_texture(mesh, path):
    """Save an OBJ that must come with exactly ``<stem>.mtl`` + ``<stem>_texture.png``: (written, OBJ text)."""
    names = sorted([path.name, f"{path.stem}.mtl", f"{path.stem}_texture.png"])
    written = save_mesh(mesh, path)
    assert sorted(p.name for p in written) == names
    assert sorted(p.name for p in path.parent.iterdir()) == names
    return written, path.read_text()


def test_textured_obj_round_trip(tmp_path):
    mesh = _random_mesh(seed=2, textured=True)
    path = tmp_path / "face.obj"
    _, text = _save_obj_with_texture(mesh, path)
    assert "mtllib face.mtl" in text and "usemtl" in text
    assert "map_Kd face_texture.png" in (tmp_path / "face.mtl").read_text()
    face_line = next(line for line in text.splitlines() if line.startswith("f "))
    assert len(face_line.split()[1].split("/")) == 2  # f v/vt
    loaded = load_mesh(path)
    _assert_same_geometry(loaded, mesh)
    # OBJ keeps the separate uv indexing exactly
    np.testing.assert_allclose(loaded.uv, mesh.uv, atol=1e-7)
    np.testing.assert_array_equal(loaded.uv_triangles, mesh.uv_triangles)
    np.testing.assert_array_equal(loaded.texture, mesh.texture)
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=1e-5)


def test_textured_glb_round_trip(tmp_path):
    mesh = _random_mesh(seed=3, textured=True)
    path = tmp_path / "face.glb"
    save_mesh(mesh, path, units="mm")
    loaded = load_mesh(path)
    _assert_same_geometry(loaded, mesh)  # welded back via _FACEFIT_VERTEX_ID
    _assert_same_uv(loaded, mesh)
    np.testing.assert_array_equal(loaded.texture, mesh.texture)
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=1 / 255 + 1e-6)
    assert loaded.meta["model_hash"] == META["model_hash"]


def test_unreferenced_vertices_survive_textured_glb(tmp_path):
    mesh = _random_mesh(seed=4, textured=True)
    extra = np.concatenate([mesh.vertices, [[1.0, 2.0, 3.0]]])  # vertex used by no face
    mesh = FaceMesh(extra, mesh.triangles, None, mesh.uv, mesh.uv_triangles, mesh.texture)
    save_mesh(mesh, tmp_path / "m.glb")
    loaded = load_mesh(tmp_path / "m.glb")
    _assert_same_geometry(loaded, mesh)


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_units_metres_stored_and_restored(tmp_path, suffix):
    import trimesh

    mesh = _random_mesh(seed=5)
    path = tmp_path / f"face{suffix}"
    save_mesh(mesh, path, units="m")
    raw = trimesh.load(str(path), process=False, maintain_order=True, force="mesh")
    np.testing.assert_allclose(raw.vertices, mesh.vertices / 1000.0, rtol=1e-6, atol=1e-9)
    loaded = load_mesh(path)
    assert loaded.meta["file_units"] == "m" and loaded.meta["units"] == "mm"
    _assert_same_geometry(loaded, mesh)


def test_units_cm_and_default_glb_metres(tmp_path):
    mesh = _random_mesh(seed=6)
    save_mesh(mesh, tmp_path / "a.obj", units="cm")
    first_v = next(line for line in (tmp_path / "a.obj").read_text().splitlines()
                   if line.startswith("v "))
    np.testing.assert_allclose([float(x) for x in first_v.split()[1:4]],
                               mesh.vertices[0] / 10.0, rtol=1e-6)
    _assert_same_geometry(load_mesh(tmp_path / "a.obj"), mesh)
    save_mesh(mesh, tmp_path / "b.glb")  # glTF default is metres
    assert load_mesh(tmp_path / "b.glb").meta["file_units"] == "m"
    # caller override of the recorded unit
    np.testing.assert_allclose(load_mesh(tmp_path / "a.obj", units="mm").vertices,
                               mesh.vertices / 10.0, rtol=1e-6)
    with pytest.raises(FacefitError, match="units"):
        save_mesh(mesh, tmp_path / "c.obj", units="inch")


def test_provenance_in_file_headers(tmp_path):
    mesh = _random_mesh(seed=7)
    save_mesh(mesh, tmp_path / "a.obj")
    save_mesh(mesh, tmp_path / "a.ply")
    save_mesh(mesh, tmp_path / "a.glb")
    obj_head = (tmp_path / "a.obj").read_text().splitlines()[:10]
    assert any(line.startswith("# model_hash: sha256:0123abcd") for line in obj_head)
    ply = (tmp_path / "a.ply").read_bytes()
    header = ply[: ply.index(b"end_header")].decode("ascii")
    assert "format binary_little_endian 1.0" in header
    assert "comment model_hash: sha256:0123abcd" in header
    assert "property uchar red" in header
    glb = (tmp_path / "a.glb").read_bytes()
    (length,) = struct.unpack("<I", glb[12:16])
    tree = json.loads(glb[20 : 20 + length])
    extras = tree["asset"]["extras"]["facefit"]
    assert extras["model_hash"] == "sha256:0123abcd" and extras["units"] == "m"
    assert "COLOR_0" in tree["meshes"][0]["primitives"][0]["attributes"]


def test_generic_obj_quads_negative_indices_no_meta(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# some other tool\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\n"
        "f 1 2 3 4\n"
        "f -4//1 -1//1 -3//1\n"
    )
    mesh = load_mesh(path)
    assert mesh.num_vertices == 5
    np.testing.assert_array_equal(mesh.triangles, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    assert mesh.colors is None and mesh.uv is None
    assert mesh.meta == {"units": "mm", "file_units": "mm"}


def test_our_obj_is_readable_by_trimesh(tmp_path):
    import trimesh

    mesh = _random_mesh(seed=8)
    save_mesh(mesh, tmp_path / "a.obj")
    tm = trimesh.load(str(tmp_path / "a.obj"), process=False, maintain_order=True, force="mesh")
    np.testing.assert_allclose(tm.vertices, mesh.vertices, rtol=1e-6)
    np.testing.assert_array_equal(tm.faces, mesh.triangles)


def test_unknown_suffix_lists_supported(tmp_path):
    mesh = _random_mesh()
    with pytest.raises(FacefitError, match=r"\.obj, \.ply, \.glb") as exc_info:
        save_mesh(mesh, tmp_path / "face.fbx")
    assert "\n" not in str(exc_info.value)
    with pytest.raises(FacefitError, match=r"\.obj"):
        load_mesh(tmp_path / "face.xyz")
    assert list(tmp_path.iterdir()) == []


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(InvalidFileError, match="no such file"):
        load_mesh(tmp_path / "missing.obj")
    bad_obj = tmp_path / "bad.obj"
    bad_obj.write_text("v 0 0 0\nf 1 2 x\n")
    with pytest.raises(InvalidFileError, match="bad.obj"):
        load_mesh(bad_obj)
    out_of_range = tmp_path / "range.obj"
    out_of_range.write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    with pytest.raises(InvalidFileError):
        load_mesh(out_of_range)
    bad_glb = tmp_path / "bad.glb"
    bad_glb.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(InvalidFileError):
        load_mesh(bad_glb)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    mesh = _random_mesh(seed=9, textured=True)
    target = tmp_path / "face.ply"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", fail)
    for name in ("face.ply", "face.glb", "face.obj"):
        with pytest.raises(FacefitError, match="no space left"):
            save_mesh(mesh, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.ply"]
    assert target.read_bytes() == b"old"


def test_facemesh_validation():
    v = np.zeros((4, 3))
    with pytest.raises(ValueError, match="out of range"):
        FaceMesh(v, [[0, 1, 4]])
    with pytest.raises(ValueError, match="colors"):
        FaceMesh(v, [[0, 1, 2]], colors=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="together"):
        FaceMesh(v, [[0, 1, 2]], uv=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="texture"):
        FaceMesh(v, [[0, 1, 2]], texture=np.zeros((4, 4, 3), np.uint8))
    m = FaceMesh(v, np.array([[0, 1, 2]], dtype=np.int32))
    assert m.vertices.dtype == np.float32 and m.triangles.dtype == np.int64


def test_accepts_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    mesh = FaceMesh(torch.rand(5, 3) * 100, torch.tensor([[0, 1, 2], [2, 3, 4]]),
                    colors=torch.rand(5, 3))
    save_mesh(mesh, tmp_path / "t.ply")
    _assert_same_geometry(load_mesh(tmp_path / "t.ply"), mesh)


def test_textured_obj_failure_writes_none_of_the_three_files(tmp_path, monkeypatch):
    import facefit.mesh_io as mesh_io

    def broken(image, **kwargs):
        raise RuntimeError("png encoder crashed")

    monkeypatch.setattr(mesh_io, "_encode_png", broken)
    with pytest.raises(RuntimeError, match="png encoder"):
        save_mesh(_random_mesh(seed=10, textured=True), tmp_path / "face.obj")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- colours, materials


def _glb_tree(path):
    glb = path.read_bytes()
    (length,) = struct.unpack("<I", glb[12:16])
    return json.loads(glb[20 : 20 + length])


def _uv_mesh(seed=11, colors=True):
    """A mesh with UVs (seams) and vertex colours but no texture, like facefit's outputs."""
    m = _random_mesh(seed=seed, textured=True, colors=colors)
    return FaceMesh(m.vertices, m.triangles, m.colors, m.uv, m.uv_triangles, None, m.meta)


@pytest.mark.parametrize("with_uv", [True, False])
def test_untextured_glb_white_material_and_color0(tmp_path, with_uv):
    mesh = _uv_mesh() if with_uv else _random_mesh(seed=12)
    path = tmp_path / "face.glb"
    save_mesh(mesh, path, units="mm")
    tree = _glb_tree(path)
    prim = tree["meshes"][0]["primitives"][0]
    assert "COLOR_0" in prim["attributes"]
    assert ("TEXCOORD_0" in prim["attributes"]) == with_uv
    material = tree["materials"][prim["material"]]
    pbr = material["pbrMetallicRoughness"]
    # viewers show baseColorFactor x COLOR_0: white, dielectric, rough, no texture
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 1.0
    assert "baseColorTexture" not in pbr
    assert not tree.get("images") and not tree.get("textures")
    loaded = load_mesh(path)
    assert loaded.texture is None
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=0.5 / 255 + 1e-6)
    _assert_same_geometry(loaded, mesh)
    if with_uv:
        _assert_same_uv(loaded, mesh)


def test_textured_glb_has_no_color0_but_keeps_vertex_colours(tmp_path):
    mesh = _random_mesh(seed=13, textured=True)
    path = tmp_path / "face.glb"
    save_mesh(mesh, path)
    tree = _glb_tree(path)
    prim = tree["meshes"][0]["primitives"][0]
    # viewers would multiply texture x COLOR_0: colours only in facefit's own attribute
    assert "COLOR_0" not in prim["attributes"]
    assert "_FACEFIT_COLOR" in prim["attributes"] and "TEXCOORD_0" in prim["attributes"]
    pbr = tree["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert "baseColorTexture" in pbr and pbr.get("baseColorFactor", [1.0] * 4) == [1.0] * 4
    assert pbr["metallicFactor"] == 0.0
    loaded = load_mesh(path)
    np.testing.assert_array_equal(loaded.texture, mesh.texture)
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=0.5 / 255 + 1e-6)
    _assert_same_geometry(loaded, mesh)


def test_textured_glb_without_colours(tmp_path):
    mesh = _random_mesh(seed=14, textured=True, colors=False)
    save_mesh(mesh, tmp_path / "t.glb")
    attrs = _glb_tree(tmp_path / "t.glb")["meshes"][0]["primitives"][0]["attributes"]
    assert "COLOR_0" not in attrs and "_FACEFIT_COLOR" not in attrs
    loaded = load_mesh(tmp_path / "t.glb")
    assert loaded.colors is None
    np.testing.assert_array_equal(loaded.texture, mesh.texture)


def test_old_facefit_glb_dummy_texture_is_ignored(tmp_path):
    """Earlier versions let trimesh add its default 2x2 grey texture to meshes with UVs."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    tm = trimesh.Trimesh(np.random.default_rng(0).random((3, 3)) * 50, [[0, 1, 2]], process=False)
    tm.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(1).random((3, 2)), material=None)
    tm.visual.vertex_attributes["color"] = np.full((3, 4), 200, np.uint8)

    def facefit_extras(tree):
        tree["asset"].setdefault("extras", {})["facefit"] = {"units": "mm", "facefit_version": "0.0.1"}

    data = export_glb(trimesh.Scene(tm), tree_postprocessor=facefit_extras)
    (tmp_path / "old.glb").write_bytes(data)
    assert _glb_tree(tmp_path / "old.glb").get("images")  # the dummy texture is in the file
    loaded = load_mesh(tmp_path / "old.glb")
    assert loaded.texture is None and loaded.uv is not None
    np.testing.assert_allclose(loaded.colors, 200 / 255, atol=1e-6)


def test_obj_with_uv_bakes_vertex_colours_into_texture(tmp_path):
    from PIL import Image

    mesh = _uv_mesh(seed=15)
    path = tmp_path / "face.obj"
    written, text = _save_obj_with_texture(mesh, path)
    assert "mtllib face.mtl" in text and "usemtl facefit_vertex_colors" in text
    v_line = next(line for line in text.splitlines() if line.startswith("v "))
    assert len(v_line.split()) == 7  # v x y z r g b: vertex colours kept
    mtl = (tmp_path / "face.mtl").read_text()
    assert "newmtl facefit_vertex_colors" in mtl and "map_Kd face_texture.png" in mtl
    with Image.open(tmp_path / "face_texture.png") as im:
        assert im.size == (512, 512) and im.mode == "RGB"
        png = np.asarray(im)
    from facefit.texturing import bake_vertex_colors

    np.testing.assert_array_equal(png, bake_vertex_colors(mesh.uv, mesh.uv_triangles, mesh.triangles,
                                                          mesh.colors, 512))
    # facefit reads its own bake back as the exact vertex colours, no texture
    loaded = load_mesh(path)
    _assert_same_geometry(loaded, mesh)
    assert loaded.texture is None
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=1e-5)
    np.testing.assert_allclose(loaded.uv, mesh.uv, atol=1e-7)
    np.testing.assert_array_equal(loaded.uv_triangles, mesh.uv_triangles)
    # other readers see the texture
    import trimesh

    tm = trimesh.load(str(path), process=False, force="mesh")
    assert tm.visual.kind == "texture" and tm.visual.material.image.size == (512, 512)
    # saving again over facefit's own files is fine
    assert save_mesh(mesh, path) == written


def test_obj_with_uv_without_colours_writes_only_the_obj(tmp_path):
    save_mesh(_uv_mesh(seed=16, colors=False), tmp_path / "plain.obj")
    assert [p.name for p in tmp_path.iterdir()] == ["plain.obj"]
    assert load_mesh(tmp_path / "plain.obj").uv is not None


def test_texture_never_overwrites_the_photo_beside_the_mesh(tmp_path):
    """face.png next to face.obj is typically the photo: the texture is face_texture.png."""
    from PIL import Image

    photo = tmp_path / "face.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(photo)  # e.g. the input photo
    before = photo.read_bytes()
    written = save_mesh(_uv_mesh(seed=17), tmp_path / "face.obj")
    assert sorted(p.name for p in written) == ["face.mtl", "face.obj", "face_texture.png"]
    assert photo.read_bytes() == before
    assert "map_Kd face_texture.png" in (tmp_path / "face.mtl").read_text()


def test_bake_vertex_colors_interpolates_and_pads():
    from facefit.texturing import bake_vertex_colors, uv_raster

    # one triangle covering the lower-left half of the texture (below the diagonal u = v)
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    tri = np.array([[0, 1, 2]])
    colors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    S = 16
    tex = bake_vertex_colors(uv, tri, tri, colors, size=S)
    assert tex.shape == (S, S, 3) and tex.dtype == np.uint8
    raster = uv_raster(uv, tri, S)
    assert 0.4 < raster.coverage < 0.6
    # texel (i, j): centre uv = ((j + .5) / S, 1 - (i + .5) / S); barycentrics of that point
    i, j = 12, 10
    u, v = (j + 0.5) / S, 1 - (i + 0.5) / S
    assert u > v  # covered
    expected = np.array([1 - u, u - v, v]) @ colors * 255
    np.testing.assert_allclose(tex[i, j], expected, atol=1.0)
    # covered iff the centre is on the triangle's side of the diagonal: i + j + 1 >= S
    assert raster.mask[i, j] and not raster.mask[7, 7] and raster.mask[8, 7]
    assert raster.mask.sum() == len(raster.texels) == S * (S + 1) // 2
    # uncovered texels copy the nearest covered texel: no black anywhere
    assert tex.sum(-1).min() > 100
    assert any((tex[7, 7] == tex[a, b]).all() for a, b in ((8, 7), (7, 8)))  # at distance 1
    # the far corner's nearest covered texels are the middle of the diagonal
    assert any((tex[0, 0] == tex[a, b]).all() for a, b in ((8, 7), (7, 8)))
    # cached per layout: the same raster object, new colours cost only the gather
    assert uv_raster(uv.copy(), tri.copy(), S) is raster
    grey = bake_vertex_colors(uv, tri, tri, np.full((3, 3), 0.5), size=S)
    assert (grey == 128).all()


def test_bake_degenerate_layout_and_bad_input():
    from facefit.texturing import bake_vertex_colors

    uv = np.zeros((3, 2))  # zero-area charts cover no texel
    tri = np.array([[0, 1, 2]])
    colors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    tex = bake_vertex_colors(uv, tri, tri, colors, size=8)
    assert (tex == np.array([85, 85, 85])).all()  # the mean colour
    with pytest.raises(FacefitError, match="colors"):
        bake_vertex_colors(uv, tri, tri, colors[:, :2], size=8)
    with pytest.raises(FacefitError, match="out of range"):
        bake_vertex_colors(uv, tri, tri + 5, colors, size=8)


def _grid_layout(n=40):
    """n x n vertex grid, its triangles split over two UV charts (left and right half)."""
    g = np.stack(np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n)), -1).reshape(-1, 2)
    q = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None]).reshape(-1)
    tri = np.concatenate([np.stack([q, q + 1, q + n + 1], 1), np.stack([q, q + n + 1, q + n], 1)])
    uv = np.concatenate([g * [0.49, 1.0], g * [0.49, 1.0] + [0.51, 0.0]])
    uv_tri = tri.copy()
    uv_tri[len(q):] += len(g)  # second half of the triangles in the second chart
    return g, tri, uv, uv_tri


def test_baked_texture_shows_vertex_colours_at_their_uvs():
    from facefit.texturing import bake_vertex_colors

    g, tri, uv, uv_tri = _grid_layout()
    colors = np.stack([g[:, 0], g[:, 1], 1 - g[:, 0] * g[:, 1]], 1)  # smooth, not symmetric
    S = 256
    tex = bake_vertex_colors(uv, uv_tri, tri, colors, size=S).astype(float) / 255
    # nearest texel of every triangle corner's uv (v up: row = (1 - v) * S)
    corner_uv = uv[uv_tri.ravel()]
    col = np.clip((corner_uv[:, 0] * S).astype(int), 0, S - 1)
    row = np.clip(((1 - corner_uv[:, 1]) * S).astype(int), 0, S - 1)
    np.testing.assert_allclose(tex[row, col], colors[tri.ravel()], atol=0.03)


def test_bake_is_cheap_once_cached():
    import time

    from facefit.texturing import bake_vertex_colors

    rng = np.random.default_rng(0)
    g, tri, uv, uv_tri = _grid_layout()  # ~3k triangles
    bake_vertex_colors(uv, uv_tri, tri, rng.random((len(g), 3)), size=256)  # builds the cache
    t0 = time.perf_counter()
    for _ in range(5):
        bake_vertex_colors(uv, uv_tri, tri, rng.random((len(g), 3)), size=256)
    assert (time.perf_counter() - t0) / 5 < 0.05  # a few ms; generous for a loaded CI machine


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_vertices_are_refused(tmp_path, suffix, bad):
    mesh = _random_mesh(seed=20)
    v = mesh.vertices.copy()
    v[7, 1] = bad
    path = tmp_path / f"broken{suffix}"
    save_mesh(FaceMesh(v, mesh.triangles, mesh.colors), path)
    with pytest.raises(InvalidFileError, match=r"broken\.\w+: 1 of 60 vertices have non-finite") as exc_info:
        load_mesh(path)
    assert "vertex number 8" in str(exc_info.value) and "\n" not in str(exc_info.value)


def test_not_gltf2_is_an_invalid_file(tmp_path):
    glb1 = tmp_path / "old.glb"
    glb1.write_bytes(b"glTF\x01\x00\x00\x00" + struct.pack("<I", 40) + b"\x00" * 28)
    with pytest.raises(InvalidFileError, match=r"cannot read mesh .*old\.glb"):
        load_mesh(glb1)
    gltf1 = tmp_path / "old.gltf"
    gltf1.write_text('{"asset": {"version": "1.0"}}')
    with pytest.raises(InvalidFileError, match=r"cannot read mesh .*old\.gltf"):
        load_mesh(gltf1)
    not_json = tmp_path / "junk.gltf"
    not_json.write_text("{not json")
    with pytest.raises(InvalidFileError, match="not a glTF"):
        load_mesh(not_json)
    empty = tmp_path / "empty.glb"
    empty.write_bytes(b"")
    with pytest.raises(InvalidFileError, match="empty file"):
        load_mesh(empty)
