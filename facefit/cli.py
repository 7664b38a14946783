"""facefit's command line: a thin Typer layer over the Python API.

Every command turns :class:`facefit.errors.FacefitError` into one line on stderr and a
non-zero exit code; heavy modules are imported inside the commands so that ``--help``
stays fast.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import FacefitError

app = typer.Typer(
    name="facefit",
    help="Turn face photos into neutral 3D faces (mesh + colour).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Import, inspect and fetch morphable face models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _add_eval_app():
    from .cli_eval import eval_app

    app.add_typer(eval_app, name="eval", help="The paper's benchmarks: MICC geometry, synthetic ground truth, likeness.")


_add_eval_app()


def _version(value: bool):
    if value:
        typer.echo(f"facefit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
):
    """facefit: neutral 3D faces from photos (Genova et al., CVPR 2018)."""


def _console():
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------- model


@model_app.command("import")
def model_import(
    kind: str = typer.Argument(..., help="Source format: ict, bfm2017, bfm2009 or flame."),
    path: Path = typer.Argument(..., readable=False, help="The model file, ZIP or folder as downloaded."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", readable=False, help="Where to write the facefit .npz (default: the model store)."),
    region: str = typer.Option("face", help="ICT-FaceKit only: 'face' (face area) or 'head' (full head)."),
    name: Optional[str] = typer.Option(None, help="Name to store the model under."),
    default: bool = typer.Option(False, "--default", help="Make it the default model."),
):
    """Convert a morphable model to facefit's native .npz format."""
    from . import model_io

    saved = model_io.import_model(kind, path, region=region, out=out, name=name, make_default=default)
    typer.echo(str(saved))


@model_app.command("info")
def model_info(model: Optional[str] = typer.Argument(None, help="Model name or path (default: the default model).")):
    """Show components, units, vertex/triangle counts, hash and what a model lacks."""
    from . import model_io

    info = model_io.model_info(model_io.resolve_model(model))
    width = max(len(k) for k in info)
    for k, v in info.items():
        typer.echo(f"{k:<{width}}  {v}")


@model_app.command("list")
def model_list():
    """List the models in the model store."""
    from . import model_io

    rows = model_io.list_models()
    if not rows:
        typer.echo(f"no models in {model_io.default_model_dir()} (run 'facefit model import' or 'facefit model fetch ict')")
        return
    for row in rows:
        typer.echo("\t".join(str(x) for x in row.values()))


@model_app.command("fetch")
def model_fetch(
    which: str = typer.Argument("ict", help="Which public model to download: ict."),
    region: str = typer.Option("face", help="'face' or 'head'."),
):
    """Download a public morphable model (ICT-FaceKit, pinned commit, checksum verified) and import it."""
    from . import model_io

    if which != "ict":
        raise FacefitError(f"unknown model '{which}': only 'ict' can be fetched; BFM and FLAME need a registration download, then 'facefit model import'")
    typer.echo(str(model_io.fetch_ict(region=region)))


