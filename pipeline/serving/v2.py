"""The Open Inference Protocol (KServe V2) over REST: parsing infer requests, building responses (``grpc_v2``
turns the same answers into the gRPC messages).

Images travel as one input of datatype ``BYTES``. Two encodings are accepted, as standard V2 clients send them:
- JSON only: ``"data"`` holds base64 strings (JSON cannot carry raw bytes);
- the binary tensor extension (what ``tritonclient.http`` sends by default): the body starts with a JSON header
  of ``Inference-Header-Content-Length`` bytes, the input's ``parameters.binary_data_size`` bytes follow, each
  element a 4-byte little-endian length and then the encoded image.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from common.errors import InputError

IMAGE_INPUT = "image"


class BadRequest(InputError):
    """The request is malformed; the message says how (answered with 400)."""


@dataclass(frozen=True)
class InferRequest:
    request_id: str | None
    images: list[bytes]


def split_bytes_tensor(blob: bytes, count: int | None) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise BadRequest("binary BYTES tensor ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise BadRequest("binary BYTES tensor element runs past the end of the data")
        items.append(blob[offset : offset + length])
        offset += length
    if count is not None and len(items) != count:
        raise BadRequest(f"input shape says {count} images but the binary data holds {len(items)}")
    return items


def _decode_json_element(value: Any, index: int) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"image {index}: BYTES data in JSON must be base64 strings")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index}: not valid base64") from None


def _is_count(value: object) -> bool:
    """A JSON integer >= 0 (JSON's true and false are Python ints too, and are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a V2 infer request body (JSON, or JSON header + binary data) into the encoded images."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
    header_bytes, binary = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    try:
        header = json.loads(header_bytes)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested brackets: json.loads gives up; so do we, politely
        raise BadRequest("request JSON is nested too deeply") from None
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"expected exactly one input, {IMAGE_INPUT!r} of datatype BYTES")
    spec = inputs[0]
    if spec.get("datatype") != "BYTES":
        raise BadRequest(f"input {spec.get('name')!r} has datatype {spec.get('datatype')!r}; images are BYTES")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and _is_count(shape[0])):
        raise BadRequest(f"input shape must be [number of images], got {shape!r}"[:300])
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"input parameters must be an object, got {type(parameters).__name__}")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_count(size) or size != len(binary):
            raise BadRequest(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the header")
        images = split_bytes_tensor(binary, shape[0])
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise BadRequest("input data must be a list of base64 strings (or use the binary tensor extension)")
        if len(data) != shape[0]:
            raise BadRequest(f"input shape says {shape[0]} images but data holds {len(data)}")
        images = [_decode_json_element(value, i) for i, value in enumerate(data)]
    if not images:
        raise BadRequest("no images in the request")
    request_id = header.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, images)


def server_metadata() -> dict[str, Any]:
    """V2 server metadata: the name, the installed release, the extensions (the binary tensor one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("streamscore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "unknown"
    return {"name": "streamscore", "version": release, "extensions": ["binary_tensor_data"]}


def _fp32_tensor(name: str, rows: list[list[float]]) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": [v for r in rows for v in r]}


def infer_response(predictions: pa.Table, request_id: str | None) -> dict[str, Any]:
    """A classifier's top-k labels (BYTES) and scores (FP32), shape [images, k], for every image of the request;
    with ``ScoringOptions.raw_outputs`` also ``raw_output`` (FP32, [images, classes]), as in a batch row. An
    embedding model's vectors as ``embedding`` (FP32, [images, width])."""
    rows = predictions.to_pylist()
    response: dict[str, Any] = {"model_name": rows[0]["model"], "model_version": rows[0]["model_version"]}
    if "embedding" in predictions.column_names:
        response["outputs"] = [_fp32_tensor("embedding", [r["embedding"] for r in rows])]
    else:
        k = len(rows[0]["top_k"])
        response["outputs"] = [
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [len(rows), k],
                "data": [t["label"] for r in rows for t in r["top_k"]],
            },
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [len(rows), k],
                "data": [t["score"] for r in rows for t in r["top_k"]],
            },
        ]
    if "raw_output" in predictions.column_names:
        response["outputs"].append(_fp32_tensor("raw_output", [r["raw_output"] for r in rows]))
    if request_id is not None:
        response["id"] = request_id
    return response


def model_metadata(
    name: str, versions: list[str], top_k: int, raw_width: int | None = None, embedding_width: int | None = None
) -> dict[str, Any]:
    """The outputs a response carries: ``top_k`` labels and scores and the raw outputs when kept, or, for an
    embedding model (``embedding_width``), the vector."""
    metadata: dict[str, Any] = {
        "name": name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
    }
    if embedding_width is not None:
        metadata["outputs"] = [{"name": "embedding", "datatype": "FP32", "shape": [-1, embedding_width]}]
        return metadata
    metadata["outputs"] = [
        {"name": "label", "datatype": "BYTES", "shape": [-1, top_k]},
        {"name": "score", "datatype": "FP32", "shape": [-1, top_k]},
    ]
    if raw_width is not None:
        metadata["outputs"].append({"name": "raw_output", "datatype": "FP32", "shape": [-1, raw_width]})
    return metadata
