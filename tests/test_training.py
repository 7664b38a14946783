"""Two-stage training: configuration, gradients of every loss path, short runs, resume,
signals, checkpoints, per-model loss weights, progress lines. Uses the real dlib encoder
and the default (ICT-FaceKit) model with small renders and batches. faces-dev must be in
../shared (a missing folder fails, it is not skipped)."""
import dataclasses
import io
import json
import math
import signal
import tomllib
from pathlib import Path

import pytest
import torch

from facefit import losses as L
from facefit import training as T
from facefit.errors import FacefitError
from facefit.regressor import Regressor, load_checkpoint
from facefit.synthetic import synthetic_batch
from facefit.training import (
    TrainConfig,
    Trainer,
    export_checkpoint,
    load_config,
    override,
    plot_log,
    read_log,
    resolve_loss_weights,
    train,
)

from conftest import DEV as FACES_DEV
from conftest import REPO

BFM_SOURCE = "Basel Face Model 2017/2019 (Statismo HDF5)"  # what facefit.loaders.bfm records

PEOPLE = ("Barack_Obama", "Bill_Gates", "Colin_Powell")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these small steps gain nothing from more, and a shared machine
    makes multi-threaded steps far slower (threads waiting for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """A small photo folder (symlinks to 6 faces-dev photos of 3 people) + its cache dir."""
    assert FACES_DEV.is_dir(), f"faces-dev not in ../shared ({FACES_DEV})"
    root = tmp_path_factory.mktemp("photos")
    data = root / "data"
    for person in PEOPLE:
        (data / person).mkdir(parents=True)
        for f in sorted((FACES_DEV / person).iterdir())[:2]:
            (data / person / f.name).symlink_to(f)
    return data, root / "cache"


def small_config(tmp_path, photo_dir=None, **kw):
    base = dict(
        out=str(tmp_path / "run"),
        stage="1",
        stage1_steps=4,
        stage2_steps=0,
        batch_stage1=3,
        batch_synthetic=2,
        batch_real=3,
        views=2,
        render_size=64,
        hidden=[32],
        checkpoint_every=0,
        sample_every=0,
        n_samples=2,
        device="cpu",
        seed=3,
    )
    if photo_dir is not None:
        base.update(data=str(photo_dir[0]), cache_dir=str(photo_dir[1]), cache_workers=1)
    base.update(kw)
    return load_config(None, base)


# ------------------------------------------------------------------ configuration


def test_config_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[schedule]\nstage = "1"\nstage1_steps = 12\n[losses]\nw_id = 2.5\nbatch_loss = false\n'
                 'yaw_range = [-10, 10]\n')
    cfg = load_config(p, {"lr": "1e-4", "hidden": "64,32", "max_time": "90", "loopback": "no"})
    assert cfg.stage == "1" and cfg.stage1_steps == 12 and cfg.w_id == 2.5 and cfg.batch_loss is False
    assert cfg.yaw_range == [-10.0, 10.0] and cfg.lr == 1e-4 and cfg.hidden == [64, 32]
    assert cfg.max_time == 90.0 and cfg.loopback is False
    with pytest.raises(FacefitError, match="did you mean 'views'"):
        override(cfg, {"viewz": 2})
    with pytest.raises(FacefitError):
        override(cfg, {"stage": "3"})
    with pytest.raises(FacefitError):
        override(cfg, {"lr": "fast"})
    bad = tmp_path / "bad.toml"
    bad.write_text("stage = [\n")
    with pytest.raises(FacefitError):
        load_config(bad)
    with pytest.raises(FacefitError):
        load_config(tmp_path / "missing.toml")


def test_default_toml_matches_dataclass_defaults():
    cfg = load_config(REPO / "configs" / "train_default.toml")
    assert dataclasses.asdict(cfg) == dataclasses.asdict(TrainConfig())


def test_stage2_without_data_is_refused(tmp_path):
    cfg = small_config(tmp_path, stage="2", stage2_steps=2)
    with pytest.raises(FacefitError, match="real photos"):
        train(cfg, progress=False)


# ------------------------------------------------------------------ gradients


