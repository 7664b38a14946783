"""``facefit eval micc``: the MICC Florence 3D Faces protocol (Genova et al. 2018, Table 1).

For each subject and each of the three videos (cooperative, indoor, outdoor), the main face
of every frame is detected and encoded; the encoder features are **averaged over the
frames** and decoded into one neutral face. That face is compared with the subject's
ground-truth scan with :func:`facefit.evaluation.geometry.evaluate_geometry`: the scan cropped
to 95 mm around its nose tip, ICP with isotropic scale, symmetric point-to-plane distance in
mm within the region of overlap. The report gives the mean and standard deviation over subjects
per condition, and the same numbers for the model's mean face as a reference.

MICC Florence must be requested from its authors
(https://www.micc.unifi.it/resources/datasets/florence-3d-faces/). Folder layouts accepted
(see ``docs/evaluation.md``):

* the dataset as distributed::

      DATA_DIR/subject_01/Model/frontal1/obj/110920150452.obj   (also frontal2, vrml/*.wrl)
      DATA_DIR/subject_01/Video/Indoor-Cooperative.mjpg
      DATA_DIR/subject_01/Video/PTZ-Indoor.mjpg
      DATA_DIR/subject_01/Video/PTZ-Outdoor.mjpg

* a simple layout::

      DATA_DIR/<subject>/scan.obj            (or .wrl / .ply / .off / .stl)
      DATA_DIR/<subject>/cooperative.mp4     (any video, or a folder cooperative/ of frames)
      DATA_DIR/<subject>/indoor.mp4
      DATA_DIR/<subject>/outdoor.mp4
      DATA_DIR/<subject>/nose.txt            (optional: "x y z" nose tip in scan units)

Scans are assumed to be roughly frontal with +y up and +z towards the viewer (as MICC's
3dMD scans are); their nose tip is found with :func:`facefit.evaluation.geometry.scan_nose_tip`
unless a ``nose.txt`` gives it. Units are guessed from the scan's size unless given.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from facefit.errors import FacefitError, InvalidFileError

from . import neutral_vertices, nose_tip_index
from .geometry import (
    _used_vertices,
    DEFAULT_RADIUS_MM,
    crop_mesh,
    evaluate_geometry,
    guess_units_scale,
    scan_nose_tip,
)
from .report import Report, image_sheet, mean_std, plot_boxes, print_summary

__all__ = [
    "CONDITIONS",
    "MiccSubject",
    "MiccEvalConfig",
    "find_subjects",
    "load_scan",
    "load_vrml",
    "iter_frames",
    "evaluate_micc",
    "write_micc_report",
    "print_micc_summary",
    "write_vrml",
    "write_synthetic_micc",
]

#: Condition -> accepted names of its video (file stem or frame folder), compared
#: case-insensitively with non-alphanumerics removed.
CONDITIONS = {
    "cooperative": ("indoorcooperative", "cooperative"),
    "indoor": ("ptzindoor", "indoor"),
    "outdoor": ("ptzoutdoor", "outdoor"),
}
VIDEO_SUFFIXES = (".mjpg", ".mjpeg", ".mpg", ".mpeg", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".wmv")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
SCAN_SUFFIXES = (".obj", ".wrl", ".vrml", ".ply", ".off", ".stl")
NOSE_FILES = ("nose.txt", "nose_tip.txt")
UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ---------------------------------------------------------------------------------------
# dataset layout


@dataclass
class MiccSubject:
    """One subject of a MICC-like folder.

    Attributes:
        name: folder name (e.g. ``subject_01``).
        scan: the ground-truth scan file.
        sources: condition -> video file or folder of frames.
        nose_file: optional file with the scan's nose tip.
    """

    name: str
    scan: Path
    sources: dict
    nose_file: Optional[Path] = None


def _find_scan(d: Path) -> Optional[Path]:
    """The subject's scan: Model/frontal1, Model/frontal2, anything under Model/, then the
    subject folder itself (``scan.*`` first); OBJ before VRML before the rest."""
    def best(files: list[Path]) -> Optional[Path]:
        files = [f for f in files if f.is_file() and f.suffix.lower() in SCAN_SUFFIXES]
        if not files:
            return None
        return sorted(files, key=lambda f: (SCAN_SUFFIXES.index(f.suffix.lower()), str(f)))[0]

    model = next((p for p in d.iterdir() if p.is_dir() and p.name.lower() == "model"), None)
    if model is not None:
        for sub in ("frontal1", "frontal2"):
            cand = [p for p in model.iterdir() if p.is_dir() and p.name.lower() == sub]
            if cand:
                hit = best(list(cand[0].rglob("*")))
                if hit:
                    return hit
        hit = best(list(model.rglob("*")))
        if hit:
            return hit
    top = [f for f in d.iterdir() if f.is_file()]
    return best([f for f in top if f.stem.lower() == "scan"]) or best(top)


def _find_sources(d: Path) -> dict:
    """condition -> video file or frame folder, searched in ``Video/`` and the subject folder
    (names compared case-insensitively without punctuation: ``PTZ-Indoor`` = ``ptzindoor``)."""
    places = [d] + [p for p in sorted(d.iterdir()) if p.is_dir() and p.name.lower() in ("video", "videos")]
    out = {}
    for place in places:
        for p in sorted(place.iterdir()):
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
                key = _norm(p.stem)
            elif p.is_dir() and any(f.suffix.lower() in FRAME_SUFFIXES for f in p.iterdir()):
                key = _norm(p.name)
            else:
                continue
            for cond, names in CONDITIONS.items():
                if key in names:
                    out.setdefault(cond, p)
    return out


def find_subjects(data_dir, subjects: Optional[Sequence[str]] = None) -> list[MiccSubject]:
    """Subjects of a MICC-like folder (see the module docstring), sorted by name.

    Args:
        data_dir: the dataset folder.
        subjects: keep only these subject folder names.
    Returns:
        list of :class:`MiccSubject` (subjects without a scan are left out).
    Raises:
        FacefitError: not a folder, or no subject with a scan and at least one video.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FacefitError(f"{root}: not a folder")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if subjects and d.name not in subjects:
            continue
        scan = _find_scan(d)
        if scan is None:
            continue
        sources = _find_sources(d)
        if not sources:
            continue
        nose = next((d / n for n in NOSE_FILES if (d / n).is_file()), None)
        if nose is None:
            nose = next((scan.parent / n for n in NOSE_FILES if (scan.parent / n).is_file()), None)
        out.append(MiccSubject(d.name, scan, sources, nose))
    if not out:
        raise FacefitError(
            f"{root}: no subject folders with a scan and videos (expected MICC's subject_XX/Model/frontal1/obj/*.obj "
            "and subject_XX/Video/Indoor-Cooperative.mjpg, or <subject>/scan.obj with cooperative/indoor/outdoor "
            "videos; see docs/evaluation.md)"
        )
    return out


