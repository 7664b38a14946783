"""``facefit eval identity``: likeness of reconstructions on real photos (Genova et al. 2018,
Tables 2 and 3, Figures 3 and 5), measured with a held-out face-recognition network.

For a folder of ``<person>/<photo>`` images (or one with ``labels.csv``):

1. Each photo's main face is detected once; its crop goes to the regressor's encoder and
   the decoded face is rendered **frontally** with a fixed camera and fixed studio lighting
   over a grey background (:func:`facefit.evaluation.render_frontal`).
2. Photos and renders are embedded with the **evaluation network** (``--eval-net``,
   default SFace), which must not be the network the regressor was trained with (a network
   would flatter faces optimised for it). Crops of the renders come from the projected
   landmark vertices; crops of the photos from the detected landmarks.
3. Similarity distributions (cosine): *photo vs own render*, *same person* (all photo pairs
   of one person) and *different people* (all pairs of photos of different people); their
   means, histograms (Figure 5) and the earth mover's distance of the render distribution to
   the other two (Table 2). A render that looks like its person should score like another
   photo of that person: small EMD to *same person*, large to *different people*.
4. Identity clustering recall (Table 3): for each render, all photos ranked by similarity;
   top-1 / top-5 recall of the right person, next to the random-chance recall. The paper's
   protocol keeps the render's own source photo in the gallery; the stricter variant without
   it (only people with two or more photos) is reported too.
5. Reference: the mean face with the mean colour, rendered the same way, compared with every
   photo — the floor any reconstruction should clear.

Several checkpoints (e.g. the ablations of Figure 3: without batch loss, without loopback,
single view) are evaluated on the same detections and photo embeddings and reported side by
side.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from facefit.errors import FacefitError

from . import checkpoint_summary, render_frontal
from .report import Report, image_sheet, plot_bars, plot_histograms, print_summary

__all__ = [
    "IdentityEvalConfig",
    "PhotoSet",
    "load_photos",
    "similarity_metrics",
    "recall_metrics",
    "evaluate_identity",
    "write_identity_report",
    "print_identity_summary",
]

MEAN_FACE = "mean face (reference)"


@dataclass
class IdentityEvalConfig:
    """Settings of ``facefit eval identity``.

    Attributes:
        eval_net: held-out recognition network (registry name, default "sface").
        detector: face detector backend.
        per_person, people: use at most this many photos per person / people.
        render_size: side of the frontal renders (the crop spans half of it).
        bins: histogram bins.
        examples: people shown in the example figure.
        refine: also evaluate each checkpoint's predictions after this many steps of
            per-photo identity refinement (:mod:`facefit.refine`; 0 = no).
        refine_shape: that refinement also moves the shape (default: the colour only).
    """

    eval_net: str = "sface"
    detector: str = "dlib"
    per_person: Optional[int] = None
    people: Optional[int] = None
    render_size: int = 224
    bins: int = 40
    examples: int = 8
    refine: int = 0
    refine_shape: bool = False


@dataclass
class PhotoSet:
    """Detected, cropped and embedded photos.

    Attributes:
        paths: (N,) photo paths; labels: (N,) identities.
        crops: crop name -> (N, S, S, 3) uint8 crops (one per needed alignment).
        embeddings: (N, E) unit evaluation-network embeddings of the photos.
        skipped: [(path, reason)] photos without a usable face.
    """

    paths: list
    labels: np.ndarray
    crops: dict
    embeddings: np.ndarray
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@torch.no_grad()
def embed_crops(net, crops: np.ndarray | torch.Tensor, batch: int = 64) -> np.ndarray:
    """Unit embeddings of crops.

    Args:
        net: a RecognitionNet; crops: (N, S, S, 3) uint8 numpy or (N, 3, S, S) float [0, 1].
    Returns:
        (N, E) float64.
    """
    out = []
    dev = next((p.device for p in net.parameters()), torch.device("cpu")) if hasattr(net, "parameters") else None
    for i in range(0, len(crops), batch):
        c = crops[i:i + batch]
        if isinstance(c, np.ndarray):
            c = torch.from_numpy(np.ascontiguousarray(c)).permute(0, 3, 1, 2).float() / 255.0
        if dev is not None:
            c = c.to(dev)
        out.append(net.embed(c).detach().cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, getattr(net, "embedding_dim", 0)))


def load_photos(
    photo_dir,
    eval_net,
    crop_kinds: Sequence[tuple[str, int]],
    cfg: IdentityEvalConfig,
    progress: Optional[Callable[[str, int, int], None]] = None,
    rows: Optional[list] = None,
) -> PhotoSet:
    """Detect the main face of every labelled photo, cut the needed crops, embed with the
    evaluation network.

    Args:
        photo_dir: ``<person>/<photo>`` folder (or with ``labels.csv``).
        eval_net: the evaluation RecognitionNet.
        crop_kinds: (crop name, size) pairs the regressors' encoders need.
        cfg: :class:`IdentityEvalConfig`.
        progress: callback ``(stage, done, total)``.
        rows: the ``(path, identity)`` list if already read (default: from ``photo_dir``).
    Returns:
        :class:`PhotoSet` of the photos with a face.
    Raises:
        FacefitError: no labelled photos, or no face in any of them.
    """
    from facefit.devset import list_labelled
    from facefit.faces.alignment import crop_for_net
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    if rows is None:
        rows = list_labelled(photo_dir, per_person=cfg.per_person, people=cfg.people)
    kinds = {(eval_net.crop, int(eval_net.input_size))} | {(c, int(s)) for c, s in crop_kinds}
    paths, labels, skipped = [], [], []
    crops: dict = {k: [] for k in kinds}
    for i, (path, lab) in enumerate(rows):
        try:
            img = load_image(path)
            faces = detect_faces(img, backend=cfg.detector)
            if not faces:
                skipped.append((str(path), "no face found"))
            else:
                for c, s in kinds:
                    crops[(c, s)].append(crop_for_net(img, faces[0], c, s))
                paths.append(str(path))
                labels.append(lab)
        except FacefitError as e:
            skipped.append((str(path), str(e)))
        if progress:
            progress("detect", i + 1, len(rows))
    if not paths:
        unreadable = [(p, why) for p, why in skipped if why != "no face found"]
        if not unreadable:
            raise FacefitError(f"{photo_dir}: no face found in any of {len(rows)} photos")
        p, why = unreadable[0]
        raise FacefitError(f"{photo_dir}: none of the {len(rows)} photos is usable ({len(unreadable)} unreadable, "
                           f"e.g. {why})")
    crops = {k: np.stack(v) for k, v in crops.items()}
    emb = embed_crops(eval_net, crops[(eval_net.crop, int(eval_net.input_size))])
    return PhotoSet(paths, np.asarray(labels), crops, emb, skipped)


# ---------------------------------------------------------------------------------------
# metrics


def similarity_metrics(own: np.ndarray, same: np.ndarray, diff: np.ndarray) -> dict:
    """Table 2 numbers for one render distribution.

    Args:
        own: (N,) photo-vs-own-render similarities; same: same-person photo-pair
            similarities; diff: different-people photo-pair similarities.
    Returns:
        dict with ``mean_own``, ``std_own``, ``mean_same``, ``mean_diff``, ``emd_to_same``,
        ``emd_to_diff``.
    """
    from facefit.metrics import emd_1d

    nan = float("nan")
    return {
        "mean_own": float(np.mean(own)) if len(own) else nan,
        "std_own": float(np.std(own)) if len(own) else nan,
        "mean_same": float(np.mean(same)) if len(same) else nan,
        "mean_diff": float(np.mean(diff)) if len(diff) else nan,
        "emd_to_same": emd_1d(own, same) if len(own) and len(same) else nan,
        "emd_to_diff": emd_1d(own, diff) if len(own) and len(diff) else nan,
    }


def _chance_excluding_self(labels: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Expected recall@k of a random ranking of the gallery without each query's own photo."""
    from scipy.stats import hypergeom

    N = len(labels)
    out = []
    for i in queries:
        good = int((labels == labels[i]).sum()) - 1
        out.append(1.0 - hypergeom(N - 1, good, min(k, N - 1)).pmf(0))
    return float(np.mean(out)) if out else float("nan")


