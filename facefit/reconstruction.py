"""Photos to 3D faces: the Python API behind ``facefit reconstruct``.

Pipeline per face: load image -> detect (68 landmarks) -> align to the encoder's crop ->
frozen recognition encoder -> decoder -> morphable-model coefficients -> mesh.

* :func:`reconstruct` returns :class:`Reconstruction` objects (meshes + coefficients)
  without touching the disk.
* :func:`run_batch` is the batch job: inputs (files, folders, videos) to mesh files,
  coefficient files and turntables, atomically written, with a manifest, ``skip_existing``
  and a summary.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from . import __version__
from .errors import FacefitError, InvalidFileError, ModelNotFoundError, NoFaceError
from .mesh_io import FaceMesh

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MESH_FORMATS = ("obj", "ply", "glb")
DEFAULT_CHECKPOINT_NAME = "facefit-ict-dlib.pt"


# --------------------------------------------------------------------------- inputs


@dataclass
class InputItem:
    """One image to process: a photo file, or one frame of a video.

    Attributes:
        path: the source file.
        rel: name relative to the input root (used to name outputs), without suffix.
        frame: frame index for videos, else None.
        image: (H, W, 3) uint8 RGB when already loaded (videos, arrays), else None.
    """

    path: Path
    rel: str
    frame: Optional[int] = None
    image: Optional[np.ndarray] = None

    @property
    def label(self) -> str:
        return f"{self.path}" + (f"#frame{self.frame}" if self.frame is not None else "")


def _walk(root: Path) -> Iterator[Path]:
    """Files below ``root``, sorted, following no symlink loops."""
    seen = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            real = d.resolve()
        except (OSError, RuntimeError):
            continue
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir():
                    subdirs.append(Path(e.path))
                elif e.is_file() or e.is_symlink():
                    yield Path(e.path)
            except OSError:
                yield Path(e.path)
        stack.extend(reversed(subdirs))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """Expand files and folders (recursively) into (path, relative-name) pairs.

    Folder members keep their sub-path (``sub/dir/photo``) so that outputs of photos with
    the same file name in different folders do not collide. Only image and video suffixes
    are taken from folders; files named explicitly are always taken.
    """
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in _walk(p):
                if f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                    rel = f.relative_to(p).with_suffix("").as_posix()
                    out.append((f, rel))
        else:
            out.append((p, p.with_suffix("").name))
    return out


def video_frames(path: Path, every_seconds: float = 0.5, max_frames: int = 64) -> list[tuple[int, np.ndarray]]:
    """Sample frames of a video file.

    Args:
        path: video file (anything OpenCV reads).
        every_seconds: time between sampled frames.
        max_frames: at most this many frames, spread over the whole video.
    Returns:
        list of (frame index, (H, W, 3) uint8 RGB).
    Raises:
        InvalidFileError: unreadable video.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InvalidFileError(f"{path}: cannot open as a video")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        step = max(1, int(round(fps * every_seconds)))
        wanted = list(range(0, n, step)) if n > 0 else []
        if len(wanted) > max_frames:
            wanted = [wanted[int(i)] for i in np.linspace(0, len(wanted) - 1, max_frames)]
        wanted_set = set(wanted)
        frames, idx = [], 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if idx in wanted_set or (n <= 0 and idx % step == 0 and len(frames) < max_frames):
                frames.append((idx, np.ascontiguousarray(frame[:, :, ::-1])))
            idx += 1
        if not frames:
            raise InvalidFileError(f"{path}: no frames could be read")
        return frames
    finally:
        cap.release()


def iter_items(pairs: Iterable[tuple[Path, str]], video_every: float = 0.5, video_max_frames: int = 64) -> Iterator[InputItem | tuple[Path, str, Exception]]:
    """Yield an :class:`InputItem` per photo / video frame, or ``(path, rel, error)``."""
    for path, rel in pairs:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            try:
                for idx, img in video_frames(path, video_every, video_max_frames):
                    yield InputItem(path, rel, idx, img)
            except FacefitError as e:
                yield (path, rel, e)
        else:
            yield InputItem(path, rel)


