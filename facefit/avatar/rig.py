"""Morph targets (blend shapes) of a morphable model for an avatar GLB.

A facefit model is linear: ``verts = mean + S @ (shape * shape_std) + E @ (expr * expr_std)``,
so the person's own neutral head (their identity coefficients) plus ``sum_k w_k * target_k``
is exactly the model's head with that identity and expression: the targets are the model's
expression offsets carried by the person's identity mesh (for ICT-FaceKit, which defines its
expressions as offsets added to any identity, this is how the model itself animates).

Target names: ARKit for ICT-FaceKit (:mod:`facefit.avatar.naming`), ``expression_NNN``
for PCA expression bases (BFM, FLAME), the model's own names for other blend-shape models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facefit.errors import FacefitError

from .naming import ARKIT_FROM_ICT_HALVES, ARKIT_NAMES, ICT_TO_ARKIT, pca_name

__all__ = ["MorphTargets", "morph_targets"]


@dataclass
class MorphTargets:
    """Named morph targets of one model.

    Attributes:
        names: K target names (glTF order).
        offsets: (K, V, 3) float32 vertex displacements in mm at weight 1.
        combination: (K, Ke) float32: target k = sum_j combination[k, j] * expression j of
            the model (expression j's offset = ``expr_basis[:, :, j] * expr_std[j]``).
        kind: ``"arkit"`` (ICT-FaceKit), ``"pca"`` or ``"blendshape"``.
    """

    names: list[str]
    offsets: np.ndarray
    combination: np.ndarray
    kind: str

    def as_dict(self) -> dict[str, np.ndarray]:
        """Ordered name -> (V, 3) offsets (what :func:`facefit.avatar.gltf.save_glb_avatar` takes)."""
        return {n: self.offsets[k] for k, n in enumerate(self.names)}

    def weights_from_expr(self, expr_coeffs) -> np.ndarray:
        """Target weights (K,) that reproduce the model's expression coefficients exactly.

        Args:
            expr_coeffs: (Ke,) model expression coefficients (ICT: blend-shape weights).
        Returns:
            (K,) float32: each model expression goes to the one target that carries it
            alone (an ICT half such as ``browInnerUp_L`` to its own target, not to the
            combined ARKit ``browInnerUp``, which gets 0).
        """
        e = np.asarray(expr_coeffs, np.float64).reshape(-1)
        if e.shape != (self.combination.shape[1],):
            raise FacefitError(f"expected {self.combination.shape[1]} expression coefficients, got {e.shape}")
        w = np.zeros(len(self.names), np.float64)
        for j in range(len(e)):
            rows = np.nonzero((self.combination[:, j] == 1) & ((self.combination != 0).sum(1) == 1))[0]
            if len(rows) == 0:
                raise FacefitError(f"expression {j} has no target of its own")
            w[rows[0]] = e[j]
        return w.astype(np.float32)

    def weights_dict(self, expr_coeffs) -> dict[str, float]:
        """``weights_from_expr`` as name -> weight (only non-zero weights)."""
        return {n: float(x) for n, x in zip(self.names, self.weights_from_expr(expr_coeffs)) if x != 0.0}


def morph_targets(model) -> MorphTargets:
    """The named morph targets of a :class:`~facefit.morphable.MorphableModel`.

    Args:
        model: with an expression basis (ICT-FaceKit's 53 blend shapes, or a PCA basis).
    Returns:
        :class:`MorphTargets` over the model's vertices. ICT-FaceKit: 51 ARKit names
        (Apple's order; ``browInnerUp`` / ``cheekPuff`` = sum of ICT's halves; no
        ``tongueOut``) followed by ICT's four halves under their own names.
    Raises:
        FacefitError: the model has no expression basis.
    """
    ke = model.n_expr
    if ke == 0:
        raise FacefitError(f"model '{model.name}' has no expression basis: it cannot be animated")
    expr = np.asarray(model.expr_basis, np.float32) * np.asarray(model.expr_std, np.float32)[None, None, :]
    names_in = list(model.expr_names or [])
    kind = str(model.meta.get("expr_model_kind", "blendshape" if names_in else "pca"))
    rows: list[tuple[str, np.ndarray]] = []
    ict_names = set(ICT_TO_ARKIT) | {h for pair in ARKIT_FROM_ICT_HALVES.values() for h in pair}
    if names_in and set(names_in) <= ict_names:
        kind = "arkit"
        by_arkit = {ICT_TO_ARKIT[n]: n for n in names_in if n in ICT_TO_ARKIT}
        for a in ARKIT_NAMES:
            c = np.zeros(ke, np.float32)
            if a in by_arkit:
                c[names_in.index(by_arkit[a])] = 1.0
            elif a in ARKIT_FROM_ICT_HALVES and all(h in names_in for h in ARKIT_FROM_ICT_HALVES[a]):
                for h in ARKIT_FROM_ICT_HALVES[a]:
                    c[names_in.index(h)] = 1.0
            else:
                continue  # tongueOut: no ICT shape
            rows.append((a, c))
        for n in names_in:
            if n not in ICT_TO_ARKIT:
                c = np.zeros(ke, np.float32)
                c[names_in.index(n)] = 1.0
                rows.append((n, c))
    elif kind == "pca" or not names_in:
        kind = "pca"
        rows = [(pca_name(j), np.eye(ke, dtype=np.float32)[j]) for j in range(ke)]
    else:
        rows = [(str(n), np.eye(ke, dtype=np.float32)[j]) for j, n in enumerate(names_in)]
    comb = np.stack([c for _, c in rows])
    offsets = np.einsum("vcj,kj->kvc", expr, comb).astype(np.float32)
    return MorphTargets([n for n, _ in rows], offsets, comb, kind)
