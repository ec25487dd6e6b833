"""`stream-rec forget USER...`: erase users' state (right to erasure).

Publishes a ``delete_user`` control event per user to the *events* topic, keyed by the user id like
every other event of that user, one copy on *every* partition. Why the events topic and not a separate
control topic:

* ordering: Kafka orders records within a partition, so the deletion is applied after every event of
  that user produced before it, and an event produced afterwards starts a fresh state — no race
  between two topics;
* placement: the worker deletes the table key while handling a record of the user's own partition, so
  the RocksDB store and the changelog tombstone land on the partition that owns the user (the table
  is co-partitioned with the events topic). A standby or a restored worker replays the tombstone and
  the user stays gone; compaction later removes the old values from the changelog for good.
* every partition: a producer with another partitioner (librdkafka's default CRC32) puts a user's events
  on another partition than the murmur2 one the worker keeps her state on. The worker re-routes such
  events to her partition (stream_rec/pipeline.py), and a copy of the deletion that lands on such a
  partition is re-routed the same way, *behind* the events that came before it there; it also deletes
  any state an older worker left on that partition. So the user is erased wherever her events went,
  and none of her earlier events can bring her back. (A re-routed copy may arrive after events she
  produced right after the ``forget``; it erases those too -- erasure errs on the side of erasing.)

The user id is sent as given (raw): with ``pseudonymize_key`` set, the worker hashes it on ingest exactly
like the user's ordinary events, so the same pseudonym is deleted. The command prints no user ids
back (they may be personal data in a terminal log), only counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from ..validation import DELETE_USER
from ._common import add_broker_flags, add_command, existing_path, settings_from_args

SUMMARY = "erase users' state: publish delete_user control events"


def delete_user_event(user_id: str, now: float | None = None) -> dict:
    """The control event that asks the worker to erase ``user_id``'s state."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError("user id must be a non-empty string")
    return {"user_id": user_id, "event_type": DELETE_USER, "timestamp": time.time() if now is None else now}


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    p.add_argument("users", nargs="*", metavar="USER", help="user ids to erase (raw ids, as producers send them)")
    p.add_argument("--users-file", metavar="FILE", type=existing_path,
                   help="also read user ids from this file, one per line ('-' for stdin)")
    add_broker_flags(p)
    p.set_defaults(func=run)


def read_users(args: argparse.Namespace) -> list[str]:
    users = list(args.users)
    if args.users_file == "-":
        users.extend(line.strip() for line in sys.stdin if line.strip())
    elif args.users_file:
        with open(args.users_file, encoding="utf-8") as f:
            users.extend(line.strip() for line in f if line.strip())
    return users


def run(args: argparse.Namespace) -> int:
    from ..io.kafka import ensure_topics, produce_json

    users = read_users(args)
    if not users:
        print("error: stream-rec forget: give at least one USER (or --users-file)", file=sys.stderr)
        return 2
    try:
        events = [delete_user_event(u) for u in users]
    except ValueError as exc:
        print(f"error: stream-rec forget: {exc}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)

    async def publish() -> int:
        await ensure_topics(settings)
        return await produce_json(settings, settings.topic(settings.events_topic), events, key_field="user_id",
                                  every_partition=True)

    sent = asyncio.run(publish())
    print(f"published {sent} delete_user event(s) to every partition of {settings.topic(settings.events_topic)}")
    return 0
