"""Two-stage training: configuration, gradients of every loss path, short runs, resume,
signals, checkpoints. Uses the real dlib encoder and the default (ICT-FaceKit) model with
small renders and batches."""
import dataclasses
import json
import math
import signal
from pathlib import Path

import pytest
import torch

from facefit import losses as L
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
    train,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FACES_DEV = SHARED / "data" / "faces-dev"

pytestmark = pytest.mark.skipif(not FACES_DEV.is_dir(), reason="../shared/data/faces-dev not available")

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


def _decoder_grad_norm(tr, step, **weights):
    tr.cfg = dataclasses.replace(tr.cfg, **weights)
    tr.decoder.zero_grad(set_to_none=True)
    loss, terms = tr.compute_losses(step)
    loss.backward()
    g = [p.grad for p in tr.decoder.parameters() if p.grad is not None]
    return (sum(float(x.pow(2).sum()) for x in g) ** 0.5 if g else 0.0), terms


def test_gradients_reach_the_decoder_through_every_loss(tmp_path, photo_dir):
    torch.manual_seed(0)
    cfg = small_config(tmp_path, photo_dir, stage="both", stage1_steps=1, stage2_steps=1, batch_synthetic=2)
    tr = Trainer(cfg, progress=False)
    tr.setup()
    # make the decoder's output depend on its input enough for non-trivial renders
    with torch.no_grad():
        tr.decoder.head.weight.normal_(0, 0.05)
    zero = dict(w_param=0.0, w_id=0.0, w_batch=0.0, w_loop=0.0)
    step2 = cfg.stage1_total  # a stage-2 step
    for term in ("w_param", "w_id", "w_batch", "w_loop"):
        w = dict(zero, **{term: 1.0})
        norm, terms = _decoder_grad_norm(tr, step2, **w)
        assert math.isfinite(norm) and norm > 0, f"no gradient through {term}"
        assert all(math.isfinite(v) for v in terms.values())
    none, _ = _decoder_grad_norm(tr, step2, **zero)
    assert none == 0.0
    # the identity gradient really goes through renderer + encoder: the render crops carry
    # a gradient w.r.t. the predicted colours
    tr.cfg = dataclasses.replace(tr.cfg, **dict(zero, w_id=1.0))
    feats = tr.photo_feats[:3]
    s, c = tr.decoder(feats)
    c.retain_grad()
    verts, colors = tr.model.decode(s, c)
    from facefit.regressor import encode
    from facefit.synthetic import random_backgrounds, random_params, render_crops

    g = torch.Generator().manual_seed(0)
    rc = render_crops(tr.model, verts, colors, random_params(3, tr.view_settings, g), tr.view_settings,
                      random_backgrounds(3, cfg.render_size, g))
    _, emb = encode(tr.net, rc["crops"])
    L.identity_loss(tr.photo_embs[:3], emb).backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    tr.close()


# ------------------------------------------------------------------ runs


@torch.no_grad()
def _heldout_param_loss(tr, batch):
    f = tr.net.features(batch["crops"])
    s, c = tr.decoder(f)
    return float(L.param_loss(s, batch["shape_coeffs"], c, batch["color_coeffs"], tr.cfg.w_shape, tr.cfg.w_color))


def test_stage1_lowers_param_loss(tmp_path):
    # 30 steps are too few to learn the 100 ICT shape components (most are barely visible),
    # so this run measures the colour coefficients only (w_shape = 0), under neutral light.
    # Runs are deterministic, so the margins below do not depend on luck.
    cfg = small_config(tmp_path, stage1_steps=30, batch_stage1=8, lr=5e-3, lr_final=1.0, hidden=[256],
                       render_size=112, w_shape=0.0, w_color=1.0, temperature_range=[6500, 6500],
                       expr_prob=0.0, seed=4)
    tr = Trainer(cfg, progress=False)
    tr.setup()
    held = synthetic_batch(tr.model, 24, torch.Generator().manual_seed(123), tr.syn_settings)
    before = _heldout_param_loss(tr, held)
    summary = tr.run()
    after = _heldout_param_loss(tr, held)
    assert summary["finished"] and summary["step"] == 30
    recs = read_log(cfg.out)
    assert [r["step"] for r in recs] == list(range(30))
    first = sum(r["param"] for r in recs[:8]) / 8
    last = sum(r["param"] for r in recs[-8:]) / 8
    assert last < 0.95 * first, (first, last)
    assert after < 0.99 * before, (before, after)
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

    def step_then_interrupt(step):
        out = real_step(step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(tr, "train_step", step_then_interrupt)
    s = tr.run()
    assert s["stopped"] == "signal SIGINT" and s["step"] == 2 and not s["finished"]
    assert torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    tr.close()


def test_max_time_stops(tmp_path):
    cfg = small_config(tmp_path, stage1_steps=1000, max_time=0.0)
    s = train(cfg, progress=False)
    assert s["stopped"] == "max_time" and s["step"] == 0
    with pytest.raises(FacefitError, match="already holds a training run"):
        train(cfg, progress=False)  # never overwrite a run silently
