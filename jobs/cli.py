"""The ``streamscore`` command: ``score``, ``models list`` and ``models import``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from jobs import admin, batch_score, serve
from pipeline.errors import StreamScoreError


def _models_list(args: argparse.Namespace) -> int:
    from pipeline.models import ModelRepository

    repository = ModelRepository(args.models_dir)
    for name in repository.names():
        print(f"{name}: versions {', '.join(repository.versions(name))}")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from pipeline.model_builders import builder

    folder = builder(args.name)(Path(args.models_dir), args.version)
    print(f"wrote {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamscore", description="Images to model predictions, at any scale.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score images into a Parquet dataset (Ray Data)")
    batch_score.add_arguments(score)
    score.set_defaults(handler=batch_score.run)

    serving = commands.add_parser("serve", help="serve every model of the repository over HTTP (Ray Serve)")
    serve.add_arguments(serving)
    serving.set_defaults(handler=serve.run)

    administer = commands.add_parser("admin", help="change a running Serve app: load, routing, retire")
    admin.add_arguments(administer)
    administer.set_defaults(handler=admin.run)

    models = commands.add_parser("models", help="the model repository").add_subparsers(
        dest="models_command", required=True
    )
    listing = models.add_parser("list", help="list models and versions")
    listing.add_argument("--models-dir", default="models")
    listing.set_defaults(handler=_models_list)
    importer = models.add_parser("import", help="build a model into the repository from its source (needs [build])")
    importer.add_argument("name", help="digits, efficientnet-lite0, resnet50-shaped or mobilenetv2-shaped")
    importer.add_argument("--models-dir", default="models")
    importer.add_argument("--version", default="1")
    importer.set_defaults(handler=_models_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except StreamScoreError as exc:
        print(f"streamscore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
