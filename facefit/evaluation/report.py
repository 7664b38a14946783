"""Evaluation reports: a Markdown file with tables and figures, the raw numbers as JSON,
PNG plots (matplotlib, Agg backend) and a rich summary table for the terminal.

Usage::

    check_output_dir(out_dir)   # before the long computation: a writable folder?
    with Report("Synthetic faces", out_dir) as rep:
        rep.text("What was measured ...")
        rep.table(["method", "error (mm)"], [["facefit", 1.23]], title="Geometric error")
        rep.figure(plot_boxes(series, rep.path("errors.png")), "Per-face errors")
        rep.write(results)      # report.md + results.json, then every file moves into out_dir
    print_summary("Synthetic faces", headers, rows)

Every file is written atomically (:func:`facefit.atomic.atomic_write`) into a staging folder;
the report's files move into ``out_dir`` only once all of them are written, and a failure
leaves none of them behind (:class:`Report`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from facefit.atomic import atomic_write, describe_os_error, os_error_reason
from facefit.errors import FacefitError

__all__ = [
    "Report",
    "check_output_dir",
    "fmt",
    "md_table",
    "to_jsonable",
    "write_json",
    "save_figure",
    "plot_histograms",
    "plot_boxes",
    "plot_scatter",
    "plot_bars",
    "image_sheet",
    "print_summary",
    "mean_std",
]

REPORT_NAME = "report.md"
RESULTS_NAME = "results.json"


# ---------------------------------------------------------------------------------------
# numbers


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant decimals, NaN/None as a dash."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "–"
        return f"{float(x):.{digits}f}"
    return str(x)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard deviation, count) of the finite values (NaN when there are none)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=0)), int(len(v))


def to_jsonable(x: Any) -> Any:
    """Numpy arrays/scalars, paths, tuples and dataclasses -> plain JSON values (NaN -> None)."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "as_dict"):
        return to_jsonable(x.as_dict())
    return x


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (made JSON-safe with :func:`to_jsonable`) atomically, indented."""
    path = Path(path)
    with atomic_write(path, "w", mkdir=True) as f:
        json.dump(to_jsonable(obj), f, indent=2, ensure_ascii=False)
        f.write("\n")
    return path


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (numbers formatted with :func:`fmt`; columns whose
    cells are all numbers or empty are right-aligned)."""
    def cell(x):
        return fmt(x, digits).replace("|", "\\|").replace("\n", " ")

    def numeric(j: int) -> bool:
        vals = [r[j] for r in rows if j < len(r)]
        return bool(vals) and all(v is None or isinstance(v, (int, float, np.integer, np.floating)) and
                                  not isinstance(v, (bool, np.bool_)) or v in ("–", "") for v in vals)

    align = ["---:" if numeric(j) else "---" for j in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in r) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the report


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Make sure a report can be written into the folder ``out_dir``, without creating it.

    Called by every ``facefit eval`` command before its (long) computation: the folder must
    be a folder (not a file) and writable, or, when missing, creatable (its nearest existing
    parent is a writable folder). Writability is tested by creating and removing a hidden
    probe file, so read-only file systems and permissions are caught as they really are.

    Returns:
        ``out_dir`` as a Path.
    Raises:
        FacefitError: one line, e.g. ``"cannot write the report to out: it is a file, not a
        folder"``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FacefitError(f"cannot write the report to {out}: it is a file, not a folder")
    probe_dir = out
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise FacefitError(f"cannot create the report folder {out}: {probe_dir} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".facefit-probe.", suffix=".tmp", dir=probe_dir)
    except OSError as exc:
        what = "write the report to" if probe_dir == out else "create the report folder"
        raise FacefitError(f"cannot {what} {out}: {os_error_reason(exc, probe_dir)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return out


@dataclass
class Report:
    """A Markdown report being assembled for ``out_dir``.

    The figures (:meth:`path`), ``report.md`` and ``results.json`` are first written into a
    hidden staging folder inside ``out_dir``; :meth:`write` moves them all into ``out_dir``
    (``report.md`` last), each with an atomic rename. If anything fails before that (a plot
    that cannot be drawn, a full disk), the staging folder is removed and ``out_dir`` is left
    as it was: never a ``errors.png`` without its ``report.md``, never a half-written file.
    Use it as a context manager so that a failure between two steps cleans up too (and the
    folders the report created are removed again while empty)::

        with Report("title", out_dir) as rep:
            rep.figure(plot_boxes(..., rep.path("errors.png")), "caption")
            return rep.write(results)

    Attributes:
        title: the ``#`` heading.
        out_dir: folder for ``report.md``, ``results.json`` and the figures.
        parts: Markdown blocks in order.
    """

    title: str
    out_dir: Path
    parts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = check_output_dir(self.out_dir)
        # folders this report creates (removed again if it fails while they are empty)
        self._created = [d for d in [self.out_dir, *self.out_dir.parents] if not d.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FacefitError(f"cannot create the report folder {self.out_dir}: {os_error_reason(exc, self.out_dir)}") from None
        self._stage: Optional[Path] = None
        self._names: list[str] = []
        self._remove_stale_staging()

    def _remove_stale_staging(self, older_than_s: float = 3600.0) -> None:
        """Remove staging folders that a killed run left in ``out_dir`` (an hour old or more,
        so that a report being written by another process at the same time is left alone)."""
        import time

        now = time.time()
        for d in self.out_dir.glob(".report.*.tmp"):
            with contextlib.suppress(OSError):
                if d.is_dir() and not d.is_symlink() and now - d.stat().st_mtime >= older_than_s:
                    shutil.rmtree(d)

    def __enter__(self) -> "Report":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.discard()
        if exc_type is not None:
            for d in self._created:  # innermost first
                try:
                    d.rmdir()
                except OSError:
                    break
        return False

    def _staging(self) -> Path:
        if self._stage is None:
            try:
                self._stage = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=self.out_dir))
            except OSError as exc:
                raise FacefitError(f"cannot write the report to {self.out_dir}: {os_error_reason(exc, self.out_dir)}") from None
        return self._stage

    def discard(self) -> None:
        """Remove the staging folder and everything written into it (no-op after :meth:`write`)."""
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append("#" * level + " " + text)

    def text(self, md: str) -> None:
        self.parts.append(md.strip())

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None,
              note: Optional[str] = None, digits: int = 3) -> None:
        if title:
            self.heading(title, 3)
        self.parts.append(md_table(headers, rows, digits))
        if note:
            self.parts.append(note.strip())

    def figure(self, path: Optional[Path], caption: str) -> None:
        """Embed a figure (a path from :meth:`path`, or one inside ``out_dir``; None is skipped)."""
        if path is None:
            return
        path = Path(path)
        base = self._stage if self._stage is not None and path.parent == self._stage else self.out_dir
        rel = os.path.relpath(path, base)
        self.parts.append(f"![{caption}]({Path(rel).as_posix()})\n\n*{caption}*")

    def path(self, name: str) -> Path:
        """Where to write the report file ``name`` (a plain file name); it appears in
        ``out_dir`` when :meth:`write` succeeds."""
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"report files are plain file names, not {name!r}")
        if name not in self._names:
            self._names.append(name)
        return self._staging() / name

    def write(self, results: Mapping[str, Any]) -> tuple[Path, Path]:
        """Write ``report.md`` and ``results.json`` and move every staged file into
        ``out_dir``; returns the final paths of ``report.md`` and ``results.json``.

        Raises:
            FacefitError: a file could not be written or moved (disk full, ...); then
                nothing of this report is left in ``out_dir`` and earlier files there are
                untouched.
        """
        md = f"# {self.title}\n\n" + "\n\n".join(self.parts) + "\n"
        try:
            with atomic_write(self.path(REPORT_NAME), "w") as f:
                f.write(md)
            write_json(results, self.path(RESULTS_NAME))
            self._commit()
        finally:
            self.discard()
        return self.out_dir / REPORT_NAME, self.out_dir / RESULTS_NAME

    def _commit(self) -> None:
        """Move the staged files into ``out_dir``: figures first, ``results.json``, then
        ``report.md``. A failure midway removes the files already moved by this call."""
        stage = self._staging()
        order = [n for n in self._names if n not in (RESULTS_NAME, REPORT_NAME)] + [RESULTS_NAME, REPORT_NAME]
        missing = [n for n in order if not (stage / n).is_file()]
        if missing:  # a figure function returned without writing its file
            raise FacefitError(f"cannot write {self.out_dir / missing[0]}: the file was not produced")
        moved: list[Path] = []
        try:
            for n in order:
                os.replace(stage / n, self.out_dir / n)
                moved.append(self.out_dir / n)
        except OSError as exc:
            for m in moved:
                with contextlib.suppress(OSError):
                    m.unlink()
            raise FacefitError(describe_os_error(self.out_dir / n, exc)) from exc


