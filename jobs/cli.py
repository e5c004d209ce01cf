"""The ``streamscore`` command: ``score``, ``nightly``, ``serve``, ``admin`` and ``models`` (list, promote, add, quantize)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobs import admin, batch_score, console, model_commands, nightly, serve

_FORMAT = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscore",
        description="Images to model predictions, at any scale.",
        epilog=batch_score.EXAMPLE,
        formatter_class=_FORMAT,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="score images into a Parquet dataset (Ray Data)",
        description=batch_score.__doc__,
        formatter_class=_FORMAT,
    )
    batch_score.add_arguments(score)
    score.set_defaults(handler=batch_score.run)

    scheduled = commands.add_parser(
        "nightly",
        help="score what is new or changed into a Delta Lake table, exactly once",
        description=nightly.__doc__,
        formatter_class=_FORMAT,
    )
    nightly.add_arguments(scheduled)
    scheduled.set_defaults(handler=nightly.run)

    serving = commands.add_parser(
        "serve",
        help="serve every model of the repository over HTTP (Ray Serve)",
        description=serve.__doc__,
        formatter_class=_FORMAT,
    )
    serve.add_arguments(serving)
    serving.set_defaults(handler=serve.run)

    administer = commands.add_parser(
        "admin",
        help="change a running Serve app: load, routing, retire",
        description=admin.__doc__,
        formatter_class=_FORMAT,
    )
    admin.add_arguments(administer)
    administer.set_defaults(handler=admin.run)

    models = commands.add_parser(
        "models",
        help="the model repository: list, promote a default version, add your own ONNX model, quantize to INT8",
        description=model_commands.__doc__,
        formatter_class=_FORMAT,
    )
    model_commands.add_arguments(models)
    models.set_defaults(handler=model_commands.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started_at = console.process_started_at()
    args = build_parser().parse_args(argv)
    console.setup_logging()
    if args.handler in (batch_score.run, nightly.run):
        return console.run_command(lambda: args.handler(args, started_at))
    return console.run_command(lambda: int(args.handler(args)))


if __name__ == "__main__":
    sys.exit(main())
