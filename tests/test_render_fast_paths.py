"""The renderer's faster paths give what the plain formulas give.

* ``render`` (positions from depth x pixel ray, constant view direction, vertex normals from
  the faces around drawn triangles only, fused Phong) against the plain deferred pipeline
  built from the public primitives (interpolated camera-space positions, all vertex
  normals, autograd Phong): images and gradients in float64.
* The fused Phong and barycentric backwards against autograd of the same formulas, and
  gradcheck.
* The visibility pass for every box grouping against a brute-force reference, the
  silhouette dilation against ``max_pool2d``, the lazily scattered dense fields.
"""
import pytest
import torch

from facefit.render import (
    Camera,
    euler_to_matrix,
    frame_face,
    interpolate_packed,
    random_render_params,
    rasterize,
    render,
    vertex_normals,
    world_to_camera,
)
from facefit.render.interpolate import _faces_around, _vertex_normals_soa
from facefit.render.rasterize import (
    _bary_forward,
    _extend_silhouette,
    _fragments_from_ids,
    _pixel_centres,
    visibility_torch,
)
from facefit.render.renderer import _background, _per_pixel_rows
from facefit.render.shading import _phong_fast, _phong_soa
from test_render_rasterize import _reference_face_ids  # the brute-force visibility reference


def _head_like(dtype=torch.float64):
    """A bumpy closed mesh (icosphere with a nose-like bump), so that some triangles are
    hidden, some back-facing and the silhouette is irregular."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    v = torch.tensor(m.vertices, dtype=dtype)
    bump = 30.0 * torch.exp(-((v[:, 0] / 25.0) ** 2 + (v[:, 1] / 25.0) ** 2)) * (v[:, 2] > 0)
    v = v + bump.unsqueeze(1) * torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    return v, torch.tensor(m.faces, dtype=torch.int64)


def _reference_render(verts, faces, colors, camera, R, t, lights, light_color, background, shininess, specular):
    """The deferred pipeline spelled out with the public primitives and autograd Phong."""
    B, V, _ = verts.shape
    H, W = camera.image_size
    verts_cam = world_to_camera(verts, R, t)
    frags = rasterize(camera.project(verts_cam), faces, (H, W), backend="torch")
    pos = interpolate_packed(verts_cam, faces, frags).t()
    nrm = interpolate_packed(vertex_normals(verts_cam, faces), faces, frags).t()
    kd = interpolate_packed(colors, faces, frags).t()
    bidx = frags.batch_index
    L = lights.positions.shape[1]
    shaded = _phong_soa(
        pos, nrm, kd,
        _per_pixel_rows(lights.positions.reshape(B, -1), bidx).view(L, 3, -1),
        _per_pixel_rows(lights.intensities, bidx),
        lights.ambient.index_select(0, bidx),
        _per_pixel_rows(light_color, bidx),
        shininess.index_select(0, bidx),
        specular.index_select(0, bidx),
    ).clamp(0.0, 1.0)
    ext = frags.extended.reshape(-1).index_select(0, frags.pix_index)
    alpha_p = torch.where(ext, (1.0 - frags.pix_dist).clamp(0.0, 1.0), torch.ones_like(frags.pix_dist))
    HW = H * W
    bg = _background(background, B, H, W, verts).reshape(B, 3, HW)
    img = bg.clone()
    b, rem = bidx, frags.pix_index - bidx * HW
    for c in range(3):
        img[b, c, rem] = alpha_p * shaded[c] + (1.0 - alpha_p) * bg[b, c, rem]
    return img.view(B, 3, H, W)


@pytest.mark.parametrize("cx_shift", [0.0, 3.7])
def test_render_matches_plain_pipeline_values_and_gradients(cx_shift):
    g = torch.Generator().manual_seed(5)
    v, faces = _head_like()
    B, size = 3, 40
    verts = (v[None] + 0.8 * torch.randn(B, v.shape[0], 3, generator=g, dtype=v.dtype))
    colors = 0.2 + 0.6 * torch.rand(B, v.shape[0], 3, generator=g, dtype=v.dtype)
    params = random_render_params(B, g, dtype=torch.float64)
    R = params.R
    cam0, t = frame_face(verts, None, size, fov_deg=15.0, fill=0.8, R=R)
    camera = Camera(cam0.image_size, cam0.focal, cam0.cx + cx_shift, cam0.cy - cx_shift)
    params = random_render_params(B, g, light_target=t, dtype=torch.float64)
    bg = torch.rand(B, 3, size, size, generator=g, dtype=torch.float64)
    w_img = torch.rand(B, 3, size, size, generator=g, dtype=torch.float64)
    w_a = torch.rand(B, 1, size, size, generator=g, dtype=torch.float64)
    kw = dict(lights=params.lights, light_color=params.light_color, background=bg)
    vn, cn = verts.clone().requires_grad_(), colors.clone().requires_grad_()
    out = render(vn, faces, cn, camera, R=R, t=t, shininess=params.shininess, specular=params.specular,
                 backend="torch", **kw)
    ((out.images * w_img).sum() + (out.alpha * w_a).sum()).backward()
    vr, cr = verts.clone().requires_grad_(), colors.clone().requires_grad_()
    ref = _reference_render(vr, faces, cr, camera, R, t, params.lights, params.light_color, bg,
                            params.shininess, params.specular)
    assert out.mask.sum() > 500 and out.fragments.extended.sum() > 50
    assert torch.allclose(out.images, ref, atol=1e-10, rtol=0)
    frags = rasterize(camera.project(world_to_camera(vr, R, t)), faces, (size, size), backend="torch")
    alpha_ref = torch.zeros(B * size * size, dtype=torch.float64)
    ext = frags.extended.reshape(-1)[frags.pix_index]
    alpha_ref[frags.pix_index] = torch.where(ext, (1.0 - frags.pix_dist).clamp(0, 1), torch.ones_like(frags.pix_dist))
    ((ref * w_img).sum() + (alpha_ref.view(B, 1, size, size) * w_a).sum()).backward()
    assert torch.allclose(vn.grad, vr.grad, atol=1e-9, rtol=1e-7)
    assert torch.allclose(cn.grad, cr.grad, atol=1e-10, rtol=1e-8)
    assert vn.grad.abs().sum() > 0


def test_render_float32_close_to_plain_pipeline_and_no_grad_same_images():
    g = torch.Generator().manual_seed(2)
    v, faces = _head_like(torch.float32)
    B, size = 2, 48
    verts = v[None].repeat(B, 1, 1)
    colors = 0.2 + 0.6 * torch.rand(B, v.shape[0], 3, generator=g)
    params = random_render_params(B, g)
    camera, t = frame_face(verts, None, size, fov_deg=15.0, fill=0.8, R=params.R)
    params = random_render_params(B, g, light_target=t)
    args = dict(R=params.R, t=t, lights=params.lights, light_color=params.light_color, background=(0.3, 0.4, 0.5),
                shininess=params.shininess, specular=params.specular, backend="torch")
    out = render(verts, faces, colors, camera, **args)
    ref = _reference_render(verts, faces, colors, camera, params.R, t, params.lights, params.light_color,
                            (0.3, 0.4, 0.5), params.shininess, params.specular)
    assert (out.images - ref).abs().max() < 1e-5
    with torch.no_grad():
        out2 = render(verts, faces, colors, camera, **args)
    assert torch.equal(out.images, out2.images)


def _phong_inputs(N=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    P = torch.randn(3, N, generator=g, dtype=dt) * 30 + torch.tensor([0.0, 0.0, 800.0], dtype=dt).view(3, 1)
    Nrm = torch.randn(3, N, generator=g, dtype=dt)
    Kd = torch.rand(3, N, generator=g, dtype=dt)
    ray = P / P[2:3]
    view = ray * -torch.rsqrt((ray * ray).sum(0))
    lp = torch.randn(2, 3, N, generator=g, dtype=dt) * 2000 + torch.tensor([0.0, 0.0, -1000.0], dtype=dt).view(1, 3, 1)
    li = torch.rand(2, N, generator=g, dtype=dt)
    amb = torch.rand(N, generator=g, dtype=dt)
    col = torch.rand(3, N, generator=g, dtype=dt) + 0.5
    shin = 5 + 35 * torch.rand(N, generator=g, dtype=dt)
    c = 0.3 * torch.rand(N, generator=g, dtype=dt)
    return P, Nrm, Kd, view, lp, li, amb, col, shin, c


def test_fused_phong_equals_autograd_phong():
    P, Nrm, Kd, view, lp, li, amb, col, shin, c = _phong_inputs()
    Nrm[:, :2] = 0.0  # zero normals (clamped normalisation) too
    go = torch.randn(3, P.shape[1], dtype=P.dtype, generator=torch.Generator().manual_seed(1))
    res = []
    for fused in (False, True):
        a, b, k = (x.clone().requires_grad_() for x in (P, Nrm, Kd))
        if fused:
            o = _phong_fast(a, b, k, lp, li, amb, col, shin, c, view)
        else:
            o = _phong_soa(a, b, k, lp, li, amb, col, shin, c, view=view)
        o.backward(go)
        res.append((o.detach(), a.grad, b.grad, k.grad))
    for x, y in zip(*res):
        assert torch.allclose(x, y, atol=1e-12, rtol=1e-10)
    # scalar Phong parameters, and a light that needs gradients (autograd fallback)
    a = P.clone().requires_grad_()
    o1 = _phong_fast(a, Nrm, Kd, lp, li, amb, col, torch.tensor(20.0, dtype=P.dtype), torch.tensor(0.2, dtype=P.dtype), view)
    o2 = _phong_soa(P, Nrm, Kd, lp, li, amb, col, torch.tensor(20.0, dtype=P.dtype), torch.tensor(0.2, dtype=P.dtype), view=view)
    assert torch.allclose(o1, o2, atol=1e-12)
    lpg = lp.clone().requires_grad_()
    _phong_fast(P, Nrm, Kd, lpg, li, amb, col, shin, c, view).sum().backward()
    assert lpg.grad is not None and lpg.grad.abs().sum() > 0


def test_fused_phong_gradcheck():
    P, Nrm, Kd, view, lp, li, amb, col, shin, c = _phong_inputs(N=24, seed=3)
    inputs = tuple(x.clone().requires_grad_() for x in (P, Nrm, Kd))
    assert torch.autograd.gradcheck(
        lambda a, b, k: _phong_fast(a, b, k, lp, li, amb, col, shin, c, view), inputs, eps=1e-6, atol=1e-6
    )


def test_fused_barycentrics_equal_autograd_of_the_same_formula():
    v, faces = _head_like()
    R = euler_to_matrix(torch.tensor([20.0, -35.0]), torch.tensor([5.0, -10.0]), torch.tensor([0.0, 8.0])).double()
    cam = Camera((36, 40), 200.0)
    screen = cam.project(world_to_camera(v[None].expand(2, -1, -1), R, torch.tensor([[0.0, 0.0, 600.0]] * 2, dtype=torch.float64)))
    ids = visibility_torch(screen, faces, (36, 40))
    ext_ids = _extend_silhouette(screen, faces, ids)
    g = torch.Generator().manual_seed(4)
    s1 = screen.clone().requires_grad_()
    fr = _fragments_from_ids(s1, faces, ext_ids, ids >= 0)
    wb, wd = torch.randn(fr.pix_bary.shape, generator=g, dtype=torch.float64), torch.randn(fr.pix_depth.shape, generator=g, dtype=torch.float64)
    ((fr.pix_bary * wb).sum() + (fr.pix_depth * wd).sum()).backward()
    # autograd through the same forward formula
    s2 = screen.clone().requires_grad_()
    B, V, _ = s2.shape
    b, pu, pv = _pixel_centres(fr.pix_index, 36, 40, torch.float64)
    vid = (faces.t().index_select(1, fr.pix_face) + b * V).reshape(-1)
    gat = s2.reshape(B * V, 3).t().index_select(1, vid).view(3, 3, -1)
    bary, depth, _ = _bary_forward(gat, pu, pv)
    assert torch.equal(bary.t(), fr.pix_bary.detach()) and torch.equal(depth, fr.pix_depth.detach())
    ((bary.t() * wb).sum() + (depth * wd).sum()).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-12, rtol=1e-9)
    # only one of the two outputs used
    s3 = screen.clone().requires_grad_()
    _fragments_from_ids(s3, faces, ext_ids, ids >= 0).pix_depth.sum().backward()
    assert torch.isfinite(s3.grad).all() and s3.grad.abs().sum() > 0


def _brute_force_ids(screen, faces, H, W, cull=True):
    """The brute-force reference of test_render_rasterize, image by image: (B, H, W)."""
    return torch.stack([_reference_face_ids(screen[b:b + 1], faces, H, W, cull) for b in range(screen.shape[0])])


@pytest.mark.parametrize("cull", [True, False])
def test_visibility_every_box_grouping_matches_brute_force(cull):
    g = torch.Generator().manual_seed(11)
    H, W, F, B = 24, 30, 120, 2
    centre = torch.rand(B, F, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 4.0, H + 4.0]) - 2.0
    # triangles of many sizes: sub-pixel to ~14 px boxes
    scale = torch.rand(B, F, 1, 1, generator=g, dtype=torch.float64) ** 2 * 7.0 + 0.2
    uv = centre + scale * (torch.rand(B, F, 3, 2, generator=g, dtype=torch.float64) - 0.5) * 2
    z = 100 + 50 * torch.rand(B, F, 3, 1, generator=g, dtype=torch.float64)
    z[:, :15, 0] = -5.0  # some triangles cross the near plane (skipped)
    z[:, 15:20, 1] = 0.0
    screen = torch.cat([uv, z], -1).reshape(B, 3 * F, 3)
    faces = torch.arange(3 * F).view(F, 3)
    ref = _brute_force_ids(screen, faces, H, W, cull)
    assert (ref >= 0).sum() > 150
    for sb in (0, 1, 3, 4, 8, 15):
        ids = visibility_torch(screen, faces, (H, W), cull_backfaces=cull, small_box=sb, chunk_candidates=97)
        assert torch.equal(ids, ref), sb


def test_silhouette_candidates_match_max_pool_dilation():
    g = torch.Generator().manual_seed(6)
    ids = torch.full((2, 17, 23), -1, dtype=torch.int64)
    ids[torch.rand(2, 17, 23, generator=g) < 0.15] = 0
    ids[0, 0, :] = 0  # borders
    ids[1, :, -1] = 0
    cov = (ids >= 0).unsqueeze(1).double()
    expected = (torch.nn.functional.max_pool2d(cov, 3, stride=1, padding=1).squeeze(1) > 0) & (ids < 0)
    # one triangle covering everything: every candidate extends to it
    screen = torch.tensor([[[-100.0, -100.0, 10.0], [-100.0, 300.0, 10.0], [300.0, -100.0, 10.0]]], dtype=torch.float64)
    screen = screen.expand(2, -1, -1)
    faces = torch.tensor([[0, 1, 2]])
    out = _extend_silhouette(screen, faces, ids)
    assert torch.equal((out >= 0) & (ids < 0), expected)


def test_dense_fields_scatter_the_packed_ones():
    v, faces = _head_like()
    cam = Camera((30, 34), 180.0)
    R = euler_to_matrix(torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([0.0])).double()
    s = cam.project(world_to_camera(v[None], R, torch.tensor([[0.0, 0.0, 600.0]], dtype=torch.float64))).requires_grad_()
    fr = rasterize(s, faces, (30, 34))
    flat = fr.face_ids.reshape(-1)
    for dense, packed in ((fr.bary, fr.pix_bary), (fr.depth, fr.pix_depth), (fr.dist, fr.pix_dist)):
        d = dense.reshape(flat.numel(), -1)
        assert torch.equal(d[fr.pix_index], packed.reshape(len(fr.pix_index), -1))
        assert (d[flat < 0] == 0).all()
    assert fr.depth is fr.depth  # computed once
    fr.depth.sum().backward()  # differentiable
    assert s.grad.abs().sum() > 0


def test_vertex_normals_from_the_faces_around_drawn_triangles():
    v, faces = _head_like()
    B = 2
    verts = v[None].repeat(B, 1, 1) + 0.3 * torch.randn(B, v.shape[0], 3, dtype=v.dtype, generator=torch.Generator().manual_seed(0))
    soa = verts.reshape(-1, 3).t().contiguous()
    F = faces.shape[0]
    drawn = torch.tensor([3, 17, 17, 100, F + 5, F + 250], dtype=torch.int64)
    subset = _faces_around(faces, B, v.shape[0], drawn)
    full = _vertex_normals_soa(soa, faces, B, v.shape[0])
    part = _vertex_normals_soa(soa, faces, B, v.shape[0], subset=subset)
    off = (drawn // F) * v.shape[0]
    used = (faces[drawn % F] + off.unsqueeze(1)).reshape(-1)
    assert torch.equal(part[:, used], full[:, used])
    assert subset.numel() < B * F


def test_topology_cache_follows_the_faces_tensor():
    from facefit.render.rasterize import corner_index, faces_soa

    v, faces = _head_like()
    faces = faces.clone()
    V = v.shape[0]

    def plain(fc, B):
        return (fc.t().unsqueeze(1) + (torch.arange(B) * V).view(1, B, 1)).reshape(3, -1)

    assert torch.equal(corner_index(faces, 2, V), plain(faces, 2))
    assert corner_index(faces, 2, V) is corner_index(faces, 2, V)  # cached
    assert torch.equal(corner_index(faces, 3, V), plain(faces, 3))  # per batch size
    cam = Camera((30, 34), 180.0)
    s = cam.project(world_to_camera(v[None], torch.eye(3, dtype=v.dtype)[None], torch.tensor([[0.0, 0.0, 600.0]], dtype=v.dtype)))
    before = rasterize(s, faces, (30, 34)).face_ids
    faces[:, [1, 2]] = faces[:, [2, 1]].clone()  # in place: every face flipped
    assert torch.equal(faces_soa(faces), faces.t()) and torch.equal(corner_index(faces, 2, V), plain(faces, 2))
    after = rasterize(s, faces, (30, 34)).face_ids
    assert torch.equal(after, rasterize(s, faces.clone(), (30, 34)).face_ids)
    assert not torch.equal(after, before)
