"""The V2 request parser alone: every malformed body is a BadRequest with a reason, never another exception."""

from __future__ import annotations

import base64
import json
import struct
from collections import Counter

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


def _pack(images: list[bytes]) -> bytes:
    """The binary tensor extension's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(image)) + image for image in images)


@st.composite
def _near_valid_requests(draw: st.DrawFn) -> tuple[object, bytes, int | None]:
    """(header, body, declared header length): a well-formed request in either encoding, each part of it dropped
    or replaced by junk one time in eight.

    Random JSON is never a valid request (400 examples of it: not one accepted), so the parts start valid and are
    spoilt one at a time: about a third of the bodies are accepted, and what the parser makes of them is checked.
    """

    def spoilt() -> bool:  # shrinks towards False: a failing example shrinks towards the valid request
        return draw(st.integers(0, 7)) == 7

    def part(valid: object, junk: st.SearchStrategy[object] = _json) -> object:
        return draw(junk) if spoilt() else valid

    images = [] if spoilt() else draw(st.lists(st.binary(max_size=12), min_size=1, max_size=3))
    tail = _pack(images)
    binary_extension = draw(st.booleans())
    binary = part(tail, st.binary(max_size=40)) if binary_extension else part(b"", st.binary(max_size=40))
    spec = {
        "name": part("image"),
        "datatype": part("BYTES", st.sampled_from(["FP32", "bytes"]) | _json),
        "shape": part([len(images)], st.lists(st.integers(-2, 4) | _json, max_size=2) | _json),
    }
    if binary_extension:
        spec["parameters"] = part({"binary_data_size": part(len(binary), st.integers(-1, 60) | _json)})
    if not binary_extension or spoilt():
        spec["data"] = part([base64.b64encode(image).decode() for image in images], st.lists(st.text(max_size=12)))
    spec = {name: value for name, value in spec.items() if not spoilt()}
    header = {"inputs": part([spec], st.just([spec, spec]) | _json)}
    if draw(st.booleans()):
        header["id"] = draw(st.text(max_size=8) | _json)
    header = part(header)
    body = json.dumps(header).encode()
    declared = part(len(body) if binary else None, st.none() | st.integers(-5, 500))
    return header, body + binary, declared  # type: ignore[operator]


def test_fuzzed_requests_are_parsed_exactly_or_refused_with_a_reason() -> None:
    """Every body is either refused with a BadRequest and a message, or accepted with exactly the images the
    request carried: as many as its shape says, base64 data decoded, a binary tail that re-packs to itself, and
    its id. Both outcomes must occur often, or the accepted branch would check nothing."""
    outcomes: Counter[str] = Counter()

    @settings(max_examples=400, deadline=None)
    @given(_near_valid_requests())
    def check(request: tuple[object, bytes, int | None]) -> None:
        header, body, declared = request
        try:
            parsed = parse_infer_request(body, declared)
        except BadRequest as exc:
            assert str(exc)
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        assert isinstance(header, dict) and isinstance(header["inputs"], list) and len(header["inputs"]) == 1
        spec = header["inputs"][0]
        assert spec["datatype"] == "BYTES"
        assert parsed.images and all(isinstance(image, bytes) for image in parsed.images)
        assert spec["shape"] == [len(parsed.images)]  # as many as the shape says
        assert parsed.request_id == (header["id"] if isinstance(header.get("id"), str) else None)
        if isinstance(spec.get("parameters"), dict) and spec["parameters"].get("binary_data_size") is not None:
            assert declared is not None and _pack(parsed.images) == body[declared:]
            assert spec["parameters"]["binary_data_size"] == len(body) - declared
        else:
            assert parsed.images == [base64.b64decode(value, validate=True) for value in spec["data"]]

    check()
    assert outcomes["accepted"] >= 40 and outcomes["refused"] >= 40, outcomes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.none() | st.integers(-5, 300))
def test_random_bytes_are_refused_with_a_reason(body: bytes, declared: int | None) -> None:
    """Not one random body is a request: each is refused with a BadRequest that says why (never accepted, never
    another exception)."""
    with pytest.raises(BadRequest) as refused:
        parse_infer_request(body, declared)
    assert str(refused.value)


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
