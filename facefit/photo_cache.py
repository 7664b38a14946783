"""Detect, align and encode a folder of real photos once, and cache the result.

Stage 2 of training needs, for every real photo, the encoder's features (the decoder's
input) and its unit embedding (the identity loss's target); both depend only on the photo,
so they are computed once. :func:`build_photo_cache` walks a folder tree of images, detects
the main face of each (dlib HOG by default), cuts the encoder's crop
(:func:`facefit.faces.alignment.crop_for_net`), runs the frozen encoder, and stores

* ``<cache_dir>/photos-<key>.npz``: ``paths`` (N,) relative file names, ``features`` (N, D)
  float32, ``embeddings`` (N, E) float32, ``skipped`` (M,) relative names of skipped files,
  ``skipped_reason`` (M,), ``header`` (JSON);
* ``<cache_dir>/photos-<key>.crops.npy``: (N, S, S, 3) uint8 crops (memory-mapped when
  loaded; for previews).

``<key>`` hashes the file list (relative names, sizes, modification times), the encoder
name (and its ``cache_tag`` when it has one, e.g. FaceNet's weights), detector, crop and size, and the cache format, so a changed folder or setting makes
a new cache. Unreadable files and photos without a face are skipped and counted. Work is
saved in chunks (``photos-<key>.part-NNNNN.npz``) while it runs, so an interrupted run
resumes where it stopped. Detection runs in worker processes (``workers``; forked on
Linux).

Progress: on a terminal (or in Jupyter) a rich progress bar; when the console is not a
terminal (``nohup``, SLURM, CI logs), where rich would show nothing until the end, one
plain line per chunk instead (photos done/total, skipped, photos per second, ETA).

Everything read back is plain arrays (``np.load(allow_pickle=False)``).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from facefit.errors import FacefitError, InvalidFileError

__all__ = [
    "IMAGE_EXTENSIONS",
    "CACHE_FORMAT",
    "PhotoSet",
    "interactive_console",
    "format_duration",
    "list_images",
    "cache_key",
    "build_photo_cache",
    "load_photo_cache",
    "photo_set_for_net",
]

#: File name suffixes taken as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Version of the cache layout (part of the key).
CACHE_FORMAT = 1
_CHUNK = 256


@dataclass
class PhotoSet:
    """Cached, aligned and encoded real photos.

    Attributes:
        root: the photo folder.
        paths: N file names relative to ``root`` (the photos that have a face).
        features: (N, D) float32 encoder features.
        embeddings: (N, E) float32 unit embeddings.
        crops: (N, S, S, 3) uint8 aligned crops (memory-mapped), or None.
        skipped: {relative name: reason} for unreadable files and photos without a face.
        encoder, detector, crop, size: the settings used.
        cache_file: the ``.npz`` file.
        points: (N, 73, 2) float32 detected face points in image pixels (68 landmarks, then
            dlib's 5-point shape; NaN where absent), or None (caches written before they
            were stored); they let other networks' crops be cut without detecting again
            (:func:`photo_set_for_net`).
    """

    root: str
    paths: list
    features: np.ndarray
    embeddings: np.ndarray
    crops: Optional[np.ndarray]
    skipped: dict = field(default_factory=dict)
    encoder: str = ""
    detector: str = ""
    crop: str = ""
    size: int = 0
    cache_file: str = ""
    points: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.paths)

    def skipped_counts(self) -> dict:
        """{reason: count} of skipped files."""
        out: dict = {}
        for r in self.skipped.values():
            out[r] = out.get(r, 0) + 1
        return out

    def subset(self, idx: Sequence[int]) -> "PhotoSet":
        """The photos ``idx`` (in that order) as a new PhotoSet (crops read into memory)."""
        idx = [int(i) for i in idx]
        return PhotoSet(
            root=self.root, paths=[self.paths[i] for i in idx], features=self.features[idx],
            embeddings=self.embeddings[idx], crops=None if self.crops is None else np.asarray(self.crops[idx]),
            skipped=dict(self.skipped), encoder=self.encoder, detector=self.detector, crop=self.crop,
            size=self.size, cache_file=self.cache_file,
            points=None if self.points is None else self.points[idx],
        )

    def random_subset(self, n: int, seed: int = 0) -> "PhotoSet":
        """A fixed random subset of ``n`` photos (sorted by index; all when ``n >= len``)."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[: max(0, int(n))])
        return self.subset(idx)

    def crop_tensor(self, idx: Sequence[int]):
        """Crops as a float tensor.

        Args:
            idx: photo indices.
        Returns:
            (len(idx), 3, S, S) float32 in [0, 1].
        Raises:
            FacefitError: the cache holds no crops.
        """
        import torch

        if self.crops is None:
            raise FacefitError(f"photo cache {self.cache_file} holds no crops")
        arr = np.stack([np.asarray(self.crops[int(i)]) for i in idx])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path; hidden entries skipped.

    Raises:
        FacefitError: ``root`` is not a folder or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FacefitError(f"photo folder not found: {root}")
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / f)
    out.sort(key=lambda p: p.relative_to(root).as_posix())
    if not out:
        raise FacefitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return out


