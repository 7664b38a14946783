"""Pinhole camera, head pose and projection (see docs/conventions.md).

Coordinate frames
-----------------
* Model space (mm): right-handed, +y up, +z out of the face, +x towards the viewer's right.
* Camera space (OpenCV): x right, y down, z forward; visible points have z > 0.
  ``X_cam = F @ R_head @ X_model + t`` with the frontal flip ``F = diag(1, -1, -1)``.
* Screen space: (u, v, z) with u, v in continuous pixel coordinates (pixel (i, j) has its
  centre at (j + 0.5, i + 0.5)) and z the camera-space depth in mm.

Head pose: ``R_head = Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (degrees). Positive yaw turns the face
towards the viewer's right, positive pitch tilts the nose down, positive roll rotates the
face counter-clockwise in model space (seen from the front, +x towards +y).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from facefit.errors import FacefitError

__all__ = [
    "FRONTAL_FLIP",
    "Camera",
    "euler_to_matrix",
    "camera_rotation",
    "world_to_camera",
    "project",
    "sample_poses",
    "frame_face",
]

#: The frontal flip diag(1, -1, -1) taking model axes (y up, z to the viewer) to camera axes.
FRONTAL_FLIP = (1.0, -1.0, -1.0)


def _as_tensor(x, ref: Optional[torch.Tensor] = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if ref is not None:
        return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def euler_to_matrix(yaw, pitch, roll) -> torch.Tensor:
    """Head rotation from Euler angles in degrees.

    Args:
        yaw, pitch, roll: tensors (B,) (or scalars / 0-d tensors) in degrees.
    Returns:
        (B, 3, 3) ``R_head = Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (B = broadcast size, at least 1).
        Differentiable w.r.t. the angles.
    """
    yaw = _as_tensor(yaw)
    pitch = _as_tensor(pitch, yaw)
    roll = _as_tensor(roll, yaw)
    yaw, pitch, roll = torch.broadcast_tensors(yaw, pitch, roll)
    yaw, pitch, roll = (a.reshape(-1) for a in (yaw, pitch, roll))
    y, p, r = (torch.deg2rad(a) for a in (yaw, pitch, roll))
    cy, sy = torch.cos(y), torch.sin(y)
    cp, sp = torch.cos(p), torch.sin(p)
    cr, sr = torch.cos(r), torch.sin(r)
    one, zero = torch.ones_like(y), torch.zeros_like(y)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ rx @ ry


def camera_rotation(R_head: torch.Tensor) -> torch.Tensor:
    """Full model->camera rotation ``F @ R_head`` with ``F = diag(1, -1, -1)``.

    Args:
        R_head: (B, 3, 3) head rotation.
    Returns:
        (B, 3, 3).
    """
    flip = R_head.new_tensor(FRONTAL_FLIP).view(1, 3, 1)
    return R_head * flip


def world_to_camera(
    verts: torch.Tensor, R: torch.Tensor, t: torch.Tensor, frontal_flip: bool = True
) -> torch.Tensor:
    """Transform model-space vertices to camera space.

    ``X_cam = F @ R @ X + t`` where ``F = diag(1, -1, -1)`` when ``frontal_flip`` (then ``R`` is
    the head rotation from :func:`euler_to_matrix`), or ``X_cam = R @ X + t`` otherwise
    (``R`` is then the full model->camera rotation).

    Args:
        verts: (B, V, 3) model-space vertices in mm.
        R: (B, 3, 3) rotation (or (3, 3), broadcast).
        t: (B, 3) translation in mm (or (3,)).
    Returns:
        (B, V, 3) camera-space vertices in mm.
    """
    if R.dim() == 2:
        R = R.unsqueeze(0)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if frontal_flip:
        R = camera_rotation(R)
    return torch.matmul(verts, R.transpose(-1, -2)) + t.unsqueeze(-2)


def project(verts_cam: torch.Tensor, focal, cx, cy, fy=None) -> torch.Tensor:
    """Perspective projection to screen space.

    ``u = fx * x / z + cx``, ``v = fy * y / z + cy``; z is kept (camera depth in mm).

    Args:
        verts_cam: (B, V, 3) camera-space vertices (z > 0 in front of the camera).
        focal: fx in pixels; float or tensor (B,).
        cx, cy: principal point in pixels; floats or tensors (B,).
        fy: optional vertical focal length (default ``focal``).
    Returns:
        (B, V, 3) screen vertices (u, v, z).
    """
    B = verts_cam.shape[0]

    def col(a):
        a = _as_tensor(a, verts_cam)
        return a.reshape(-1, 1).expand(B, 1) if a.numel() > 1 else a.reshape(1, 1)

    fx = col(focal)
    fy_ = fx if fy is None else col(fy)
    x, y, z = verts_cam.unbind(-1)
    # Guard the division only for points at/behind the camera (they are culled by the
    # rasteriser anyway); visible points keep exact arithmetic.
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    u = fx * x / zs + col(cx)
    v = fy_ * y / zs + col(cy)
    return torch.stack([u, v, z], -1)


@dataclass
class Camera:
    """Pinhole camera with square pixels.

    Attributes:
        image_size: (H, W) in pixels.
        focal: focal length in pixels (fx = fy).
        cx, cy: principal point in pixels (default W/2, H/2).
    """

    image_size: Tuple[int, int]
    focal: float
    cx: Optional[float] = None
    cy: Optional[float] = None

    def __post_init__(self):
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.image_size[0] <= 0 or self.image_size[1] <= 0:
            raise FacefitError(f"image size must be positive, got {self.image_size}")
        if not float(self.focal) > 0:
            raise FacefitError(f"focal length must be positive, got {self.focal}")
        if self.cx is None:
            self.cx = self.image_size[1] / 2.0
        if self.cy is None:
            self.cy = self.image_size[0] / 2.0

    @staticmethod
    def fov_to_focal(fov_deg: float, image_size: Union[int, Sequence[int]]) -> float:
        """Focal length (px) whose field of view ``fov_deg`` spans the shorter image side."""
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if not 0.0 < fov_deg < 180.0:
            raise FacefitError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        side = min(image_size)
        return 0.5 * side / math.tan(math.radians(fov_deg) / 2.0)

    @classmethod
    def from_fov(cls, fov_deg: float, image_size: Union[int, Sequence[int]]) -> "Camera":
        """Camera whose field of view ``fov_deg`` (degrees) spans the shorter image side."""
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        return cls(tuple(image_size), cls.fov_to_focal(fov_deg, image_size))

    @property
    def fov_deg(self) -> float:
        """Field of view over the shorter image side, degrees."""
        return math.degrees(2.0 * math.atan(0.5 * min(self.image_size) / self.focal))

    def project(self, verts_cam: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) camera-space -> (B, V, 3) screen (u, v, z). See :func:`project`."""
        return project(verts_cam, self.focal, self.cx, self.cy)

    def scaled(self, image_size: Union[int, Sequence[int]]) -> "Camera":
        """Same field of view at another resolution (principal point scaled too)."""
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        sy = image_size[0] / self.image_size[0]
        sx = image_size[1] / self.image_size[1]
        return Camera(tuple(image_size), self.focal * sx, self.cx * sx, self.cy * sy)


