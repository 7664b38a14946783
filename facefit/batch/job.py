"""The batch job behind ``facefit reconstruct``: inputs (photos, folders, videos) to mesh
files, coefficient files and turntables, written atomically, with a manifest,
``skip_existing`` and a :class:`BatchSummary`.

* :func:`run_batch`: the job (uses :mod:`facefit.reconstruction` for the faces, the
  workers of :mod:`facefit.batch.ahead` for detection and, with two or more, for writing).
* :func:`write_outputs` / :func:`write_item`: one face's / one input's files, all or nothing.
* :func:`output_paths` / :func:`expected_files`: where a face's outputs go.

These names are also importable from :mod:`facefit.reconstruction`, their earlier home.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..errors import FacefitError, NoFaceError
from ..reconstruction import (
    MESH_FORMATS, MESH_UNITS, VIDEO_SUFFIXES, Reconstruction, Reconstructor, _error_text, _face_reconstruction,
    _names, expand_inputs, iter_items, reconstruct,
)


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
    from ..atomic import describe_os_error

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
        from ..atomic import describe_os_error

        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        try:  # a new run starts a new partial manifest (a killed run's is superseded)
            os.close(os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        except OSError as e:
            raise FacefitError(describe_os_error(self.partial, e)) from None

    def add(self, entry: dict) -> None:
        _append_manifest(self.partial, entry)

    def finish(self) -> None:
        from ..atomic import describe_os_error

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
        from ..avatar.files import avatar_paths

        paths.update(avatar_paths(base, fmt, pose=pose, track=track))
    return paths


def expected_files(paths: dict, companions: bool = False) -> list[Path]:
    """The files that the outputs ``paths`` (:func:`output_paths`) of one face make: the
    mesh, the coefficients, the turntable's GIF, MP4 and contact sheet; with
    ``companions`` also the ``.mtl`` and ``_texture.png`` an OBJ with a texture has beside it."""
    from ..media import turntable_paths as _turntable_paths

    mesh = paths["mesh"]
    files = [mesh]
    if companions and mesh.suffix.lower() == ".obj":
        from ..mesh_io import obj_companions

        files += list(obj_companions(mesh))
    if "coeffs" in paths:
        files.append(paths["coeffs"])
    if "turntable" in paths:
        files.extend(_turntable_paths(paths["turntable"]))
    from ..avatar.files import avatar_files

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
    from ..coeffs_io import save_coeffs
    from ..mesh_io import save_mesh

    candidates = expected_files(paths, companions=True)
    before = {p: _file_key(p) for p in candidates}
    written = []
    try:
        paths["mesh"].parent.mkdir(parents=True, exist_ok=True)
        if "coeffs" in paths:
            written.append(save_coeffs(r.coeffs_record(), paths["coeffs"]))
        if "turntable" in paths:
            from ..turntable import write_turntable

            written.extend(write_turntable(r.mesh, paths["turntable"], frames=frames, size=render_size, model=model))
        from ..avatar.files import AVATAR_KEYS, write_avatar_outputs

        if any(k in paths for k in AVATAR_KEYS):
            written.extend(write_avatar_outputs(r, paths, model, units=units))
        # the mesh last: its presence marks the face as done (for skip_existing)
        if r.morph_targets is not None and paths["mesh"].suffix.lower() == ".glb":
            from ..avatar.gltf import save_glb_avatar

            written.extend(save_glb_avatar(r.mesh, paths["mesh"], r.morph_targets.as_dict(), r.morph_weights,
                                           units=units))
        else:
            written.extend(save_mesh(r.mesh, paths["mesh"], units=units))
    except BaseException:
        _remove_files(p for p in dict.fromkeys(candidates + written) if _file_key(p) != before.get(p))
        raise
    return written


def write_item(entries: Sequence[tuple[Reconstruction, dict]], render_size: int = 256, model=None,
               units: Optional[str] = None) -> tuple[list[Path], list[float]]:
    """Write all faces of one input, all or nothing (:func:`write_outputs` for each).

    Args:
        entries: ``(reconstruction, output paths)`` per face of the input.
    Returns:
        ``(files written, seconds per face)``.
    Raises:
        what :func:`write_outputs` raises, after removing the files this call wrote.
    """
    written_all: list[Path] = []
    seconds: list[float] = []
    try:
        for r, paths in entries:
            t0 = time.perf_counter()
            written_all.extend(write_outputs(r, paths, render_size, model=model, units=units))
            seconds.append(time.perf_counter() - t0)
    except BaseException:
        _remove_files(written_all)
        raise
    return written_all, seconds


#: output kinds a worker process can write (no morphable model, no torch): see :func:`writable_elsewhere`
_WORKER_OUTPUTS = frozenset({"mesh", "coeffs"})


def writable_elsewhere(entries: Sequence[tuple[Reconstruction, dict]]) -> bool:
    """Whether these faces' files can be written by a worker process: meshes (with their
    texture) and coefficient files only, no turntable, rig or pose outputs (those need the
    morphable model and torch)."""
    return all(set(paths) <= _WORKER_OUTPUTS and r.morph_targets is None and r.pose is None and r.track is None
               for r, paths in entries)


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
    refine_shape: bool = False,
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
        refine_shape: refinement also moves the shape (default: the colour only).
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

    Folder jobs run with worker processes (:mod:`facefit.batch`, ``$FACEFIT_WORKERS``):
    they load, detect and crop the next inputs, and with two or more of them they also
    write each input's files (:func:`write_item`; meshes, textures and coefficients, not
    turntables or avatar outputs), byte-identical to a run without workers. An input's
    manifest line is written once its files are; an interrupted run may leave an input's
    complete files without its line (``skip_existing`` then skips it).
    Raises:
        FacefitError: bad arguments or output location; in single-file mode, the input's
        error; NoFaceError: ``fuse`` and no face in any input.
    """
    from .lite import engine_setting

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
        from ..atomic import remove_stale_temps

        for d in sorted({out_dir} | {(out_dir / rel).parent for _, rel in pairs}):
            remove_stale_temps(d)

    if blendshapes and fmt != "glb":
        raise FacefitError(f"--blendshapes writes morph targets into glTF: use a .glb output (or --format glb), not {fmt}")
    from .lite import lite_reason, make_lite_reconstructor

    rec = None
    if lite_reason(refine=refine, render=render, fuse=fuse, texture=texture, head=head, blendshapes=blendshapes,
                   pose=pose, device=device) is None:  # plain job: no torch (facefit.batch.lite)
        rec = make_lite_reconstructor(checkpoint, model, detector, all_faces=all_faces, batch_size=batch_size)
    if rec is None:
        rec = Reconstructor(checkpoint, model, device, detector, all_faces=all_faces and not fuse,
                            batch_size=batch_size, refine=refine, head=head, blendshapes=blendshapes,
                            pose=pose and not fuse, refine_shape=refine_shape)
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

    from .ahead import DetectAhead  # load + detect + crop of the next inputs in worker processes

    bar = Progress(TextColumn("[bold]reconstructing"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress, transient=False)
    with DetectAhead(rec, items, wanted, keep_image=texture == "photo" or pose) as ahead, bar:
        task = bar.add_task("faces", total=len(items), rate="")
        # what is left to report, in input order: (future of a worker's write or None, action, args)
        ordered: deque = deque()

        def drain(block: bool = False) -> None:
            while ordered and (block or ordered[0][0] is None or ordered[0][0].done()):
                job, action, args = ordered.popleft()
                action(*args, *(() if job is None else (job,)))

        def later(action, *args, job=None) -> None:
            ordered.append((job, action, args))
            drain(block=len(ordered) > 8 * max(ahead.workers, 1))

        def skipped(label, done):
            summary.skipped += 1
            note({"input": label, "status": "skipped", "outputs": [str(p) for p in done]})

        def finish_item(it, entries, pose_errors, job=None):
            try:
                done = ahead.write_result(job) if job is not None else None
                written_all, seconds = done if done is not None else write_item(entries, render_size, rec.model, units)
            except Exception as e:  # noqa: BLE001 - one bad item never stops the batch
                fail(it.label, _error_text(e))
                return
            for (r, _), sec in zip(entries, seconds):
                r.timing["write"] = sec
            r = entries[-1][0]
            summary.processed += 1
            summary.faces += len(entries)
            summary.pose_errors.extend(pose_errors)
            summary.outputs.extend(written_all)
            note({"input": it.label, "status": "ok", "faces": len(entries),
                  "outputs": [str(p) for p in written_all], "timing": r.timing,
                  **({"pose_error": "; ".join(pose_errors)} if pose_errors else {})})

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
                    later(fail, it.label, _error_text(e))
                pending.clear()
                return
            for it, faces in by_item.values():
                names = _names(it, len(faces))
                entries, pose_errors = [], []
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
                        entries.append((r, paths))
                except Exception as e:  # noqa: BLE001 - one bad item never stops the batch
                    later(fail, it.label, _error_text(e))
                    continue
                # a worker writes the files while this process goes on (the manifest line
                # waits for it, in input order); else they are written here
                job = ahead.submit_write(entries, render_size, units) if not single_file and writable_elsewhere(entries) \
                    else None
                later(finish_item, it, entries, pose_errors, job=job)
            pending.clear()

        for it in items:
            if isinstance(it, tuple):
                later(fail, str(it[0]), _error_text(it[2]))
                bar.advance(task)
                continue
            if skip_existing and not single_file:
                paths = output_paths(out_dir, _names(it, 1)[0], fmt, save_coeffs, render, pose)
                if all(p.exists() for p in expected_files(paths)):
                    done = [p for p in expected_files(paths, companions=True) if p.exists()]
                    later(skipped, it.label, done)
                    bar.advance(task)
                    continue
            try:
                image, crops, timing = ahead.faces_of(it)
            except Exception as e:  # noqa: BLE001 - recorded, the batch goes on
                later(fail, it.label, _error_text(e))
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
        drain(block=True)
    if manifest is not None:
        manifest.finish()
    summary.seconds = time.perf_counter() - t_start
    if single_file and summary.failed:
        raise FacefitError(summary.errors[0][1])
    return summary
