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
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence
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
        head: write the complete ICT-FaceKit head instead of the face area
            (:mod:`facefit.avatar.head`).
        blendshapes: give each reconstruction the model's expressions as named morph
            targets (:mod:`facefit.avatar.rig`; written into GLB outputs). Implies ``head``
            for ICT-FaceKit models.
        pose: also fit each face's pose, camera and expression (:mod:`facefit.avatar.pose`).
    """

    def __init__(self, checkpoint=None, model=None, device=None, detector: str = "dlib",
                 all_faces: bool = False, batch_size: int = 32, refine: int = 0, head: bool = False,
                 blendshapes: bool = False, pose: bool = False):
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

        self.refine_settings = RefineSettings(steps=int(refine))
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
        with torch.no_grad():
            embs = []
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
                embs.append(self.encoder.embed(x.permute(0, 3, 1, 2).float() / 255.0))
            emb = torch.cat(embs)
            if fused:
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0, keepdim=True)
        s, c, info = refine_identity(self.model, self.encoder, emb, shapes, colors, cfg)
        dt = (time.perf_counter() - t0) / max(len(shapes), 1)
        per = [{"steps": int(cfg.steps), "identity_before": float(info["identity_before"][k]),
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
        head, blendshapes: see :class:`Reconstructor` (the complete head; morph targets).
        pose: also fit each face's head pose, camera and expression weights to its photo
            (``Reconstruction.pose``, :mod:`facefit.avatar.pose`). With ``fuse`` the input
            must include one video: it is tracked frame by frame (``Reconstruction.track``,
            :mod:`facefit.avatar.track`; every ``track_every``-th frame, temporal smoothing
            ``track_smooth`` seconds, None = the default).
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

    rec = reconstructor or Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse,
                                         refine=refine, head=head, blendshapes=blendshapes, pose=pose)
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

    found = []  # (item, image, face, crop, timing)
    for it in items:
        try:
            image, crops, timing = rec.faces_of(it)
        except Exception as e:  # noqa: BLE001 - on_error decides
            left_out(it.label, e)
            continue
        for face, crop in crops:
            found.append((it, image, face, crop, timing))
    if not found:
        raise NoFaceError("no face found in any input")
    t0 = time.perf_counter()
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
    for k, (it, image, face, crop, timing) in enumerate(found):
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


@dataclass
class BatchSummary:
    """What a :func:`run_batch` did.

    ``failed`` counts inputs (and unreadable folders) that gave no output, also those
    left out of a ``fuse``; ``errors`` lists them as (label, message). ``fused`` holds the
    fused face's statistics (``n_fused``, ``consistency_mm_mean``, ``consistency_mm_max``,
    ``texture_from``) with ``fuse``. ``engine`` says which inference path ran: "lite"
    (plain jobs, no torch, :mod:`facefit.batch.lite`) or "torch".
    """

    processed: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    seconds: float = 0.0
    outputs: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    manifest: Optional[Path] = None
    fused: Optional[dict] = None
    pose_errors: list = field(default_factory=list)
    #: "lite" (no torch: :mod:`facefit.batch.lite`) or "torch"
    engine: str = "torch"

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


MANIFEST_NAME = "manifest.jsonl"


def _append_manifest(path: Path, entry: dict) -> None:
    from .atomic import describe_os_error

    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: a line is either there or not
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise FacefitError(describe_os_error(path, e)) from None


class _Manifest:
    """The manifest of one run: a line per input, appended (and fsync-ed) to
    ``manifest.jsonl.partial`` as each input finishes, so that a killed run loses nothing;
    when the run ends the partial file is renamed over ``manifest.jsonl``."""

    def __init__(self, path: Path):
        from .atomic import describe_os_error

        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        try:  # a new run starts a new partial manifest (a killed run's is superseded)
            os.close(os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        except OSError as e:
            raise FacefitError(describe_os_error(self.partial, e)) from None

    def add(self, entry: dict) -> None:
        _append_manifest(self.partial, entry)

    def finish(self) -> None:
        from .atomic import describe_os_error

        try:
            os.replace(self.partial, self.path)
        except OSError as e:
            raise FacefitError(describe_os_error(self.path, e)) from None


def output_paths(out_dir: Path, name: str, fmt: str, save_coeffs: Optional[str], render: bool,
                 pose: bool = False, track: bool = False) -> dict:
    """Where the outputs of one face go (``pose``/``track``: see :mod:`facefit.avatar.files`)."""
    base = out_dir / name
    paths = {"mesh": base.with_name(base.name + "." + fmt)}
    if save_coeffs:
        paths["coeffs"] = base.with_name(base.name + "." + save_coeffs)
    if render:
        paths["turntable"] = base.with_name(base.name + "_turntable")
    if pose or track:
        from .avatar.files import avatar_paths

        paths.update(avatar_paths(base, fmt, pose=pose, track=track))
    return paths


def expected_files(paths: dict, companions: bool = False) -> list[Path]:
    """The files that the outputs ``paths`` (:func:`output_paths`) of one face make: the
    mesh, the coefficients, the turntable's GIF, MP4 and contact sheet; with
    ``companions`` also the ``.mtl`` and ``_texture.png`` an OBJ with a texture has beside it."""
    from .media import turntable_paths as _turntable_paths

    mesh = paths["mesh"]
    files = [mesh]
    if companions and mesh.suffix.lower() == ".obj":
        from .mesh_io import obj_companions

        files += list(obj_companions(mesh))
    if "coeffs" in paths:
        files.append(paths["coeffs"])
    if "turntable" in paths:
        files.extend(_turntable_paths(paths["turntable"]))
    from .avatar.files import avatar_files

    files.extend(avatar_files(paths, companions))
    return files


def _file_key(p: Path):
    """Identity of the file at ``p`` (an atomic rewrite gives a new inode), or None."""
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _remove_files(paths: Iterable[Path]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


def write_outputs(r: Reconstruction, paths: dict, render_size: int = 256, frames: int = 24, model=None,
                  units: Optional[str] = None) -> list[Path]:
    """Write the mesh (+ coefficients, + turntable) of one reconstruction.

    Every file is written atomically, and the set is all or nothing: if writing one of
    them fails (disk full, ...), the files this call already wrote are removed again and
    the error propagates, so a face's outputs are either complete or absent.

    Args:
        units: mesh file units ("mm", "cm", "m"; None: the format's default, see
            :func:`facefit.mesh_io.save_mesh`).
    Returns:
        The files written.
    """
    from .coeffs_io import save_coeffs
    from .mesh_io import save_mesh

    candidates = expected_files(paths, companions=True)
    before = {p: _file_key(p) for p in candidates}
    written = []
    try:
        paths["mesh"].parent.mkdir(parents=True, exist_ok=True)
        if "coeffs" in paths:
            written.append(save_coeffs(r.coeffs_record(), paths["coeffs"]))
        if "turntable" in paths:
            from .turntable import write_turntable

            written.extend(write_turntable(r.mesh, paths["turntable"], frames=frames, size=render_size, model=model))
        from .avatar.files import AVATAR_KEYS, write_avatar_outputs

        if any(k in paths for k in AVATAR_KEYS):
            written.extend(write_avatar_outputs(r, paths, model, units=units))
        # the mesh last: its presence marks the face as done (for skip_existing)
        if r.morph_targets is not None and paths["mesh"].suffix.lower() == ".glb":
            from .avatar.gltf import save_glb_avatar

            written.extend(save_glb_avatar(r.mesh, paths["mesh"], r.morph_targets.as_dict(), r.morph_weights,
                                           units=units))
        else:
            written.extend(save_mesh(r.mesh, paths["mesh"], units=units))
    except BaseException:
        _remove_files(p for p in dict.fromkeys(candidates + written) if _file_key(p) != before.get(p))
        raise
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
    units: Optional[str] = None,
    skip_existing: bool = False,
    detector: str = "dlib",
    device=None,
    progress: bool = True,
    on_item: Optional[Callable[[dict], None]] = None,
    batch_size: int = 16,
    refine: int = 0,
    head: bool = False,
    blendshapes: bool = False,
    pose: bool = False,
    track_every: int = 1,
    track_smooth: Optional[float] = None,
) -> BatchSummary:
    """Reconstruct inputs to files.

    Args:
        inputs: image files, folders (recursive) and video files.
        out: a mesh file path (one input giving one face, or ``fuse``) or an output folder.
            With a suffix in MESH_FORMATS, ``out`` is the mesh path itself; a video, several
            inputs or a photo with several faces (``all_faces``) are refused there unless
            ``fuse``. In a folder, outputs are named after the inputs (sub-folders kept);
            inputs that would share a name get their extension appended (``p00_png.obj``,
            ``p00_jpg.obj``; see :func:`expand_inputs`).
        fmt: mesh format for folder output ("obj", "ply", "glb"; default obj).
        save_coeffs: None, "npz" or "json".
        render: also write a turntable (GIF, MP4, contact sheet) per face.
        fuse: one face from all inputs (features averaged). Inputs without a usable face
            are left out, reported in ``errors`` / the manifest and counted as failed; if
            none has a face, NoFaceError. With ``texture="photo"`` the texture comes from
            the photo whose face the detector is most confident about.
        texture: None / "model" (predicted colour) or "photo".
        refine: identity-refinement steps per face (see :func:`reconstruct`).
        head: write the complete ICT-FaceKit head (:mod:`facefit.avatar.head`).
        blendshapes: GLB outputs carry the model's expressions as named morph targets.
        units: mesh file units, "mm", "cm" or "m" (default: mm for OBJ/PLY, m for GLB).
        skip_existing: leave inputs whose requested output files all exist (the mesh of
            the main face, and its coefficients / turntable when asked for): resume after
            an interruption, or add outputs (e.g. ``save_coeffs``) to an earlier run. Only
            the files' presence is checked: an item done with other settings (texture,
            units) is not redone.
        progress: show a rich progress bar.
        batch_size: faces per encoder batch (outputs are written after each batch).
        pose: also write each face's ``<name>_posed.<fmt>`` and ``<name>_overlay.png``
            (:mod:`facefit.avatar`); a face whose pose fit fails keeps its other outputs and
            its manifest line says ``pose_error``. With ``fuse``: the video among the inputs
            is tracked into ``<name>_track.csv`` and ``<name>_track.glb`` (every
            ``track_every``-th frame, smoothing ``track_smooth`` seconds).

    A plain job (none of ``refine``, ``render``, ``fuse``, ``texture="photo"``, ``head``,
    ``blendshapes``, ``pose``; no CUDA ``device``; a dlib-encoder checkpoint) runs without
    torch (:mod:`facefit.batch.lite`; ``$FACEFIT_ENGINE=torch`` turns that off): the same files
    within a float tolerance (``docs/speed.md``).

    Returns:
        :class:`BatchSummary`. In folder mode ``manifest.jsonl`` in the output folder
        describes THIS run, one JSON line per input (per frame for videos, per unreadable
        folder): ``input``, ``status`` ("ok", "skipped": its outputs exist, or "error"),
        ``outputs`` or ``error``; with ``fuse``, a line per input left out and one line
        ``"input": "fused"``. While the run goes on, lines are appended (fsync-ed) to
        ``manifest.jsonl.partial``, which replaces ``manifest.jsonl`` when the run ends:
        after a crash or kill the partial file holds every input finished so far (a
        ``skip_existing`` rerun starts a new one).
    Raises:
        FacefitError: bad arguments or output location; in single-file mode, the input's
        error; NoFaceError: ``fuse`` and no face in any input.
    """
    from .batch.lite import engine_setting

    t_start = time.perf_counter()
    engine_setting()  # a bad $FACEFIT_ENGINE is refused before anything happens
    out = Path(out)
    walk_errors: list = []
    pairs = expand_inputs(inputs, walk_errors)
    missing = [str(p) for p, _ in pairs if not p.exists() and not p.is_symlink()]
    if not pairs:
        raise FacefitError("no images or videos found in the inputs"
                           + (f" ({walk_errors[0][1]})" if walk_errors else ""))
    single_file = out.suffix.lower().lstrip(".") in MESH_FORMATS
    if single_file:
        if walk_errors and not fuse:  # (with fuse they are left out and reported, as bad photos are)
            raise FacefitError(walk_errors[0][1])
        if len(pairs) > 1 and not fuse:
            raise FacefitError(f"{len(pairs)} inputs need an output folder, not the file {out.name} "
                               "(or --fuse for one face from all of them)")
        if not fuse and pairs[0][0].suffix.lower() in VIDEO_SUFFIXES:
            raise FacefitError(f"{pairs[0][0].name} is a video, which gives one face per sampled frame: give an "
                               f"output folder instead of the file {out.name}, or --fuse for one face from all frames")
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
    if units is not None and units not in MESH_UNITS:
        raise FacefitError(f"--units must be mm, cm or m, not '{units}'")
    if texture not in (None, "model", "photo"):
        raise FacefitError(f"unknown texture '{texture}' (use 'model' or 'photo')")
    texture = None if texture == "model" else texture
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FacefitError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise FacefitError(f"output folder {out_dir} is not writable")
    if skip_existing:  # resuming: drop half-written files of a run that was killed
        from .atomic import remove_stale_temps

        for d in sorted({out_dir} | {(out_dir / rel).parent for _, rel in pairs}):
            remove_stale_temps(d)

    if blendshapes and fmt != "glb":
        raise FacefitError(f"--blendshapes writes morph targets into glTF: use a .glb output (or --format glb), not {fmt}")
    from .batch.lite import lite_reason, make_lite_reconstructor

    rec = None
    if lite_reason(refine=refine, render=render, fuse=fuse, texture=texture, head=head, blendshapes=blendshapes,
                   pose=pose, device=device) is None:  # plain job: no torch (facefit.batch.lite)
        rec = make_lite_reconstructor(checkpoint, model, detector, all_faces=all_faces, batch_size=batch_size)
    if rec is None:
        rec = Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse,
                            batch_size=batch_size, refine=refine, head=head, blendshapes=blendshapes,
                            pose=pose and not fuse)
    summary = BatchSummary(manifest=None if single_file else out_dir / MANIFEST_NAME,
                           engine="torch" if isinstance(rec, Reconstructor) else "lite")
    manifest = None if single_file else _Manifest(summary.manifest)

    def note(entry):
        if manifest is not None:
            manifest.add(entry)
        if on_item:
            on_item(entry)

    def fail(label, msg):
        summary.failed += 1
        summary.errors.append((label, msg))
        note({"input": label, "status": "error", "error": msg})

    for d, msg in walk_errors:
        fail(str(d), msg)

    if fuse:
        left: list = []
        try:
            rs = reconstruct([p for p, _ in pairs], reconstructor=rec, fuse=True, texture=texture,
                             on_error="skip", errors=left, pose=pose, track_every=track_every,
                             track_smooth=track_smooth)
        except NoFaceError:
            rs = []
        except Exception as e:  # e.g. texturing: the manifest still says what happened
            for label, msg in left:
                fail(label, msg)
            if manifest is not None:
                note({"input": "fused", "status": "error", "error": _error_text(e)})
                manifest.finish()
            raise
        for label, msg in left:
            fail(label, msg)
        summary.seconds = time.perf_counter() - t_start
        if not rs:
            if manifest is not None:
                manifest.finish()
            shown = "; ".join(msg if label in msg else f"{label}: {msg}" for label, msg in summary.errors[:3])
            more = f"; {len(summary.errors) - 3} more" if len(summary.errors) > 3 else ""
            raise NoFaceError(f"--fuse: no face found in any of the {len(pairs)} inputs"
                              + (f" ({shown}{more})" if shown else ""))
        r = rs[0]
        paths = output_paths(out_dir, out.stem if single_file else r.name, fmt, save_coeffs, render, track=pose)
        if single_file:
            paths["mesh"] = out
        try:
            written = write_outputs(r, paths, render_size, model=rec.model, units=units)
        except Exception as e:  # noqa: BLE001 - recorded, then reported
            if manifest is None:
                raise
            note({"input": "fused", "status": "error", "error": _error_text(e)})
            manifest.finish()
            raise
        summary.processed, summary.faces = len(r.extra["fused_from"]), 1
        summary.outputs.extend(written)
        summary.fused = {k: r.extra[k] for k in ("n_fused", "consistency_mm_mean", "consistency_mm_max",
                                                 "texture_from", "track") if k in r.extra}
        note({"input": "fused", "status": "ok", "faces": 1, "outputs": [str(p) for p in written], **r.extra})
        if manifest is not None:
            manifest.finish()
        summary.seconds = time.perf_counter() - t_start
        return summary

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    items = list(iter_items(pairs))

    def wanted(it):  # what the loop below will detect: not skipped as done (same test as there)
        return not (skip_existing and not single_file and all(
            p.exists() for p in expected_files(output_paths(out_dir, _names(it, 1)[0], fmt, save_coeffs, render, pose))))

    from .batch import DetectAhead  # load + detect + crop of the next inputs in worker processes

    bar = Progress(TextColumn("[bold]reconstructing"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress, transient=False)
    with DetectAhead(rec, items, wanted, keep_image=texture == "photo" or pose) as ahead, bar:
        task = bar.add_task("faces", total=len(items), rate="")
        # faces waiting for a batched encode: (item, face, crop, timing, image, features or None);
        # the torch-free engine's workers encode each face themselves (facefit.batch.lite)
        pending = []

        def flush():
            if not pending:
                return
            by_item = {}
            for k, (it, face, crop, timing, image, _) in enumerate(pending):
                by_item.setdefault(id(it), (it, []))[1].append((k, face, timing, image))
            try:
                t0 = time.perf_counter()
                if all(p[5] is not None for p in pending):
                    feats = np.stack([p[5] for p in pending])
                else:
                    feats = rec.encode(np.stack([p[2] for p in pending]))
                t1 = time.perf_counter()
                shapes, colors = rec.decode(feats)
                t2 = time.perf_counter()
                shapes, colors, refs = rec.refine(np.stack([p[2] for p in pending]), shapes, colors)
            except Exception as e:  # noqa: BLE001 - the batch's inputs fail, the job goes on
                for it, _ in by_item.values():
                    fail(it.label, _error_text(e))
                pending.clear()
                return
            for it, faces in by_item.values():
                names = _names(it, len(faces))
                written_all, pose_errors = [], []
                try:
                    if single_file and len(faces) > 1:
                        raise FacefitError(
                            f"{it.label}: {len(faces)} faces found, but -o {out.name} takes one: give an output "
                            "folder to get all of them, or leave out --all-faces for the main face only")
                    for (k, face, timing, image), name in zip(faces, names):
                        r = _face_reconstruction(rec, it.label, name, shapes[k], colors[k], feats[k], face,
                                                 {**timing, "encode": timing.get("encode", (t1 - t0) / len(pending)),
                                                  "decode": (t2 - t1) / len(pending)}, refs[k], texture, image)
                        if single_file:  # outputs named after -o, e.g. face.obj, face.json
                            paths = output_paths(out_dir, out.stem, fmt, save_coeffs, render, pose)
                            paths["mesh"] = out
                        else:
                            paths = output_paths(out_dir, name, fmt, save_coeffs, render, pose)
                        if "pose_error" in r.extra:
                            pose_errors.append(f"{it.label}: {r.extra['pose_error']}")
                        tw = time.perf_counter()
                        written = write_outputs(r, paths, render_size, model=rec.model, units=units)
                        r.timing["write"] = time.perf_counter() - tw
                        written_all.extend(written)
                except Exception as e:  # noqa: BLE001 - one bad item never stops the batch
                    _remove_files(written_all)  # its other faces: the item is complete or absent
                    fail(it.label, _error_text(e))
                    continue
                except BaseException:
                    _remove_files(written_all)
                    raise
                summary.processed += 1
                summary.faces += len(faces)
                summary.pose_errors.extend(pose_errors)
                summary.outputs.extend(written_all)
                note({"input": it.label, "status": "ok", "faces": len(faces),
                      "outputs": [str(p) for p in written_all], "timing": r.timing,
                      **({"pose_error": "; ".join(pose_errors)} if pose_errors else {})})
            pending.clear()

        for it in items:
            if isinstance(it, tuple):
                fail(str(it[0]), _error_text(it[2]))
                bar.advance(task)
                continue
            if skip_existing and not single_file:
                paths = output_paths(out_dir, _names(it, 1)[0], fmt, save_coeffs, render, pose)
                if all(p.exists() for p in expected_files(paths)):
                    done = [p for p in expected_files(paths, companions=True) if p.exists()]
                    summary.skipped += 1
                    note({"input": it.label, "status": "skipped", "outputs": [str(p) for p in done]})
                    bar.advance(task)
                    continue
            try:
                image, crops, timing = ahead.faces_of(it)
            except Exception as e:  # noqa: BLE001 - recorded, the batch goes on
                fail(it.label, _error_text(e))
                bar.advance(task)
                continue
            for face, crop, *feat in crops:
                pending.append((it, face, crop, timing, image if (texture == "photo" or pose) else None,
                                feat[0] if feat else None))
            if len(pending) >= rec.batch_size:
                flush()
            bar.advance(task)
            el = time.perf_counter() - t_start
            bar.update(task, rate=f"{(summary.processed + len(pending)) / max(el, 1e-9):.1f} img/s")
        flush()
    if manifest is not None:
        manifest.finish()
    summary.seconds = time.perf_counter() - t_start
    if single_file and summary.failed:
        raise FacefitError(summary.errors[0][1])
    return summary