@model_app.command("build-albedo")
def model_build_albedo(
    photos: Path = typer.Option(..., "--photos", readable=False, help="Folder of face photos (searched recursively), one main face each."),
    out: Path = typer.Option(..., "-o", "--out", readable=False, help="Where to write the result (.npz): a complete facefit model (the shape model + the new colour model) for --model, or with --albedo-only just the colour model."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model (default: the default model)."),
    components: int = typer.Option(30, "--components", min=1, help="Colour components to keep (at most)."),
    variance: Optional[float] = typer.Option(None, "--variance", help="Keep the fewest components explaining this share (e.g. 0.9)."),
    max_photos: Optional[int] = typer.Option(None, "--max-photos", min=2, help="Use an evenly spread subset of this many photos."),
    albedo_only: bool = typer.Option(False, "--albedo-only", help="Write only the small colour-model file (the kind facefit ships in models/albedo/; loading it attaches it to the default shape model)."),
    fill_rings: int = typer.Option(1, "--fill-rings", min=-1, max=20, help="Vertices no photo saw, plus this many rings of neighbours, get the smooth continuation of the rest instead of black (-1: no filling)."),
):
    """Learn a statistical albedo (colour) model from ordinary photos for a shape model.

    Writes OUT (see --out) and OUT-report.png (mean albedo, components at +-2 sd, explained
    variance). 'facefit model info OUT' shows the provenance.
    """
    from . import model_io
    from .albedo_build import build_albedo

    m = model_io.resolve_model(model)
    if not photos.is_dir():
        raise FacefitError(f"{photos}: not a folder")
    if out.suffix.lower() != ".npz":
        raise FacefitError(f"{out}: the output must be a .npz file")
    built = build_albedo(photos, m, out, n_components=components, variance=variance, max_photos=max_photos,
                         progress=sys.stderr.isatty(), albedo_only=albedo_only, fill_rings=fill_rings,
                         log=None if sys.stderr.isatty() else (lambda msg: typer.echo(msg, err=True)))
    prov = built.meta.get("albedo", {})
    kind = "colour model" if albedo_only else f"model '{built.name}' (hash {built.content_hash})"
    typer.echo(f"{out}: {kind}, {built.n_color} colour components from {prov.get('used', '?')} of "
               f"{prov.get('photos', '?')} photos, {float(prov.get('explained_variance_total', float('nan'))):.1%} of the variance, "
               f"{prov.get('filled_vertices', 0)} never-seen or grazing vertices filled")


# --------------------------------------------------------------------------- render


@app.command("render")
def render_cmd(
    source: Optional[Path] = typer.Argument(None, readable=False, help="A mesh (.obj/.ply/.glb) or coefficients (.npz/.json) to render."),
    out: Path = typer.Option(..., "-o", "--out", readable=False, help="Output image (.png) or, with --turntable, a path prefix or a .gif/.mp4."),
    random: bool = typer.Option(False, "--random", help="Render a random face from the default model instead of SOURCE."),
    turntable: bool = typer.Option(False, "--turntable", help="Write an animated GIF, an MP4 and a PNG contact sheet."),
    frames: int = typer.Option(36, min=2, max=720, help="Frames in the turntable."),
    size: int = typer.Option(512, min=32, max=4096, help="Image size in pixels."),
    lighting: str = typer.Option("studio", help="'studio' (fixed) or 'random' (random point lights and colour temperature)."),
    yaw: float = typer.Option(0.0, help="Yaw in degrees for a still."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model for --random or coefficient files."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Render a face as a still or a turntable."""
    from . import turntable as tt

    if random == (source is not None):
        raise FacefitError("give either a mesh/coefficient file or --random")
    mesh = tt.random_face_mesh(model, seed=seed) if random else tt.load_renderable(source, model)
    if turntable:
        written = tt.write_turntable(mesh, out, frames=frames, size=size, lighting=lighting, seed=seed)
    else:
        written = [tt.write_still(mesh, out, size=size, yaw=yaw, lighting=lighting, seed=seed)]
    for p in written:
        typer.echo(str(p))


# --------------------------------------------------------------------------- reconstruct


@app.command("reconstruct")
def reconstruct_cmd(
    inputs: List[Path] = typer.Argument(..., readable=False, help="Photos, folders (searched recursively) or videos."),
    out: Path = typer.Option(..., "-o", "--out", readable=False, help="A mesh file (.obj/.ply/.glb) for one input, else an output folder."),
    fmt: str = typer.Option("obj", "--format", help="Mesh format in folder mode: obj, ply or glb."),
    save_coeffs: Optional[str] = typer.Option(None, "--save-coeffs", help="Also write coefficients: npz or json."),
    render: bool = typer.Option(False, "--render", help="Also write a turntable (GIF, MP4, contact sheet) per face."),
    render_size: int = typer.Option(256, min=32, max=2048, help="Turntable image size."),
    fuse: bool = typer.Option(False, "--fuse", help="All inputs show one person: average encoder features, write ONE face "
                              "(inputs without a face are left out and reported)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Reconstruct every face in a photo, not only the main one."),
    texture: str = typer.Option("model", "--texture", help="'model' (predicted colour) or 'photo' (project the photo onto the "
                                "mesh; with --fuse, the photo whose face was detected most confidently)."),
    units: Optional[str] = typer.Option(None, "--units", help="Units of the mesh files: mm, cm or m (default: mm for "
                                        "OBJ and PLY, m for GLB as glTF viewers expect)."),
    refine: int = typer.Option(0, "--refine", min=0, max=1000, help="Beyond the paper: after the regressor, spend this many "
                               "steps per face moving the coefficients so that renders match the photo's identity "
                               "(about 0.1-0.2 s per step on a CPU; 40 is a good value; 0 = off). Only the colour "
                               "moves: the shape stays the regressor's (see --refine-shape)."),
    refine_shape: bool = typer.Option(False, "--refine-shape", help="With --refine: also move the shape (a little more "
                                      "likeness to the recognition network, slightly worse geometry; docs/evaluation.md)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose requested outputs all exist (continue "
                                       "an interrupted run, or add --save-coeffs/--render outputs to an earlier one)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", readable=False, help="Regressor checkpoint (default: the shipped one)."),
    model: Optional[str] = typer.Option(None, "--model", help="Morphable model name or path (default: the checkpoint's)."),
    detector: str = typer.Option("dlib", "--detector", help="Face detector: dlib, mtcnn or yunet."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=1024, help="Faces per encoder batch; outputs are written after each."),
    head: bool = typer.Option(False, "--head", help="Write the complete ICT-FaceKit head (face, scalp, ears, neck, eyes, "
                              "teeth, gums; no holes) with the skin tone continued over it, not only the face area."),
    blendshapes: bool = typer.Option(False, "--blendshapes", help="An animatable GLB: the model's expressions as morph "
                                     "targets on the person's own head, named after ARKit (needs .glb output; "
                                     "docs/avatar.md)."),
    pose: bool = typer.Option(False, "--pose", help="Also fit each photo's head pose, camera and expression: writes NAME_posed.<fmt> "
                              "(the face with the photo's expression in the photo's camera) and NAME_overlay.png; with --fuse "
                              "on a video, a per-frame track NAME_track.csv and an animated NAME_track.glb (docs/pose.md)."),
    track_every: int = typer.Option(1, "--track-every", min=1, max=1000, help="With --fuse --pose on a video: track every Nth frame."),
    track_smooth: Optional[float] = typer.Option(None, "--track-smooth", min=0.0, max=10.0, help="With --fuse --pose: temporal "
                                                 "smoothing of the track, Gaussian sigma in seconds (default 0.04; 0 = off)."),
):
    """Reconstruct neutral 3D faces from photos, folders or videos.

    With an output FOLDER, outputs are named after the inputs (sub-folders kept); inputs
    that would share a name (p00.png and p00.jpg) get their extension appended
    (p00_png.obj, p00_jpg.obj). Bad inputs are reported and the run goes on.
    OUT/manifest.jsonl describes the last run: one JSON line per input (per frame for
    videos) with its status (ok, skipped: outputs already there, error) and its outputs
    or error. During a run the lines go to OUT/manifest.jsonl.partial as inputs finish
    (nothing is lost if the run is killed); it replaces manifest.jsonl at the end.

    An output FILE (.obj/.ply/.glb) takes exactly one face: one photo, or --fuse.
    """
    from .cli_eval import check_refine_shape

    check_refine_shape(refine, refine_shape)
    if not fuse and detector in ("dlib", "mtcnn", "yunet"):  # detection workers start before torch loads
        from .batch import prestart
        from .batch.lite import lite_reason

        plain = lite_reason(refine=refine, render=render, texture=texture, head=head,
                            blendshapes=blendshapes, pose=pose, device=device) is None
        prestart(inputs, detector, preload=plain)
    from rich.console import Console
    from rich.table import Table

    from .batch.job import run_batch

    if texture not in ("model", "photo"):
        raise FacefitError(f"--texture must be 'model' or 'photo', not '{texture}'")
    if detector not in ("dlib", "mtcnn", "yunet"):
        raise FacefitError(f"--detector must be dlib, mtcnn or yunet, not '{detector}'")
    s = run_batch(inputs, out, checkpoint=checkpoint, model=model, fmt=fmt, save_coeffs=save_coeffs,
                  render=render, render_size=render_size, fuse=fuse, all_faces=all_faces,
                  texture=None if texture == "model" else texture, units=units, skip_existing=skip_existing,
                  detector=detector, device=device, progress=sys.stderr.isatty(), batch_size=batch_size,
                  refine=refine, head=head, blendshapes=blendshapes, pose=pose, track_every=track_every,
                  track_smooth=track_smooth, refine_shape=refine_shape)
    con = Console(stderr=True)
    if s.manifest is not None or s.failed or s.skipped:
        t = Table(title="facefit reconstruct")
        for c in ("inputs done", "faces", "skipped", "failed", "seconds", "images/s"):
            t.add_column(c, justify="right")
        t.add_row(str(s.processed), str(s.faces), str(s.skipped), str(s.failed), f"{s.seconds:.1f}",
                  f"{s.images_per_second:.2f}")
        con.print(t)
        shown = s.errors if s.manifest is None else s.errors[:10]
        for label, err in shown:
            line = err if label in err else f"{label}: {err}"  # most messages name their file already
            con.print(f"[yellow]{'left out' if fuse else 'failed'}[/yellow] {line}", highlight=False, soft_wrap=True)
        if len(shown) < len(s.errors):
            con.print(f"... and {len(s.errors) - len(shown)} more (see the manifest)", highlight=False)
        if s.manifest is not None:
            con.print(f"manifest: {s.manifest}", highlight=False)
    if s.fused:
        f = s.fused
        con.print(f"fused {f['n_fused']} faces: each image's own shape is {f['consistency_mm_mean']:.2f} mm from the "
                  f"fused face on average (least consistent image: {f['consistency_mm_max']:.2f} mm)"
                  + (f"; texture from {f['texture_from']}" if f.get("texture_from") else ""), highlight=False,
                  soft_wrap=True)
    for line in s.pose_errors[:10]:
        con.print(f"[yellow]no pose[/yellow] {line}", highlight=False, soft_wrap=True)
    if s.fused and s.fused.get("track"):
        tr = s.fused["track"]
        con.print(f"tracked {tr['frames_tracked']} of {tr['frames']} frames: {tr['ms_per_frame']:.1f} ms per frame "
                  f"(landmarks {tr['ms_landmarks_per_frame']:.1f}, fit {tr['ms_fit_per_frame']:.1f}); "
                  f"{tr['redetections']} detection(s), {tr['ms_per_detection']:.0f} ms each", highlight=False, soft_wrap=True)
    if s.manifest is None:  # one face: list its files; a folder job has the manifest
        for p in s.outputs:
            typer.echo(str(p))
    else:
        typer.echo(str(s.manifest))
    if s.processed == 0 and s.skipped == 0:
        raise FacefitError("no face was reconstructed")


# --------------------------------------------------------------------------- train


@app.command("train", context_settings={"help_option_names": ["--help", "-h"]})
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", readable=False, help="TOML config (see configs/train_default.toml)."),
    data: Optional[Path] = typer.Option(None, "--data", readable=False, help="Folder tree of real photos for stage 2."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", readable=False, help="Run directory (checkpoints, logs, plots)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="'1' (synthetic), '2' (mixed) or 'both'."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop at this global step."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Stop after this many seconds."),
    no_batch_loss: bool = typer.Option(False, "--no-batch-loss", help="Ablation: switch off L_batch."),
    no_loopback: bool = typer.Option(False, "--no-loopback", help="Ablation: switch off L_loop."),
    views: Optional[int] = typer.Option(None, "--views", help="Renders per photo for L_id (paper: 3; ablation: 1)."),
    encoder: Optional[str] = typer.Option(None, "--identity-net", help="Encoder: dlib (default) or facenet."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    setting: List[str] = typer.Option([], "--set", help="Any config setting, KEY=VALUE (repeatable)."),
    plot: Optional[Path] = typer.Option(None, "--plot", readable=False, help="Only plot the loss curves of this run directory and exit."),
    export: Optional[Path] = typer.Option(None, "--export", readable=False, help="After training, also write the small shipping checkpoint here."),
):
    """Train the regressor with the paper's two-stage unsupervised method."""
    from . import training

    if plot is not None:
        p = training.plot_log(plot)
        if p is None:
            raise FacefitError(f"{plot}: no log.jsonl with losses to plot")
        typer.echo(str(p))
        return
    overrides = {"data": data, "out": out, "stage": stage, "max_steps": max_steps, "max_time": max_time,
                 "views": views, "encoder": encoder, "device": device, "seed": seed}
    if resume:
        overrides["resume"] = True
    if no_batch_loss:
        overrides["batch_loss"] = False
    if no_loopback:
        overrides["loopback"] = False
    for kv in setting:
        if "=" not in kv:
            raise FacefitError(f"--set needs KEY=VALUE, got '{kv}'")
        k, v = kv.split("=", 1)
        overrides[k.strip()] = v.strip()
    cfg = training.load_config(config, {k: v for k, v in overrides.items() if v is not None})
    summary = training.train(cfg, progress=True)  # a bar on a terminal, plain lines in logs
    typer.echo(f"run: {summary.get('run_dir')}  step {summary.get('step')}/{summary.get('total_steps')}  "
               f"stopped: {summary.get('stopped')}")
    if summary.get("exported"):
        typer.echo(f"regressor: {summary['exported']}")
    if export is not None:
        typer.echo(str(training.export_checkpoint(summary["run_dir"], export)))


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: run the app, turning user errors into one line."""
    try:
        app(args=argv, standalone_mode=False)
    except FacefitError as e:
        _console().print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        _console().print("interrupted")
        return 130
    except SystemExit as e:  # typer.Exit inside standalone_mode=False
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - never show a traceback to users
        name = type(e).__name__
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click/typer usage errors
            e.show()  # type: ignore[attr-defined]
            return int(getattr(e, "exit_code", 2))
        if name == "Abort":
            return 1
        if os.environ.get("FACEFIT_DEBUG"):
            raise
        _console().print(f"[red]error:[/red] {name}: {e} (set FACEFIT_DEBUG=1 for details)", highlight=False, soft_wrap=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
