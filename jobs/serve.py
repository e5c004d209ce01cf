"""Online entry point: ``streamscore serve`` runs the Serve app over every model in the repository.

    streamscore serve [--models-dir DIR] [--port N] [--config FILE]

``--config`` takes a YAML or JSON file of ``ServeConfig`` fields (flags given on the command line win). The
same app deploys with Serve's own tools: ``serve run jobs/serve_config.yaml`` or ``serve deploy``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", help="model repository root, path or URI (default: models)")
    parser.add_argument(
        "--host",
        help="address to listen on (default: 127.0.0.1 on a local Ray; 0.0.0.0 on a cluster, where HAProxy on one "
        "node forwards to replicas on the others)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", help="YAML or JSON file of serving settings (see pipeline/serving/app.py)")
    parser.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local Ray")


def load_config(args: argparse.Namespace) -> Any:
    from pipeline.serving.app import ServeConfig

    values: dict[str, Any] = {}
    if args.config:
        text = Path(args.config).read_text(encoding="utf-8")
        try:
            import yaml

            values = yaml.safe_load(text) or {}
        except ImportError:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config} must hold a mapping of settings")
    if args.models_dir:
        values["models_dir"] = args.models_dir
    try:
        return ServeConfig(**values)
    except ValueError as exc:
        raise ConfigError(f"bad serving settings: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from jobs.batch_score import connect_ray
    from pipeline.models import ModelRepository
    from pipeline.serving.app import deploy
    from pipeline.serving.ingress import check_port, use_fast_ingress

    config = load_config(args)
    names = ModelRepository(config.models_dir).names()  # fail before Ray starts if the repository is wrong
    if not names:
        raise ConfigError(f"no models in {config.models_dir}")
    # Ctrl-C or SIGTERM (also while the app is still deploying) ends in a clean shutdown, not a traceback.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if not on_cluster:
        use_fast_ingress()  # a cluster's processes got their settings at `ray start` (see cluster.yaml)
        check_port(args.port)
    host = args.host or ("0.0.0.0" if on_cluster else "127.0.0.1")
    connect_ray(args.address)
    deploy(config, host, args.port)
    logging.getLogger("streamscore").info(
        "serving %s on http://%s:%d (V2: /v2/models/{name}/infer; people: POST /predict/{name}); Ctrl-C stops",
        ", ".join(names),
        host,
        args.port,
    )
    stop.wait()
    logging.getLogger("streamscore").info("stopping: draining the app")
    serve.shutdown()
    return 0