def recall_metrics(sim: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Table 3 numbers: identity recall of renders against a gallery of photos.

    Args:
        sim: (N, N) similarity of render i (rows) to photo j (columns); render i was made
            from photo i.
        labels: (N,) identities of the photos (and of the renders).
        ks: the k values.
    Returns:
        dict with ``top{k}`` (own photo in the gallery, the paper's protocol),
        ``chance_top{k}``, ``top{k}_excl_self`` / ``chance_top{k}_excl_self`` (own photo
        removed; queries of people with at least two photos only) and ``n_queries_excl_self``.
    """
    from facefit.metrics import chance_recall_at_k, recall_at_k

    labels = np.asarray(labels)
    sim = np.asarray(sim, np.float64)
    out = {}
    r = recall_at_k(sim, labels, labels, ks)
    for k in ks:
        out[f"top{k}"] = r[k]
        out[f"chance_top{k}"] = chance_recall_at_k(labels, labels, k)
    counts = {lab: int((labels == lab).sum()) for lab in set(labels.tolist())}
    q = np.asarray([i for i in range(len(labels)) if counts[labels[i]] >= 2], np.int64)
    out["n_queries_excl_self"] = int(len(q))
    if len(q):
        s2 = sim.copy()
        s2[np.arange(len(labels)), np.arange(len(labels))] = -np.inf  # own photo ranks last
        order = np.argsort(-s2[q], axis=1, kind="stable")[:, : max(ks)]
        hits = labels[order] == labels[q][:, None]
        for k in ks:
            out[f"top{k}_excl_self"] = float(hits[:, :k].any(1).mean())
            out[f"chance_top{k}_excl_self"] = _chance_excluding_self(labels, q, k)
    return out


def _evaluate_renders(name: str, render_emb: np.ndarray, photos: PhotoSet, same: np.ndarray, diff: np.ndarray) -> dict:
    """Metrics of one set of renders, (N, E) (or (1, E) for a single reference render)."""
    from facefit.metrics import cosine_matrix

    sim = cosine_matrix(render_emb, photos.embeddings)  # (N or 1, N)
    if sim.shape[0] == 1:
        own = sim[0]
        sim = np.repeat(sim, len(photos), axis=0)
    else:
        own = np.diag(sim).copy()
    labels = photos.labels
    same_person_render = []  # render vs OTHER photos of the same person
    for i in range(len(labels)):
        m = labels == labels[i]
        m[i] = False
        if m.any():
            same_person_render.append(sim[i, m])
    spr = np.concatenate(same_person_render) if same_person_render else np.zeros(0)
    return {
        "name": name,
        **similarity_metrics(own, same, diff),
        "mean_render_vs_other_photos_same_person": float(spr.mean()) if len(spr) else float("nan"),
        **recall_metrics(sim, labels),
        "own_similarities": own,
    }


def _colour_metrics(model, shape, color, labels) -> dict:
    """Colour consistency (:mod:`facefit.evaluation.colour`): mean CIEDE2000 between the median
    predicted face colours of same-person and of different-people photo pairs."""
    from .colour import colour_consistency, median_face_colours

    if not getattr(model, "n_color", 0):
        return {}
    med = []
    with torch.no_grad():
        for a in range(0, len(shape), 64):
            _, cols = model.decode(np.asarray(shape[a:a + 64]), np.asarray(color[a:a + 64]))
            med.append(median_face_colours(cols))
    c = colour_consistency(np.concatenate(med), labels)
    return {"colour_de00_same": c["de00_same"], "colour_de00_diff": c["de00_diff"]}


def _other_net_hint(training_nets: set) -> str:
    """`` (e.g. NAME)`` with a registered network none of the checkpoints was trained with."""
    from facefit.recognition import available_nets

    known = available_nets()
    others = [n for n in ["sface", "facenet"] + known if n in known and n not in training_nets]
    return f" (e.g. {others[0]})" if others else " (no other recognition network is registered)"


def evaluate_identity(
    photo_dir,
    checkpoints: Mapping[str, str],
    cfg: IdentityEvalConfig,
    *,
    model=None,
    device=None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict:
    """Run the likeness benchmark for one or several checkpoints.

    Args:
        photo_dir: labelled photo folder.
        checkpoints: display name -> checkpoint path (in report order).
        cfg: :class:`IdentityEvalConfig`.
        model: morphable model name/path/object (default: resolved per checkpoint).
        device: torch device for the regressors.
        progress: callback ``(stage, done, total)``.
    Returns:
        results dict: ``config``, ``photos`` (count, people, skipped), ``reference`` (the
        photo-pair distributions' sizes and means), ``checkpoints`` (name -> metrics),
        ``mean_face`` (reference metrics) and ``per_photo`` (path, person, own similarity per
        checkpoint); plus private ``_`` entries (distributions, example images) for figures.
    Raises:
        FacefitError: the evaluation network is the one a checkpoint was trained with, or
        unusable photos/checkpoints.
    """
    from facefit.devset import list_labelled
    from facefit.metrics import pair_similarities
    from facefit.recognition import get_net
    from facefit.reconstruction import Reconstructor

    if not checkpoints:
        raise FacefitError("no checkpoint to evaluate")
    t0 = time.perf_counter()
    rows = list_labelled(photo_dir, per_person=cfg.per_person, people=cfg.people)
    if len({lab for _, lab in rows}) < 2:
        raise FacefitError(f"{photo_dir}: need photos of at least two people")
    infos = {name: {"path": str(path), **checkpoint_summary(path)} for name, path in checkpoints.items()}
    for name, info in infos.items():
        if cfg.eval_net in {info["encoder"], *info.get("identity_nets", [])}:
            raise FacefitError(
                f"checkpoint '{name}' was trained with the '{cfg.eval_net}' network; evaluating with the same network "
                f"would flatter it: choose another --eval-net{_other_net_hint({n for i in infos.values() for n in [i['encoder'], *i.get('identity_nets', [])]})}"
            )
    eval_net = get_net(cfg.eval_net)
    recs = {}
    for name, path in checkpoints.items():
        recs[name] = Reconstructor(path, model, device, cfg.detector, refine=cfg.refine,
                                   refine_shape=cfg.refine_shape)
    kinds = [(r.encoder.crop, int(r.encoder.input_size)) for r in recs.values()]
    photos = load_photos(photo_dir, eval_net, kinds, cfg, progress, rows=rows)
    if len(set(photos.labels.tolist())) < 2:
        raise FacefitError(f"{photo_dir}: need photos of at least two people")
    same, diff = pair_similarities(photos.embeddings, photos.labels)

    results_ck, coeffs = {}, {}

    def score(row: str, rec, shape, color, checkpoint: dict) -> None:
        """Render one row's predictions frontally and judge them with the evaluation network."""
        rend = render_frontal(rec.model, shape, color, crop=eval_net.crop, crop_size=int(eval_net.input_size),
                              render_size=cfg.render_size)
        m = _evaluate_renders(row, embed_crops(eval_net, rend["crops"]), photos, same, diff)
        m.update(_colour_metrics(rec.model, shape, color, photos.labels))
        m["checkpoint"] = checkpoint
        results_ck[row] = m
        coeffs[row] = (shape, color, rend["crops"][: max(cfg.examples * 4, 1)])

    first_model = None
    for k, (name, rec) in enumerate(recs.items()):
        crops = photos.crops[(rec.encoder.crop, int(rec.encoder.input_size))]
        shape, color = rec.decode(rec.encode(crops))
        score(name, rec, shape, color, infos[name])
        if cfg.refine:  # the same predictions after per-photo identity refinement
            rs, rcol, refs = rec.refine(crops, shape, color)
            score(f"{name} +refine {cfg.refine}", rec, rs, rcol,
                  {**infos[name], "refine_steps": int(cfg.refine), "refine_shape": bool(cfg.refine_shape),
                   "train_net_identity_before": float(np.mean([r["identity_before"] for r in refs])),
                   "train_net_identity_after": float(np.mean([r["identity_after"] for r in refs]))})
        if first_model is None:
            first_model = rec.model
        if progress:
            progress("checkpoints", k + 1, len(recs))
    mean_r = render_frontal(first_model, np.zeros((1, first_model.n_shape), np.float32), None,
                            crop=eval_net.crop, crop_size=int(eval_net.input_size), render_size=cfg.render_size)
    mean_m = _evaluate_renders(MEAN_FACE, embed_crops(eval_net, mean_r["crops"]), photos, same, diff)

    per_photo = []
    for i in range(len(photos)):
        row = {"path": photos.paths[i], "person": str(photos.labels[i])}
        for name, m in results_ck.items():
            row[name] = float(m["own_similarities"][i])
        row[MEAN_FACE] = float(mean_m["own_similarities"][i])
        per_photo.append(row)
    people = sorted(set(photos.labels.tolist()))
    return {
        "benchmark": "identity",
        "photo_dir": str(photo_dir),
        "config": asdict(cfg),
        "photos": {"n": len(photos), "people": len(people), "skipped": photos.skipped},
        "reference": {
            "n_same_pairs": int(len(same)), "n_diff_pairs": int(len(diff)),
            "mean_same": float(np.mean(same)) if len(same) else float("nan"),
            "mean_diff": float(np.mean(diff)) if len(diff) else float("nan"),
        },
        "checkpoints": {n: {k: v for k, v in m.items() if k != "own_similarities"} for n, m in results_ck.items()},
        "mean_face": {k: v for k, v in mean_m.items() if k != "own_similarities"},
        "per_photo": per_photo,
        "seconds": time.perf_counter() - t0,
        "_same": same,
        "_diff": diff,
        "_own": {**{n: m["own_similarities"] for n, m in results_ck.items()}, MEAN_FACE: mean_m["own_similarities"]},
        "_photos": photos,
        "_renders": {n: c[2] for n, c in coeffs.items()},
        "_mean_render": mean_r["crops"][0],
        "_eval_crop": (eval_net.crop, int(eval_net.input_size)),
    }


# ---------------------------------------------------------------------------------------
# report


def summary_rows(results: dict) -> tuple[list, list]:
    """(headers, rows) of the terminal summary (one row per checkpoint, the mean face, chance)."""
    headers = ["renders", "sim own", "EMD same", "EMD diff", "top1", "top5", "top1*", "top5*", "ΔE00 same", "ΔE00 diff"]
    rows = []
    for name, m in list(results["checkpoints"].items()) + [("mean face", results["mean_face"])]:
        rows.append([name, m["mean_own"], m["emd_to_same"], m["emd_to_diff"], m["top1"], m["top5"],
                     m.get("top1_excl_self"), m.get("top5_excl_self"), m.get("colour_de00_same"),
                     m.get("colour_de00_diff")])
    any_m = results["mean_face"]
    rows.append(["chance", None, None, None, any_m["chance_top1"], any_m["chance_top5"],
                 any_m.get("chance_top1_excl_self"), any_m.get("chance_top5_excl_self"), None, None])
    return headers, rows


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "checkpoint"


def write_identity_report(results: dict, out_dir) -> tuple[Path, Path]:
    """Write ``report.md``, ``results.json`` and the figures of an identity run.

    Returns:
        (report path, results path).
    """
    cfg = results["config"]
    ref = results["reference"]
    names = list(results["checkpoints"])
    ablation = len(names) > 1
    with Report("facefit eval identity — likeness on real photos" + (" (ablation)" if ablation else ""), out_dir) as rep:
        ph = results["photos"]
        rep.text(
            f"Photos: `{results['photo_dir']}` — {ph['n']} photos of {ph['people']} people with a detected face "
            f"({len(ph['skipped'])} skipped). Evaluation network: **{cfg['eval_net']}** (held out: not the training "
            f"network of any checkpoint). Renders: frontal, fixed camera and studio lighting, grey background, "
            f"{cfg['render_size']} px.\n\n"
            f"Photo-pair reference distributions: same person {ref['n_same_pairs']} pairs (mean cosine "
            f"{ref['mean_same']:.3f}), different people {ref['n_diff_pairs']} pairs (mean {ref['mean_diff']:.3f})."
        )
        rows = []
        for name, m in results["checkpoints"].items():
            ck = m["checkpoint"]
            rows.append([name, ck.get("ablation", "–"), ck["encoder"], ck.get("step"), Path(ck["path"]).name])
        rep.table(["name", "training", "encoder", "step", "file"], rows, title="Checkpoints")
        t2 = [[n, m["mean_own"], m["std_own"], m["mean_render_vs_other_photos_same_person"], m["emd_to_same"],
               m["emd_to_diff"]] for n, m in list(results["checkpoints"].items()) + [(MEAN_FACE, results["mean_face"])]]
        rep.table(["renders of", "mean sim. photo–own render", "std", "mean sim. render–other photos of person",
                   "EMD to same person", "EMD to different people"], t2,
                  title="Similarity distributions (Table 2)",
                  note=f"Cosine similarities with {cfg['eval_net']}. Same-person photo pairs average {ref['mean_same']:.3f}, "
                       f"different-people pairs {ref['mean_diff']:.3f}. A good reconstruction has a small EMD to the "
                       "same-person distribution and a large one to the different-people distribution.")
        t3 = [[n, m["top1"], m["top5"], m.get("top1_excl_self"), m.get("top5_excl_self")]
              for n, m in list(results["checkpoints"].items()) + [(MEAN_FACE, results["mean_face"])]]
        t4 = [[n, m.get("colour_de00_same"), m.get("colour_de00_diff")] for n, m in results["checkpoints"].items()]
        rep.table(["predictions of", "ΔE00 same person", "ΔE00 different people"], t4,
                  title="Colour consistency",
                  note="Mean CIEDE2000 colour difference (Sharma et al. 2005) between the median predicted face colours "
                       "(albedo, over the mesh's vertices) of two photos: same-person pairs vs different-people pairs. "
                       "Colour that follows the person, not the photo's lighting, gives a small same-person value "
                       "next to a larger different-people value.")
        mf = results["mean_face"]
        t3.append(["random chance", mf["chance_top1"], mf["chance_top5"], mf.get("chance_top1_excl_self"),
                   mf.get("chance_top5_excl_self")])
        rep.table(["renders of", "top-1", "top-5", "top-1 w/o own photo", "top-5 w/o own photo"], t3,
                  title="Identity clustering recall (Table 3)",
                  note=f"For each render, all {ph['n']} photos ranked by similarity; recall of the right person. "
                       f"*w/o own photo*: the render's source photo removed from the gallery "
                       f"({mf.get('n_queries_excl_self', 0)} queries of people with two or more photos).")

        same, diff, own = results["_same"], results["_diff"], results["_own"]
        lo = float(min(np.min(same) if len(same) else 0, np.min(diff) if len(diff) else 0,
                       min(float(np.min(v)) for v in own.values())))
        xlim = (min(-0.2, lo), 1.0)
        for name in names:
            p = plot_histograms({"photo vs own render": own[name], "same person (photo pairs)": same,
                                 "different people (photo pairs)": diff, "photo vs mean-face render": own[MEAN_FACE]},
                                rep.path(f"similarity_{_slug(name)}.png"), bins=cfg["bins"], xlim=xlim,
                                title=f"Similarity distributions — {name} ({cfg['eval_net']})",
                                xlabel="cosine similarity",
                                colors={"photo vs own render": "C0", "same person (photo pairs)": "C2",
                                        "different people (photo pairs)": "C3", "photo vs mean-face render": "C7"})
            rep.figure(p, f"Figure 5 for {name}: photo-vs-own-render similarities next to the same-person and "
                          "different-people photo pairs and the mean-face reference (dashed lines: means).")
        if ablation:
            series = {n: own[n] for n in names}
            series.update({"same person (photo pairs)": same, "different people (photo pairs)": diff})
            p = plot_histograms(series, rep.path("similarity_ablation.png"), bins=cfg["bins"], xlim=xlim,
                                title="Photo vs own render, per checkpoint", xlabel="cosine similarity")
            rep.figure(p, "Ablation: the photo-vs-own-render distribution of each checkpoint.")
        groups = names + [MEAN_FACE]
        allm = {**results["checkpoints"], MEAN_FACE: results["mean_face"]}
        p = plot_bars(groups, {"top-1": [allm[g]["top1"] for g in groups], "top-5": [allm[g]["top5"] for g in groups]},
                      rep.path("recall.png"), title="Identity clustering recall", ylabel="recall",
                      hlines={"chance top-1": mf["chance_top1"], "chance top-5": mf["chance_top5"]},
                      hline_colors=["C0", "C1"])
        rep.figure(p, "Top-1 / top-5 recall of the right person (own photo in the gallery), with chance levels.")

        photos = results.get("_photos")
        renders = results.get("_renders")
        if photos is not None and renders:
            crop_key = results["_eval_crop"]
            seen, idx = set(), []
            for i, lab in enumerate(photos.labels.tolist()):
                if lab not in seen and i < min(len(v) for v in renders.values()):
                    seen.add(lab)
                    idx.append(i)
                if len(idx) >= cfg["examples"]:
                    break
            grid = []
            mean_img = results["_mean_render"].permute(1, 2, 0).numpy()
            for i in idx:
                row = [photos.crops[crop_key][i]] + [renders[n][i].permute(1, 2, 0).numpy() for n in names] + [mean_img]
                grid.append(row)
            titles = [f"{photos.labels[i]}\n" + " ".join(f"{own[n][i]:.2f}" for n in names) for i in idx]
            p = image_sheet(grid, rep.path("examples.png"), col_titles=["photo (eval crop)"] + names + ["mean face"],
                            row_titles=titles)
            rep.figure(p, "Examples: the photo's evaluation crop, the frontal render of each checkpoint's reconstruction "
                          "and the mean face, all as the evaluation network sees them (row label: person and "
                          "photo-vs-render similarity per checkpoint).")
        if ph["skipped"]:
            rep.text("Skipped photos:\n\n" + "\n".join(f"- `{p}`: {why}" for p, why in ph["skipped"][:50]))
        public = {k: v for k, v in results.items() if not k.startswith("_")}
        return rep.write(public)


def print_identity_summary(results: dict, console=None) -> None:
    headers, rows = summary_rows(results)
    ref = results["reference"]
    print_summary(
        f"facefit eval identity ({results['photos']['n']} photos, {results['photos']['people']} people, "
        f"eval net {results['config']['eval_net']})", headers, rows, console=console,
        footer=(f"sim own: mean cosine photo vs own render; EMD to the same-person / different-people photo-pair "
                f"similarities (means {ref['mean_same']:.3f} / {ref['mean_diff']:.3f}); top-k: identity recall; "
                "*: own photo left out of the gallery; ΔE00: mean CIEDE2000 between the median predicted face "
                "colours of same-person / different-people photo pairs"),
    )