def sample_poses(
    n: int,
    yaw_range: Tuple[float, float] = (-45.0, 45.0),
    pitch_range: Tuple[float, float] = (-20.0, 20.0),
    roll_range: Tuple[float, float] = (-15.0, 15.0),
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniformly random head poses.

    Args:
        n: number of poses.
        yaw_range, pitch_range, roll_range: (low, high) in degrees.
        generator: optional CPU ``torch.Generator`` for reproducibility.
    Returns:
        yaw, pitch, roll: three tensors (n,) in degrees.
    """
    dtype = dtype or torch.get_default_dtype()
    out = []
    for lo, hi in (yaw_range, pitch_range, roll_range):
        if hi < lo:
            raise FacefitError(f"invalid angle range ({lo}, {hi})")
        u = torch.rand(n, generator=generator, dtype=dtype)
        out.append((lo + (hi - lo) * u).to(device))
    return tuple(out)


def frame_face(
    verts: torch.Tensor,
    face_mask: Optional[torch.Tensor] = None,
    image_size: Union[int, Sequence[int]] = 224,
    fov_deg: float = 15.0,
    fill: float = 0.8,
    R: Optional[torch.Tensor] = None,
    camera: Optional[Camera] = None,
) -> Tuple[Camera, torch.Tensor]:
    """Camera and translation so that the face fills ``fill`` of the image.

    The face centre (mean of the face-region vertices) is put on the optical axis at distance
    ``d`` chosen so that the larger of the face region's width/height (measured after the head
    rotation, ignoring perspective) spans ``fill * min(H, W)`` pixels. With the default
    15 degree field of view a ~180 mm wide face lands at ~0.85 m, a realistic portrait distance.

    Args:
        verts: (B, V, 3) or (V, 3) model-space vertices in mm.
        face_mask: optional (V,) bool or index tensor selecting the face region (default: all).
        image_size: int or (H, W).
        fov_deg: field of view over the shorter image side, degrees.
        fill: fraction of the shorter image side the face should span, in (0, 1].
        R: optional (B, 3, 3) head rotation (default identity = frontal).
        camera: use this camera (its focal length and size) instead of building one from
            ``image_size`` / ``fov_deg``.
    Returns:
        camera: :class:`Camera` (shared by the batch).
        t: (B, 3) translation in mm for :func:`world_to_camera` (with the frontal flip).
    """
    if verts.dim() == 2:
        verts = verts.unsqueeze(0)
    if not 0.0 < fill <= 1.0:
        raise FacefitError(f"fill must be in (0, 1], got {fill}")
    if camera is None:
        camera = Camera.from_fov(fov_deg, image_size)
    region = verts if face_mask is None else verts[:, face_mask]
    if region.shape[1] == 0:
        raise FacefitError("face region selects no vertices")
    B = verts.shape[0]
    if R is None:
        R = torch.eye(3, dtype=verts.dtype, device=verts.device).expand(B, 3, 3)
    elif R.dim() == 2:
        R = R.unsqueeze(0).expand(B, 3, 3)
    Rc = camera_rotation(R)
    centre = region.mean(1)  # (B, 3)
    rot = torch.matmul(region - centre.unsqueeze(1), Rc.transpose(-1, -2))  # (B, N, 3)
    extent = (rot[..., :2].amax(1) - rot[..., :2].amin(1)).amax(-1)  # (B,)
    size_px = fill * min(camera.image_size)
    dist = camera.focal * extent / size_px  # (B,)
    t = -torch.matmul(Rc, centre.unsqueeze(-1)).squeeze(-1)
    t = t + torch.stack([torch.zeros_like(dist), torch.zeros_like(dist), dist], -1)
    return camera, t
