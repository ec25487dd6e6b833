"""`stream-rec produce`: publish events (from a JSONL/CSV file, or synthetic) to the events topic.

Publish events to the events topic, keyed by user_id, with a progress bar and an optional rate limit.
Exactly one of --events-file / --synthetic-events.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import add_broker_flags, add_command, existing_path, settings_from_args

SUMMARY = "publish events from a file or synthetic ones"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    add_broker_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--events-file", metavar="FILE", type=existing_path,
                     help="events as JSONL (one event object per line) or CSV with a header: "
                          "user_id,item_id[,event_type][,timestamp][,value] (userId/movieId/rating also understood)")
    src.add_argument("--synthetic-events", type=int, metavar="N", help="publish N events of the synthetic world "
                                                                      "(stream_rec_devtools/synthetic.py), stamped with the send time")
    p.add_argument("--synthetic-users", type=int, default=200, metavar="N", help="synthetic: number of users")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--publish-catalog", action="store_true", help="synthetic: also publish the synthetic catalog to "
                                                                  "the catalog topic first")
    p.add_argument("--items-out-file", metavar="FILE", help="synthetic: also write the catalog as JSONL (for "
                                                            "worker --items-file)")
    p.add_argument("--rate", type=float, default=0.0, metavar="EV/S", help="events per second (0 = as fast as possible)")
    p.add_argument("--restamp", action="store_true", help="file: replace timestamps with the send time")
    p.add_argument("--topic", help="topic to publish to (default: the events topic of the settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.data import read_event_records
    from ..io.kafka import ensure_topics, produce_json, publish
    from stream_rec_devtools.synthetic import synthetic_events

    if args.synthetic_events is not None and args.synthetic_events < 1:
        raise SystemExit("error: --synthetic-events N needs N >= 1")
    settings = settings_from_args(args)
    topic = args.topic or settings.topic(settings.events_topic)
    asyncio.run(ensure_topics(settings))
    if args.synthetic_events is not None:
        items, events = synthetic_events(args.synthetic_events, args.synthetic_users, args.seed)
        if args.items_out_file:
            Path(args.items_out_file).write_text("".join(json.dumps(i) + "\n" for i in items))
        if args.publish_catalog:
            n = asyncio.run(produce_json(settings, settings.topic(settings.catalog_topic), items, "item_id"))
            print(f"published {n} catalog records to {settings.topic(settings.catalog_topic)}")
        n = asyncio.run(publish(settings, topic, events, len(events), args.rate, True, not args.no_progress))
    else:
        n = asyncio.run(publish(settings, topic, read_event_records(args.events_file), None, args.rate, args.restamp,
                                not args.no_progress))
    print(f"published {n} events to {topic}")
    return 0
