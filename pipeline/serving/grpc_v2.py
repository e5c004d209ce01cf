"""The Open Inference Protocol (KServe V2) over gRPC: service ``inference.GRPCInferenceService``.

Served through Ray Serve's own gRPC ingress: ``gRPCOptions(grpc_servicer_functions=[SERVICER])`` registers the
service, and Serve calls the ingress deployment's method named after the RPC (``ModelInfer``...) with the
request message and a ``grpc_context``. The messages are the ``open-inference-grpc`` wheel's (generated from
the Apache-2.0 proto, nothing but grpcio and protobuf behind them), not tritonclient's or kserve's, which pin
protobuf below what Ray uses and bring much more.

These methods call the gateway's own code (``Gateway``: routing, request limits, timeouts, poison memory,
metrics), so everything that holds for HTTP holds here; the request's metadata stands for its headers (routing
rules, sticky keys, ``x-request-timeout-s``). A refusal is an ``HttpError`` inside, answered with the gRPC code
that status stands for (``GRPC_CODES``) and the same message: never INTERNAL or UNKNOWN for a bad request.

Images travel as one ``BYTES`` input, in ``contents.bytes_contents`` or in ``raw_input_contents`` (each element a
4-byte little-endian length and its bytes: what tritonclient sends). Outputs go in ``raw_output_contents``, as
Triton answers: tritonclient reads numbers only from there.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from open_inference.grpc import protocol as pb

from common.errors import HttpError
from pipeline.serving import grpc_service, v2
from pipeline.serving.canary import Routed

SERVICER = f"{grpc_service.__name__}.add_GRPCInferenceServiceServicer_to_server"  # what Serve registers
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,  # an image known to kill replicas: the input's fault
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
Message = TypeVar("Message")


def images_of(request: pb.ModelInferRequest, max_bytes: int) -> list[bytes]:
    """The encoded images of an infer request: one BYTES input of shape [images]. 413 past ``max_bytes``."""
    if len(request.inputs) != 1:
        raise HttpError(400, f"expected exactly one input, {v2.IMAGE_INPUT!r} of datatype BYTES")
    spec = request.inputs[0]
    if spec.datatype != "BYTES":
        raise HttpError(400, f"input {spec.name!r} has datatype {spec.datatype!r}; images are BYTES")
    if len(spec.shape) != 1 or spec.shape[0] < 0:
        raise HttpError(400, f"input shape must be [number of images], got {list(spec.shape)}"[:300])
    count, raw = spec.shape[0], list(request.raw_input_contents)
    if raw and spec.contents.bytes_contents:
        raise HttpError(400, "images are in both contents and raw_input_contents; send them in one")
    size = sum(map(len, raw)) + sum(map(len, spec.contents.bytes_contents))
    if size > max_bytes:
        raise HttpError(413, f"the request holds {size:,} bytes of images, over the limit of {max_bytes:,}")
    if raw:
        if len(raw) != 1:
            raise HttpError(400, f"raw_input_contents holds {len(raw)} tensors for 1 input")
        try:
            images = v2.split_bytes_tensor(raw[0], count)
        except v2.BadRequest as exc:
            raise HttpError(400, str(exc)) from None
    else:
        images = list(spec.contents.bytes_contents)
        if len(images) != count:
            raise HttpError(400, f"input shape says {count} images but contents hold {len(images)}")
    if not images:
        raise HttpError(400, "no images in the request")
    return images


def _raw(output: dict[str, Any]) -> bytes:
    if output["datatype"] == "BYTES":
        elements = [e.encode() if isinstance(e, str) else bytes(e) for e in output["data"]]
        return b"".join(struct.pack("<I", len(e)) + e for e in elements)
    return np.asarray(output["data"], dtype="<f4").tobytes()


def infer_response(answer: dict[str, Any], requested: list[str]) -> pb.ModelInferResponse:
    """``v2.infer_response``'s answer as a gRPC message, limited to the ``requested`` outputs (all when none)."""
    outputs = answer["outputs"]
    unknown = sorted(set(requested) - {o["name"] for o in outputs})
    if unknown:
        raise HttpError(
            400, f"no output named {', '.join(map(repr, unknown))}; outputs are {[o['name'] for o in outputs]}"
        )
    chosen = [o for o in outputs if not requested or o["name"] in requested]
    return pb.ModelInferResponse(
        model_name=answer["model_name"],
        model_version=str(answer["model_version"]),
        id=answer.get("id", ""),
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=o["name"], datatype=o["datatype"], shape=o["shape"])
            for o in chosen
        ],
        raw_output_contents=[_raw(o) for o in chosen],
    )


