"""Fitting a morphable model to 68 detected landmarks (pose, expression, shape).

This is the landmark fitting of Genova et al. 2018, appendix A.1, made reusable: given the
68 dlib/iBUG landmarks of one or more photos, find for each photo a head pose (rotation,
translation, optionally the focal length), expression coefficients and optionally identity
shape coefficients of any :class:`~facefit.morphable.MorphableModel` that has landmark
vertices, such that the model's projected landmark vertices fall on the detected points.

Model (conventions of ``docs/conventions.md``)::

    verts  = mean + shape_basis (alpha * shape_std) + expr_basis (beta * expr_std)   (model mm)
    X_cam  = R_cam verts + t,   R_cam = diag(1, -1, -1) R_head                       (camera mm)
    (u, v) = (f x / z + cx, f y / z + cy)                                           (pixels)

Objective, per photo (photos in a batch are independent problems solved together)::

    sum_j w_j rho(|p_j - q_j| / s) / (2 sigma^2) + shape_prior/2 |alpha|^2
                                                 + expr_prior/2 |beta / sigma_e|^2

* ``q_j`` detected landmark, ``p_j`` projected landmark vertex, ``s`` the landmarks' RMS
  distance from their centroid (so ``sigma`` and the robust scale are fractions of the face
  size and the same settings work for any image resolution).
* ``rho`` is Geman-McClure, ``rho(r) = r^2 c^2 / (r^2 + c^2)``: quadratic for small residuals
  and bounded for large ones, so a few wrong landmarks cannot drag the fit. ``c`` is annealed
  from 1 (almost least squares, for a wide basin) to ``robust_scale``.
* Priors: identity coefficients are N(0, 1) by construction; expression coefficients get
  N(0, sigma_e^2) (blend-shape weights, e.g. ICT-FaceKit, are also kept in [0, 1]).
* Jaw line (landmarks 0-16): a detector puts them on the visible face outline, which for a
  turned face is the silhouette of the far cheek, not a fixed mesh point. With
  ``contour="silhouette"`` each jaw landmark except the chin (7-9) has a line of candidate
  vertices running from its landmark vertex horizontally inwards towards the nose (built once
  per model from the mean shape); every few steps the candidate that projects furthest
  outwards along the image direction of the model's x axis becomes that landmark's vertex
  (Zhu et al. 2015 "landmark marching"). On the near side this is the landmark vertex
  itself. Jaw landmarks also get a lower weight (``contour_weight``).

Optimisation: a closed-form start (affine camera fitted by iteratively reweighted least
squares, projected to a scaled rotation) followed by Adam on all parameters in PyTorch, only
on the few hundred vertices that can be landmarks (the full mesh is decoded once at the end).
Rotation is a rotation-vector update of the starting rotation (no gimbal problems during the
fit); the result reports yaw, pitch, roll in facefit's convention.

Entry points: :func:`fit_landmarks` -> :class:`FitResult`; :func:`project_fit`.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from facefit.errors import FacefitError
from facefit.morphable import MorphableModel
from facefit.render.camera import FRONTAL_FLIP, Camera, euler_to_matrix, project

__all__ = [
    "FitResult",
    "fit_landmarks",
    "project_fit",
    "contour_candidates",
    "matrix_to_euler",
    "rotation_vector_to_matrix",
    "cpu_threads",
    "DEFAULT_FOV_DEG",
    "MIN_LANDMARK_SPREAD_PX",
    "MIN_LANDMARK_ASPECT",
    "JAW",
    "CHIN",
]

#: Default field of view (degrees, over the shorter image side) when the focal length is
#: neither given nor fitted; the renderer's default too (portrait distances).
DEFAULT_FOV_DEG = 15.0
#: Jaw-line landmark indices (dlib/iBUG 68-point order).
JAW = tuple(range(17))
#: Chin landmarks, kept on their fixed vertices.
CHIN = (7, 8, 9)


# ------------------------------------------------------------------------------- result


@dataclass
class FitResult:
    """Result of :func:`fit_landmarks` for a batch of B photos (tensors on the input device).

    Attributes:
        shape_coeffs: (B, Ks) identity coefficients (zeros when the shape was not fitted and
            no initial shape was given; Ks = the number of components used).
        expr_coeffs: (B, Ke) expression coefficients (Ke = 0 when the model has none).
        yaw, pitch, roll: (B,) head pose in degrees (``R_head = Rz(roll) Rx(pitch) Ry(yaw)``).
        t: (B, 3) translation in mm (``X_cam = diag(1,-1,-1) R_head X + t``).
        focal: (B,) focal length in pixels.
        cx, cy: (B,) principal point in pixels.
        image_sizes: (B, 2) int64 (H, W) of each photo.
        landmark_error_px: (B,) mean distance between the detected and projected landmarks
            (with the final jaw correspondences), pixels.
        landmark_residuals: (B, 68) per-landmark distance in pixels.
        face_scale_px: (B,) RMS distance of the detected landmarks from their centroid
            (divide errors by it for a resolution-independent measure).
        landmark_vertices: (B, 68) int64 mesh vertex used for each landmark.
        verts: (B, V, 3) fitted model-space vertices (shape + expression), mm.
        loss: (B,) final objective value.
    """

    shape_coeffs: torch.Tensor
    expr_coeffs: torch.Tensor
    yaw: torch.Tensor
    pitch: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    image_sizes: torch.Tensor
    landmark_error_px: torch.Tensor
    landmark_residuals: torch.Tensor
    face_scale_px: torch.Tensor
    landmark_vertices: torch.Tensor
    verts: torch.Tensor
    loss: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.t.shape[0])

    @property
    def R(self) -> torch.Tensor:
        """(B, 3, 3) head rotation ``R_head`` (pass as ``R=`` to :func:`facefit.render.render`)."""
        return euler_to_matrix(self.yaw, self.pitch, self.roll).to(self.t)

    @property
    def R_cam(self) -> torch.Tensor:
        """(B, 3, 3) full model->camera rotation ``diag(1,-1,-1) R_head``."""
        return self.R * self.t.new_tensor(FRONTAL_FLIP).view(1, 3, 1)

    @property
    def pose(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(yaw, pitch, roll), each (B,) degrees."""
        return self.yaw, self.pitch, self.roll

    @property
    def landmark_error(self) -> torch.Tensor:
        """(B,) mean landmark error divided by the face scale (resolution independent)."""
        return self.landmark_error_px / self.face_scale_px.clamp_min(1e-6)

    def camera(self, i: int = 0) -> Camera:
        """The pinhole :class:`~facefit.render.Camera` of photo ``i``."""
        H, W = (int(x) for x in self.image_sizes[i])
        return Camera((H, W), float(self.focal[i]), float(self.cx[i]), float(self.cy[i]))

    def __getitem__(self, idx) -> "FitResult":
        """The results of a subset of the photos (int, slice, index or bool tensor)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return FitResult(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, *args, **kwargs) -> "FitResult":
        """Move the float tensors (``.to(device)`` / ``.to(dtype)``), int tensors keep their dtype."""
        out = {}
        for f in fields(self):
            x = getattr(self, f.name)
            if x.is_floating_point():
                out[f.name] = x.to(*args, **kwargs)
            else:
                dev = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
                out[f.name] = x.to(dev) if dev is not None else x
        return FitResult(**out)

    def detach(self) -> "FitResult":
        return FitResult(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


def project_fit(result: FitResult, verts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Screen-space vertices of a fit (for the rasteriser, colour sampling, landmarks).

    Args:
        result: a :class:`FitResult`.
        verts: (B, V, 3) model-space vertices to place with the fitted cameras (default
            ``result.verts``), e.g. the same shape with another expression.
    Returns:
        (B, V, 3) ``(u, v, z)``: pixels and camera depth in mm.
    """
    verts = result.verts if verts is None else verts
    cam = torch.matmul(verts, result.R_cam.to(verts).transpose(-1, -2)) + result.t.to(verts).unsqueeze(1)
    return project(cam, result.focal.to(verts), result.cx.to(verts), result.cy.to(verts))


