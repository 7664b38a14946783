"""Each recognition network's cosine scale: mean same-person and different-people cosines.

A network's cosine ``c`` between a photo and a render is normalised as
``n = (c - diff) / (same - diff)``: 0 is what a photo of a stranger scores on average, 1
what another photo of the same person scores. ``1 - n`` is comparable across networks, so
one identity weight fits all (:mod:`facefit.idloss`).

The constants in :data:`COSINE_SCALES` were measured once on the *training* photos
(``../shared/data/faces-train``, whose ``labels.csv`` names the people; faces-dev stays
untouched for evaluation) with::

    python -m facefit.idloss ../shared/data/faces-train --net dlib
    python -m facefit.idloss ../shared/data/faces-train --net facenet

``same`` is the mean over people with two or more photos of the mean cosine of their photo
pairs (so that a few people with hundreds of photos do not dominate); ``diff`` is the mean
cosine of 200,000 random pairs of photos of different people (seed 0). A network missing
from the table cannot be used with ``identity_norm = "scale"`` until it is measured (the
error says how); ``identity_norm = "none"`` uses raw cosines (the old behaviour).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from facefit.errors import FacefitError

__all__ = ["CosineScale", "COSINE_SCALES", "cosine_scale", "measure_cosine_scale", "main"]


@dataclass(frozen=True)
class CosineScale:
    """Mean cosine similarity of photo pairs of one network.

    Attributes:
        same: mean cosine of two photos of the same person.
        diff: mean cosine of two photos of different people (``diff < same``).
        source: where and how it was measured.
    """

    same: float
    diff: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.same) and np.isfinite(self.diff) and self.same > self.diff):
            raise FacefitError(f"cosine scale needs same > diff, got same={self.same} diff={self.diff}")

    @property
    def spread(self) -> float:
        """``same - diff``."""
        return float(self.same - self.diff)

    def normalise(self, cos):
        """``(cos - diff) / (same - diff)`` (numpy or torch, any shape)."""
        return (cos - self.diff) / self.spread


_TRAIN = "faces-train (8,043 photos with a face), python -m facefit.idloss ../shared/data/faces-train --net {}"

#: Measured cosine scales of the built-in differentiable networks (see the module docstring).
COSINE_SCALES: dict[str, CosineScale] = {
    # {"same": 0.9538, "diff": 0.8335, "n_people_same": 1591, "n_same_pairs": 3219, "n": 8043}
    "dlib": CosineScale(same=0.9538, diff=0.8335, source=_TRAIN.format("dlib")),
    # ... --net facenet --subset 1600 (the photo_subset the shipped fine-tune used; FaceNet
    # encodes ~3 photos/s on the busy 2-core machine): {"same": 0.6665, "diff": 0.0372,
    # "n_people_same": 106, "n_same_pairs": 112, "n": 1600}
    "facenet": CosineScale(same=0.6665, diff=0.0372, source=_TRAIN.format("facenet") + " --subset 1600"),
}


def cosine_scale(name: str) -> CosineScale:
    """The measured :class:`CosineScale` of a network (registry name).

    Raises:
        FacefitError: no scale has been measured for it (the message gives the command).
    """
    sc = COSINE_SCALES.get(str(name))
    if sc is None:
        raise FacefitError(
            f"no cosine scale measured for identity network '{name}': measure it with "
            f"'python -m facefit.idloss PHOTOS_DIR --net {name}' and add it to facefit.idloss.COSINE_SCALES, "
            "or train with identity_norm=none"
        )
    return sc


def measure_cosine_scale(embeddings: np.ndarray, labels: Sequence, n_diff: int = 200_000, seed: int = 0) -> dict:
    """Same-person and different-people mean cosines of labelled photo embeddings.

    Args:
        embeddings: (N, E) photo embeddings (normalised here).
        labels: (N,) identities.
        n_diff: random different-people pairs to average (all pairs when fewer exist).
        seed: random seed of those pairs.
    Returns:
        dict: ``same`` (mean over people with >= 2 photos of their mean pair cosine),
        ``diff``, ``same_pairs_mean`` (plain mean over all same-person pairs),
        ``n_people_same``, ``n_same_pairs``, ``n_diff_pairs``, ``n``.
    Raises:
        FacefitError: no person with two photos, or fewer than two people.
    """
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    lab = np.asarray([str(x) for x in labels])
    if len(lab) != len(e):
        raise FacefitError(f"{len(e)} embeddings but {len(lab)} labels")
    per_person, all_same = [], []
    for person in np.unique(lab):
        idx = np.flatnonzero(lab == person)
        if len(idx) < 2:
            continue
        s = e[idx] @ e[idx].T
        v = s[np.triu_indices(len(idx), k=1)]
        per_person.append(v.mean())
        all_same.append(v)
    if not per_person:
        raise FacefitError("no person has two photos: cannot measure the same-person cosine")
    if len(np.unique(lab)) < 2:
        raise FacefitError("need photos of at least two people")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(e), size=4 * n_diff)
    j = rng.integers(0, len(e), size=4 * n_diff)
    keep = lab[i] != lab[j]
    i, j = i[keep][:n_diff], j[keep][:n_diff]
    diff = np.einsum("ij,ij->i", e[i], e[j])
    same_all = np.concatenate(all_same)
    return {
        "same": float(np.mean(per_person)),
        "diff": float(diff.mean()),
        "same_pairs_mean": float(same_all.mean()),
        "n_people_same": len(per_person),
        "n_same_pairs": int(len(same_all)),
        "n_diff_pairs": int(len(diff)),
        "n": int(len(e)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m facefit.idloss PHOTOS --net NAME``: print the measured scale (JSON)."""
    ap = argparse.ArgumentParser(prog="python -m facefit.idloss", description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", help="labelled photo folder (labels.csv or <person>/<photo>)")
    ap.add_argument("--net", default="dlib", help="recognition network (registry name)")
    ap.add_argument("--max-photos", type=int, default=None)
    ap.add_argument("--subset", type=int, default=None, help="a fixed random subset of N photos (as training's photo_subset)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        import torch

        from facefit.devset import list_labelled
        from facefit.photo_cache import build_photo_cache, photo_set_for_net
        from facefit.recognition import get_net

        torch.set_num_threads(max(1, a.threads))
        from pathlib import Path

        root = Path(a.photos)
        rows = list_labelled(root)
        label_of = {Path(p).resolve().relative_to(root.resolve()).as_posix(): lab for p, lab in rows}
        base = build_photo_cache(root, encoder="dlib", max_photos=a.max_photos, workers=1)
        if a.subset is not None:
            base = base.random_subset(a.subset, seed=0)
        ps = photo_set_for_net(base, get_net(a.net))
        keep = [k for k, p in enumerate(ps.paths) if p in label_of]
        out = measure_cosine_scale(ps.embeddings[keep], [label_of[ps.paths[k]] for k in keep])
        out.update({"net": a.net, "photos": str(root)})
    except FacefitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
