"""The multi-network, normalised identity loss (facefit.idloss) and its training settings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.errors import FacefitError
from facefit.idloss import COSINE_SCALES, CosineScale, IdentityNets, measure_cosine_scale, parse_identity_nets
from facefit.losses import NORMALISED_W_ID, normalised_identity_loss
from facefit.training import TrainConfig, load_config, override, resolve_loss_weights

from conftest import DEV as FACES_DEV


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ configuration


def test_identity_nets_parse_from_cli_toml_and_lists(tmp_path):
    assert parse_identity_nets("facenet,dlib") == ["facenet", "dlib"]
    assert parse_identity_nets(" facenet  dlib,facenet ") == ["facenet", "dlib"]  # duplicates dropped
    assert parse_identity_nets(None) == [] and parse_identity_nets("") == []
    cfg = override(TrainConfig(), {"identity_nets": "facenet,dlib"})  # --set identity_nets=facenet,dlib
    assert cfg.identity_nets == ["facenet", "dlib"] and cfg.identity_norm == "scale"
    p = tmp_path / "c.toml"
    p.write_text('[losses]\nidentity_nets = ["dlib", "facenet"]\nidentity_norm = "none"\n')
    cfg = load_config(p)
    assert cfg.identity_nets == ["dlib", "facenet"] and cfg.identity_norm == "none"
    assert override(cfg, {"identity_norm": "scale"}).identity_norm == "scale"


@pytest.mark.parametrize("value, match", [
    ("facenet,nosuchnet", "unknown identity network 'nosuchnet' (known: "),
    ("dlib,sface", "identity network 'sface' is not differentiable"),
])
def test_bad_identity_nets_are_refused_in_one_line(value, match):
    with pytest.raises(FacefitError) as info:
        override(TrainConfig(), {"identity_nets": value})
    assert match in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FacefitError, match="identity_norm must be 'scale' or 'none'"):
        override(TrainConfig(), {"identity_norm": "zscore"})


def test_cli_refuses_sface_as_identity_net_in_one_line(tmp_path, capsys):
    from facefit.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--set", "identity_nets=facenet,sface", "--set", "stage=1",
               "--set", "stage1_steps=1", "--set", "device=cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "'sface' is not differentiable" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not out.exists()


def test_one_weight_for_all_networks_and_old_configs_keep_raw_cosines(tmp_path, default_model):
    for nets in ("dlib", "facenet", "facenet,dlib"):
        r = resolve_loss_weights(override(TrainConfig(), {"identity_nets": nets}), default_model)
        assert r.w_id == NORMALISED_W_ID
    # the normalised weight is dlib's measured raw weight (1000) on dlib's scale
    assert NORMALISED_W_ID == pytest.approx(1000 * COSINE_SCALES["dlib"].spread, rel=0.01)
    # a run's config.json saved before identity_norm existed trained with raw cosines: keep them
    old = {k: v for k, v in json.loads(json.dumps(TrainConfig().__dict__)).items()
           if k not in ("identity_nets", "identity_norm")}
    old.update(w_id=1000.0, w_shape=0.05, w_color=0.05)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(old))
    cfg = load_config(p)
    assert cfg.identity_norm == "none" and cfg.w_id == 1000.0
    assert resolve_loss_weights(cfg, default_model).identity_nets == ["dlib"]


def test_shipped_checkpoint_config_still_loads(tmp_path):
    from facefit.reconstruction import default_checkpoint
    from facefit.regressor import load_checkpoint

    ck = load_checkpoint(default_checkpoint())
    p = tmp_path / "config.json"
    p.write_text(json.dumps(ck["config"]))
    cfg = load_config(p)
    assert cfg.identity_nets == ck["config"].get("identity_nets", cfg.identity_nets)
    if "identity_norm" not in ck["config"]:
        assert cfg.identity_norm == "none"


# ------------------------------------------------------------------ the loss


def test_normalised_loss_is_zero_at_same_person_and_one_at_strangers():
    scales = {"a": (0.95, 0.83), "b": (0.7, 0.1)}
    same = {"a": torch.full((2, 3), 0.95), "b": torch.full((2, 3), 0.7)}
    diff = {"a": torch.full((2, 3), 0.83), "b": torch.full((2, 3), 0.1)}
    assert float(normalised_identity_loss(same, scales)) == pytest.approx(0.0, abs=1e-6)
    assert float(normalised_identity_loss(diff, scales)) == pytest.approx(1.0, abs=1e-6)
    # each net on its own scale: half-way on both nets = 0.5, whatever the raw ranges
    half = {"a": torch.full((2, 3), 0.89), "b": torch.full((2, 3), 0.4)}
    assert float(normalised_identity_loss(half, scales)) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(FacefitError, match="same > diff"):
        CosineScale(same=0.5, diff=0.6)


def test_cosine_scale_measurement_is_people_balanced():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    labels = np.repeat(np.arange(5), [20, 2, 2, 2, 2])
    emb = centres[labels] + 0.3 * rng.normal(size=(len(labels), 16))
    m = measure_cosine_scale(emb, labels, n_diff=5000)
    assert m["n_people_same"] == 5 and m["n_same_pairs"] == 190 + 4
    assert m["same"] > m["diff"] + 0.3


def _faces(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (0.5 * torch.randn(n, model.n_shape, generator=g)).requires_grad_(True)
    c = (0.5 * torch.randn(n, model.n_color, generator=g)).requires_grad_(True)
    return s, c


@pytest.mark.parametrize("names", [["dlib"], ["facenet"], ["facenet", "dlib"]])
def test_gradients_reach_shape_and_colour_through_each_net(default_model, names):
    """Small renders (48 px, crops upsampled to the nets' sizes), one view per face."""
    from facefit.recognition import get_net
    from facefit.synthetic import SyntheticSettings, random_params

    nets = {n: get_net(n) for n in names}
    ids = IdentityNets(nets)  # the measured scales
    base = SyntheticSettings(render_size=48)
    st = ids.view_settings(base)
    assert {n: st[n].crop for n in names} == {n: nets[n].crop for n in names}
    model = default_model
    s, c = _faces(model)
    photos = {}
    with torch.no_grad():  # "photos": renders of other faces
        s0, c0 = _faces(model, seed=1)
        v0, col0 = model.decode(s0, c0)
        p0 = random_params(2, base, torch.Generator().manual_seed(5))
        from facefit.regressor import encode
        from facefit.synthetic import render_crops

        for n in names:
            photos[n] = encode(nets[n], render_crops(model, v0, col0, p0, st[n])["crops"])[1]
    verts, cols = model.decode(s, c)
    params = random_params(2, base, torch.Generator().manual_seed(6))
    scores, feats = ids.score_renders(model, verts, cols, params, st, photos, keep_features=names[0])
    assert set(scores) == set(names) and all(v.shape == (2, 1) for v in scores.values())
    assert feats is not None and feats.shape == (2, nets[names[0]].feature_dim)
    loss, terms = ids.loss(scores)
    assert {f"cos_{n}" for n in names} <= set(terms) and "id_score" in terms
    loss.backward()
    for g in (s.grad, c.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# ------------------------------------------------------------------ photos for a second net


def test_photo_set_for_another_net_matches_detecting_again(tmp_path):
    """Crops cut from the stored face points equal crops from a fresh detection."""
    from facefit.photo_cache import build_photo_cache, photo_set_for_net
    from facefit.recognition import get_net

    assert FACES_DEV.is_dir(), f"faces-dev not in ../shared ({FACES_DEV})"
    data = tmp_path / "data"
    for person in ("Barack_Obama", "Bill_Gates"):
        (data / person).mkdir(parents=True)
        for f in sorted((FACES_DEV / person).iterdir())[:2]:
            (data / person / f.name).symlink_to(f)
    cache = tmp_path / "cache"
    base = build_photo_cache(data, encoder="dlib", cache_dir=cache, workers=1, progress=False)
    assert base.points is not None and base.points.shape == (len(base), 73, 2)
    fn = get_net("facenet")
    other = photo_set_for_net(base, fn, progress=False)
    direct = build_photo_cache(data, fn, encoder="facenet", cache_dir=cache, workers=1, progress=False)
    assert other.paths == base.paths == direct.paths
    np.testing.assert_allclose(other.embeddings, direct.embeddings, atol=1e-4)
    # cached: the second call reads the file
    again = photo_set_for_net(base, fn, progress=False)
    assert again.cache_file == other.cache_file
    np.testing.assert_array_equal(again.embeddings, other.embeddings)
    sub = base.random_subset(2)
    assert len(sub) == 2 and set(sub.paths) <= set(base.paths)
    assert photo_set_for_net(sub, fn, progress=False).paths == sub.paths


# ------------------------------------------------------------------ training with two nets


def test_stage2_trains_with_two_identity_nets_and_resumes(tmp_path):
    from facefit.training import read_log, train

    assert FACES_DEV.is_dir()
    data = tmp_path / "data"
    for person in ("Barack_Obama", "Bill_Gates"):
        (data / person).mkdir(parents=True)
        for f in sorted((FACES_DEV / person).iterdir())[:2]:
            (data / person / f.name).symlink_to(f)
    cfg = load_config(None, dict(
        out=str(tmp_path / "run"), stage="2", stage2_steps=2, batch_synthetic=1, batch_real=2, views=1,
        render_size=48, hidden=[16], checkpoint_every=0, sample_every=0, n_samples=1, device="cpu",
        data=str(data), cache_dir=str(tmp_path / "cache"), cache_workers=1, identity_nets="facenet,dlib",
        max_steps=1,
    ))
    first = train(cfg, progress=False)
    assert first["step"] == 1
    saved = json.loads((Path(cfg.out) / "config.json").read_text())
    assert saved["identity_nets"] == ["facenet", "dlib"] and saved["identity_norm"] == "scale"
    assert saved["w_id"] == NORMALISED_W_ID
    done = train(override(cfg, {"resume": True, "max_steps": "none"}), progress=False)
    assert done["finished"] and done["step"] == 2
    recs = read_log(cfg.out)
    assert [r["step"] for r in recs] == [0, 1]
    for r in recs:
        assert 0 < r["cos_facenet"] < 1 and 0 < r["cos_dlib"] < 1 and np.isfinite(r["id"])
