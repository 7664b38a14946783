"""Name-based registry of recognition networks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from facefit.errors import FacefitError, ModelNotFoundError
from facefit.recognition import (
    CROPS,
    DEFAULT_NET,
    DlibResNet,
    RecognitionNet,
    available_nets,
    get_net,
    register_net,
    unregister_net,
)


class TinyNet(RecognitionNet):
    """A user-defined network: mean colour -> 3-D features."""

    name = "tiny"
    input_size = 8
    crop = "arcface_112"
    feature_dim = 3
    embedding_dim = 3

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.freeze()

    def features(self, images):
        return images.mean(dim=(2, 3)) * self.scale

    def embed(self, images):
        return self.normalize(self.features(images))


@pytest.fixture
def tiny():
    register_net("tiny", TinyNet)
    yield
    unregister_net("tiny")


def test_builtin_names():
    names = available_nets()
    assert {"dlib", "facenet", "sface"} <= set(names)
    assert DEFAULT_NET == "dlib"


def test_unknown_name_lists_known():
    with pytest.raises(FacefitError) as err:
        get_net("vggface")
    msg = str(err.value)
    assert "vggface" in msg and all(n in msg for n in ("dlib", "facenet", "sface"))


def test_user_network(tiny):
    assert "tiny" in available_nets()
    a = get_net("tiny")
    assert isinstance(a, TinyNet) and get_net("tiny") is a
    b = get_net("tiny", scale=2.0)
    assert b is not a and float(b.scale) == 2.0
    assert get_net("tiny", device="cpu") is not a  # cached per device too
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(b.features(x), 2.0 * a.features(x))
    assert not a.training
    with pytest.raises(FacefitError):
        register_net("tiny", TinyNet)
    register_net("tiny", lambda **kw: TinyNet(scale=3.0, **kw), replace=True)
    assert get_net("tiny") is not a and float(get_net("tiny").scale) == 3.0


def test_factory_must_return_a_recognition_net():
    register_net("broken", lambda: torch.nn.Linear(2, 2))
    try:
        with pytest.raises(FacefitError):
            get_net("broken")
    finally:
        unregister_net("broken")
    assert "broken" not in available_nets()


def test_default_is_dlib_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEFIT_CACHE", str(tmp_path))
    net = get_net()
    assert isinstance(net, DlibResNet) and get_net("dlib") is net
    assert net.crop in CROPS and net.input_size == 150


def test_missing_facenet_weights_is_a_user_error(monkeypatch, tmp_path):
    assert importlib.util.find_spec("facenet_pytorch") is not None  # installed by scripts/setup.sh
    monkeypatch.delenv("FACEFIT_FACENET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError):
        get_net("facenet", weights="vggface2")  # the default "facenet" needs no download
