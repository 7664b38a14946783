"""Decoder, Regressor and checkpoints (weights_only loading, model-hash check)."""
import pickle

import numpy as np
import pytest
import torch

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError
from facefit.morphable import MorphableModel
from facefit.recognition import RecognitionNet
from facefit.regressor import (
    CHECKPOINT_FORMAT,
    Decoder,
    Regressor,
    check_model_match,
    decoder_from_checkpoint,
    encode,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)


def tiny_model(seed=0, n_shape=5, n_color=2, name="tiny"):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(6, 3)).astype(np.float32) * 50
    tri = np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]])
    return MorphableModel(
        name,
        v,
        tri,
        shape_basis=rng.normal(size=(6, 3, n_shape)),
        shape_std=np.ones(n_shape),
        color_basis=rng.normal(size=(6, 3, n_color)),
        color_std=np.ones(n_color) * 0.1,
    )


class FakeNet(RecognitionNet):
    """A stand-in encoder: mean-pools and projects (no weights needed)."""

    name = "fake"
    input_size = 8
    crop = "dlib_chip"
    feature_dim = 6
    embedding_dim = 6

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 6)
        self.freeze()

    def features(self, x):
        return self.proj(x.mean(dim=(2, 3)))

    def embed(self, x):
        return torch.nn.functional.normalize(self.features(x), dim=1)


def test_decoder_starts_at_mean_face_and_splits_outputs():
    torch.manual_seed(0)
    dec = Decoder(16, 5, 2, hidden=[32])
    s, c = dec(torch.randn(4, 16))
    assert s.shape == (4, 5) and c.shape == (4, 2)
    assert s.abs().max() < 0.05 and c.abs().max() < 0.05
    assert dec.config == {"in_dim": 16, "n_shape": 5, "n_color": 2, "hidden": [32]}


def test_decoder_input_stats_standardise():
    dec = Decoder(3, 2, 0, hidden=[])
    f = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]])
    dec.set_input_stats(f)
    assert torch.allclose(dec.input_mean, torch.tensor([2.0, 20.0, 5.0]))
    assert dec.input_std[2] == pytest.approx(1e-3)  # floored
    with torch.no_grad():
        dec.head.weight.copy_(torch.eye(2, 3))
    s, c = dec(f)
    assert torch.allclose(s[:, 0], torch.tensor([-1.0, 1.0]) / np.sqrt(2.0), atol=1e-5)
    assert c.shape == (2, 0)


def test_regressor_forward_and_gradients():
    torch.manual_seed(0)
    net = FakeNet()
    reg = Regressor(net, Decoder(6, 5, 2, hidden=[8], init_scale=0.1), "h", "tiny")
    crops = torch.rand(3, 3, 8, 8, requires_grad=True)
    out = reg(crops)
    assert out["shape_coeffs"].shape == (3, 5) and out["color_coeffs"].shape == (3, 2)
    assert out["features"].shape == (3, 6)
    (out["shape_coeffs"].sum() + out["color_coeffs"].sum()).backward()
    assert reg.decoder.head.weight.grad.abs().sum() > 0
    assert crops.grad is not None  # the frozen encoder still passes gradients to its input
    assert all(p.grad is None for p in net.parameters())
    reg.train(True)
    assert reg.decoder.training and not net.training
    f, e = encode(net, crops.detach())
    assert f.shape == (3, 6) and torch.allclose(e.norm(dim=1), torch.ones(3))


def test_checkpoint_roundtrip_weights_only(tmp_path):
    model = tiny_model()
    dec = Decoder(6, model.n_shape, model.n_color, hidden=[8], init_scale=0.5)
    dec.set_input_stats(torch.randn(10, 6))
    ck = make_checkpoint(dec, "fake", model.content_hash, model.name, step=7, config={"lr": 1e-3, "hidden": [8]})
    path = save_checkpoint(ck, tmp_path / "sub" / "ck.pt")
    # loadable with the safe loader directly
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["step"] == 7 and raw["encoder"] == "fake"
    loaded = load_checkpoint(path, model=model)
    dec2 = decoder_from_checkpoint(loaded)
    x = torch.randn(4, 6)
    for a, b in zip(dec(x), dec2(x)):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("sub/.*"))  # no temporary files left


def test_checkpoint_for_another_model_is_refused(tmp_path):
    model_a, model_b = tiny_model(0, name="model-a"), tiny_model(1, name="model-b")
    dec = Decoder(6, model_a.n_shape, model_a.n_color, hidden=[4])
    path = save_checkpoint(make_checkpoint(dec, "fake", model_a.content_hash, model_a.name), tmp_path / "a.pt")
    with pytest.raises(FacefitError) as ei:
        load_checkpoint(path, model=model_b)
    msg = str(ei.value)
    assert model_a.content_hash in msg and model_b.content_hash in msg
    assert "model-a" in msg and "model-b" in msg and "\n" not in msg
    with pytest.raises(FacefitError):
        check_model_match(torch.load(path, weights_only=True), model_b)
    load_checkpoint(path, model=model_a)  # the right model is fine


