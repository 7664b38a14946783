"""Per-frame head pose and expression track of a video (``--fuse --pose``).

The identity comes from all frames (``--fuse``, unchanged); the track fits, frame by frame,
that fixed identity's head rotation, translation and expression weights:

1. **First frame (and after a loss)**: the face detector finds the face and its 68
   landmarks; :func:`facefit.avatar.pose.fit_pose` fits pose, focal length and expression
   from scratch. The focal length is then kept for the whole video.
2. **Next frames**: no detector: dlib's 68-point predictor runs in a box placed from the
   previous frame's landmarks (same offset and size relative to the landmarks as the
   detector's box of the last detection), and the Gauss-Newton solver
   (:mod:`facefit.avatar.solver`) refines the previous frame's pose and weights in
   ``TRACK_ITERS`` iterations with a temporal prior towards the previous weights. When the
   landmark error exceeds ``LOST_ERROR`` of the face size, the frame is detected afresh.
3. **Smoothing** (``smooth`` seconds, default :data:`DEFAULT_SMOOTH`): a Gaussian in time
   over rotations (averaged matrices projected back to rotations), translations and weights
   of the tracked frames; 0 switches it off. Frames without a face are left out of the track.

Outputs: :func:`write_track_csv` (``frame, time, yaw, pitch, roll, tx, ty, tz``, one column
per blend shape) and :func:`write_track_glb` (the neutral identity with the model's blend
shapes as morph targets, animated at the frames' times: morph weights and head rotation).
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from facefit.errors import FacefitError, InvalidFileError

__all__ = ["Track", "iter_video", "track_video", "track_inputs", "smooth_track", "write_track_csv",
           "write_track_glb", "DEFAULT_SMOOTH", "TRACK_ITERS", "LOST_ERROR"]

#: default temporal smoothing, Gaussian sigma in seconds (about one frame at 25-30 fps)
DEFAULT_SMOOTH = 0.04
#: Gauss-Newton iterations per tracked frame
TRACK_ITERS = 3
#: weight of the pull towards the previous frame's expression weights
TEMPORAL = 2.0
#: landmark error (fraction of the face scale) above which a frame is re-detected
LOST_ERROR = 0.10


@dataclass
class Track:
    """A video's per-frame pose and expression (T tracked frames).

    Attributes:
        frames: (T,) int frame indices; times: (T,) seconds (frame / fps).
        yaw, pitch, roll: (T,) degrees; translation: (T, 3) mm (camera space).
        expr: (T, Ke) expression weights; names: Ke blend-shape names.
        focal, cx, cy: the camera (pixels), image_size (H, W).
        fps: the video's frame rate; frames_read: frames looked at; lost: frame indices
            without a face; redetections: frames that needed the detector.
        smooth: smoothing sigma (seconds) applied; every: frame step.
        timing: seconds in total per stage: ``landmarks`` (the 68-point predictor on
            tracked frames), ``fit`` (the solver on tracked frames), ``detect`` and
            ``init_fit`` (face detection and the full pose fit on the first frame and on
            re-detected frames), ``decode`` (reading frames).
    """

    frames: np.ndarray
    times: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    translation: np.ndarray
    expr: np.ndarray
    names: list
    focal: float
    cx: float
    cy: float
    image_size: tuple
    fps: float
    frames_read: int = 0
    lost: list = field(default_factory=list)
    redetections: int = 0
    smooth: float = 0.0
    every: int = 1
    timing: dict = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def R_head(self) -> np.ndarray:
        """(T, 3, 3) head rotations."""
        import torch

        from facefit.render import euler_to_matrix

        return euler_to_matrix(*(torch.as_tensor(np.asarray(a, np.float64)) for a in (self.yaw, self.pitch, self.roll))).numpy()

    def summary(self) -> dict:
        """Counts, settings and speed (for the manifest and coefficient files)."""
        tm = self.timing
        n_tr = max(self.frames_read - self.redetections, 1)  # frames that followed the previous one
        n_det = max(self.redetections, 1)
        lm_ms = 1000.0 * tm.get("landmarks", 0.0) / n_tr
        fit_ms = 1000.0 * tm.get("fit", 0.0) / n_tr
        return {
            "source": self.source, "fps": float(self.fps), "every": int(self.every), "frames": int(self.frames_read),
            "frames_tracked": int(len(self.frames)), "frames_lost": len(self.lost), "redetections": int(self.redetections),
            "smooth_s": float(self.smooth), "focal_px": float(self.focal),
            "ms_per_frame": lm_ms + fit_ms, "ms_landmarks_per_frame": lm_ms, "ms_fit_per_frame": fit_ms,
            "ms_per_detection": 1000.0 * tm.get("detect", 0.0) / n_det,
            "ms_per_init_fit": 1000.0 * tm.get("init_fit", 0.0) / n_det,
            "ms_decode_per_frame": 1000.0 * tm.get("decode", 0.0) / max(self.frames_read, 1),
            "seconds_total": float(sum(tm.values())),
        }


def iter_video(path: str | os.PathLike, every: int = 1) -> Iterator[tuple[int, float, np.ndarray, float]]:
    """Stream every ``every``-th frame of a video.

    Yields:
        (frame index, time in seconds, (H, W, 3) uint8 RGB, fps).
    Raises:
        InvalidFileError: the video cannot be opened or has no frames.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InvalidFileError(f"{path}: cannot open as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0:
            fps = 25.0
        idx, got = 0, 0
        while True:
            if idx % every == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                got += 1
                yield idx, idx / fps, np.ascontiguousarray(frame[:, :, ::-1]), fps
            elif not cap.grab():
                break
            idx += 1
        if got == 0:
            raise InvalidFileError(f"{path}: no frames could be read")
    finally:
        cap.release()


def _box_model(box: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Detector box relative to the landmarks' bounding box: (centre offset / size, size ratio)."""
    lo, hi = lm.min(0), lm.max(0)
    size = float((hi - lo).max())
    c_box = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return (c_box - (lo + hi) / 2) / size, float(np.sqrt((box[2] - box[0]) * (box[3] - box[1]))) / size


def _box_from_landmarks(lm: np.ndarray, rel: tuple[np.ndarray, float]) -> np.ndarray:
    lo, hi = lm.min(0), lm.max(0)
    size = float((hi - lo).max())
    c = (lo + hi) / 2 + rel[0] * size
    half = rel[1] * size / 2
    return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])


