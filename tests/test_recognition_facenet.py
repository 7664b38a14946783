"""FaceNet wrapper with user-supplied (VGGFace2-shaped) state dicts: offline weight loading,
interface and gradients (random weights). The default CASIA-WebFace port is tested in
test_recognition_facenet_graph.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facefit.errors import InvalidFileError, ModelNotFoundError
from facefit.recognition.facenet import (
    FACENET_VGGFACE2_FILE,
    FaceNet,
    facenet_standardize,
    resolve_facenet_weights,
)

# facenet_pytorch is installed by scripts/setup.sh: a missing one fails the tests (no skip)
assert importlib.util.find_spec("facenet_pytorch") is not None, "facenet_pytorch not installed (scripts/setup.sh)"


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A random VGGFace2-shaped state dict (with the classifier keys the release has)."""
    torch.manual_seed(0)
    net = FaceNet(weights=False).net
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = dict(net.state_dict())
    state["logits.weight"] = torch.randn(8631, 512)
    state["logits.bias"] = torch.randn(8631)
    path = tmp_path_factory.mktemp("facenet") / FACENET_VGGFACE2_FILE
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def model(random_weights) -> FaceNet:
    return FaceNet(weights=random_weights)


def test_loads_state_dict(model, random_weights):
    saved = torch.load(random_weights, weights_only=True)
    own = model.net.state_dict()
    assert not any(k.startswith("logits") for k in own)
    for k, v in own.items():
        assert torch.equal(v, saved[k]), k
    assert model.name == "facenet" and model.input_size == 160 and model.crop == "facenet_160"
    assert model.feature_dim == 512 and model.embedding_dim == 512 and model.differentiable
    # photo caches of features are keyed by the weights too (not only the name "facenet")
    from facefit.recognition.base import file_sha256

    assert model.cache_tag.startswith("state-" + file_sha256(random_weights)[:16])


def test_outputs_and_gradients(model):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 160, 160, requires_grad=True)
    emb = model.embed(x)
    with torch.no_grad():
        feats = model.features(x)
        reference = model.net(facenet_standardize(x))
    assert feats.shape == (2, 512) and emb.shape == (2, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(emb, feats / feats.norm(dim=1, keepdim=True))
    # features = facenet_pytorch's embedding before its L2 normalisation
    torch.testing.assert_close(emb.detach(), reference)
    assert not model.training and not model.net.training
    emb[:, :8].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_weights_from_env(monkeypatch, random_weights):
    monkeypatch.setenv("FACEFIT_FACENET_WEIGHTS", str(random_weights))
    assert resolve_facenet_weights() == random_weights


def test_weights_from_torch_cache(monkeypatch, tmp_path, random_weights):
    monkeypatch.delenv("FACEFIT_FACENET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "checkpoints" / FACENET_VGGFACE2_FILE
    with pytest.raises(ModelNotFoundError) as err:
        resolve_facenet_weights()
    assert str(expected) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelNotFoundError):
        FaceNet(weights="vggface2")  # the default, FaceNet(), is the CASIA-WebFace model
    expected.parent.mkdir(parents=True)
    expected.symlink_to(random_weights)
    assert resolve_facenet_weights() == expected
    net = FaceNet(weights="vggface2")
    assert net.weights == str(expected)
    torch.testing.assert_close(net.net.last_bn.bias, torch.load(random_weights, weights_only=True)["last_bn.bias"])


def test_bad_weight_files(tmp_path):
    with pytest.raises(ModelNotFoundError):
        FaceNet(weights=tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(InvalidFileError):
        FaceNet(weights=wrong)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": torch.zeros(1), "obj": Path("/")}, unsafe)  # refused by weights_only
    with pytest.raises(InvalidFileError):
        FaceNet(weights=unsafe)


def test_imports_without_requests_and_tqdm():
    """facenet_pytorch imports requests/tqdm only to download; facefit works without them."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('requests', 'tqdm'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "importlib.util.find_spec = (lambda f: lambda n, *a: None if n.split('.')[0] in ('requests', 'tqdm') else f(n, *a))(importlib.util.find_spec)\n"
        "from facefit.recognition.facenet import import_inception_resnet_v1\n"
        "cls = import_inception_resnet_v1()\n"
        "assert cls.__name__ == 'InceptionResnetV1'\n"
        "assert 'requests' not in sys.modules and 'tqdm' not in sys.modules\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
