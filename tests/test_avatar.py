"""The complete head and the animatable GLB (facefit.avatar)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facefit.avatar.gltf import AvatarAnimation, accessor_array, read_glb, save_glb_avatar
from facefit.avatar.naming import ARKIT_NAMES, ICT_TO_ARKIT, arkit_name

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"


def _need_tool(ok: bool, what: str):
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} missing in CI (.ci/run installs it)")
        pytest.skip(f"{what} not installed")


@pytest.fixture(scope="module")
def head_setup():
    from facefit.avatar.head import head_mesh, head_model_for
    from facefit.model_io import resolve_model
    from facefit.turntable import mesh_from_coeffs

    face = resolve_model(None)
    head = head_model_for(face)
    rng = np.random.default_rng(0)
    shape = rng.standard_normal(face.n_shape).astype(np.float32) * 0.7
    color = rng.standard_normal(face.n_color).astype(np.float32) * 0.7
    fm = mesh_from_coeffs(face, shape, color)
    return face, head, shape, fm, head_mesh(face, shape, fm.colors, fm.meta, head=head)


def test_arkit_names():
    assert len(ARKIT_NAMES) == len(set(ARKIT_NAMES)) == 52
    assert arkit_name("eyeBlink_L") == "eyeBlinkLeft" and arkit_name("mouthSmile_R") == "mouthSmileRight"
    assert arkit_name("browInnerUp_L") is None
    assert len(ICT_TO_ARKIT) == 49 and set(ARKIT_NAMES) - set(ICT_TO_ARKIT.values()) == {
        "browInnerUp", "cheekPuff", "tongueOut"}


def _boundary_edges(tri):
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1)
    u, c = np.unique(e, axis=0, return_counts=True)
    return {tuple(x) for x in u[c == 1]}


def test_head_closes_the_face_and_keeps_identity(head_setup):
    face, head, shape, fm, hm = head_setup
    assert hm.num_vertices == 24591
    # same identity: the face area of the head is the face mesh
    assert np.abs(hm.vertices[:9409] - fm.vertices).max() < 1e-3
    b_face = _boundary_edges(fm.triangles)
    b_head = _boundary_edges(hm.triangles)
    # the face area's eye and mouth holes (and its outer rim) are closed in the head
    assert len(b_face) > 300 and not (b_face & b_head)
    # what stays open is exactly ICT's own for these parts: no kept triangle lost a neighbour
    from facefit.loaders.ict import IctSource
    from facefit.loaders.obj import parse_obj_mesh
    from facefit.model_io import find_shared_ict

    with IctSource(find_shared_ict()) as src:
        ict = parse_obj_mesh(src.read("generic_neutral_mesh.obj"), name="neutral")
    kept = (ict["triangles"] < 24591)
    assert not (kept.any(1) & ~kept.all(1)).any()  # the left-out overlays share no triangle with the rest
    assert b_head == _boundary_edges(ict["triangles"][kept.all(1)])
    # (the neck's lower rim, the sockets' inner rims)
    open_v = np.unique(np.array(sorted(b_head)))
    assert (open_v >= 9409).all()
    neck = open_v[(open_v >= 9409) & (open_v < 11248)]
    assert len(neck) and hm.vertices[neck, 1].max() < hm.vertices[face.landmarks[8], 1] - 40  # below the chin
    # the UV atlas: every corner inside [0, 1]^2, no part overlapping another
    assert hm.uv.min() >= 0 and hm.uv.max() <= 1


def test_head_colours_plausible(head_setup):
    from facefit.avatar.head import PARTS

    face, head, shape, fm, hm = head_setup
    c = hm.colors
    assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1
    skin = np.asarray(hm.meta["head"]["skin_tone"])
    a, b = PARTS["head_neck"]
    neck = c[a:b]
    assert np.abs(neck - skin).max() < 1e-3  # the skin tone continued, no grey/blue neck
    assert skin[0] > skin[1] > skin[2]  # a skin hue: red > green > blue
    # the skin tone is the face's: close to the median of the face's own colours
    assert np.abs(skin - np.median(fm.colors, 0)).max() < 0.08
    sa, ib = PARTS["sclera_left"][0], PARTS["iris_left"][1]
    eye = c[sa:ib].mean(1)
    assert (eye > 0.8).mean() > 0.5 and (eye < 0.1).any()  # white sclera, a black pupil
    t = c[slice(*PARTS["teeth"])]
    assert t.mean() > 0.6 and (t[:, 0] - t[:, 2]).mean() < 0.2  # light, not red
    g = c[slice(*PARTS["gums_tongue"])].mean(0)
    assert g[0] > g[1] + 0.15  # pink


def test_head_uv_bake_has_no_empty_charts(head_setup):
    from facefit.texturing import bake_vertex_colors

    *_, hm = head_setup
    tex = bake_vertex_colors(hm.uv, hm.uv_triangles, hm.triangles, hm.colors, 256)
    assert (tex.reshape(-1, 3).max(1) > 5).all()  # no empty (black) texel anywhere: the pupil is the darkest


@pytest.fixture(scope="module")
def avatar_glb(head_setup, tmp_path_factory):
    from facefit.avatar.rig import morph_targets

    face, head, shape, fm, hm = head_setup
    mt = morph_targets(head)
    out = tmp_path_factory.mktemp("avatar") / "avatar.glb"
    anim = AvatarAnimation(times=np.array([0, 0.5, 1.0]), weights={"jawOpen": np.array([0, 1, 0])},
                           rotations=np.array([[0, 0, 0, 1], [0, 0.2, 0, 0.98], [0, 0, 0, 1]]))
    save_glb_avatar(hm, out, mt.as_dict(), default_weights={"eyeBlinkLeft": 0.25}, animation=anim)
    return out, mt, hm, head


def test_glb_morph_targets_roundtrip(avatar_glb):
    out, mt, hm, head = avatar_glb
    tree, binary = read_glb(out)
    mesh = tree["meshes"][0]
    names = mesh["extras"]["targetNames"]
    assert names == mt.names and len(names) == 55
    assert set(ARKIT_NAMES) - set(names) == {"tongueOut"}
    assert {"browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekPuff_R"} <= set(names)
    assert mesh["weights"][names.index("eyeBlinkLeft")] == 0.25
    prim = mesh["primitives"][0]
    assert len(prim["targets"]) == 55
    for t in prim["targets"]:
        acc = tree["accessors"][t["POSITION"]]
        assert "min" in acc and "max" in acc
    # jawOpen in the file = the model's jawOpen offset on the person's head (metres)
    ids = accessor_array(tree, binary, prim["attributes"]["_FACEFIT_VERTEX_ID"])[:, 0].astype(int)
    d = accessor_array(tree, binary, prim["targets"][names.index("jawOpen")]["POSITION"])
    j = head.expr_names.index("jawOpen")
    want = head.expr_basis[:, :, j] * head.expr_std[j] / 1000.0
    assert np.abs(d - want[ids]).max() < 2e-6 and np.abs(d).max() > 0.02
    # ARKit browInnerUp = the sum of ICT's halves; weights_from_expr reproduces an expression
    e = np.zeros(head.n_expr, np.float32)
    e[head.expr_names.index("browInnerUp_L")] = 0.5
    e[j] = 0.3
    w = mt.weights_from_expr(e)
    assert np.allclose(np.einsum("k,kvc->vc", w, mt.offsets),
                       np.einsum("j,vcj->vc", e, head.expr_basis * head.expr_std), atol=1e-4)
    assert tree["animations"][0]["channels"][0]["target"]["path"] == "weights"
    # facefit reads it back as the head mesh
    from facefit.mesh_io import load_mesh

    back = load_mesh(out)
    assert back.num_vertices == hm.num_vertices and np.abs(back.vertices - hm.vertices).max() < 0.01


def test_glb_passes_khronos_validator(avatar_glb):
    out = avatar_glb[0]
    node = shutil.which("node")
    _need_tool(node is not None and (WEB / "node_modules" / "gltf-validator").is_dir(),
               "node + gltf-validator (npm install in web/)")
    r = subprocess.run([node, str(WEB / "validate.mjs"), str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    issues = report["issues"]
    assert issues["numErrors"] == 0, issues["messages"][:5]
    assert issues["numWarnings"] == 0, issues["messages"][:5]
    assert report["info"]["morphTargetCount"] if "morphTargetCount" in report.get("info", {}) else True


def test_glb_animates_in_a_browser(avatar_glb):
    """three.js in headless Chromium: jawOpen 0 -> 1 changes the mouth/jaw, not the rest."""
    from facefit.avatar.browser import find_chromium, render_morph_check, three_installed

    _need_tool(find_chromium() is not None and three_installed(),
               "chromium (apt-get install chromium chromium-driver) + three (npm install in web/)")
    out = avatar_glb[0]
    tree, binary = read_glb(out)
    prim = tree["meshes"][0]["primitives"][0]
    names = tree["meshes"][0]["extras"]["targetNames"]
    pos = accessor_array(tree, binary, prim["attributes"]["POSITION"])
    d = accessor_array(tree, binary, prim["targets"][names.index("jawOpen")]["POSITION"])
    moving = np.linalg.norm(d, axis=1) > 0.002  # > 2 mm
    lo = np.minimum(pos[moving].min(0), (pos + d)[moving].min(0)) - 0.005
    hi = np.maximum(pos[moving].max(0), (pos + d)[moving].max(0)) + 0.005
    res = render_morph_check(out, "jawOpen", [*lo, *hi])
    assert res["ok"], res.get("error")
    assert res["targets"] == 55  # three.js read mesh.extras.targetNames
    assert res["foreground"] > 0.1  # the head is on screen
    assert res["inside_changed"] > 0.05, res  # the mouth opens
    assert res["outside_changed"] < 0.005, res  # the rest stays


def test_cli_avatar_with_photo_texture(tmp_path, capsys):
    """`--blendshapes --texture photo`: the head (implied) with a photo texture that keeps
    the astronaut's black collar off the neck, 55 named targets, a valid GLB."""
    from facefit.avatar.head import PARTS
    from facefit.cli import main
    from facefit.mesh_io import load_mesh
    from facefit.turntable import texture_vertex_colors

    example = ROOT / "examples" / "astronaut.png"
    out = tmp_path / "astro.glb"
    assert main(["reconstruct", str(example), "-o", str(out), "--blendshapes", "--texture", "photo"]) == 0
    tree, _ = read_glb(out)
    assert len(tree["meshes"][0]["extras"]["targetNames"]) == 55 and tree.get("images")
    m = load_mesh(out)
    assert m.num_vertices == 24591 and m.texture is not None
    c = texture_vertex_colors(m)
    lum = c @ np.array([0.299, 0.587, 0.114])
    v = m.vertices
    a, b = PARTS["head_neck"]
    chin_y = v[:9409][np.argmin(v[:9409, 1])][1]
    neck = np.arange(a, b)[(v[a:b, 2] > 0) & (v[a:b, 1] < chin_y - 10)]  # the front of the neck
    cheeks = np.nonzero((np.abs(v[:9409, 0]) > 25) & (np.abs(v[:9409, 0]) < 45)
                        & (np.abs(v[:9409, 1] - v[:9409, 1].mean()) < 15) & (v[:9409, 2] > 60))[0]
    assert len(neck) > 50 and len(cheeks) > 50
    # the collar is black (luminance ~0.05): the neck keeps the skin's lightness and hue
    assert np.percentile(lum[neck], 5) > 0.5 * np.median(lum[cheeks])
    med = np.median(c[neck], 0)
    assert med[0] > med[1] > med[2]
    node = shutil.which("node")
    if node is not None and (WEB / "node_modules" / "gltf-validator").is_dir():  # textured avatar GLB
        report = json.loads(subprocess.run([node, str(WEB / "validate.mjs"), str(out)], capture_output=True,
                                           text=True, timeout=120, check=True).stdout)
        assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    # a plain mesh format cannot carry blend shapes: one line, exit 1
    assert main(["reconstruct", str(example), "-o", str(tmp_path / "x.obj"), "--blendshapes"]) == 1
    assert "glb" in capsys.readouterr().err


