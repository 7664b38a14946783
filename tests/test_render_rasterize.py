"""Rasteriser tests: exact coverage, depth, culling, z-buffer, gradients, both backends."""
import math

import numpy as np
import pytest
import torch

from facefit.errors import FacefitError
from facefit.render import (
    Camera,
    euler_to_matrix,
    interpolate,
    rasterize,
    vertex_normals,
    world_to_camera,
)
from facefit.render import pytorch3d_backend
from facefit.render.rasterize import visibility_torch


def _screen_from_cam(verts_cam, f, cx, cy):
    x, y, z = verts_cam.unbind(-1)
    return torch.stack([f * x / z + cx, f * y / z + cy, z], -1)


def _front(faces, screen):
    """Reorder each face so that it is front-facing (negative signed screen area)."""
    s = screen[0]
    out = []
    for a, b, c in faces.tolist():
        area2 = (s[b, 0] - s[a, 0]) * (s[c, 1] - s[a, 1]) - (s[c, 0] - s[a, 0]) * (s[b, 1] - s[a, 1])
        out.append([a, b, c] if area2 < 0 else [a, c, b])
    return torch.tensor(out, dtype=torch.int64)


def _rect(u0, u1, v0, v1, depth_fn, f=300.0, cx=14.0, cy=12.0, dtype=torch.float64):
    """Screen-space rectangle lifted to a plane; returns (screen (1,4,3), faces (2,3))."""
    uv = torch.tensor([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=dtype)
    z = depth_fn(uv)
    cam = torch.stack([(uv[:, 0] - cx) * z / f, (uv[:, 1] - cy) * z / f, z], -1)[None]
    screen = _screen_from_cam(cam, f, cx, cy)
    faces = _front(torch.tensor([[0, 1, 2], [0, 2, 3]]), screen)
    return screen, faces, cam


def test_flat_rectangle_exact_coverage_and_depth():
    H, W = 24, 28
    screen, faces, _ = _rect(5.3, 20.7, 3.2, 17.9, lambda uv: torch.full((4,), 500.0, dtype=uv.dtype))
    fr = rasterize(screen, faces, (H, W), extend_outside=False)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[3:18, 5:21] = True  # centres i + 0.5 in [3.2, 17.9], j + 0.5 in [5.3, 20.7]
    assert torch.equal(fr.mask[0], expected)
    assert torch.equal(fr.face_ids[0] >= 0, expected)
    assert torch.allclose(fr.depth[0][expected], torch.full((int(expected.sum()),), 500.0, dtype=torch.float64))
    assert torch.all(fr.depth[0][~expected] == 0)  # background depth is 0
    assert torch.allclose(fr.bary[0][expected].sum(-1), torch.ones(int(expected.sum()), dtype=torch.float64))
    assert not fr.extended.any()


def test_tilted_plane_perspective_correct_depth():
    H, W, f, cx, cy = 24, 28, 300.0, 14.0, 12.0
    # plane z = 400 + 0.8 * x_cam + 0.3 * y_cam  ->  strongly varying depth across the quad
    a, b, c0 = 0.8, 0.3, 400.0

    def depth(uv):
        x = (uv[:, 0] - cx) / f
        y = (uv[:, 1] - cy) / f
        return c0 / (1 - a * x - b * y)

    screen, faces, _ = _rect(2.2, 25.6, 1.4, 22.3, depth, f, cx, cy)
    fr = rasterize(screen, faces, (H, W), extend_outside=False)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    uv = torch.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2).double()
    expect = depth(uv).view(H, W)
    m = fr.mask[0]
    assert m.sum() > 300
    assert torch.allclose(fr.depth[0][m], expect[m], rtol=1e-9, atol=1e-9)
    # interpolated camera-space position must lie on the ray through the pixel centre
    pos = interpolate(_rect(2.2, 25.6, 1.4, 22.3, depth, f, cx, cy)[2], faces, fr)[0]
    assert torch.allclose(pos[..., 2][m], expect[m], rtol=1e-9)
    assert torch.allclose((f * pos[..., 0] / pos[..., 2] + cx)[m], uv[:, 0].view(H, W)[m], atol=1e-8)


