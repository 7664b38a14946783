"""Pose, camera and expression of a photo (Genova et al. 2018, appendix A.1, Figure 18).

Starting from the regressor's neutral identity (kept fixed), fit to the photo's 68
landmarks (:func:`facefit.fitting.fit_landmarks`): head rotation, translation, focal
length and the model's expression weights. The result, :class:`PoseFit`, carries

* yaw / pitch / roll in degrees (``R_head = Rz(roll) Rx(pitch) Ry(yaw)``),
* the translation in mm and the camera (focal length, principal point in pixels): a model
  point X (mm) lands on pixel ``(u, v) = (f x / z + cx, f y / z + cy)`` with
  ``(x, y, z) = diag(1, -1, -1) R_head X + t`` (OpenCV camera, ``docs/conventions.md``),
* the expression weights by name (ICT-FaceKit: ARKit-like blend-shape weights in [0, 1]).

:func:`posed_mesh` turns it into the identity with the photo's expression, in that camera's
coordinates (so that projecting its vertices with the camera lands on the face).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from facefit.errors import FacefitError
from facefit.mesh_io import FaceMesh

__all__ = ["PoseFit", "PoseFitError", "fit_pose", "posed_vertices", "posed_mesh", "attach_pose",
           "MAX_LANDMARK_ERROR", "POSE_STEPS"]

#: A fit whose mean landmark distance exceeds this fraction of the face scale (RMS distance
#: of the 68 landmarks from their centroid) is reported as failed (good fits: 0.02-0.06).
MAX_LANDMARK_ERROR = 0.15
#: Optimisation steps of the photo fit.
POSE_STEPS = 150
#: Weight of the Gaussian expression prior of the first (Adam) stage (fit_landmarks' expr_prior).
EXPR_PRIOR = 0.3
#: Gauss-Newton iterations of the second stage (sparse expression, :mod:`facefit.avatar.solver`).
REFINE_ITERS = 10


class PoseFitError(FacefitError):
    """The landmark fit of a photo failed (degenerate landmarks, landmark error too large)."""


@dataclass
class PoseFit:
    """Head pose, camera and expression of one face in one photo.

    Attributes:
        yaw, pitch, roll: degrees (``docs/conventions.md``).
        translation: (3,) mm, camera space.
        focal: focal length in pixels; cx, cy: principal point in pixels.
        image_size: (H, W) of the photo.
        expr_coeffs: (Ke,) float32 expression weights in the model's order.
        expr_names: Ke names (ICT-FaceKit: ARKit names, ``jawOpen``, ``mouthSmile_L``...).
        landmark_error_px: mean distance of the 68 fitted to the detected landmarks.
        face_scale_px: RMS distance of the detected landmarks from their centroid.
        landmarks68: (68, 2) detected landmarks the fit used.
        photo: (H, W, 3) uint8 the photo (for the overlay sheet; not recorded).
    """

    yaw: float
    pitch: float
    roll: float
    translation: np.ndarray
    focal: float
    cx: float
    cy: float
    image_size: tuple
    expr_coeffs: np.ndarray
    expr_names: list
    landmark_error_px: float
    face_scale_px: float
    landmarks68: Optional[np.ndarray] = None
    photo: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def expression(self) -> dict:
        """Expression weights by name."""
        return {n: float(w) for n, w in zip(self.expr_names, self.expr_coeffs)}

    @property
    def landmark_error(self) -> float:
        """Mean landmark error as a fraction of the face scale (resolution independent)."""
        return self.landmark_error_px / max(self.face_scale_px, 1e-6)

    @property
    def R_head(self) -> np.ndarray:
        """(3, 3) head rotation ``Rz(roll) Rx(pitch) Ry(yaw)``."""
        from facefit.render import euler_to_matrix

        return euler_to_matrix(torch.tensor([self.yaw], dtype=torch.float64), torch.tensor([self.pitch], dtype=torch.float64),
                               torch.tensor([self.roll], dtype=torch.float64))[0].numpy()

    @property
    def R_cam(self) -> np.ndarray:
        """(3, 3) model -> camera rotation ``diag(1, -1, -1) R_head``."""
        return self.R_head * np.array([1.0, -1.0, -1.0])[:, None]

    def camera(self, scale: float = 1.0):
        """The photo's :class:`~facefit.render.Camera` (optionally for the photo resized by ``scale``)."""
        from facefit.render import Camera

        H, W = self.image_size
        return Camera((max(1, int(round(H * scale))), max(1, int(round(W * scale)))), self.focal * scale,
                      self.cx * scale, self.cy * scale)

    def to_camera(self, verts: np.ndarray) -> np.ndarray:
        """(V, 3) model-space mm -> (V, 3) camera-space mm."""
        return np.asarray(verts, np.float64) @ self.R_cam.T + self.translation

    def project(self, verts: np.ndarray) -> np.ndarray:
        """(V, 3) model-space mm -> (V, 2) pixel positions in the photo."""
        c = self.to_camera(verts)
        z = np.maximum(c[:, 2], 1e-6)
        return np.stack([self.focal * c[:, 0] / z + self.cx, self.focal * c[:, 1] / z + self.cy], 1)

    def record(self) -> dict:
        """The JSON-able record for coefficient files and mesh metadata."""
        return {
            "yaw_deg": float(self.yaw), "pitch_deg": float(self.pitch), "roll_deg": float(self.roll),
            "translation_mm": [float(x) for x in self.translation],
            "focal_px": float(self.focal), "cx_px": float(self.cx), "cy_px": float(self.cy),
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "camera": "opencv: x right, y down, z forward; X_cam = diag(1,-1,-1) R_head X + t",
            "expression": self.expression,
            "landmark_error_px": float(self.landmark_error_px),
            "landmark_error": float(self.landmark_error),
        }