def track_video(model, shape_coeffs, video: str | os.PathLike, *, detector: str = "dlib", every: int = 1,
                smooth: Optional[float] = None, max_frames: Optional[int] = None) -> Track:
    """Track the main face of a video with a fixed identity (see the module docstring).

    Args:
        model: the morphable model; shape_coeffs: (Ks,) the identity (e.g. ``--fuse``'s).
        video: the video file.
        detector: face detector backend for the first frame and re-detections.
        every: track every ``every``-th frame (1 = all).
        smooth: Gaussian smoothing sigma in seconds (None: :data:`DEFAULT_SMOOTH`; 0: off).
        max_frames: stop after this many tracked frames (None: the whole video).
    Returns:
        :class:`Track`.
    Raises:
        FacefitError: bad arguments, unreadable video, or no face in any frame.
    """
    from facefit.faces.detection import _dlib_models, _dlib_rect, _shape_to_array, detect_faces

    from .pose import PoseFitError, fit_pose
    from .solver import LandmarkRig

    every = int(every)
    if every < 1:
        raise FacefitError(f"--track-every must be >= 1, got {every}")
    smooth = DEFAULT_SMOOTH if smooth is None else float(smooth)
    if not math.isfinite(smooth) or smooth < 0:
        raise FacefitError(f"track smoothing must be >= 0 seconds, got {smooth}")
    rig = LandmarkRig(model, shape_coeffs)
    names = list(model.expr_names)
    frames, times, Rs, ts, betas, lost = [], [], [], [], [], []
    timing = {"decode": 0.0, "landmarks": 0.0, "fit": 0.0, "detect": 0.0, "init_fit": 0.0}
    _, predictor, _ = _dlib_models()
    cam = None  # (focal, cx, cy, (H, W))
    prev = None  # (R_cam, t, beta, landmarks)
    rel = None
    redetect = 0
    fps = 25.0
    n_read = 0
    t_dec = time.perf_counter()
    for idx, tsec, img, fps in iter_video(video, every):
        n_read += 1
        t0 = time.perf_counter()
        timing["decode"] += t0 - t_dec
        sol = None
        if prev is not None and rel is not None:
            lm = _shape_to_array(predictor(img, _dlib_rect(_box_from_landmarks(prev[3], rel))))
            t1 = time.perf_counter()
            timing["landmarks"] += t1 - t0
            sol = rig.solve(lm, prev[0], prev[1], prev[2], *cam[:3], iters=TRACK_ITERS, beta_prev=prev[2],
                            temporal=TEMPORAL, contour_every=TRACK_ITERS)
            timing["fit"] += time.perf_counter() - t1
            q = lm - lm.mean(0)
            if sol.residuals_px.mean() > LOST_ERROR * float(np.sqrt((q**2).sum(1).mean())):
                sol = None
            t0 = time.perf_counter()
        if sol is None:  # first frame, lost, or drifted: detect afresh
            redetect += 1
            faces = detect_faces(img, backend=detector)
            t1 = time.perf_counter()
            timing["detect"] += t1 - t0
            if not faces or faces[0].landmarks68 is None:
                lost.append(idx)
                prev = None
                t_dec = time.perf_counter()
                if max_frames and len(frames) >= max_frames:
                    break
                continue
            lm = faces[0].landmarks68
            rel = _box_model(faces[0].box, lm)
            try:
                if cam is None:
                    p = fit_pose(model, shape_coeffs, lm, img.shape[:2])
                    cam = (p.focal, p.cx, p.cy, img.shape[:2])
                    sol_R, sol_t, sol_b = p.R_cam, p.translation, p.expr_coeffs.astype(np.float64)
                else:
                    p = fit_pose(model, shape_coeffs, lm, img.shape[:2], fit_focal=False, focal=cam[0])
                    sol_R, sol_t, sol_b = p.R_cam, p.translation, p.expr_coeffs.astype(np.float64)
            except PoseFitError:
                lost.append(idx)
                prev = None
                timing["init_fit"] += time.perf_counter() - t1
                t_dec = time.perf_counter()
                continue
            timing["init_fit"] += time.perf_counter() - t1
        else:
            sol_R, sol_t, sol_b = sol.R_cam, sol.t, sol.beta
        prev = (sol_R, sol_t, sol_b, lm)
        frames.append(idx)
        times.append(tsec)
        Rs.append(sol_R)
        ts.append(sol_t)
        betas.append(sol_b)
        t_dec = time.perf_counter()
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise FacefitError(f"{video}: no face found in any of the {n_read} frames tracked")
    R = np.stack(Rs) * np.array([1.0, -1.0, -1.0])[None, :, None]  # camera -> head rotation
    tr = Track(np.asarray(frames), np.asarray(times), *_euler(R), np.stack(ts), np.stack(betas).astype(np.float32),
               names, float(cam[0]), float(cam[1]), float(cam[2]), tuple(int(x) for x in cam[3]), float(fps),
               n_read, lost, redetect, 0.0, every, timing, str(video))
    return smooth_track(tr, smooth) if smooth > 0 else tr