# ---------------------------------------------------------------------------------------
# scans


def load_vrml(path) -> tuple[np.ndarray, np.ndarray]:
    """Geometry of a VRML 2.0 / 97 file's ``IndexedFaceSet`` nodes.

    Reads every ``coord ... point [ ... ]`` list and the ``coordIndex [ ... ]`` that
    follows it (polygons ended by -1, fan-triangulated); transforms are not applied.

    Args:
        path: ``.wrl`` file.
    Returns:
        ``(verts (V, 3) float64, tris (F, 3) int64)`` in file units.
    Raises:
        InvalidFileError: unreadable or without an indexed face set.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InvalidFileError(f"cannot read {path}: {e.strerror or e}") from None
    text = re.sub(r"#[^\n]*", "", text)
    verts, tris = [], []
    offset = 0
    for m in re.finditer(r"\bpoint\s*\[([^\]]*)\]", text):
        pts = np.array(m.group(1).replace(",", " ").split(), np.float64)
        if pts.size % 3:
            raise InvalidFileError(f"{path}: a point list has {pts.size} numbers (not a multiple of 3)")
        pts = pts.reshape(-1, 3)
        ci = re.search(r"\bcoordIndex\s*\[([^\]]*)\]", text[m.end():])
        if ci is None:
            continue
        idx = np.array(ci.group(1).replace(",", " ").split(), np.int64)
        poly: list[int] = []
        for k in idx.tolist() + [-1]:
            if k >= 0:
                poly.append(k)
                continue
            for j in range(1, len(poly) - 1):
                tris.append((poly[0] + offset, poly[j] + offset, poly[j + 1] + offset))
            poly = []
        verts.append(pts)
        offset += len(pts)
    if not verts or not tris:
        raise InvalidFileError(f"{path}: no IndexedFaceSet geometry found")
    v = np.concatenate(verts)
    t = np.asarray(tris, np.int64)
    if t.max() >= len(v):
        raise InvalidFileError(f"{path}: coordIndex refers to missing points")
    return v, t


def load_scan(path, units: str = "auto") -> tuple[np.ndarray, np.ndarray, float]:
    """A ground-truth scan's geometry in millimetres.

    Args:
        path: ``.obj``, ``.wrl``/``.vrml``, ``.ply``, ``.off`` or ``.stl``.
        units: "mm", "cm", "m" or "auto" (guessed from the size,
            :func:`facefit.evaluation.geometry.guess_units_scale`).
    Returns:
        ``(verts (V, 3) mm, tris (F, 3), factor)`` with ``factor`` the file-to-mm scale.
    Raises:
        InvalidFileError: unreadable scan; FacefitError: unknown units.
    """
    path = Path(path)
    if path.suffix.lower() in (".wrl", ".vrml"):
        v, t = load_vrml(path)
    else:
        from facefit.mesh_io import load_mesh

        m = load_mesh(path, units="mm")  # file numbers as they are; scaled below
        v, t = np.asarray(m.vertices, np.float64), np.asarray(m.triangles, np.int64)
    if len(v) < 10 or len(t) == 0:
        raise InvalidFileError(f"{path}: the scan has no usable surface ({len(v)} vertices, {len(t)} triangles)")
    if units == "auto":
        f = guess_units_scale(v)
    elif units in UNITS:
        f = UNITS[units]
    else:
        raise FacefitError(f"unknown scan units '{units}' (use auto, mm, cm or m)")
    v, t = _used_vertices(v, t)  # drop vertices no triangle uses (they have no normal)
    return v * f, t, f


def _read_nose(path: Path, factor: float) -> np.ndarray:
    try:
        nums = [float(x) for x in re.split(r"[\s,;]+", path.read_text().strip()) if x]
    except (OSError, ValueError) as e:
        raise InvalidFileError(f"{path}: expected three numbers 'x y z' ({e})") from None
    if len(nums) != 3:
        raise InvalidFileError(f"{path}: expected three numbers 'x y z', found {len(nums)}")
    return np.asarray(nums, np.float64) * factor


# ---------------------------------------------------------------------------------------
# frames


def iter_frames(source: Path, step: int = 1, max_frames: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Stream frames of a video file or a folder of frame images (never all in memory).

    Args:
        source: video file (anything OpenCV/FFmpeg reads, including raw ``.mjpg``) or folder.
        step: take every ``step``-th frame.
        max_frames: stop after this many frames (0: no limit).
    Yields:
        (frame index, (H, W, 3) uint8 RGB).
    Raises:
        InvalidFileError: the video cannot be opened.
    """
    step = max(1, int(step))
    taken = 0
    if source.is_dir():
        from facefit.faces.images import load_image

        files = sorted(f for f in source.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
        for i, f in enumerate(files[::step]):
            yield i * step, load_image(f)
            taken += 1
            if max_frames and taken >= max_frames:
                return
        return
    import cv2

    cap = cv2.VideoCapture(str(source))
    try:
        if not cap.isOpened():
            raise InvalidFileError(f"{source}: cannot open as a video")
        idx = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if idx % step == 0:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    yield idx, np.ascontiguousarray(frame[:, :, ::-1])
                    taken += 1
                    if max_frames and taken >= max_frames:
                        return
            idx += 1
    finally:
        cap.release()


# ---------------------------------------------------------------------------------------
# the benchmark


@dataclass
class MiccEvalConfig:
    """Settings of ``facefit eval micc``.

    Attributes:
        conditions: which videos to use.
        frame_step: use every n-th frame (1 = all frames, the paper's protocol).
        max_frames: at most this many frames per video (0 = no limit).
        radius: crop radius of the ground truth around its nose tip (mm).
        scan_units: "auto", "mm", "cm" or "m".
        subjects: only these subject folders (None = all).
        detector: face detector backend.
        examples: subjects shown in the example figure.
    """

    conditions: tuple = ("cooperative", "indoor", "outdoor")
    frame_step: int = 1
    max_frames: int = 0
    radius: float = DEFAULT_RADIUS_MM
    scan_units: str = "auto"
    subjects: Optional[tuple] = None
    detector: str = "dlib"
    examples: int = 4


def fused_features(reconstructor, source: Path, cfg: MiccEvalConfig) -> tuple[Optional[np.ndarray], int, int, Optional[np.ndarray]]:
    """Mean encoder features of the main face over a video's frames.

    Returns:
        ``(features (D,) or None, frames read, frames with a face, an example frame)``.
    """
    total, used, batch, acc = 0, 0, [], None
    example = None

    def flush():
        nonlocal acc
        if batch:
            f = reconstructor.encode(np.stack(batch)).double().sum(0)
            acc = f if acc is None else acc + f
            batch.clear()

    for _, frame in iter_frames(source, cfg.frame_step, cfg.max_frames):
        total += 1
        faces = reconstructor.detect(frame)
        if not faces:
            continue
        if example is None:
            example = frame
        batch.append(reconstructor.crop(frame, faces[0]))
        used += 1
        if len(batch) >= reconstructor.batch_size:
            flush()
    flush()
    if acc is None:
        return None, total, used, example
    return (acc / used).float().cpu().numpy(), total, used, example


def evaluate_micc(
    reconstructor,
    data_dir,
    cfg: MiccEvalConfig,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict:
    """Run the MICC protocol.

    Args:
        reconstructor: a :class:`facefit.reconstruction.Reconstructor`.
        data_dir: MICC (or MICC-like) folder.
        cfg: :class:`MiccEvalConfig`.
        progress: callback ``(stage, done, total)``.
    Returns:
        results dict: ``config``, ``subjects`` (per subject: scan, nose tip source, per
        condition the error record or the reason it is missing, and the mean face's
        record), ``summary`` (condition -> facefit and mean-face mean/std/n), plus private
        ``_examples`` for the figure.
    """
    import torch

    for c in cfg.conditions:
        if c not in CONDITIONS:
            raise FacefitError(f"unknown condition '{c}' (use {', '.join(CONDITIONS)})")
    subjects = find_subjects(data_dir, cfg.subjects)
    model = reconstructor.model
    nose_idx = nose_tip_index(model)
    tris = np.asarray(model.triangles)
    mean_v = neutral_vertices(model, None)[0]
    t0 = time.perf_counter()
    records, examples = [], []
    for si, subj in enumerate(subjects):
        rec = {"subject": subj.name, "scan": str(subj.scan), "conditions": {}}
        try:
            gv, gt, factor = load_scan(subj.scan, cfg.scan_units)
            if subj.nose_file is not None:
                gnose = _read_nose(subj.nose_file, factor)
                rec["nose_tip"] = {"source": str(subj.nose_file), "point_mm": gnose}
            else:
                gnose = scan_nose_tip(gv)
                rec["nose_tip"] = {"source": "heuristic", "point_mm": gnose}
            rec["scan_units_factor"] = factor
            rec["scan_vertices"] = int(len(gv))
        except FacefitError as e:
            rec["error"] = str(e)
            records.append(rec)
            continue
        try:
            rec["mean_face"] = evaluate_geometry(mean_v, tris, mean_v[nose_idx], gv, gt, gnose, cfg.radius).as_dict()
        except FacefitError as e:
            rec["mean_face"] = {"error_mm": float("nan"), "failed": str(e)}
        ex = {"subject": subj.name}
        for cond in cfg.conditions:
            src = subj.sources.get(cond)
            if src is None:
                rec["conditions"][cond] = {"error_mm": float("nan"), "missing": "no video"}
                continue
            try:
                feats, n_read, n_used, frame = fused_features(reconstructor, src, cfg)
            except FacefitError as e:
                rec["conditions"][cond] = {"error_mm": float("nan"), "missing": str(e)}
                continue
            if feats is None:
                rec["conditions"][cond] = {"error_mm": float("nan"), "missing": f"no face in {n_read} frames",
                                           "frames": n_read, "frames_with_face": 0}
                continue
            shape, _ = reconstructor.decode(torch.from_numpy(feats[None]))
            pv = neutral_vertices(model, shape)[0]
            try:
                g = evaluate_geometry(pv, tris, pv[nose_idx], gv, gt, gnose, cfg.radius)
                rec["conditions"][cond] = {**g.as_dict(), "frames": n_read, "frames_with_face": n_used,
                                           "video": str(src)}
                if cond == cfg.conditions[0] and len(examples) < cfg.examples:
                    ex.update(frame=frame, transform=g.transform, pred=pv, gt=(gv, gt, gnose))
            except FacefitError as e:
                rec["conditions"][cond] = {"error_mm": float("nan"), "failed": str(e), "frames": n_read,
                                           "frames_with_face": n_used}
        if "frame" in ex:
            examples.append(ex)
        records.append(rec)
        if progress:
            progress("subjects", si + 1, len(subjects))

    summary = {}
    for cond in cfg.conditions:
        f = [r["conditions"].get(cond, {}).get("error_mm", float("nan")) for r in records if "error" not in r]
        mf = [r["mean_face"]["error_mm"] for r in records if "error" not in r and cond in r["conditions"]
              and np.isfinite(r["conditions"][cond].get("error_mm", float("nan")))]
        fm, fs, fn = mean_std(f)
        mm, ms, mn = mean_std(mf)
        summary[cond] = {"facefit_mean_mm": fm, "facefit_std_mm": fs, "n": fn,
                         "mean_face_mean_mm": mm, "mean_face_std_mm": ms,
                         "ratio": fm / mm if mm and np.isfinite(mm) else float("nan")}
    return {
        "benchmark": "micc",
        "data_dir": str(data_dir),
        "config": asdict(cfg),
        "checkpoint": str(reconstructor.checkpoint),
        "model": {"name": model.name, "hash": model.content_hash},
        "n_subjects": len(subjects),
        "summary": summary,
        "subjects": records,
        "seconds": time.perf_counter() - t0,
        "_examples": examples,
        "_model_tris": tris,
    }


# ---------------------------------------------------------------------------------------
# report


def summary_rows(results: dict) -> tuple[list, list]:
    headers = ["condition", "facefit mm", "std", "mean face mm", "std", "facefit/mean", "subjects"]
    rows = [[c, s["facefit_mean_mm"], s["facefit_std_mm"], s["mean_face_mean_mm"], s["mean_face_std_mm"], s["ratio"],
             s["n"]] for c, s in results["summary"].items()]
    return headers, rows


def _grey_render(verts: np.ndarray, tris: np.ndarray, size: int = 160) -> np.ndarray:
    """Frontal grey render of a mesh given in a +y up, +z to the viewer frame."""
    import torch

    from facefit.render import render

    v = torch.as_tensor(verts, dtype=torch.float32).unsqueeze(0)
    f = torch.as_tensor(np.asarray(tris, np.int64))
    from facefit.render import frame_face

    cam, t = frame_face(v, None, image_size=size, fill=0.85)
    with torch.no_grad():
        out = render(v, f, torch.full_like(v, 0.7), cam, t=t, background=(0.5, 0.5, 0.5))
    return out.images[0].permute(1, 2, 0).clamp(0, 1).numpy()


def write_micc_report(results: dict, out_dir) -> tuple[Path, Path]:
    """Write ``report.md``, ``results.json`` and the figures of a MICC run."""
    cfg = results["config"]
    with Report("facefit eval micc — MICC Florence geometric error (Table 1)", out_dir) as rep:
        rep.text(
            f"Data: `{results['data_dir']}` ({results['n_subjects']} subjects). Checkpoint: `{results['checkpoint']}`; "
            f"model **{results['model']['name']}**.\n\n"
            "Protocol: per subject and video, the encoder features of the main face are averaged over "
            f"{'all frames' if cfg['frame_step'] == 1 and not cfg['max_frames'] else 'the sampled frames (every ' + str(cfg['frame_step']) + ' frame(s)' + (', at most ' + str(cfg['max_frames']) + ')' if cfg['max_frames'] else ')')} "
            f"and decoded into one neutral face; the scan is cropped to {cfg['radius']:g} mm around its nose tip, the "
            "face is aligned to it with ICP including isotropic scale, and the two are compared with the symmetric "
            "point-to-plane distance (scan normals) within the region of overlap. Mean and standard deviation over subjects, in mm. "
            "The model's mean face, aligned the same way, is the reference."
        )
        headers, rows = summary_rows(results)
        rep.table(headers, rows, title="Symmetric point-to-plane error (mm)")
        recs = results["subjects"]
        conds = list(results["summary"])
        series = {c: [r["conditions"].get(c, {}).get("error_mm", float("nan")) for r in recs if "error" not in r]
                  for c in conds}
        series["mean face"] = [r["mean_face"]["error_mm"] for r in recs if "error" not in r]
        p = plot_boxes(series, rep.path("errors.png"), title="Per-subject error", ylabel="point-to-plane distance (mm)")
        rep.figure(p, "Per-subject error per condition, and of the mean face.")
        exs = results.get("_examples") or []
        if exs:
            grid, titles = [], []
            for ex in exs:
                gv, gt, gnose = ex["gt"]
                cv, ct, _ = crop_mesh(gv, gt, gnose, cfg["radius"])
                pv = ex["transform"].apply(ex["pred"])
                pcv, pct, _ = crop_mesh(pv, results["_model_tris"], gnose, cfg["radius"])
                grid.append([ex["frame"], _grey_render(cv, ct), _grey_render(pcv, pct)])
                titles.append(ex["subject"])
            p = image_sheet(grid, rep.path("examples.png"), col_titles=[f"{conds[0]} frame", "scan (cropped)",
                                                                        "facefit (aligned, cropped)"], row_titles=titles, size=2.0)
            rep.figure(p, "Examples: a video frame, the cropped scan and facefit's aligned reconstruction.")
        rows = []
        for r in recs:
            if "error" in r:
                rows.append([r["subject"]] + ["–"] * (len(conds) + 2) + [r["error"]])
                continue
            notes = "; ".join(f"{c}: {r['conditions'][c].get('missing') or r['conditions'][c].get('failed')}"
                              for c in conds if c in r["conditions"] and (r["conditions"][c].get("missing")
                                                                         or r["conditions"][c].get("failed")))
            rows.append([r["subject"]] + [r["conditions"].get(c, {}).get("error_mm") for c in conds]
                        + [r["mean_face"]["error_mm"], Path(r["nose_tip"]["source"]).name, notes])
        rep.table(["subject"] + conds + ["mean face", "nose tip", "notes"], rows, title="Per subject (mm)", digits=2)
        public = {k: v for k, v in results.items() if not k.startswith("_")}
        return rep.write(public)


def print_micc_summary(results: dict, console=None) -> None:
    headers, rows = summary_rows(results)
    print_summary(f"facefit eval micc ({results['n_subjects']} subjects)", headers, rows, console=console)


# ---------------------------------------------------------------------------------------
# a synthetic MICC-like folder (to try the pipeline and for tests)


def write_vrml(path, verts: np.ndarray, tris: np.ndarray) -> Path:
    """Write a minimal VRML 2.0 file with one ``IndexedFaceSet``.

    Args:
        path: target ``.wrl``; verts: (V, 3); tris: (F, 3).
    """
    from facefit.atomic import atomic_write

    path = Path(path)
    pts = ",\n".join(f"{x:.5f} {y:.5f} {z:.5f}" for x, y, z in np.asarray(verts, np.float64))
    idx = ",\n".join(f"{a}, {b}, {c}, -1" for a, b, c in np.asarray(tris, np.int64))
    text = ("#VRML V2.0 utf8\n# written by facefit\nShape {\n  geometry IndexedFaceSet {\n    coord Coordinate {\n"
            f"      point [\n{pts}\n      ]\n    }}\n    coordIndex [\n{idx}\n    ]\n  }}\n}}\n")
    with atomic_write(path, "w", mkdir=True) as f:
        f.write(text)
    return path


def _write_mjpeg(path: Path, frames: np.ndarray, quality: int = 90) -> Path:
    """A raw MJPEG stream (concatenated JPEG frames), as MICC's ``.mjpg`` videos."""
    import io

    from PIL import Image

    from facefit.atomic import atomic_write

    with atomic_write(path, "wb", mkdir=True) as f:
        for fr in frames:
            b = io.BytesIO()
            Image.fromarray(np.asarray(fr, np.uint8)).save(b, "JPEG", quality=quality)
            f.write(b.getvalue())
    return path


def write_synthetic_micc(root, model, n_subjects: int = 3, frames: int = 4, seed: int = 0, image_size: int = 256) -> list[Path]:
    """Write a small MICC-like dataset of morphable-model faces (ground truth known exactly).

    Subjects 1 and 2 use MICC's own layout (``subject_XX/Model/frontal1/obj/*.obj`` resp.
    ``.../vrml/*.wrl`` in centimetres, and ``subject_XX/Video/{Indoor-Cooperative,PTZ-Indoor,
    PTZ-Outdoor}.mjpg`` raw MJPEG videos); further subjects use the simple layout
    (``scan.ply``, ``nose.txt``, ``cooperative/`` frame folder, ``indoor.mjpg``,
    ``outdoor.mjpg``). Each scan is the subject's neutral face, moved by a small rotation
    and translation (as a scanner's frame would be); each video shows the subject in random
    poses and lighting.

    Args:
        root: output folder; model: MorphableModel; n_subjects: subjects; frames: frames per
        video; seed: random seed; image_size: frame size.
    Returns:
        the subject folders.
    """
    import torch
    from scipy.spatial.transform import Rotation

    from facefit.mesh_io import FaceMesh, save_mesh

    from .synthetic import SyntheticEvalConfig, make_synthetic_faces

    root = Path(root)
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    coeffs = model.sample(n_subjects, g, shape=True, color=True)
    nose_idx = nose_tip_index(model)
    out = []
    for i in range(n_subjects):
        name = f"subject_{i + 1:02d}" if i < 2 else f"person_{i + 1:02d}"
        d = root / name
        verts = neutral_vertices(model, coeffs["shape_coeffs"][i:i + 1])[0]
        R = Rotation.from_euler("xyz", rng.uniform(-3, 3, 3), degrees=True).as_matrix()
        t = rng.uniform(-30, 30, 3)
        scan = verts @ R.T + t
        tris = np.asarray(model.triangles)
        for sub in (d / "Model" / "frontal1" / "obj", d / "Model" / "frontal1" / "vrml", d / "Video"):
            if (i == 0 and sub.name == "obj") or (i == 1 and sub.name == "vrml") or (i < 2 and sub.name == "Video"):
                sub.mkdir(parents=True, exist_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        if i == 0:
            save_mesh(FaceMesh(scan, tris), d / "Model" / "frontal1" / "obj" / "110920150452.obj", units="mm")
        elif i == 1:
            write_vrml(d / "Model" / "frontal1" / "vrml" / "110920150452.wrl", scan / 10.0, tris)  # centimetres
        else:
            save_mesh(FaceMesh(scan, tris), d / "scan.ply", units="mm")
            (d / "nose.txt").write_text(" ".join(f"{x:.4f}" for x in scan[nose_idx]) + "\n")
        for k, cond in enumerate(CONDITIONS):
            cfg = SyntheticEvalConfig(n=frames, seed=seed * 1000 + i * 10 + k, image_size=image_size, face_fill=0.4,
                                      yaw_range=(-15.0, 15.0), pitch_range=(-10.0, 10.0), roll_range=(-5.0, 5.0))
            rep = {key: v[i:i + 1].repeat(frames, 1) for key, v in coeffs.items()}
            imgs = make_synthetic_faces(model, cfg, rep).images
            if i < 2:
                video = {"cooperative": "Indoor-Cooperative", "indoor": "PTZ-Indoor", "outdoor": "PTZ-Outdoor"}[cond]
                _write_mjpeg(d / "Video" / f"{video}.mjpg", imgs)
            elif cond == "cooperative":
                from facefit.media import write_png

                (d / "cooperative").mkdir(parents=True, exist_ok=True)
                for j, im in enumerate(imgs):
                    write_png(im, d / "cooperative" / f"frame_{j:04d}.png")
            else:
                _write_mjpeg(d / f"{cond}.mjpg", imgs)
        out.append(d)
    return out
