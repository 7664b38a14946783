"""Photos to 3D faces: the Python API behind ``facefit reconstruct``.

Pipeline per face: load image -> detect (68 landmarks) -> align to the encoder's crop ->
frozen recognition encoder -> decoder -> morphable-model coefficients -> mesh.

* :func:`reconstruct` returns :class:`Reconstruction` objects (meshes + coefficients)
  without touching the disk.
* :func:`facefit.batch.job.run_batch` is the batch job: inputs (files, folders, videos) to
  mesh files, coefficient files and turntables, atomically written, with a manifest,
  ``skip_existing`` and a summary (also importable from here).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence
from collections.abc import Mapping

import numpy as np

from . import __version__
from .errors import FacefitError, InvalidFileError, ModelNotFoundError, NoFaceError
from .mesh_io import FaceMesh

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MESH_FORMATS = ("obj", "ply", "glb")
MESH_UNITS = ("mm", "cm", "m")
# regressor provenance in every mesh's meta and coefficient record (see checkpoint_info)
REGRESSOR_FIELDS = ("regressor_sha256", "regressor_step", "regressor_format")
DEFAULT_CHECKPOINT_NAME = "facefit-ict-dlib-facenet.pt"


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


def _walk(root: Path, errors: Optional[list] = None) -> Iterator[Path]:
    """Files below ``root``, sorted, following no symlink loops.

    A folder that cannot be listed (no permission, I/O error) is reported: appended to
    ``errors`` as ``(folder, message)`` and the walk goes on, or, without ``errors``,
    raised as :class:`InvalidFileError`.
    """
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
        except OSError as e:
            msg = f"cannot read folder {d}: {e.strerror or e}"
            if errors is None:
                raise InvalidFileError(msg) from None
            errors.append((d, msg))
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


def _unique_names(pairs: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Make output names unique: inputs whose names collide (``p00.png`` and ``p00.jpg``
    in one folder both give ``p00``; compared case-insensitively, for case-insensitive
    file systems) get their source extension appended (``p00_png``, ``p00_jpg``), then a
    counter if that is still taken (``a_jpg``, ``a_jpg_2``). Names that do not collide
    are kept. The result depends only on the whole input list, so a rerun on the same
    inputs maps every input to the same outputs.
    """
    groups: dict[str, list[int]] = {}
    for k, (_, rel) in enumerate(pairs):
        groups.setdefault(rel.casefold(), []).append(k)
    names = [rel for _, rel in pairs]
    taken = {key for key, idx in groups.items() if len(idx) == 1}
    for idx in groups.values():  # in input order: deterministic
        if len(idx) == 1:
            continue
        for k in idx:
            path, rel = pairs[k]
            ext = path.suffix.lower().lstrip(".")
            base = f"{rel}_{ext}" if ext else rel
            name, n = base, 2
            while name.casefold() in taken:
                name, n = f"{base}_{n}", n + 1
            taken.add(name.casefold())
            names[k] = name
    return [(path, name) for (path, _), name in zip(pairs, names)]


def expand_inputs(inputs: Sequence[str | os.PathLike], errors: Optional[list] = None) -> list[tuple[Path, str]]:
    """Expand files and folders (recursively) into (path, output-name) pairs.

    Folder members keep their sub-path (``sub/dir/photo``) so that outputs of photos with
    the same file name in different folders do not collide; inputs that would still share
    an output name get their extension appended (see :func:`_unique_names`). Only image
    and video suffixes are taken from folders; files named explicitly are always taken. A
    file named twice (or named and also found in a folder) is taken once.

    Args:
        inputs: files and folders.
        errors: if given, folders that cannot be read are appended as ``(folder,
            message)`` and skipped; otherwise they raise :class:`InvalidFileError`.
    """
    out, seen = [], set()

    def add(path: Path, rel: str):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.append((path, rel))

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in _walk(p, errors):
                if f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                    add(f, f.relative_to(p).with_suffix("").as_posix())
        else:
            add(p, p.with_suffix("").name)
    return _unique_names(out)


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
                frames = video_frames(path, video_every, video_max_frames)
            except Exception as e:  # noqa: BLE001 - a bad video is reported, the batch goes on
                yield (path, rel, e)
                continue
            for idx, img in frames:
                yield InputItem(path, rel, idx, img)
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
        pose: with ``pose=True``, the photo's :class:`facefit.avatar.pose.PoseFit` (head pose,
            camera, expression weights by name); None when not asked for or when the fit
            failed (then ``extra["pose_error"]`` says why).
        track: with ``fuse`` and ``pose`` on a video, its :class:`facefit.avatar.track.Track`.
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
    #: with ``blendshapes``: :class:`facefit.avatar.rig.MorphTargets` of the mesh, and its
    #: default morph weights (K,) or None (all 0); a GLB output then carries them
    morph_targets: Optional[Any] = None
    morph_weights: Optional[np.ndarray] = None
    pose: Optional[Any] = None
    track: Optional[Any] = None

    def coeffs_record(self) -> dict:
        """The ``--save-coeffs`` record (see :mod:`facefit.coeffs_io`)."""
        rec = {
            "shape_coeffs": self.shape_coeffs,
            "color_coeffs": self.color_coeffs,
            "model_name": self.mesh.meta.get("model"),
            "model_hash": self.mesh.meta.get("model_hash"),
            "regressor": self.mesh.meta.get("regressor"),
            **{k: self.mesh.meta.get(k) for k in REGRESSOR_FIELDS},
            "facefit_version": __version__,
            "source": self.source,
            "box": None if self.box is None else np.asarray(self.box).tolist(),
            "landmarks68": None if self.landmarks68 is None else np.asarray(self.landmarks68).tolist(),
            "detector_score": self.score,
            "timing": self.timing,
        }
        rec.update(self.extra)
        if self.pose is not None:
            rec["pose"] = self.pose.record()
        return rec