def test_pca_expressions_are_numbered(tmp_path):
    """A PCA expression basis (BFM, FLAME) -> expression_000...; a GLB of a tiny mesh validates."""
    from facefit.avatar.rig import morph_targets
    from facefit.mesh_io import FaceMesh
    from facefit.morphable import MorphableModel

    rng = np.random.default_rng(1)
    v = rng.standard_normal((6, 3)).astype(np.float32) * 10
    tri = np.array([[0, 1, 2], [2, 3, 0], [3, 4, 5]])
    m = MorphableModel("tiny", v, tri, shape_basis=rng.standard_normal((6, 3, 2)),
                       expr_basis=rng.standard_normal((6, 3, 3)), expr_std=np.array([3.0, 2.0, 1.0]),
                       meta={"expr_model_kind": "pca"})
    mt = morph_targets(m)
    assert mt.names == ["expression_000", "expression_001", "expression_002"] and mt.kind == "pca"
    assert np.allclose(mt.offsets[1], m.expr_basis[:, :, 1] * m.expr_std[1], atol=1e-5)
    out = tmp_path / "tiny.glb"
    save_glb_avatar(FaceMesh(v, tri, colors=np.full((6, 3), 0.5)), out, mt.as_dict(), [0.1, 0.0, 0.2])
    tree, _ = read_glb(out)
    assert tree["meshes"][0]["weights"] == pytest.approx([0.1, 0.0, 0.2])
    # bad input: one clear error
    from facefit.errors import FacefitError

    with pytest.raises(FacefitError, match="must be"):
        save_glb_avatar(FaceMesh(v, tri), tmp_path / "bad.glb", {"a": np.zeros((5, 3))})
    with pytest.raises(FacefitError, match="unknown morph target"):
        save_glb_avatar(FaceMesh(v, tri), tmp_path / "bad.glb", mt.as_dict(), {"nope": 1.0})
    with pytest.raises(FacefitError, match="strictly increasing"):
        save_glb_avatar(FaceMesh(v, tri), tmp_path / "bad.glb", mt.as_dict(),
                        animation=AvatarAnimation(times=np.array([0.0, 0.0]), weights=np.zeros((2, 3))))
    with pytest.raises(FacefitError, match="finite"):
        save_glb_avatar(FaceMesh(v, tri), tmp_path / "bad.glb", mt.as_dict(), [np.nan, 0, 0])
    assert not (tmp_path / "bad.glb").exists()
    from facefit.avatar.head import head_model_for

    with pytest.raises(FacefitError, match="ICT-FaceKit"):
        head_model_for(m)  # only ICT-FaceKit has a head here
