"""`stream-rec replay`: a log through a real broker and worker, the live recommendations scored prequentially.

Streams the events of --events-file in timestamp order (stable: ties keep file order) through a real Kafka broker and a
`stream-rec worker` serving MODEL, consumes the recommendations, and scores every emitted list against the
user's next event (prequential HR@10 / NDCG@10). Prints JSON with the online numbers, the offline
leave-one-out numbers of the same model on the same users (the `evaluate` code path) and the end-to-end
latency, and writes a plot of quality and latency over time.
"""

from __future__ import annotations

import argparse
import logging

from ._common import add_command, existing_path

log = logging.getLogger(__name__)


SUMMARY = "replay a log through broker + worker and score the live recs (prequential HR/NDCG@10)"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    p.add_argument("--events-file", metavar="FILE", required=True, type=existing_path,
                   help="events: JSONL events-topic records, CSV user_id,item_id,timestamp, MovieLens u.data / "
                        "ratings.dat, or their directory")
    p.add_argument("--items-file", metavar="FILE", type=existing_path,
                   help="items file (JSONL catalog, CSV item_id,title, u.item / movies.dat); only used to report "
                        "how many streamed items the model does not know")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory, or a directory of them (the newest is used)")
    p.add_argument("--broker", default="embedded", metavar="HOST:PORT",
                   help="Kafka bootstrap servers, or 'embedded' to start a Tansu broker for the run")
    p.add_argument("--max-users", type=int, default=0, metavar="N",
                   help="replay only the first N users (in order of their first event in the file); 0 = all")
    p.add_argument("--max-events", type=int, default=0, metavar="N",
                   help="stop after the first N events of the time-ordered stream; 0 = all")
    p.add_argument("--rate", type=float, default=0.0, metavar="EV/S",
                   help="offered load in events/s (an upper bound with --order paced); 0 = as fast as possible")
    p.add_argument("--order", choices=["time", "paced"], default="time",
                   help="time: the whole log in timestamp order at --rate (a user's burst of events may land in one "
                        "micro-batch and get one list, so not every event is scored: see 'coverage'); paced: each "
                        "user's next event is sent only after the list for the previous one arrived (users in "
                        "parallel, in timestamp order of their next event), so every event gets its own list")
    p.add_argument("--in-flight", type=int, default=256, metavar="N",
                   help="with --order paced: users with an event in flight at once")
    p.add_argument("--batch-max-events", type=int, default=None, metavar="N",
                   help="worker micro-batch size (default: the worker's own, Settings.batch_max_events)")
    p.add_argument("--history-len", type=int, default=None, metavar="N",
                   help="items of rolling history the worker keeps per user (default: the worker's own, "
                        "Settings.history_len); seen-item exclusion online only covers these, offline evaluation "
                        "excludes the whole history")
    p.add_argument("--out", default="runs/replay", metavar="DIR", help="where replay.json, replay.png and the "
                                                                        "worker log are written")
    p.add_argument("--event-type", default="view", help="event_type of the replayed events")
    p.add_argument("--timeout-s", type=float, default=120.0, metavar="S",
                   help="give up waiting for the last recommendations after S seconds without any")
    p.add_argument("--no-offline", action="store_true", help="skip the offline evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from stream_rec_devtools.replay import replay

    from ..io.broker import EmbeddedBroker

    if args.max_users < 0 or args.max_events < 0 or args.rate < 0 or args.in_flight < 1:
        raise SystemExit("error: replay: --max-users, --max-events and --rate must be >= 0, --in-flight >= 1")

    broker = EmbeddedBroker() if args.broker == "embedded" else None
    try:
        bootstrap = broker.start().bootstrap if broker else args.broker
        asyncio.run(replay(args, bootstrap))  # prints the result and writes replay.json / replay.png
    except KeyboardInterrupt:
        return 130  # the partial result was written (see "interrupted_after_events")
    finally:
        if broker is not None:
            broker.stop()
    return 0
