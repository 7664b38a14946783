"""``facefit eval ...``: the paper's benchmarks as commands (a Typer sub-app).

Each command writes ``report.md`` (tables and figures), ``results.json`` (every number) and
PNG plots into ``--out``, prints their paths on stdout and a summary table on stderr. User
errors raise :class:`facefit.errors.FacefitError` (the main CLI prints them as one line).
Heavy modules are imported inside the commands so that ``--help`` stays fast.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer

from .errors import FacefitError

eval_app = typer.Typer(
    help="Benchmarks of the paper: geometric error against ground truth (MICC, synthetic) and likeness on photos.",
    no_args_is_help=True,
)

DETECTORS = ("dlib", "mtcnn", "yunet")


def _check_detector(detector: str) -> None:
    if detector not in DETECTORS:
        raise FacefitError(f"--detector must be dlib, mtcnn or yunet, not '{detector}'")


@contextlib.contextmanager
def _progress(enabled: Optional[bool] = None) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (only on a terminal), as a ``(stage, done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    enabled = sys.stderr.isatty() if enabled is None else enabled
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not enabled, transient=True)
    tasks: dict = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


def check_refine_shape(refine: int, refine_shape: bool) -> None:
    """``--refine-shape`` only means something with ``--refine N``."""
    if refine_shape and not refine:
        raise FacefitError("--refine-shape needs --refine N (the number of refinement steps)")


def _check_out(out: Path) -> None:
    """Refuse an unusable ``--out`` before the (long) computation."""
    from .evaluation.report import check_output_dir

    check_output_dir(out)


def _reconstructor(checkpoint: Optional[Path], model: Optional[str], device: Optional[str], detector: str):
    from .reconstruction import Reconstructor

    return Reconstructor(checkpoint, model, device, detector)


def _echo_outputs(out: Path, paths) -> None:
    """Print the report's files: report.md, results.json and the figures report.md shows
    (not other PNGs an earlier run left in the folder)."""
    import re

    figures = []
    for p in paths:
        if Path(p).suffix == ".md":
            text = Path(p).read_text(encoding="utf-8", errors="replace")
            figures += [out / m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text)]
    for p in list(paths) + list(dict.fromkeys(figures)):
        typer.echo(str(p))


# --------------------------------------------------------------------------- micc


@eval_app.command("micc")
def micc_cmd(
    data_dir: Path = typer.Argument(..., readable=False, help="MICC Florence folder (subject_XX/Model/..., subject_XX/Video/...) or the simple layout of docs/evaluation.md."),
    out: Path = typer.Option(Path("facefit-eval-micc"), "-o", "--out", readable=False, help="Output folder for the report."),
    conditions: str = typer.Option("cooperative,indoor,outdoor", help="Comma-separated videos to use: cooperative, indoor, outdoor."),
    frame_step: int = typer.Option(1, min=1, help="Use every n-th frame (1 = all frames, the paper's protocol)."),
    max_frames: int = typer.Option(0, min=0, help="At most this many frames per video (0 = no limit)."),
    radius: float = typer.Option(95.0, min=1.0, help="Crop radius of the scan around its nose tip, mm."),
    scan_units: str = typer.Option("auto", help="Units of the scans: auto (guessed from their size), mm, cm or m."),
    subject: Optional[List[str]] = typer.Option(None, "--subject", help="Only this subject folder (repeatable)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", readable=False, help="Regressor checkpoint (default: the shipped one)."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model name or path (default: the checkpoint's)."),
    detector: str = typer.Option("dlib", "--detector", help="Face detector: dlib, mtcnn or yunet."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
):
    """Geometric error on MICC Florence (Table 1): features averaged over each video, ICP with scale, point-to-plane mm."""
    from .evaluation.micc import (
        CONDITIONS,
        MiccEvalConfig,
        evaluate_micc,
        find_subjects,
        print_micc_summary,
        write_micc_report,
    )

    _check_detector(detector)
    _check_out(out)
    conds = tuple(c.strip().lower() for c in conditions.split(",") if c.strip())
    if not conds:
        raise FacefitError("--conditions is empty")
    bad = [c for c in conds if c not in CONDITIONS]
    if bad:
        raise FacefitError(f"unknown condition '{bad[0]}' (use {', '.join(CONDITIONS)})")
    if scan_units not in ("auto", "mm", "cm", "m"):
        raise FacefitError(f"--scan-units must be auto, mm, cm or m, not '{scan_units}'")
    cfg = MiccEvalConfig(conditions=conds, frame_step=frame_step, max_frames=max_frames, radius=radius,
                         scan_units=scan_units, subjects=tuple(subject) if subject else None, detector=detector)
    find_subjects(data_dir, cfg.subjects)  # layout problems before the (slow) model loading
    rec = _reconstructor(checkpoint, model, device, detector)
    with _progress() as prog:
        res = evaluate_micc(rec, data_dir, cfg, prog)
    paths = write_micc_report(res, out)
    print_micc_summary(res)
    _echo_outputs(out, paths)


# --------------------------------------------------------------------------- synthetic


@eval_app.command("synthetic")
def synthetic_cmd(
    out: Path = typer.Option(Path("facefit-eval-synthetic"), "-o", "--out", readable=False, help="Output folder for the report."),
    n: int = typer.Option(50, "--n", min=1, help="Number of synthetic faces."),
    seed: int = typer.Option(0, help="Random seed (same seed, same faces)."),
    expression: bool = typer.Option(False, "--expression/--no-expression", help="Render the faces with random expressions (the ground truth stays neutral)."),
    size: int = typer.Option(256, min=96, max=1024, help="Render size in pixels."),
    radius: float = typer.Option(95.0, min=1.0, help="Crop radius of the ground truth around its nose tip, mm."),
    fit_steps: int = typer.Option(200, min=0, help="Optimisation steps of the landmark-fit baseline (0 = skip it)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", readable=False, help="Regressor checkpoint (default: the shipped one)."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model name or path (default: the checkpoint's)."),
    detector: str = typer.Option("dlib", "--detector", help="Face detector: dlib, mtcnn or yunet."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    appearance: str = typer.Option("model", "--appearance", help="'model' (colour model + lighting as in training), "
                                   "'unseen' (flat skin tones, one close light, other light colours: never used in "
                                   "training) or 'both' (two reports, OUT/model and OUT/unseen; same faces and poses)."),
    refine: int = typer.Option(0, "--refine", min=0, max=1000, help="Also score facefit + this many identity-refinement "
                               "steps (reconstruct --refine) as an extra method row."),
    refine_shape: bool = typer.Option(False, "--refine-shape", help="With --refine: the refinement also moves the shape "
                                      "(reconstruct --refine-shape)."),
):
    """Geometric error on rendered model samples with exact ground truth, with mean-face and landmark-fit baselines."""
    from .evaluation.synthetic import (
        SyntheticEvalConfig,
        evaluate_synthetic,
        print_synthetic_summary,
        write_synthetic_report,
    )

    from .evaluation.appearance import APPEARANCES

    _check_detector(detector)
    if appearance not in APPEARANCES + ("both",):
        raise FacefitError(f"--appearance must be one of {', '.join(APPEARANCES + ('both',))}, got '{appearance}'")
    _check_out(out)
    check_refine_shape(refine, refine_shape)
    runs = list(APPEARANCES) if appearance == "both" else [appearance]
    rec = _reconstructor(checkpoint, model, device, detector)
    for app in runs:
        cfg = SyntheticEvalConfig(n=n, seed=seed, expression=expression, image_size=size, radius=radius,
                                  fit_steps=fit_steps, detector=detector, appearance=app, refine=refine,
                                  refine_shape=refine_shape)
        dest = out / app if len(runs) > 1 else out
        if len(runs) > 1:
            _check_out(dest)
        with _progress() as prog:
            res = evaluate_synthetic(rec, cfg, prog)
        paths = write_synthetic_report(res, dest, model=rec.model)
        print_synthetic_summary(res)
        _echo_outputs(dest, paths)


# --------------------------------------------------------------------------- identity


def parse_checkpoints(specs: Optional[List[str]], ablation: bool) -> dict:
    """``--checkpoint`` values (``NAME=PATH``, ``PATH`` or, with ``--ablation``, a folder of
    ``*.pt``) -> {name: path}, in the order given.

    Raises:
        FacefitError: missing files, duplicate names, several checkpoints without
            ``--ablation``, or ``--ablation`` with fewer than two.
    """
    from .reconstruction import default_checkpoint

    if not specs:
        if ablation:
            raise FacefitError("--ablation needs checkpoints: --checkpoint NAME=PATH several times, or a folder")
        p = default_checkpoint()
        return {p.stem: str(p)}
    out: dict = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        p = Path(path).expanduser()
        if p.is_dir():
            if not ablation:
                raise FacefitError(f"--checkpoint {p} is a folder: add --ablation to compare the checkpoints in it")
            found = sorted(p.glob("*.pt"))
            if not found:
                raise FacefitError(f"{p}: no .pt checkpoints in this folder")
            items = [(f.stem if not name else f"{name}/{f.stem}", f) for f in found]
        elif p.is_file():
            items = [(name or p.stem, p)]
        else:
            raise FacefitError(f"checkpoint not found: {p}")
        for nm, f in items:
            if nm in out:
                raise FacefitError(f"two checkpoints are named '{nm}': name them with --checkpoint NAME=PATH")
            out[nm] = str(f)
    if len(out) > 1 and not ablation:
        raise FacefitError(f"{len(out)} checkpoints given: add --ablation to compare them side by side")
    if ablation and len(out) < 2:
        raise FacefitError("--ablation compares two or more checkpoints (--checkpoint NAME=PATH several times, or a folder)")
    return out


@eval_app.command("identity")
def identity_cmd(
    photo_dir: Path = typer.Argument(..., readable=False, help="Folder of <person>/<photo> images (or with labels.csv), e.g. ../shared/data/faces-dev."),
    out: Path = typer.Option(Path("facefit-eval-identity"), "-o", "--out", readable=False, help="Output folder for the report."),
    checkpoint: Optional[List[str]] = typer.Option(None, "--checkpoint", help="Checkpoint PATH or NAME=PATH (repeat with --ablation; a folder of .pt files also works with --ablation). Default: the shipped one."),
    ablation: bool = typer.Option(False, "--ablation", help="Compare several checkpoints side by side (e.g. without batch loss, without loopback, single view)."),
    eval_net: str = typer.Option("sface", "--eval-net", help="Held-out recognition network for the evaluation (never the training network)."),
    per_person: Optional[int] = typer.Option(None, min=1, help="Use at most this many photos per person."),
    people: Optional[int] = typer.Option(None, min=2, help="Use at most this many people."),
    render_size: int = typer.Option(224, min=64, max=1024, help="Size of the frontal renders."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model name or path (default: the checkpoint's)."),
    detector: str = typer.Option("dlib", "--detector", help="Face detector: dlib, mtcnn or yunet."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    refine: int = typer.Option(0, "--refine", min=0, max=1000, help="Also report each checkpoint after this many steps of per-photo identity refinement (reconstruct --refine)."),
    refine_shape: bool = typer.Option(False, "--refine-shape", help="With --refine: the refinement also moves the shape (reconstruct --refine-shape)."),
):
    """Likeness on labelled photos (Tables 2-3, Figure 5): similarity distributions, EMD, identity recall."""
    from .evaluation.identity import (
        IdentityEvalConfig,
        evaluate_identity,
        print_identity_summary,
        write_identity_report,
    )
    from .recognition import available_nets

    _check_detector(detector)
    _check_out(out)
    check_refine_shape(refine, refine_shape)
    if eval_net not in available_nets():
        raise FacefitError(f"unknown --eval-net '{eval_net}' (known: {', '.join(available_nets())})")
    cks = parse_checkpoints(checkpoint, ablation)
    cfg = IdentityEvalConfig(eval_net=eval_net, detector=detector, per_person=per_person, people=people,
                             render_size=render_size, refine=refine, refine_shape=refine_shape)
    with _progress() as prog:
        res = evaluate_identity(photo_dir, cks, cfg, model=model, device=device, progress=prog)
    paths = write_identity_report(res, out)
    print_identity_summary(res)
    _echo_outputs(out, paths)