def cache_key(root: str | os.PathLike, files: Sequence[Path], settings: dict) -> str:
    """16 hex digits identifying (file list with sizes and mtimes, settings, format)."""
    root = Path(root)
    h = hashlib.sha256(f"facefit-photo-cache/{CACHE_FORMAT}\0".encode())
    h.update(json.dumps(settings, sort_keys=True).encode() + b"\0")
    for p in files:
        try:
            st = p.stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{p.relative_to(root).as_posix()}\0{sig}\0".encode())
    return h.hexdigest()[:16]


def _face_points(face) -> np.ndarray:
    """(73, 2) float32: the face's 68 landmarks then its dlib 5-point shape (NaN where absent)."""
    out = np.full((73, 2), np.nan, np.float32)
    if face.landmarks68 is not None:
        out[:68] = np.asarray(face.landmarks68, np.float32)
    if face.dlib5 is not None:
        out[68:] = np.asarray(face.dlib5, np.float32)
    return out


def _detect_one(args) -> tuple[str, Optional[np.ndarray], Optional[np.ndarray]]:
    """Worker: (path, detector, crop, size) -> (status, (S, S, 3) uint8 crop or None,
    (73, 2) float32 face points (:func:`_face_points`) or None)."""
    path, detector, crop, size = args
    from facefit.faces.alignment import crop_for_net
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    try:
        img = load_image(path)
    except InvalidFileError:
        return "unreadable", None, None
    except Exception:  # noqa: BLE001 - anything odd about a single file only skips it
        return "unreadable", None, None
    try:
        faces = detect_faces(img, backend=detector)
    except Exception:  # noqa: BLE001
        return "detector_error", None, None
    if not faces:
        return "no_face", None, None
    try:
        return "ok", crop_for_net(img, faces[0], crop, size), _face_points(faces[0])
    except Exception:  # noqa: BLE001
        return "crop_error", None, None


