"""Detection rate and speed of each face-detector backend on faces-dev (prints JSON).

Usage:
    python benchmarks/bench_detection.py [--data ../shared/data/faces-dev] [--backends dlib,mtcnn,yunet]
    python benchmarks/bench_detection.py --calibrate   # MTCNN/YuNet box vs HOG box
    python benchmarks/bench_detection.py --coarse [--upscale 1200]  # dlib: coarse pass vs full search

Per backend: photos with >= 1 face, mean/median seconds per photo for
``detect_faces(img, backend, all_faces=False)`` (detection + dlib 68/5-point landmarks; image
loading not timed), how often its main face is the dlib backend's (box centres within half a
box width), and how far its eye centres (``landmarks5``) are from dlib's, in inter-ocular
distances.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facefit.faces.detection import BACKENDS, _dlib_landmarks, detect_faces
from facefit.faces.images import load_image

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces-dev"
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def list_photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def bench(photos, backends):
    images = [load_image(p) for p in photos]
    results, mains = {}, {}
    for b in backends:
        detect_faces(images[0], backend=b)  # build and warm up the detector
        times, found, main = [], 0, []
        for img in images:
            t0 = time.perf_counter()
            faces = detect_faces(img, backend=b)
            times.append(time.perf_counter() - t0)
            found += bool(faces)
            main.append(faces[0] if faces else None)
        mains[b] = main
        results[b] = {
            "photos": len(images),
            "found": found,
            "detection_rate": round(found / len(images), 4),
            "mean_s_per_photo": round(float(np.mean(times)), 4),
            "median_s_per_photo": round(float(np.median(times)), 4),
            "max_s_per_photo": round(float(np.max(times)), 4),
        }
    if "dlib" in mains:
        for b in backends:
            same = n = 0
            eye_err = []
            for fa, fb in zip(mains["dlib"], mains[b]):
                if fa is None or fb is None:
                    continue
                n += 1
                ca = 0.5 * (fa.box[:2] + fa.box[2:])
                cb = 0.5 * (fb.box[:2] + fb.box[2:])
                if np.linalg.norm(ca - cb) < 0.5 * min(fa.width, fb.width):
                    same += 1
                    iod = np.linalg.norm(fa.landmarks5[0] - fa.landmarks5[1])
                    eye_err.append(np.linalg.norm(fa.landmarks5[:2] - fb.landmarks5[:2], axis=1).max() / iod)
            results[b]["same_main_face_as_dlib"] = f"{same}/{n}"
            if eye_err:
                results[b]["eye_centre_diff_vs_dlib_iod_median"] = round(float(np.median(eye_err)), 4)
                results[b]["eye_centre_diff_vs_dlib_iod_p95"] = round(float(np.percentile(eye_err, 95)), 4)
    return results


def calibrate(photos, backends):
    """Median mapping from each backend's box to dlib's HOG box, and the resulting 68-point
    landmark error (relative to HOG-box landmarks, in inter-ocular distances)."""
    out = {}
    images = [load_image(p) for p in photos]
    ref = [detect_faces(img, backend="dlib") for img in images]
    for b in backends:
        if b == "dlib":
            continue
        rows = []
        pairs = []
        for img, r in zip(images, ref):
            if not r:
                continue
            faces = detect_faces(img, backend=b, landmarks68=False)
            if not faces:
                continue
            bx, hx = faces[0].box, r[0].box
            w, h = bx[2] - bx[0], bx[3] - bx[1]
            if abs(0.5 * (hx[0] + hx[2]) - 0.5 * (bx[0] + bx[2])) > 0.5 * w:
                continue  # different faces
            rows.append(
                (
                    (0.5 * (hx[0] + hx[2]) - 0.5 * (bx[0] + bx[2])) / w,
                    (0.5 * (hx[1] + hx[3]) - 0.5 * (bx[1] + bx[3])) / h,
                    np.sqrt((hx[2] - hx[0]) * (hx[3] - hx[1])) / np.sqrt(w * h),
                )
            )
            pairs.append((img, faces[0].box, r[0]))
        abc = np.median(np.array(rows), axis=0)

        def err(a, b_, c):
            e = []
            for img, box, rf in pairs:
                w, h = box[2] - box[0], box[3] - box[1]
                cx, cy = 0.5 * (box[0] + box[2]) + a * w, 0.5 * (box[1] + box[3]) + b_ * h
                s = c * np.sqrt(w * h)
                lm, _ = _dlib_landmarks(img, np.array([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]))
                iod = np.linalg.norm(rf.landmarks5[0] - rf.landmarks5[1])
                e.append(np.linalg.norm(lm - rf.landmarks68, axis=1).mean() / iod)
            return float(np.mean(e)), float(np.median(e))

        out[b] = {
            "pairs": len(pairs),
            "a_b_c": [round(float(v), 4) for v in abc],
            "lm68_err_raw_box": [round(v, 4) for v in err(0.0, 0.0, 1.0)],
            "lm68_err_mapped_box": [round(v, 4) for v in err(*abc)],
        }
    return out


def coarse(photos, upscale: int = 0):
    """dlib backend: the main face's landmarks with the coarse first pass (what
    ``detect_faces`` does) against the full search alone, in inter-ocular distances (IOD,
    eye centres of the full search), and the CPU time per photo of each."""
    import cv2

    from facefit.faces import detection

    images = [load_image(p) for p in photos]
    if upscale:
        images = [cv2.resize(im, (upscale, upscale), interpolation=cv2.INTER_CUBIC) for im in images]
    detection._dlib_models()

    def run(use_coarse):
        real = detection._detect_dlib_coarse
        if not use_coarse:
            detection._detect_dlib_coarse = lambda *a: None
        try:
            t0 = time.process_time()
            faces = [detect_faces(im) for im in images]
            return faces, (time.process_time() - t0) / len(images)
        finally:
            detection._detect_dlib_coarse = real

    full, t_full = run(False)
    fast, t_fast = run(True)
    errs, same, trusted = [], 0, 0
    for im, a, b in zip(images, full, fast):
        trusted += detection._detect_dlib_coarse(im, 30.0, 0.0) is not None
        if not a or not b:
            continue
        la, lb = a[0].landmarks68, b[0].landmarks68
        iod = np.linalg.norm(la[36:42].mean(0) - la[42:48].mean(0))
        errs.append(float(np.linalg.norm(la - lb, axis=1).mean() / iod))
        same += bool(np.array_equal(la, lb))
    e = np.array(errs)
    return {
        "photos": len(images), "upscaled_to": upscale or None,
        "faces_full": sum(bool(f) for f in full), "faces_coarse_first": sum(bool(f) for f in fast),
        "coarse_pass_trusted": trusted,
        "cpu_ms_per_photo_full": round(1000 * t_full, 1), "cpu_ms_per_photo_coarse_first": round(1000 * t_fast, 1),
        "lm68_diff_iod_mean": round(float(e.mean()), 4), "lm68_diff_iod_median": round(float(np.median(e)), 4),
        "lm68_diff_iod_p95": round(float(np.percentile(e, 95)), 4), "lm68_diff_iod_max": round(float(e.max()), 4),
        "identical": same,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--coarse", action="store_true", help="dlib: coarse first pass against the full search")
    ap.add_argument("--upscale", type=int, default=0, help="with --coarse: resize photos to this square size")
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos")
    args = ap.parse_args()
    photos = list_photos(args.data)
    if args.limit:
        photos = photos[: args.limit]
    backends = [b for b in args.backends.split(",") if b]
    if args.coarse:
        res = coarse(photos, args.upscale)
    else:
        res = calibrate(photos, backends) if args.calibrate else bench(photos, backends)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