def _euler(R_head: np.ndarray):
    import torch

    from facefit.fitting import matrix_to_euler

    return tuple(a.numpy().astype(np.float64) for a in matrix_to_euler(torch.as_tensor(R_head, dtype=torch.float64)))


def smooth_track(track: Track, sigma: float) -> Track:
    """Gaussian smoothing in time (``sigma`` seconds) of rotations, translations and weights.

    A local-linear Gaussian smoother (each frame's value is the value at its time of a
    straight line fitted to its neighbours with Gaussian weights in time): unlike a plain
    Gaussian average it does not pull the first and last frames towards the inside of a
    motion. Rotations are smoothed as matrices and projected back to the nearest rotation
    (SVD); weights are clipped to the model's range [0, 1]. Weights depend on the frames'
    times, so gaps (lost frames, ``every``) are handled.
    """
    from dataclasses import replace

    if sigma <= 0 or len(track) < 2:
        return replace(track, smooth=float(max(sigma, 0.0)))
    t = np.asarray(track.times, np.float64)
    d = t[None, :] - t[:, None]  # (T, T): time of frame j relative to frame i
    g = np.exp(-0.5 * (d / sigma) ** 2)
    s0, s1, s2 = g.sum(1, keepdims=True), (g * d).sum(1, keepdims=True), (g * d * d).sum(1, keepdims=True)
    den = s0 * s2 - s1 * s1
    ok = den > 1e-12 * np.maximum(s0 * s2, 1e-300)
    W = np.where(ok, g * (s2 - s1 * d) / np.where(ok, den, 1.0), g / s0)  # rows sum to 1
    R = np.einsum("ij,jab->iab", W, track.R_head)
    U, _, Vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(U @ Vt))
    U[:, :, 2] *= d[:, None]
    R = U @ Vt
    yaw, pitch, roll = _euler(R)
    expr = np.clip(W @ track.expr.astype(np.float64), 0.0, 1.0) if track.expr.size else track.expr
    return replace(track, yaw=yaw, pitch=pitch, roll=roll, translation=W @ track.translation,
                   expr=np.asarray(expr, np.float32), smooth=float(sigma))