def fit_pose(model, shape_coeffs, landmarks68, image_size, *, steps: int = POSE_STEPS, fit_focal: bool = True,
             focal: Optional[float] = None, max_error: float = MAX_LANDMARK_ERROR, photo=None) -> PoseFit:
    """Fit pose, focal length and expression of a fixed identity to 68 landmarks.

    Args:
        model: the :class:`~facefit.morphable.MorphableModel` (with landmarks).
        shape_coeffs: (Ks,) identity coefficients (the regressor's neutral shape; fixed).
        landmarks68: (68, 2) detected landmarks, pixels.
        image_size: (H, W) of the photo.
        steps: optimisation steps.
        fit_focal: also fit the focal length (else ``focal``, default a 15 degree field of view).
        max_error: fits with a larger mean landmark error (fraction of the face scale) fail.
        photo: (H, W, 3) uint8, kept in the result for the overlay sheet.
    Returns:
        :class:`PoseFit`.
    Raises:
        PoseFitError: the fit failed (bad landmarks, or a landmark error over ``max_error``).
    """
    from facefit.fitting import fit_landmarks

    if landmarks68 is None:
        raise PoseFitError("pose fit needs 68 landmarks (use the dlib detector)")
    lm = torch.as_tensor(np.asarray(landmarks68, np.float32))[None]
    H, W = (int(x) for x in image_size)
    shape = torch.as_tensor(np.asarray(shape_coeffs, np.float32))[None]
    try:
        fit = fit_landmarks(model, lm, (H, W), fit_shape=False, fit_expression=True, init=shape, steps=steps,
                            fit_focal=fit_focal, focal=focal, expr_prior=EXPR_PRIOR, return_verts=False, threads=1)
    except FacefitError as e:
        raise PoseFitError(f"pose fit failed: {e}") from None
    vals = torch.cat([fit.yaw, fit.pitch, fit.roll, fit.t[0], fit.focal, fit.expr_coeffs[0]])
    if not bool(torch.isfinite(vals).all()):
        raise PoseFitError("pose fit failed: non-finite result")
    from .solver import LandmarkRig

    rig = LandmarkRig(model, shape_coeffs)
    f, cx, cy = float(fit.focal[0]), float(fit.cx[0]), float(fit.cy[0])
    sol = rig.solve(np.asarray(landmarks68, np.float64), fit.R_cam[0].double().numpy(), fit.t[0].double().numpy(),
                    fit.expr_coeffs[0].double().numpy(), f, cx, cy, iters=REFINE_ITERS)
    if not (np.isfinite(sol.R_cam).all() and np.isfinite(sol.t).all() and np.isfinite(sol.beta).all()):
        raise PoseFitError("pose fit failed: non-finite result")
    out = pose_from_solution(sol, f, cx, cy, (H, W), list(model.expr_names), landmarks68, photo)
    if out.landmark_error > max_error:
        raise PoseFitError(f"pose fit failed: the fitted landmarks are {out.landmark_error_px:.1f} px from the detected "
                           f"ones ({out.landmark_error:.0%} of the face size, limit {max_error:.0%})")
    return out


