"""A reader for the parts of Caffe's protobuf messages (``src/caffe/proto/caffe.proto``,
BVLC/caffe) that hold trained weights, written against the protobuf wire format: no
Caffe, no protobuf dependency.

Wire format (protobuf encoding spec): a message is a sequence of fields, each a varint
key ``field_number << 3 | wire_type`` followed by its value: wire type 0 = varint,
1 = 8 bytes, 2 = varint length + that many bytes (strings, sub-messages, packed
repeated numbers), 5 = 4 bytes. Types 3/4 (groups) are not used by caffe.proto.
Repeated floats come either packed (one type-2 field of little-endian float32s) or
unpacked (one type-5 field per value); both are read.

Field numbers relied on, from caffe.proto:

``NetParameter``
    1 name (string); 100 ``layer`` (repeated LayerParameter, the current layout);
    2 ``layers`` (repeated V1LayerParameter, the layout of files written before 2015,
    e.g. the original ``bvlc_alexnet.caffemodel``).
``LayerParameter``
    1 name; 2 type (string: "Convolution", "LRN", "Pooling", "InnerProduct", ...);
    7 blobs (repeated BlobProto); 106 convolution_param; 118 lrn_param; 121 pooling_param.
``V1LayerParameter``
    4 name; 5 type (enum LayerType: CONVOLUTION=4, INNER_PRODUCT=14, LRN=15, POOLING=17,
    RELU=18, DROPOUT=6, DATA=5, SOFTMAX_LOSS=21, ...); 6 blobs; 10 convolution_param;
    18 lrn_param; 19 pooling_param.
``BlobProto``
    7 shape (BlobShape); 5 data (repeated float, packed); 8 double_data (repeated
    double, packed); legacy 4-D dimensions 1 num, 2 channels, 3 height, 4 width.
``BlobShape``
    1 dim (repeated int64, packed).
``ConvolutionParameter``
    1 num_output; 3 pad; 4 kernel_size; 5 group (default 1); 6 stride.
``LRNParameter``
    1 local_size (default 5); 2 alpha (float, default 1); 3 beta (float, default 0.75);
    4 norm_region (0 ACROSS_CHANNELS, 1 WITHIN_CHANNEL); 5 k (float, default 1).
``PoolingParameter``
    1 pool (0 MAX, 1 AVE, 2 STOCHASTIC); 2 kernel_size; 3 stride; 4 pad.

A legacy BlobProto has only num/channels/height/width: its shape is those four
(a Caffe InnerProduct weight is stored as (1, 1, out, in) in that layout).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values -> the type strings of the current layout.
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 6: "Dropout",
            5: "Data", 12: "ImageData", 29: "MemoryData", 21: "SoftmaxWithLoss", 20: "Softmax",
            1: "Accuracy", 22: "Split", 3: "Concat", 8: "Flatten", 24: "WindowData"}


class ProtoError(ValueError):
    """The bytes are not a well-formed message of the expected kind (one line)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError(f"varint longer than 10 bytes at byte {pos}")


