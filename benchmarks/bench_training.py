"""Benchmark training steps: time per stage-1 and per stage-2 step on this machine.

Stage 1: ``--batch-stage1`` synthetic faces (render, crop, encoder forward, decoder,
parameter loss, backward, Adam). Stage 2: ``--batch-real`` real photos x ``--views``
renders (identity, batch and loopback losses, back-propagated through renderer and
encoder) + ``--batch-synthetic`` synthetic faces. Real photos come from
``../shared/data/faces-dev`` (the first ``--photos`` files, cached under a temporary
folder). Prints one JSON object with median seconds per step and the machine load.

    python benchmarks/bench_training.py [--threads 2] [--render-size 160] [--steps 5]
        [--profile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.training import Trainer, load_config  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render-size", type=int, default=160)
    ap.add_argument("--batch-stage1", type=int, default=16)
    ap.add_argument("--batch-synthetic", type=int, default=8)
    ap.add_argument("--batch-real", type=int, default=8)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per stage (after 1 warm-up step)")
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--data", default=str(SHARED / "data" / "faces-dev"))
    ap.add_argument("--cache-dir", default=None, help="photo cache folder (default: a temporary folder)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one stage-2 step")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    cfg = load_config(
        None,
        {
            "stage": "both",
            "stage1_steps": 1_000_000,
            "stage2_steps": 1_000_000,
            "batch_stage1": args.batch_stage1,
            "batch_synthetic": args.batch_synthetic,
            "batch_real": args.batch_real,
            "views": args.views,
            "render_size": args.render_size,
            "data": args.data,
            "max_photos": args.photos,
            "cache_dir": args.cache_dir or os.path.join(tmp.name, "cache"),
            "cache_workers": 1,
            "threads": args.threads,
            "out": os.path.join(tmp.name, "run"),
            "device": "cpu",
        },
    )
    tr = Trainer(cfg, progress=False)
    t0 = time.perf_counter()
    tr.setup()
    setup_s = time.perf_counter() - t0

    cpu: dict[int, list[float]] = {}

    def timed(first_step: int) -> list[float]:
        ts = []
        cpu[first_step] = []
        for i in range(args.steps + 1):
            t, c = time.perf_counter(), time.process_time()
            tr.train_step(first_step + i)
            ts.append(time.perf_counter() - t)
            cpu[first_step].append(time.process_time() - c)
        cpu[first_step] = cpu[first_step][1:]
        return ts[1:]

    load_before = os.getloadavg()
    s1 = timed(0)
    s2 = timed(cfg.stage1_total)
    load_after = os.getloadavg()
    result = {
        "device": "cpu",
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "render_size": args.render_size,
        "crop": f"{tr.net.crop} {tr.net.input_size}px",
        "encoder": tr.net.name,
        "model": f"{tr.model.name} V={tr.model.n_vertices} F={tr.model.n_triangles}",
        "setup_s": round(setup_s, 2),
        "stage1": {
            "batch_synthetic": args.batch_stage1,
            "median_s": round(statistics.median(s1), 3),
            "min_s": round(min(s1), 3),
            "per_face_s": round(statistics.median(s1) / args.batch_stage1, 4),
            # CPU seconds of all threads per step: insensitive to other processes
            "cpu_s": round(statistics.median(cpu[0]), 3),
        },
        "stage2": {
            "batch_real": args.batch_real,
            "batch_synthetic": args.batch_synthetic,
            "views": args.views,
            "median_s": round(statistics.median(s2), 3),
            "min_s": round(min(s2), 3),
            "cpu_s": round(statistics.median(cpu[cfg.stage1_total]), 3),
        },
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tr.train_step(cfg.stage1_total + 100)
        print(prof.key_averages().table(sort_by=os.environ.get("PROF_SORT", "cpu_time_total"), row_limit=int(os.environ.get("PROF_ROWS", "30"))), file=sys.stderr)
    print(json.dumps(result, indent=2))
    tr.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
