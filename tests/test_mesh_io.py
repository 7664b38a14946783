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


def test_textured_obj_round_trip(tmp_path):
    mesh = _random_mesh(seed=2, textured=True)
    path = tmp_path / "face.obj"
    written = save_mesh(mesh, path)
    assert sorted(p.name for p in written) == ["face.mtl", "face.obj", "face.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.mtl", "face.obj", "face.png"]
    text = path.read_text()
    assert "mtllib face.mtl" in text and "usemtl" in text
    assert "map_Kd face.png" in (tmp_path / "face.mtl").read_text()
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

    def broken(image, f):
        f.write(b"\x89PNG partial")
        raise RuntimeError("png encoder crashed")

    monkeypatch.setattr(mesh_io, "_encode_png", broken)
    with pytest.raises(RuntimeError, match="png encoder"):
        save_mesh(_random_mesh(seed=10, textured=True), tmp_path / "face.obj")
    assert list(tmp_path.iterdir()) == []