# --------------------------------------------------------------------------- results


@dataclass
class Reconstruction:
    """One reconstructed face.

    Attributes:
        source: the input's label (path, or path#frameN).
        name: output base name (relative, no suffix).
        mesh: :class:`FaceMesh` in mm with per-vertex colour (and texture if asked).
        shape_coeffs: (Ks,) float32; color_coeffs: (Kc,) float32.
        features: (D,) encoder features the coefficients were decoded from.
        box: (4,) detector box or None; landmarks68: (68, 2) or None; score: detector score.
        timing: seconds per stage.
        extra: more fields for the coefficient record (e.g. fusion statistics).
    """

    source: str
    name: str
    mesh: FaceMesh
    shape_coeffs: np.ndarray
    color_coeffs: np.ndarray
    features: np.ndarray
    box: Optional[np.ndarray] = None
    landmarks68: Optional[np.ndarray] = None
    score: Optional[float] = None
    timing: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def coeffs_record(self) -> dict:
        """The ``--save-coeffs`` record (see :mod:`facefit.coeffs_io`)."""
        rec = {
            "shape_coeffs": self.shape_coeffs,
            "color_coeffs": self.color_coeffs,
            "model_name": self.mesh.meta.get("model"),
            "model_hash": self.mesh.meta.get("model_hash"),
            "regressor": self.mesh.meta.get("regressor"),
            "facefit_version": __version__,
            "source": self.source,
            "box": None if self.box is None else np.asarray(self.box).tolist(),
            "landmarks68": None if self.landmarks68 is None else np.asarray(self.landmarks68).tolist(),
            "detector_score": self.score,
            "timing": self.timing,
        }
        rec.update(self.extra)
        return rec


# --------------------------------------------------------------------------- checkpoint


def default_checkpoint() -> Path:
    """The shipped regressor: ``$FACEFIT_CHECKPOINT``, else ``models/facefit-ict-dlib.pt``
    of the facefit checkout, else the user data dir's copy.

    Raises:
        ModelNotFoundError: none found.
    """
    env = os.environ.get("FACEFIT_CHECKPOINT")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelNotFoundError(f"FACEFIT_CHECKPOINT={env}: no such file")
        return p
    here = Path(__file__).resolve().parents[1] / "models" / DEFAULT_CHECKPOINT_NAME
    if here.is_file():
        return here
    from platformdirs import user_data_dir

    user = Path(user_data_dir("facefit")) / "models" / DEFAULT_CHECKPOINT_NAME
    if user.is_file():
        return user
    raise ModelNotFoundError(
        f"no trained regressor found ({DEFAULT_CHECKPOINT_NAME} in facefit's models/ folder or {user.parent}); "
        "pass --checkpoint or train one with 'facefit train'"
    )


# --------------------------------------------------------------------------- reconstructor


