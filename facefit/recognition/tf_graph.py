"""Read a frozen TensorFlow ``GraphDef`` (``.pb``) without TensorFlow.

A frozen graph is a protobuf message. TensorFlow's generated classes (``graph_pb2``) are
not installed, so the few message types needed (``GraphDef``, ``NodeDef``, ``AttrValue``,
``TensorProto``, ``TensorShapeProto``) are declared here as a protobuf descriptor with the
field numbers of TensorFlow's ``.proto`` files, and parsed by ``google.protobuf`` (which
onnx already depends on). Fields facefit does not need are left out; protobuf skips them.

:func:`read_graph_def` returns plain Python objects: a list of :class:`TFNode` with their
attributes decoded (strings, ints, floats, bools, dtypes, shapes, lists, and ``tensor``
attributes as numpy arrays).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import InvalidFileError

#: TensorFlow ``DataType`` enum values -> numpy dtypes (the ones frozen graphs use).
TF_DTYPES = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}

# (message, [(field name, number, type, label, message type name or None)])
_OPT, _REP = 1, 3
_T = {"double": 1, "float": 2, "int64": 3, "int32": 5, "bool": 8, "string": 9, "message": 11,
      "bytes": 12, "enum_as_int": 5}
_MESSAGES = [
    ("Dim", [("size", 1, "int64", _OPT, None), ("name", 2, "string", _OPT, None)]),
    ("TensorShapeProto", [("dim", 2, "message", _REP, "Dim"), ("unknown_rank", 3, "bool", _OPT, None)]),
    ("TensorProto", [
        ("dtype", 1, "enum_as_int", _OPT, None),
        ("tensor_shape", 2, "message", _OPT, "TensorShapeProto"),
        ("tensor_content", 4, "bytes", _OPT, None),
        ("float_val", 5, "float", _REP, None),
        ("double_val", 6, "double", _REP, None),
        ("int_val", 7, "int32", _REP, None),
        ("string_val", 8, "bytes", _REP, None),
        ("int64_val", 10, "int64", _REP, None),
        ("bool_val", 11, "bool", _REP, None),
        ("half_val", 13, "int32", _REP, None),
    ]),
    ("ListValue", [
        ("s", 2, "bytes", _REP, None),
        ("i", 3, "int64", _REP, None),
        ("f", 4, "float", _REP, None),
        ("b", 5, "bool", _REP, None),
        ("type", 6, "enum_as_int", _REP, None),
        ("shape", 7, "message", _REP, "TensorShapeProto"),
        ("tensor", 8, "message", _REP, "TensorProto"),
    ]),
    ("AttrValue", [
        ("list", 1, "message", _OPT, "ListValue"),
        ("s", 2, "bytes", _OPT, None),
        ("i", 3, "int64", _OPT, None),
        ("f", 4, "float", _OPT, None),
        ("b", 5, "bool", _OPT, None),
        ("type", 6, "enum_as_int", _OPT, None),
        ("shape", 7, "message", _OPT, "TensorShapeProto"),
        ("tensor", 8, "message", _OPT, "TensorProto"),
    ]),
    ("AttrEntry", [("key", 1, "string", _OPT, None), ("value", 2, "message", _OPT, "AttrValue")]),
    ("NodeDef", [
        ("name", 1, "string", _OPT, None),
        ("op", 2, "string", _OPT, None),
        ("input", 3, "string", _REP, None),
        ("device", 4, "string", _OPT, None),
        ("attr", 5, "message", _REP, "AttrEntry"),  # map<string, AttrValue> on the wire
    ]),
    ("GraphDef", [("node", 1, "message", _REP, "NodeDef")]),
]
_PACKAGE = "facefit_tf_subset"


@lru_cache(maxsize=1)
def _graph_def_class():
    """The ``GraphDef`` message class, built once from the descriptor above."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="facefit_tf_subset.proto", package=_PACKAGE,
                                             syntax="proto3")
    for msg_name, fields in _MESSAGES:
        msg = fdp.message_type.add(name=msg_name)
        if msg_name == "AttrValue":  # its fields form TensorFlow's `oneof value`
            msg.oneof_decl.add(name="value")
        for name, number, kind, label, type_name in fields:
            f = msg.field.add(name=name, number=number, type=_T[kind], label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if msg_name == "AttrValue":
                f.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.GraphDef"))


@dataclass
class TFNode:
    """One node of a graph: ``name``, ``op``, ``inputs`` (names, ``"^x"`` = control input,
    ``"x:1"`` = second output of x) and decoded ``attrs``."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)


def _shape(msg) -> tuple[int, ...] | None:
    return None if msg.unknown_rank else tuple(int(d.size) for d in msg.dim)


def tensor_to_numpy(msg, where: str = "tensor") -> np.ndarray:
    """Decode a ``TensorProto`` message into a numpy array (a copy).

    Raises:
        InvalidFileError: unsupported dtype or a size that does not match the shape.
    """
    dtype = TF_DTYPES.get(int(msg.dtype))
    if dtype is None:
        raise InvalidFileError(f"{where}: unsupported tensor dtype {int(msg.dtype)}")
    shape = _shape(msg.tensor_shape) or ()
    count = int(np.prod(shape, dtype=np.int64))
    if msg.tensor_content:
        values = np.frombuffer(msg.tensor_content, dtype=dtype)
    else:
        if dtype == np.float16:
            raw = np.asarray(msg.half_val, dtype=np.uint16).view(np.float16)
        else:
            source = {np.dtype("<f4"): msg.float_val, np.dtype("<f8"): msg.double_val,
                      np.dtype("<i8"): msg.int64_val, np.dtype("?"): msg.bool_val}.get(dtype, msg.int_val)
            raw = np.asarray(list(source), dtype=dtype)
        if raw.size == 1 and count != 1:  # one value fills the tensor
            raw = np.full(count, raw[0], dtype=dtype)
        values = raw
    if values.size != count:
        raise InvalidFileError(f"{where}: {values.size} values for shape {shape}")
    return values.reshape(shape).copy()


def _attr_value(v, where: str):
    kind = v.WhichOneof("value")
    if kind == "tensor":
        return tensor_to_numpy(v.tensor, where)
    if kind == "shape":
        return _shape(v.shape)
    if kind == "list":
        lv = v.list
        if lv.shape:
            return [_shape(s) for s in lv.shape]
        if lv.tensor:
            return [tensor_to_numpy(t, where) for t in lv.tensor]
        for name in ("s", "i", "f", "b", "type"):
            values = list(getattr(lv, name))
            if values:
                return [x.decode(errors="replace") if isinstance(x, bytes) else x for x in values]
        return []
    if kind == "s":
        return v.s.decode(errors="replace")
    if kind in ("i", "f", "b", "type"):
        return getattr(v, kind)
    return None


def read_graph_def(path: str | os.PathLike | None = None, data: bytes | None = None) -> list[TFNode]:
    """Parse a frozen TensorFlow ``GraphDef`` file into :class:`TFNode` s (graph order).

    Args:
        path: the ``.pb`` file (or pass ``data``).
        data: its bytes.
    Returns:
        The nodes; ``tensor`` attributes (``Const`` values) are numpy arrays.
    Raises:
        InvalidFileError: unreadable or not a GraphDef.
    """
    where = str(path) if path is not None else "GraphDef"
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidFileError(f"{where}: cannot read ({exc.strerror or exc})") from exc
    graph = _graph_def_class()()
    try:
        graph.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise InvalidFileError(f"{where}: not a TensorFlow GraphDef ({type(exc).__name__})") from exc
    nodes = []
    for n in graph.node:
        attrs = {e.key: _attr_value(e.value, f"{where}: node {n.name} attr {e.key}") for e in n.attr}
        nodes.append(TFNode(name=n.name, op=n.op, inputs=list(n.input), attrs=attrs))
    if not nodes or any(not n.op for n in nodes):
        raise InvalidFileError(f"{where}: not a TensorFlow GraphDef (no nodes)")
    return nodes
