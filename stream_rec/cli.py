"""`stream-rec` command line: one sub-command per module in stream_rec/commands/.

Each module there defines ``SUMMARY`` (its line in `stream-rec --help`) and ``register(subparsers)``, which
adds its parser and sets ``func`` to a function taking the parsed args and returning an exit code. Only
the command being run is registered in full (its flags and their defaults), and heavy libraries (torch,
Faust, aiokafka) are imported inside ``register``/``func``: `stream-rec --help` imports none of them
(tests/test_cli.py checks).

Expected failures -- a broker that does not answer, a missing file, a model directory that does not load,
a port in use, a bad flag -- end with one line ``error: ...`` on stderr and exit code 1 (2 for usage
errors); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from importlib import metadata

from . import commands
from .commands._common import Parser, check_inputs

COMMANDS = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))

# Exceptions whose message says everything a user needs: (module, class). Only modules already imported
# are looked at (the failure came from one of them), so handling an error imports nothing heavy.
EXPECTED_ERRORS = (
    ("stream_rec.settings", "SettingsError"),
    ("stream_rec.logs", "LogConfigError"),
    ("stream_rec.io.kafka", "BrokerUnreachable"),
    ("stream_rec.io.topics", "TopicError"),
    ("stream_rec.io.data", "DataError"),
    ("stream_rec.io.broker", "BrokerError"),
    ("stream_rec.model.recommender", "ModelLoadError"),
    ("stream_rec.worker.models", "ModelResolutionError"),
    ("stream_rec.worker.listener", "ListenError"),
    ("aiokafka.errors", "KafkaConnectionError"),
)


def version() -> str:
    try:
        return metadata.version("stream-rec")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser(command: str | None = None) -> Parser:
    """The parser; with ``command`` only that sub-command is registered in full (the others by name and
    summary), "" registers none in full. ``parser.subcommands`` is the sub-parsers action."""
    parser = Parser(
        prog="stream-rec",
        description="Real-time sequential recommender inside Kafka. Flags that set a setting name its "
                    "environment variable in their help (STREAM_REC_<NAME>, all in stream_rec/settings.py); "
                    "a flag wins over the variable.")
    parser.add_argument("--version", action="version", version=f"stream-rec {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (same as STREAM_REC_LOG_LEVEL=debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        if command is None or command == name:
            module.register(sub)
        else:
            sub.add_parser(name, help=module.SUMMARY, add_help=False)
    parser.subcommands = sub
    return parser


def command_in(argv: list[str]) -> str:
    """The sub-command named in ``argv`` ("" when none is: the top-level options take no values)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in COMMANDS else ""


def option_strings(parser) -> set[str]:
    """Every flag of ``parser`` and of its nested sub-commands (``topics create``)."""
    out = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                out |= option_strings(nested)
    return out


def expected_message(exc: BaseException) -> str | None:
    """The one line for an expected failure, None for anything else."""
    for module, name in EXPECTED_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return str(exc) or name
    if isinstance(exc, OSError) and exc.filename:  # a file that cannot be read or written
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_in(argv)
    parser = build_parser(command)
    if command:  # an unknown flag is named before argparse's complaints about missing ones
        chosen = parser.subcommands.choices[command]
        unknown = [a for a in argv[argv.index(command) + 1:]
                   if a.startswith("--") and a.split("=", 1)[0] not in option_strings(chosen)]
        if unknown:
            chosen.error(chosen.unrecognized(unknown))
    args, extras = parser.parse_known_args(argv)
    if extras:
        chosen = parser.subcommands.choices.get(args.command) if args.command else None
        (chosen or parser).error((chosen or parser).unrecognized(extras))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    check_inputs(parser.subcommands.choices[args.command], args)
    try:
        from .logs import setup_logging
        from .settings import Settings

        env = Settings.from_env()
        setup_logging("debug" if args.verbose else env.log_level, env.log_format)
        if not args.verbose and args.command != "worker":  # a tool's output, not the Kafka client's chatter
            logging.getLogger("aiokafka").setLevel(logging.WARNING)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = expected_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