def _decoder_grad(tr, step, **weights) -> torch.Tensor:
    """The decoder's gradient (all parameters, flattened) of the loss of ``step`` under
    ``weights``; zeros where no gradient arrives."""
    tr.cfg = dataclasses.replace(tr.cfg, **weights)
    tr.decoder.zero_grad(set_to_none=True)
    loss, terms = tr.compute_losses(step)
    assert all(math.isfinite(v) for v in terms.values()), terms
    if loss.requires_grad:
        loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in tr.decoder.parameters()])


def _assert_nonzero_and_different(g, full, what):
    assert torch.isfinite(g).all() and g.norm() > 1e-6 * full.norm() and g.norm() > 0, f"no gradient {what}"
    assert not torch.allclose(g, full, rtol=1e-3, atol=1e-9), f"{what}: the same as the full gradient"


class _SecondCallFrozen:
    """Stands in for the trainer's decoder: the first call (photo features) is the decoder
    itself, the second (the loopback's re-encoded render) uses detached parameters, so that
    call passes gradients to its input but not to the decoder's weights."""

    def __init__(self, decoder):
        self.decoder, self.calls = decoder, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:
            return self.decoder(x)
        frozen = {k: v.detach() for k, v in self.decoder.named_parameters()}
        frozen.update(dict(self.decoder.named_buffers()))
        return torch.func.functional_call(self.decoder, frozen, (x,))


def test_gradients_reach_the_decoder_through_every_loss(tmp_path, photo_dir, monkeypatch):
    torch.manual_seed(0)
    cfg = small_config(tmp_path, photo_dir, stage="both", stage1_steps=1, stage2_steps=1, batch_synthetic=2)
    tr = Trainer(cfg, progress=False)
    tr.setup()
    # make the decoder's output depend on its input enough for non-trivial renders
    with torch.no_grad():
        tr.decoder.head.weight.normal_(0, 0.05)
    zero = dict(w_param=0.0, w_id=0.0, w_batch=0.0, w_loop=0.0)
    step2 = cfg.stage1_total  # a stage-2 step (every draw of a step is a fixed function of it)
    for term in ("w_param", "w_id", "w_batch", "w_loop"):
        g = _decoder_grad(tr, step2, **dict(zero, **{term: 1.0}))
        assert torch.isfinite(g).all() and g.norm() > 0, f"no gradient through {term}"
    assert _decoder_grad(tr, step2, **zero).norm() == 0.0

    # L_loop = w |loop - pred|^2 has two sides, pred = D(photo features) and
    # loop = D(E(render(pred))). Detaching one side at a time splits the gradient exactly
    # (the squared error's factor 2 w (loop - pred) is the same value either way).
    loop_only = dict(zero, w_loop=1.0)
    full = _decoder_grad(tr, step2, **loop_only)
    real_loop = L.loopback_loss
    monkeypatch.setattr(L, "loopback_loss", lambda ps, ls, pt, lt, ws, wt: real_loop(ps, ls.detach(), pt, lt.detach(), ws, wt))
    direct = _decoder_grad(tr, step2, **loop_only)  # the prediction's side only
    monkeypatch.setattr(L, "loopback_loss", lambda ps, ls, pt, lt, ws, wt: real_loop(ps.detach(), ls, pt.detach(), lt, ws, wt))
    loop_side = _decoder_grad(tr, step2, **loop_only)  # the re-prediction's side only
    _assert_nonzero_and_different(direct, full, "through the prediction side of L_loop")
    _assert_nonzero_and_different(loop_side, full, "through the loopback side of L_loop")
    torch.testing.assert_close(direct + loop_side, full, rtol=1e-4, atol=1e-6 * float(full.abs().max()))
    # ... and the loopback side reaches the decoder through the renderer and the encoder
    # too, not only through the decoder's second application: freeze that application
    monkeypatch.setattr(tr, "ddp", _SecondCallFrozen(tr.decoder))
    via_render = _decoder_grad(tr, step2, **loop_only)
    assert tr.ddp.calls == 2
    _assert_nonzero_and_different(via_render, loop_side, "through render -> crop -> encoder in L_loop")
    monkeypatch.setattr(tr, "ddp", tr.decoder)
    monkeypatch.setattr(L, "loopback_loss", real_loop)

    # L_id reaches the decoder through the geometry (colours detached) and through the
    # colours (geometry detached); the two parts add up to the whole
    id_only = dict(zero, w_id=1.0)
    full = _decoder_grad(tr, step2, **id_only)
    real_decode = tr.model.decode

    def decode_detaching(which):
        def decode(*a, **kw):
            verts, colors = real_decode(*a, **kw)
            return (verts, colors.detach()) if which == "colors" else (verts.detach(), colors)
        return decode

    monkeypatch.setattr(tr.model, "decode", decode_detaching("colors"))
    geometry = _decoder_grad(tr, step2, **id_only)
    monkeypatch.setattr(tr.model, "decode", decode_detaching("verts"))
    colour = _decoder_grad(tr, step2, **id_only)
    monkeypatch.setattr(tr.model, "decode", real_decode)
    _assert_nonzero_and_different(geometry, full, "through the geometry in L_id")
    _assert_nonzero_and_different(colour, full, "through the colours in L_id")
    torch.testing.assert_close(geometry + colour, full, rtol=1e-3, atol=1e-5 * float(full.abs().max()))
    # geometry gradients reach the shape outputs, colour gradients the colour outputs
    ks = tr.decoder.n_shape
    head_w = tr.decoder.head.weight.numel()
    g_head = geometry[-(head_w + tr.decoder.head.bias.numel()):-tr.decoder.head.bias.numel()].view(-1, tr.decoder.head.in_features)
    c_head = colour[-(head_w + tr.decoder.head.bias.numel()):-tr.decoder.head.bias.numel()].view(-1, tr.decoder.head.in_features)
    assert g_head[:ks].abs().sum() > 0 and g_head[ks:].abs().sum() == 0
    assert c_head[ks:].abs().sum() > 0 and c_head[:ks].abs().sum() == 0
    tr.close()


