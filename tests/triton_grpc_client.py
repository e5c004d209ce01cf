"""Calls to the app with NVIDIA's ``tritonclient.grpc``, run in a virtual environment of its own (it pins
protobuf below the version Ray needs, so it cannot live beside the app). Standard library, numpy and tritonclient
only: nothing of ours is importable there.

    python triton_grpc_client.py HOST:PORT < calls.json > results.json

Each call is a JSON object with ``op`` (live, ready, model_ready, server_metadata, model_metadata, infer), its
arguments and ``headers`` (gRPC metadata); each result is what the client returned (outputs as lists, labels decoded), or the error as
``{"code": "StatusCode.X", "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _infer(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    images = np.array([Path(p).read_bytes() for p in call["images"]], dtype=np.object_)
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(images)
    outputs = [grpcclient.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
    result = client.infer(
        call["model"],
        [tensor],
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("id", ""),
        headers=call.get("headers"),
        client_timeout=call.get("client_timeout_s"),
    )
    response = result.get_response()
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    answer["id"] = response.id
    for output in response.outputs:
        array = result.as_numpy(output.name)
        if array.dtype == np.object_:
            array = np.vectorize(lambda b: b.decode())(array)
        answer[output.name] = {"shape": list(array.shape), "datatype": output.datatype, "data": array.tolist()}
    return answer


def run(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> Any:
    op, headers = call["op"], call.get("headers")
    if op == "live":
        return client.is_server_live(headers=headers)
    if op == "ready":
        return client.is_server_ready(headers=headers)
    if op == "model_ready":
        return client.is_model_ready(call["model"], call.get("version", ""), headers=headers)
    if op == "server_metadata":
        return client.get_server_metadata(headers=headers, as_json=True)
    if op == "model_metadata":
        return client.get_model_metadata(call["model"], call.get("version", ""), headers=headers, as_json=True)
    if op == "infer":
        return _infer(client, call)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    client = grpcclient.InferenceServerClient(sys.argv[1])
    results = []
    for call in json.load(sys.stdin):
        try:
            results.append(run(client, call))
        except InferenceServerException as exc:
            results.append({"code": str(exc.status()), "message": exc.message()})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