class _Evil:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _refused_in_one_line(path, *reason):
    """load_checkpoint(path) raises a one-line InvalidFileError naming the file, with no
    warning and no advice to load the file unsafely."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked torch warning would fail here
        with pytest.raises(InvalidFileError) as ei:
            load_checkpoint(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg and "weights_only" not in msg and "Re-running" not in msg, msg
    for r in reason:
        assert r in msg, msg
    return msg


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    _refused_in_one_line(junk, "is not a facefit checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _refused_in_one_line(empty, "empty, truncated or damaged")
    plain = tmp_path / "plain.pt"
    torch.save({"some": torch.zeros(2)}, plain)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[:120])
    _refused_in_one_line(truncated, "empty, truncated or damaged")
    with pytest.raises(InvalidFileError, match="not a facefit"):
        load_checkpoint(plain)
    newer = tmp_path / "newer.pt"
    torch.save({"kind": "facefit-regressor", "format": CHECKPOINT_FORMAT + 1}, newer)
    with pytest.raises(InvalidFileError, match="newer"):
        load_checkpoint(newer)
    pk = tmp_path / "pickle.pt"  # a raw pickle (protocol 4): torch warns about the protocol
    pk.write_bytes(pickle.dumps({"kind": "facefit-regressor"}, protocol=4))
    _refused_in_one_line(pk, "is not a facefit checkpoint")


def test_code_executing_checkpoints_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "facefit-regressor", "x": _Evil(marker)}, evil)
    raw = tmp_path / "evil-raw.pt"
    raw.write_bytes(pickle.dumps({"kind": _Evil(marker)}, protocol=4))
    assert not marker.exists()
    _refused_in_one_line(evil, "holds objects other than tensors and plain values", "refusing to load it")
    _refused_in_one_line(raw, "refusing to load it")
    assert not marker.exists()
    # the payloads are live: an unsafe load would have run them
    pickle.loads(raw.read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_from_checkpoint_rebuilds_encoder(tmp_path, monkeypatch):
    from facefit import recognition

    model = tiny_model()
    recognition.register_net("fake-test", FakeNet, replace=True)
    try:
        dec = Decoder(6, model.n_shape, model.n_color, hidden=[4], init_scale=0.3)
        path = save_checkpoint(make_checkpoint(dec, "fake-test", model.content_hash, model.name), tmp_path / "r.pt")
        reg = Regressor.from_checkpoint(path, model=model)
        assert isinstance(reg.encoder, FakeNet) and not reg.training
        assert reg.model_hash == model.content_hash
        x = torch.randn(2, 6)
        assert torch.equal(reg.decode_features(x)["shape_coeffs"], dec(x)[0])
        with pytest.raises(FacefitError):
            Regressor.from_checkpoint(path, model=tiny_model(5))
    finally:
        recognition.unregister_net("fake-test")


def test_blend_decoders_is_exact_and_validates():
    from facefit.regressor import blend_decoders

    torch.manual_seed(0)
    A = Decoder(12, 5, 3, hidden=[7], init_scale=0.3)
    B = Decoder(12, 5, 3, hidden=[9], init_scale=0.3)
    A.set_input_stats(torch.randn(50, 12) * 3 + 1)
    B.set_input_stats(torch.randn(50, 12) * 0.5 - 2)
    x = torch.randn(20, 12) * 2
    with torch.no_grad():
        sa, ca = A(x)
        sb, cb = B(x)
        for alpha in (0.0, 0.3, 1.0):
            s, c = blend_decoders(A, B, alpha)(x)
            assert torch.allclose(s, alpha * sa + (1 - alpha) * sb, atol=1e-5)
            assert torch.allclose(c, cb, atol=1e-5)
        per = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9])  # one weight per shape coefficient
        s, c = blend_decoders(A, B, per)(x)
        assert torch.allclose(s, per * sa + (1 - per) * sb, atol=1e-5)
        assert torch.allclose(c, cb, atol=1e-5)
    assert blend_decoders(A, B).config["hidden"] == [16]
    with pytest.raises(ValueError, match="one per shape coefficient"):
        blend_decoders(A, B, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_decoders(A, B, 1.5)
    with pytest.raises(ValueError, match="fit together"):
        blend_decoders(A, Decoder(12, 4, 3, hidden=[7]))
    with pytest.raises(ValueError, match="one hidden layer"):
        blend_decoders(Decoder(12, 5, 3, hidden=[4, 4]), B)


def test_blend_decoders_with_a_decoder_on_the_first_features():
    """A decoder on a combined encoder's features blends with one on its first network's."""
    from facefit.regressor import blend_decoders

    torch.manual_seed(3)
    A = Decoder(12, 5, 3, hidden=[7], init_scale=0.3)  # reads all 12 (e.g. dlib + FaceNet)
    B = Decoder(4, 5, 3, hidden=[6], init_scale=0.3)  # reads the first 4 (e.g. dlib)
    A.set_input_stats(torch.randn(50, 12) * 3 + 1)
    B.set_input_stats(torch.randn(50, 4) * 0.5 - 2)
    x = torch.randn(20, 12) * 2
    with torch.no_grad():
        sa, _ = A(x)
        sb, cb = B(x[:, :4])
        for alpha in (0.0, 0.4, 1.0):
            s, c = blend_decoders(A, B, alpha)(x)
            assert torch.allclose(s, alpha * sa + (1 - alpha) * sb, atol=1e-5)
            assert torch.allclose(c, cb, atol=1e-5)
        # changing the features B does not read changes only A's part
        y = x.clone()
        y[:, 4:] += 1.0
        s0, c0 = blend_decoders(A, B, 0.0)(y)
        assert torch.allclose(s0, sb, atol=1e-5) and torch.allclose(c0, cb, atol=1e-5)
    with pytest.raises(ValueError, match="fit together"):
        blend_decoders(B, A)  # the wider one must be shape_from


def test_blend_script_writes_a_loadable_checkpoint_and_refuses_mismatches(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from facefit.regressor import load_checkpoint

    root = Path(__file__).resolve().parents[1]
    torch.manual_seed(1)
    a, b = Decoder(6, 4, 2, hidden=[5], init_scale=0.2), Decoder(6, 4, 2, hidden=[3], init_scale=0.2)
    save_checkpoint(make_checkpoint(a, "dlib", "h1", "m"), tmp_path / "a.pt")
    save_checkpoint(make_checkpoint(b, "dlib", "h1", "m", config={"lr": 0.001}), tmp_path / "b.pt")
    save_checkpoint(make_checkpoint(a, "facenet", "h1", "m"), tmp_path / "c.pt")
    script = str(root / "scripts" / "blend_decoders.py")
    r = subprocess.run([sys.executable, script, str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--alpha", "0.5",
                        "-o", str(tmp_path / "out.pt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(tmp_path / "out.pt")
    assert ck["decoder_config"]["hidden"] == [8] and ck["config"] == {"lr": 0.001}
    assert ck["meta"]["blend"]["alpha"] == 0.5 and ck["meta"]["blend"]["shape_from"] == "a.pt"
    r = subprocess.run([sys.executable, script, str(tmp_path / "c.pt"), str(tmp_path / "b.pt"), "--alpha", "0.5",
                        "-o", str(tmp_path / "bad.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.pt").exists()
    # per-component weights: coefficient 0 all from a, 2-3 all from b, the rest half and half
    r = subprocess.run([sys.executable, script, str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--alpha", "0.5",
                        "--component-alpha", "0=1", "--component-alpha", "2-3=0", "-o", str(tmp_path / "per.pt")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from facefit.regressor import decoder_from_checkpoint

    per = decoder_from_checkpoint(load_checkpoint(tmp_path / "per.pt"))
    x = torch.randn(7, 6)
    with torch.no_grad():
        (s, _), (sa, _), (sb, _) = per(x), a(x), b(x)
    w = torch.tensor([1.0, 0.5, 0.0, 0.0])
    assert torch.allclose(s, w * sa + (1 - w) * sb, atol=1e-5)
    assert load_checkpoint(tmp_path / "per.pt")["meta"]["blend"]["component_alpha"] == ["0=1", "2-3=0"]
    # a dlib decoder blends into a dlib+facenet one (it reads the first features); the
    # result takes the combined encoder, in its configuration too
    wide = Decoder(9, 4, 2, hidden=[5], init_scale=0.2)
    save_checkpoint(make_checkpoint(wide, "dlib+facenet", "h1", "m"), tmp_path / "w.pt")
    r = subprocess.run([sys.executable, script, str(tmp_path / "w.pt"), str(tmp_path / "b.pt"), "--alpha", "0.25",
                        "-o", str(tmp_path / "wb.pt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(tmp_path / "wb.pt")
    assert ck["encoder"] == "dlib+facenet" and ck["config"] == {"lr": 0.001, "encoder": "dlib+facenet"}
    assert ck["decoder_config"]["in_dim"] == 9
    r = subprocess.run([sys.executable, script, str(tmp_path / "b.pt"), str(tmp_path / "w.pt"), "--alpha", "0.25",
                        "-o", str(tmp_path / "bw.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "bw.pt").exists()
    for bad in ("7=0.5", "x=1", "1=2"):
        r = subprocess.run([sys.executable, script, str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--alpha", "0.5",
                            "--component-alpha", bad, "-o", str(tmp_path / "bad.pt")], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, bad
        assert not (tmp_path / "bad.pt").exists()