# --------------------------------------------------------------------------- checkpoint


def default_checkpoint() -> Path:
    """The shipped regressor: ``$FACEFIT_CHECKPOINT``, else ``models/facefit-ict-dlib-facenet.pt``
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
    from .shipped import shipped_models_dir

    here = shipped_models_dir() / DEFAULT_CHECKPOINT_NAME
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


def checkpoint_and_model(checkpoint=None, model=None) -> tuple[Path, Any]:
    """The regressor file (``checkpoint`` or :func:`default_checkpoint`) and its morphable
    model (``model``: an object, a name or path, or None for the default), for both
    inference engines (torch and :mod:`facefit.batch.lite`); imports no torch.

    Raises:
        ModelNotFoundError: no such checkpoint, or its morphable model is missing.
    """
    from .model_io import resolve_model

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
    return ckpt, model


def checkpoint_info(path: str | os.PathLike, checkpoint: Mapping[str, Any] | None = None) -> dict:
    """Which regressor a checkpoint file is, for provenance records.

    Args:
        path: the checkpoint file.
        checkpoint: its already-loaded contents (at least ``meta``/``step``/``format``,
            e.g. ``Regressor.checkpoint_fields``); None = load the file here.
    Returns:
        dict: ``regressor`` (file name), ``regressor_sha256`` (first 16 hex digits of the
        file's SHA-256), ``regressor_step`` (training step, from the checkpoint's ``meta``
        or a training checkpoint's ``step``; None when unknown) and ``regressor_format``
        (the checkpoint format number; None when unreadable).
    """
    from facefit.cache import file_sha256

    path = Path(path)
    info = {"regressor": path.name, "regressor_sha256": file_sha256(path)[:16],
            "regressor_step": None, "regressor_format": None}
    ck = checkpoint
    if ck is None:
        import torch

        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - the regressor loader reports unreadable files
            return info
    if isinstance(ck, Mapping):
        meta = ck.get("meta") if isinstance(ck.get("meta"), dict) else {}
        step = meta.get("step", ck.get("step"))
        if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step >= 0:
            info["regressor_step"] = int(step)  # export_checkpoint writes -1 when unknown
        if isinstance(ck.get("format"), int):
            info["regressor_format"] = ck["format"]
    return info


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
        refine: identity-refinement steps per face after the regressor (0 = the
            regressor's prediction as is; see :mod:`facefit.refine`).
        refine_shape: refinement also moves the shape (default: the colour only, so the
            geometry stays the regressor's; :mod:`facefit.refine`).
        head: write the complete ICT-FaceKit head instead of the face area
            (:mod:`facefit.avatar.head`).
        blendshapes: give each reconstruction the model's expressions as named morph
            targets (:mod:`facefit.avatar.rig`; written into GLB outputs). Implies ``head``
            for ICT-FaceKit models.
        pose: also fit each face's pose, camera and expression (:mod:`facefit.avatar.pose`).
    """

    def __init__(self, checkpoint=None, model=None, device=None, detector: str = "dlib",
                 all_faces: bool = False, batch_size: int = 32, refine: int = 0, head: bool = False,
                 blendshapes: bool = False, pose: bool = False, refine_shape: bool = False):
        import torch

        from .regressor import Regressor

        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ckpt, model = checkpoint_and_model(checkpoint, model)
        self.model = model
        self.regressor = Regressor.from_checkpoint(ckpt, model=model, device=self.device)
        self.regressor.eval()
        self.checkpoint = ckpt
        self.checkpoint_info = checkpoint_info(ckpt, self.regressor.checkpoint_fields)  # name, sha256, step, format: once
        self.encoder = self.regressor.encoder
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = int(batch_size)
        from .refine import RefineSettings

        self.refine_settings = RefineSettings(steps=int(refine), shape_lr=1.0 if refine_shape else 0.0)
        self.pose = bool(pose)
        # an ICT avatar opens its mouth and moves its eyes: it needs the head's teeth and eyes
        self.head = bool(head) or (bool(blendshapes) and model.meta.get("source") == "ICT-FaceKit")
        self.blendshapes = bool(blendshapes)
        self._targets = None
        if self.head:
            from .avatar.head import head_model_for

            self.head_model = head_model_for(self.model)

    @property
    def mesh_model(self):
        """The model of the written meshes: the head model with ``head``, else ``model``."""
        return self.head_model if self.head else self.model

    def morph_targets(self):
        """The mesh model's :class:`facefit.avatar.rig.MorphTargets` (built once)."""
        if self._targets is None:
            from .avatar.rig import morph_targets

            self._targets = morph_targets(self.mesh_model)
        return self._targets

    def texture(self, r: "Reconstruction", image: np.ndarray) -> FaceMesh:
        """``r.mesh`` with a texture from the photo (``--texture photo``)."""
        if self.head:
            from .avatar.head import head_texture_from_photo

            return head_texture_from_photo(self.head_model, r, image)
        from .texturing import texture_from_photo

        return texture_from_photo(self.model, r, image)

    # -- stages
    def detect(self, image: np.ndarray):
        """Faces in an image (main face first; one unless ``all_faces``)."""
        from .faces.detection import detect_faces

        return detect_faces(image, backend=self.detector, all_faces=self.all_faces)

    def crop(self, image: np.ndarray, face) -> np.ndarray:
        """(S, S, 3) uint8 encoder crop of a detected face."""
        from .faces.alignment import crop_for_net

        return crop_for_net(image, face, self.encoder.crop, self.encoder.input_size)

    def encode(self, crops: np.ndarray) -> "torch.Tensor":
        """(N, S, S, 3) uint8 crops -> (N, D) encoder features (batched)."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
                x = x.permute(0, 3, 1, 2).float() / 255.0
                out.append(self.encoder.features(x))
        return torch.cat(out) if out else torch.zeros(0, self.encoder.feature_dim, device=self.device)

    def decode(self, features: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features -> shape (N, Ks) and colour (N, Kc) coefficients (numpy)."""
        import torch

        with torch.no_grad():
            pred = self.regressor.decode_features(torch.as_tensor(features).to(self.device))
        return pred["shape_coeffs"].cpu().numpy(), pred["color_coeffs"].cpu().numpy()

    def refine(self, crops: np.ndarray, shapes: np.ndarray, colors: np.ndarray,
               fused: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Identity refinement of predicted coefficients (no-op when ``refine`` is 0).

        Args:
            crops: (N, S, S, 3) uint8 encoder crops of the photos.
            shapes, colors: (M, Ks), (M, Kc) predictions; M = N, or M = 1 with ``fused``
                (the target is then the mean of the N photos' unit embeddings).
        Returns:
            refined shapes and colours, and per prediction a dict for ``extra["refine"]``
            (steps, identity score of the first and the last step, seconds).
        """
        cfg = self.refine_settings
        if not cfg.steps:
            return shapes, colors, [{} for _ in range(len(shapes))]
        import torch

        from .refine import refine_identity

        t0 = time.perf_counter()
        net, cut = self.encoder.refine_network()  # a combined encoder names one of its parts
        with torch.no_grad():
            embs = []
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
                x = x.permute(0, 3, 1, 2).float() / 255.0
                embs.append(net.embed(cut(x) if cut is not None else x))
            emb = torch.cat(embs)
            if fused:
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0, keepdim=True)
        s, c, info = refine_identity(self.model, net, emb, shapes, colors, cfg)
        dt = (time.perf_counter() - t0) / max(len(shapes), 1)
        per = [{"steps": int(cfg.steps), "shape": bool(cfg.shape_lr > 0), "identity_before": float(info["identity_before"][k]),
                "identity_after": float(info["identity_after"][k]), "seconds": dt} for k in range(len(shapes))]
        return s, c, per

    def mesh(self, shape: np.ndarray, color: np.ndarray, meta: dict) -> FaceMesh:
        from .turntable import mesh_from_coeffs

        info = {**{k: v for k, v in self.checkpoint_info.items() if v is not None}, **meta}
        face = mesh_from_coeffs(self.model, shape, color if self.model.n_color else None, meta=info)
        if self.head:
            from .avatar.head import head_mesh

            return head_mesh(self.model, shape, face.colors, face.meta, head=self.head_model)
        return face

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


def _error_text(e: BaseException) -> str:
    """One line for a manifest / summary: facefit's own message, else ``Type: message``."""
    text = str(e) if isinstance(e, FacefitError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split()) or type(e).__name__


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
    errors: Optional[list] = None,
    refine: int = 0,
    head: bool = False,
    blendshapes: bool = False,
    pose: bool = False,
    track_every: int = 1,
    track_smooth: Optional[float] = None,
    refine_shape: bool = False,
) -> list[Reconstruction]:
    """Reconstruct faces from images, without writing anything.

    Args:
        inputs: a path, a folder, an (H, W, 3) uint8 RGB array, or a list of these.
        checkpoint, model, device, detector, all_faces: see :class:`Reconstructor`.
        fuse: treat all inputs as one person: average the encoder features of all faces
            (the main face of each image/frame) and decode ONE face; the result's ``extra``
            reports how consistent the per-image predictions were (``n_fused``,
            ``consistency_mm_mean`` / ``_max``: each image's own prediction's mean vertex
            distance to the fused face, in mm).
        texture: None (the model's predicted colour) or "photo" (fit pose/expression to the
            landmarks and project the photo onto the mesh; one photo per face). With
            ``fuse`` the texture comes from the photo whose face the detector is most
            confident about (the first of them on a tie), named in ``extra["texture_from"]``.
        on_error: "raise" (default) or "skip" (bad inputs are left out).
        errors: with ``on_error="skip"``, each input left out is appended here as
            ``(label, one-line message)``.
        refine: identity-refinement steps per face after the regressor (beyond the paper;
            :mod:`facefit.refine`); the result's ``extra["refine"]`` has the identity score
            before and after.
        refine_shape: refinement also moves the shape (default: the colour only).
        head, blendshapes: see :class:`Reconstructor` (the complete head; morph targets).
        pose: also fit each face's head pose, camera and expression weights to its photo
            (``Reconstruction.pose``, :mod:`facefit.avatar.pose`). With ``fuse`` the input
            must include one video: it is tracked frame by frame (``Reconstruction.track``,
            :mod:`facefit.avatar.track`; every ``track_every``-th frame, temporal smoothing
            ``track_smooth`` seconds, None = the default).
    Without ``reconstructor``, a plain call (none of ``fuse``, ``refine``, ``texture="photo"``,
    ``head``, ``blendshapes``, ``pose``; no CUDA ``device``; a dlib-encoder checkpoint) runs
    without torch, as :func:`facefit.batch.job.run_batch` does (:mod:`facefit.batch.lite`:
    the same results within a float tolerance, ``docs/speed.md``; ``$FACEFIT_ENGINE=torch``
    turns this off).

    Returns:
        list of :class:`Reconstruction` (one per face; one in all with ``fuse``).
    Raises:
        NoFaceError: no face in any input (also with ``on_error="skip"``).
    """
    if texture not in (None, "model", "photo"):
        raise FacefitError(f"unknown texture '{texture}' (use 'model' or 'photo')")
    if on_error not in ("raise", "skip"):
        raise FacefitError(f"on_error must be 'raise' or 'skip', not '{on_error}'")
    skipped = errors if errors is not None else []

    def left_out(label, e):
        if on_error == "raise":
            raise e
        skipped.append((label, _error_text(e)))

    rec = reconstructor
    if rec is None:
        from .batch.lite import lite_reason, make_lite_reconstructor

        if lite_reason(refine=refine, fuse=fuse, texture=texture, head=head, blendshapes=blendshapes, pose=pose,
                       device=device) is None:  # a plain call: no torch (facefit.batch.lite)
            rec = make_lite_reconstructor(checkpoint, model, detector, all_faces=all_faces)
    if rec is None:
        rec = Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse,
                            refine=refine, head=head, blendshapes=blendshapes, pose=pose, refine_shape=refine_shape)
    pose = pose or rec.pose
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
    walk_errors = [] if on_error == "skip" else None
    pairs = expand_inputs(paths, walk_errors)
    for d, msg in walk_errors or []:
        skipped.append((str(d), msg))
    for it in iter_items(pairs):
        if isinstance(it, tuple):
            left_out(str(it[0]), it[2])
            continue
        items.append(it)
    if not items:
        if skipped:
            raise NoFaceError("no face found in any input (none could be read)")
        raise FacefitError("no images to reconstruct")

    found = []  # (item, image, face, crop, timing, features or None)
    for it in items:
        try:
            image, crops, timing = rec.faces_of(it)
        except Exception as e:  # noqa: BLE001 - on_error decides
            left_out(it.label, e)
            continue
        for face, crop, *feat in crops:  # the torch-free engine encodes each face in faces_of
            found.append((it, image, face, crop, timing, feat[0] if feat else None))
    if not found:
        raise NoFaceError("no face found in any input")
    t0 = time.perf_counter()
    if all(f[5] is not None for f in found):
        feats = np.stack([f[5] for f in found])
        t_enc = float(np.mean([f[4].get("encode", 0.0) for f in found]))
    else:
        feats = rec.encode(np.stack([f[3] for f in found]))
        t_enc = (time.perf_counter() - t0) / len(found)

    if fuse:
        import torch

        shapes, colors = rec.decode(feats)
        fused = feats.mean(0, keepdim=True)
        s, c = rec.decode(fused)
        s, c, ref = rec.refine(np.stack([f[3] for f in found]), s, c, fused=True)
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
        if ref[0]:
            extra["refine"] = ref[0]
        first = found[0][0]
        mesh = rec.mesh(s[0], c[0], {"source": f"fused from {len(found)} images"})
        r = Reconstruction(f"fused({len(found)})", first.rel + "_fused", mesh, s[0], c[0],
                           fused[0].cpu().numpy(), timing={"encode_per_face": t_enc}, extra=extra)
        if rec.blendshapes:
            r.morph_targets = rec.morph_targets()
        if texture == "photo":
            from dataclasses import replace

            best = max(range(len(found)), key=lambda k: (float(found[k][2].score), -k))
            it, image, face = found[best][:3]
            photo = replace(r, source=it.label, box=face.box, landmarks68=face.landmarks68, score=float(face.score))
            r.mesh = rec.texture(photo, image)
            r.extra["texture_from"] = it.label
        if pose:
            from .avatar.track import track_inputs

            r.track = track_inputs(rec, [p for p, _ in pairs], r.shape_coeffs, every=track_every, smooth=track_smooth)
            r.extra["track"] = r.track.summary()
        return [r]

    t0 = time.perf_counter()
    shapes, colors = rec.decode(feats)
    t_dec = (time.perf_counter() - t0) / len(found)
    shapes, colors, refs = rec.refine(np.stack([f[3] for f in found]), shapes, colors)
    out = []
    per_item: dict[int, int] = {}
    for k, (it, image, face, crop, timing, _) in enumerate(found):
        j = per_item.get(id(it), 0)
        per_item[id(it)] = j + 1
        name = _names(it, j + 1)[j]
        out.append(_face_reconstruction(rec, it.label, name, shapes[k], colors[k], feats[k], face,
                                        {**timing, "encode": t_enc, "decode": t_dec}, refs[k], texture, image, pose))
    return out


def _face_reconstruction(rec: "Reconstructor", label: str, name: str, shape, color, feat, face, timing: dict,
                         ref: Optional[dict], texture: str, image, pose: Optional[bool] = None) -> Reconstruction:
    """One detected face's :class:`Reconstruction` (mesh, provenance, optional photo texture)."""
    feat = feat if isinstance(feat, np.ndarray) else feat.cpu().numpy()
    r = Reconstruction(label, name, rec.mesh(shape, color, {"source": label}), shape, color, feat,
                       box=face.box, landmarks68=face.landmarks68, score=float(face.score),
                       timing={**timing, **({"refine": ref["seconds"]} if ref else {})},
                       extra={"refine": ref} if ref else {})
    if rec.blendshapes:
        r.morph_targets = rec.morph_targets()
    if texture == "photo":
        r.mesh = rec.texture(r, image)
    if (rec.pose if pose is None else pose) and image is not None:
        from .avatar.pose import attach_pose

        attach_pose(rec.model, r, image)
    return r


# --------------------------------------------------------------------------- batch job
#: the batch job's names, kept importable from here (they live in :mod:`facefit.batch.job`)
_BATCH_NAMES = frozenset({"BatchSummary", "MANIFEST_NAME", "output_paths", "expected_files", "write_outputs",
                          "write_item", "writable_elsewhere", "run_batch"})


def __getattr__(name: str):
    if name in _BATCH_NAMES:
        from .batch import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
