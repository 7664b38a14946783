"""``facefit eval synthetic``: the geometric protocol on faces with exact ground truth.

Faces are sampled from the morphable model's prior (shape and colour; optionally a little
expression), rendered with a random head pose, two random point lights of a random colour
temperature and a random background, and then go through the realistic pipeline: the face
detector finds the face and its 68 landmarks in the rendered image, and

* **facefit** crops the face for its encoder and decodes the coefficients
  (:class:`facefit.reconstruction.Reconstructor`);
* **landmark fit** (baseline) fits pose, expression and identity shape to the detected
  landmarks by optimisation (:func:`facefit.fitting.fit_landmarks`);
* **mean face** (baseline) predicts the model's mean shape for everyone.

When the detector misses a face, the projected ground-truth landmark vertices stand in for
the detected landmarks (for both facefit's crop and the landmark fit); the report counts
these fallbacks. The ground truth is the sampled identity's *neutral* shape (facefit
reconstructs neutral faces; an expression in the image is a nuisance). Every prediction is
scored with :func:`facefit.evaluation.geometry.evaluate_geometry` (ground truth cropped at
95 mm around its nose tip = the model's landmark 30, ICP with scale, symmetric
point-to-plane distance within the region of overlap) and,
because all meshes share the model's topology, with the dense per-vertex error after a
similarity alignment as a second opinion.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from facefit.errors import FacefitError

from . import neutral_vertices, nose_tip_index, render_frontal
from .appearance import APPEARANCES, appearance_generator, feature_pattern, unseen_albedo, unseen_lighting
from .geometry import DEFAULT_RADIUS_MM, dense_error, evaluate_geometry
from .report import Report, image_sheet, mean_std, plot_boxes, plot_scatter, print_summary

__all__ = ["SyntheticEvalConfig", "SyntheticFaces", "make_synthetic_faces", "evaluate_synthetic",
           "write_synthetic_report", "METHODS"]

#: Methods in report order (the first is facefit).
METHODS = ("facefit", "facefit + refine", "landmark fit", "mean face")


@dataclass
class SyntheticEvalConfig:
    """Settings of ``facefit eval synthetic``.

    Attributes:
        n: number of faces; seed: random seed (same seed, same faces).
        expression: give the rendered faces random expressions (the ground truth stays
            neutral).
        image_size: render side in pixels.
        face_fill: fraction of the image side the face's dlib chip spans.
        yaw_range, pitch_range, roll_range: uniform pose ranges (degrees).
        radius: crop radius of the ground truth around its nose tip (mm).
        fit_steps: optimisation steps of the landmark-fit baseline (0 disables it).
        detector: face detector backend.
        appearance: ``"model"`` (the model's colour model and training's lighting) or
            ``"unseen"`` (flat skin tones and a lighting training never used, see
            :mod:`facefit.evaluation.appearance`); same faces and poses for the same seed.
        refine: identity-refinement steps (``facefit reconstruct --refine``) for an extra
            method row ``"facefit + refine"`` (0: no such row).
        refine_shape: that refinement also moves the shape (``--refine-shape``; default:
            the colour only, which leaves the geometry exactly the regressor's).
    """

    n: int = 50
    seed: int = 0
    expression: bool = False
    image_size: int = 256
    face_fill: float = 0.4
    yaw_range: tuple = (-30.0, 30.0)
    pitch_range: tuple = (-15.0, 15.0)
    roll_range: tuple = (-10.0, 10.0)
    radius: float = DEFAULT_RADIUS_MM
    fit_steps: int = 200
    detector: str = "dlib"
    appearance: str = "model"
    refine: int = 0
    refine_shape: bool = False


@dataclass
class SyntheticFaces:
    """Rendered synthetic faces with their ground truth.

    Attributes:
        images: (N, H, W, 3) uint8 RGB renders.
        shape_coeffs: (N, Ks); color_coeffs: (N, Kc); expr_coeffs: (N, Ke) (zeros without
            expressions).
        yaw, pitch, roll: (N,) degrees.
        landmarks: (N, 68, 2) projected landmark vertices of the rendered (posed, expressive)
            face, pixels.
    """

    images: np.ndarray
    shape_coeffs: np.ndarray
    color_coeffs: np.ndarray
    expr_coeffs: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    landmarks: np.ndarray


@torch.no_grad()
def make_synthetic_faces(model, cfg: SyntheticEvalConfig, coeffs: Optional[dict] = None) -> SyntheticFaces:
    """Sample and render ``cfg.n`` faces (deterministic for a given ``cfg.seed``).

    Args:
        model: MorphableModel with landmarks.
        cfg: :class:`SyntheticEvalConfig` (count, seed, pose ranges, image size, framing).
        coeffs: render these instead of sampling: dict with ``shape_coeffs`` (N, Ks),
            ``color_coeffs`` (N, Kc) and optionally ``expr_coeffs`` (N, Ke) tensors (N
            replaces ``cfg.n``); poses and lighting are still random.
    Returns:
        :class:`SyntheticFaces`.
    """
    from facefit.render import Camera, Lights, euler_to_matrix, random_render_params, render
    from facefit.render.camera import world_to_camera
    from facefit.synthetic import close_holes, frame_for_crop, random_backgrounds, sample_coefficients

    if model.landmarks is None:
        raise FacefitError(f"model '{model.name}' has no landmarks; synthetic evaluation needs them")
    g = torch.Generator().manual_seed(int(cfg.seed))
    size = int(cfg.image_size)
    if coeffs is None:
        coeffs = sample_coefficients(model, int(cfg.n), g, expr_scale=0.5, expr_prob=0.15 if cfg.expression else 0.0)
    else:
        coeffs = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in coeffs.items() if v is not None}
    n = int(coeffs["shape_coeffs"].shape[0])
    params = random_render_params(n, g, yaw_range=tuple(cfg.yaw_range), pitch_range=tuple(cfg.pitch_range),
                                  roll_range=tuple(cfg.roll_range), light_target=(0.0, 0.0, 0.0))
    bg = random_backgrounds(n, size, g)
    cam = Camera.from_fov(15.0, size)
    if cfg.appearance not in APPEARANCES:
        raise FacefitError(f"unknown appearance '{cfg.appearance}' (known: {', '.join(APPEARANCES)})")
    unseen = cfg.appearance == "unseen"
    if unseen:
        ga = appearance_generator(cfg.seed)
        pattern = feature_pattern(torch.tensor(np.array(model.mean_color)))
        u_lights, u_color, _, u_shin, u_spec = unseen_lighting(n, ga, torch.zeros(n, 3))
        params.lights, params.light_color, params.shininess, params.specular = u_lights, u_color, u_shin, u_spec
    images, lms = [], []
    for i in range(0, n, 8):
        sl = slice(i, min(n, i + 8))
        expr = coeffs["expr_coeffs"][sl] if "expr_coeffs" in coeffs else None
        verts, colors = model.decode(coeffs["shape_coeffs"][sl], coeffs["color_coeffs"][sl], expr)
        if unseen:
            colors = unseen_albedo(verts, ga, pattern)
        R = euler_to_matrix(params.yaw[sl], params.pitch[sl], params.roll[sl]).to(verts)
        lm_v = model.landmark_positions(verts)
        t = frame_for_crop(lm_v, R, cam, "dlib_chip", None, cfg.face_fill)
        centre = world_to_camera(lm_v.mean(1, keepdim=True), R, t)[:, 0]
        lights = params.lights[sl]
        lights = Lights(lights.positions + centre.unsqueeze(1), lights.intensities, lights.ambient)
        v2, c2, f2 = close_holes(model, verts, colors)
        out = render(v2, f2, c2, cam, R=R, t=t, lights=lights, light_color=params.light_color[sl],
                     background=bg[sl], shininess=params.shininess[sl], specular=params.specular[sl])
        images.append((out.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        lms.append(model.landmark_positions(out.screen_verts)[..., :2].cpu().numpy())
    e = coeffs.get("expr_coeffs")
    return SyntheticFaces(
        images=np.concatenate(images),
        shape_coeffs=coeffs["shape_coeffs"].numpy(),
        color_coeffs=coeffs["color_coeffs"].numpy(),
        expr_coeffs=(e.numpy() if e is not None else np.zeros((n, 0), np.float32)),
        yaw=params.yaw.numpy(),
        pitch=params.pitch.numpy(),
        roll=params.roll.numpy(),
        landmarks=np.concatenate(lms).astype(np.float64),
    )


def _fallback_face(lm68: np.ndarray):
    """A :class:`~facefit.faces.detection.Face` made from ground-truth landmarks."""
    from facefit.faces.detection import Face, landmarks5_from_68

    lo, hi = lm68.min(0), lm68.max(0)
    return Face(box=np.concatenate([lo, hi]).astype(np.float64), score=float("nan"),
                landmarks5=np.asarray(landmarks5_from_68(lm68), np.float64), landmarks68=lm68.astype(np.float64),
                backend="ground-truth landmarks")


def evaluate_synthetic(
    reconstructor,
    cfg: SyntheticEvalConfig,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict:
    """Run the synthetic benchmark.

    Args:
        reconstructor: a :class:`facefit.reconstruction.Reconstructor` (checkpoint + model).
        cfg: :class:`SyntheticEvalConfig`.
        progress: optional callback ``(stage, done, total)``.
    Returns:
        results dict (JSON-able after :func:`facefit.evaluation.report.to_jsonable`): ``config``,
        ``checkpoint``, ``faces`` (per-face records), ``summary`` (per method: mean, std,
        median of the error and the dense error), ``ratios`` (facefit / each baseline) and
        ``detector_fallbacks``; plus ``_faces`` (the :class:`SyntheticFaces`) and
        ``_predictions`` (method -> (N, Ks) shape coefficients) for the figures.
    """
    from facefit.faces.detection import detect_faces

    model = reconstructor.model
    if cfg.n < 1:
        raise FacefitError("--n must be at least 1")
    t0 = time.perf_counter()
    faces = make_synthetic_faces(model, cfg)
    n = len(faces.images)
    H, W = faces.images.shape[1:3]
    detected, lm_used, crops = [], [], []
    for i in range(n):
        found = detect_faces(faces.images[i], backend=cfg.detector)
        face = found[0] if found else _fallback_face(faces.landmarks[i])
        detected.append(bool(found))
        lm_used.append(np.asarray(face.landmarks68, np.float64))
        crops.append(reconstructor.crop(faces.images[i], face))
        if progress:
            progress("detect", i + 1, n)
    feats = reconstructor.encode(np.stack(crops))
    pred_facefit, pred_color = reconstructor.decode(feats)
    preds = {"facefit": pred_facefit, "mean face": np.zeros((n, model.n_shape), np.float32)}
    if int(cfg.refine) > 0:
        from facefit.refine import RefineSettings

        saved = reconstructor.refine_settings
        reconstructor.refine_settings = RefineSettings(**{**vars(saved), "steps": int(cfg.refine),
                                                                 "shape_lr": 1.0 if cfg.refine_shape else 0.0})
        try:
            preds["facefit + refine"], _, _ = reconstructor.refine(np.stack(crops), pred_facefit, pred_color)
        finally:
            reconstructor.refine_settings = saved
        if progress:
            progress("refine", n, n)
    fit_info = {}
    if cfg.fit_steps > 0:
        from facefit.fitting import fit_landmarks

        lm = torch.as_tensor(np.stack(lm_used), dtype=torch.float32)
        shapes, errs = [], []
        for i in range(0, n, 16):
            fr = fit_landmarks(model, lm[i:i + 16], (H, W), fit_shape=True, fit_expression=True,
                               steps=int(cfg.fit_steps), return_verts=False)
            shapes.append(fr.shape_coeffs.detach().cpu().numpy())
            errs.append(fr.landmark_error_px.detach().cpu().numpy())
            if progress:
                progress("landmark fit", min(n, i + 16), n)
        preds["landmark fit"] = np.concatenate(shapes)
        fit_info["landmark_error_px"] = np.concatenate(errs)
    methods = [m for m in METHODS if m in preds]

    nose = nose_tip_index(model)
    tris = np.asarray(model.triangles)
    gt_all = neutral_vertices(model, faces.shape_coeffs)
    pred_v = {m: neutral_vertices(model, preds[m]) for m in methods}
    records = []
    for i in range(n):
        rec = {"index": i, "yaw": float(faces.yaw[i]), "pitch": float(faces.pitch[i]), "roll": float(faces.roll[i]),
               "detected": detected[i], "expression": bool(faces.expr_coeffs.shape[1] and np.any(faces.expr_coeffs[i] != 0))}
        if "landmark_error_px" in fit_info:
            rec["fit_landmark_error_px"] = float(fit_info["landmark_error_px"][i])
        gt = gt_all[i]
        for m in methods:
            pv = pred_v[m][i if len(pred_v[m]) > 1 else 0]
            try:
                r = evaluate_geometry(pv, tris, pv[nose], gt, tris, gt[nose], radius=cfg.radius)
                rec[m] = {**r.as_dict(), "dense_mm": dense_error(pv, gt)}
            except FacefitError as e:
                rec[m] = {"error_mm": float("nan"), "failed": str(e)}
        records.append(rec)
        if progress:
            progress("measure", i + 1, n)

    summary = {}
    for m in methods:
        e = [r[m]["error_mm"] for r in records]
        d = [r[m].get("dense_mm", float("nan")) for r in records]
        mu, sd, k = mean_std(e)
        dmu, dsd, _ = mean_std(d)
        fin = np.asarray(e, np.float64)
        fin = fin[np.isfinite(fin)]
        summary[m] = {"appearance": cfg.appearance, "mean_mm": mu, "std_mm": sd, "median_mm": float(np.median(fin)) if len(fin) else float("nan"),
                      "dense_mean_mm": dmu, "dense_std_mm": dsd, "n": k,
                      "scale_mean": mean_std([r[m].get("scale", float("nan")) for r in records])[0]}
    if "mean face" in summary:
        for m in methods:
            mf = summary["mean face"]["mean_mm"]
            summary[m]["ratio_to_mean_face"] = summary[m]["mean_mm"] / mf if mf else float("nan")
    ratios = {}
    for m in methods[1:]:
        a = np.asarray([r["facefit"]["error_mm"] for r in records], np.float64)
        b = np.asarray([r[m]["error_mm"] for r in records], np.float64)
        ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
        ratios[m] = {
            "ratio_of_means": summary["facefit"]["mean_mm"] / summary[m]["mean_mm"] if summary[m]["mean_mm"] else float("nan"),
            "median_per_face_ratio": float(np.median(a[ok] / b[ok])) if ok.any() else float("nan"),
            "facefit_better_fraction": float(np.mean(a[ok] < b[ok])) if ok.any() else float("nan"),
        }
    return {
        "benchmark": "synthetic",
        "config": asdict(cfg),
        "checkpoint": str(reconstructor.checkpoint),
        "model": {"name": model.name, "hash": model.content_hash},
        "encoder": getattr(reconstructor.encoder, "name", ""),
        "n_faces": n,
        "detector_fallbacks": int(n - sum(detected)),
        "summary": summary,
        "ratios": ratios,
        "faces": records,
        "seconds": time.perf_counter() - t0,
        "_faces": faces,
        "_predictions": preds,
    }


def summary_rows(results: dict) -> tuple[list, list]:
    """(headers, rows) of the headline table."""
    headers = ["method", "mean mm", "std", "median", "dense mm", "facefit/method", "method/mean face"]
    rows = []
    for m, s in results["summary"].items():
        ratio = 1.0 if m == "facefit" else results["ratios"].get(m, {}).get("ratio_of_means")
        rows.append([m, s["mean_mm"], s["std_mm"], s["median_mm"], s["dense_mean_mm"], ratio,
                     s.get("ratio_to_mean_face", float("nan"))])
    return headers, rows


def write_synthetic_report(results: dict, out_dir, model=None, sample_faces: int = 6) -> tuple[Path, Path]:
    """Write ``report.md``, ``results.json`` and the figures of a synthetic run.

    Args:
        results: from :func:`evaluate_synthetic`.
        out_dir: output folder.
        model: the MorphableModel (for the renders of the example figure; skipped if None).
        sample_faces: faces shown in the example figure.
    Returns:
        (report path, results path).
    """
    cfg = results["config"]
    with Report("facefit eval synthetic — geometric error on model samples", out_dir) as rep:
        rep.text(
            f"{results['n_faces']} faces sampled from **{results['model']['name']}** (seed {cfg['seed']}), rendered at "
            f"{cfg['image_size']} px with random pose (yaw {cfg['yaw_range']}, pitch {cfg['pitch_range']}, roll "
            f"{cfg['roll_range']} degrees), {_appearance_text(cfg.get('appearance', 'model'))}"
            f"{' and random expressions' if cfg['expression'] else ''}. "
            f"Checkpoint: `{results['checkpoint']}` (encoder `{results['encoder']}`).\n\n"
            f"Protocol: ground truth = the sampled neutral shape, cropped to {cfg['radius']:g} mm around its nose tip "
            "(model landmark 30); ICP with isotropic scale of the whole prediction; symmetric point-to-plane distance "
            "(ground-truth normals) within the region of overlap, in mm. *Dense* = mean per-vertex distance after a similarity "
            "alignment (same topology). Landmarks come from the face detector run on the render "
            f"(`{cfg['detector']}`); it missed {results['detector_fallbacks']} of {results['n_faces']} faces, for which "
            "the projected ground-truth landmarks were used."
        )
        headers, rows = summary_rows(results)
        rep.table(headers, rows, title="Geometric error (mm)",
                  note="*facefit/method*: ratio of mean errors (< 1: facefit is better).")
        if results["ratios"]:
            rrows = [[m, r["ratio_of_means"], r["median_per_face_ratio"], r["facefit_better_fraction"]]
                     for m, r in results["ratios"].items()]
            rep.table(["baseline", "ratio of means", "median per-face ratio", "faces where facefit is better"], rrows,
                      title="facefit relative to the baselines")
        methods = list(results["summary"])
        recs = results["faces"]
        box = plot_boxes({m: [r[m]["error_mm"] for r in recs] for m in methods}, rep.path("errors.png"),
                         title="Per-face geometric error", ylabel="symmetric point-to-plane distance (mm)")
        rep.figure(box, "Per-face error of each method (box: quartiles, triangle: mean).")
        sc = plot_scatter({m: ([abs(r["yaw"]) for r in recs], [r[m]["error_mm"] for r in recs]) for m in methods},
                          rep.path("error_vs_yaw.png"), title="Error against head yaw", xlabel="|yaw| (degrees)",
                          ylabel="error (mm)")
        rep.figure(sc, "Error against the absolute yaw of the rendered face.")
        faces = results.get("_faces")
        preds = results.get("_predictions")
        if model is not None and faces is not None and preds is not None and sample_faces > 0:
            k = min(sample_faces, len(faces.images))
            cols = ["input render", "ground truth"] + methods
            grid = []
            gt_r = render_frontal(model, faces.shape_coeffs[:k], grey=True, crop="dlib_chip", render_size=160, crop_fill=0.8)
            rend = {m: render_frontal(model, preds[m][:k], grey=True, crop="dlib_chip", render_size=160, crop_fill=0.8)
                    for m in methods}
            for i in range(k):
                row = [faces.images[i], gt_r["images"][i].permute(1, 2, 0).numpy()]
                row += [rend[m]["images"][i].permute(1, 2, 0).numpy() for m in methods]
                grid.append(row)
            titles = [f"#{i} {recs[i]['facefit']['error_mm']:.2f} mm" for i in range(k)]
            sheet = image_sheet(grid, rep.path("examples.png"), col_titles=cols, row_titles=titles)
            rep.figure(sheet, "Examples: the input render, then frontal grey renders of the ground-truth neutral shape "
                              "and of each method's prediction (row label: facefit's error).")
        rep.table(["#", "yaw", "pitch", "detected"] + methods,
                  [[r["index"], r["yaw"], r["pitch"], r["detected"]] + [r[m]["error_mm"] for m in methods] for r in recs],
                  title="Per face (error in mm)", digits=2)
        public = {k: v for k, v in results.items() if not k.startswith("_")}
        return rep.write(public)


def _appearance_text(appearance: str) -> str:
    if appearance == "unseen":
        return ("an appearance training never used (flat skin tones with a smooth variation, one close key light, "
                "2200-10000 K, shiny skin; `facefit/evaluation/appearance.py`)")
    return "the model's colour model and random lighting as in training"


def print_synthetic_summary(results: dict, console=None) -> None:
    headers, rows = summary_rows(results)
    app = results["config"].get("appearance", "model")
    print_summary(f"facefit eval synthetic (n={results['n_faces']}, appearance {app}, detector fallbacks {results['detector_fallbacks']})",
                  headers, rows, console=console)
