"""`stream-rec` command line: one sub-command per module in stream_rec/commands/.

Each module there defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed args and returning an exit code. Imports of heavy libraries (torch, faust)
happen inside those functions, so ``stream-rec --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-rec",
        description="Real-time sequential recommender inside Kafka. Every setting can also be given as an "
                    "environment variable STREAM_REC_<NAME> (see stream_rec/settings.py); flags win.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .io.topics import TopicError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except TopicError as exc:  # a topic the spec asks for cannot be created (e.g. replication > brokers)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