# ------------------------------------------------------------------------------- rotations


def rotation_vector_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable (also at 0).

    Args:
        w: (B, 3) rotation vectors (axis * angle in radians).
    Returns:
        (B, 3, 3) rotation matrices.
    """
    theta2 = (w * w).sum(-1, keepdim=True).unsqueeze(-1)  # (B, 1, 1)
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    # sin(t)/t and (1 - cos t)/t^2 with Taylor expansions near 0
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(K)
    return eye + a * K + b * torch.matmul(K, K)


def matrix_to_euler(R_head: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`facefit.render.euler_to_matrix`.

    Args:
        R_head: (B, 3, 3) head rotation ``Rz(roll) Rx(pitch) Ry(yaw)``.
    Returns:
        yaw, pitch, roll: (B,) degrees (pitch in [-90, 90]).
    """
    pitch = torch.asin(R_head[:, 2, 1].clamp(-1.0, 1.0))
    yaw = torch.atan2(-R_head[:, 2, 0], R_head[:, 2, 2])
    roll = torch.atan2(-R_head[:, 0, 1], R_head[:, 1, 1])
    return torch.rad2deg(yaw), torch.rad2deg(pitch), torch.rad2deg(roll)


def _flip(R: torch.Tensor) -> torch.Tensor:
    """diag(1, -1, -1) @ R (its own inverse): head <-> camera rotation."""
    return R * R.new_tensor(FRONTAL_FLIP).view(1, 3, 1)


