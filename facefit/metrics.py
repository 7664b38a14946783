"""Identity metrics shared by the benchmarks and ``facefit eval``.

All functions take numpy arrays and return plain floats/arrays.
"""
from __future__ import annotations

import numpy as np


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities.

    Args:
        a: (N, E) embeddings; b: (M, E) or None (= a).
    Returns:
        (N, M) cosine similarity matrix.
    """
    a = np.asarray(a, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    if b is None:
        b = a
    else:
        b = np.asarray(b, np.float64)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def pair_similarities(emb: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all unordered pairs, split by identity.

    Args:
        emb: (N, E) embeddings; labels: (N,) identities.
    Returns:
        (same-person similarities, different-person similarities), each 1-D.
    """
    labels = np.asarray(labels)
    s = cosine_matrix(emb)
    iu = np.triu_indices(len(labels), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    vals = s[iu]
    return vals[same], vals[~same]


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores (higher = positive), ties counted half.

    Equal to the probability that a random positive scores above a random negative
    (Mann-Whitney U / (n_pos * n_neg)).
    """
    pos = np.asarray(pos, np.float64).ravel()
    neg = np.asarray(neg, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def emd_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's (1-Wasserstein) distance between two 1-D empirical distributions."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()))


def recall_at_k(sim: np.ndarray, query_labels, gallery_labels, ks=(1, 5)) -> dict[int, float]:
    """Identity-retrieval recall: for each query, is the right identity among the top k?

    Args:
        sim: (Q, G) similarities of queries to gallery items.
        query_labels: (Q,); gallery_labels: (G,).
        ks: the k values.
    Returns:
        {k: fraction of queries whose top-k gallery items include one of its identity}.
    """
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    order = np.argsort(-np.asarray(sim), axis=1, kind="stable")
    hits = g[order] == q[:, None]  # (Q, G)
    return {int(k): float(hits[:, :k].any(1).mean()) for k in ks}


def chance_recall_at_k(query_labels, gallery_labels, k: int) -> float:
    """Expected recall@k of a random ranking (hypergeometric: no correct item in k draws)."""
    from scipy.stats import hypergeom

    g = np.asarray(gallery_labels)
    out = []
    for lab in np.asarray(query_labels):
        n_good = int((g == lab).sum())
        out.append(1.0 - hypergeom(len(g), n_good, min(k, len(g))).pmf(0))
    return float(np.mean(out))
