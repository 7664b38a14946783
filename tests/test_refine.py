"""Per-photo identity refinement (reconstruct --refine)."""
import numpy as np
import pytest
import torch

from facefit.errors import FacefitError
from facefit.reconstruction import Reconstructor, reconstruct
from facefit.refine import RefineSettings, refine_identity

from conftest import DEV, EXAMPLE


@pytest.fixture(scope="module")
def rec():
    return Reconstructor()  # the shipped regressor


@pytest.fixture(scope="module")
def photo(rec):
    from facefit.faces.images import load_image

    paths = [sorted((DEV / p).glob("*.jpg"))[0] for p in ("Colin_Powell", "Halle_Berry")]
    crops = np.stack([rec.crop(im, rec.detect(im)[0]) for im in map(load_image, paths)])
    feats = rec.encode(crops)
    shape, color = rec.decode(feats)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        emb = rec.encoder.embed(x)
    return crops, emb, shape, color


def test_refinement_raises_the_identity_score_and_is_reproducible(rec, photo):
    _, emb, shape, color = photo
    # shape and colour, unanchored (anchor=0): the identity machinery alone; the defaults
    # (colour only, anchor) are tested below
    cfg = RefineSettings(steps=6, views=2, render_size=96, lr=0.05, anchor=0.0, shape_lr=1.0)
    s, c, info = refine_identity(rec.model, rec.encoder, emb, shape, color, cfg)
    assert s.shape == shape.shape and c.shape == color.shape
    assert np.abs(s - shape).max() > 0.05  # it moved
    assert (info["identity_after"] > info["identity_before"]).all(), info
    # the same seed gives the same result; the batching changes only float rounding (which
    # Adam's normalised steps amplify on coefficients with near-zero gradients)
    s0, c0, _ = refine_identity(rec.model, rec.encoder, emb, shape, color, cfg)
    assert np.array_equal(s, s0) and np.array_equal(c, c0)
    s1, c1, info1 = refine_identity(rec.model, rec.encoder, emb, shape, color,
                                    RefineSettings(**{**cfg.__dict__, "batch": 1}))
    assert np.allclose(info1["identity_after"], info["identity_after"], atol=2e-3)
    assert np.abs(s1 - s).mean() < 0.35 * np.abs(s - shape).mean() and np.abs(c1 - c).mean() < 0.35 * np.abs(c - color).mean()
    # the encoder is left as it was: frozen, no gradients kept
    assert not any(p.requires_grad for p in rec.encoder.parameters())
    assert all(p.grad is None for p in rec.encoder.parameters())


def test_zero_steps_is_the_regressor(rec, photo):
    _, emb, shape, color = photo
    s, c, info = refine_identity(rec.model, rec.encoder, emb, shape, color, RefineSettings(steps=0))
    assert np.array_equal(s, shape) and np.array_equal(c, color) and info["steps"] == 0


def test_bad_settings_and_networks_are_refused(rec, photo):
    _, emb, shape, color = photo
    with pytest.raises(FacefitError, match="steps"):
        RefineSettings(steps=-1)
    with pytest.raises(FacefitError, match="embeddings"):
        refine_identity(rec.model, rec.encoder, emb[:1], shape, color, RefineSettings(steps=1))
    from facefit.recognition import get_net

    with pytest.raises(FacefitError, match="not differentiable"):
        refine_identity(rec.model, get_net("sface"), emb, shape, color, RefineSettings(steps=1))


def test_reconstruct_api_reports_refinement():
    """By default refinement moves the colour only: the shape is the regressor's (the plain
    call runs the torch-free engine, hence a float tolerance); refine_shape moves it too."""
    r = reconstruct(EXAMPLE, refine=3)[0]
    plain = reconstruct(EXAMPLE)[0]
    ref = r.extra["refine"]
    assert ref["steps"] == 3 and ref["shape"] is False and ref["identity_after"] > ref["identity_before"]
    assert np.abs(r.shape_coeffs - plain.shape_coeffs).max() < 1e-4
    assert np.abs(r.color_coeffs - plain.color_coeffs).max() > 1e-3
    assert r.coeffs_record()["refine"]["steps"] == 3
    rs = reconstruct(EXAMPLE, refine=3, refine_shape=True)[0]
    assert rs.extra["refine"]["shape"] is True
    assert np.abs(rs.shape_coeffs - plain.shape_coeffs).max() > 1e-3


def test_geometry_guards_shape_lr_and_anchor(rec, photo):
    """The default (shape_lr=0) refines the colour only: the shape stays the regressor's
    exactly, whatever the anchor. A moving shape (shape_lr=1) is anchored by default, and
    an anchor keeps it nearer the regressor's than no anchor does."""
    _, emb, shape, color = photo
    base = dict(steps=4, views=2, render_size=96, lr=0.05)
    assert RefineSettings().shape_lr == 0.0
    for anchor in (0.0, 2.0):
        s0, c0, _ = refine_identity(rec.model, rec.encoder, emb, shape, color, RefineSettings(**base, anchor=anchor))
        assert np.array_equal(s0, shape) and np.abs(c0 - color).max() > 1e-3
    assert RefineSettings().anchor > 0  # a moving shape is anchored by default
    base["shape_lr"] = 1.0
    s_free, _, _ = refine_identity(rec.model, rec.encoder, emb, shape, color, RefineSettings(**base, anchor=0.0))
    s_anch, _, info = refine_identity(rec.model, rec.encoder, emb, shape, color, RefineSettings(**base, anchor=200.0))
    assert np.abs(s_anch - shape).mean() < 0.7 * np.abs(s_free - shape).mean()
    assert info["anchor"] == 200.0
    for bad in ({"anchor": -1.0}, {"shape_lr": float("nan")}):
        with pytest.raises(FacefitError, match="finite number >= 0"):
            RefineSettings(**bad)


def test_cli_refine_shape_needs_refine(tmp_path, capsys):
    from facefit.cli import main

    out = tmp_path / "x.obj"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--refine-shape"]) == 1
    err = capsys.readouterr().err
    assert "--refine-shape needs --refine N" in err and "Traceback" not in err
    assert not out.exists()
