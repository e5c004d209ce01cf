"""Online entry point: ``streamscore serve`` runs the Serve app over every model in the repository.

    streamscore serve [--models-dir DIR] [--port N] [--config FILE] [scoring options]

``--config`` takes a YAML or JSON file of ``ServeConfig`` fields (see pipeline/serving/config.py); flags given
on the command line win. The admin token comes from ``STREAMSCORE_ADMIN_TOKEN`` (or the file's
``admin_token``). The same app deploys with Serve's own tools: ``serve run jobs/serve_config.yaml``.

example: streamscore serve --port 8000 --top-k 3
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.errors import ConfigError
from jobs import console
from jobs.options import add_scoring_options, scoring_options

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    console.add_models_dir(parser)
    parser.add_argument(
        "--host",
        help="address to listen on (default: 127.0.0.1 on a local Ray; 0.0.0.0 on a cluster, where HAProxy on one "
        "node forwards to replicas on the others)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the Open Inference Protocol over gRPC (service inference.GRPCInferenceService) on this "
        "port, e.g. 9000 (default: HTTP only)",
    )
    parser.add_argument("--config", help="YAML or JSON file of serving settings (see pipeline/serving/config.py)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    add_scoring_options(parser)


ADMIN_TOKEN_ENV = "STREAMSCORE_ADMIN_TOKEN"


def _read_settings(path: str) -> dict[str, Any]:
    import yaml  # a dependency of ray

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read serving settings from {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return values


def serve_config(values: dict[str, Any]) -> Any:
    """``ServeConfig`` from ``values`` plus what the environment says: the admin token
    (``STREAMSCORE_ADMIN_TOKEN`` wins over ``admin_token``) and, when ``models_dir`` is not given, the models
    folder found as every command finds it. Local paths (the models folder, the control plane's state file) are
    made absolute: replicas run elsewhere."""
    from pipeline.models.repository import MODELS_DIR_ENV, find_models_dir
    from pipeline.serving.config import ServeConfig

    values = dict(values)
    models_dir = values.get("models_dir") or find_models_dir(None, os.environ.get(MODELS_DIR_ENV), Path.cwd())
    values["models_dir"] = models_dir if "://" in models_dir else os.path.abspath(models_dir)
    if (state := values.get("control_state_uri")) and "://" not in state:
        values["control_state_uri"] = os.path.abspath(state)
    if os.environ.get(ADMIN_TOKEN_ENV):
        values["admin_token"] = os.environ[ADMIN_TOKEN_ENV]
    try:
        return ServeConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"bad serving settings: {exc}") from None


def load_config(args: argparse.Namespace) -> Any:
    values = _read_settings(args.config) if args.config else {}
    if args.models_dir:
        values["models_dir"] = args.models_dir
    values["options"] = scoring_options(args, values.get("options"))
    return serve_config(values)


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run jobs/serve_config.yaml`` (or ``serve run jobs.serve:app_builder models_dir=models``):
    the Serve config's ``args`` are ``ServeConfig`` fields."""
    from pipeline.serving.app import build_app

    return build_app(serve_config(args))


def check_port_free(host: str, port: int) -> None:
    """Refuse, before Ray starts, a port another process holds (Serve would fail deep inside, 45 lines later)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(
                    f"port {port} on {host} is in use by another process; choose another with --port"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from jobs.ingress import check_port, limit_grpc_messages, use_fast_ingress
    from pipeline.models.repository import ModelRepository
    from pipeline.serving.app import APP_NAME, deploy

    config = load_config(args)
    names = ModelRepository(config.models_dir).names()  # fail before Ray starts if the repository is wrong
    if not names:
        raise ConfigError(f"no models in {config.models_dir}; pass --models-dir DIR")
    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    host = args.host or ("0.0.0.0" if on_cluster else "127.0.0.1")
    ports = [args.port] + ([args.grpc_port] if args.grpc_port is not None else [])
    if args.grpc_port == args.port:
        raise ConfigError(f"--grpc-port {args.grpc_port} is the HTTP port; choose another")
    if not on_cluster:  # a cluster's processes got their settings at `ray start` (see cluster.yaml)
        for port in ports:
            check_port(port)
            check_port_free(host, port)
        use_fast_ingress()
        limit_grpc_messages(config.max_request_bytes)
    # Ctrl-C or SIGTERM (also while the app is still deploying) ends in a clean shutdown, not a traceback.
    stop = threading.Event()

    def stop_on_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())

    stop_on_signals()
    console.connect_ray(args.address)
    # ray.init installs Ray's fatal-signal handler over ours for SIGTERM: it printed a stack trace and killed the
    # command (and the local Ray with it) at once, cutting the requests in flight. Ours again, so SIGTERM drains.
    stop_on_signals()
    deploy(config, host, args.port, args.grpc_port)
    grpc = f", gRPC V2 on {host}:{args.grpc_port}" if args.grpc_port is not None else ""
    logging.getLogger("streamscore").info(
        "serving %s on http://%s:%d (V2: /v2/models/{name}/infer; people: POST /predict/{name})%s; Ctrl-C stops",
        ", ".join(names),
        host,
        args.port,
        grpc,
    )
    stop.wait()
    logging.getLogger("streamscore").info("stopping: draining the app")
    # Deleting the app first lets each replica finish the requests it holds (Serve's graceful shutdown) while the
    # ingress still carries their answers; serve.shutdown() alone tore the ingress down under them.
    serve.delete(APP_NAME)
    serve.shutdown()
    return 0
