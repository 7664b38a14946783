"""Coefficient files: a face as morphable-model coefficients (``.npz`` or ``.json``).

Both formats hold the same record: ``shape_coeffs`` (Ks,), ``color_coeffs`` (Kc,),
optional ``expr_coeffs`` (Ke,), ``model_name`` and ``model_hash`` (the morphable model
they belong to) and free-form extra fields (regressor version, detector box, timing...).
``.npz`` files are read with ``allow_pickle=False``; nothing in them can run code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import FacefitError, InvalidFileError

SUFFIXES = (".npz", ".json")
ARRAY_KEYS = ("shape_coeffs", "color_coeffs", "expr_coeffs")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().tolist()
    return x


def save_coeffs(record: dict, path: str | os.PathLike) -> Path:
    """Write a coefficient record atomically; the format comes from the suffix.

    Args:
        record: dict with at least ``shape_coeffs`` (Ks,) and ``model_hash``; arrays may be
            numpy arrays or tensors.
        path: ``.npz`` or ``.json``.
    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FacefitError(f"unsupported coefficient file suffix '{path.suffix}' (use .npz or .json)")
    if "shape_coeffs" not in record:
        raise FacefitError("a coefficient record needs shape_coeffs")
    rec = _jsonable(record)
    if suffix == ".json":
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
        return path
    arrays = {k: np.asarray(rec[k], np.float32) for k in ARRAY_KEYS if rec.get(k) is not None}
    extra = {k: v for k, v in rec.items() if k not in ARRAY_KEYS}
    arrays["meta_json"] = np.frombuffer(json.dumps(extra).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_coeffs(path: str | os.PathLike) -> dict:
    """Read a coefficient record written by :func:`save_coeffs`.

    Returns:
        dict with numpy float32 arrays for the coefficient keys and the extra fields.
    Raises:
        InvalidFileError: unreadable, wrong format or missing ``shape_coeffs``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            rec = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                rec = json.loads(bytes(z["meta_json"]).decode("utf-8")) if "meta_json" in z.files else {}
                for k in ARRAY_KEYS:
                    if k in z.files:
                        rec[k] = z[k]
        else:
            raise FacefitError(f"unsupported coefficient file suffix '{path.suffix}' (use .npz or .json)")
    except FacefitError:
        raise
    except FileNotFoundError:
        raise InvalidFileError(f"{path}: no such file") from None
    except Exception as e:  # corrupt zip, bad JSON, pickled arrays...
        raise InvalidFileError(f"{path}: not a facefit coefficient file ({type(e).__name__}: {e})") from None
    if "shape_coeffs" not in rec:
        raise InvalidFileError(f"{path}: no shape_coeffs in the file")
    for k in ARRAY_KEYS:
        if rec.get(k) is not None:
            a = np.asarray(rec[k], np.float32)
            if a.ndim != 1 or not np.isfinite(a).all():
                raise InvalidFileError(f"{path}: {k} must be a finite 1-D array")
            rec[k] = a
    return rec