# ------------------------------------------------------------------ runs


@torch.no_grad()
def _heldout_errors(tr, batch, k: int) -> tuple[torch.Tensor, float, float]:
    """(per-coefficient mean squared error of the first ``k`` shape coefficients (k,),
    that of all colour coefficients, the parameter loss) of the decoder on ``batch``."""
    f = tr.net.features(batch["crops"])
    s, c = tr.decoder(f)
    shape_err = (s[:, :k] - batch["shape_coeffs"][:, :k]).pow(2).mean(0)
    colour_err = float((c - batch["color_coeffs"]).pow(2).mean())
    loss = float(L.param_loss(s, batch["shape_coeffs"], c, batch["color_coeffs"], tr.cfg.w_shape, tr.cfg.w_color))
    return shape_err, colour_err, loss


def test_stage1_learns_shape_and_colour(tmp_path):
    # 30 steps of 8 faces are too few to learn the 100 ICT shape components under the full
    # pose range, so the faces are frontal and lit neutrally; the test checks that the
    # most visible shape components (the first five) and the colours are learned. An
    # untrained decoder predicts the mean face, whose error is the prior's variance (~1).
    # Runs are deterministic (fixed seeds), so the margins below do not depend on luck;
    # measured: shape 0.97 -> 0.81 (each of the five falls), colour 0.97 -> 0.91.
    K = 5
    cfg = small_config(tmp_path, stage1_steps=30, batch_stage1=8, lr=3e-3, lr_final=1.0, hidden=[256],
                       render_size=112, w_shape=1.0, w_color=1.0, temperature_range=[6500, 6500],
                       expr_prob=0.0, yaw_range=[0, 0], pitch_range=[0, 0], roll_range=[0, 0], seed=4)
    tr = Trainer(cfg, progress=False)
    tr.setup()
    held = synthetic_batch(tr.model, 48, torch.Generator().manual_seed(123), tr.syn_settings)
    shape_before, colour_before, loss_before = _heldout_errors(tr, held, K)
    summary = tr.run()
    shape_after, colour_after, loss_after = _heldout_errors(tr, held, K)
    assert summary["finished"] and summary["step"] == 30
    recs = read_log(cfg.out)
    assert [r["step"] for r in recs] == list(range(30))
    assert shape_after.mean() < 0.9 * shape_before.mean(), (shape_before, shape_after)
    assert int((shape_after < shape_before).sum()) >= K - 1, (shape_before, shape_after)
    assert colour_after < 0.97 * colour_before, (colour_before, colour_after)
    assert loss_after < loss_before, (loss_before, loss_after)
    tr.close()


