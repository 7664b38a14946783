"""Reconstruction throughput (JSON): the library path by stage and, with ``--cli``, the
command line as a user runs it, against an older facefit measured in the same run.

Library path (always; the engine ``run_batch`` picks, ``FACEFIT_ENGINE=torch`` for the
torch path): the real batch job (``facefit.batch.job.run_batch``: load,
detect, align, encode, decode, write OBJ + MTL + texture + manifest) over a folder (default
../shared/data/faces-dev), photos/s over all inputs and over the successful ones, the mean
time per face of each stage, and the encoder + decoder time per face on a batch.

Command line (``--cli``): ``python -m facefit reconstruct`` in a subprocess, for

* the folder (``folder_small``),
* a folder of large photos (``folder_large``: the first ``--large-n`` photos of the folder
  upscaled to ``--large-side`` px, made in a temporary folder),
* one photo, cold (``one_photo``: ``examples/astronaut.png -o face.obj``, a new process
  each time), and ``--help`` / ``--version``,

each run for this checkout ("new") and, with ``--old-ref REF``, for that git commit of this
repository ("old", extracted with ``git archive`` into a temporary folder), interleaved
(old, new, old, new, ...) so that both see the same machine load. Reported per case:
seconds, CPU seconds (of the whole process tree) and photos/s of each run, the medians,
``speedup`` = old median / new median seconds, ``cpu_ratio`` = old / new median CPU
seconds (the steadier number on a shared machine), and for folder jobs the peak memory of the whole process tree (sum of PSS of the
CLI process and its worker processes, sampled every 50 ms) and of its largest process
(``ru_maxrss``). The load average of the machine before and after is recorded: on a
shared machine the absolute numbers move, the ratios much less.

With ``--old-ref`` the commit of ``benchmarks/targets.json`` (issue 15's reference), the
output's ``cli.targets`` says which of the issue's targets the measured speed-ups meet.

Usage:
  .venv/bin/python benchmarks/bench_reconstruct.py [FOLDER] [--checkpoint CKPT] [--threads 1]
  .venv/bin/python benchmarks/bench_reconstruct.py --cli --old-ref aca9dd3 --repeats 2 \\
      --out benchmarks/results/reconstruct.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facefit.devset import shared_dir  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------- library path


def _reconstructor(checkpoint, engine: str):
    """The inference engine the batch job uses (``facefit.batch.lite`` for plain jobs, else torch)."""
    if engine == "lite":
        from facefit.batch.lite import make_lite_reconstructor

        return make_lite_reconstructor(checkpoint)
    from facefit.reconstruction import Reconstructor

    return Reconstructor(checkpoint)


def library_path(folder: str, checkpoint, threads: int, fmt: str) -> dict:
    from facefit.batch.lite import engine_setting
    from facefit.batch.job import run_batch

    engine = "torch" if engine_setting() == "torch" else "lite"
    if engine == "torch":
        import torch

        torch.set_num_threads(threads)
    stages = {k: [] for k in ("load", "detect", "align", "encode", "decode", "write")}

    def on_item(entry):
        for k, v in (entry.get("timing") or {}).items():
            if k in stages:
                stages[k].append(v)

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: models loaded and caches filled before timing
        _reconstructor(checkpoint, engine)
        self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        s = run_batch([folder], tmp, checkpoint=checkpoint, fmt=fmt, progress=False, on_item=on_item, batch_size=32)
        wall = time.perf_counter() - t0
        self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_main = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    cpu_workers = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    n_in = s.processed + s.failed
    cores = min(2, os.cpu_count() or 1)

    rec = _reconstructor(checkpoint, s.engine)
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
    from facefit.batch import worker_count

    return {
        "folder": folder,
        "engine": s.engine,
        "threads": threads,
        "workers": worker_count(s.processed + s.failed),
        "photos": s.processed + s.failed,
        "photos_ok": s.processed,
        "faces": s.faces,
        "failed": s.failed,
        "seconds": round(wall, 2),
        "photos_per_second_all_inputs": round((s.processed + s.failed) / wall, 2),
        "photos_per_second_successful": round(s.processed / wall, 2),
        # per-face stage times: load/detect/align are measured in the worker processes
        "ms_per_face_by_stage": {k: round(1000 * float(np.mean(v)), 2) for k, v in stages.items() if v},
        # CPU per input of the main process (encode, decode, write) and of the detection
        # workers (load, detect, align); with them, the throughput an otherwise idle machine
        # with `cores` cores would reach: limited by the main process or by all the work
        "cpu_ms_per_input_main": round(1000 * cpu_main / max(n_in, 1), 2),
        "cpu_ms_per_input_workers": round(1000 * cpu_workers / max(n_in, 1), 2),
        "idle_estimate_cores": cores,
        "idle_estimate_photos_per_second": round(n_in / max(cpu_main, (cpu_main + cpu_workers) / cores, 1e-9), 2),
        "encoder_plus_decoder_ms_per_face_batch32": round(1000 * (t_enc + t_dec), 2),
        "encoder_ms_per_face": round(1000 * t_enc, 2),
        "decoder_ms_per_face": round(1000 * t_dec, 3),
    }


# --------------------------------------------------------------------------- command line


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def timed_cli(cmd: list[str], cwd: Path, env: dict, sample_memory: bool) -> dict:
    """Run ``cmd``; wall seconds, peak PSS of its process tree (MB) and ru_maxrss (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.05):
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in _tree(proc.pid)))

    th = threading.Thread(target=sample, daemon=True)
    if sample_memory and os.path.isdir("/proc"):
        th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    if th.is_alive():
        th.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode(errors='replace')[-2000:]}")
    res = {"seconds": round(wall, 3),
           "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)}
    if sample_memory:
        res["peak_tree_pss_mb"] = round(peak[0] / 1024, 1)
        res["peak_rss_mb_largest_process"] = round(after.ru_maxrss / 1024, 1)  # max over all children so far
    return res


def old_checkout(ref: str, into: Path) -> Path:
    """``git archive REF`` of this repository, extracted to ``into``."""
    data = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    tar_path = into.parent / (into.name + ".tar")
    tar_path.write_bytes(data)
    with tarfile.open(tar_path) as t:
        t.extractall(into)
    tar_path.unlink()
    shared = shared_dir()
    if shared is not None and not (into.parent / "shared").exists():  # its ../shared (models, data)
        (into.parent / "shared").symlink_to(shared, target_is_directory=True)
    return into


def large_folder(src: Path, n: int, side: int, into: Path) -> Path:
    import cv2

    into.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    for k, p in enumerate(files):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        big = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(into / f"{k:04d}_{p.stem}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return into


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cli_path(args, folder: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="facefit-bench-"))
    try:
        versions = {"new": old_checkout(args.new_ref, tmp / "new") if args.new_ref else REPO}
        if args.old_ref:
            versions["old"] = old_checkout(args.old_ref, tmp / "old")
        big = large_folder(folder, args.large_n, args.large_side, tmp / "large")
        if args.subset:  # every k-th photo, linked into a temporary folder
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            pick = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(args.subset, len(files)))]
            folder = tmp / "subset"
            for k, p in enumerate(pick):
                (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
                (folder / p.parent.name / p.name).symlink_to(p.resolve())
        env = {**os.environ}
        env.pop("FACEFIT_WORKERS", None)
        n_small = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        extra = ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
        cases = {
            "folder_small": (lambda o: [str(folder), "-o", str(o)], n_small, True),
            "folder_large": (lambda o: [str(big), "-o", str(o)], args.large_n, True),
            "one_photo": (lambda o: [str(REPO / "examples" / "astronaut.png"), "-o", str(o / "face.obj")], 1, False),
        }
        order = [v for v in ("old", "new") if v in versions]
        results: dict = {"load_average_before": _load()}
        # warm-up: each version once on one photo (fills caches of converted weights/models)
        for v in order:
            timed_cli([sys.executable, "-m", "facefit", "reconstruct", *cases["one_photo"][0](tmp / f"warm-{v}"), *extra],
                      versions[v], {**env, "PYTHONPATH": str(versions[v])}, False)
        for name, (argv, n, mem) in cases.items():
            runs: dict = {v: [] for v in order}
            for r in range(args.repeats):
                for v in (order if r % 2 == 0 else order[::-1]):
                    out = tmp / f"{name}-{v}-{r}"
                    res = timed_cli([sys.executable, "-m", "facefit", "reconstruct", *argv(out), *extra],
                                    versions[v], {**env, "PYTHONPATH": str(versions[v])}, mem)
                    res["photos_per_second"] = round(n / res["seconds"], 2)
                    runs[v].append(res)
                    shutil.rmtree(out, ignore_errors=True)
            entry: dict = {"photos": n, "runs": runs}
            for v in order:
                entry[f"{v}_median_seconds"] = round(statistics.median(x["seconds"] for x in runs[v]), 3)
                entry[f"{v}_median_photos_per_second"] = round(n / entry[f"{v}_median_seconds"], 2)
                entry[f"{v}_median_cpu_seconds"] = round(statistics.median(x["cpu_seconds"] for x in runs[v]), 2)
            if "old" in runs:
                entry["speedup"] = round(entry["old_median_seconds"] / entry["new_median_seconds"], 2)
                entry["cpu_ratio"] = round(entry["old_median_cpu_seconds"] / max(entry["new_median_cpu_seconds"], 1e-9), 2)
            results[name] = entry
        for flag in ("--help", "--version"):
            runs = {v: [] for v in order}
            for r in range(args.repeats):
                for v in order:
                    runs[v].append(timed_cli([sys.executable, "-m", "facefit", flag], versions[v],
                                             {**env, "PYTHONPATH": str(versions[v])}, False)["seconds"])
            results[f"cli{flag.replace('--', '_')}"] = {f"{v}_median_seconds": round(statistics.median(runs[v]), 3)
                                                        for v in order}
        results["load_average_after"] = _load()
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TARGETS = Path(__file__).resolve().parent / "targets.json"


def check_targets(cli: dict, targets: dict) -> dict:
    """Issue 15's targets against a ``cli_path`` result whose old version is the targets'
    reference commit: per case the speed-up the target needs (``issue_figure / target``,
    inverted for seconds), the measured one and ``met``; and the peak memory of the folder
    jobs (``new`` runs) against the absolute limit. Empty when the old version was another
    commit (ratios to it say nothing about the targets)."""
    ref = str(targets.get("reference_commit", ""))
    old = str(cli.get("old_ref") or "")
    if not ref or not old or not (old.startswith(ref) or ref.startswith(old)):
        return {}
    out: dict = {}
    for case, t in targets.get("cli", {}).items():
        entry = cli.get(case)
        if not entry or "speedup" not in entry:
            continue
        fig, goal = float(t["issue_figure"]), float(t["target"])
        need = goal / fig if t.get("unit") != "s" else fig / goal
        out[case] = {"required_speedup": round(need, 2), "speedup": entry["speedup"],
                     "met": bool(entry["speedup"] >= need)}
    peaks = [r.get("peak_tree_pss_mb") for case in ("folder_small", "folder_large")
             for r in cli.get(case, {}).get("runs", {}).get("new", []) if r.get("peak_tree_pss_mb") is not None]
    if peaks and "peak_memory_mb" in targets:
        out["peak_memory_mb"] = {"limit": targets["peak_memory_mb"], "measured_max": max(peaks),
                                 "met": bool(max(peaks) <= float(targets["peak_memory_mb"]))}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str((shared_dir() or Path("shared")) / "data" / "faces-dev"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", default="obj")
    ap.add_argument("--cli", action="store_true", help="also time the command line in subprocesses")
    ap.add_argument("--no-library", action="store_true", help="skip the library-path part")
    ap.add_argument("--old-ref", default=None, help="git commit to compare with (e.g. aca9dd3)")
    ap.add_argument("--new-ref", default=None, help="git commit to measure as 'new' (default: this checkout as it is)")
    ap.add_argument("--subset", type=int, default=0, help="CLI folder runs on this many evenly spread photos (0: all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--large-n", type=int, default=40, help="photos in the large-photo folder")
    ap.add_argument("--large-side", type=int, default=1200)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    res: dict = {"machine": {"cpus": os.cpu_count(), "load_average_start": _load()}}
    if not args.no_library:
        res.update(library_path(args.folder, args.checkpoint, args.threads, args.format))
    if args.cli:
        res["cli"] = cli_path(args, Path(args.folder))
        res["cli"].update(old_ref=args.old_ref, new_ref=args.new_ref or "working tree", subset=args.subset)
        targets = check_targets(res["cli"], json.loads(TARGETS.read_text())) if TARGETS.is_file() else {}
        if targets:  # measured against the reference commit: which targets are met
            res["cli"]["targets"] = targets
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