def fields(buf: memoryview, base: int = 0):
    """Yield (field number, wire type, value) of one message; value is an int (varint),
    bytes-like (fixed32/fixed64 raw bytes) or a memoryview (length-delimited)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError(f"field number 0 at byte {base + pos}")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == FIXED64:
            if pos + 8 > end:
                raise ProtoError(f"truncated 8-byte field {number} at byte {base + pos}")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == LENGTH:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProtoError(f"truncated field {number}: {length} bytes announced at byte {base + pos}, "
                                 f"{end - pos} left")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == FIXED32:
            if pos + 4 > end:
                raise ProtoError(f"truncated 4-byte field {number} at byte {base + pos}")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire} (field {number}) at byte {base + pos}")
        yield number, wire, value


def _packed_varints(value) -> list[int]:
    out, pos, view = [], 0, memoryview(value)
    while pos < len(view):
        v, pos = _varint(view, pos)
        out.append(v)
    return out


def _float(value) -> float:
    return struct.unpack("<f", bytes(value))[0]


@dataclass
class Blob:
    shape: tuple[int, ...]
    data: np.ndarray          # float32, flat


def parse_blob(buf: memoryview) -> Blob:
    shape: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    chunks: list[np.ndarray] = []
    singles: list[float] = []
    for number, wire, value in fields(buf):
        if number == 7 and wire == LENGTH:                       # BlobShape
            for n2, w2, v2 in fields(value):
                if n2 == 1:
                    shape.extend(_packed_varints(v2) if w2 == LENGTH else [v2])
        elif number == 5 and wire == LENGTH:                     # data, packed floats
            if len(value) % 4:
                raise ProtoError("packed float data whose length is not a multiple of 4")
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif number == 5 and wire == FIXED32:                    # data, unpacked floats
            singles.append(_float(value))
        elif number == 8 and wire == LENGTH:                     # double_data, packed
            chunks.append(np.frombuffer(value, dtype="<f8").astype(np.float32))
        elif number == 8 and wire == FIXED64:
            singles.append(struct.unpack("<d", bytes(value))[0])
        elif number in legacy and wire == VARINT:
            legacy[number] = value
    if singles:
        chunks.append(np.asarray(singles, dtype=np.float32))
    data = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not shape and any(legacy.values()):
        shape = [legacy[1], legacy[2], legacy[3], legacy[4]]
    return Blob(tuple(int(d) for d in shape), data)


@dataclass
class Layer:
    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)
    params: dict[str, dict[int, list]] = field(default_factory=dict)   # "convolution"/"lrn"/"pooling" -> field -> values

    def param(self, kind: str, number: int, default=None):
        values = self.params.get(kind, {}).get(number)
        return values[-1] if values else default


def _param_fields(buf) -> dict[int, list]:
    out: dict[int, list] = {}
    for number, wire, value in fields(buf):
        if wire == VARINT:
            out.setdefault(number, []).append(value)
        elif wire == FIXED32:
            out.setdefault(number, []).append(_float(value))
        elif wire == LENGTH:                                     # packed repeated uint32 (pad, kernel_size, stride)
            out.setdefault(number, []).extend(_packed_varints(value))
    return out


# (name, type, blobs, convolution_param, lrn_param, pooling_param) field numbers of each layout.
_LAYOUTS = {"layer": (1, 2, 7, 106, 118, 121), "layers": (4, 5, 6, 10, 18, 19)}


def parse_layer(buf: memoryview, layout: str) -> Layer:
    f_name, f_type, f_blobs, f_conv, f_lrn, f_pool = _LAYOUTS[layout]
    name, type_, blobs, params = "", "", [], {}
    for number, wire, value in fields(buf):
        if number == f_name and wire == LENGTH:
            name = bytes(value).decode("utf-8", "replace")
        elif number == f_type:
            if layout == "layer" and wire == LENGTH:
                type_ = bytes(value).decode("utf-8", "replace")
            elif layout == "layers" and wire == VARINT:
                type_ = V1_TYPES.get(value, f"V1 type {value}")
        elif number == f_blobs and wire == LENGTH:
            blobs.append(parse_blob(value))
        elif wire == LENGTH and number in (f_conv, f_lrn, f_pool):
            kind = {f_conv: "convolution", f_lrn: "lrn", f_pool: "pooling"}[number]
            params[kind] = _param_fields(value)
    return Layer(name, type_, blobs, params)


def parse_net(data: bytes | memoryview) -> tuple[str, list[Layer]]:
    """(network name, layers in file order) of a serialised NetParameter, either layout.

    Raises ProtoError for bytes that are not one.
    """
    buf = memoryview(data)
    name, current, old = "", [], []
    for number, wire, value in fields(buf):
        if number == 1 and wire == LENGTH:
            name = bytes(value).decode("utf-8", "replace")
        elif number == 100 and wire == LENGTH:
            current.append(parse_layer(value, "layer"))
        elif number == 2 and wire == LENGTH:
            old.append(parse_layer(value, "layers"))
    # Caffe's upgrade path reads one layout or the other, never a mixture.
    return name, current if current else old


def parse_blob_file(data: bytes) -> Blob:
    """A serialised BlobProto (Caffe's ``.binaryproto`` mean file)."""
    return parse_blob(memoryview(data))
