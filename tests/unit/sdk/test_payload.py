"""Payload encoding: JSON by default, bytes and RawPayload as they are."""

from __future__ import annotations

import pytest

from are_sdk import BlobReference, RawPayload
from are_sdk._payload import decode_payload, encode_payload, is_json_content_type
from are_sdk._proto.are.v1 import common_pb2


def test_values_are_compact_json_by_default() -> None:
    payload = encode_payload({"topic": "tides", "n": [1, 2.5, None], "ok": True})
    assert payload.content_type == "application/json"
    assert payload.data == b'{"topic":"tides","n":[1,2.5,null],"ok":true}'
    assert decode_payload(payload) == {"topic": "tides", "n": [1, 2.5, None], "ok": True}


def test_unicode_stays_unescaped() -> None:
    payload = encode_payload("marée")
    assert payload.data == '"marée"'.encode()
    assert decode_payload(payload) == "marée"


def test_bytes_are_sent_raw_as_octet_stream() -> None:
    payload = encode_payload(b"\x00\x01")
    assert (payload.data, payload.content_type) == (b"\x00\x01", "application/octet-stream")
    assert decode_payload(payload) == RawPayload(b"\x00\x01", "application/octet-stream")


def test_raw_payload_and_text_content_type() -> None:
    payload = encode_payload(RawPayload(b"hello", "text/plain"))
    assert (payload.data, payload.content_type) == (b"hello", "text/plain")
    text = encode_payload("hello", "text/plain; charset=utf-8")
    assert text.data == b"hello"
    decoded = decode_payload(text)
    assert isinstance(decoded, RawPayload)
    assert decoded.text() == "hello"


def test_json_content_types() -> None:
    assert is_json_content_type("")
    assert is_json_content_type("application/json; charset=utf-8")
    assert is_json_content_type("application/vnd.are+json")
    assert not is_json_content_type("text/plain")


def test_empty_and_unset_payloads_decode_to_none() -> None:
    assert decode_payload(None) is None
    assert decode_payload(common_pb2.Payload()) is None
    assert decode_payload(common_pb2.Payload(data=b"")) is None


def test_unparsable_json_is_returned_raw_not_raised() -> None:
    decoded = decode_payload(common_pb2.Payload(data=b"{nope", content_type="application/json"))
    assert decoded == RawPayload(b"{nope", "application/json")


def test_blob_references_are_surfaced() -> None:
    payload = common_pb2.Payload(
        blob=common_pb2.BlobRef(sha256="ab" * 32, size_bytes=9, content_type="text/csv")
    )
    assert decode_payload(payload) == BlobReference("ab" * 32, 9, "text/csv")


def test_unserialisable_values_say_what_to_do() -> None:
    with pytest.raises(TypeError, match="RawPayload"):
        encode_payload({"when": object()})
    with pytest.raises(TypeError):
        encode_payload(float("nan"))