class Reconstructor:
    """Holds the regressor, the morphable model and the detector settings.

    Args:
        checkpoint: regressor checkpoint path (default: :func:`default_checkpoint`).
        model: morphable model, name or path (default: the model the checkpoint names,
            resolved through the model store / the default model).
        device: torch device (default: CUDA when available, else CPU).
        detector: face detector backend ("dlib", "mtcnn", "yunet").
        all_faces: reconstruct every face in a photo instead of only the main one.
        batch_size: faces per encoder batch.
    """

    def __init__(self, checkpoint=None, model=None, device=None, detector: str = "dlib",
                 all_faces: bool = False, batch_size: int = 32):
        from .model_io import resolve_model
        from .regressor import Regressor

        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = Path(checkpoint) if checkpoint else default_checkpoint()
        if not ckpt.is_file():
            raise ModelNotFoundError(f"{ckpt}: no such checkpoint")
        if model is None or isinstance(model, (str, os.PathLike)):
            try:
                model = resolve_model(model)
            except ModelNotFoundError as e:
                raise ModelNotFoundError(
                    f"the regressor {ckpt.name} needs its morphable model, which is missing: {e}"
                ) from None
        self.model = model
        self.regressor = Regressor.from_checkpoint(ckpt, model=model, device=self.device)
        self.regressor.eval()
        self.checkpoint = ckpt
        self.encoder = self.regressor.encoder
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = int(batch_size)

    # -- stages
    def detect(self, image: np.ndarray):
        """Faces in an image (main face first; one unless ``all_faces``)."""
        from .faces.detection import detect_faces

        return detect_faces(image, backend=self.detector, all_faces=self.all_faces)

    def crop(self, image: np.ndarray, face) -> np.ndarray:
        """(S, S, 3) uint8 encoder crop of a detected face."""
        from .faces.alignment import crop_for_net

        return crop_for_net(image, face, self.encoder.crop, self.encoder.input_size)

    @torch.no_grad()
    def encode(self, crops: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 crops -> (N, D) encoder features (batched)."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            out.append(self.encoder.features(x))
        return torch.cat(out) if out else torch.zeros(0, self.encoder.feature_dim, device=self.device)

    @torch.no_grad()
    def decode(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features -> shape (N, Ks) and colour (N, Kc) coefficients (numpy)."""
        pred = self.regressor.decode_features(features.to(self.device))
        return pred["shape_coeffs"].cpu().numpy(), pred["color_coeffs"].cpu().numpy()

    def mesh(self, shape: np.ndarray, color: np.ndarray, meta: dict) -> FaceMesh:
        from .turntable import mesh_from_coeffs

        info = {"regressor": self.checkpoint.name, **meta}
        return mesh_from_coeffs(self.model, shape, color if self.model.n_color else None, meta=info)

    # -- whole images
    def faces_of(self, item: InputItem):
        """Load + detect + crop one input. Returns (image, [(face, crop)], timing)."""
        from .faces.images import load_image

        t0 = time.perf_counter()
        image = item.image if item.image is not None else load_image(item.path)
        t1 = time.perf_counter()
        faces = self.detect(image)
        t2 = time.perf_counter()
        if not faces:
            raise NoFaceError(f"no face found in {item.label}")
        crops = [(f, self.crop(image, f)) for f in faces]
        t3 = time.perf_counter()
        return image, crops, {"load": t1 - t0, "detect": t2 - t1, "align": t3 - t2}


def _names(item: InputItem, n_faces: int) -> list[str]:
    base = item.rel + (f"_frame{item.frame:05d}" if item.frame is not None else "")
    return [base if k == 0 else f"{base}_face{k}" for k in range(n_faces)]


def reconstruct(
    inputs,
    checkpoint=None,
    model=None,
    *,
    fuse: bool = False,
    all_faces: bool = False,
    detector: str = "dlib",
    device=None,
    texture: Optional[str] = None,
    reconstructor: Optional[Reconstructor] = None,
    on_error: str = "raise",
) -> list[Reconstruction]:
    """Reconstruct faces from images, without writing anything.

    Args:
        inputs: a path, a folder, an (H, W, 3) uint8 RGB array, or a list of these.
        checkpoint, model, device, detector, all_faces: see :class:`Reconstructor`.
        fuse: treat all inputs as one person: average the encoder features of all faces
            (the main face of each image/frame) and decode ONE face; the result's ``extra``
            reports how consistent the per-image predictions were.
        texture: None (the model's predicted colour) or "photo" (fit pose/expression to the
            landmarks and project the photo onto the mesh; one photo per face).
        on_error: "raise" (default) or "skip" (bad inputs are left out).
    Returns:
        list of :class:`Reconstruction` (one per face; one in all with ``fuse``).
    """
    rec = reconstructor or Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse)
    items: list[InputItem] = []
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    paths = []
    for k, x in enumerate(inputs):
        if isinstance(x, np.ndarray):
            from .faces.images import as_rgb_uint8

            items.append(InputItem(Path(f"<array {k}>"), f"array{k}", None, as_rgb_uint8(x)))
        else:
            paths.append(x)
    for it in iter_items(expand_inputs(paths)):
        if isinstance(it, tuple):
            if on_error == "raise":
                raise it[2]
            continue
        items.append(it)
    if not items:
        raise FacefitError("no images to reconstruct")

    found = []  # (item, image, face, crop, timing)
    for it in items:
        try:
            image, crops, timing = rec.faces_of(it)
        except FacefitError:
            if on_error == "raise":
                raise
            continue
        for face, crop in crops:
            found.append((it, image, face, crop, timing))
    if not found:
        raise NoFaceError("no face found in any input")
    t0 = time.perf_counter()
    feats = rec.encode(np.stack([f[3] for f in found]))
    t_enc = (time.perf_counter() - t0) / len(found)

    if fuse:
        shapes, colors = rec.decode(feats)
        fused = feats.mean(0, keepdim=True)
        s, c = rec.decode(fused)
        verts = rec.model.decode(torch.from_numpy(shapes), None)[0]
        mean_v = rec.model.decode(torch.from_numpy(s), None)[0]
        dev = (verts - mean_v).norm(dim=-1).mean(-1).numpy()  # per-image mean vertex distance (mm)
        extra = {
            "fused_from": [f[0].label for f in found],
            "n_fused": len(found),
            "consistency_mm_mean": float(dev.mean()),
            "consistency_mm_max": float(dev.max()),
            "shape_coeff_std": float(shapes.std(0).mean()),
        }
        first = found[0][0]
        mesh = rec.mesh(s[0], c[0], {"source": f"fused from {len(found)} images"})
        return [Reconstruction(f"fused({len(found)})", first.rel + "_fused", mesh, s[0], c[0],
                               fused[0].cpu().numpy(), timing={"encode_per_face": t_enc}, extra=extra)]

    t0 = time.perf_counter()
    shapes, colors = rec.decode(feats)
    t_dec = (time.perf_counter() - t0) / len(found)
    out = []
    per_item: dict[int, int] = {}
    for k, (it, image, face, crop, timing) in enumerate(found):
        j = per_item.get(id(it), 0)
        per_item[id(it)] = j + 1
        name = _names(it, j + 1)[j]
        mesh = rec.mesh(shapes[k], colors[k], {"source": it.label})
        r = Reconstruction(it.label, name, mesh, shapes[k], colors[k], feats[k].cpu().numpy(),
                           box=face.box, landmarks68=face.landmarks68, score=float(face.score),
                           timing={**timing, "encode": t_enc, "decode": t_dec})
        if texture == "photo":
            from .texturing import texture_from_photo

            r.mesh = texture_from_photo(rec.model, r, image)
        elif texture not in (None, "model"):
            raise FacefitError(f"unknown texture '{texture}' (use 'model' or 'photo')")
        out.append(r)
    return out


# --------------------------------------------------------------------------- batch job


@dataclass
class BatchSummary:
    """What a :func:`run_batch` did."""

    processed: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    seconds: float = 0.0
    outputs: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    manifest: Optional[Path] = None

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def _append_manifest(path: Path, entry: dict) -> None:
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write: a line is either there or not
        os.fsync(fd)
    finally:
        os.close(fd)


def output_paths(out_dir: Path, name: str, fmt: str, save_coeffs: Optional[str], render: bool) -> dict:
    """Where the outputs of one face go."""
    base = out_dir / name
    paths = {"mesh": base.with_name(base.name + "." + fmt)}
    if save_coeffs:
        paths["coeffs"] = base.with_name(base.name + "." + save_coeffs)
    if render:
        paths["turntable"] = base.with_name(base.name + "_turntable")
    return paths


def write_outputs(r: Reconstruction, paths: dict, render_size: int = 256, frames: int = 24, model=None) -> list[Path]:
    """Write the mesh (+ coefficients, + turntable) of one reconstruction atomically."""
    from .coeffs_io import save_coeffs
    from .mesh_io import save_mesh

    written = []
    paths["mesh"].parent.mkdir(parents=True, exist_ok=True)
    if "coeffs" in paths:
        written.append(save_coeffs(r.coeffs_record(), paths["coeffs"]))
    if "turntable" in paths:
        from .turntable import write_turntable

        written.extend(write_turntable(r.mesh, paths["turntable"], frames=frames, size=render_size, model=model))
    # the mesh last: its presence marks the face as done (for skip_existing)
    written.extend(save_mesh(r.mesh, paths["mesh"]))
    return written


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    checkpoint=None,
    model=None,
    fmt: Optional[str] = None,
    save_coeffs: Optional[str] = None,
    render: bool = False,
    render_size: int = 256,
    fuse: bool = False,
    all_faces: bool = False,
    texture: Optional[str] = None,
    skip_existing: bool = False,
    detector: str = "dlib",
    device=None,
    progress: bool = True,
    on_item: Optional[Callable[[dict], None]] = None,
    batch_size: int = 16,
) -> BatchSummary:
    """Reconstruct inputs to files.

    Args:
        inputs: image files, folders (recursive) and video files.
        out: a mesh file path (one input, one face) or an output folder. With a single
            input and a suffix in MESH_FORMATS, ``out`` is the mesh path itself.
        fmt: mesh format for folder output ("obj", "ply", "glb"; default obj).
        save_coeffs: None, "npz" or "json".
        render: also write a turntable (GIF, MP4, contact sheet) per face.
        fuse: one face from all inputs (features averaged).
        skip_existing: leave faces whose mesh already exists (resume after interruption).
        progress: show a rich progress bar.
        batch_size: faces per encoder batch (outputs are written after each batch).
    Returns:
        :class:`BatchSummary`; a ``manifest.jsonl`` in the output folder lists every input
        with its outputs or its error.
    """
    t_start = time.perf_counter()
    out = Path(out)
    pairs = expand_inputs(inputs)
    missing = [str(p) for p, _ in pairs if not p.exists() and not p.is_symlink()]
    if not pairs:
        raise FacefitError("no images or videos found in the inputs")
    single_file = out.suffix.lower().lstrip(".") in MESH_FORMATS
    if single_file:
        if len(pairs) > 1 and not fuse:
            raise FacefitError(f"{len(pairs)} inputs need an output folder, not the file {out.name}")
        if missing:
            raise FacefitError(f"{missing[0]}: no such file")
        fmt = out.suffix.lower().lstrip(".")
        out_dir = out.parent
    else:
        fmt = (fmt or "obj").lower().lstrip(".")
        if fmt not in MESH_FORMATS:
            raise FacefitError(f"unknown mesh format '{fmt}' (use {', '.join(MESH_FORMATS)})")
        out_dir = out
    if save_coeffs and save_coeffs not in ("npz", "json"):
        raise FacefitError(f"--save-coeffs must be npz or json, not '{save_coeffs}'")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FacefitError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise FacefitError(f"output folder {out_dir} is not writable")
    if skip_existing:  # resuming: drop half-written files of a run that was killed
        from .atomic import remove_stale_temps

        remove_stale_temps(out_dir)

    rec = Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse,
                        batch_size=batch_size)
    summary = BatchSummary(manifest=None if single_file else out_dir / "manifest.jsonl")

    def note(entry):
        if summary.manifest is not None:
            _append_manifest(summary.manifest, entry)
        if on_item:
            on_item(entry)

    if fuse:
        rs = reconstruct([p for p, _ in pairs], reconstructor=rec, fuse=True, on_error="skip")
        r = rs[0]
        paths = output_paths(out_dir, out.stem if single_file else r.name, fmt, save_coeffs, render)
        if single_file:
            paths["mesh"] = out
        written = write_outputs(r, paths, render_size, model=rec.model)
        summary.processed, summary.faces = len(pairs), 1
        summary.outputs.extend(written)
        note({"input": "fused", "outputs": [str(p) for p in written], **{k: v for k, v in r.extra.items()}})
        summary.seconds = time.perf_counter() - t_start
        return summary

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    items = list(iter_items(pairs))
    bar = Progress(TextColumn("[bold]reconstructing"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress, transient=False)
    with bar:
        task = bar.add_task("faces", total=len(items), rate="")
        pending = []  # faces waiting for a batched encode: (item, face, crop, timing, image)

        def flush():
            if not pending:
                return
            t0 = time.perf_counter()
            feats = rec.encode(np.stack([p[2] for p in pending]))
            t1 = time.perf_counter()
            shapes, colors = rec.decode(feats)
            t2 = time.perf_counter()
            by_item = {}
            for k, (it, face, crop, timing, image) in enumerate(pending):
                by_item.setdefault(id(it), (it, []))[1].append((k, face, timing, image))
            for it, faces in by_item.values():
                names = _names(it, len(faces))
                written_all = []
                try:
                    for (k, face, timing, image), name in zip(faces, names):
                        r = Reconstruction(it.label, name, rec.mesh(shapes[k], colors[k], {"source": it.label}),
                                           shapes[k], colors[k], feats[k].cpu().numpy(), box=face.box,
                                           landmarks68=face.landmarks68, score=float(face.score),
                                           timing={**timing, "encode": (t1 - t0) / len(pending),
                                                   "decode": (t2 - t1) / len(pending)})
                        if texture == "photo":
                            from .texturing import texture_from_photo

                            r.mesh = texture_from_photo(rec.model, r, image)
                        if single_file:  # outputs named after -o, e.g. face.obj, face.json
                            stem = out.stem if len(faces) == 1 else f"{out.stem}_{name.rsplit('_', 1)[-1]}"
                            paths = output_paths(out_dir, stem, fmt, save_coeffs, render)
                            if stem == out.stem:
                                paths["mesh"] = out
                        else:
                            paths = output_paths(out_dir, name, fmt, save_coeffs, render)
                        tw = time.perf_counter()
                        written = write_outputs(r, paths, render_size, model=rec.model)
                        r.timing["write"] = time.perf_counter() - tw
                        written_all.extend(written)
                    summary.processed += 1
                    summary.faces += len(faces)
                    summary.outputs.extend(written_all)
                    note({"input": it.label, "status": "ok", "faces": len(faces),
                          "outputs": [str(p) for p in written_all], "timing": r.timing})
                except FacefitError as e:
                    summary.failed += 1
                    summary.errors.append((it.label, str(e)))
                    note({"input": it.label, "status": "error", "error": str(e)})
            pending.clear()

        for it in items:
            if isinstance(it, tuple):
                summary.failed += 1
                summary.errors.append((str(it[0]), str(it[2])))
                note({"input": str(it[0]), "status": "error", "error": str(it[2])})
                bar.advance(task)
                continue
            if skip_existing and not single_file:
                first = output_paths(out_dir, _names(it, 1)[0], fmt, save_coeffs, render)["mesh"]
                if first.exists():
                    summary.skipped += 1
                    note({"input": it.label, "status": "skipped", "outputs": [str(first)]})
                    bar.advance(task)
                    continue
            try:
                image, crops, timing = rec.faces_of(it)
            except FacefitError as e:
                summary.failed += 1
                summary.errors.append((it.label, str(e)))
                note({"input": it.label, "status": "error", "error": str(e)})
                bar.advance(task)
                continue
            for face, crop in crops:
                pending.append((it, face, crop, timing, image if texture == "photo" else None))
            if len(pending) >= rec.batch_size:
                flush()
            bar.advance(task)
            el = time.perf_counter() - t_start
            bar.update(task, rate=f"{(summary.processed + len(pending)) / max(el, 1e-9):.1f} img/s")
        flush()
    summary.seconds = time.perf_counter() - t_start
    if single_file and summary.failed:
        raise FacefitError(summary.errors[0][1])
    return summary
