"""The contract's shared input shapes (see the package comment of common.proto).

One definition for every servicer, so that an id or a label key valid for one
service is valid for all of them.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np

from are_sdk._proto.are.v1 import common_pb2

__all__ = ["ID", "KEY", "vector_values"]

# Workflow, task, pool, namespace, agent, model and worker names, request ids.
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Keys of labels and metadata maps.
KEY = re.compile(r"[A-Za-z0-9._:/-]{1,128}")

_PACKED_VALUES_TAG = 0x0A  # field 1, length-delimited
_VARINT_MAX_SHIFT = 35  # a length varint of at most 5 bytes


def vector_values(message: common_pb2.Vector) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A ``Vector``'s components as a read-only float32 array, without a Python float each.

    proto3 serialises ``repeated float values = 1`` packed: the tag byte
    0x0A, the byte length as a varint, then the little-endian floats. Taking
    them as one slice of the wire form costs one copy instead of a Python
    float per component (embeddings have 256 to 1,024 of them); any other
    shape, or a big-endian host, reads ``values`` instead.
    """
    raw = message.SerializeToString()
    if raw and raw[0] == _PACKED_VALUES_TAG and sys.byteorder == "little":
        length, shift, offset = 0, 0, 1
        while offset < len(raw) and shift < _VARINT_MAX_SHIFT:
            byte = raw[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if length % 4 == 0 and offset + length == len(raw):
            return np.frombuffer(raw, dtype=np.float32, offset=offset)
    return np.asarray(message.values, dtype=np.float32)
