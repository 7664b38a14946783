"""Folder reconstruction throughput, split by stage (JSON).

Runs the real batch job (``facefit.reconstruction.run_batch``: load, detect, align, encode,
decode, write OBJ + manifest) over a folder (default ../shared/data/faces-dev) and reports
photos/s end to end, both over all inputs (photos that failed, e.g. without a face, count:
they were loaded and searched) and over the successful ones only, plus the mean time per
face of each stage, and the encoder + decoder time per face measured separately on a batch.

Usage:  .venv/bin/python benchmarks/bench_reconstruct.py [FOLDER] [--checkpoint CKPT] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.devset import shared_dir  # noqa: E402
from facefit.reconstruction import Reconstructor, run_batch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", nargs="?", default=str((shared_dir() or Path("shared")) / "data" / "faces-dev"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", default="obj")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    stages = {k: [] for k in ("load", "detect", "align", "encode", "decode", "write")}

    def on_item(entry):
        for k, v in (entry.get("timing") or {}).items():
            if k in stages:
                stages[k].append(v)

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: models loaded and caches filled before timing
        Reconstructor(args.checkpoint)
        t0 = time.perf_counter()
        s = run_batch([args.folder], tmp, checkpoint=args.checkpoint, fmt=args.format, progress=False,
                      on_item=on_item, batch_size=32)
        wall = time.perf_counter() - t0

    rec = Reconstructor(args.checkpoint)
    crops = np.random.default_rng(0).integers(0, 255, (32, rec.encoder.input_size, rec.encoder.input_size, 3),
                                              dtype=np.uint8)
    rec.decode(rec.encode(crops[:4]))
    t0 = time.perf_counter()
    for _ in range(3):
        feats = rec.encode(crops)
    t_enc = (time.perf_counter() - t0) / (3 * len(crops))
    t0 = time.perf_counter()
    for _ in range(3):
        rec.decode(feats)
    t_dec = (time.perf_counter() - t0) / (3 * len(crops))

    print(json.dumps({
        "folder": args.folder,
        "threads": args.threads,
        "photos": s.processed + s.failed,
        "photos_ok": s.processed,
        "faces": s.faces,
        "failed": s.failed,
        "seconds": round(wall, 2),
        "photos_per_second_all_inputs": round((s.processed + s.failed) / wall, 2),
        "photos_per_second_successful": round(s.processed / wall, 2),
        "ms_per_face_by_stage": {k: round(1000 * float(np.mean(v)), 2) for k, v in stages.items() if v},
        "encoder_plus_decoder_ms_per_face_batch32": round(1000 * (t_enc + t_dec), 2),
        "encoder_ms_per_face": round(1000 * t_enc, 2),
        "decoder_ms_per_face": round(1000 * t_dec, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