# ------------------------------------------------------------------------------- contour

_CONTOUR_CACHE: dict[tuple, list[np.ndarray]] = {}
_CONTOUR_LOCK = threading.Lock()


def contour_candidates(
    model: MorphableModel, band_mm: float = 2.5, inner_fraction: float = 0.3, behind_mm: float = 3.0
) -> list[np.ndarray]:
    """Candidate silhouette vertices for the 17 jaw landmarks (built from the mean shape).

    For jaw landmark j (except the chin 7-9, which keep their vertex) with landmark vertex
    P: the face-region vertices on the same side of the midline, within ``band_mm`` of P's
    height, no further out than P, at least ``inner_fraction * |P.x|`` from the midline
    (excludes the nose) and at most ``behind_mm`` behind P: a horizontal line from the jaw
    towards the front of the face.

    Args:
        model: a model with 68 landmarks.
    Returns:
        17 int64 arrays of vertex indices; the landmark vertex itself is always first.
    Raises:
        FacefitError: the model has no landmarks.
    """
    if model.landmarks is None:
        raise FacefitError(f"model '{model.name}' has no 68-point landmark vertices to fit")
    key = (model.content_hash, band_mm, inner_fraction, behind_mm)
    with _CONTOUR_LOCK:
        hit = _CONTOUR_CACHE.get(key)
    if hit is not None:
        return hit
    pts = model.mean_shape.astype(np.float64)
    face = model.face_mask
    lms = model.landmarks
    centre_x = float(pts[lms[27:36], 0].mean())  # nose bridge / tip
    out = []
    for j in JAW:
        lv = int(lms[j])
        if j in CHIN:
            out.append(np.array([lv], np.int64))
            continue
        P = pts[lv]
        side = 1.0 if P[0] >= centre_x else -1.0
        dx = side * (pts[:, 0] - centre_x)
        reach = side * (P[0] - centre_x)
        sel = (
            face
            & (np.abs(pts[:, 1] - P[1]) <= band_mm)
            & (dx <= reach + 1e-6)
            & (dx >= inner_fraction * reach)
            & (pts[:, 2] >= P[2] - behind_mm)
        )
        idx = np.nonzero(sel)[0]
        idx = idx[idx != lv]
        out.append(np.concatenate([[lv], idx]).astype(np.int64))
    with _CONTOUR_LOCK:
        _CONTOUR_CACHE[key] = out
    return out


# ------------------------------------------------------------------------------- fitting


def _as_batch_landmarks(landmarks68) -> Tuple[torch.Tensor, bool]:
    lm = landmarks68 if isinstance(landmarks68, torch.Tensor) else torch.as_tensor(np.asarray(landmarks68))
    single = lm.dim() == 2
    if single:
        lm = lm.unsqueeze(0)
    if lm.dim() != 3 or lm.shape[1:] != (68, 2):
        raise FacefitError(f"landmarks must be (68, 2) or (B, 68, 2), got {tuple(lm.shape)}")
    if not lm.is_floating_point():
        lm = lm.to(torch.get_default_dtype())
    if not bool(torch.isfinite(lm).all()):
        bad = torch.nonzero(~torch.isfinite(lm).all(-1).all(-1)).flatten().tolist()
        which = "" if single else f" (photo {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})"
        raise FacefitError(f"landmarks contain non-finite values (NaN or inf){which}")
    _check_spread(lm, single)
    return lm, single


#: Smallest RMS distance (pixels) of 68 landmarks from their centroid that :func:`fit_landmarks`
#: accepts; a detected face's is about a third of its width (>= ~10 px for any detector).
MIN_LANDMARK_SPREAD_PX = 1.0
#: Smallest ratio of the landmarks' minor to major RMS spread (principal axes); real faces,
#: also in profile, are ~0.5-1; collinear points give 0.
MIN_LANDMARK_ASPECT = 0.05


