"""Camera, pose and framing conventions (docs/conventions.md)."""
import math

import pytest
import torch

from facefit.errors import FacefitError
from facefit.render import Camera, euler_to_matrix, frame_face, project, sample_poses, world_to_camera


def test_euler_identity_and_rotation_properties():
    R = euler_to_matrix(torch.tensor([0.0, 30.0]), torch.tensor([0.0, -20.0]), torch.tensor([0.0, 10.0]))
    assert R.shape == (2, 3, 3)
    assert torch.allclose(R[0], torch.eye(3))
    assert torch.allclose(R[1] @ R[1].T, torch.eye(3), atol=1e-6)
    assert torch.allclose(torch.det(R[1]), torch.tensor(1.0), atol=1e-6)


def test_euler_convention_order_and_signs():
    yaw, pitch, roll = torch.tensor([25.0]), torch.tensor([-15.0]), torch.tensor([40.0])
    z = torch.zeros(1)
    R = euler_to_matrix(yaw, pitch, roll)
    Rz, Rx, Ry = euler_to_matrix(z, z, roll), euler_to_matrix(z, pitch, z), euler_to_matrix(yaw, z, z)
    assert torch.allclose(R, Rz @ Rx @ Ry, atol=1e-6)  # R_head = Rz(roll) Rx(pitch) Ry(yaw)
    nose = torch.tensor([0.0, 0.0, 1.0])
    # positive yaw turns the face (nose, +z) towards the viewer's right (+x)
    assert (euler_to_matrix(torch.tensor([30.0]), z, z)[0] @ nose)[0] > 0.4
    # positive pitch: nose down (-y in model space)
    assert (euler_to_matrix(z, torch.tensor([30.0]), z)[0] @ nose)[1] < -0.4


def test_world_to_camera_frontal_flip_and_projection():
    verts = torch.tensor([[[0.0, 10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 20.0]]])
    R = torch.eye(3)[None]
    cam = world_to_camera(verts, R, torch.tensor([[0.0, 0.0, 500.0]]))
    # model +y (up) -> camera -y (image up); model +z (towards viewer) -> nearer the camera
    assert torch.allclose(cam[0, 0], torch.tensor([0.0, -10.0, 500.0]))
    assert torch.allclose(cam[0, 1], torch.tensor([10.0, 0.0, 500.0]))
    assert torch.allclose(cam[0, 2], torch.tensor([0.0, 0.0, 480.0]))
    s = project(cam, 1000.0, 112.0, 100.0)
    assert torch.allclose(s[0, 0], torch.tensor([112.0, 100.0 - 20.0, 500.0]))
    assert torch.allclose(s[0, 1], torch.tensor([112.0 + 20.0, 100.0, 500.0]))


def test_camera_fov_and_validation():
    c = Camera.from_fov(15.0, (224, 200))
    assert c.cx == 100.0 and c.cy == 112.0
    assert math.isclose(c.fov_deg, 15.0, rel_tol=1e-9)
    assert math.isclose(c.focal, 100.0 / math.tan(math.radians(7.5)))
    assert c.scaled(112).focal == pytest.approx(c.focal * 112 / 200)
    with pytest.raises(FacefitError):
        Camera((0, 10), 100.0)
    with pytest.raises(FacefitError):
        Camera.from_fov(200.0, 64)


def test_frame_face_fills_image_at_realistic_distance():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, 500, 3, generator=g) * 2 - 1
    verts = u * torch.tensor([80.0, 100.0, 30.0]) + torch.tensor([5.0, 20.0, 90.0])  # 160 x 200 mm
    verts[0, :2] = torch.tensor([[-90.0, 0, 90], [90.0, 0, 90]])  # 180 mm wide
    camera, t = frame_face(verts, None, 224, fov_deg=15.0, fill=0.8)
    assert 500.0 < float(t[0, 2]) < 1100.0  # realistic portrait distance in mm
    s = camera.project(world_to_camera(verts, torch.eye(3)[None], t))
    ext = torch.maximum(s[0, :, 0].max() - s[0, :, 0].min(), s[0, :, 1].max() - s[0, :, 1].min())
    assert abs(float(ext) - 0.8 * 224) / (0.8 * 224) < 0.1  # perspective makes it slightly off
    centre = s[0, :, :2].mean(0)
    assert torch.allclose(centre, torch.tensor([112.0, 112.0]), atol=2.0)
    # face mask restricts the region used
    mask = torch.zeros(500, dtype=torch.bool)
    mask[:2] = True
    _, t2 = frame_face(verts, mask, 224, fov_deg=15.0, fill=0.4)
    # the centre (z = 90 mm in model space) ends up at the distance on the optical axis
    assert float(t2[0, 2]) - 90.0 == pytest.approx(camera.focal * 180.0 / (0.4 * 224), rel=1e-5)


def test_sample_poses_reproducible_and_in_range():
    a = sample_poses(64, generator=torch.Generator().manual_seed(5))
    b = sample_poses(64, generator=torch.Generator().manual_seed(5))
    c = sample_poses(64, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    yaw, pitch, roll = a
    assert yaw.abs().max() <= 45 and pitch.abs().max() <= 20 and roll.abs().max() <= 15
    assert yaw.min() < -20 and yaw.max() > 20
