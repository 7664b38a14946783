"""End-to-end renderer: images, compositing, gradients, random parameters."""
import pytest
import torch

from facefit.errors import FacefitError
from facefit.render import (
    FaceRenderer,
    euler_to_matrix,
    frame_face,
    random_render_params,
    render,
)


def _sphere(subdiv=3, radius=80.0, dtype=torch.float32):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=radius)
    return torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.int64)


def _setup(B=2, size=48, dtype=torch.float32):
    v, f = _sphere(dtype=dtype)
    verts = v[None].repeat(B, 1, 1)
    colors = torch.full_like(verts, 0.6)
    camera, t = frame_face(verts, None, size, fov_deg=15.0, fill=0.8)
    return verts, f, colors, camera, t


def test_render_sphere_frontal_lighting():
    verts, f, colors, camera, t = _setup()
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = render(verts, f, colors, camera, t=t, background=bg)
    B, H, W = 2, 48, 48
    assert out.images.shape == (B, 3, H, W) and out.alpha.shape == (B, 1, H, W) and out.mask.shape == (B, 1, H, W)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.screen_verts.shape == verts.shape
    # background exactly where alpha is 0
    outside = out.alpha[:, 0] == 0
    for b in range(B):
        assert torch.allclose(out.images[b].permute(1, 2, 0)[outside[b]], bg[b].expand(int(outside[b].sum()), 3))
    # alpha: 1 on covered pixels, soft (0, 1) only on the extended ring
    assert (out.alpha[out.mask] == 1).all()
    ext = out.fragments.extended.unsqueeze(1)
    assert ((out.alpha > 0) & (out.alpha < 1) <= ext).all()
    # the disc fills ~80 % of the image width
    cols = out.mask[0, 0].any(0).nonzero()
    width = int(cols.max() - cols.min() + 1)
    assert abs(width - 0.8 * W) <= 3
    # Lambert: the sphere's centre is brighter than its rim
    centre = out.images[0, :, H // 2, W // 2].mean()
    rim_col = int(cols.min()) + 1
    assert centre > out.images[0, :, H // 2, rim_col].mean() + 0.05
    # shaded colour is grey (white lights, grey albedo)
    c = out.images[0, :, H // 2, W // 2]
    assert torch.allclose(c, c.mean().expand(3), atol=1e-5)


def test_render_gradients_flow_to_vertices_and_colours():
    verts, f, colors, camera, t = _setup(B=1)
    verts = verts.clone().requires_grad_()
    colors = torch.rand_like(colors).requires_grad_()
    out = render(verts, f, colors, camera, t=t, background=torch.tensor([0.5, 0.5, 0.5]))
    (out.images * torch.rand_like(out.images)).sum().backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0
    assert torch.isfinite(colors.grad).all()
    # vertices on the far side (model -z, facing away) receive no colour gradient
    back = verts[0, :, 2] < -40
    assert colors.grad[0][back].abs().sum() == 0
    assert colors.grad[0][~back].abs().sum() > 0


def test_soft_silhouette_gradient_matches_finite_difference():
    verts, f, colors, camera, t = _setup(B=1, size=40, dtype=torch.float64)

    def alpha_sum(scale):
        return render(verts * scale, f, colors, camera, t=t).alpha.sum()

    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(alpha_sum(s), s)
    eps = 1e-4
    one = torch.tensor(1.0, dtype=torch.float64)
    fd = (alpha_sum(one + eps) - alpha_sum(one - eps)) / (2 * eps)
    assert g > 0  # growing the sphere grows its silhouette
    assert torch.allclose(g, fd, rtol=0.05)


def test_pose_background_image_and_module():
    verts, f, colors, camera, t = _setup()
    yaw, pitch, roll = torch.tensor([30.0, -20.0]), torch.tensor([10.0, 0.0]), torch.tensor([0.0, 5.0])
    a = render(verts, f, colors, camera, pose=(yaw, pitch, roll), t=t)
    b = render(verts, f, colors, camera, R=euler_to_matrix(yaw, pitch, roll), t=t)
    assert torch.equal(a.images, b.images)
    module = FaceRenderer(f, camera)
    c = module(verts, colors, pose=(yaw, pitch, roll), t=t)
    assert torch.equal(a.images, c.images)
    bg = torch.rand(2, 3, 48, 48)
    d = render(verts, f, colors, camera, t=t, background=bg, extend_outside=False)
    assert torch.equal(d.alpha.bool(), d.mask)
    assert torch.equal(d.images.permute(0, 2, 3, 1)[~d.mask[:, 0]], bg.permute(0, 2, 3, 1)[~d.mask[:, 0]])
    # t=None frames the mesh itself
    e = render(verts, f, colors, camera)
    assert e.mask.sum() > 0.3 * 48 * 48 * 2
    with pytest.raises(FacefitError):
        render(verts, f, colors, camera, t=t, background=torch.rand(3, 3))


def test_random_render_params_reproducible_and_usable():
    p1 = random_render_params(4, torch.Generator().manual_seed(7))
    p2 = random_render_params(4, torch.Generator().manual_seed(7))
    p3 = random_render_params(4, torch.Generator().manual_seed(8))
    for name in ("yaw", "pitch", "roll", "light_color", "kelvin", "shininess", "specular"):
        assert torch.equal(getattr(p1, name), getattr(p2, name))
    assert torch.equal(p1.lights.positions, p2.lights.positions)
    assert not torch.equal(p1.yaw, p3.yaw) and not torch.equal(p1.lights.positions, p3.lights.positions)
    assert p1.R.shape == (4, 3, 3)
    v, f = _sphere()
    verts = v[None].repeat(4, 1, 1)
    camera, t = frame_face(verts, None, 32, R=p1.R)
    p = random_render_params(4, torch.Generator().manual_seed(7), light_target=t)
    out = render(verts, f, torch.full_like(verts, 0.5), camera, R=p.R, t=t, lights=p.lights,
                 light_color=p.light_color, shininess=p.shininess, specular=p.specular)
    assert out.images.shape == (4, 3, 32, 32) and torch.isfinite(out.images).all()
    # different light colours tint the images differently
    mean_rgb = out.images.sum((2, 3)) / out.mask.sum((2, 3))
    warm = int(p.kelvin.argmin())
    cold = int(p.kelvin.argmax())
    assert mean_rgb[warm, 0] / mean_rgb[warm, 2] > mean_rgb[cold, 0] / mean_rgb[cold, 2]


@pytest.mark.parametrize("case", ["back_facing", "nan_vertex", "off_screen"])
def test_nothing_covered_gives_background_only(case):
    from facefit.render import Camera, phong_shade, frontal_lights
    from facefit.render.interpolate import interpolate

    camera = Camera.from_fov(15.0, 24)
    verts = torch.tensor([[[-30.0, -30.0, 0.0], [30.0, -30.0, 0.0], [0.0, 30.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2]])  # counter-clockwise seen from +z: front-facing
    if case == "back_facing":
        faces = faces.flip(1)
    elif case == "nan_vertex":
        verts[0, 1, 0] = float("nan")
    else:
        verts = verts + torch.tensor([5000.0, 0.0, 0.0])
    colors = torch.full_like(verts, 0.7).requires_grad_()
    verts = verts.requires_grad_()
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = render(verts, faces, colors, camera, t=torch.tensor([[0.0, 0.0, 400.0]]), background=bg)
    assert out.fragments.pix_index.numel() == 0
    assert out.images.shape == (1, 3, 24, 24) and out.alpha.shape == (1, 1, 24, 24)
    assert torch.equal(out.images, bg.view(1, 3, 1, 1).expand(1, 3, 24, 24))
    assert (out.alpha == 0).all() and not out.mask.any()
    out.images.sum().backward()  # differentiable (zero gradients), no crash
    assert torch.equal(colors.grad, torch.zeros_like(colors))
    assert interpolate(colors.detach(), faces, out.fragments).shape == (1, 24, 24, 3)
    # the deferred shader with no pixels at all
    empty = torch.zeros(1, 0, 3)
    assert phong_shade(empty, empty, empty, frontal_lights(1)).shape == (1, 0, 3)


def test_empty_image_in_a_batch_does_not_disturb_the_others():
    verts, f, colors, camera, t = _setup(B=2, size=32)
    ref = render(verts[:1], f, colors[:1], camera, t=t[:1])
    verts = verts.clone()
    verts[1] = float("nan")
    out = render(verts, f, colors, camera, t=t, background=torch.tensor([1.0, 0.0, 0.0]))
    assert out.mask[0].sum() > 100 and not out.mask[1].any()
    assert (out.alpha[1] == 0).all()
    assert torch.equal(out.images[1], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 32, 32))
    # image 0 as if rendered alone (background only differs where alpha < 1)
    inside = ref.alpha[0, 0] == 1
    assert torch.allclose(out.images[0][:, inside], ref.images[0][:, inside], atol=1e-6)
