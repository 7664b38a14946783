"""Training data: synthetic faces (render -> crop pipeline, hole filling, framing) and the
real-photo cache (faces-dev must be in ../shared: a missing folder fails, no skip)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefit.faces.alignment import crop_transform_from_landmarks68
from facefit.model_io import resolve_model
from facefit.photo_cache import build_photo_cache, list_images
from facefit.render import RenderParams
from facefit.render.shading import frontal_lights
from facefit.synthetic import (
    SyntheticSettings,
    close_holes,
    hole_fill,
    random_backgrounds,
    random_params,
    render_crops,
    synthetic_batch,
)

from conftest import DEV as FACES_DEV


@pytest.fixture
def dev():
    assert FACES_DEV.is_dir(), f"faces-dev not in ../shared ({FACES_DEV})"
    return FACES_DEV


@pytest.fixture(scope="module")
def model():
    return resolve_model(None)


def test_random_backgrounds_deterministic_and_in_range():
    a = random_backgrounds(6, 32, torch.Generator().manual_seed(1))
    b = random_backgrounds(6, 32, torch.Generator().manual_seed(1))
    c = random_backgrounds(6, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_synthetic_batch_reproducible_and_differentiable(model):
    st = SyntheticSettings(render_size=64)
    a = synthetic_batch(model, 3, torch.Generator().manual_seed(5), st)
    b = synthetic_batch(model, 3, torch.Generator().manual_seed(5), st)
    assert a["crops"].shape == (3, 3, 150, 150) and a["images"].shape == (3, 3, 64, 64)
    assert a["shape_coeffs"].shape == (3, model.n_shape) and a["color_coeffs"].shape == (3, model.n_color)
    assert torch.equal(a["crops"], b["crops"]) and torch.equal(a["shape_coeffs"], b["shape_coeffs"])
    assert a["crops"].min() >= 0 and a["crops"].max() <= 1
    # gradients flow from the crops to shape and colour coefficients
    s = a["shape_coeffs"].clone().requires_grad_()
    c = a["color_coeffs"].clone().requires_grad_()
    verts, colors = model.decode(s, c)
    g = torch.Generator().manual_seed(0)
    out = render_crops(model, verts, colors, random_params(3, st, g), st, random_backgrounds(3, 64, g))
    out["crops"].mean().backward()
    assert s.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_framing_puts_the_crop_where_asked(model):
    st = SyntheticSettings(render_size=96, crop_fill=0.7)
    b = synthetic_batch(model, 4, torch.Generator().manual_seed(2), st)
    M = crop_transform_from_landmarks68(b["landmarks"], "dlib_chip", 150)
    side = 150.0 / torch.linalg.det(M[:, :, :2]).abs().sqrt()  # crop side in render pixels
    assert torch.allclose(side, torch.full_like(side, 0.7 * 96), rtol=0.03)
    centre = torch.linalg.solve(M[:, :, :2], (torch.tensor([75.0, 75.0]) - M[:, :, 2]).unsqueeze(-1)).squeeze(-1)
    assert (centre - 48.0).abs().max() < 2.0


def test_eye_and_mouth_holes_are_closed(model):
    fill = hole_fill(model)
    assert sorted(fill.kinds) == ["eye", "eye", "mouth"]
    s = torch.zeros(1, model.n_shape)
    c = torch.zeros(1, model.n_color)
    verts, colors = model.decode(s, c)
    v2, c2, f2 = close_holes(model, verts, colors)
    assert v2.shape[1] == model.n_vertices + fill.n_new and torch.equal(v2[:, : model.n_vertices], verts)
    assert f2.shape[0] == model.n_triangles + len(fill.triangles)
    # render frontally on pure green: with the fill, the eye centres are not background
    z = torch.zeros(1)
    params = RenderParams(z, z, z, frontal_lights(1, target=(0.0, 0.0, 0.0)), torch.ones(1, 3),
                          torch.full((1,), 6500.0), torch.full((1,), 20.0), torch.zeros(1))
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 96, 96)
    lm = model.landmark_positions(verts)
    for flag in (False, True):
        st = SyntheticSettings(render_size=96, fill_holes=flag)
        out = render_crops(model, verts, colors, params, st, background=green)
        eyes = out["landmarks"][0, 36:48].view(2, 6, 2).mean(1)  # eye centres in render pixels
        px = [out["images"][0, :, int(y), int(x)] for x, y in eyes.tolist()]
        is_green = [bool(p[1] > 0.95 and p[0] < 0.05) for p in px]
        assert is_green == ([True, True] if not flag else [False, False])
    assert lm.shape == (1, 68, 3)


def test_photo_cache_skips_counts_and_reuses(tmp_path, dev):
    data = tmp_path / "photos"
    (data / "a").mkdir(parents=True)
    srcs = sorted((FACES_DEV / "Bill_Gates").iterdir())[:2]
    for f in srcs:
        (data / "a" / f.name).symlink_to(f)
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(data / "grey.png")
    (data / "notes.txt").write_text("ignored")
    assert len(list_images(data)) == 4
    cache = tmp_path / "cache"
    ps = build_photo_cache(data, cache_dir=cache, workers=1, progress=False)
    assert len(ps) == 2 and ps.skipped_counts() == {"unreadable": 1, "no_face": 1}
    assert ps.skipped == {"broken.jpg": "unreadable", "grey.png": "no_face"}
    assert ps.features.shape == (2, 256) and ps.embeddings.shape == (2, 128) and ps.crops.shape == (2, 150, 150, 3)
    assert np.allclose(np.linalg.norm(ps.embeddings, axis=1), 1.0, atol=1e-5)
    assert not list(cache.glob("*.part-*"))
    # the cached features are the encoder's features of the cached crops
    from facefit.recognition import get_net

    with torch.no_grad():
        f = get_net("dlib").features(ps.crop_tensor([0, 1]))
    assert np.allclose(f.numpy(), ps.features, atol=1e-4)
    # a second call reads the cache (no detection): same arrays, same file
    ps2 = build_photo_cache(data, cache_dir=cache, workers=1, progress=False)
    assert ps2.cache_file == ps.cache_file and np.array_equal(ps2.features, ps.features)
    assert ps2.paths == ps.paths == [f"a/{s.name}" for s in srcs]
    # another file changes the key
    (data / "a" / "third.jpg").symlink_to(sorted((FACES_DEV / "Bill_Gates").iterdir())[2])
    ps3 = build_photo_cache(data, cache_dir=cache, workers=1, progress=False)
    assert ps3.cache_file != ps.cache_file and len(ps3) == 3


def test_photo_cache_resumes_after_interruption(tmp_path, monkeypatch, capsys, dev):
    from facefit import photo_cache

    data = tmp_path / "photos"
    data.mkdir()
    for f in sorted((FACES_DEV / "Colin_Powell").iterdir())[:3]:
        (data / f.name).symlink_to(f)
    monkeypatch.setattr(photo_cache, "_CHUNK", 1)
    calls = []
    real = photo_cache._detect_one

    def interrupted(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(photo_cache, "_detect_one", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_photo_cache(data, cache_dir=cache, workers=1, progress=False)
    assert len(list(cache.glob("*.part-*.npz"))) == 2  # the finished chunks were kept
    monkeypatch.setattr(photo_cache, "_detect_one", real)
    calls.clear()
    monkeypatch.setattr(photo_cache, "_detect_one", lambda job: (calls.append(job[0]), real(job))[1])
    capsys.readouterr()
    ps = build_photo_cache(data, cache_dir=cache, workers=1, progress=True)
    assert len(ps) == 3 and len(calls) == 1  # only the missing photo was processed again
    assert not list(cache.glob("*.part-*"))
    # stdout is not a terminal here (as under nohup / SLURM): one plain line per chunk
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("caching photos (dlib + dlib): 3 files under") and "2 already done" in out[0]
    chunks = [ln for ln in out if ": chunk " in ln]
    assert [ln.split(": chunk ")[1].split(",")[0] for ln in chunks] == ["1/3", "2/3", "3/3"]
    assert "1/3 photos (33%)" in chunks[0] and "from an earlier pass" in chunks[0]
    assert "3/3 photos (100%), skipped 0," in chunks[2] and "photos/s" in chunks[2] and chunks[2].endswith("ETA 0:00:00")
    assert not any("━" in ln for ln in out)
