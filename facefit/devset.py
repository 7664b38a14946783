"""Labelled photo folders (``<person>/<photo>``, optional ``labels.csv``) and their faces.

Used by the recognition benchmark, ``facefit eval identity`` and tests.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import FacefitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def shared_dir() -> Optional[Path]:
    """``../shared`` beside the facefit checkout (the dev machines' data), or None."""
    p = Path(__file__).resolve().parents[1].parent / "shared"
    return p if p.is_dir() else None


def list_labelled(root: str | Path, per_person: Optional[int] = None, people: Optional[int] = None) -> list[tuple[Path, str]]:
    """(path, identity) of every photo in a labelled folder.

    ``labels.csv`` (columns ``path,identity``) is used when present, else the first-level
    folder name is the identity.

    Args:
        root: the folder.
        per_person: keep at most this many photos per identity (the first ones, sorted).
        people: keep at most this many identities (sorted by name).
    Raises:
        FacefitError: not a folder, no labelled photos, or a bad ``labels.csv``
            (:func:`read_labels_csv`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FacefitError(f"{root}: not a folder")
    rows = []
    labels = root / "labels.csv"
    if labels.is_file():
        rows = read_labels_csv(labels)
    else:
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((f, d.name))
    if not rows:
        raise FacefitError(f"{root}: no labelled photos (need <person>/<photo> folders or labels.csv)")
    rows.sort(key=lambda r: (r[1], str(r[0])))
    if people is not None:
        keep = sorted({r[1] for r in rows})[:people]
        rows = [r for r in rows if r[1] in set(keep)]
    if per_person is not None:
        count: dict[str, int] = {}
        out = []
        for p, lab in rows:
            if count.get(lab, 0) < per_person:
                out.append((p, lab))
                count[lab] = count.get(lab, 0) + 1
        rows = out
    return rows


LABEL_COLUMNS = ("path", "identity")


def read_labels_csv(labels: str | Path) -> list[tuple[Path, str]]:
    """(photo path, identity) rows of a ``labels.csv`` (columns ``path,identity``; paths
    relative to the file's folder).

    Raises:
        FacefitError: not UTF-8 text, not CSV, a column missing, an empty cell, or a listed
            photo that does not exist (one line, naming the file).
    """
    labels = Path(labels)
    root = labels.parent
    rows: list[tuple[Path, str]] = []
    try:
        with labels.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [str(c).strip() for c in (reader.fieldnames or [])]
            missing = [c for c in LABEL_COLUMNS if c not in fields]
            if missing:
                found = ", ".join(repr(c) for c in fields) if fields else "none"
                raise FacefitError(
                    f"{labels}: the header must name the columns 'path' and 'identity' (found {found})"
                )
            reader.fieldnames = fields
            for r in reader:
                path, ident = (r.get("path") or "").strip(), (r.get("identity") or "").strip()
                if not path and not ident and not any((v or "").strip() for v in r.values() if isinstance(v, str)):
                    continue  # a blank line
                if not path or not ident:
                    raise FacefitError(f"{labels}, line {reader.line_num}: empty path or identity")
                rows.append((root / path, ident))
    except UnicodeDecodeError:
        raise FacefitError(f"{labels}: not a text CSV file (it is not UTF-8)") from None
    except csv.Error as e:
        raise FacefitError(f"{labels}: not a valid CSV file ({e})") from None
    except OSError as e:
        raise FacefitError(f"cannot read {labels}: {e.strerror or e}") from None
    absent = [p for p, _ in rows if not p.is_file()]
    if absent:
        first = absent[0].relative_to(root) if absent[0].is_relative_to(root) else absent[0]
        what = (f"none of the {len(rows)} listed photos exists" if len(absent) == len(rows)
                else f"{len(absent)} of the {len(rows)} listed photos {'does' if len(absent) == 1 else 'do'} not exist")
        raise FacefitError(f"{labels}: {what} (e.g. '{first}'; paths are relative to {root})")
    return rows


@dataclass
class DetectedPhoto:
    """A labelled photo with its main face (or the reason it has none)."""

    path: Path
    identity: str
    image: Optional[np.ndarray]
    face: object  # facefit.faces.detection.Face or None
    error: Optional[str] = None


def detect_labelled(rows, detector: str = "dlib", keep_images: bool = True) -> list[DetectedPhoto]:
    """Load each photo and detect its main face (errors are recorded, not raised)."""
    from .faces.detection import detect_faces
    from .faces.images import load_image

    out = []
    for path, lab in rows:
        try:
            img = load_image(path)
            faces = detect_faces(img, backend=detector)
            if not faces:
                out.append(DetectedPhoto(path, lab, None, None, "no face"))
                continue
            out.append(DetectedPhoto(path, lab, img if keep_images else None, faces[0]))
        except FacefitError as e:
            out.append(DetectedPhoto(path, lab, None, None, str(e)))
    return out
