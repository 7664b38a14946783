"""Pose and expression of a photo against exact ground truth (JSON).

Renders model faces with known head pose (yaw up to +-40 degrees, pitch +-15, roll +-10) and
known blend-shape weights (``jawOpen``, ``mouthSmile_L/R``, sometimes ``eyeBlink_L/R``,
``browInnerUp_L/R``; :func:`facefit.avatar.groundtruth.posed_test_faces`) with facefit's
renderer, detects the face and its 68 landmarks with facefit's detector on the renders (the
real path), fits them with :func:`facefit.avatar.pose.fit_pose` and reports the pose error
(angle of the rotation between fitted and true head pose; per-angle errors) and the
expression-weight errors. Three settings:

* ``detected, regressor identity``: the full ``--pose`` path (identity from the shipped
  regressor run on the render, landmarks from the detector);
* ``detected, true identity``: the same with the true identity (isolates the pose fit);
* ``projected, true identity``: the true landmark vertices projected (no detector noise),
  an upper bound.

Usage:  python benchmarks/bench_pose.py [--n 30] [--seed 1] [--out benchmarks/results/pose.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.avatar.groundtruth import SCORED_SHAPES, posed_test_faces, rotation_error_deg  # noqa: E402
from facefit.avatar.pose import PoseFitError, fit_pose  # noqa: E402


def score(fits, F, keep, names):
    """Errors of a list of PoseFit (None = failed) against faces ``keep`` of ``F``."""
    ok = [k for k, p in zip(keep, fits) if p is not None]
    ps = [p for p in fits if p is not None]
    if not ps:
        return {"n": 0}
    yaw, pitch, roll = (np.array([getattr(p, a) for p in ps]) for a in ("yaw", "pitch", "roll"))
    rot = rotation_error_deg(yaw, pitch, roll, F.yaw[ok], F.pitch[ok], F.roll[ok])
    E = np.stack([p.expr_coeffs for p in ps]).astype(np.float64)
    T = F.expr_coeffs[ok].astype(np.float64)
    out = {
        "n": len(ps), "failed": len(fits) - len(ps),
        "rotation_error_deg_median": float(np.median(rot)), "rotation_error_deg_p90": float(np.percentile(rot, 90)),
        "rotation_error_deg_max": float(rot.max()),
        "yaw_error_deg_median": float(np.median(np.abs(yaw - F.yaw[ok]))),
        "pitch_error_deg_median": float(np.median(np.abs(pitch - F.pitch[ok]))),
        "roll_error_deg_median": float(np.median(np.abs(roll - F.roll[ok]))),
        "rotation_error_deg_median_abs_yaw_over_20": float(np.median(rot[np.abs(F.yaw[ok]) >= 20])) if (np.abs(F.yaw[ok]) >= 20).any() else None,
        "expression_mae_all_shapes": float(np.abs(E - T).mean()),
        "expression_mae": {n: float(np.abs(E[:, names.index(n)] - T[:, names.index(n)]).mean()) for n in SCORED_SHAPES if n in names},
        "expression_bias": {n: float((E[:, names.index(n)] - T[:, names.index(n)]).mean()) for n in SCORED_SHAPES if n in names},
        "landmark_error_median": float(np.median([p.landmark_error for p in ps])),
    }
    sm = [names.index(n) for n in ("mouthSmile_L", "mouthSmile_R")]
    out["expression_mae"]["mouthSmile (L+R)/2"] = float(np.abs(E[:, sm].mean(1) - T[:, sm].mean(1)).mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pose.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from facefit.faces.detection import detect_faces
    from facefit.reconstruction import InputItem, Reconstructor

    rec = Reconstructor(args.checkpoint)
    model = rec.model
    names = list(model.expr_names)
    t0 = time.perf_counter()
    F = posed_test_faces(model, args.n, seed=args.seed)
    t_render = time.perf_counter() - t0
    keep, det, reg_shapes = [], [], []
    t0 = time.perf_counter()
    for i, img in enumerate(F.images):
        faces = detect_faces(img)
        if faces and faces[0].landmarks68 is not None:
            keep.append(i)
            det.append(faces[0].landmarks68)
    t_detect = (time.perf_counter() - t0) / len(F.images)
    for i in keep:
        _, crops, _ = rec.faces_of(InputItem(Path(f"render{i}"), f"render{i}", None, F.images[i]))
        shapes, _ = rec.decode(rec.encode(np.stack([crops[0][1]])))
        reg_shapes.append(shapes[0])

    def run(lms, shapes):
        out, secs = [], []
        for lm, s in zip(lms, shapes):
            t = time.perf_counter()
            try:
                out.append(fit_pose(model, s, lm, F.images.shape[1:3]))
            except PoseFitError:
                out.append(None)
            secs.append(time.perf_counter() - t)
        return out, float(np.median(secs))

    settings = {}
    for label, lms, shapes in (
        ("detected landmarks, regressor identity", det, reg_shapes),
        ("detected landmarks, true identity", det, [F.shape_coeffs[i] for i in keep]),
        ("projected landmark vertices, true identity", [F.landmarks[i] for i in keep], [F.shape_coeffs[i] for i in keep]),
    ):
        fits, sec = run(lms, shapes)
        settings[label] = {**score(fits, F, keep, names), "seconds_per_fit_median": sec}
    res = {
        "faces": args.n, "seed": args.seed, "detected": len(keep), "image_size": int(F.images.shape[1]),
        "pose_ranges_deg": {"yaw": 40, "pitch": 15, "roll": 10},
        "seconds_render_all": t_render, "seconds_detect_per_face": t_detect,
        "settings": settings, "threads": 1, "load_average_1min": os.getloadavg()[0],
        "model": model.name, "regressor": rec.checkpoint_info.get("regressor"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
