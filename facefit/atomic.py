"""Atomic file output: a file either appears complete or not at all.

Every file facefit writes (meshes, images, videos, checkpoints, reports) goes through
this module. The data is written to a hidden temporary file in the *same directory*
as the target, flushed and ``fsync``-ed, then moved over the target with
:func:`os.replace` (atomic on POSIX and Windows within one file system). If anything
fails, the temporary file is removed and an existing target is left untouched.

Two entry points:

* :func:`atomic_write` yields an open file object (for code that writes bytes/text).
* :func:`atomic_output_path` yields a temporary *path* with the same suffix as the
  target, for libraries that write by file name and pick the format from the suffix
  (``cv2.VideoWriter``, ``imageio``, ``PIL.Image.save``, ``trimesh.export``).

Problems the user can fix (missing directory, no permission, read-only file system,
disk full) raise :class:`facefit.errors.FacefitError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from facefit.errors import FacefitError

__all__ = ["atomic_write", "atomic_output_path", "describe_os_error", "remove_stale_temps"]

# errno values raised *inside* the caller's block (its writes, a library's writes to the
# temp file) that mean "the output location is the problem" and become FacefitError.
# Other OSErrors from the block (e.g. a missing *input* file) propagate unchanged.
_OUTPUT_ERRNOS = frozenset(
    e
    for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EFBIG)
    if e is not None
)


def os_error_reason(exc: OSError, folder: str | os.PathLike) -> str:
    """A few words on why writing into ``folder`` failed (permission, read-only, full, ...).

    Args:
        exc: the OSError.
        folder: the folder that was being written to (named in the reason).
    Returns:
        e.g. ``"no space left on device"`` or ``"permission denied in 'out'"``.
    """
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        reason = f"permission denied in {str(folder)!r}"
    elif code == errno.EROFS:
        reason = "read-only file system"
    elif code == errno.ENOSPC:
        reason = "no space left on device"
    elif code == getattr(errno, "EDQUOT", -1):
        reason = "disk quota exceeded"
    elif code == errno.ENOTDIR:
        reason = f"{str(folder)!r} is not a folder"
    elif code == errno.EFBIG:
        reason = "file too large for the file system"
    elif code == errno.ENAMETOOLONG:
        reason = "file name too long"
    else:
        reason = (exc.strerror or str(exc) or type(exc).__name__).strip()
    return reason.replace("\n", " ")


def describe_os_error(path: str | os.PathLike, exc: OSError) -> str:
    """One-line, user-facing description of why writing ``path`` failed.

    Args:
        path: the target file the user asked for.
        exc: the OSError raised while writing it.
    Returns:
        e.g. ``"cannot write out/face.obj: no space left on device"``.
    """
    path = Path(path)
    code = exc.errno
    if code == errno.ENOENT and not path.parent.is_dir():
        reason = f"directory {str(path.parent)!r} does not exist"
    elif code == errno.ENOTDIR:
        reason = f"{str(path.parent)!r} is not a directory"
    elif code == errno.EISDIR or path.is_dir():
        reason = "it is a directory"
    else:
        reason = os_error_reason(exc, path.parent)
    return f"cannot write {path}: {reason}".replace("\n", " ")


def _current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(target: Path) -> int:
    """Permission bits the finished file should get.

    ``mkstemp`` creates files as 0600; a normal ``open()`` would give ``0666 & ~umask``
    (or keep an existing file's mode), so mimic that.
    """
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def _make_temp(target: Path, mkdir: bool) -> tuple[int, Path]:
    """Create an empty hidden temporary file beside ``target``; returns (fd, path).

    The temp name keeps the target's suffix (``.face.obj.k3j2.tmp.obj`` style:
    prefix ``.<name>.``, random part, then ``.tmp<suffix>``) so libraries that choose
    the format from the extension still work.
    """
    if mkdir:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FacefitError(describe_os_error(target, exc)) from exc
    if target.is_dir():
        raise FacefitError(f"cannot write {target}: it is a directory")
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
        )
    except OSError as exc:
        raise FacefitError(describe_os_error(target, exc)) from exc
    return fd, Path(name)


def remove_stale_temps(directory: str | os.PathLike, *, older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files left in ``directory`` by a writer that was killed.

    A process killed with SIGKILL (or by a power cut) cannot clean up, so a hidden
    ``.<name>.<random>.tmp<suffix>`` file may remain beside the target. The target
    itself is never touched: it is either the previous complete version or absent.
    Call this only for directories facefit owns (e.g. a training run being resumed).

    Args:
        directory: folder to clean (missing folder: nothing happens).
        older_than_s: only delete temp files whose mtime is at least this old.
    Returns:
        The paths removed.
    """
    import time

    import re
    import time

    pattern = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^./]*)?$")
    folder = Path(directory)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        m = pattern.match(p.name)
        # the temp keeps its target's suffix: ".face.obj.k3j2ab_x.tmp.obj"
        if m is None or Path(m["target"]).suffix != (m["suffix"] or "") or not p.is_file():
            continue
        try:
            if now - p.stat().st_mtime < older_than_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, target: Path, mode: int) -> None:
    """chmod + os.replace the finished temp file onto the target (FacefitError on failure)."""
    try:
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        raise FacefitError(describe_os_error(target, exc)) from exc
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    mkdir: bool = False,
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears atomically when the block ends.

    Usage::

        with atomic_write("out/face.obj", "w", encoding="utf-8") as f:
            f.write(text)

    Args:
        path: target file.
        mode: ``"wb"`` (default), ``"w"``, ``"xb"``/``"x"`` (fail if the target exists).
            Append/read modes are refused.
        encoding, newline: passed to :func:`open` for text modes.
        mkdir: create missing parent directories first (default: a missing directory
            is an error).
    Yields:
        The open temporary file. On normal exit it is flushed, fsync-ed, closed and
        renamed onto ``path``; on any exception it is closed and deleted, the target is
        untouched and the exception propagates (OS errors about the output location,
        e.g. disk full, become :class:`FacefitError`).
    Raises:
        FacefitError: directory missing/not writable, read-only FS, disk full, ...
    """
    if mode not in ("w", "wb", "wt", "x", "xb", "xt"):
        raise ValueError(f"atomic_write supports only write modes, got {mode!r}")
    target = Path(path)
    exclusive = mode.startswith("x")
    if exclusive and target.exists():
        raise FacefitError(f"cannot write {target}: file already exists")
    file_mode = mode.replace("x", "w")
    fd, tmp = _make_temp(target, mkdir)
    final_mode = _final_mode(target)
    try:
        kwargs: dict[str, Any] = {}
        if "b" not in file_mode:
            kwargs = {"encoding": encoding or "utf-8", "newline": newline}
        f = os.fdopen(fd, file_mode, **kwargs)
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive and target.exists():
            raise FacefitError(f"cannot write {target}: file already exists")
        _commit(tmp, target, final_mode)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in _OUTPUT_ERRNOS:
            raise FacefitError(describe_os_error(target, exc)) from exc
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_output_path(
    path: str | os.PathLike, *, mkdir: bool = False, allow_empty: bool = False
) -> Iterator[Path]:
    """Yield a temporary path (same directory, same suffix) to hand to a library.

    Usage::

        with atomic_output_path("turntable.mp4") as tmp:
            writer = cv2.VideoWriter(str(tmp), fourcc, fps, (w, h))
            ...
            writer.release()

    The temporary file already exists (empty) when the block starts, reserving the
    name; libraries simply overwrite it. On normal exit the file is fsync-ed and
    renamed onto ``path``; on any exception it is deleted and the target is untouched.

    Args:
        path: target file; its suffix (e.g. ``.mp4``, ``.png``, ``.glb``) is kept.
        mkdir: create missing parent directories first.
        allow_empty: accept an empty result. By default an empty or missing temporary
            file at the end of the block means the library silently failed (e.g. an
            unavailable video codec) and raises FacefitError.
    Yields:
        Path of the temporary file.
    Raises:
        FacefitError: output location problems, or nothing written.
    """
    target = Path(path)
    fd, tmp = _make_temp(target, mkdir)
    os.close(fd)
    final_mode = _final_mode(target)
    try:
        yield tmp
        try:
            size = tmp.stat().st_size
        except FileNotFoundError:
            size = -1
        if size < 0 or (size == 0 and not allow_empty):
            raise FacefitError(f"cannot write {target}: the writer produced no data")
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # fsync is best effort for files written by other libraries
        _commit(tmp, target, final_mode)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in _OUTPUT_ERRNOS:
            raise FacefitError(describe_os_error(target, exc)) from exc
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise
