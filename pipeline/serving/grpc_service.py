"""The V2 gRPC service Serve registers (``gRPCOptions.grpc_servicer_functions``): the ``open-inference-grpc``
wheel's, made picklable.

Serve's Python proxy (``RAY_SERVE_ENABLE_HA_PROXY=0``, and the fallback behind HAProxy) pickles each request
message to hand it to a replica. The wheel's messages say they live in module ``open_inference_grpc_pb2``,
which does not exist, so every call failed with UNKNOWN "Can't pickle ..." until that name points at the
wheel's module. The proxy imports this module (small on purpose: it imports it in every proxy); replicas get
the same name through ``grpc_v2``.
"""

from __future__ import annotations

import sys

from open_inference.grpc import protocol

sys.modules.setdefault("open_inference_grpc_pb2", protocol)

from open_inference.grpc.service import add_GRPCInferenceServiceServicer_to_server  # noqa: E402

__all__ = ["add_GRPCInferenceServiceServicer_to_server"]
