"""The sidecar's shared input readers."""

from __future__ import annotations

import struct

import numpy as np

from are_sdk._proto.are.v1 import common_pb2
from sidecar._conventions import vector_values


def test_vector_values_reads_the_packed_wire_form() -> None:
    values = [0.5, -1.25, 3.0e-7, float("inf"), 0.0] * 60  # a length varint of two bytes
    message = common_pb2.Vector(values=values)
    read = vector_values(message)
    assert read.dtype == np.float32
    assert read.tolist() == np.asarray(values, dtype=np.float32).tolist()


def test_vector_values_of_unpacked_and_empty_vectors() -> None:
    # A sender may write each float as its own field (legal proto3): the parser packs it again.
    unpacked = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.0, 2.0, 3.0))
    assert vector_values(common_pb2.Vector.FromString(unpacked)).tolist() == [1.0, 2.0, 3.0]
    assert vector_values(common_pb2.Vector()).size == 0
