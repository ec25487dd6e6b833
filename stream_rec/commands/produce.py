"""`stream-rec produce`: publish events (from a CSV/JSONL file, or synthetic) to the events topic."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Iterable, Iterator

from ._common import HelpFormatter, add_broker_flags, settings_from_args

ALIASES = {"user_id": ("user_id", "userId", "user"), "item_id": ("item_id", "itemId", "movieId", "item"),
           "timestamp": ("timestamp", "ts", "time"), "value": ("value", "rating"), "event_type": ("event_type", "type")}


def register(sub) -> None:
    p = sub.add_parser("produce", help="publish events from a file or synthetic ones",
                       description="Publish events to the events topic, keyed by user_id, with a progress bar and "
                                   "an optional rate limit. Exactly one of --file / --synthetic.",
                       formatter_class=HelpFormatter)
    add_broker_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="events as JSONL (one event object per line) or CSV with a "
                                                    "header: user_id,item_id[,event_type][,timestamp][,value] "
                                                    "(userId/movieId/rating also understood)")
    src.add_argument("--synthetic", type=int, metavar="N", help="publish N events of the synthetic world "
                                                               "(stream_rec/synthetic.py), stamped with the send time")
    p.add_argument("--users", type=int, default=200, help="synthetic: number of users")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--catalog", action="store_true", help="synthetic: also publish the synthetic catalog to the "
                                                          "catalog topic first")
    p.add_argument("--items-out", metavar="PATH", help="synthetic: also write the catalog as JSONL (for worker --items)")
    p.add_argument("--rate", type=float, default=0.0, metavar="EV_PER_S", help="events per second (0 = as fast as "
                                                                               "possible)")
    p.add_argument("--restamp", action="store_true", help="file: replace timestamps with the send time")
    p.add_argument("--topic", help="topic to publish to (default: the events topic of the settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _pick(row: dict, field: str):
    for name in ALIASES[field]:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # left for the worker's validation to reject (wrong_type -> DLQ)


def read_events(path: str | Path) -> Iterator[dict]:
    """Events from JSONL or CSV (see ``--file``); CSV numbers become numbers, the rest is passed as is so
    the worker's validation (not this tool) decides what is bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--file: no such file {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                ev = {"user_id": _pick(row, "user_id"), "item_id": _pick(row, "item_id"),
                      "event_type": _pick(row, "event_type") or ("rate" if _pick(row, "value") else "view")}
                if _pick(row, "timestamp") is not None:
                    ev["timestamp"] = _number(_pick(row, "timestamp"))
                if _pick(row, "value") is not None:
                    ev["value"] = _number(_pick(row, "value"))
                yield ev
    else:
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc


def synthetic_events(n: int, users: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(catalog, first n events) of a synthetic world large enough for n events."""
    from ..synthetic import make_world

    per_user = max(1, -(-n // max(users, 1)))
    world = make_world(n_users=users, events_per_user=(per_user, per_user + 4), seed=seed)
    events = world.events
    while len(events) < n:  # tiny --users: repeat the walk
        events = events + world.events
    return world.items, events[:n]


async def publish(settings, topic: str, events: Iterable[dict], total: int | None, rate: float, stamp_now: bool,
                  progress: bool = True) -> int:
    """Send events keyed by user_id, paced to ``rate`` ev/s; acks are awaited in chunks (not per record)."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    from ..kafka import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
    await producer.start()
    bar = tqdm(total=total, unit="ev", disable=not progress, desc=f"-> {topic}")
    sent, pending = 0, []
    start = time.monotonic()
    try:
        for ev in events:
            if rate > 0:
                ahead = start + sent / rate - time.monotonic()
                if ahead > 0:
                    if pending:
                        await asyncio.gather(*pending)
                        pending.clear()
                    await asyncio.sleep(ahead)
            if stamp_now and isinstance(ev, dict):
                ev = dict(ev, timestamp=round(time.time(), 3))
            key = str(ev.get("user_id")).encode() if isinstance(ev, dict) and ev.get("user_id") is not None else None
            pending.append(await producer.send(topic, json.dumps(ev).encode(), key=key))
            sent += 1
            bar.update(1)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
    finally:
        bar.close()
        await producer.stop()
    return sent


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..kafka import ensure_topics, produce_json

    settings = settings_from_args(args)
    topic = args.topic or settings.topic(settings.events_topic)
    asyncio.run(ensure_topics(settings))
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise SystemExit("--synthetic N needs N >= 1")
        items, events = synthetic_events(args.synthetic, args.users, args.seed)
        if args.items_out:
            Path(args.items_out).write_text("".join(json.dumps(i) + "\n" for i in items))
        if args.catalog:
            n = asyncio.run(produce_json(settings, settings.topic(settings.catalog_topic), items, "item_id"))
            print(f"published {n} catalog records to {settings.topic(settings.catalog_topic)}")
        n = asyncio.run(publish(settings, topic, events, len(events), args.rate, True, not args.no_progress))
    else:
        n = asyncio.run(publish(settings, topic, read_events(args.file), None, args.rate, args.restamp,
                                not args.no_progress))
    print(f"published {n} events to {topic}")
    return 0
