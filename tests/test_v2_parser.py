"""The V2 request parser alone: every malformed body is a BadRequest with a reason, never another exception."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.serving.v2 import BadRequest, parse_infer_request

IMAGE = b"\xff\xd8 not really a jpeg, the parser does not decode"


def _request(**spec: object) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], **spec}]}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_request(data=[base64.b64encode(IMAGE).decode()], parameters=[1]), "parameters must be an object"),
        (_request(data=[base64.b64encode(IMAGE).decode()], parameters="x"), "parameters must be an object"),
        (_request(shape=[True], data=["aa=="]), "shape must be"),
        (_request(data=5), "data must be a list"),
        (_request(data=[7]), "base64 strings"),
        (_request(parameters={"binary_data_size": True}), "binary_data_size"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_probes_that_answered_500_now_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(body, None)


def test_the_binary_extension_and_base64_give_the_same_images() -> None:
    blob = struct.pack("<I", len(IMAGE)) + IMAGE
    header = _request(parameters={"binary_data_size": len(blob)})
    assert parse_infer_request(header + blob, len(header)).images == [IMAGE]
    assert parse_infer_request(_request(data=[base64.b64encode(IMAGE).decode()]), None).images == [IMAGE]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_spec = st.fixed_dictionaries(
    {},
    optional={
        "name": _json,
        "datatype": st.sampled_from(["BYTES", "FP32"]) | _json,
        "shape": st.lists(st.integers(-2, 3) | _json, max_size=2) | _json,
        "data": st.lists(st.text(max_size=12) | _json, max_size=3) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 40) | _json}) | _json,
    },
)


@settings(max_examples=400, deadline=None)
@given(
    header=st.fixed_dictionaries({}, optional={"inputs": st.lists(_spec, max_size=2) | _json, "id": _json}) | _json,
    binary=st.binary(max_size=40),
    declared=st.none() | st.integers(-5, 500),
)
def test_fuzzed_requests_are_parsed_or_refused_with_a_reason(
    header: object, binary: bytes, declared: int | None
) -> None:
    body = json.dumps(header).encode()
    length = len(body) if declared is None and binary else declared
    try:
        parsed = parse_infer_request(body + binary, length)
    except BadRequest as exc:
        assert str(exc)
        return
    # Accepted: the images are exactly what the request carried, as many as its shape says.
    assert isinstance(header, dict) and parsed.images and all(isinstance(image, bytes) for image in parsed.images)
    assert parsed.request_id == (header["id"] if isinstance(header.get("id"), str) else None)
    spec = header["inputs"][0]
    if isinstance(spec["shape"][0], int) and spec["shape"][0] >= 0:
        assert len(parsed.images) == spec["shape"][0]
    tail = (body + binary)[length:] if length else b""
    if "binary_data_size" in spec.get("parameters", {}):
        assert b"".join(struct.pack("<I", len(i)) + i for i in parsed.images) == tail
    else:
        assert len(parsed.images) == len(spec["data"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.none() | st.integers(-5, 300))
def test_random_bytes_are_refused_with_a_reason(body: bytes, declared: int | None) -> None:
    try:
        parse_infer_request(body, declared)
    except BadRequest as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(
    images=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4),
    binary=st.booleans(),
    request_id=st.none() | st.text(max_size=12),
)
def test_valid_requests_round_trip_their_images(images: list[bytes], binary: bool, request_id: str | None) -> None:
    """Every well-formed request, in either encoding, gives back exactly its images, in order, and its id."""
    spec: dict[str, object] = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    tail = b"".join(struct.pack("<I", len(i)) + i for i in images) if binary else b""
    if binary:
        spec["parameters"] = {"binary_data_size": len(tail)}
    else:
        spec["data"] = [base64.b64encode(i).decode() for i in images]
    header = {"inputs": [spec]} | ({"id": request_id} if request_id is not None else {})
    body = json.dumps(header).encode()
    parsed = parse_infer_request(body + tail, len(body) if binary else None)
    assert parsed.images == images and parsed.request_id == request_id
