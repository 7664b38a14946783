"""ICT-FaceKit (USC ICT, MIT licence) -> MorphableModel.

Reads the repository ZIP directly (no extraction) or the same tree extracted to a folder.
Facts used (see the ICT-FaceKit documentation):

* ``FaceXModel/generic_neutral_mesh.obj`` is the mean head, in centimetres (converted to
  mm here), mostly quads (split into two triangles each), with texture coordinates.
* ``identityNNN.obj`` (100 files): identity PCA modes stored as full meshes;
  mode k = identity_k - neutral, already scaled by its standard deviation, so identity
  coefficients are N(0, 1). facefit stores the unit direction and its norm as the std.
* 53 expression blend shapes listed in ``vertex_indices.json`` (``expressions``); the
  offset is shape - neutral and the coefficient is the blend-shape weight (0..1).
* ``vertex_indices.json``: ``idx_to_landmark_verts`` = 68 vertices in Multi-PIE order.
* Vertex ranges: full face area = [0, 9408], narrow face area = [0, 6705].

Only the vertex lines of the 153 component OBJs are parsed (vectorised); topology and UVs
come from the neutral mesh, which all files share.
"""
from __future__ import annotations

import json
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.loaders.common import assemble_model, cached_convert
from facefit.loaders.obj import parse_obj_mesh, parse_obj_vertices, vertex_prefix_bytes
from facefit.morphable import MorphableModel

__all__ = ["load_ict", "IctSource", "content_digest", "FACE_AREA_VERTICES", "NARROW_FACE_VERTICES", "REGIONS"]

#: Vertices [0, 9408] form the full face area (ICT documentation).
FACE_AREA_VERTICES = 9409
#: Vertices [0, 6705] form the narrow face area.
NARROW_FACE_VERTICES = 6706
#: Region names accepted by :func:`load_ict`.
REGIONS = ("face", "head")

_NEUTRAL = "generic_neutral_mesh.obj"
_INDICES = "vertex_indices.json"
_IDENTITY_RE = re.compile(r"^identity(\d+)\.obj$")
_CM_TO_MM = 10.0
_LICENSE = "MIT, Copyright (c) 2020 USC Institute for Creative Technologies"


