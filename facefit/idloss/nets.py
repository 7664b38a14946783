"""The recognition networks of the identity loss: parsing, checking, scoring renders.

:class:`IdentityNets` holds the networks (and their :class:`~facefit.idloss.CosineScale`)
and scores renders of predicted faces against photo embeddings: for every network the
faces are rendered framed for that network's crop (:func:`facefit.synthetic.render_crops`,
same poses, lights and backgrounds for all networks), cropped differentiably, embedded and
compared with the photos' embeddings by that network.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional, Sequence

import torch

from facefit.errors import FacefitError

__all__ = ["NON_DIFFERENTIABLE", "parse_identity_nets", "check_identity_net_names", "IdentityNets"]

#: Registered networks known to have no gradient (checked before building them).
NON_DIFFERENTIABLE = frozenset({"sface"})


def parse_identity_nets(value) -> list[str]:
    """A list of network names from ``"facenet,dlib"``, ``"facenet dlib"`` or a list.

    Returns:
        Names in order, duplicates removed; ``[]`` for None / empty (meaning "the encoder").
    Raises:
        FacefitError: not a string or a list of strings.
    """
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.strip().strip("[]()").replace(",", " ").split()
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise FacefitError(f"identity_nets: expected network names, got {value!r}")
        parts = [p.strip() for v in value for p in v.replace(",", " ").split()]
    else:
        raise FacefitError(f"identity_nets: expected network names, got {value!r}")
    out: list[str] = []
    for p in (x.strip("'\"") for x in parts):
        if p and p not in out:
            out.append(p)
    return out


def check_identity_net_names(names: Iterable[str]) -> None:
    """Refuse unknown and non-differentiable networks (one-line errors).

    Raises:
        FacefitError: an unknown name (the known ones are listed) or a network without
        gradients (SFace: the held-out judge, never trained with).
    """
    from facefit.recognition import available_nets

    known = available_nets()
    for n in names:
        if n not in known:
            raise FacefitError(f"unknown identity network '{n}' (known: {', '.join(known)})")
        if n in NON_DIFFERENTIABLE:
            raise FacefitError(
                f"identity network '{n}' is not differentiable (evaluation only): training needs gradients through "
                "it for the identity loss; use differentiable ones, e.g. dlib, facenet"
            )


class IdentityNets:
    """Recognition networks of the identity loss with their cosine scales.

    Args:
        nets: {name: differentiable RecognitionNet} in order.
        normalise: put each network's cosine on the common scale (:data:`~facefit.idloss.COSINE_SCALES`);
            False = raw cosines (``1 - cos``; the old single-network loss).
        scales: {name: CosineScale} overriding the measured ones (tests, new networks).
    Raises:
        FacefitError: a network without gradients, or (``normalise``) without a scale.
    """

    def __init__(self, nets: Mapping[str, torch.nn.Module], normalise: bool = True,
                 scales: Optional[Mapping[str, "object"]] = None) -> None:
        from .scales import cosine_scale

        if not nets:
            raise FacefitError("the identity loss needs at least one recognition network")
        self.nets = dict(nets)
        for name, net in self.nets.items():
            if not getattr(net, "differentiable", True):
                raise FacefitError(f"identity network '{name}' is not differentiable (evaluation only)")
        self.normalise = bool(normalise)
        scales = dict(scales or {})
        self.scales = {n: (scales[n] if n in scales else cosine_scale(n)) for n in self.nets} if self.normalise else {}

    @classmethod
    def from_names(cls, names: Sequence[str], device=None, normalise: bool = True,
                   net_kwargs: Optional[Mapping[str, Mapping]] = None) -> "IdentityNets":
        """Build from registry names (checked first; see :func:`check_identity_net_names`)."""
        from facefit.recognition import get_net

        check_identity_net_names(names)
        kw = dict(net_kwargs or {})
        return cls({n: get_net(n, device=device, **dict(kw.get(n, {}))) for n in names}, normalise=normalise)

    @property
    def names(self) -> list[str]:
        return list(self.nets)

    def view_settings(self, base) -> dict:
        """{name: ``base`` (SyntheticSettings) with that network's crop and crop size}."""
        return {n: dataclasses.replace(base, crop=net.crop, crop_size=int(net.input_size)) for n, net in self.nets.items()}

    def score_renders(self, model, verts: torch.Tensor, colors: torch.Tensor, params, settings: Mapping,
                      photo_embs: Mapping[str, torch.Tensor], background: Optional[torch.Tensor] = None,
                      keep_features: Optional[str] = None) -> tuple[dict, Optional[torch.Tensor]]:
        """Cosines of renders with their photos, per network.

        Args:
            model: the morphable model.
            verts, colors: (B*V, Nv, 3) decoded faces, photo-major (V views per photo).
            params: RenderParams for the B*V renders; background: (B*V, 3, H, W) or None.
            settings: :meth:`view_settings` output.
            photo_embs: {name: (B, E_name)} the photos' embeddings by each network.
            keep_features: a network name whose render features to return (loopback).
        Returns:
            ``({name: (B, V) cosines}, features (B*V, D) of ``keep_features`` or None)``;
            differentiable w.r.t. ``verts`` and ``colors``.
        """
        from facefit.losses import cosine_scores
        from facefit.regressor import encode
        from facefit.synthetic import render_crops

        out, kept = {}, None
        for name, net in self.nets.items():
            rc = render_crops(model, verts, colors, params, settings[name], background=background)
            feats, emb = encode(net, rc["crops"])
            out[name] = cosine_scores(photo_embs[name], emb)
            if name == keep_features:
                kept = feats
        return out, kept

    def loss(self, scores: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The identity loss of per-network cosines and the terms to log.

        Returns:
            ``(loss, terms)``: loss = mean over networks of ``1 - normalised cosine`` (or
            ``1 - cosine`` when not normalising); terms: ``cos_<name>`` (raw mean cosine)
            and ``id_score`` (mean normalised score, or the raw mean cosine).
        """
        from facefit.losses import normalised_identity_loss

        terms: dict[str, torch.Tensor] = {}
        for n, c in scores.items():
            terms[f"cos_{n}"] = c.mean().detach()
        if self.normalise:
            loss = normalised_identity_loss(scores, {n: (s.same, s.diff) for n, s in self.scales.items()})
        else:
            loss = torch.stack([1.0 - c.mean() for c in scores.values()]).mean()
        terms["id_score"] = (1.0 - loss).detach()
        return loss, terms
