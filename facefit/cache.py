"""facefit's one cache folder for derived, re-creatable files.

``$FACEFIT_CACHE`` if set, else ``platformdirs.user_cache_dir("facefit")``. Sub-folders:
``models/`` (converted morphable models), ``photos/`` (aligned training photos and their
encoder features); parsed/repaired recognition weights sit at the top level.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV = "FACEFIT_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a sub-folder of it), created if missing.

    Args:
        parts: optional sub-folder names, e.g. ``cache_dir("models")``.
    Returns:
        The folder path.
    """
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("facefit"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, write) -> None:
    """Create ``path`` by calling ``write(tmp_path)`` and renaming, so readers never see
    a half-written file. Errors (e.g. a read-only cache) are swallowed: caching is an
    optimisation only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