class IctSource:
    """The ``FaceXModel`` files of ICT-FaceKit, in a ZIP or a folder.

    Args:
        path: the repository ZIP, the repository folder, its parent, or ``FaceXModel``.
    Raises:
        ModelNotFoundError: path missing.
        InvalidFileError: no ``FaceXModel/generic_neutral_mesh.obj`` inside.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        self.commit: str | None = None
        if not self.path.exists():
            raise ModelNotFoundError(f"ICT-FaceKit source not found: {self.path}")
        if self.path.is_file():
            try:
                zf = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise InvalidFileError(f"{self.path}: not a readable ZIP file ({exc})") from exc
            hits = [i for i in zf.infolist() if i.filename.endswith("FaceXModel/" + _NEUTRAL) or i.filename == _NEUTRAL]
            if not hits:
                zf.close()
                raise InvalidFileError(f"{self.path}: no FaceXModel/{_NEUTRAL} inside; is this the ICT-FaceKit ZIP?")
            prefix = hits[0].filename[: -len(_NEUTRAL)]
            self._zip = zf
            self._members = {
                i.filename[len(prefix):]: i
                for i in zf.infolist()
                if i.filename.startswith(prefix) and "/" not in i.filename[len(prefix):] and not i.is_dir()
            }
            self.names = sorted(self._members)
            comment = zf.comment.decode("ascii", "replace").strip()
            if re.fullmatch(r"[0-9a-f]{40}", comment):
                self.commit = comment
        else:
            folder = None
            for cand in (self.path, self.path / "FaceXModel", *sorted(self.path.glob("*/FaceXModel"))):
                if (cand / _NEUTRAL).is_file():
                    folder = cand
                    break
            if folder is None:
                raise InvalidFileError(f"{self.path}: no FaceXModel/{_NEUTRAL} found; is this the ICT-FaceKit folder?")
            self.folder = folder
            self.names = sorted(p.name for p in folder.iterdir() if p.is_file())
            m = re.search(r"ICT-FaceKit-([0-9a-f]{7,40})", str(folder.resolve()))
            if m:
                self.commit = m.group(1)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "IctSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, name: str) -> bytes:
        """Bytes of one file of ``FaceXModel``."""
        try:
            if self._zip is not None:
                if name not in self._members:
                    raise InvalidFileError(f"{self.path}: FaceXModel/{name} is missing")
                return self._zip.read(self._members[name])
            return (self.folder / name).read_bytes()
        except FacefitError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise InvalidFileError(f"{self.path}: cannot read FaceXModel/{name} ({exc})") from exc
        except Exception as exc:  # zlib.error, CRC errors
            raise InvalidFileError(f"{self.path}: corrupt FaceXModel/{name} ({type(exc).__name__})") from exc

    def read_vertices(self, name: str, n_v: int, guess_bytes: int) -> np.ndarray:
        """The first ``n_v`` vertices of an OBJ, decompressing only as much as needed.

        Args:
            name: file in FaceXModel.
            n_v: vertices wanted.
            guess_bytes: expected size of the file prefix holding them.
        Returns:
            (n_v, 3) float64 (fewer rows if the file has fewer vertices).
        """
        try:
            if self._zip is not None:
                if name not in self._members:
                    raise InvalidFileError(f"{self.path}: FaceXModel/{name} is missing")
                fh = self._zip.open(self._members[name])
            else:
                fh = open(self.folder / name, "rb")
            with fh:
                buf = fh.read(guess_bytes)
                while True:
                    v = parse_obj_vertices(buf, max_vertices=n_v, name=name, truncated=True)
                    if len(v) >= n_v:
                        return v
                    more = fh.read(max(guess_bytes // 4, 1 << 16))
                    if not more:
                        return parse_obj_vertices(buf, max_vertices=n_v, name=name)
                    buf += more
        except FacefitError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise InvalidFileError(f"{self.path}: cannot read FaceXModel/{name} ({exc})") from exc
        except Exception as exc:  # zlib.error, CRC errors
            raise InvalidFileError(f"{self.path}: corrupt FaceXModel/{name} ({type(exc).__name__})") from exc

    def signature(self, names: list[str]) -> list[str]:
        """Strings identifying the content of ``names`` (ZIP CRCs or file size+mtime)."""
        out = []
        for n in names:
            if self._zip is not None:
                i = self._members[n]
                out.append(f"{n}:{i.CRC:08x}:{i.file_size}")
            else:
                st = (self.folder / n).stat()
                out.append(f"{n}:{st.st_size}:{st.st_mtime_ns}")
        return out

    def component_files(self) -> tuple[list[str], list[str]]:
        """(identity OBJ names in mode order, expression names from vertex_indices.json)."""
        ids = sorted((int(m.group(1)), n) for n in self.names if (m := _IDENTITY_RE.match(n)))
        if not ids:
            raise InvalidFileError(f"{self.path}: no identityNNN.obj files")
        numbers = [k for k, _ in ids]
        if numbers != list(range(len(numbers))):
            raise InvalidFileError(f"{self.path}: identity files are not numbered 000..{len(numbers) - 1:03d}")
        if _INDICES not in self.names:
            raise InvalidFileError(f"{self.path}: FaceXModel/{_INDICES} is missing")
        expr = self.indices().get("expressions")
        if not isinstance(expr, list):
            expr = sorted(n[:-4] for n in self.names if n.endswith(".obj") and n != _NEUTRAL and not _IDENTITY_RE.match(n))
        missing = [e for e in expr if f"{e}.obj" not in self.names]
        if missing:
            raise InvalidFileError(f"{self.path}: expression file(s) missing: {', '.join(missing[:3])}")
        return [n for _, n in ids], [str(e) for e in expr]

    def indices(self) -> dict:
        """Parsed ``vertex_indices.json``."""
        if not hasattr(self, "_indices"):
            try:
                self._indices = json.loads(self.read(_INDICES))
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidFileError(f"{self.path}: {_INDICES} is not valid JSON ({exc})") from exc
        return self._indices


def content_digest(src: IctSource) -> str:
    """sha256 (hex) over the names and sha256 of the FaceXModel files facefit reads.

    Independent of how the archive was packed (compression level, timestamps, extra
    files), so it identifies the model content of a GitHub download.
    """
    import hashlib

    id_files, expr_names = src.component_files()
    h = hashlib.sha256(b"ict-facekit-content/1\n")
    for name in sorted([_NEUTRAL, _INDICES, *id_files, *(f"{e}.obj" for e in expr_names)]):
        h.update(f"{name}\t{hashlib.sha256(src.read(name)).hexdigest()}\n".encode())
    return h.hexdigest()


def _read_offsets(
    src: IctSource, files: list[str], neutral_cm: np.ndarray, n_v: int, guess_bytes: int, workers: int
) -> np.ndarray:
    """(n_v, 3, len(files)) float32 offsets in mm of each OBJ from the neutral mesh."""
    out = np.empty((n_v, 3, len(files)), np.float32)

    def one(k_name):
        k, name = k_name
        v = src.read_vertices(name, n_v, guess_bytes)
        if len(v) != n_v:
            raise InvalidFileError(f"{src.path}: {name} has {len(v)} vertices, expected at least {n_v}")
        out[:, :, k] = (v - neutral_cm) * _CM_TO_MM

    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, enumerate(files)))
    else:
        for item in enumerate(files):
            one(item)
    return out


def _build(src: IctSource, region: str, workers: int) -> MorphableModel:
    id_files, expr_names = src.component_files()
    neutral_bytes = src.read(_NEUTRAL)
    neutral = parse_obj_mesh(neutral_bytes, name=_NEUTRAL)
    n_all = len(neutral["vertices"])
    if n_all < FACE_AREA_VERTICES:
        raise InvalidFileError(f"{src.path}: neutral mesh has {n_all} vertices, expected >= {FACE_AREA_VERTICES}")
    lms = src.indices().get("idx_to_landmark_verts")
    if not isinstance(lms, list) or len(lms) != 68:
        raise InvalidFileError(f"{src.path}: {_INDICES} lacks 68 idx_to_landmark_verts")
    lms = np.asarray(lms, np.int64)

    meta = {
        "source": "ICT-FaceKit",
        "source_url": "https://github.com/ICT-VGL/ICT-FaceKit",
        "source_commit": src.commit,
        "source_file": src.path.name,
        "license": _LICENSE,
        "region": region,
        "units_source": "cm",
        "shape_model": f"{len(id_files)} PCA identity modes (ICT-FaceKit identityNNN.obj), coefficients N(0, 1)",
        "expr_model": f"{len(expr_names)} ARKit-style blend shapes; coefficient = blend-shape weight in [0, 1]",
        "expr_model_kind": "blendshape",
        "color_model": "none (flat skin tone; ICT-FaceKit has no albedo model)",
        "face_area_vertices": FACE_AREA_VERTICES,
        "narrow_face_vertices": NARROW_FACE_VERTICES,
        "materials": neutral["materials"],
    }
    face_mask = np.arange(n_all) < FACE_AREA_VERTICES
    topo = MorphableModel(
        name=f"ict-{region}",
        mean_shape=neutral["vertices"] * _CM_TO_MM,
        triangles=neutral["triangles"],
        uv=neutral["uv"] if neutral["uv_triangles"] is not None else None,
        uv_triangles=neutral["uv_triangles"],
        landmarks=lms,
        face_mask=face_mask,
        meta=meta,
    )
    if region == "face":
        topo = topo.subset(face_mask)
    n_v = topo.n_vertices
    neutral_cm = neutral["vertices"][:n_v]

    guess = int(vertex_prefix_bytes(neutral_bytes, n_v) * 1.1) + 4096
    shape = _read_offsets(src, id_files, neutral_cm, n_v, guess, workers)
    expr = _read_offsets(src, [f"{e}.obj" for e in expr_names], neutral_cm, n_v, guess, workers)
    return assemble_model(
        topo.name,
        topo.mean_shape,
        topo.triangles,
        shape_basis=shape,
        expr_basis=expr,
        expr_names=expr_names,
        uv=topo.uv,
        uv_triangles=topo.uv_triangles,
        landmarks=topo.landmarks,
        face_mask=topo.face_mask,
        meta=topo.meta,
    )


def load_ict(path: str | Path, region: str = "face", *, use_cache: bool = True, workers: int = 2) -> MorphableModel:
    """Import ICT-FaceKit from its repository ZIP or folder.

    Args:
        path: ``ICT-FaceKit-<commit>.zip`` or the extracted tree (or its FaceXModel).
        region: ``"face"`` (default; the full face area, vertices 0..9408) or ``"head"``
            (all 26,719 vertices: head, neck, eyes, teeth, ...; ``face_mask`` marks the
            face area).
        use_cache: reuse/store the converted model in the cache
            (:func:`facefit.loaders.common.cache_dir`), keyed by the ZIP members' CRCs
            (or the files' sizes and mtimes) and the region.
        workers: threads used to read and parse the OBJs.
    Returns:
        MorphableModel in mm with 100 shape components (N(0,1) coefficients), 53
        expression blend shapes, no colour model (flat skin tone), UVs, 68 landmarks,
        face mask and symmetry map.
    Raises:
        FacefitError: unknown region; InvalidFileError / ModelNotFoundError for bad paths.
    """
    if region not in REGIONS:
        raise FacefitError(f"unknown ICT-FaceKit region {region!r}; use 'face' or 'head'")
    with IctSource(path) as src:
        id_files, expr_names = src.component_files()
        used = [_NEUTRAL, _INDICES, *id_files, *(f"{e}.obj" for e in expr_names)]
        return cached_convert("ict", region, src.signature(used), lambda: _build(src, region, workers), use_cache)