def _icosphere(subdiv):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=1.0)
    return torch.tensor(m.vertices, dtype=torch.float64), torch.tensor(m.faces, dtype=torch.int64)


def test_sphere_coverage_and_depth_match_analytic():
    H = W = 64
    f, r, d = 120.0, 60.0, 300.0
    v, faces = _icosphere(4)
    R = euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1)).double()
    cam_v = world_to_camera(v[None] * r, R, torch.tensor([[0.0, 0.0, d]], dtype=torch.float64))
    screen = _screen_from_cam(cam_v, f, W / 2, H / 2)
    fr = rasterize(screen, faces, (H, W), extend_outside=False)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    x = (jj.double() + 0.5 - W / 2) / f
    y = (ii.double() + 0.5 - H / 2) / f
    # image of the sphere: circle of radius f * r / sqrt(d^2 - r^2) around the centre
    rad = f * r / math.sqrt(d * d - r * r)
    rho = torch.sqrt(x * x + y * y) * f
    assert fr.mask[0][rho < rad - 1.0].all()
    assert not fr.mask[0][rho > rad + 1.0].any()
    # depth: nearest intersection of the ray (x, y, 1) t with the sphere
    n2 = x * x + y * y + 1
    disc = (d * d) - n2 * (d * d - r * r)
    t = (d - torch.sqrt(disc.clamp_min(0))) / n2
    inner = fr.mask[0] & (rho < rad - 2.0)
    assert inner.sum() > 1000
    err = (fr.depth[0] - t)[inner].abs()
    assert err.max() < 0.5  # mesh chord error for radius 60 mm at subdivision 4
    assert (fr.depth[0][inner] > d - r - 1e-6).all()


def test_backface_culling_follows_conventions():
    # a model-space square counter-clockwise seen from +z (the viewer of a frontal face)
    verts = torch.tensor([[-50.0, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]])[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    R = euler_to_matrix(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    cam = world_to_camera(verts, R, torch.tensor([[0.0, 0.0, 500.0]]))
    screen = Camera((32, 32), 100.0).project(cam)
    assert rasterize(screen, faces, 32).mask.sum() == 400
    assert rasterize(screen, faces.flip(1), 32).mask.sum() == 0  # back faces culled
    assert rasterize(screen, faces.flip(1), 32, cull_backfaces=False).mask.sum() == 400
    # turned away (yaw 180): the front faces now face away and are culled
    R180 = euler_to_matrix(torch.tensor([180.0]), torch.zeros(1), torch.zeros(1))
    cam = world_to_camera(verts, R180, torch.tensor([[0.0, 0.0, 500.0]]))
    screen = Camera((32, 32), 100.0).project(cam)
    assert rasterize(screen, faces, 32).mask.sum() == 0


def test_zbuffer_keeps_the_nearer_triangle():
    H = W = 16
    near_tri = torch.tensor([[2.0, 2.0, 300.0], [14.2, 2.0, 300.0], [2.0, 14.2, 300.0]])
    far_tri = torch.tensor([[1.0, 1.0, 400.0], [15.0, 1.0, 400.0], [1.0, 15.0, 400.0]])
    for order in ((near_tri, far_tri), (far_tri, near_tri)):
        screen = torch.cat(order)[None]
        faces = torch.tensor([[0, 2, 1], [3, 5, 4]])  # negative signed area = front-facing
        fr = rasterize(screen, faces, (H, W), extend_outside=False)
        near_id = 0 if order[0] is near_tri else 1
        both = torch.zeros(H, W, dtype=torch.bool)
        for i in range(H):
            for j in range(W):
                u, v = j + 0.5, i + 0.5
                both[i, j] = u >= 2 and v >= 2 and u + v <= 16.2
        assert (fr.face_ids[0][both] == near_id).all()
        assert torch.allclose(fr.depth[0][both], torch.tensor(300.0))
        assert ((fr.face_ids[0] == 1 - near_id) == (fr.mask[0] & ~both)).all()


def _reference_face_ids(screen, faces, H, W, cull=True):
    """Brute force: every pixel centre against every triangle (float64 numpy)."""
    s = screen[0].numpy().astype(np.float64)
    out = -np.ones((H, W), dtype=np.int64)
    zbest = np.full((H, W), np.inf)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    for fi, (a, b, c) in enumerate(faces.tolist()):
        (u0, v0, z0), (u1, v1, z1), (u2, v2, z2) = s[a], s[b], s[c]
        area2 = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
        if abs(area2) < 1e-12 or (cull and area2 >= 0) or min(z0, z1, z2) <= 1e-3:
            continue
        b0 = ((u1 - jj) * (v2 - ii) - (u2 - jj) * (v1 - ii)) / area2
        b1 = ((u2 - jj) * (v0 - ii) - (u0 - jj) * (v2 - ii)) / area2
        b2 = 1 - b0 - b1
        inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        z = 1.0 / (b0 / z0 + b1 / z1 + b2 / z2)
        upd = inside & (z < zbest)
        out[upd] = fi
        zbest[upd] = z[upd]
    return torch.from_numpy(out)


@pytest.mark.parametrize("cull", [True, False])
def test_random_triangles_match_brute_force(cull):
    g = torch.Generator().manual_seed(3)
    H, W, F = 20, 26, 40
    uv = torch.rand(1, 3 * F, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 6.0, H + 6.0]) - 3.0
    # some big triangles too (exercise the generic enumeration path)
    uv[0, :9] = uv[0, :9] * 1.0
    z = 100 + 50 * torch.rand(1, 3 * F, 1, generator=g, dtype=torch.float64)
    screen = torch.cat([uv, z], -1)
    faces = torch.arange(3 * F).view(F, 3)
    ref = _reference_face_ids(screen, faces, H, W, cull)
    fr = rasterize(screen, faces, (H, W), cull_backfaces=cull, extend_outside=False)
    assert torch.equal(fr.face_ids[0], ref)
    # the generic (large-box) path and tiny chunks give the same result
    ids = visibility_torch(screen, faces, (H, W), cull_backfaces=cull, small_box=0, chunk_candidates=7)
    assert torch.equal(ids[0], ref)


def test_batch_and_float32_consistent():
    v, faces = _icosphere(3)
    R = euler_to_matrix(torch.tensor([0.0, 30.0]), torch.tensor([0.0, -10.0]), torch.tensor([0.0, 5.0])).double()
    cam_v = world_to_camera((v * 80)[None].expand(2, -1, -1), R, torch.tensor([[0.0, 0.0, 400.0]] * 2, dtype=torch.float64))
    screen = _screen_from_cam(cam_v, 150.0, 24.0, 20.0)
    fb = rasterize(screen, faces, (40, 48))
    for b in range(2):
        single = rasterize(screen[b : b + 1], faces, (40, 48))
        assert torch.equal(single.face_ids[0], fb.face_ids[b])
    f32 = rasterize(screen.float(), faces, (40, 48))
    agree = (f32.face_ids == fb.face_ids).float().mean()
    assert agree > 0.995
    assert f32.bary.dtype == torch.float32


def test_silhouette_extension():
    H = W = 32
    screen, faces, _ = _rect(8.0, 24.0, 8.0, 24.0, lambda uv: torch.full((4,), 500.0, dtype=uv.dtype))
    fr = rasterize(screen, faces, (H, W), extend_outside=True)
    ring = fr.extended[0]
    # the one-pixel ring around the covered 16x16 block (8-neighbourhood)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[7:25, 7:25] = True
    expected[8:24, 8:24] = False
    assert torch.equal(ring, expected)
    covered = torch.zeros(H, W, dtype=torch.bool)
    covered[8:24, 8:24] = True
    assert torch.equal(fr.mask[0], covered)
    assert (fr.face_ids[0][ring] >= 0).all()
    # extrapolated barycentrics still sum to one, and some are negative
    bary = fr.bary[0][ring]
    assert torch.allclose(bary.sum(-1), torch.ones(len(bary), dtype=bary.dtype))
    assert (bary.min(-1).values < 0).all()
    # distance outside: 0.5 px at the sides, sqrt(0.5) at the corners
    d = fr.dist[0]
    assert torch.allclose(d[7, 12], torch.tensor(0.5, dtype=d.dtype))
    assert torch.allclose(d[7, 7], torch.tensor(math.sqrt(0.5), dtype=d.dtype))
    assert (fr.dist[0][fr.mask[0]] == 0).all()


def test_sliver_triangles_do_not_extend_with_exploding_barycentrics():
    """An edge-on sliver covering a pixel centre must not extrapolate to the next pixel:
    just outside it, perspective barycentrics are huge or infinite (a NaN pixel, seen in
    renders of real faces). Its neighbours stay background; a normal triangle still extends."""
    from facefit.render.rasterize import MAX_EXTENDED_BARY

    H = W = 32
    eps = 0.002
    screen = torch.tensor([[
        # a sliver 6 px long and 0.006 px high over the centre (20.5, 10.5), edge-on in depth
        [17.5, 10.5 - eps, 900.0], [23.5, 10.5 - eps, 1000.0], [20.5, 10.5 + 2 * eps, 950.0],
        # a normal triangle elsewhere
        [4.0, 20.0, 500.0], [12.0, 20.0, 500.0], [4.0, 28.0, 500.0],
    ]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [3, 5, 4]])
    for cull in (False, True):
        fr = rasterize(screen, faces, (H, W), extend_outside=True, cull_backfaces=cull)
        assert torch.isfinite(fr.pix_bary).all() and torch.isfinite(fr.depth).all()
        if not cull or fr.mask[0, 10, 20]:
            ext = fr.extended[0]
            assert not ext[9:12, 19:22].any()  # the sliver's neighbours stay background
        assert fr.pix_bary.abs().max() <= MAX_EXTENDED_BARY + 1e-9
    fr = rasterize(screen, faces, (H, W), extend_outside=True, cull_backfaces=False)
    assert fr.mask[0, 10, 20] and fr.extended[0, 19:29, 3:13].any()  # the sliver is drawn; the other extends


def test_bary_depth_gradcheck():
    g = torch.Generator().manual_seed(0)
    H, W = 9, 11
    base = torch.tensor([[1.3, 1.2, 50.0], [9.7, 2.1, 60.0], [2.2, 7.9, 55.0], [9.1, 8.3, 65.0]], dtype=torch.float64)
    screen = (base + 0.01 * torch.rand(4, 3, generator=g, dtype=torch.float64))[None]
    faces = _front(torch.tensor([[0, 1, 2], [1, 3, 2]]), screen)
    fr0 = rasterize(screen, faces, (H, W))
    assert fr0.mask.sum() > 20 and fr0.extended.sum() > 10

    def fn(s):
        fr = rasterize(s, faces, (H, W))
        assert torch.equal(fr.face_ids, fr0.face_ids)  # perturbation must not change visibility
        return fr.bary, fr.depth, fr.dist

    assert torch.autograd.gradcheck(fn, (screen.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_interpolation_gradcheck_attrs_and_positions():
    g = torch.Generator().manual_seed(1)
    H, W = 8, 8
    screen = torch.tensor(
        [[[1.1, 1.3, 40.0], [7.2, 1.6, 45.0], [1.7, 6.8, 42.0], [6.9, 7.1, 47.0]]], dtype=torch.float64
    )
    faces = _front(torch.tensor([[0, 1, 2], [1, 3, 2]]), screen)
    attrs = torch.rand(1, 4, 2, generator=g, dtype=torch.float64)

    def fn(s, a):
        return interpolate(a, faces, rasterize(s, faces, (H, W)))

    inputs = (screen.clone().requires_grad_(), attrs.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    out = fn(screen, attrs)
    fr = rasterize(screen, faces, (H, W))
    assert (out[~(fr.face_ids >= 0)] == 0).all()
    # shared (V, C) attributes give the same result as (1, V, C)
    assert torch.allclose(interpolate(attrs[0], faces, fr), out)


def test_vertex_normals_of_sphere_point_outwards():
    v, faces = _icosphere(2)
    v = v[None].float() * 10 + torch.tensor([1.0, 2.0, 3.0])
    n = vertex_normals(v, faces)
    radial = v[0] - torch.tensor([1.0, 2.0, 3.0])
    radial = radial / radial.norm(dim=-1, keepdim=True)
    assert torch.allclose(n.norm(dim=-1), torch.ones(1, v.shape[1]), atol=1e-5)
    assert (n[0] * radial).sum(-1).min() > 0.99
    v1, f1 = _icosphere(1)
    v1 = v1 + 0.05 * torch.sin(7 * v1)  # not a perfect sphere
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, f1), (v1[None].requires_grad_(),), eps=1e-6, atol=1e-5)


def test_invalid_inputs_raise():
    s = torch.zeros(1, 3, 3)
    with pytest.raises(FacefitError):
        rasterize(s, torch.tensor([[0, 1, 5]]), 8)
    with pytest.raises(FacefitError):
        rasterize(s[0], torch.tensor([[0, 1, 2]]), 8)
    with pytest.raises(FacefitError):
        rasterize(s, torch.tensor([[0, 1, 2]]), 8, backend="opengl")


def test_vertices_behind_camera_are_skipped():
    screen = torch.tensor([[[1.0, 1.0, -5.0], [9.0, 1.0, 50.0], [1.0, 9.0, 50.0]]])
    assert rasterize(screen, torch.tensor([[0, 2, 1]]), 10, cull_backfaces=False).mask.sum() == 0
    screen[0, 0, 2] = 50.0
    assert rasterize(screen, torch.tensor([[0, 2, 1]]), 10, cull_backfaces=False).mask.sum() > 0
    screen[0, 1, 0] = float("nan")
    assert rasterize(screen, torch.tensor([[0, 2, 1]]), 10, cull_backfaces=False).mask.sum() == 0


@pytest.mark.skipif(not pytorch3d_backend.available(), reason="PyTorch3D is not installed (optional backend)")
def test_pytorch3d_backend_matches_torch_backend():
    v, faces = _icosphere(4)
    R = euler_to_matrix(torch.tensor([20.0, -35.0]), torch.tensor([5.0, 10.0]), torch.tensor([0.0, -8.0]))
    cam_v = world_to_camera((v.float() * 90)[None].expand(2, -1, -1), R, torch.tensor([[3.0, -2.0, 700.0]] * 2))
    screen = Camera((60, 72), 500.0).project(cam_v)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    screen = screen.to(device)
    a = rasterize(screen, faces, (60, 72), backend="torch")
    b = rasterize(screen, faces, (60, 72), backend="pytorch3d")
    assert (a.mask == b.mask).float().mean() > 0.995
    same = a.mask & b.mask
    assert (a.face_ids[same] == b.face_ids[same]).float().mean() > 0.99
    assert torch.allclose(a.depth[same], b.depth[same], atol=1e-2)


def test_huge_and_far_off_screen_triangles():
    faces = torch.tensor([[0, 1, 2]])
    far = torch.tensor([[[1e30, 1.0, 50.0], [2e30, 9.0, 50.0], [1e30, 5.0, 50.0]],
                        [[-1e30, 1.0, 50.0], [-2e30, 9.0, 50.0], [-1e30, 5.0, 50.0]]])
    assert rasterize(far, faces, 10, cull_backfaces=False).mask.sum() == 0
    huge = torch.tensor([[[-1e6, -1e6, 50.0], [1e6, -1e6, 50.0], [0.0, 1e6, 50.0]]])
    fr = rasterize(huge, faces, (10, 12), cull_backfaces=False)
    assert fr.mask.all() and torch.allclose(fr.depth, torch.tensor(50.0))