def _check_spread(lm: torch.Tensor, single: bool) -> None:
    """Refuse degenerate landmark sets: (nearly) one point, or (nearly) on one line.

    Args:
        lm: (B, 68, 2) finite landmarks.
        single: the caller passed one (68, 2) set (error messages then name no photo).
    Raises:
        FacefitError: the landmarks of some photo have an RMS spread below
            :data:`MIN_LANDMARK_SPREAD_PX` or a minor/major axis ratio below
            :data:`MIN_LANDMARK_ASPECT`.
    """
    x = lm.double()
    xc = x - x.mean(1, keepdim=True)
    cov = xc.transpose(1, 2) @ xc / x.shape[1]  # (B, 2, 2)
    ev = torch.linalg.eigvalsh(cov).clamp_min(0.0)  # ascending
    rms = ev.sum(-1).sqrt()
    aspect = (ev[:, 0] / ev[:, 1].clamp_min(1e-300)).sqrt()
    bad = (rms < MIN_LANDMARK_SPREAD_PX) | (aspect < MIN_LANDMARK_ASPECT)
    if not bool(bad.any()):
        return
    i = int(torch.nonzero(bad)[0, 0])  # name the first bad photo
    who = "" if single else f" of photo {i}"
    if float(rms[i]) < MIN_LANDMARK_SPREAD_PX:
        raise FacefitError(
            f"landmarks{who} are degenerate: the 68 points lie within {float(rms[i]):.3g} px (RMS) of "
            f"their centroid (need >= {MIN_LANDMARK_SPREAD_PX:g} px); pass detected face landmarks in pixels"
        )
    if float(aspect[i]) < MIN_LANDMARK_ASPECT:
        raise FacefitError(
            f"landmarks{who} are degenerate: the 68 points lie (nearly) on one line "
            f"(minor/major spread {float(aspect[i]):.3g}, need >= {MIN_LANDMARK_ASPECT:g})"
        )


def _image_sizes(image_size, B: int, device) -> torch.Tensor:
    s = torch.as_tensor(np.asarray(image_size), dtype=torch.int64).reshape(-1, 2) if not isinstance(
        image_size, torch.Tensor
    ) else image_size.to(torch.int64).reshape(-1, 2)
    if s.shape[0] == 1:
        s = s.expand(B, 2)
    if s.shape != (B, 2):
        raise FacefitError(f"image_size must be (H, W) or ({B}, 2), got {tuple(s.shape)}")
    if bool((s <= 0).any()):
        raise FacefitError("image sizes must be positive")
    return s.to(device).clone()


