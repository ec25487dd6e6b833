"""`stream-rec tail`: print recommendations as they arrive, with the user's last items beside them.

Follow the recommendations topic and print one line per record: the user, their last items (history) and the
top items with scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._common import add_broker_flags, add_command, settings_from_args

SUMMARY = "print recommendations as they arrive"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    add_broker_flags(p)
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    p.add_argument("--max-records", type=int, default=0, metavar="N", help="exit after N records (0 = never)")
    p.add_argument("--timeout-s", type=float, default=0.0, metavar="S", help="exit after S seconds (0 = never)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="recommended items shown per line")
    p.add_argument("--json", action="store_true", help="print the raw JSON records instead")
    p.set_defaults(func=run)


def format_record(rec: dict, n_items: int = 5) -> str:
    """One line: ``user  [last items] -> item (score) ...  model, latency``."""
    history = " ".join(rec.get("history") or [])
    top = " ".join(f"{i['item_id']}({i['score']:.2f})" for i in rec.get("items", [])[:n_items])
    return (f"{rec.get('user_id', '?'):>10}  seen [{history}] -> {top}   "
            f"[{rec.get('model_version', '?')}, {rec.get('latency_ms', 0):.0f} ms]")


async def follow(settings, from_beginning: bool, max_records: int, timeout_s: float, n_items: int, as_json: bool,
                 out=sys.stdout, stop=None, fetch_wait_ms: int = 50) -> int:
    """Print records until ``max_records``/``timeout_s``/``stop`` (an asyncio.Event) says so; returns the count."""
    from ..io.kafka import kafka_consumer, start_client

    topic = settings.topic(settings.recommendations_topic)
    consumer = await start_client(kafka_consumer(settings, topic, fetch_max_wait_ms=fetch_wait_ms,
                                                 auto_offset_reset="earliest" if from_beginning else "latest"), settings)
    count, start = 0, time.monotonic()
    try:
        while not (stop is not None and stop.is_set()):
            if timeout_s and time.monotonic() - start > timeout_s:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        rec = json.loads(m.value)
                    except ValueError:
                        continue
                    print(json.dumps(rec) if as_json else format_record(rec, n_items), file=out, flush=True)
                    count += 1
                    if max_records and count >= max_records:
                        return count
    finally:
        await consumer.stop()
    return count


def run(args: argparse.Namespace) -> int:
    import asyncio

    settings = settings_from_args(args)
    asyncio.run(follow(settings, from_beginning=args.from_beginning, max_records=args.max_records,
                       timeout_s=args.timeout_s, n_items=args.top_k, as_json=args.json))
    return 0
