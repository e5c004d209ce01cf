"""``python -m builders NAME [NAME ...] [--models-dir DIR] [--version V]``: build models into a repository."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from builders import builder, builder_names
from common.errors import StreamScoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m builders",
        description=__doc__.splitlines()[0],
        epilog="example: python -m builders digits --models-dir models --version 2",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(builder_names())}")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="repository root (default: models)")
    parser.add_argument("--version", default="1", help="version folder to write (default: 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        for name in args.names:
            print(f"wrote {builder(name)(args.models_dir, args.version)}")
    except StreamScoreError as exc:
        print(f"builders: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