def _closed_form_pose(
    X: torch.Tensor, x: torch.Tensor, w: torch.Tensor, focal: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
    iters: int = 4,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scaled-orthographic pose from 3D-2D correspondences by robust (IRLS) least squares.

    Args:
        X: (B, N, 3) model points; x: (B, N, 2) image points; w: (B, N) weights.
        focal, cx, cy: (B,).
    Returns:
        R_cam (B, 3, 3), t (B, 3) for a perspective camera placing the points' centroid at
        the depth the orthographic scale implies.
    """
    B, N, _ = X.shape
    w_eff = w.clone()
    for it in range(iters):
        wn = w_eff / w_eff.sum(1, keepdim=True).clamp_min(1e-12)
        Xc = (wn.unsqueeze(-1) * X).sum(1, keepdim=True)
        Xh = torch.cat([X - Xc, torch.ones_like(X[..., :1])], -1)  # (B, N, 4)
        Mtx = torch.einsum("bn,bni,bnj->bij", w_eff, Xh, Xh) + 1e-6 * torch.eye(4, dtype=X.dtype, device=X.device)
        rhs = torch.einsum("bn,bni,bnk->bik", w_eff, Xh, x)  # (B, 4, 2)
        A = torch.linalg.solve(Mtx, rhs).transpose(1, 2)  # (B, 2, 4)
        r = (torch.einsum("bki,bni->bnk", A, Xh) - x).norm(dim=-1)  # (B, N)
        med = r.median(dim=1, keepdim=True).values.clamp_min(1e-3)
        w_eff = w / (1.0 + (r / (2.5 * med)) ** 2)
    M = A[:, :, :3]
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)  # (B,2,2), (B,2), (B,2,3)
    rows = torch.matmul(U, Vh)  # (B, 2, 3) orthonormal rows
    r3 = torch.cross(rows[:, 0], rows[:, 1], dim=-1)
    R_cam = torch.cat([rows, r3.unsqueeze(1)], 1)
    s = S.mean(-1)  # px per mm
    zc = focal / s.clamp_min(1e-9)
    off = A[:, :, 3]  # image position of the centroid
    centre_cam = torch.stack([(off[:, 0] - cx) * zc / focal, (off[:, 1] - cy) * zc / focal, zc], -1)
    t = centre_cam - torch.matmul(R_cam, Xc.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return R_cam, t


def _init_get(init, key: str):
    if init is None:
        return None
    if isinstance(init, FitResult):
        return getattr(init, key, None)
    if isinstance(init, Mapping):
        return init.get(key)
    return None


def fit_landmarks(
    model: MorphableModel,
    landmarks68,
    image_size,
    fit_shape: bool = True,
    fit_expression: bool = True,
    n_shape: Optional[int] = None,
    n_expr: Optional[int] = None,
    init: Union[None, FitResult, Mapping[str, Any], torch.Tensor, np.ndarray] = None,
    steps: int = 200,
    *,
    focal: Union[None, float, torch.Tensor] = None,
    fov_deg: float = DEFAULT_FOV_DEG,
    fit_focal: bool = False,
    landmark_weights=None,
    contour: str = "silhouette",
    contour_weight: float = 0.5,
    landmark_sigma: float = 0.05,
    robust_scale: float = 0.15,
    shape_prior: float = 1.0,
    expr_prior: float = 1.0,
    expr_sigma: Optional[float] = None,
    focal_prior: float = 1.0,
    lr: float = 1.0,
    contour_every: int = 10,
    device: Union[None, str, torch.device] = None,
    return_verts: bool = True,
    threads: Optional[int] = 1,
) -> FitResult:
    """Fit pose, expression and (optionally) identity shape to 68 landmarks per photo.

    Args:
        model: a :class:`MorphableModel` with 68 landmark vertices.
        landmarks68: (68, 2) or (B, 68, 2) detected points (u, v) in continuous pixel
            coordinates, dlib/iBUG order (numpy or tensor).
        image_size: (H, W) of all photos, or (B, 2) per photo.
        fit_shape: optimise identity coefficients (else they stay at the initial value).
        fit_expression: optimise expression coefficients (else they stay at the initial
            value, zeros by default).
        n_shape: number of identity components to use (default ``min(40, Ks)``; landmarks
            hardly constrain more). With an initial shape that has more components, those
            are kept (fixed beyond ``n_shape``).
        n_expr: number of expression components to use (default all).
        init: warm start: a :class:`FitResult` (every parameter), a mapping with any of
            ``shape_coeffs``, ``expr_coeffs``, ``yaw``/``pitch``/``roll``, ``t``, ``focal``,
            or a (B, k) tensor of initial shape coefficients (e.g. a regressor's neutral
            shape prediction). Without a pose, the pose starts from a closed-form solution.
        steps: Adam iterations (the first fifth moves only the pose).
        focal: focal length in pixels (float or (B,)); default from ``fov_deg``.
        fov_deg: field of view over the shorter image side used when ``focal`` is None.
        fit_focal: also optimise the focal length (log-normal prior around the start,
            weight ``focal_prior``); landmarks constrain it weakly.
        landmark_weights: (68,) or (B, 68) non-negative weights (0 = ignore a landmark);
            multiplied with ``contour_weight`` on the jaw line.
        contour: ``"silhouette"`` (jaw landmarks slide along the contour candidates, see
            the module docstring) or ``"fixed"`` (fixed landmark vertices).
        contour_weight: weight of the 17 jaw landmarks relative to the others.
        landmark_sigma: landmark noise, as a fraction of the face scale (RMS distance of
            the landmarks from their centroid).
        robust_scale: final Geman-McClure scale (fraction of the face scale): residuals
            well beyond it stop pulling.
        shape_prior, expr_prior: weights of the Gaussian priors (1 = Bayesian balance with
            ``landmark_sigma``).
        expr_sigma: prior std of expression coefficients (default 0.5 for blend-shape
            models, 1 for PCA expression models).
        lr: multiplier of all learning rates.
        contour_every: steps between jaw-correspondence updates.
        device: where to run (default: the landmarks' device).
        return_verts: decode the full fitted meshes into ``FitResult.verts`` (else an
            empty (B, 0, 3) tensor; saves memory for big batches).
        threads: on CPU, torch threads to use while fitting (restored afterwards). The
            fit is hundreds of tiny operations, for which extra threads only add overhead
            (tens of times slower on a busy machine); None leaves torch's setting alone.
    Returns:
        :class:`FitResult` (batch dimension kept even for a single (68, 2) input).
    Raises:
        FacefitError: the model has no landmarks, or bad input shapes / values: non-finite
            landmarks, degenerate ones (all 68 within :data:`MIN_LANDMARK_SPREAD_PX` of their
            centroid, or on one line), non-finite or negative weights or focal length.
    """
    kwargs = dict(locals())
    kwargs.pop("threads")
    dev = torch.device(device) if device is not None else (
        landmarks68.device if isinstance(landmarks68, torch.Tensor) else torch.device("cpu")
    )
    with cpu_threads(threads if dev.type == "cpu" else None):
        return _fit_landmarks(**kwargs)


@contextmanager
def cpu_threads(n: Optional[int]):
    """Context manager running torch's CPU ops with ``n`` threads (None: unchanged)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _fit_landmarks(
    model, landmarks68, image_size, fit_shape, fit_expression, n_shape, n_expr, init, steps, *, focal, fov_deg,
    fit_focal, landmark_weights, contour, contour_weight, landmark_sigma, robust_scale, shape_prior, expr_prior,
    expr_sigma, focal_prior, lr, contour_every, device, return_verts,
) -> FitResult:
    if model.landmarks is None:
        raise FacefitError(f"model '{model.name}' has no 68-point landmark vertices to fit")
    if contour not in ("silhouette", "fixed"):
        raise FacefitError(f"contour must be 'silhouette' or 'fixed', got {contour!r}")
    if steps < 0:
        raise FacefitError(f"steps must be >= 0, got {steps}")
    lm, _ = _as_batch_landmarks(landmarks68)
    dev = torch.device(device) if device is not None else lm.device
    dt = torch.float32 if lm.dtype not in (torch.float32, torch.float64) else lm.dtype
    lm = lm.to(dev, dt)
    B = lm.shape[0]
    sizes = _image_sizes(image_size, B, dev)
    H, W = sizes[:, 0].to(dt), sizes[:, 1].to(dt)
    cx, cy = W / 2.0, H / 2.0

    # ---- parameter counts and initial values
    ks_total, ke_total = model.n_shape, model.n_expr
    init_shape = init if isinstance(init, (torch.Tensor, np.ndarray)) else _init_get(init, "shape_coeffs")
    ks = min(40, ks_total) if n_shape is None else max(0, min(int(n_shape), ks_total))
    k_used = ks
    shape_init = lm.new_zeros(B, ks)
    if init_shape is not None:
        s0 = torch.as_tensor(init_shape).to(dev, dt)
        if s0.dim() == 1:
            s0 = s0.unsqueeze(0)
        if s0.dim() == 2 and s0.shape[0] == 1 and B > 1:
            s0 = s0.expand(B, -1)
        if s0.dim() != 2 or s0.shape[0] != B or s0.shape[1] > ks_total:
            raise FacefitError(f"initial shape coefficients must be (B={B}, k<={ks_total}), got {tuple(s0.shape)}")
        k_used = max(ks, s0.shape[1])
        shape_init = lm.new_zeros(B, k_used)
        shape_init[:, : s0.shape[1]] = s0
    # the first ks identity coefficients are fitted, any further initial ones stay fixed
    shape_fixed = shape_init[:, ks:]
    shape_init = shape_init[:, :ks]
    ke = ke_total if n_expr is None else max(0, min(int(n_expr), ke_total))
    expr0 = _init_get(init, "expr_coeffs")
    expr_init = lm.new_zeros(B, ke)
    if expr0 is not None and ke:
        e0 = torch.as_tensor(expr0).to(dev, dt).reshape(B, -1)[:, :ke]
        expr_init[:, : e0.shape[1]] = e0
    blend = model.meta.get("expr_model_kind") == "blendshape"
    if expr_sigma is None:
        expr_sigma = 0.5 if blend else 1.0

    if focal is None:
        f0 = _init_get(init, "focal")
        if f0 is None:
            short = torch.minimum(H, W)
            f0 = 0.5 * short / math.tan(math.radians(fov_deg) / 2.0)
        focal = f0
    focal0 = torch.as_tensor(focal).to(dev, dt).reshape(-1).expand(B).clone()
    if not bool(torch.isfinite(focal0).all()) or bool((focal0 <= 0).any()):
        raise FacefitError("focal length must be a positive finite number")

    # ---- landmark weights
    w_lm = lm.new_ones(B, 68)
    if landmark_weights is not None:
        lw = torch.as_tensor(np.asarray(landmark_weights) if not isinstance(landmark_weights, torch.Tensor) else landmark_weights)
        w_lm = w_lm * lw.to(dev, dt).reshape(-1, 68)
    w_lm[:, list(JAW)] *= float(contour_weight)
    if not bool(torch.isfinite(w_lm).all()) or bool((w_lm < 0).any()):
        raise FacefitError("landmark weights must be finite and non-negative")
    if bool(((w_lm > 0).sum(1) < 6).any()):
        raise FacefitError("landmark weights leave fewer than 6 landmarks with a positive weight in some photo; "
                           "a pose cannot be fitted to that")

    # ---- the vertex subset that can be a landmark
    lms = np.asarray(model.landmarks)
    if contour == "silhouette":
        cands = contour_candidates(model)
    else:
        cands = [np.array([lms[j]], np.int64) for j in JAW]
    sub = np.unique(np.concatenate([lms] + cands))
    pos_in_sub = {int(v): i for i, v in enumerate(sub)}
    lm_sub = torch.tensor([pos_in_sub[int(v)] for v in lms], dtype=torch.int64, device=dev)
    cmax = max(len(c) for c in cands)
    cand_idx = torch.zeros(17, cmax, dtype=torch.int64, device=dev)
    cand_ok = torch.zeros(17, cmax, dtype=torch.bool, device=dev)
    for j, c in enumerate(cands):
        cand_idx[j, : len(c)] = torch.tensor([pos_in_sub[int(v)] for v in c], device=dev)
        cand_ok[j, : len(c)] = True
    side = torch.tensor([-1.0] * 8 + [0.0] + [1.0] * 8, dtype=dt, device=dev)  # image dir of model x
    sub_t = torch.as_tensor(sub, device=dev)
    mean_sub = torch.as_tensor(np.asarray(model.mean_shape)[sub], dtype=dt, device=dev)  # (S, 3)
    shape_rows = torch.as_tensor(
        np.ascontiguousarray(
            (np.asarray(model.shape_basis)[sub][:, :, :k_used] * np.asarray(model.shape_std)[:k_used]).reshape(-1, k_used).T
        ),
        dtype=dt, device=dev,
    )  # (k_used, 3S)
    expr_rows = torch.as_tensor(
        np.ascontiguousarray((np.asarray(model.expr_basis)[sub][:, :, :ke] * np.asarray(model.expr_std)[:ke]).reshape(-1, ke).T),
        dtype=dt, device=dev,
    )  # (ke, 3S)
    S = len(sub)

    def decode_sub(alpha, beta):
        out = mean_sub.reshape(1, -1).expand(B, -1)
        if k_used:
            out = out + torch.cat([alpha, shape_fixed], 1) @ shape_rows
        if ke:
            out = out + beta @ expr_rows
        return out.view(B, S, 3)

    # ---- face scale for normalisation
    centred = lm - lm.mean(1, keepdim=True)
    scale = centred.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-3)  # (B,)

    # ---- initial pose
    yaw0, pitch0, roll0 = (_init_get(init, k) for k in ("yaw", "pitch", "roll"))
    t0 = _init_get(init, "t")
    cur_lm_idx = lm_sub.unsqueeze(0).expand(B, 68).clone()  # (B, 68) index into the subset
    with torch.no_grad():
        X0 = decode_sub(shape_init, expr_init)
        if yaw0 is not None and t0 is not None:
            R_head0 = euler_to_matrix(torch.as_tensor(yaw0), torch.as_tensor(pitch0), torch.as_tensor(roll0)).to(dev, dt)
            R_cam0 = _flip(R_head0.expand(B, 3, 3))
            t_init = torch.as_tensor(t0).to(dev, dt).reshape(B, 3)
        else:
            # jaw points are unreliable correspondences before the contour is known
            w0 = w_lm.clone()
            w0[:, list(JAW)] *= 0.25
            R_cam0, t_init = _closed_form_pose(X0[:, lm_sub], lm, w0, focal0, cx, cy)

    # ---- parameters
    rotvec = torch.zeros(B, 3, dtype=dt, device=dev, requires_grad=True)
    # translation as (image-plane direction, log depth): similar step sizes for any distance
    tz0 = t_init[:, 2].clamp_min(1.0)
    txy = (t_init[:, :2] / tz0.unsqueeze(1)).clone().requires_grad_(True)
    logz = tz0.log().clone().requires_grad_(True)
    logf = focal0.log().clone().requires_grad_(fit_focal)
    alpha = shape_init.clone().requires_grad_(fit_shape and ks > 0)
    beta = expr_init.clone().requires_grad_(fit_expression and ke > 0)
    if blend:
        with torch.no_grad():
            beta.clamp_(0.0, 1.0)

    base_lr = 1.0 * lr
    f_mean = focal0.mean()
    groups = [
        {"params": [rotvec], "lr": 0.02 * base_lr},
        {"params": [txy], "lr": 1.0 / float(f_mean) * base_lr},
        {"params": [logz], "lr": 0.01 * base_lr},
    ]
    if fit_focal:
        groups.append({"params": [logf], "lr": 0.01 * base_lr})
    pose_groups = len(groups)
    if alpha.requires_grad:
        groups.append({"params": [alpha], "lr": 0.05 * base_lr})
    if beta.requires_grad:
        groups.append({"params": [beta], "lr": 0.03 * base_lr})
    opt = torch.optim.Adam(groups, betas=(0.8, 0.95))
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    rigid_steps = steps // 5
    anneal_steps = max(1, int(0.6 * steps))
    c_start = max(1.0, robust_scale)
    inv2s2 = 1.0 / (2.0 * landmark_sigma**2)
    jaw_t = torch.tensor(list(JAW), device=dev)

    def forward(alpha_, beta_):
        R_cam = torch.matmul(rotation_vector_to_matrix(rotvec), R_cam0)
        tz = logz.exp()
        t = torch.cat([txy * tz.unsqueeze(1), tz.unsqueeze(1)], 1)
        X = decode_sub(alpha_, beta_)
        Xc = torch.matmul(X, R_cam.transpose(1, 2)) + t.unsqueeze(1)
        f = logf.exp()
        z = Xc[..., 2].clamp_min(1e-3)
        uv = torch.stack([f.unsqueeze(1) * Xc[..., 0] / z + cx.unsqueeze(1), f.unsqueeze(1) * Xc[..., 1] / z + cy.unsqueeze(1)], -1)
        return uv, R_cam, t

    def update_contour(uv, R_cam):
        # image direction of the model's +x axis
        d = R_cam[:, :2, 0]
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)  # (B, 2)
        cu = uv[:, cand_idx.reshape(-1)].view(B, 17, cmax, 2)
        score = (cu * d.view(B, 1, 1, 2)).sum(-1) * side.view(1, 17, 1)
        score = torch.where(cand_ok.unsqueeze(0), score, torch.full_like(score, -float("inf")))
        best = score.argmax(-1)  # (B, 17)
        chosen = cand_idx.unsqueeze(0).expand(B, 17, cmax).gather(2, best.unsqueeze(-1)).squeeze(-1)
        cur_lm_idx[:, jaw_t] = chosen

    def objective(uv, c):
        p = uv.gather(1, cur_lm_idx.unsqueeze(-1).expand(B, 68, 2))
        r2 = ((p - lm) ** 2).sum(-1) / (scale.unsqueeze(1) ** 2)
        rho = r2 * c * c / (r2 + c * c)
        data = (w_lm * rho).sum(1) * inv2s2
        prior = 0.0
        if ks and alpha.requires_grad:
            prior = prior + 0.5 * shape_prior * (alpha**2).sum(1)
        if ke and beta.requires_grad:
            prior = prior + 0.5 * expr_prior * (beta**2).sum(1) / expr_sigma**2
        if fit_focal:
            prior = prior + 0.5 * focal_prior * ((logf - focal0.log()) / 0.3) ** 2
        return data + prior, p

    for step in range(steps):
        frac = min(1.0, step / anneal_steps)
        c = c_start * (robust_scale / c_start) ** frac
        lr_scale = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))
        rigid = step < rigid_steps
        for gi, g in enumerate(opt.param_groups):
            g["lr"] = g["initial_lr"] * lr_scale * (0.0 if (rigid and gi >= pose_groups) else 1.0)
        opt.zero_grad(set_to_none=True)
        uv, R_cam, _ = forward(alpha, beta)
        if contour == "silhouette" and step % contour_every == 0:
            with torch.no_grad():
                update_contour(uv.detach(), R_cam.detach())
        loss, _ = objective(uv, c)
        loss.sum().backward()
        opt.step()
        if blend and beta.requires_grad:
            with torch.no_grad():
                beta.clamp_(0.0, 1.0)

    with torch.no_grad():
        uv, R_cam, t = forward(alpha, beta)
        if contour == "silhouette":
            update_contour(uv, R_cam)
        loss, p = objective(uv, robust_scale)
        resid = (p - lm).norm(dim=-1)  # (B, 68)
        R_head = _flip(R_cam)
        yaw, pitch, roll = matrix_to_euler(R_head)
        alpha_f, beta_f = torch.cat([alpha.detach(), shape_fixed], 1), beta.detach()
        if return_verts:
            verts, _ = model.decode(alpha_f if k_used else None, expr_coeffs=beta_f if ke else None, batch_size=B, device=dev, dtype=dt)
        else:
            verts = lm.new_zeros(B, 0, 3)
        return FitResult(
            shape_coeffs=alpha_f.clone(),
            expr_coeffs=beta_f.clone(),
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            t=t,
            focal=logf.detach().exp(),
            cx=cx,
            cy=cy,
            image_sizes=sizes,
            landmark_error_px=resid.mean(1),
            landmark_residuals=resid,
            face_scale_px=scale,
            landmark_vertices=sub_t[cur_lm_idx],
            verts=verts,
            loss=loss,
        )
