"""Fast pose + expression refinement for a fixed identity (Gauss-Newton, numpy).

:func:`facefit.fitting.fit_landmarks` (Adam, PyTorch) finds pose, focal length and a first
expression from scratch; this solver refines rotation, translation and the expression
weights for a fixed identity and camera in a few Gauss-Newton iterations with analytic
Jacobians on the 68 landmarks (~1 ms per iteration), which is what video tracking needs
(warm start from the previous frame) and what lets the photo fit use a sparsity prior:

    E = sum_j w_j rho(|p_j - q_j| / s) / (2 sigma^2)
        + l1 sum_k beta_k + l2/2 |beta|^2 + temporal/2 |beta - beta_prev|^2,   0 <= beta <= 1

``p_j`` projected landmark vertex (jaw landmarks slide along the silhouette candidates of
:func:`facefit.fitting.contour_candidates`), ``q_j`` detected landmark, ``s`` face scale,
``rho`` Geman-McClure (by iteratively reweighted least squares). The L1 term (for
non-negative blend-shape weights it is linear) prefers few active blend shapes: many ICT
shapes move the 68 landmarks alike (a smile is also part stretch, dimple and cheek squint),
and the sparse answer is the one animators and ARKit rigs expect. Bounds are handled by a
projected Newton step (weights at a bound whose gradient pushes outwards are held).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["LandmarkRig", "SolveResult", "L1", "L2"]

#: default weight of the L1 (sparsity) prior on blend-shape weights (docs/pose.md)
L1 = 0.5
#: default weight of the L2 prior on blend-shape weights
L2 = 1.0
JAW = tuple(range(17))
#: per-landmark weights (dlib/iBUG order)
LANDMARK_WEIGHTS = np.ones(68)
#: prior multipliers of blend shapes the 68 landmarks barely see (name prefix -> factor):
#: gaze moves no landmark; a puffed cheek only the jaw line, which the detector puts on the
#: silhouette; without these a fit explains identity and jaw-line errors with them
PRIOR_SCALE = {"eyeLook": 10.0, "cheekPuff": 5.0}
CHIN = (7, 8, 9)


def _rodrigues(w: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(w))
    K = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if th < 1e-12:
        return np.eye(3) + K
    return np.eye(3) + np.sin(th) / th * K + (1 - np.cos(th)) / th**2 * (K @ K)


@dataclass
class SolveResult:
    """Result of :meth:`LandmarkRig.solve`.

    Attributes:
        R_cam: (3, 3) model -> camera rotation; t: (3,) mm; beta: (Ke,) expression weights.
        residuals_px: (68,) distances between fitted and detected landmarks.
        landmark_vertices: (68,) mesh vertex used for each landmark.
    """

    R_cam: np.ndarray
    t: np.ndarray
    beta: np.ndarray
    residuals_px: np.ndarray
    landmark_vertices: np.ndarray


class LandmarkRig:
    """The 68 landmark (and jaw-contour candidate) vertices of one identity, with the
    model's expression basis on them.

    Args:
        model: a :class:`~facefit.morphable.MorphableModel` with landmarks.
        shape_coeffs: (Ks,) identity coefficients (fixed).
    """

    def __init__(self, model, shape_coeffs):
        from facefit.fitting import contour_candidates

        lms = np.asarray(model.landmarks, np.int64)
        cands = contour_candidates(model)
        sub = np.unique(np.concatenate([lms] + list(cands)))
        pos = {int(v): i for i, v in enumerate(sub)}
        self.sub = sub
        self.lm_sub = np.array([pos[int(v)] for v in lms])
        self.cands = [np.array([pos[int(v)] for v in c]) for c in cands]
        a = np.zeros(model.n_shape)
        s = np.asarray(shape_coeffs, np.float64).reshape(-1)[: model.n_shape]
        a[: len(s)] = s
        sb = np.asarray(model.shape_basis)[sub].astype(np.float64)  # (S, 3, Ks)
        self.X0 = np.asarray(model.mean_shape)[sub].astype(np.float64) + sb @ (a * np.asarray(model.shape_std, np.float64))
        ke = model.n_expr
        self.E = (np.asarray(model.expr_basis)[sub].astype(np.float64) * np.asarray(model.expr_std, np.float64))  # (S,3,Ke)
        self.n_expr = ke
        self.blend = model.meta.get("expr_model_kind") == "blendshape"
        self.names = list(model.expr_names)
        self.prior_scale = np.array([next((f for p, f in PRIOR_SCALE.items() if n.startswith(p)), 1.0)
                                     for n in self.names]) if ke else np.zeros(0)

    def solve(self, landmarks68, R_cam, t, beta, focal: float, cx: float, cy: float, *, iters: int = 8,
              beta_prev: Optional[np.ndarray] = None, l1: float = L1, l2: float = L2, temporal: float = 0.0,
              sigma: float = 0.05, robust_scale: float = 0.15, contour_weight: float = 0.5,
              fit_pose: bool = True, contour_every: int = 1, landmark_weights=None) -> SolveResult:
        """Refine pose and expression for 68 landmarks (warm start from ``R_cam, t, beta``).

        Args:
            landmarks68: (68, 2) pixels.
            R_cam: (3, 3) start rotation; t: (3,) start translation (mm); beta: (Ke,) start weights.
            focal, cx, cy: the camera (pixels; fixed).
            iters: Gauss-Newton iterations.
            beta_prev: (Ke,) weights the temporal prior pulls towards (e.g. the previous frame).
            l1, l2, temporal: prior weights (see the module docstring).
            sigma, robust_scale: landmark noise and Geman-McClure scale, fractions of the face scale.
            contour_weight: weight of the jaw-line landmarks.
            fit_pose: also refine rotation and translation (else only the weights).
            contour_every: iterations between updates of the jaw-line correspondences.
            landmark_weights: (68,) per-landmark weights (default :data:`LANDMARK_WEIGHTS`).
        Returns:
            :class:`SolveResult`.
        """
        q = np.asarray(landmarks68, np.float64)
        s = float(np.sqrt(((q - q.mean(0)) ** 2).sum(1).mean())) or 1.0
        R = np.asarray(R_cam, np.float64).copy()
        t = np.asarray(t, np.float64).copy()
        ke = self.n_expr
        b = np.zeros(ke) if beta is None else np.asarray(beta, np.float64).copy()
        bp = np.zeros(ke) if beta_prev is None else np.asarray(beta_prev, np.float64)
        lo, hi = (0.0, 1.0) if self.blend else (-np.inf, np.inf)
        b = np.clip(b, lo, hi)
        w_lm = np.array(LANDMARK_WEIGHTS if landmark_weights is None else landmark_weights, np.float64)
        w_lm[list(JAW)] *= contour_weight
        side = np.array([-1.0] * 8 + [0.0] + [1.0] * 8)
        idx = self.lm_sub.copy()
        npose = 6 if fit_pose else 0
        l1v = (l1 if self.blend else 0.0) * self.prior_scale
        l2v = l2 * self.prior_scale

        jaws = [j for j in JAW if j not in CHIN]
        call = np.concatenate([self.cands[j] for j in jaws])
        bounds = np.cumsum([0] + [len(self.cands[j]) for j in jaws])
        Xc0, Ec = self.X0[call], self.E[call]

        def update_contour(R, t, b):
            d = R[:2, 0] / max(np.linalg.norm(R[:2, 0]), 1e-9)
            Xc = (Xc0 + Ec @ b) @ R.T + t
            along = (Xc[:, :2] / Xc[:, 2:3]) @ d
            for k, j in enumerate(jaws):
                seg = along[bounds[k]:bounds[k + 1]] * side[j]
                idx[j] = call[bounds[k] + int(np.argmax(seg))]

        for it in range(max(1, iters)):
            if it % max(1, contour_every) == 0:
                update_contour(R, t, b)
            X = self.X0[idx] + self.E[idx] @ b  # (68, 3)
            RX = X @ R.T
            Xc = RX + t
            z = np.maximum(Xc[:, 2], 1e-3)
            p = np.stack([focal * Xc[:, 0] / z + cx, focal * Xc[:, 1] / z + cy], 1)
            r = (p - q) / s  # (68, 2)
            r2 = (r**2).sum(1)
            c2 = robust_scale**2
            psi = (c2 / (r2 + c2)) ** 2  # d rho / d r^2 (times c^-2 normalisation)
            wj = w_lm * psi / sigma**2
            # d p / d Xc  (68, 2, 3)
            P = np.zeros((68, 2, 3))
            P[:, 0, 0] = focal / z
            P[:, 1, 1] = focal / z
            P[:, 0, 2] = -focal * Xc[:, 0] / z**2
            P[:, 1, 2] = -focal * Xc[:, 1] / z**2
            P /= s
            cols = []
            if fit_pose:
                # rotation on the left: d(RX)/dw = -[RX]x
                Kx = np.zeros((68, 3, 3))
                Kx[:, 0, 1], Kx[:, 0, 2] = RX[:, 2], -RX[:, 1]
                Kx[:, 1, 0], Kx[:, 1, 2] = -RX[:, 2], RX[:, 0]
                Kx[:, 2, 0], Kx[:, 2, 1] = RX[:, 1], -RX[:, 0]
                cols += [P @ Kx, P]  # (68, 2, 3) each
            cols.append(np.matmul(P @ R, self.E[idx]))  # (68, 2, Ke)
            J = np.concatenate(cols, 2).reshape(136, -1)
            W = np.repeat(wj, 2)
            H = J.T @ (J * W[:, None])
            g = J.T @ (W * r.reshape(-1))
            ib = slice(npose, npose + ke)
            H[ib, ib] += np.diag(l2v + temporal)
            g[ib] += l1v + l2v * b + temporal * (b - bp)
            H[np.diag_indices_from(H)] += 1e-6 + 1e-3 * np.diag(H)
            free = np.ones(len(g), bool)
            free[ib] = ~(((b <= lo) & (g[ib] > 0)) | ((b >= hi) & (g[ib] < 0)))
            delta = np.zeros(len(g))
            Hf = H[np.ix_(free, free)]
            delta[free] = -np.linalg.solve(Hf, g[free])
            if fit_pose:
                R = _rodrigues(delta[:3]) @ R
                t = t + delta[3:6]
            b = np.clip(b + delta[ib], lo, hi)
        update_contour(R, t, b)
        X = self.X0[idx] + self.E[idx] @ b
        Xc = X @ R.T + t
        p = focal * Xc[:, :2] / Xc[:, 2:3] + np.array([cx, cy])
        return SolveResult(R, t, b, np.linalg.norm(p - q, axis=1), self.sub[idx])
