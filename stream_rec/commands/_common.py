"""Flags shared by several sub-commands, and how they become a :class:`Settings`."""

from __future__ import annotations

import argparse

from ..settings import Settings


def add_command(sub, name: str, summary: str, doc: str,
                formatter: type[argparse.HelpFormatter] | None = None) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``: ``summary`` is its line in `stream-rec --help`; its own --help
    describes it with ``doc`` (the command module's docstring) after the docstring's first line."""
    description = doc.split("\n", 1)[1].strip() if "\n" in doc.strip() else doc
    return sub.add_parser(name, help=summary, description=description, formatter_class=formatter or HelpFormatter)


def add_broker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="HOST:PORT[,HOST:PORT]",
                   help="Kafka bootstrap servers (env STREAM_REC_BROKER, default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", metavar="PREFIX",
                   help="prefix of every topic name, for shared clusters (env STREAM_REC_TOPIC_PREFIX)")
    p.add_argument("--partitions", type=int, metavar="N",
                   help="partitions of events/recommendations/state when this command creates them "
                        "(env STREAM_REC_PARTITIONS, default 4)")
    p.add_argument("--replication-factor", type=int, metavar="N",
                   help="replicas of every topic this command creates, the state changelog included "
                        "(env STREAM_REC_REPLICATION_FACTOR, default 1)")
    p.add_argument("--min-insync-replicas", type=int, metavar="N",
                   help="min.insync.replicas of the topics this command creates "
                        "(env STREAM_REC_MIN_INSYNC_REPLICAS, default 0 = the broker's default)")


def settings_from_args(args: argparse.Namespace, **extra) -> Settings:
    """Settings from STREAM_REC_* env vars, overridden by the flags that were given."""
    overrides = {name: getattr(args, name, None)
                 for name in ("broker", "topic_prefix", "partitions", "replication_factor", "min_insync_replicas")}
    overrides.update(extra)
    return Settings.from_env(**overrides)


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
