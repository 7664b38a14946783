"""Getting morphable models: import from public formats, the model store, fetching ICT-FaceKit.

Entry points:

* :func:`import_model` (``facefit model import KIND PATH``): convert ICT-FaceKit / BFM 2017 /
  BFM 2009 / FLAME into facefit's native ``.npz`` and store it.
* :func:`load_model`: a native ``.npz``, a source file of any supported kind (detected from
  the suffix and the first bytes) or a model name in the store.
* :func:`resolve_model`: the model a command should use (explicit argument >
  ``$FACEFIT_MODEL`` > the store's default > the ICT-FaceKit ZIP in ``../shared/models``
  next to the checkout or the working directory > a clear :class:`ModelNotFoundError`).
* :func:`list_models`, :func:`set_default_model`, :func:`default_model_dir`,
  :func:`model_info`, :func:`fetch_ict`.

Converted source files are cached (see :func:`facefit.loaders.common.cache_dir`), so
importing or auto-loading the same ICT-FaceKit ZIP a second time takes well under a second.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from facefit.cache import file_sha256
from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.morphable import MorphableModel

__all__ = [
    "KINDS",
    "ICT_COMMIT",
    "ICT_URL",
    "ICT_ARCHIVE_SHA256",
    "ICT_CONTENT_SHA256",
    "convert_model",
    "detect_kind",
    "import_model",
    "load_model",
    "resolve_model",
    "default_model_dir",
    "default_model_name",
    "set_default_model",
    "list_models",
    "model_info",
    "fetch_ict",
    "verify_ict_archive",
    "find_shared_ict",
]

#: Source formats :func:`import_model` understands.
KINDS = ("ict", "bfm2017", "bfm2009", "flame")

ENV_MODEL_DIR = "FACEFIT_MODEL_DIR"
ENV_MODEL = "FACEFIT_MODEL"
_DEFAULT_FILE = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: ICT-FaceKit commit facefit pins (the full hash GitHub writes into the archive comment).
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
#: Where :func:`fetch_ict` downloads the repository archive from.
ICT_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.zip"
#: sha256 of the ICT-FaceKit archive as facefit's developers saw it (the model files of
#: that commit in the repository ZIP layout). GitHub generates archives on the fly, so a
#: download may be packed differently; then :data:`ICT_CONTENT_SHA256` decides.
ICT_ARCHIVE_SHA256 = "2d242da8e8948224af04ffe46d0344667603f3e9faaf41deed749abb5c80a875"
#: sha256 over the names and sha256 digests of the FaceXModel files facefit reads
#: (:func:`facefit.loaders.ict.content_digest`): independent of how the ZIP was packed.
ICT_CONTENT_SHA256 = "0786fe49937938eb8ccd2b18fe24cc46dac424b802ce426f7c5d8e3acb8c27a9"

_SUFFIX_KIND = {
    ".npz": "native",
    ".zip": "ict",
    ".h5": "bfm2017",
    ".hdf5": "bfm2017",
    ".mat": "bfm2009",
    ".pkl": "flame",
    ".pickle": "flame",
}

_memo_lock = threading.Lock()
_memo: dict[str, tuple[tuple[int, int], MorphableModel]] = {}
_MEMO_SIZE = 4


# --------------------------------------------------------------------------- conversion


def convert_model(
    kind: str,
    path: str | os.PathLike,
    region: str | None = None,
    *,
    units: str | None = None,
    landmarks=None,
    use_cache: bool = True,
) -> MorphableModel:
    """Convert a source model to a :class:`MorphableModel` (cached; nothing else is written).

    Args:
        kind: ``"ict"``, ``"bfm2017"`` (also 2019), ``"bfm2009"`` or ``"flame"``.
        path: the source file / ZIP / folder.
        region: ICT-FaceKit only: ``"face"`` (default) or ``"head"``. Other kinds are
            already face (BFM) or whole-head (FLAME) models and ignore it.
        units: override the detected source unit (BFM/FLAME; "mm", "cm", "m", "um").
        landmarks: 68 vertex indices for models that ship none (BFM/FLAME).
        use_cache: reuse/store the conversion in the cache.
    Returns:
        MorphableModel.
    Raises:
        FacefitError: unknown kind; ModelNotFoundError / InvalidFileError from the loader.
    """
    from facefit.albedo import attach_default_color

    return attach_default_color(_convert_model(kind, path, region, units=units, landmarks=landmarks, use_cache=use_cache))


def _convert_model(kind, path, region=None, *, units=None, landmarks=None, use_cache=True) -> MorphableModel:
    kind = str(kind).lower().strip()
    if kind in ("bfm2019", "bfm"):
        kind = "bfm2017"
    if kind == "ict":
        from facefit.loaders.ict import load_ict

        if units is not None or landmarks is not None:
            raise FacefitError("ICT-FaceKit has fixed units (cm) and its own landmarks; drop units/landmarks")
        return load_ict(path, region or "face", use_cache=use_cache)
    if region not in (None, "face", "head"):
        raise FacefitError(f"unknown region {region!r}; use 'face' or 'head'")
    if kind == "bfm2017":
        from facefit.loaders.bfm import load_bfm2017

        return load_bfm2017(path, units=units, landmarks=landmarks, use_cache=use_cache)
    if kind == "bfm2009":
        from facefit.loaders.bfm import load_bfm2009

        return load_bfm2009(path, units=units, landmarks=landmarks, use_cache=use_cache)
    if kind == "flame":
        from facefit.loaders.flame import load_flame

        return load_flame(path, units=units, landmarks=landmarks, use_cache=use_cache)
    raise FacefitError(f"unknown model kind {kind!r}; use one of: {', '.join(KINDS)}")


def detect_kind(path: str | os.PathLike) -> str:
    """Guess a model file's kind from its content and suffix.

    Args:
        path: file or folder.
    Returns:
        ``"native"`` (facefit ``.npz``), ``"ict"``, ``"bfm2017"``, ``"bfm2009"`` or ``"flame"``.
    Raises:
        ModelNotFoundError: the path does not exist.
        InvalidFileError: unrecognised.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        if any((c / "generic_neutral_mesh.obj").is_file() for c in (path, path / "FaceXModel", *path.glob("*/FaceXModel"))):
            return "ict"
        raise InvalidFileError(f"{path}: folder is not an ICT-FaceKit tree (no FaceXModel/generic_neutral_mesh.obj)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError as exc:
        raise InvalidFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidFileError(f"{path}: corrupt ZIP/NPZ file ({exc})") from None
        if "header.npy" in names:
            return "native"
        if any(n.endswith("generic_neutral_mesh.obj") for n in names):
            return "ict"
        raise InvalidFileError(f"{path}: ZIP is neither a facefit model nor the ICT-FaceKit archive")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "bfm2009" if suffix == ".mat" else "bfm2017"
    if head.startswith(b"MATLAB"):
        return "bfm2009"
    if head[:1] == b"\x80" or suffix in (".pkl", ".pickle"):
        return "flame"
    kind = _SUFFIX_KIND.get(suffix)
    if kind is None:
        raise InvalidFileError(
            f"{path}: unknown model format; expected a facefit .npz, the ICT-FaceKit .zip, a BFM .h5/.mat or a FLAME .pkl"
        )
    return kind


# --------------------------------------------------------------------------- store


def default_model_dir() -> Path:
    """The model store: ``$FACEFIT_MODEL_DIR`` or ``<user data dir>/facefit/models``."""
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("facefit")) / "models"


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise FacefitError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def _store_path(name: str) -> Path:
    return default_model_dir() / f"{_check_name(name)}.npz"


def default_model_name() -> str | None:
    """Name of the store's default model: the one named in ``<store>/default``, else the
    only model in the store, else ``ict-face`` if present; None if undecided or empty."""
    store = default_model_dir()
    marker = store / _DEFAULT_FILE
    if marker.is_file():
        try:
            name = marker.read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
        if name and (store / f"{name}.npz").is_file():
            return name
    names = sorted(p.stem for p in store.glob("*.npz")) if store.is_dir() else []
    if len(names) == 1:
        return names[0]
    if "ict-face" in names:
        return "ict-face"
    return None


def set_default_model(name: str) -> None:
    """Make a stored model the default (writes ``<store>/default``).

    Raises:
        ModelNotFoundError: no such model in the store.
    """
    from facefit.atomic import atomic_write

    if not _store_path(name).is_file():
        raise ModelNotFoundError(f"no model named '{name}' in {default_model_dir()}")
    with atomic_write(default_model_dir() / _DEFAULT_FILE, "w", mkdir=True) as fh:
        fh.write(name + "\n")


def list_models() -> list[dict[str, Any]]:
    """The models in the store, sorted by name.

    Returns:
        One dict per model: ``name``, ``default`` (bool), ``vertices``, ``shape``,
        ``color``, ``expr`` (component counts), ``source``, ``path``. Unreadable files
        get ``source = "unreadable: ..."`` and zero counts.
    """
    store = default_model_dir()
    if not store.is_dir():
        return []
    default = default_model_name()
    rows = []
    for p in sorted(store.glob("*.npz")):
        row: dict[str, Any] = {"name": p.stem, "default": p.stem == default}
        try:
            h = MorphableModel.read_header(p)
            s = h.get("summary", {})
            row.update(
                vertices=s.get("n_vertices", 0), shape=s.get("n_shape", 0), color=s.get("n_color", 0),
                expr=s.get("n_expr", 0), source=h.get("meta", {}).get("source", "?"),
            )
        except FacefitError as exc:
            row.update(vertices=0, shape=0, color=0, expr=0, source=f"unreadable: {exc}")
        row["path"] = str(p)
        rows.append(row)
    return rows


def import_model(
    kind: str,
    path: str | os.PathLike,
    region: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    make_default: bool = False,
    units: str | None = None,
    landmarks=None,
    use_cache: bool = True,
) -> Path:
    """Convert a source model and save it as facefit ``.npz``.

    Args:
        kind: ``"ict"``, ``"bfm2017"``, ``"bfm2009"`` or ``"flame"``.
        path: the source file / ZIP / folder.
        region: ICT-FaceKit: ``"face"`` (default) or ``"head"``.
        out: where to write the ``.npz``; default ``<store>/<name>.npz``.
        name: model name (default ``ict-face``, ``ict-head``, ``bfm2017``, ``bfm2009``,
            ``flame``).
        make_default: make it the store's default model (also done automatically for
            the first model stored when no default is set).
        units, landmarks, use_cache: see :func:`convert_model`.
    Returns:
        The path written.
    Raises:
        FacefitError and subclasses (one-line messages).
    """
    if out is not None and make_default:
        raise FacefitError("--default applies to models in the store; omit --out to store the model")
    model = convert_model(kind, path, region, units=units, landmarks=landmarks, use_cache=use_cache)
    if name is not None:
        model = model.with_name(_check_name(name))
    model.meta["imported_from"] = str(Path(path).expanduser().resolve())
    if out is not None:
        target = Path(out).expanduser()
        if target.is_dir():
            target = target / f"{model.name}.npz"
        model.save(target)
        return target
    target = _store_path(model.name)
    model.save(target)
    if make_default or default_model_name() in (None, model.name):
        set_default_model(model.name)
    return target


def _load_native(path: Path) -> MorphableModel:
    """Load a native file, reusing a recently loaded identical one (same size and mtime)."""
    st = path.stat()
    key = str(path.resolve())
    stamp = (st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    model = MorphableModel.load(path)
    with _memo_lock:
        _memo[key] = (stamp, model)
        while len(_memo) > _MEMO_SIZE:
            _memo.pop(next(iter(_memo)))
    return model


def load_model(path_or_name: str | os.PathLike, *, region: str | None = None) -> MorphableModel:
    """Load a model from a path (native or any source kind) or a store name.

    Args:
        path_or_name: a facefit ``.npz``, the ICT-FaceKit ZIP/folder, a BFM ``.h5``/``.mat``,
            a FLAME ``.pkl``, or the name of a model in the store.
        region: for ICT-FaceKit sources.
    Returns:
        MorphableModel.
    Raises:
        ModelNotFoundError: no such file or stored model.
        InvalidFileError: unrecognised or corrupt file.
    """
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if path.exists():
        kind = detect_kind(path)
        if kind == "native":
            albedo = _albedo_only_header(path)
            if albedo is not None:
                return _model_with_albedo_file(path, albedo)
            return _load_native(path)
        return convert_model(kind, path, region)
    if _NAME_RE.match(text) and "/" not in text and os.sep not in text:
        stored = _store_path(text)
        if stored.is_file():
            return _load_native(stored)
    raise ModelNotFoundError(
        f"no model file or stored model named '{text}' (store: {default_model_dir()}; see 'facefit model list')"
    )


def _albedo_only_header(path: Path) -> dict | None:
    """The header of a colour-only file written by ``build-albedo --albedo-only``, else None."""
    from .albedo_build import ALBEDO_FORMAT, _header_of

    h = _header_of(path)
    return h if isinstance(h, dict) and h.get("format") == ALBEDO_FORMAT else None


def _model_with_albedo_file(path: Path, header: dict) -> MorphableModel:
    """A colour-only file attached to the shape model it was built for.

    The shape model is the default one (store default, else the shared ICT-FaceKit
    face model) when its shape key matches the file's; anything else is refused with
    both models named.
    """
    from .albedo_build import albedo_for, shape_key

    candidates = []
    default = default_model_name()
    if default is not None and _store_path(default).is_file():
        candidates.append(lambda: _load_native(_store_path(default)))
    shared = find_shared_ict()
    if shared is not None:
        candidates.append(lambda: convert_model("ict", shared, "face"))
    for get in candidates:
        base = get()
        if base.n_vertices == int(header.get("n_vertices", -1)) and shape_key(base) == header.get("shape_key"):
            return albedo_for(base, path)
    raise FacefitError(
        f"{path} holds only a colour model, built for shape model '{header.get('model_name', '?')}', "
        "which is not the default model here; rebuild it without --albedo-only to get a complete model file"
    )


def find_shared_ict() -> Path | None:
    """The ICT-FaceKit ZIP (or folder) in ``shared/models/ICT-FaceKit`` beside the checkout.

    Looks in ``<repo>/../shared/models/ICT-FaceKit`` (repo = the folder holding the
    ``facefit`` package), then ``<cwd>/../shared/...`` and ``<cwd>/shared/...``.

    Returns:
        The path, or None.
    """
    repo = Path(__file__).resolve().parents[1]
    cwd = Path.cwd()
    seen = set()
    for base in (repo.parent, cwd.parent, cwd):
        d = (base / "shared" / "models" / "ICT-FaceKit").resolve()
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        zips = sorted(d.glob("ICT-FaceKit*.zip"))
        if zips:
            return zips[-1]
        if (d / "FaceXModel").is_dir() or any(d.glob("*/FaceXModel")):
            return d
    return None


def resolve_model(name_or_path: str | os.PathLike | None = None) -> MorphableModel:
    """The model to use: explicit argument > ``$FACEFIT_MODEL`` > the store's default >
    the ICT-FaceKit ZIP in ``../shared/models/ICT-FaceKit`` (face region, via the cache).

    Args:
        name_or_path: a path or a store name (see :func:`load_model`), or None.
    Returns:
        MorphableModel.
    Raises:
        ModelNotFoundError: nothing found (the message says how to get a model).
    """
    if name_or_path is not None and os.fspath(name_or_path) != "":
        return load_model(name_or_path)
    env = os.environ.get(ENV_MODEL)
    if env:
        return load_model(env)
    default = default_model_name()
    if default is not None:
        return _load_native(_store_path(default))
    shared = find_shared_ict()
    if shared is not None:
        return convert_model("ict", shared, "face")
    raise ModelNotFoundError(
        "no morphable model found: run 'facefit model fetch ict' (downloads ICT-FaceKit, MIT) "
        "or 'facefit model import ict PATH' (or set FACEFIT_MODEL)"
    )


def model_info(model: MorphableModel | str | os.PathLike | None) -> dict[str, Any]:
    """A summary of a model for people (``facefit model info``).

    Args:
        model: a MorphableModel, or a name/path/None resolved with :func:`resolve_model`.
    Returns:
        dict: name, source, units, vertices, triangles, face_vertices, shape/colour/
        expression components, colour model, landmarks, uv, symmetry, size in mm, hash,
        and ``lacks`` (what the model does not have, e.g. "no statistical colour model").
    """
    if not isinstance(model, MorphableModel):
        model = resolve_model(model)
    import numpy as np

    face = model.mean_shape[model.face_mask] if model.face_mask.any() else model.mean_shape
    size = np.ptp(face, axis=0) if len(face) else np.zeros(3)
    color_desc = str(model.meta.get("color_model", "none"))
    lacks = []
    if model.n_color == 0 or color_desc.startswith("heuristic"):
        lacks.append("no statistical colour model" + (" (flat skin tone)" if model.n_color == 0 else ""))
    if model.n_expr == 0:
        lacks.append("no expression model")
    if model.landmarks is None:
        lacks.append("no 68-point landmarks")
    if model.uv is None:
        lacks.append("no UV coordinates")
    if model.symmetry is None:
        lacks.append("no symmetry map")
    return {
        "name": model.name,
        "source": model.meta.get("source", "?"),
        "units": model.units,
        "vertices": model.n_vertices,
        "triangles": model.n_triangles,
        "face_vertices": int(model.face_mask.sum()),
        "shape_components": model.n_shape,
        "color_components": model.n_color,
        "expression_components": model.n_expr,
        "color_model": color_desc,
        "expression_model": model.meta.get("expr_model", "none"),
        "landmarks": 0 if model.landmarks is None else len(model.landmarks),
        "uv": model.uv is not None,
        "symmetry": model.symmetry is not None,
        "face_size_mm": "x".join(f"{v:.0f}" for v in size),
        "content_hash": model.content_hash,
        **_albedo_provenance(model),
        "lacks": ", ".join(lacks) if lacks else "nothing",
    }


def _albedo_provenance(model: MorphableModel) -> dict[str, Any]:
    """``model info`` lines for a colour model learned by ``build-albedo`` (else nothing)."""
    prov = model.meta.get("albedo")
    if not isinstance(prov, dict) or not prov:
        return {}
    out: dict[str, Any] = {}
    if "photos" in prov:
        rej = prov.get("rejected_by_reason") or {}
        why = ", ".join(f"{k} {v}" for k, v in sorted(rej.items())) if rej else "none"
        out["albedo_photos"] = f"{prov.get('used', '?')} used of {prov['photos']} (rejected: {why})"
    if "explained_variance_total" in prov:
        out["albedo_explained"] = f"{float(prov['explained_variance_total']):.1%} of colour variance by {prov.get('components', '?')} components"
    settings = prov.get("settings")
    if isinstance(settings, dict):
        keep = ("rounds", "fit_steps", "symmetry_weight", "max_landmark_error", "min_visible", "max_photos")
        out["albedo_settings"] = ", ".join(f"{k}={settings[k]}" for k in keep if k in settings)
    if "filled_vertices" in prov:
        out["albedo_filled"] = (f"{prov['filled_vertices']} vertices filled from their neighbours "
                                f"({prov.get('unseen_vertices', '?')} never seen + {settings.get('fill_rings', '?') if isinstance(settings, dict) else '?'} ring(s))")
    if model.meta.get("albedo_file"):
        out["albedo_file"] = str(model.meta["albedo_file"])
    return out


# --------------------------------------------------------------------------- fetch


def verify_ict_archive(path: str | os.PathLike) -> str:
    """Check a downloaded ICT-FaceKit archive against the pinned checksums.

    Accepts the archive if its sha256 is :data:`ICT_ARCHIVE_SHA256`, or else if the content
    digest of the model files it holds is :data:`ICT_CONTENT_SHA256` (GitHub may pack the
    same commit differently).

    Returns:
        ``"archive"`` or ``"content"``: which check matched.
    Raises:
        InvalidFileError: neither matches.
    """
    from facefit.loaders.ict import IctSource, content_digest

    path = Path(path)
    if file_sha256(path) == ICT_ARCHIVE_SHA256:
        return "archive"
    try:
        with IctSource(path) as src:
            digest = content_digest(src)
    except FacefitError as exc:
        raise InvalidFileError(f"{path}: downloaded file is not the ICT-FaceKit archive ({exc})") from None
    if digest != ICT_CONTENT_SHA256:
        raise InvalidFileError(
            f"{path}: checksum mismatch: the model files differ from ICT-FaceKit commit {ICT_COMMIT[:7]}"
        )
    return "content"


def _download(url: str, target: Path, timeout: float) -> None:
    import socket
    import urllib.error
    import urllib.request

    from facefit import __version__
    from facefit.atomic import atomic_write

    req = urllib.request.Request(url, headers={"User-Agent": f"facefit/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, atomic_write(target, "wb", mkdir=True) as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
    except FacefitError:
        raise
    except urllib.error.HTTPError as exc:
        raise FacefitError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FacefitError(
            f"could not download {url} ({reason}); check the network, or download the ZIP yourself "
            "and run 'facefit model import ict PATH'"
        ) from None


def fetch_ict(
    dest: str | os.PathLike | None = None,
    *,
    region: str = "face",
    url: str | None = None,
    timeout: float = 15.0,
    name: str | None = None,
    make_default: bool = False,
) -> Path:
    """Download ICT-FaceKit at the pinned commit, verify it, import it into the store.

    Args:
        dest: folder for the downloaded ZIP (default ``<store>/sources``); an archive already
            there that passes the checks is reused.
        region: ``"face"`` or ``"head"``.
        url: override :data:`ICT_URL` (mirrors, tests).
        timeout: seconds for connecting / each read (fails fast when offline).
        name, make_default: see :func:`import_model`.
    Returns:
        Path of the stored facefit model.
    Raises:
        FacefitError: download failed (one line, says what to do instead);
        InvalidFileError: checksum mismatch (the bad download is deleted).
    """
    folder = Path(dest).expanduser() if dest is not None else default_model_dir() / "sources"
    archive = folder / f"ICT-FaceKit-{ICT_COMMIT[:7]}.zip"
    ok = False
    if archive.is_file():
        try:
            verify_ict_archive(archive)
            ok = True
        except FacefitError:
            ok = False
    if not ok:
        _download(url or ICT_URL, archive, timeout)
        try:
            verify_ict_archive(archive)
        except FacefitError:
            archive.unlink(missing_ok=True)
            raise
    return import_model("ict", archive, region, name=name, make_default=make_default)
