"""facefit's one cache folder for derived, re-creatable files.

``$FACEFIT_CACHE`` if set, else ``platformdirs.user_cache_dir("facefit")``. Sub-folders:
``models/`` (converted morphable models), ``photos/`` (aligned training photos and their
encoder features); parsed/repaired recognition weights sit at the top level.
"""
from __future__ import annotations

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
