"""Recognition networks on real faces: detection rate, same/different-person similarity,
verification ROC AUC and time per face, on a labelled folder (default ../shared/data/faces-dev).

Usage:  .venv/bin/python benchmarks/bench_recognition.py [FOLDER] [--nets dlib,facenet,sface]
Prints JSON.
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

from facefit.devset import detect_labelled, list_labelled, shared_dir  # noqa: E402
from facefit.errors import FacefitError  # noqa: E402
from facefit.faces.alignment import crop_for_net  # noqa: E402
from facefit.metrics import pair_similarities, roc_auc  # noqa: E402
from facefit.recognition.registry import get_net  # noqa: E402


def evaluate(folder, nets=("dlib", "sface", "facenet"), detector="dlib", per_person=None):
    rows = list_labelled(folder, per_person=per_person)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # timings depend on it
    t0 = time.perf_counter()
    photos = detect_labelled(rows, detector=detector)
    t_det = (time.perf_counter() - t0) / len(rows)
    ok = [p for p in photos if p.face is not None]
    result = {
        "folder": str(folder),
        "photos": len(rows),
        "identities": len({r[1] for r in rows}),
        "detector": detector,
        "detected": len(ok),
        "detection_rate": len(ok) / len(rows),
        "detect_s_per_photo": round(t_det, 4),
        "load_average_1min_at_start": None if load is None else round(load, 2),
        "cpu_count": os.cpu_count(),
        "nets": {},
    }
    labels = [p.identity for p in ok]
    for name in nets:
        try:
            net = get_net(name)
        except FacefitError as e:
            result["nets"][name] = {"available": False, "reason": str(e)}
            continue
        crops = np.stack([crop_for_net(p.image, p.face, net.crop, net.input_size) for p in ok])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        torch.set_num_threads(2)
        with torch.no_grad():
            net.embed(x[:4])  # warm-up
            t0 = time.perf_counter()
            emb = torch.cat([net.embed(x[i:i + 32]) for i in range(0, len(x), 32)])
            t_face = (time.perf_counter() - t0) / len(x)
        same, diff = pair_similarities(emb.numpy(), labels)
        result["nets"][name] = {
            "available": True,
            "same_pairs": int(len(same)),
            "different_pairs": int(len(diff)),
            "same_mean": round(float(same.mean()), 4),
            "same_p05_p95": [round(float(np.quantile(same, q)), 4) for q in (0.05, 0.95)],
            "different_mean": round(float(diff.mean()), 4),
            "different_p05_p95": [round(float(np.quantile(diff, q)), 4) for q in (0.05, 0.95)],
            "roc_auc": round(roc_auc(same, diff), 5),
            "ms_per_face": round(1000 * t_face, 2),
        }
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    default = (shared_dir() or Path("shared")) / "data" / "faces-dev"
    ap.add_argument("folder", nargs="?", default=str(default))
    ap.add_argument("--nets", default="dlib,facenet,sface")
    ap.add_argument("--detector", default="dlib")
    args = ap.parse_args()
    print(json.dumps(evaluate(args.folder, args.nets.split(","), args.detector), indent=2))


if __name__ == "__main__":
    main()
