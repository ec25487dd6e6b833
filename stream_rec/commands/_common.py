"""What every sub-command shares: its parser, flags that set a :class:`Settings` field (their help names the
environment variable and the default, taken from the dataclass, never written by hand), input paths that
must exist, and stopping on SIGTERM/SIGHUP like on Ctrl-C.

The vocabulary of flags, the same in every command: ``--broker``; files end in ``-file``
(``--events-file``, ``--items-file``, ``--users-file``); counts say what they count (``--synthetic-events N``,
``--max-records N``); list lengths are ``--top-k``; durations end in ``-s`` (``--duration-s``, ``--timeout-s``,
``--wait-s``); rates are ``--rate EV/S``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
import re
import signal
from typing import Iterator

from ..settings import ENV_PREFIX, Settings

SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


class Parser(argparse.ArgumentParser):
    """argparse with exact flag names (no prefix abbreviations: one vocabulary) and usage errors as one line
    ``error: PROG: ...`` with a "did you mean" when a name is close to a real one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice:  # a sub-command name: drop argparse's long "(choose from ...)"
            names = [c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]
            message = f"unknown command '{choice.group(1)}'" + did_you_mean(choice.group(1), names)
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")

    def unrecognized(self, extras: list[str]) -> str:
        """The message for arguments no flag of this parser takes, with the closest flag names."""
        flags = [s for s in self._option_string_actions if s.startswith("--")]
        parts = []
        for arg in extras:
            name = arg.split("=", 1)[0]
            parts.append(f"{arg}" + (did_you_mean(name, flags) if name.startswith("-") else ""))
        return f"unrecognized argument{'s' if len(extras) > 1 else ''}: " + ", ".join(parts)


def did_you_mean(word: str, candidates) -> str:
    """`` (did you mean X?)``: names that extend ``word`` (``--max`` -> ``--max-records``, ``--k`` ->
    ``--top-k``: the old names of renamed flags), else the closest spellings; "" when nothing is close."""
    candidates = list(candidates)
    stem = word.lstrip("-")
    close = [c for c in candidates if stem and (c.startswith(word + "-") or c.endswith("-" + stem))]
    close = close[:2] or difflib.get_close_matches(word, candidates, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default when it has one (not None/False) and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is not None and default is not False and default is not argparse.SUPPRESS
                and "default" not in text and action.option_strings):
            text += f" (default: {default})"
        return text


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` (defaults shown) keeping the description's own line breaks."""


def add_command(sub, module_name: str, summary: str, doc: str, raw: bool = False) -> Parser:
    """The parser of the sub-command named like its module: ``summary`` is its line in `stream-rec --help`;
    its own --help describes it with ``doc`` (the module's docstring) after the docstring's first line."""
    name = module_name.rsplit(".", 1)[-1]
    description = doc.split("\n", 1)[1].strip() if "\n" in doc.strip() else doc
    return sub.add_parser(name, help=summary, description=description,
                          formatter_class=RawDescriptionHelpFormatter if raw else HelpFormatter)


# --- flags that set a setting ------------------------------------------------------------------------------
def add_setting(p: argparse.ArgumentParser, name: str, help: str, *, flag: str | None = None,
                metavar: str | None = None, choices=None) -> None:
    """A flag for ``Settings.<name>``: its help ends with ``(env STREAM_REC_NAME, default D)``, and
    :func:`settings_from_args` applies it over the environment when it is given."""
    field = SETTING_FIELDS[name]
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "str")
    default = "" if field.default is dataclasses.MISSING else field.default
    shown = "empty" if default == "" else str(default).lower() if kind == "bool" else default
    text = f"{help} (env {ENV_PREFIX}{name.upper()}, default {shown})"
    flag = flag or "--" + name.replace("_", "-")
    if kind == "bool":
        p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        p.add_argument(flag, dest=name, type={"int": int, "float": float}.get(kind, str), default=None,
                       metavar=metavar, choices=choices, help=text)
    p.set_defaults(setting_flags=[*(p.get_default("setting_flags") or []), name])


def add_broker_flags(p: argparse.ArgumentParser) -> None:
    add_setting(p, "broker", "Kafka bootstrap servers", metavar="HOST:PORT[,HOST:PORT]")
    add_setting(p, "topic_prefix", "prefix of every topic name, for shared clusters", metavar="PREFIX")
    # every command that creates topics creates the state changelog too, named from the app id, and a
    # prefix needs an app id of its own (io.topics.check_namespace)
    add_setting(p, "app_id", "the workers' app id: consumer group and prefix of the changelog topics",
                metavar="ID")
    add_setting(p, "partitions", "partitions of events/recommendations/state when this command creates them",
                metavar="N")
    add_setting(p, "replication_factor", "replicas of every topic this command creates, the state changelog "
                                         "included", metavar="N")
    add_setting(p, "min_insync_replicas", "min.insync.replicas of the topics this command creates (0 = the "
                                          "broker's default)", metavar="N")


def settings_from_args(args: argparse.Namespace, **extra) -> Settings:
    """Settings from STREAM_REC_* env vars, overridden by the setting flags that were given and ``extra``."""
    overrides = {name: getattr(args, name) for name in getattr(args, "setting_flags", None) or ()}
    overrides.update(extra)
    return Settings.from_env(**overrides)


# --- inputs ------------------------------------------------------------------------------------------------
def existing_path(path: str) -> str:
    """argparse ``type`` of an input file or directory ('-' = stdin). Parsing does not look at the disk (a
    command line may be checked for another machine: tests/test_deploy.py); :func:`check_inputs` does,
    before the command runs."""
    return path


def check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every input path named on the command line exists and is readable, else a usage error (one line)."""
    for action in parser._actions:
        path = getattr(args, action.dest, None)
        if action.type is not existing_path or not path or path == "-":
            continue
        if not os.path.exists(path):
            parser.error(f"argument {action.option_strings[0]}: {path}: no such file or directory")
        if not os.access(path, os.R_OK):
            parser.error(f"argument {action.option_strings[0]}: {path}: not readable (permission denied)")


# --- stopping ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def signals_interrupt(signals=(signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, while the block runs: the command stops
    the way Ctrl-C stops it (children stopped in order, nothing left running), whether the terminal closed
    (SIGHUP) or a supervisor asked (SIGTERM). A second one during that shutdown interrupts the waiting
    again, which the commands answer with a kill of what is left."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
