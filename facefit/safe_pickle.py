"""A restricted unpickler for model files that come as Python pickles (FLAME ``.pkl``).

Unpickling runs code chosen by whoever wrote the file: a pickle can name any importable
callable (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) and have it called.
:func:`safe_load` therefore resolves only an allow-list of globals that rebuild plain data:

* numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct`` /
  ``numpy._core...``, ``numpy.ndarray``, ``numpy.dtype``, ``...multiarray.scalar``,
  ``...numeric._frombuffer``);
* scipy sparse matrices/arrays (``scipy.sparse.*.csc_matrix`` etc.), rebuilt from their
  stored arrays;
* ``copyreg._reconstructor`` only for the classes above with ``object`` as base;
* ``collections.OrderedDict``, ``builtins.set/frozenset/complex/slice``, and
  ``_codecs.encode`` limited to the latin-1 / utf-8 codecs (how Python 3 writes bytes at
  protocol 2);
* chumpy objects (``chumpy.ch.Ch`` and friends, as in the original FLAME/SMPL files) are
  replaced by an inert stub; after loading, a stub whose state has an ``x`` array becomes
  that numpy array, any other chumpy expression is rejected.

Every other global is refused with :class:`facefit.errors.InvalidFileError` *before*
anything is called, so a malicious file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from facefit.errors import InvalidFileError

__all__ = ["safe_load", "safe_loads", "SafeUnpickler", "ChumpyStub"]


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list was requested."""


class ChumpyStub:
    """Inert stand-in for a chumpy object found in a pickle.

    Records the constructor arguments and the pickled state; :func:`safe_load` turns it
    into ``numpy.asarray(state["x"])``.
    """

    chumpy_name = "chumpy.ch.Ch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_array(self) -> np.ndarray:
        """The stub's value as a numpy array (``state['x']``).

        Raises:
            InvalidFileError: the object is a chumpy expression without a stored value.
        """
        st = self._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (state, slotstate)
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict) and "x" in st:
            x = st["x"]
            x = x.to_array() if isinstance(x, ChumpyStub) else x
            return np.asarray(x)
        raise InvalidFileError(
            f"unsupported chumpy object {self.chumpy_name} (no stored value); "
            "convert the file to plain numpy arrays first"
        )


_STUB_CLASSES: dict[str, type] = {}


def _stub_class(module: str, name: str) -> type:
    full = f"{module}.{name}"
    cls = _STUB_CLASSES.get(full)
    if cls is None:
        cls = type(name, (ChumpyStub,), {"chumpy_name": full, "__module__": __name__})
        _STUB_CLASSES[full] = cls
    return cls


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy callables pickles use, found without importing private paths by name."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(1.0).__reduce__()[0]
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = reconstruct
        out[(mod, "scalar")] = scalar
    try:
        frombuffer = np.zeros(1).__reduce_ex__(5)[0]
        if getattr(frombuffer, "__name__", "") == "_frombuffer":
            for mod in ("numpy.core.numeric", "numpy._core.numeric"):
                out[(mod, "_frombuffer")] = frombuffer
    except Exception:  # pragma: no cover - old numpy
        pass
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "ndarray")] = np.ndarray
        out[(mod, "dtype")] = np.dtype
    return out


_SPARSE_NAMES = frozenset(
    {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}
)
_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "complex": complex,
    "slice": slice,
    "object": object,
}
_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "utf8", "utf-8"})


def _safe_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if str(encoding).lower() not in _ENCODINGS or not isinstance(obj, str):
        raise _Refused(f"_codecs.encode with codec {encoding!r}")
    return obj.encode(encoding, errors)


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only the allow-list above."""

    def __init__(self, file: BinaryIO, *, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._numpy = _numpy_globals()
        self._safe_classes: set[type] = set()

    def _sparse(self, name: str) -> type:
        import scipy.sparse

        cls = getattr(scipy.sparse, name)
        self._safe_classes.add(cls)
        return cls

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        if base is not object or not (
            cls in self._safe_classes or (isinstance(cls, type) and issubclass(cls, ChumpyStub))
        ):
            raise _Refused(f"copyreg._reconstructor for {getattr(cls, '__name__', cls)!r}")
        return object.__new__(cls)

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        key = (module, name)
        if key in self._numpy:
            return self._numpy[key]
        if module.split(".")[0] == "scipy" and module.startswith("scipy.sparse") and name in _SPARSE_NAMES:
            return self._sparse(name)
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub_class(module, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return self._reconstructor
        if module in ("__builtin__", "builtins") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "_codecs" and name == "encode":
            return _safe_encode
        raise _Refused(f"{module}.{name}")


def _convert(obj: Any, depth: int = 0) -> Any:
    """Replace chumpy stubs by numpy arrays inside dicts, lists and tuples."""
    if depth > 50:
        raise InvalidFileError("pickle nesting too deep")
    if isinstance(obj, ChumpyStub):
        return obj.to_array()
    if isinstance(obj, dict):
        out = {k: _convert(v, depth + 1) for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list):
        return [_convert(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_convert(v, depth + 1) for v in obj)
    return obj


def safe_loads(data: bytes, *, name: str = "pickle", encoding: str = "latin1") -> Any:
    """Unpickle bytes with the allow-list (see the module docstring).

    Args:
        data: pickle bytes.
        name: file name used in error messages.
        encoding: how to decode Python 2 ``str`` objects (``latin1`` keeps numpy
            buffers intact).
    Returns:
        The unpickled object, chumpy values converted to numpy arrays.
    Raises:
        InvalidFileError: a refused global ("refusing to load ... unsafe"), or a
            corrupt / truncated pickle.
    """
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _Refused as exc:
        raise InvalidFileError(
            f"{name}: refusing to load: the pickle asks for {exc} which is not plain data (possibly unsafe file)"
        ) from None
    except InvalidFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, MemoryError) as exc:
        raise InvalidFileError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    try:
        return _convert(obj)
    except InvalidFileError as exc:
        raise InvalidFileError(f"{name}: {exc}") from None


def safe_load(path_or_file: str | os.PathLike | BinaryIO, *, encoding: str = "latin1") -> Any:
    """Unpickle a file with the allow-list (see :func:`safe_loads`).

    Args:
        path_or_file: a path or an open binary file.
    Returns:
        The unpickled object.
    Raises:
        InvalidFileError: unreadable, corrupt or refused.
    """
    if hasattr(path_or_file, "read"):
        return safe_loads(path_or_file.read(), name=getattr(path_or_file, "name", "pickle"), encoding=encoding)
    path = Path(path_or_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return safe_loads(data, name=str(path), encoding=encoding)
