"""dlib face-recognition ResNet: serialisation reader, parser, cache and parity with dlib."""

from __future__ import annotations

import csv
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.errors import InvalidFileError, ModelNotFoundError
from facefit.recognition.dlib_resnet import (
    DlibReader,
    DlibResNet,
    add_prev,
    load_dlib_state,
    parse_dlib_net,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FACES_DEV = SHARED / "data" / "faces-dev"


# ----------------------------------------------------------------------------- encoder
# A minimal writer of dlib's format, written from the format description, used to build
# hand-made byte streams for the reader.

def enc_int(v: int) -> bytes:
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def enc_float(m: int, e: int) -> bytes:
    return enc_int(m) + enc_int(e)


def enc_str(s: str) -> bytes:
    return enc_int(len(s)) + s.encode()


def enc_tensor(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.float32).reshape(a.shape + (1,) * (4 - a.ndim))
    return enc_int(2) + b"".join(enc_int(d) for d in a.shape) + a.astype("<f4").tobytes()


def enc_alias(dims) -> bytes:
    return enc_int(1) + b"".join(enc_int(d) for d in dims)


LEARNING_STATE = b"110" + enc_tensor(np.zeros((0, 0, 0, 0))) * 3


# ----------------------------------------------------------------------------- reader

def test_reader_primitives():
    stream = (
        b"\x01\x05"            # 5
        + b"\x02\x00\x01"      # 256
        + b"\x81\x1c"          # -28
        + b"\x01\x00"          # 0
        + b"\x00"              # 0 written with no bytes
        + b"\x03\x0a\xd7\xa3\x81\x1c"  # 0xa3d70a * 2**-28 = 0.04 (float32)
        + enc_float(0, 32000) + enc_float(0, 32001) + enc_float(0, 32002)
        + enc_float(-3, -1)
        + b"\x01\x05con_4"
        + b"10"
        + b"\x01\x02" + b"\x01\x02\x01\x01\x01\x01\x01\x03"
        + struct.pack("<6f", 1.5, -2.0, 0.25, 3.0, -0.125, 7.0)
    )
    r = DlibReader(stream)
    assert [r.read_int() for _ in range(5)] == [5, 256, -28, 0, 0]
    assert r.read_float() == pytest.approx(0.04, abs=1e-8)
    assert r.read_float() == math.inf
    assert r.read_float() == -math.inf
    assert math.isnan(r.read_float())
    assert r.read_float() == -1.5
    assert r.read_str() == "con_4"
    assert r.read_bool() is True and r.read_bool() is False
    t = r.read_tensor()
    assert t.shape == (2, 1, 1, 3) and t.dtype == np.float32
    np.testing.assert_array_equal(t.reshape(-1), [1.5, -2.0, 0.25, 3.0, -0.125, 7.0])
    assert r.at_end()


def test_reader_rejects_bad_data():
    with pytest.raises(InvalidFileError):
        DlibReader(b"\x02\x05").read_int()          # truncated integer
    with pytest.raises(InvalidFileError):
        DlibReader(b"\x01\x02\x01\x01\x01\x01\x01\x01\x01\x02" + b"\0" * 4).read_tensor()  # 2 floats, 1 given
    with pytest.raises(InvalidFileError):
        DlibReader(b"x").read_bool()
    with pytest.raises(InvalidFileError):
        DlibReader(b"\x01\x03" + b"\x01\x00" * 4).read_tensor()  # tensor version 3


def _tiny_net_bytes(conv_w: np.ndarray, conv_b: np.ndarray, fc_w: np.ndarray) -> bytes:
    """loss_metric<fc<tag<con<input>>>> in dlib's layout (wrapper = version 1 record)."""
    out_ch, in_ch, kh, kw = conv_w.shape
    head = enc_int(1) + enc_str("loss_metric_2") + b"\x03\x0a\xd7\xa3\x81\x1c" + enc_float(3, -2)
    versions = enc_int(2) + enc_int(1) + enc_int(3)
    inp = enc_str("input_rgb_image_sized") + enc_float(245, -1) + enc_float(117, 0) + enc_float(13, 3)
    inp += enc_int(150) + enc_int(150)
    con = (enc_str("con_4") + enc_tensor(np.concatenate([conv_w.ravel(), conv_b]))
           + b"".join(enc_int(v) for v in (out_ch, kh, kw, 1, 1, 1, 1))
           + enc_alias((out_ch, in_ch, kh, kw)) + enc_alias((1, out_ch, 1, 1))
           + enc_float(1, 0) * 3 + enc_float(0, 0)
           + LEARNING_STATE + enc_int(1))  # + sample expansion factor (version-3 layer)
    n_in, n_out = fc_w.shape
    fc = (enc_str("fc_2") + enc_int(n_out) + enc_int(n_in) + enc_tensor(fc_w)
          + enc_alias((n_in, n_out, 1, 1)) + enc_alias((0, 0, 0, 0)) + enc_int(1)
          + enc_float(1, 0) * 3 + enc_float(0, 0) + LEARNING_STATE)
    return head + versions + inp + con + fc


def test_parse_tiny_network():
    rng = np.random.default_rng(0)
    conv_w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(size=4).astype(np.float32)
    fc_w = rng.normal(size=(4, 2)).astype(np.float32)
    net = parse_dlib_net(_tiny_net_bytes(conv_w, conv_b, fc_w))
    assert net.loss == "loss_metric_2"
    assert net.margin == pytest.approx(0.04) and net.distance_threshold == 0.75
    assert net.input_mean == (122.5, 117.0, 104.0) and net.input_size == (150, 150)
    assert [layer.kind for layer in net.layers] == ["con_4", "wrapper", "fc_2"]
    con, _, fc = net.layers
    assert con.attrs["num_filters"] == 4 and con.attrs["kernel"] == (3, 3)
    assert con.attrs["stride"] == (1, 1) and con.attrs["padding"] == (1, 1)
    np.testing.assert_array_equal(con.params.ravel()[:108], conv_w.ravel())
    np.testing.assert_array_equal(con.params.ravel()[108:], conv_b)
    assert fc.attrs == dict(num_outputs=2, num_inputs=4, bias_mode=1)
    np.testing.assert_array_equal(fc.params.reshape(4, 2), fc_w)
    # trailing garbage and truncation are errors
    good = _tiny_net_bytes(conv_w, conv_b, fc_w)
    with pytest.raises(InvalidFileError):
        parse_dlib_net(good + b"\x01")
    with pytest.raises(InvalidFileError):
        parse_dlib_net(good[:-5])


def test_add_prev_zero_pads_at_the_end():
    a = torch.arange(1 * 2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    b = torch.full((1, 4, 2, 2), 100.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 3, 3)
    expected = torch.zeros(1, 4, 3, 3)
    expected[:, :2] += a
    expected[:, :, :2, :2] += 100.0
    assert torch.equal(out, expected)
    assert torch.equal(add_prev(b, a), expected)


# ----------------------------------------------------------------------------- weights

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("facefit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEFIT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def net(cache):
    return DlibResNet()


def test_state_cache_roundtrip(cache):
    fresh = load_dlib_state(use_cache=False)
    first = load_dlib_state()
    files = list(cache.glob("dlib_resnet-*.npz"))
    assert len(files) == 1
    cached = load_dlib_state()
    assert set(fresh) == set(cached)
    for k in fresh:
        np.testing.assert_array_equal(fresh[k], cached[k])
        np.testing.assert_array_equal(first[k], cached[k])
    # a corrupt cache file is rebuilt, not trusted
    files[0].write_bytes(b"not an npz")
    again = load_dlib_state()
    np.testing.assert_array_equal(again["fc.weight"], fresh["fc.weight"])
    assert fresh["fc.weight"].shape == (128, 256)
    np.testing.assert_allclose(fresh["input_mean"], [122.782, 117.001, 104.298], atol=1e-4)


def test_missing_weight_file(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_dlib_state(tmp_path / "nope.dat")
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello")
    with pytest.raises(InvalidFileError):
        load_dlib_state(bad, use_cache=False)


def test_module_interface(net):
    assert net.name == "dlib" and net.input_size == 150 and net.crop == "dlib_chip"
    assert net.feature_dim == 256 and net.embedding_dim == 128 and net.differentiable
    n_params = sum(p.numel() for p in net.parameters())
    # 5,614,592 in dlib's file, minus 2 x 3,552 affine values folded into the convs
    assert n_params == 5_614_592 - 2 * 3_552
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.rand(2, 3, 150, 150, requires_grad=True)
    feats = net.features(x)
    emb = net.embed(x)
    assert feats.shape == (2, 256) and emb.shape == (2, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    emb[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        net.embed(torch.rand(1, 3, 112, 112))


# ----------------------------------------------------------------------------- parity

def _photos(n_per_person: int = 3, n_people: int = 5) -> list[tuple[str, Path]]:
    rows = list(csv.DictReader(open(FACES_DEV / "labels.csv", newline="")))
    by_person: dict[str, list[Path]] = {}
    for row in rows:
        by_person.setdefault(row["identity"], []).append(FACES_DEV / row["path"])
    people = sorted(p for p, files in by_person.items() if len(files) >= n_per_person)[:n_people]
    return [(p, f) for p in people for f in sorted(by_person[p])[:n_per_person]]


def test_matches_dlib_on_real_faces(net):
    import dlib  # a dependency (dlib-bin): missing fails, no skip
    import face_recognition_models as frm

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    reference = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    chips, ref, people = [], [], []
    for person, path in _photos():
        img = dlib.load_rgb_image(str(path))
        dets = detector(img, 1)
        if not dets:
            continue
        det = max(dets, key=lambda d: d.width() * d.height())
        chip = dlib.get_face_chip(img, predictor(img, det), size=150, padding=0.25)
        chips.append(chip)
        ref.append(np.asarray(reference.compute_face_descriptor(chip), np.float32))
        people.append(person)
    assert len(chips) >= 10, "too few faces found in faces-dev"
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        ours = net.descriptor(x).numpy()
    ref = np.stack(ref)
    assert np.abs(ours - ref).max() < 1e-4
    # identity sanity: same person closer than 0.6, different people farther
    dist = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    same = np.equal.outer(people, people)
    off = ~np.eye(len(people), dtype=bool)
    assert dist[same & off].mean() < 0.5 < dist[~same].mean()


def test_channels_last_stem_pool_equals_nchw_pool():
    """features() max-pools the stem channels-last on the CPU (faster): the same numbers and
    gradients as the plain NCHW pool."""
    import torch.nn.functional as F

    from facefit.recognition.dlib_resnet import DlibResNet, dlib_input_normalize

    torch.manual_seed(0)
    net = DlibResNet(weights=False)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    x0 = torch.rand(3, 3, 150, 150)

    def plain(images):
        x = dlib_input_normalize(images, net.input_mean)
        x = F.max_pool2d(F.relu(net.stem(x)), 3, 2)
        for block in net.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))

    xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    ya, yb = net.features(xa), plain(xb)
    assert torch.equal(ya, yb)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