def _worker_init() -> None:
    """Detection workers use one thread each (the encoder runs in the parent)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass


def _detections(jobs: list, workers: int) -> Iterator[tuple]:
    """Ordered results of :func:`_detect_one` over ``jobs`` (in worker processes if > 1).

    Linux uses ``fork`` (like torch's DataLoader), so a calling script needs no
    ``if __name__ == "__main__"`` guard; other platforms use ``spawn``.
    """
    if workers <= 1 or len(jobs) < 16:
        for j in jobs:
            yield _detect_one(j)
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as ex:
        yield from ex.map(_detect_one, jobs, chunksize=8)


def _encode_crops(net, crops: np.ndarray, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from facefit.regressor import encode

    feats, embs = [], []
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[i : i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
            f, e = encode(net, x.to(device))
            feats.append(f.float().cpu().numpy())
            embs.append(e.float().cpu().numpy())
    return np.concatenate(feats), np.concatenate(embs)


def interactive_console() -> bool:
    """Whether rich's console shows live progress bars: a terminal or Jupyter.

    When it does not (output redirected to a file or pipe: ``nohup``, SLURM, CI logs), a
    rich ``Progress`` prints nothing until it stops, so long jobs print plain lines instead.
    """
    import rich

    con = rich.get_console()  # the console rich's progress bars draw on (stdout)
    if con.is_jupyter:
        return True
    if os.environ.get("TTY_INTERACTIVE") == "0":  # rich's switch for "no live display"
        return False
    # rich.live redraws only on a terminal that is not "dumb" (is_terminal follows
    # sys.stdout as it is now, FORCE_COLOR and TTY_COMPATIBLE)
    return bool(con.is_terminal and not con.is_dumb_terminal)


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``"?"`` for None or a non-finite value)."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, float(seconds))))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _plain_line(text: str) -> None:
    """One progress line on stdout (where rich's progress bar would be), flushed at once."""
    print(text, file=sys.stdout, flush=True)


def _progress(enabled: bool, total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _save_npz(path: Path, **arrays) -> None:
    from facefit.atomic import atomic_write

    with atomic_write(path, "wb", mkdir=True) as fh:
        np.savez(fh, **arrays)


def default_cache_dir() -> Path:
    """``<facefit cache>/photos`` (``$FACEFIT_CACHE`` or the user cache folder)."""
    from facefit.cache import cache_dir

    return cache_dir("photos")


def build_photo_cache(
    data_dir: str | os.PathLike,
    net=None,
    *,
    encoder: str = "dlib",
    cache_dir: str | os.PathLike | None = None,
    detector: str = "dlib",
    max_photos: Optional[int] = None,
    workers: Optional[int] = None,
    batch_size: int = 32,
    device=None,
    progress: bool = True,
    rebuild: bool = False,
) -> PhotoSet:
    """Detect, align and encode every photo under ``data_dir`` (or load the cached result).

    Args:
        data_dir: folder tree of photos.
        net: the encoder (a :class:`~facefit.recognition.RecognitionNet`); default
            ``get_net(encoder)``.
        encoder: registry name of the encoder (used when ``net`` is None, and in the key).
        cache_dir: where the cache files go (default :func:`default_cache_dir`).
        detector: face detector backend (``"dlib"``, ``"mtcnn"``, ``"yunet"``).
        max_photos: use only the first N image files (sorted by relative path).
        workers: detection processes (default ``min(4, cpu_count)``; 1 = in process).
        batch_size: encoder batch size.
        device: where to run the encoder (default: the net's device).
        progress: show progress: a rich bar on a terminal, else one plain line per chunk
            on stdout (:func:`interactive_console`).
        rebuild: ignore an existing cache.
    Returns:
        :class:`PhotoSet`.
    Raises:
        FacefitError: no folder, no images, or no face found in any photo.
    """
    from facefit.recognition import get_net

    root = Path(data_dir)
    files = list_images(root)
    if max_photos is not None:
        files = files[: max(0, int(max_photos))]
    if net is None:
        net = get_net(encoder, device=device)
    enc_name = str(getattr(net, "name", encoder) or encoder)
    crop, size = str(net.crop), int(net.input_size)
    settings = {"encoder": enc_name, "detector": detector, "crop": crop, "size": size}
    if getattr(net, "cache_tag", ""):  # weights / crop version of nets that have several
        settings["net"] = str(net.cache_tag)
    key = cache_key(root, files, settings)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    npz = cdir / f"photos-{key}.npz"
    crops_file = cdir / f"photos-{key}.crops.npy"
    if npz.is_file() and crops_file.is_file() and not rebuild:
        return load_photo_cache(npz, root=root)

    if device is None:
        try:
            device = next(net.parameters()).device
        except (StopIteration, AttributeError):
            device = "cpu"
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    rels = [p.relative_to(root).as_posix() for p in files]
    n_chunks = (len(files) + _CHUNK - 1) // _CHUNK
    parts = [cdir / f"photos-{key}.part-{ci:05d}.npz" for ci in range(n_chunks)]

    def read_part(ci: int):
        if rebuild or not parts[ci].is_file():
            return None
        try:
            with np.load(parts[ci], allow_pickle=False) as z:
                return [str(x) for x in z["status"]], z["crops"], z["features"], z["embeddings"], z["points"]
        except Exception:  # noqa: BLE001 - a damaged part is redone
            return None

    done = {ci: r for ci in range(n_chunks) if (r := read_part(ci)) is not None}
    todo = [ci for ci in range(n_chunks) if ci not in done]
    jobs = [
        (str(files[i]), detector, crop, size)
        for ci in todo
        for i in range(ci * _CHUNK, min(len(files), (ci + 1) * _CHUNK))
    ]
    t0 = time.perf_counter()
    order_st: list[str] = []
    order_c, order_f, order_e, order_p = [], [], [], []
    plain = progress and not interactive_console()
    title = f"caching photos ({detector} + {enc_name})"
    if plain:
        _plain_line(f"{title}: {len(files)} files under {root} in {n_chunks} chunk(s) of {_CHUNK}, "
                    f"{len(done)} already done, cache {npz}")
    with _progress(progress and not plain, len(files), "caching photos") as bar:
        task = bar.add_task(title, total=len(files), info="")
        results = _detections(jobs, workers)
        n_skip = 0
        n_new = 0  # photos processed in this call (the rate and ETA count only these)
        for ci in range(n_chunks):
            lo, hi = ci * _CHUNK, min(len(files), (ci + 1) * _CHUNK)
            if ci in done:
                st, c, f, e, pts = done[ci]
                n_skip += sum(x != "ok" for x in st)
                bar.update(task, advance=hi - lo, info=f"skipped {n_skip}")
            else:
                st, cr, pl = [], [], []
                for _ in range(lo, hi):
                    status, img, fp = next(results)
                    st.append(status)
                    if img is not None:
                        cr.append(img)
                        pl.append(fp)
                    n_skip += status != "ok"
                    bar.update(task, advance=1, info=f"skipped {n_skip}")
                c = np.stack(cr) if cr else np.zeros((0, size, size, 3), np.uint8)
                if len(c):
                    f, e = _encode_crops(net, c, batch_size, device)
                else:
                    f = np.zeros((0, int(net.feature_dim)), np.float32)
                    e = np.zeros((0, int(net.embedding_dim)), np.float32)
                pts = np.stack(pl) if pl else np.zeros((0, 73, 2), np.float32)
                _save_npz(parts[ci], status=np.asarray(st), crops=c, features=f, embeddings=e, points=pts)
                n_new += hi - lo
            if plain:
                elapsed = time.perf_counter() - t0
                rate = n_new / elapsed if n_new and elapsed > 0 else None
                left = sum(min(len(files), (cj + 1) * _CHUNK) - cj * _CHUNK
                           for cj in range(ci + 1, n_chunks) if cj not in done)
                eta = left / rate if rate else (0.0 if not left else None)
                how = "from an earlier pass" if ci in done else (f"{rate:.1f} photos/s" if rate else "")
                _plain_line(f"{title}: chunk {ci + 1}/{n_chunks}, {hi}/{len(files)} photos "
                            f"({100.0 * hi / len(files):.0f}%), skipped {n_skip}, {how}, "
                            f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}")
            order_st += st
            order_c.append(c)
            order_f.append(f)
            order_e.append(e)
            order_p.append(pts)
        results.close()
    ok = [i for i, s in enumerate(order_st) if s == "ok"]
    if not ok:
        raise FacefitError(f"no face found in any of the {len(files)} photos under {root}")
    skipped = [(rels[i], s) for i, s in enumerate(order_st) if s != "ok"]
    crops_all = np.concatenate(order_c)
    header = {
        "format": CACHE_FORMAT,
        "root": str(root.resolve()),
        "settings": settings,
        "n_files": len(files),
        "n_ok": len(ok),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from facefit.atomic import atomic_write

    with atomic_write(crops_file, "wb", mkdir=True) as fh:
        np.save(fh, crops_all)
    _save_npz(
        npz,
        paths=np.asarray([rels[i] for i in ok]),
        features=np.concatenate(order_f).astype(np.float32),
        embeddings=np.concatenate(order_e).astype(np.float32),
        points=np.concatenate(order_p).astype(np.float32),
        skipped=np.asarray([s[0] for s in skipped], dtype=str),
        skipped_reason=np.asarray([s[1] for s in skipped], dtype=str),
        header=np.asarray(json.dumps(header)),
    )
    for part in parts:
        try:
            part.unlink()
        except OSError:
            pass
    return load_photo_cache(npz, root=root)


def load_photo_cache(path: str | os.PathLike, root: str | os.PathLike | None = None) -> PhotoSet:
    """Read a cache written by :func:`build_photo_cache`.

    Args:
        path: the ``photos-<key>.npz`` file (its ``.crops.npy`` beside it is memory-mapped
            when present).
        root: the photo folder (default: the one recorded in the cache).
    Returns:
        :class:`PhotoSet`.
    Raises:
        InvalidFileError: not a readable photo cache.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            paths = [str(p) for p in z["paths"]]
            feats = z["features"].astype(np.float32, copy=False)
            embs = z["embeddings"].astype(np.float32, copy=False)
            skipped = dict(zip((str(s) for s in z["skipped"]), (str(r) for r in z["skipped_reason"])))
            points = z["points"].astype(np.float32, copy=False) if "points" in z.files else None
    except Exception as exc:  # noqa: BLE001
        raise InvalidFileError(f"{path}: not a readable facefit photo cache ({type(exc).__name__})") from exc
    crops_file = path.with_name(path.name[: -len(".npz")] + ".crops.npy")
    crops = np.load(crops_file, mmap_mode="r", allow_pickle=False) if crops_file.is_file() else None
    if len(feats) != len(paths) or len(embs) != len(paths) or (crops is not None and len(crops) != len(paths)):
        raise InvalidFileError(f"{path}: photo cache arrays have inconsistent lengths")
    s = header.get("settings", {})
    return PhotoSet(
        root=str(root if root is not None else header.get("root", "")),
        paths=paths,
        features=feats,
        embeddings=embs,
        crops=crops,
        skipped=skipped,
        encoder=str(s.get("encoder", "")),
        detector=str(s.get("detector", "")),
        crop=str(s.get("crop", "")),
        size=int(s.get("size", 0)),
        cache_file=str(path),
        points=points if points is not None and len(points) == len(paths) else None,
    )


def _face_from_points(points: np.ndarray):
    """A :class:`~facefit.faces.detection.Face` rebuilt from stored (73, 2) face points."""
    from facefit.faces.detection import Face, landmarks5_from_68

    lm68 = np.asarray(points[:68], np.float64)
    d5 = np.asarray(points[68:], np.float64)
    ok68 = bool(np.isfinite(lm68).all())
    ok5 = bool(np.isfinite(d5).all())
    lm5 = landmarks5_from_68(lm68) if ok68 else np.zeros((5, 2))
    return Face(box=np.zeros(4), score=0.0, landmarks5=lm5, landmarks68=lm68 if ok68 else None,
                dlib5=d5 if ok5 else None)


def _net_fingerprint(net) -> str:
    """A short hash of a network's first weight tensors (random and real weights differ)."""
    import itertools

    h = hashlib.sha256()
    k = 0
    for t in itertools.chain(net.parameters(), net.buffers()):
        if t.is_floating_point():
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            k += 1
            if k >= 2:
                break
    return h.hexdigest()[:16]


def photo_set_for_net(
    photos: PhotoSet,
    net,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    device=None,
    progress: bool = True,
    rebuild: bool = False,
) -> PhotoSet:
    """The photos of ``photos``, in the same order, cropped and encoded for another network.

    The crops are cut from the face points ``photos`` stored when it was built (no second
    detection pass), so the photo list is exactly ``photos.paths``. The result is cached
    beside ``photos`` (``photos-<key>.npz`` with features and embeddings; no crops are
    kept).

    Args:
        photos: a :class:`PhotoSet` from :func:`build_photo_cache` with ``points``.
        net: the other network (a :class:`~facefit.recognition.RecognitionNet`).
        cache_dir: where the cache goes (default: beside ``photos.cache_file``).
        batch_size: encoder batch size; device: where the net runs (default: its device).
        progress: one plain line every few hundred photos.
        rebuild: ignore an existing cache.
    Returns:
        :class:`PhotoSet` with the net's ``features`` (N, D) and ``embeddings`` (N, E).
    Raises:
        FacefitError: ``photos`` holds no face points (a cache written by an older facefit:
        delete it so that it is rebuilt) or a photo cannot be read any more.
    """
    from facefit.faces.alignment import crop_for_net
    from facefit.faces.images import load_image

    name = str(getattr(net, "name", ""))
    crop, size = str(net.crop), int(net.input_size)
    if name == photos.encoder and crop == photos.crop and size == photos.size:
        return photos
    if photos.points is None:
        raise FacefitError(f"photo cache {photos.cache_file} holds no face points (written by an older facefit); "
                           "delete it so that it is rebuilt")
    base = Path(photos.cache_file)
    listing = hashlib.sha256("\0".join(photos.paths).encode()).hexdigest()
    h = hashlib.sha256(json.dumps({"base": base.name, "paths": listing, "net": name, "crop": crop, "size": size,
                                   "weights": _net_fingerprint(net), "tag": str(getattr(net, "cache_tag", "")),
                                   "format": CACHE_FORMAT}, sort_keys=True).encode()).hexdigest()[:16]
    cdir = Path(cache_dir) if cache_dir is not None else base.parent
    npz = cdir / f"photos-{h}.npz"
    if npz.is_file() and not rebuild:
        out = load_photo_cache(npz, root=photos.root)
        if out.paths == list(photos.paths):
            return out
    if device is None:
        try:
            device = next(net.parameters()).device
        except (StopIteration, AttributeError):
            device = "cpu"
    root = Path(photos.root)
    n = len(photos)
    feats, embs = [], []
    t0 = time.perf_counter()
    step = max(batch_size, 512)
    for a in range(0, n, step):
        b = min(n, a + step)
        crops = []
        for i in range(a, b):
            try:
                img = load_image(root / photos.paths[i])
            except Exception as exc:  # noqa: BLE001
                raise FacefitError(f"{root / photos.paths[i]}: cannot read the photo any more ({type(exc).__name__})") from exc
            crops.append(crop_for_net(img, _face_from_points(photos.points[i]), crop, size))
        f, e = _encode_crops(net, np.stack(crops), batch_size, device)
        feats.append(f)
        embs.append(e)
        if progress:
            el = time.perf_counter() - t0
            _plain_line(f"encoding photos for {name}: {b}/{n}, elapsed {format_duration(el)}, "
                        f"ETA {format_duration(el / b * (n - b))}")
    header = {"format": CACHE_FORMAT, "root": str(root.resolve()), "base": base.name,
              "settings": {"encoder": name, "detector": photos.detector, "crop": crop, "size": size},
              "n_files": n, "n_ok": n, "seconds": round(time.perf_counter() - t0, 1)}
    _save_npz(npz, paths=np.asarray(list(photos.paths)), features=np.concatenate(feats).astype(np.float32),
              embeddings=np.concatenate(embs).astype(np.float32), skipped=np.zeros(0, dtype=str),
              skipped_reason=np.zeros(0, dtype=str), points=np.asarray(photos.points, np.float32),
              header=np.asarray(json.dumps(header)))
    return load_photo_cache(npz, root=photos.root)
