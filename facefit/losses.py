"""Training losses of the unsupervised regressor (Genova et al., CVPR 2018, Sec. 3).

All losses return a 0-d tensor averaged over the batch; inputs are torch tensors on any
device. Coefficients are in facefit's model units: every shape/colour coefficient is
distributed N(0, 1) under the morphable model's prior (see :mod:`facefit.morphable`).

* :func:`param_loss` -- squared error of coefficients (synthetic faces, where the truth is
  known).
* :func:`identity_loss` -- 1 - cosine similarity between the recognition embedding of a
  photo and of renders of the predicted face (multi-view).
* :func:`batch_distribution_loss` -- keeps the batch of predicted coefficients distributed
  like the prior (mean 0, variance 1 per component).
* :func:`loopback_loss` -- :func:`param_loss` between the coefficients predicted for a photo
  and those predicted again from a render of that prediction (both sides keep their
  gradients, as in the paper).

Default weights
---------------
The paper uses ``w_s = 0.4``, ``w_t = 0.002`` for the Basel Face Model's 199 + 199
coefficients; facefit uses them for Basel Face Models (:data:`BFM_W_SHAPE`,
:data:`BFM_W_COLOR`). Other models (ICT-FaceKit, FLAME) have N(0, 1) coefficients too, but
far fewer of them (the ICT-FaceKit face model: 100 shape and 6 heuristic or ~30 statistical
colour components) and each colour component is much more visible than one of the BFM's
199 texture components, so their defaults are :data:`DEFAULT_W_SHAPE` and
:data:`DEFAULT_W_COLOR` (see ``docs/training.md`` for how they were chosen).
:func:`default_param_weights` picks per model; all weights are options of
:class:`facefit.training.TrainConfig` (``w_shape``/``w_color`` = None means "the model's
default").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_W_SHAPE",
    "DEFAULT_W_COLOR",
    "BFM_W_SHAPE",
    "BFM_W_COLOR",
    "is_basel_model",
    "default_param_weights",
    "default_identity_weight",
    "NORMALISED_W_ID",
    "param_loss",
    "identity_loss",
    "normalised_identity_loss",
    "cosine_scores",
    "batch_distribution_loss",
    "loopback_loss",
]

#: Default weight of the squared shape-coefficient error (per N(0, 1) component).
DEFAULT_W_SHAPE = 0.05
#: Default weight of the squared colour-coefficient error (per N(0, 1) component).
DEFAULT_W_COLOR = 0.05
#: The paper's shape weight, for the Basel Face Model's 199 N(0, 1) shape coefficients.
BFM_W_SHAPE = 0.4
#: The paper's colour (texture) weight, for the Basel Face Model's 199 texture coefficients.
BFM_W_COLOR = 0.002


#: The paper's identity-loss weight (with FaceNet, whose cosine similarities spread widely).
PAPER_W_ID = 1.0
#: Identity-loss weight with dlib's ResNet. dlib's cosines are compressed (same person
#: ~0.95, different people ~0.83, the mean face already ~0.83), so ``1 - cos`` moves over
#: a range several times smaller than FaceNet's and its gradient is tiny next to
#: ``L_param`` and ``10 L_batch``. Measured on faces-dev with the held-out SFace judge after
#: 600 stage-2 steps from the same stage-1 checkpoint (docs/training.md): w_id = 200 gave
#: top-1 identity recall 0.66, w_id = 1000 gave 0.77 (w_id = 1, the paper's, 0.55).
DLIB_W_ID = 1000.0


#: Identity-loss weight of the *normalised* loss (:func:`normalised_identity_loss`; the
#: default, ``identity_norm = "scale"``), the same for every network and combination of
#: networks. It is dlib's measured raw weight carried over: ``1000 * (same - diff)`` of
#: dlib's cosine scale (1000 * 0.1203 = 120, :data:`facefit.idloss.COSINE_SCALES`), so a
#: dlib-only run weighs its identity gradient as the shipped model's training did.
NORMALISED_W_ID = 120.0


def default_identity_weight(encoder: str, identity_norm: str = "none") -> float:
    """Default ``w_id``.

    Args:
        encoder: the (single) identity network's registry name; used only with
            ``identity_norm = "none"``.
        identity_norm: ``"scale"`` (cosines on each network's common scale): one weight for
            all, :data:`NORMALISED_W_ID`; ``"none"`` (raw cosines, the old loss):
            :data:`DLIB_W_ID` for ``"dlib"``, else :data:`PAPER_W_ID`.
    """
    if str(identity_norm) == "scale":
        return NORMALISED_W_ID
    return DLIB_W_ID if str(encoder).lower() == "dlib" else PAPER_W_ID


def is_basel_model(model) -> bool:
    """Whether a morphable model is a Basel Face Model (2009, 2017 or 2019).

    Decided by the provenance the loaders record: ``model.meta["source"]`` starts with
    ``"Basel Face Model"`` (:mod:`facefit.loaders.bfm`; kept by subsets, renames and native
    ``.npz`` files).
    """
    meta = getattr(model, "meta", None) or {}
    return str(meta.get("source", "")).strip().lower().startswith("basel face model")


def default_param_weights(model) -> tuple[float, float]:
    """Default ``(w_shape, w_color)`` of :func:`param_loss` / :func:`loopback_loss` for a model.

    Returns:
        ``(BFM_W_SHAPE, BFM_W_COLOR)`` = (0.4, 0.002) for a Basel Face Model (the paper's
        values), else ``(DEFAULT_W_SHAPE, DEFAULT_W_COLOR)`` = (0.05, 0.05) (ICT-FaceKit,
        FLAME, others).
    """
    if is_basel_model(model):
        return BFM_W_SHAPE, BFM_W_COLOR
    return DEFAULT_W_SHAPE, DEFAULT_W_COLOR


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"{what}: expected two (B, K) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def param_loss(
    pred_s: torch.Tensor,
    true_s: torch.Tensor,
    pred_t: torch.Tensor | None = None,
    true_t: torch.Tensor | None = None,
    w_s: float = DEFAULT_W_SHAPE,
    w_t: float = DEFAULT_W_COLOR,
) -> torch.Tensor:
    """Weighted squared error of shape and colour coefficients.

    ``L = mean_b( w_s * sum_k (s_bk - s*_bk)^2 + w_t * sum_k (t_bk - t*_bk)^2 )``

    Args:
        pred_s, true_s: (B, Ks) predicted and reference shape coefficients.
        pred_t, true_t: (B, Kc) colour coefficients, or None (no colour term; also when
            Kc = 0).
        w_s, w_t: weights of the two sums.
    Returns:
        0-d tensor.
    """
    _check_pair(pred_s, true_s, "param_loss shape")
    loss = w_s * (pred_s - true_s).pow(2).sum(1)
    if pred_t is not None and true_t is not None and pred_t.shape[-1] > 0:
        _check_pair(pred_t, true_t, "param_loss colour")
        loss = loss + w_t * (pred_t - true_t).pow(2).sum(1)
    return loss.mean()


def cosine_scores(photo_emb: torch.Tensor, render_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each render embedding with its photo's embedding.

    Args:
        photo_emb: (B, E) embeddings of the photos (need not be unit length).
        render_emb: (B, V, E), or (B*V, E) ordered photo-major (rows ``b*V .. b*V+V-1``
            belong to photo ``b``), embeddings of V renders per photo.
    Returns:
        (B, V) cosine similarities in [-1, 1].
    """
    if photo_emb.dim() != 2:
        raise ValueError(f"photo_emb must be (B, E), got {tuple(photo_emb.shape)}")
    b, e = photo_emb.shape
    if render_emb.dim() == 2:
        if render_emb.shape[0] % max(b, 1) or render_emb.shape[1] != e:
            raise ValueError(f"render_emb {tuple(render_emb.shape)} does not fit photo_emb {tuple(photo_emb.shape)}")
        render_emb = render_emb.reshape(b, -1, e)
    if render_emb.dim() != 3 or render_emb.shape[0] != b or render_emb.shape[2] != e:
        raise ValueError(f"render_emb must be (B, V, E) or (B*V, E), got {tuple(render_emb.shape)}")
    p = F.normalize(photo_emb, dim=-1, eps=1e-12)
    r = F.normalize(render_emb, dim=-1, eps=1e-12)
    return (r * p.unsqueeze(1)).sum(-1)


def identity_loss(photo_emb: torch.Tensor, render_emb: torch.Tensor) -> torch.Tensor:
    """Multi-view identity loss ``1 - mean cosine(photo, render)``.

    Minimising it maximises the recognition network's cosine score between each photo and
    the V renders of the face predicted for it.

    Args:
        photo_emb: (B, E) photo embeddings (usually fixed: no gradient needed).
        render_emb: (B, V, E) or (B*V, E) (photo-major) render embeddings.
    Returns:
        0-d tensor in [0, 2].
    """
    return 1.0 - cosine_scores(photo_emb, render_emb).mean()


def normalised_identity_loss(scores, scales) -> torch.Tensor:
    """Identity loss of several recognition networks on one common scale.

    Each network's cosine ``c`` is normalised by its mean same-person (``s``) and
    different-people (``d``) photo-pair cosines, ``n = (c - d) / (s - d)`` (0: a stranger's
    photo, 1: another photo of the same person), and the loss is the mean over networks of
    ``1 - mean n`` (mean over photos and views):

    ``L = mean_k (s_k - mean c_k) / (s_k - d_k)``

    Args:
        scores: {net name: (B, V) cosines} (:func:`cosine_scores`).
        scales: {net name: (same, diff)} with same > diff.
    Returns:
        0-d tensor (0 when every render scores like a same-person photo pair).
    """
    if not scores:
        raise ValueError("normalised_identity_loss needs at least one network's scores")
    terms = []
    for name, c in scores.items():
        same, diff = scales[name]
        if not float(same) > float(diff):
            raise ValueError(f"{name}: cosine scale needs same > diff, got {same}, {diff}")
        terms.append((float(same) - c.mean()) / (float(same) - float(diff)))
    return torch.stack(terms).mean()


def batch_distribution_loss(coeffs: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Keep a batch of predicted coefficients distributed like the N(0, 1) prior.

    ``L = sum_k mean_b(c_bk)^2 + (var_b(c_bk) - 1)^2`` with the unbiased batch variance
    (so that samples from the prior score 0 in expectation for the variance term).

    Args:
        coeffs: (B, K) with B >= 2.
        reduction: "sum" over components (the paper) or "mean" over components.
    Returns:
        0-d tensor (0 when K = 0).
    """
    if coeffs.dim() != 2:
        raise ValueError(f"coeffs must be (B, K), got {tuple(coeffs.shape)}")
    if coeffs.shape[0] < 2:
        raise ValueError("batch_distribution_loss needs a batch of at least 2")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if coeffs.shape[1] == 0:
        return coeffs.new_zeros(())
    mean = coeffs.mean(0)
    var = coeffs.var(0, unbiased=True)
    per = mean.pow(2) + (var - 1.0).pow(2)
    return per.sum() if reduction == "sum" else per.mean()


def loopback_loss(
    pred_s: torch.Tensor,
    loop_s: torch.Tensor,
    pred_t: torch.Tensor | None = None,
    loop_t: torch.Tensor | None = None,
    w_s: float = DEFAULT_W_SHAPE,
    w_t: float = DEFAULT_W_COLOR,
) -> torch.Tensor:
    """Loopback loss: :func:`param_loss` between a prediction and its re-prediction.

    ``pred_*`` are the coefficients predicted for real photos; ``loop_*`` those predicted
    from renders of ``pred_*`` (render in a random pose and lighting -> crop -> encoder
    features -> decoder). Neither side is detached, so gradients flow through both paths
    (direct and through the renderer and encoder), as in the paper.

    Args:
        pred_s, loop_s: (B, Ks); pred_t, loop_t: (B, Kc) or None.
        w_s, w_t: weights (as :func:`param_loss`).
    Returns:
        0-d tensor.
    """
    return param_loss(loop_s, pred_s, loop_t, pred_t, w_s=w_s, w_t=w_t)