def pose_from_solution(sol, focal: float, cx: float, cy: float, image_size, names, landmarks68,
                       photo=None) -> PoseFit:
    """A :class:`PoseFit` from a :class:`facefit.avatar.solver.SolveResult` and its camera."""
    from facefit.fitting import matrix_to_euler

    R_head = sol.R_cam * np.array([1.0, -1.0, -1.0])[:, None]
    yaw, pitch, roll = (float(a[0]) for a in matrix_to_euler(torch.as_tensor(R_head)[None]))
    q = np.asarray(landmarks68, np.float64)
    scale = float(np.sqrt(((q - q.mean(0)) ** 2).sum(1).mean()))
    return PoseFit(yaw, pitch, roll, np.asarray(sol.t, np.float64), float(focal), float(cx), float(cy),
                   tuple(int(x) for x in image_size), np.asarray(sol.beta, np.float32), list(names),
                   float(sol.residuals_px.mean()), scale, q, photo)


def posed_vertices(model, shape_coeffs, pose: PoseFit, camera_space: bool = True) -> np.ndarray:
    """(V, 3) the identity with the photo's expression, in camera space (or model space), mm."""
    with torch.no_grad():
        v, _ = model.decode(torch.as_tensor(np.asarray(shape_coeffs, np.float32))[None], None,
                            torch.as_tensor(np.asarray(pose.expr_coeffs, np.float32))[None])
    v = v[0].double().numpy()
    return pose.to_camera(v) if camera_space else v


def posed_mesh(model, neutral: FaceMesh, shape_coeffs, pose: PoseFit) -> FaceMesh:
    """The identity with the photo's expression, placed in the photo's camera.

    Vertices are in the photo's camera space (OpenCV: x right, y down, z forward, mm), so
    ``u = f x / z + cx``, ``v = f y / z + cy`` (``pose.focal``, ``pose.cx``, ``pose.cy``) is
    the pixel of each vertex. Colours, UVs and texture are those of ``neutral``; the pose
    record is in ``meta["pose"]``.
    """
    verts = posed_vertices(model, shape_coeffs, pose)
    meta = dict(neutral.meta)
    meta["pose"] = pose.record()
    meta["frame"] = "camera of the photo (OpenCV: x right, y down, z forward), mm"
    return FaceMesh(verts.astype(np.float32), neutral.triangles, colors=neutral.colors, uv=neutral.uv,
                    uv_triangles=neutral.uv_triangles, texture=neutral.texture, meta=meta)


def attach_pose(model, recon, image: np.ndarray, steps: int = POSE_STEPS) -> None:
    """Fit the pose of ``recon`` (a :class:`~facefit.reconstruction.Reconstruction`) in
    ``image`` and set ``recon.pose``; a failed fit sets ``recon.pose = None`` and
    ``recon.extra["pose_error"]`` (one line) instead of raising. With morph targets
    (``--blendshapes``) the photo's expression becomes the GLB's default morph weights."""
    import time

    t0 = time.perf_counter()
    try:
        recon.pose = fit_pose(model, recon.shape_coeffs, recon.landmarks68, image.shape[:2], steps=steps, photo=image)
        recon.extra.pop("pose_error", None)
        if getattr(recon, "morph_targets", None) is not None:  # --blendshapes: rest pose = the photo's expression
            recon.morph_weights = recon.morph_targets.weights_from_expr(recon.pose.expr_coeffs)
    except PoseFitError as e:
        recon.pose = None
        recon.extra["pose_error"] = str(e)
    recon.timing["pose"] = time.perf_counter() - t0