def test_stage2_run_logs_every_term(tmp_path, photo_dir):
    cfg = small_config(tmp_path, photo_dir, stage="both", stage1_steps=2, stage2_steps=3, sample_every=5,
                       checkpoint_every=2)
    s = train(cfg, progress=False)
    assert s["finished"] and s["step"] == 5 and s["photos"] == 6
    recs = read_log(cfg.out)
    assert [r["stage"] for r in recs] == ["1", "1", "2", "2", "2"]
    for r in recs[2:]:
        for k in ("loss", "param", "id", "batch", "loop", "id_score"):
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
        assert 0.0 <= r["id"] <= 2.0
    run = Path(cfg.out)
    for name in ("config.toml", "config.json", "log.jsonl", "losses.png", "checkpoint.pt", "regressor.pt",
                 "samples/step_000005.png"):
        assert (run / name).is_file(), name
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 5 and ck["stage"] == "2" and "optimizer" in ck and ck["config"]["stage2_steps"] == 3
    ship = torch.load(run / "regressor.pt", weights_only=True)
    assert "optimizer" not in ship and "rng" not in ship and ship["model_hash"] == ck["model_hash"]
    assert json.loads((run / "config.json").read_text())["batch_real"] == 3
    # the shipped checkpoint predicts
    reg = Regressor.from_checkpoint(run / "regressor.pt")
    out = reg(torch.rand(2, 3, 150, 150))
    assert out["shape_coeffs"].shape == (2, reg.decoder.n_shape)
    out2 = export_checkpoint(run, tmp_path / "exported.pt")
    assert load_checkpoint(out2)["meta"]["step"] == 5
    assert plot_log(run) == run / "losses.png"


def test_resume_is_exact(tmp_path, photo_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = dict(stage="both", stage1_steps=3, stage2_steps=3)
        full = small_config(tmp_path / "a", photo_dir, **common)
        sa = train(full, progress=False)
        assert sa["step"] == 6
        part = small_config(tmp_path / "b", photo_dir, max_steps=4, **common)
        sb = train(part, progress=False)
        assert sb["step"] == 4 and sb["stopped"] == "max_steps" and not sb["finished"]
        resumed = override(part, {"max_steps": "none", "resume": True})
        sc = train(resumed, progress=False)
        assert sc["resumed_from"] == 4 and sc["step"] == 6 and sc["steps_this_call"] == 2
    finally:
        torch.set_num_threads(threads)
    a = torch.load(Path(full.out) / "checkpoint.pt", weights_only=True)
    b = torch.load(Path(part.out) / "checkpoint.pt", weights_only=True)
    for k in a["decoder"]:
        assert torch.equal(a["decoder"][k], b["decoder"][k]), k
    la, lb = read_log(full.out), read_log(part.out)
    assert [r["step"] for r in lb] == list(range(6))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_sigint_finishes_the_step_and_saves(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, stage1_steps=50)
    tr = Trainer(cfg, progress=False)
    tr.setup()
    real_step = tr.train_step
    # what was there before (Python's default_int_handler, or SIG_IGN when the test run
    # was started in the background by a non-interactive shell)
    before = signal.getsignal(signal.SIGINT)

    def step_then_interrupt(step):
        out = real_step(step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(tr, "train_step", step_then_interrupt)
    s = tr.run()
    assert s["stopped"] == "signal SIGINT" and s["step"] == 2 and not s["finished"]
    assert torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    tr.close()


def test_max_time_stops(tmp_path):
    cfg = small_config(tmp_path, stage1_steps=1000, max_time=0.0)
    s = train(cfg, progress=False)
    assert s["stopped"] == "max_time" and s["step"] == 0
    with pytest.raises(FacefitError, match="already holds a training run"):
        train(cfg, progress=False)  # never overwrite a run silently


# ------------------------------------------------------------------ identity network


def test_non_differentiable_identity_network_is_refused(tmp_path, capsys):
    """SFace runs in onnxruntime (evaluation only): no identity gradient could reach the
    decoder, so training refuses it before writing anything."""
    cfg = small_config(tmp_path, encoder="sface")
    with pytest.raises(FacefitError, match="identity network 'sface' is not differentiable") as info:
        train(cfg, progress=False)
    assert "\n" not in str(info.value) and "dlib" in str(info.value)
    assert not Path(cfg.out).exists()
    from facefit.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--identity-net", "sface", "--out", str(out), "--set", "stage=1", "--set", "stage1_steps=2",
               "--set", "device=cpu", "--set", "render_size=64"])
    err = capsys.readouterr().err
    assert rc == 1 and "not differentiable" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not out.exists()


