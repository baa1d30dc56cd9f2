"""What the service reads of an ONNX file's bytes itself: the tensors kept in other files.

The session is made from the model file's bytes, checked against the card's sha256
(``card.read_model``). A tensor stored outside them ("external data") would be read by
onnxruntime from another file, which the sha256 does not cover, found relative to the process's
working directory (a model made from bytes has no directory of its own). ``OnnxModel`` refuses
such a model; ``external_tensors`` finds its tensors in the protobuf wire format, following only
the fields of onnx.proto that can hold a tensor (the ``onnx`` package is not a serving
dependency). Bytes that are not protobuf end the search: onnxruntime then refuses them.
"""

from __future__ import annotations

# The messages of onnx.proto that lead to a TensorProto, and the fields that do.
_MODEL, _TRAINING, _FUNCTION, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _TENSOR: {},
}
# TensorProto's name, external_data (key-value pairs, "location" among them) and data_location,
# and the data_location of a tensor kept in another file.
_NAME, _EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1
_VARINT, _FIXED64, _LENGTH, _GROUP_START, _GROUP_END, _FIXED32 = range(6)  # wire types

Span = tuple[int, int]  # a length-delimited value: where it starts and ends


class _NotProtobuf(ValueError):
    pass


def external_tensors(data: bytes) -> list[tuple[str, str]]:
    """(name, location) of each tensor of a serialized ONNX model that keeps its data in
    another file; empty for a self-contained model."""
    found: list[tuple[str, str]] = []
    view = memoryview(data)
    todo = [(_MODEL, (0, len(view)))]  # without recursion: graphs nest in attributes
    try:
        while todo:
            kind, span = todo.pop()
            name, location, external = "", "", False
            for field, value in _fields(view, span):
                if isinstance(value, int):  # a varint
                    external |= kind == _TENSOR and field == _DATA_LOCATION and value == _EXTERNAL
                elif kind == _TENSOR and field == _NAME:
                    name = _text(view, value)
                elif kind == _TENSOR and field == _EXTERNAL_DATA:
                    key, text = _entry(view, value)
                    location = text if key == "location" else location
                elif (child := _CHILDREN[kind].get(field)) is not None:
                    todo.append((child, value))
            if external:
                found.append((name, location))
    except _NotProtobuf:
        pass
    return found


def _fields(view: memoryview, span: Span) -> list[tuple[int, int | Span]]:
    """The fields of the message in ``view[span]``: (number, a varint's value or the span of a
    length-delimited value); fixed-width values and groups are skipped."""
    fields: list[tuple[int, int | Span]] = []
    pos, end = span
    groups = 0
    while pos < end:
        key, pos = _varint(view, pos, end)
        number, wire = key >> 3, key & 7
        value: int | Span | None = None
        if wire == _VARINT:
            value, pos = _varint(view, pos, end)
        elif wire == _LENGTH:
            length, pos = _varint(view, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        elif wire in (_GROUP_START, _GROUP_END):
            groups += 1 if wire == _GROUP_START else -1
        else:
            raise _NotProtobuf
        if pos > end or groups < 0:
            raise _NotProtobuf
        if value is not None and groups == 0:
            fields.append((number, value))
    return fields


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _NotProtobuf


def _text(view: memoryview, span: Span) -> str:
    return bytes(view[span[0] : span[1]]).decode("utf-8", errors="replace")


def _entry(view: memoryview, span: Span) -> tuple[str, str]:
    """A StringStringEntryProto's key (field 1) and value (field 2)."""
    parts = {
        number: _text(view, value) for number, value in _fields(view, span) if not isinstance(value, int)
    }
    return parts.get(1, ""), parts.get(2, "")