def track_inputs(rec, paths: Sequence, shape_coeffs, every: int = 1, smooth: Optional[float] = None) -> Track:
    """The track of the one video among ``paths`` (``--fuse --pose``), with ``rec``'s model and detector.

    Raises:
        FacefitError: no video, or more than one, among the inputs.
    """
    from facefit.reconstruction import VIDEO_SUFFIXES

    videos = [Path(p) for p in paths if Path(p).suffix.lower() in VIDEO_SUFFIXES]
    if len(videos) != 1:
        raise FacefitError("--fuse --pose tracks one video: give exactly one video among the inputs "
                           f"(got {len(videos)})")
    return track_video(rec.model, shape_coeffs, videos[0], detector=rec.detector, every=every, smooth=smooth)


def write_track_csv(track: Track, path: str | os.PathLike) -> Path:
    """Write ``frame, time, yaw, pitch, roll, tx, ty, tz, <blend shapes...>`` (degrees, mm,
    weights), one row per tracked frame, atomically."""
    from facefit.atomic import atomic_write

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "time", "yaw", "pitch", "roll", "tx", "ty", "tz", *track.names])
    for k in range(len(track)):
        w.writerow([int(track.frames[k]), f"{track.times[k]:.4f}", f"{track.yaw[k]:.3f}", f"{track.pitch[k]:.3f}",
                    f"{track.roll[k]:.3f}", *(f"{x:.2f}" for x in track.translation[k]),
                    *(f"{x:.4f}" for x in track.expr[k])])
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(buf.getvalue())
    return path


def read_track_csv(path: str | os.PathLike) -> dict:
    """Columns of a track CSV as numpy arrays (name -> (T,))."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))
    return {h: body[:, i] for i, h in enumerate(head)}


def write_track_glb(track: Track, mesh, model, path: str | os.PathLike, shape_coeffs=None,
                    units: Optional[str] = None) -> list[Path]:
    """The animated GLB of a track.

    The mesh is the person's neutral head (for ICT-FaceKit the complete head of
    :mod:`facefit.avatar.head`, built from ``mesh``'s face colours and ``shape_coeffs`` when
    ``mesh`` is the face area; other models: ``mesh`` itself) with the model's expressions as
    morph targets under ARKit names (:mod:`facefit.avatar.rig`) and one animation
    ``facefit_track``: morph weights and head rotation (quaternions of ``R_head``; glTF's
    axes are the model's, +y up, +z towards the viewer) at the tracked frames' times.
    Rest weights: the first frame's.

    Args:
        track: the :class:`Track`.
        mesh: the neutral FaceMesh of the identity (face area or head).
        model: the face model the track was fitted with.
        path: ``.glb`` output (atomic).
        shape_coeffs: (Ks,) identity coefficients (needed to build the head from a face mesh).
        units: file units (default metres).
    """
    from scipy.spatial.transform import Rotation

    from .files import mesh_model
    from .gltf import AvatarAnimation, save_glb_avatar
    from .rig import morph_targets

    if Path(path).suffix.lower() != ".glb":
        raise FacefitError(f"the animated track is written as .glb, not {Path(path).name}")
    if mesh.num_vertices == model.n_vertices and model.meta.get("source") == "ICT-FaceKit" and shape_coeffs is not None:
        from .head import head_mesh, head_model_for

        head = head_model_for(model)
        mesh = head_mesh(model, shape_coeffs, mesh.colors, meta=mesh.meta, head=head)
    mm = mesh_model(model, mesh)
    mt = morph_targets(mm)
    W = np.stack([mt.weights_from_expr(e) for e in track.expr])  # (T, K)
    quats = Rotation.from_matrix(track.R_head).as_quat()  # (T, 4) x, y, z, w
    anim = AvatarAnimation(times=np.asarray(track.times, np.float64), weights=W, rotations=quats,
                           name="facefit_track", extras={"source": track.source, "frames": [int(f) for f in track.frames]})
    return save_glb_avatar(mesh, path, mt.as_dict(), default_weights=W[0], animation=anim,
                           units=units, extras={"track": track.summary()})
