"""`stream-rec produce`: publish events (from a CSV/JSONL file, or synthetic) to the events topic.

Publish events to the events topic, keyed by user_id, with a progress bar and an optional rate limit.
Exactly one of --file / --synthetic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_broker_flags, add_command, settings_from_args


def register(sub) -> None:
    p = add_command(sub, "produce", "publish events from a file or synthetic ones", __doc__)
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


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.data import read_event_records
    from ..io.kafka import ensure_topics, produce_json, publish
    from ..synthetic import synthetic_events

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
        n = asyncio.run(publish(settings, topic, read_event_records(args.file), None, args.rate, args.restamp,
                                not args.no_progress))
    print(f"published {n} events to {topic}")
    return 0
