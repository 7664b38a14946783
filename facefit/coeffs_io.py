"""Coefficient files: a face as morphable-model coefficients (``.npz`` or ``.json``).

Both formats hold the same record: ``shape_coeffs`` (Ks,), ``color_coeffs`` (Kc,),
optional ``expr_coeffs`` (Ke,), ``model_name`` and ``model_hash`` (the morphable model
they belong to) and free-form extra fields (the regressor that made them: ``regressor``
file name, ``regressor_sha256`` (16 hex digits), ``regressor_step``, ``regressor_format``;
detector box, timing...).
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
                raise InvalidFileError(f"{path}: not a facefit coefficient file (the JSON is not an object)")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                rec = json.loads(bytes(z["meta_json"]).decode("utf-8")) if "meta_json" in z.files else {}
                if not isinstance(rec, dict):
                    raise InvalidFileError(f"{path}: not a facefit coefficient file (meta_json is not a JSON object)")
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
        raise InvalidFileError(f"{path}: not a facefit coefficient file ({_read_failure(e, path)})") from None
    if "shape_coeffs" not in rec:
        raise InvalidFileError(f"{path}: no shape_coeffs in the file")
    for k in ARRAY_KEYS:
        if rec.get(k) is not None:
            rec[k] = _coeff_array(rec[k], k, path)
    return rec


def _read_failure(e: Exception, path: Path) -> str:
    """A few words on why a coefficient file could not be parsed (no exception class names)."""
    import zipfile

    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg}, line {e.lineno}"
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    try:
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
    except OSError:
        zipped = True
    if isinstance(e, (zipfile.BadZipFile, EOFError)) or (path.suffix.lower() == ".npz" and not zipped):
        return "not a valid .npz archive"
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return "it holds pickled objects; refusing to load them"
    if isinstance(e, OSError):
        return (e.strerror or "cannot read it").strip()
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _coeff_array(value: Any, key: str, path: Path) -> np.ndarray:
    """``value`` as a float32 (K,) array, or InvalidFileError naming ``path`` and ``key``.

    Only real numbers are accepted: strings, booleans, nested/ragged lists, complex values,
    NaN, infinities and values beyond float32's range are refused (never silently cast).
    """
    try:
        a = np.asarray(value)
    except (ValueError, TypeError):  # ragged lists
        a = None
    if a is None or a.dtype.kind == "O":
        raise InvalidFileError(f"{path}: {key} must be a flat list of numbers")
    if a.dtype.kind == "c":
        raise InvalidFileError(f"{path}: {key} holds complex numbers (coefficients must be real)")
    if a.dtype.kind not in "iuf":
        raise InvalidFileError(f"{path}: {key} holds non-numeric values ({_kind_name(a.dtype)})")
    if a.ndim != 1:
        raise InvalidFileError(f"{path}: {key} must be a 1-D array of numbers, not of shape {a.shape}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        raise InvalidFileError(f"{path}: {key}[{int(np.flatnonzero(bad)[0])}] is not a finite number")
    big = np.abs(a) > _FLOAT32_MAX
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise InvalidFileError(f"{path}: {key}[{i}] = {a[i]:g} is too large (coefficients are float32)")
    return a.astype(np.float32)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "true/false", "U": "text", "S": "bytes", "M": "dates", "m": "time spans", "V": "raw records"}.get(
        dtype.kind, str(dtype))


def check_coeffs_fit_model(rec: dict, model, path: str | os.PathLike) -> None:
    """Refuse a coefficient record with more coefficients than ``model`` has components.

    Fewer coefficients are fine (the missing ones are zero, i.e. the mean).

    Args:
        rec: from :func:`load_coeffs`; model: the :class:`~facefit.morphable.MorphableModel`
            it will be decoded with; path: the file (for the message).
    Raises:
        InvalidFileError: e.g. ``"c.json: color_coeffs has 32 coefficients but the model
        'ict-face' has 30"``.
    """
    for key, part in (("shape_coeffs", "shape"), ("color_coeffs", "color"), ("expr_coeffs", "expr")):
        a = rec.get(key)
        if a is None:
            continue
        have = int(getattr(model, f"n_{part}", 0) or 0)
        if len(a) > have:
            raise InvalidFileError(
                f"{path}: {key} has {len(a)} coefficients but the model '{model.name}' has {have}"
            )