# ------------------------------------------------------------------ loss weights per model


def _as_bfm(model):
    return model.replace(meta={**model.meta, "source": BFM_SOURCE})


def test_loss_weight_defaults_follow_the_model(default_model):
    cfg = TrainConfig()
    assert cfg.w_shape is None and cfg.w_color is None  # "the model's default"
    ict = resolve_loss_weights(cfg, default_model)
    assert (ict.w_shape, ict.w_color) == (0.05, 0.05)
    bfm = resolve_loss_weights(cfg, _as_bfm(default_model))
    assert (bfm.w_shape, bfm.w_color) == (0.4, 0.002)
    # explicit values always win, each on its own
    mixed = resolve_loss_weights(override(cfg, {"w_shape": "0.1"}), _as_bfm(default_model))
    assert (mixed.w_shape, mixed.w_color) == (0.1, 0.002)
    both = resolve_loss_weights(override(cfg, {"w_shape": 0.05, "w_color": "0.05"}), _as_bfm(default_model))
    assert (both.w_shape, both.w_color) == (0.05, 0.05)
    assert override(mixed, {"w_shape": "none"}).w_shape is None  # back to the model's default
    # normalised identity loss (the default): one w_id for every network and combination
    from facefit.losses import NORMALISED_W_ID

    assert cfg.w_id is None and cfg.identity_norm == "scale" and ict.w_id == NORMALISED_W_ID
    assert ict.identity_nets == ["dlib"]  # empty = the encoder, resolved
    assert resolve_loss_weights(override(cfg, {"encoder": "facenet"}), default_model).w_id == NORMALISED_W_ID
    two = resolve_loss_weights(override(cfg, {"identity_nets": "facenet,dlib"}), default_model)
    assert two.w_id == NORMALISED_W_ID and two.identity_nets == ["facenet", "dlib"]
    # raw cosines (the old loss): w_id follows the encoder, dlib's compressed cosines need more
    raw = override(cfg, {"identity_norm": "none"})
    assert resolve_loss_weights(raw, default_model).w_id == 1000.0
    assert resolve_loss_weights(override(raw, {"encoder": "facenet"}), default_model).w_id == 1.0
    assert resolve_loss_weights(override(cfg, {"w_id": "3"}), default_model).w_id == 3.0
    with pytest.raises(FacefitError, match="w_color must be a number >= 0"):
        override(cfg, {"w_color": "-1"})
    with pytest.raises(FacefitError, match="w_shape: expected a number"):
        override(cfg, {"w_shape": "heavy"})


def test_resolved_loss_weights_are_saved_and_resume_keeps_them(tmp_path, default_model, monkeypatch):
    import facefit.model_io as model_io

    bfm = _as_bfm(default_model)
    monkeypatch.setattr(model_io, "resolve_model", lambda name=None: bfm)
    run = small_config(tmp_path / "bfm", stage1_steps=2, max_steps=1)
    assert train(run, progress=False)["step"] == 1
    saved = json.loads((Path(run.out) / "config.json").read_text())
    assert (saved["w_shape"], saved["w_color"]) == (0.4, 0.002)
    toml = tomllib.loads((Path(run.out) / "config.toml").read_text())
    assert (toml["w_shape"], toml["w_color"]) == (0.4, 0.002)
    assert torch.load(Path(run.out) / "checkpoint.pt", weights_only=True)["config"]["w_shape"] == 0.4
    # the loss really uses them: L_param of a step recomputed by hand with 0.4 / 0.002
    tr = Trainer(override(run, {"max_steps": "none", "resume": True}), progress=False)
    tr.setup()
    assert (tr.cfg.w_shape, tr.cfg.w_color) == (0.4, 0.002)
    with torch.no_grad():
        _, terms = tr.compute_losses(1)
        feats, truth = tr._synthetic_part(1, tr.cfg.batch_stage1)
        s, c = tr.decoder(feats)
        expect = float(L.param_loss(s, truth["shape_coeffs"], c, truth["color_coeffs"], 0.4, 0.002))
        former = float(L.param_loss(s, truth["shape_coeffs"], c, truth["color_coeffs"], 0.05, 0.05))
    assert terms["param"] == pytest.approx(expect, rel=1e-6)
    assert terms["param"] != pytest.approx(former, rel=1e-3)
    tr.close()
    # an old run saved explicit 0.05 / 0.05 (the former default for every model): resuming
    # it keeps them, even for a Basel model and a resuming call that leaves them unset
    old = small_config(tmp_path / "old", stage1_steps=2, max_steps=1, w_shape=0.05, w_color=0.05)
    train(old, progress=False)
    resumed = override(old, {"max_steps": "none", "resume": True, "w_shape": "none", "w_color": "none"})
    s2 = train(resumed, progress=False)
    assert s2["resumed_from"] == 1 and s2["finished"]
    saved = json.loads((Path(old.out) / "config.json").read_text())
    assert (saved["w_shape"], saved["w_color"]) == (0.05, 0.05)


