"""Video tracking speed and stability (``--fuse --pose``), JSON.

Makes a 640x480, 25 fps test video from ``examples/astronaut.png`` (the photo turning in
the image plane by up to +-8 degrees and sliding sideways), tracks it with a fixed identity
(:func:`facefit.avatar.track.track_video`, every frame, default smoothing) and reports the
milliseconds per tracked frame, split into the 68-point landmark predictor and the pose /
expression fit (what tracking adds per frame), the face detector and the full first-frame
fit (paid on the first frame and on re-detections), and video decoding; plus the roll error
against the known image rotation (up to the photo's own, unknown roll: mean removed) and the
frame-to-frame jitter (mean |second difference| of roll) with and without smoothing.

Usage:  python benchmarks/bench_track.py [--frames 50] [--out benchmarks/results/track.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.avatar.track import track_video  # noqa: E402


def make_video(path: Path, n: int, fps: float = 25.0) -> np.ndarray:
    """Write the test video; returns the applied rotation per frame (degrees)."""
    import cv2

    img = cv2.imread(str(Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"))
    img = cv2.resize(img, (480, 480), interpolation=cv2.INTER_AREA)
    W, H = 640, 480
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    angles = 8.0 * np.sin(np.arange(n) / 6.0)
    for k, a in enumerate(angles):
        canvas = np.full((H, W, 3), 90, np.uint8)
        x = int(80 + 30 * np.sin(k / 9.0))
        canvas[:, x:x + 480] = img
        M = cv2.getRotationMatrix2D((x + 240.0, 160.0), float(a), 1.0)
        w.write(cv2.warpAffine(canvas, M, (W, H), borderMode=cv2.BORDER_REPLICATE))
    w.release()
    return angles


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "track.json"))
    args = ap.parse_args()
    import torch

    from facefit.faces.detection import detect_faces
    from facefit.model_io import resolve_model

    torch.set_num_threads(1)
    model = resolve_model(None)
    shape = np.zeros(model.n_shape)
    with tempfile.TemporaryDirectory() as tmp:
        vid = Path(tmp) / "clip.mp4"
        angles = make_video(vid, args.frames)
        # warm-up (model loading, caches): a short track of the same video
        detect_faces(np.zeros((64, 64, 3), np.uint8))
        track_video(model, shape, vid, max_frames=3)
        t0 = time.perf_counter()
        tr = track_video(model, shape, vid)
        wall = time.perf_counter() - t0
        raw = track_video(model, shape, vid, smooth=0)
    s = tr.summary()
    # the photo's own roll is unknown: errors after removing the mean offset
    roll_err = tr.roll - angles[tr.frames]
    roll_err -= roll_err.mean()
    roll_err_raw = raw.roll - angles[raw.frames]
    roll_err_raw -= roll_err_raw.mean()
    res = {
        "video": {"frames": args.frames, "size": [480, 640], "fps": 25.0, "source": "examples/astronaut.png, rotated +-8 deg"},
        "ms_per_tracked_frame": s["ms_per_frame"],
        "ms_landmarks_per_frame": s["ms_landmarks_per_frame"],
        "ms_fit_per_frame": s["ms_fit_per_frame"],
        "ms_per_detection": s["ms_per_detection"],
        "ms_first_frame_fit": s["ms_per_init_fit"],
        "ms_decode_per_frame": s["ms_decode_per_frame"],
        "redetections": s["redetections"], "frames_tracked": s["frames_tracked"], "frames_lost": s["frames_lost"],
        "wall_seconds": wall, "wall_ms_per_frame": 1000 * wall / args.frames,
        "roll_error_deg_rms_smoothed": float(np.sqrt(np.mean(roll_err**2))),
        "roll_error_deg_rms_unsmoothed": float(np.sqrt(np.mean(roll_err_raw**2))),
        "roll_jitter_deg_smoothed": float(np.abs(np.diff(tr.roll, 2)).mean()),
        "roll_jitter_deg_unsmoothed": float(np.abs(np.diff(raw.roll, 2)).mean()),
        "smooth_s": s["smooth_s"], "threads": 1, "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
