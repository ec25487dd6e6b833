"""`stream-rec produce`: publish events (from a JSONL/CSV file, or synthetic) to the events topic.

Publish events to the events topic, keyed by user_id, with a progress bar and an optional rate limit.
Exactly one of --events-file / --synthetic-events.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

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
    p.add_argument("--restamp", action="store_true", help="file: replace timestamps with the send time (without it, "
                                                           "a log older than 2000 is shifted to end now)")
    p.add_argument("--topic", help="topic to publish to (default: the events topic of the settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.data import read_event_records
    from ..io.kafka import ensure_topics, produce_json, publish

    if args.synthetic_events is not None and args.synthetic_events < 1:
        raise SystemExit("error: --synthetic-events N needs N >= 1")
    settings = settings_from_args(args)
    topic = args.topic or settings.topic(settings.events_topic)
    asyncio.run(ensure_topics(settings))
    if args.synthetic_events is not None:
        from stream_rec_devtools.synthetic import synthetic_events

        items, events = synthetic_events(args.synthetic_events, args.synthetic_users, args.seed)
        if args.items_out_file:
            Path(args.items_out_file).write_text("".join(json.dumps(i) + "\n" for i in items))
        if args.publish_catalog:
            n = asyncio.run(produce_json(settings, settings.topic(settings.catalog_topic), items, "item_id"))
            print(f"published {n} catalog records to {settings.topic(settings.catalog_topic)}")
        n = asyncio.run(publish(settings, topic, events, total=len(events), rate=args.rate, stamp_now=True,
                                progress=not args.no_progress))
    else:
        shift = 0.0 if args.restamp else too_old_shift(args.events_file)
        events = shifted(read_event_records(args.events_file), shift)
        n = asyncio.run(publish(settings, topic, events, total=None, rate=args.rate, stamp_now=args.restamp,
                                progress=not args.no_progress))
    print(f"published {n} events to {topic}")
    return 0


def too_old_shift(path) -> float:
    """Seconds to add to the file's timestamps: a log the worker would refuse as too old (timestamps before
    2000-01-01, e.g. MovieLens-100K) is shifted to end now, gaps kept, as `stream-rec replay` does (said so
    here); any other log is sent as it is (0)."""
    import time

    from ..io.data import read_event_records
    from ..validation import log_shift

    shift = log_shift((r.get("timestamp") for r in read_event_records(path) if isinstance(r, dict)), time.time(),
                      always=False)
    if shift:
        print(f"the log holds timestamps before 2000-01-01, which the worker refuses (bad_timestamp): shifting it "
              f"by {shift / 86400:+,.1f} days so that it ends now; the gaps between events are kept "
              "(--restamp: the send times instead)")
    return shift


def shifted(records: Iterator[dict], shift: float) -> Iterator[dict]:
    """``records`` with ``shift`` seconds added to every timestamp the worker can read (others untouched)."""
    from ..validation import event_seconds

    for record in records:
        ts = event_seconds(record.get("timestamp")) if shift and isinstance(record, dict) else None
        yield record if ts is None else {**record, "timestamp": round(ts + shift, 3)}