def test_shipped_checkpoint_config_still_loads(tmp_path):
    ck = torch.load(REPO / "models" / "facefit-ict-dlib.pt", weights_only=True)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in ck["config"].items() if k in known}).validate()
    assert (cfg.w_shape, cfg.w_color) == (0.05, 0.05)
    # its config as a run's config.json file loads too, and keeps its explicit weights
    p = tmp_path / "config.json"
    p.write_text(json.dumps(ck["config"]))
    again = load_config(p)
    assert (again.w_shape, again.w_color) == (0.05, 0.05)


# ------------------------------------------------------------------ progress without a terminal


def test_plain_progress_lines_every_n_steps_or_seconds(monkeypatch):
    lines = []
    clock = [100.0]
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock[0])
    pp = T._PlainProgress(total=10, end=10, every=3, seconds=0, max_time=None, t_start=100.0, write=lines.append)
    for step in range(1, 11):
        clock[0] += 2.0
        pp.update(step, "1" if step <= 6 else "2", 2.0, {"loss": 1.5, "param": 1.25, "id": 0.1})
    # after the first step, every 3 steps, and after the last one
    assert [ln.split()[1] for ln in lines] == ["1/10", "4/10", "7/10", "10/10"]
    first = lines[0]
    assert first.startswith("step 1/10 (10.0%) stage 1 | 2.000 s/step | loss=1.5 param=1.25 id=0.1 |")
    assert "elapsed 0:00:02" in first and first.endswith("ETA 0:00:18")
    assert "stage 2" in lines[2] and lines[-1].endswith("ETA 0:00:00")
    # the time trigger (a slow step prints at once), and max_time caps the ETA
    lines.clear()
    clock[0] = 0.0
    pp = T._PlainProgress(total=1000, end=1000, every=50, seconds=30, max_time=100.0, t_start=0.0, write=lines.append)
    for step, dt in ((1, 1.0), (2, 1.0), (3, 40.0), (4, 1.0)):
        clock[0] += dt
        pp.update(step, "1", dt, {"loss": 1.0})
    assert [ln.split()[1] for ln in lines] == ["1/1000", "3/1000"]
    assert "20.500 s/step" in lines[1] and lines[1].endswith("ETA 0:00:58")  # 100 s - 42 s left


def test_training_prints_plain_lines_when_stdout_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    from facefit.photo_cache import interactive_console

    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    assert not interactive_console()  # pytest captures stdout: like nohup / SLURM / CI

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr("sys.stdout", FakeTTY())
    assert interactive_console()
    monkeypatch.setenv("TERM", "dumb")
    assert not interactive_console()
    monkeypatch.undo()

    cfg = small_config(tmp_path, stage1_steps=5, print_every=2, print_seconds=0)
    s = train(cfg, progress=True)
    assert s["finished"]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"training {cfg.out}: starting, 5 steps (stage 1: 5, stage 2: 0)")
    assert "w_shape=0.05 w_color=0.05" in out[0]
    steps = [ln for ln in out if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps] == ["1/5", "3/5", "5/5"]
    for ln in steps:
        assert " stage 1 | " in ln and " s/step | loss=" in ln and "param=" in ln and "| ETA " in ln
    assert not any("━" in ln for ln in out)  # no rich bar drawn into the log
    # progress=False stays quiet
    quiet = small_config(tmp_path / "q", stage1_steps=2)
    train(quiet, progress=False)
    assert capsys.readouterr().out == ""