def metadata_response(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[tensor(**t) for t in metadata["inputs"]],
        outputs=[tensor(**t) for t in metadata["outputs"]],
    )


def metadata_of(grpc_context: Any) -> dict[str, str]:
    """The request's metadata, as the headers the gateway's routing and timeouts read."""
    return {key.lower(): value for key, value in grpc_context.invocation_metadata() if isinstance(value, str)}


async def answer(grpc_context: Any, empty: Message, call: Callable[[], Awaitable[Message]]) -> Message:
    """``call()``'s message; a refusal sets the gRPC code its status stands for, with its message, on an
    ``empty`` answer (Serve sends the code set on ``grpc_context``)."""
    try:
        return await call()
    except HttpError as exc:
        grpc_context.set_code(GRPC_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT))
        grpc_context.set_details(exc.message)
        return empty


class GrpcMethods:
    """Mixed into the ``Gateway`` deployment: the V2 RPCs, each over the gateway's own code."""

    _config: Any

    async def _readiness(self) -> dict[str, Any]:
        raise NotImplementedError  # the gateway's

    async def _model_readiness(self, name: str, version: str | None) -> dict[str, Any]:
        raise NotImplementedError  # the gateway's

    async def _model_metadata(self, name: str, version: str | None, headers: Mapping[str, str]) -> dict[str, Any]:
        raise NotImplementedError  # the gateway's

    async def _observed(
        self, endpoint: str, name: str, version: str | None, headers: Mapping[str, str], handler: Any
    ) -> Any:
        raise NotImplementedError  # the gateway's

    async def _score(self, routed: Routed, images: list[bytes], labels: list[str], headers: Mapping[str, str]) -> Any:
        raise NotImplementedError  # the gateway's

    async def ServerLive(self, request: pb.ServerLiveRequest, grpc_context: Any = None) -> pb.ServerLiveResponse:  # noqa: N802 - the RPC's name
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, grpc_context: Any = None) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=(await self._readiness())["ready"])

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, grpc_context: Any = None
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context: Any = None) -> pb.ModelReadyResponse:  # noqa: N802
        async def ready() -> pb.ModelReadyResponse:
            body = await self._model_readiness(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=body["ready"])

        return await answer(grpc_context, pb.ModelReadyResponse(), ready)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, grpc_context: Any = None
    ) -> pb.ModelMetadataResponse:
        async def metadata() -> pb.ModelMetadataResponse:
            body = await self._model_metadata(request.name, request.version or None, metadata_of(grpc_context))
            return metadata_response(body)

        return await answer(grpc_context, pb.ModelMetadataResponse(), metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: Any = None) -> pb.ModelInferResponse:  # noqa: N802
        """Like ``POST /v2/models/{name}[/versions/{version}]/infer``; counted as endpoint ``grpc_infer``."""
        headers = metadata_of(grpc_context)

        async def infer(routed: Routed) -> pb.ModelInferResponse:
            images = images_of(request, self._config.max_request_bytes)
            table = await self._score(routed, images, [f"image {i}" for i in range(len(images))], headers)
            answer_ = v2.infer_response(table, request.id or None)
            return infer_response(answer_, [o.name for o in request.outputs])

        name, version = request.model_name, request.model_version or None
        return await answer(
            grpc_context,
            pb.ModelInferResponse(),
            lambda: self._observed("grpc_infer", name, version, headers, infer),
        )