# ---------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _plt()
    path = Path(path)
    try:
        with atomic_write(path, "wb", mkdir=True) as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_histograms(
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    bins: int = 40,
    xlim: Optional[tuple[float, float]] = None,
    colors: Optional[Mapping[str, str]] = None,
) -> Path:
    """Overlaid normalised histograms (one per named series) with their means marked.

    Args:
        series: name -> 1-D values (empty series are skipped).
        path: PNG to write.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    vals = [np.asarray(v, np.float64) for v in series.values() if len(v)]
    if vals:
        allv = np.concatenate(vals)
        lo, hi = xlim if xlim else (float(np.nanmin(allv)), float(np.nanmax(allv)))
        if hi <= lo:
            hi = lo + 1e-3
        edges = np.linspace(lo, hi, bins + 1)
        for k, (name, v) in enumerate(series.items()):
            v = np.asarray(v, np.float64)
            if not len(v):
                continue
            c = (colors or {}).get(name, f"C{k}")
            ax.hist(v, bins=edges, density=True, alpha=0.45, color=c, label=f"{name} (mean {np.mean(v):.3f}, n={len(v)})")
            ax.axvline(float(np.mean(v)), color=c, lw=1.5, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    if xlim:
        ax.set_xlim(*xlim)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_boxes(series: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "", ylabel: str = "") -> Path:
    """Box plots with the individual values jittered on top (one box per named series)."""
    plt = _plt()
    names = list(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(names) + 2), 4.2))
    data = [np.asarray([x for x in series[n] if x is not None and math.isfinite(x)], np.float64) for n in names]
    ax.boxplot([d if len(d) else [np.nan] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=9, alpha=0.6, color=f"C{i}", zorder=3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_scatter(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Scatter plot of named (x, y) series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, (name, (x, y)) in enumerate(series.items()):
        ax.scatter(np.asarray(x, np.float64), np.asarray(y, np.float64), s=14, alpha=0.7, color=f"C{k}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    errors: Optional[Mapping[str, Sequence[float]]] = None,
    title: str = "",
    ylabel: str = "",
    hlines: Optional[Mapping[str, float]] = None,
    hline_colors: Optional[Sequence[str]] = None,
) -> Path:
    """Grouped bar chart: one group per entry of ``groups``, one bar per named series.

    Args:
        groups: group labels (G); series: name -> G values; errors: name -> G error bars.
        hlines: name -> y of a dashed reference line (e.g. chance).
        hline_colors: colours of the lines (default: those after the series').
    """
    plt = _plt()
    names = list(series)
    G = len(groups)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * G * max(1, len(names)) * 0.6 + 2.5), 4.2))
    x = np.arange(G)
    for k, n in enumerate(names):
        v = np.asarray(series[n], np.float64)
        e = None if errors is None or n not in errors else np.asarray(errors[n], np.float64)
        ax.bar(x + (k - (len(names) - 1) / 2) * width, v, width, yerr=e, capsize=3, label=n, color=f"C{k}")
    for j, (n, y) in enumerate((hlines or {}).items()):
        c = hline_colors[j] if hline_colors and j < len(hline_colors) else f"C{len(names) + j}"
        ax.axhline(y, ls="--", color=c, lw=1.2, label=n)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def image_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    col_titles: Optional[Sequence[str]] = None,
    row_titles: Optional[Sequence[str]] = None,
    size: float = 1.6,
) -> Path:
    """A grid of images (rows x columns) with optional titles.

    Args:
        rows: each a list of (H, W, 3) uint8 or float [0, 1] images.
    """
    plt = _plt()
    R = len(rows)
    C = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(R, C, figsize=(size * C, size * R + 0.3), squeeze=False)
    for i in range(R):
        for j in range(C):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(rows[i]) and rows[i][j] is not None:
                ax.imshow(rows[i][j])
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0 and row_titles and i < len(row_titles):
                ax.text(-0.05, 0.5, row_titles[i], transform=ax.transAxes, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.12)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------
# terminal


def print_summary(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], console=None,
                  footer: Optional[str] = None, digits: int = 3) -> None:
    """Print a rich table (to stderr by default, so that stdout keeps only file paths)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console(stderr=True)
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(str(h), justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(fmt(x, digits) for x in r))
    con.print(t)
    if footer:
        con.print(footer, highlight=False, soft_wrap=True)
