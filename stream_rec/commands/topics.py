"""`stream-rec topics`: create the topics of the one topic spec (stream_rec.io.topics.TOPIC_LAYOUT), or show them.

Create every stream-rec topic from the one topic spec (names, partitions, cleanup policy, retention,
replication; Faust's state changelog included), or print that spec / the broker's view of it. Existing
topics are never changed.

    stream-rec topics create --replication-factor 3     # what the compose init job and the Kubernetes Job run
    stream-rec topics show                              # the spec as a table (no broker needed)
    stream-rec topics show --live                       # what the broker has, and where it differs
"""

from __future__ import annotations

import argparse
import sys

from ._common import Parser, add_broker_flags, add_command, settings_from_args

SUMMARY = "create or show the stream-rec topics (one spec, Faust's changelog included)"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__, raw=True)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    create = actions.add_parser("create", help="create the missing topics (existing ones are kept; differences warned)")
    create.add_argument("--wait-s", type=float, default=0.0, metavar="S",
                        help="keep retrying this long while the broker is unreachable (an init job starting with "
                             "the cluster); default 0")
    show = actions.add_parser("show", help="print the spec as a table, or with --live the broker's topics")
    show.add_argument("--live", action="store_true",
                      help="ask the broker: partitions, replicas and configs of each topic, marked where they "
                           "differ from the spec")
    for q in (create, show):
        add_broker_flags(q)
    p.set_defaults(func=run)


COLUMNS = ("role", "topic", "partitions", "replicas", "cleanup.policy", "retention.ms", "min.insync.replicas")


def spec_row(spec) -> list[str]:
    configs = spec.configs
    return [spec.role, spec.name, str(spec.partitions), str(spec.replication_factor),
            *(configs.get(k, "default") for k in COLUMNS[4:])]


def live_row(topic: dict) -> list[str]:
    """One table row of :func:`stream_rec.io.kafka.describe_topics`'s answer; values that differ from the spec
    end in ``*`` ("-": not reported by the broker, which then applies its default)."""
    spec = topic["spec"]
    if not topic["exists"]:
        return [spec.role, spec.name, "missing", "", "", "", ""]
    want = dict(zip(COLUMNS, spec_row(spec)))
    have = {"partitions": str(topic["partitions"]), "replicas": str(topic["replication_factor"]),
            **{k: topic["configs"].get(k, "-") for k in COLUMNS[4:]}}
    row = [spec.role, spec.name]
    for col in COLUMNS[2:]:
        differs = want[col] != "default" and have[col] != want[col]
        row.append(have[col] + ("*" if differs else ""))
    return row


def format_table(rows: list[list[str]]) -> str:
    table = [list(COLUMNS), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.topics import topic_specs

    settings = settings_from_args(args)
    specs = topic_specs(settings)
    if args.action == "show" and not args.live:
        print(format_table([spec_row(s) for s in specs]))
        return 0
    if args.action == "show":
        from ..io.kafka import describe_topics

        topics = asyncio.run(describe_topics(settings))
        print(format_table([live_row(t) for t in topics]))
        print("(* differs from the spec; - not reported by the broker: its default applies)")
        return 0
    created = {s.name for s in asyncio.run(_create(settings, args.wait_s))}
    for spec in specs:
        print(f"{spec.name}: {'created' if spec.name in created else 'exists'}")
    print(f"topics ready on {settings.broker} ({len(created)} created)")
    return 0


async def _create(settings, wait_s: float):
    """ensure_topics, retried while the broker is unreachable for up to ``wait_s`` seconds."""
    import asyncio
    import time

    from ..io.kafka import BrokerUnreachable, ensure_topics

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await ensure_topics(settings)
        except BrokerUnreachable:
            if time.monotonic() >= deadline:
                raise
            print(f"waiting for Kafka at {settings.broker} ...", file=sys.stderr, flush=True)
            await asyncio.sleep(2.0)
