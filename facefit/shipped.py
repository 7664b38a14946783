"""Where the files facefit ships (``models/``: the trained regressor, the albedo model) are.

In a checkout or an editable install they are the repository's ``models/`` folder; a
wheel installs the same files under ``<prefix>/share/facefit/models`` (see
``[tool.setuptools.data-files]`` in ``pyproject.toml``).
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

__all__ = ["shipped_models_dir"]


def _candidates() -> list[Path]:
    out = [Path(__file__).resolve().parents[1] / "models"]
    for prefix in (sysconfig.get_path("data"), sys.prefix, getattr(sys, "base_prefix", sys.prefix)):
        if prefix:
            out.append(Path(prefix) / "share" / "facefit" / "models")
    return out


def shipped_models_dir() -> Path:
    """The first existing shipped-models folder (the checkout's ``models/`` first).

    Returns:
        The folder; when none exists, the checkout's ``models/`` path (callers then find
        no files in it and say so).
    """
    cands = _candidates()
    for d in cands:
        if (d / "albedo").is_dir() or any(d.glob("*.pt")):
            return d
    return cands[0]
