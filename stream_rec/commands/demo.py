"""`stream-rec demo`: embedded broker + worker + synthetic producer + live tail, in one command.

Run the whole thing locally: an embedded broker, a worker serving the untrained model (or --model), a
synthetic event stream, and a live view of the recommendations. Ctrl-C, SIGTERM or SIGHUP (the terminal
closing) stops everything cleanly.

Order of start: broker -> topics -> catalog -> worker (subprocess) -> producer + tail (this process).
Every ``--roll-s`` (30 minutes) the demo moves to new events and recommendations topics, compacts the state
changelog (the newest state of each user), and restarts its worker on them with an empty data dir (it
restores every user's state from the compacted changelog), then deletes the old topics: the embedded
broker keeps every record batch until its topic goes, and slows with the batches of the partitions it is
asked for (docs/RELIABILITY.md).
Order of stop (a signal, or --duration-s): producer and tail -> worker (SIGTERM, a clean Faust shutdown;
SIGKILL after a grace period) -> broker. Worker and broker run in their own process groups, so a terminal
Ctrl-C reaches only this process, which then stops them in that order: nothing is left running. Once the
stop has begun, SIGTERM and SIGHUP no longer interrupt it (a closed terminal must not orphan the worker);
a second Ctrl-C kills what is left.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ._common import add_command, signals_interrupt

SUMMARY = "broker + worker + synthetic producer + live tail (Ctrl-C stops all)"

# The embedded broker (Tansu 0.6, in memory) keeps every record batch and reads through all of a
# partition's batches on each fetch of it, so it slows as batches pile up (docs/RELIABILITY.md, "The
# embedded broker ages"). The demo makes few batches and few fetches:
PRODUCER_BURST_S = 0.2  # the events due in each 0.2 s go out at once: a batch per partition per burst
# The worker's fetch wait, at least (Settings.fetch_max_wait_ms, 10 by default): every fetch reads through
# the partitions' batches, and a 10 ms wait makes ~100 a second even while idle. Tansu answers a waiting
# fetch ~14 ms after new records arrive (DEVELOPERS.md), a little later than the 10 ms re-poll.
WORKER_FETCH_WAIT_MS = 100
TAIL_FETCH_WAIT_MS = 200  # the live tail's (50 ms for `stream-rec tail`)
# one worker, so one partition a topic: a burst is one batch, not four, and a fetch reads through one
# partition's batches, not four (Settings.partitions, 4 by default)
DEMO_PARTITIONS = 1
POOL_EVENTS = 100_000  # the synthetic events of a demo without an end, sent round and round
# The embedded broker frees a topic's batches only when the topic is deleted (no retention, no compaction;
# DeleteRecords crashes it). The demo adds ~5 batches a second to each of its events and recommendations
# partitions, every fetch of one reads through its batches (~1 us each), and the state changelog grows
# with every event. Rolling every 30 minutes bounds all three (benchmarks/demo_aging.py with --roll-s 300:
# the broker's CPU and memory go back to their minute-2 figures after each roll); without it, fetches took
# ~70 ms after 3 hours and the broker stopped answering after 5-6.
ROLL_S = 1800.0


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    p.add_argument("--port", type=int, default=0, help="broker port (0 = any free port)")
    p.add_argument("--rate", type=float, default=20.0, metavar="EV/S", help="synthetic events per second")
    p.add_argument("--synthetic-users", type=int, default=50, metavar="N", help="synthetic users")
    p.add_argument("--synthetic-events", type=int, default=0, metavar="N",
                   help=f"stop producing after this many events (0 = never: {POOL_EVENTS:,} generated events are "
                        "sent again from the first, time-stamped now)")
    p.add_argument("--duration-s", type=float, default=0.0, metavar="S", help="stop after S seconds (0 = until Ctrl-C)")
    p.add_argument("--data-dir", metavar="DIR", help="worker data dir and logs (default: a fresh temporary directory)")
    p.add_argument("--model", metavar="DIR", help="trained model directory to serve (default: a small model trained "
                                                  "on the synthetic world in seconds on first use, then cached under "
                                                  "the cache dir)")
    p.add_argument("--untrained", action="store_true", help="serve the untrained model (random recommendations)")
    p.add_argument("--roll-s", type=float, default=ROLL_S, metavar="S",
                   help="move to new events/recommendations topics every S seconds, the worker restarting on them "
                        "with its state, and delete the old ones (0 = never; the embedded broker then slows after "
                        "a few hours)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="N",
                   help="port of the worker's HTTP listener (0 = any free port)")
    p.set_defaults(func=run)


def say(text: str) -> None:
    try:
        print(f"[demo] {text}", flush=True)
    except OSError:  # the terminal is gone (SIGHUP): go on stopping quietly
        pass


def pages_line(settings, user_id: str) -> str:
    """Where to watch the demo in a browser: the worker's pages (stream_rec/worker/ui.py)."""
    from urllib.parse import quote

    url = settings.http_url
    if not settings.ui:
        return f"pages off (STREAM_REC_UI=false); the lookup: {url}/recommendations/USER"
    return (f"in a browser: {url}/ui/users/{quote(user_id, safe='')} (one user's list, live), {url}/ui/ (find a "
            f"user or an item), {url}/ui/system (the worker's figures)")


def demo_model(args: argparse.Namespace) -> str | None:
    """The model directory to serve: ``--model``, none with ``--untrained``, else the cached demo model."""
    if args.model or args.untrained:
        return args.model
    from stream_rec_devtools.demo_model import demo_model_dir

    from ..settings import Settings

    say("training a small model on the synthetic world (seconds; cached for the next run) ...")
    model = str(demo_model_dir(Settings.from_env().cache_dir))
    say(f"serving the trained model in {model}: watch each user's recommendations follow their sequence")
    return model


def generation_settings(settings, generation: int):
    """The settings of the demo's ``generation``-th roll: its own events and recommendations topics
    (``events.g1``, ...; generation 0 keeps the plain names) and events epoch (the new topic's offsets
    start at 0 again: Settings.events_epoch), the rest shared -- the same app id, data dir and state
    changelog, so the restarted worker keeps every user's state."""
    if generation == 0:
        return settings
    return settings.replace(events_topic=f"{settings.events_topic}.g{generation}", events_epoch=generation,
                            recommendations_topic=f"{settings.recommendations_topic}.g{generation}")


class DemoWorker:
    """The demo's worker process, restarted on new topics at each roll (the same log file)."""

    def __init__(self, items_file: Path, log_file: Path):
        self.items_file, self.log_file, self.process = items_file, log_file, None

    def start(self, settings):
        from stream_rec_devtools.harness import WorkerProcess

        self.process = WorkerProcess(settings, items=self.items_file, log_file=self.log_file).start()
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


async def run_generation(settings, source, args: argparse.Namespace, worker: DemoWorker, roll_at: float,
                         stop_at: float) -> str:
    """Publish ``source`` at ``--rate`` to this generation's events and print its recommendations until
    ``roll_at`` ("roll"), ``stop_at`` ("duration"; monotonic times), Ctrl-C, or the worker's exit ("worker")."""
    import asyncio

    from ..io.kafka import publish
    from .tail import follow

    stop = asyncio.Event()
    producer = asyncio.create_task(publish(settings, settings.topic(settings.events_topic), source, total=None,
                                           rate=args.rate, stamp_now=True, progress=False, burst_s=PRODUCER_BURST_S))
    tail = asyncio.create_task(follow(settings, from_beginning=False, max_records=0, timeout_s=0, n_items=5,
                                      as_json=False, stop=stop, fetch_wait_ms=TAIL_FETCH_WAIT_MS))
    why = "tail"
    try:
        while not tail.done():
            if not worker.alive():
                say(f"worker exited with code {worker.process.proc.returncode}; see {worker.log_file}")
                why = "worker"
                break
            if time.monotonic() >= min(roll_at, stop_at):
                why = "roll" if roll_at < stop_at else "duration"
                break
            await asyncio.sleep(0.2)
    finally:
        # if stopping ever takes long, say where we are stuck (all threads' stacks on stderr)
        faulthandler.dump_traceback_later(30, exit=False)
        stop.set()
        producer.cancel()
        # bounded: asyncio.wait returns at the timeout even if a task ignores its cancellation
        await asyncio.wait({producer, tail}, timeout=10)
    return why


async def produce_and_tail(settings, events: list[dict], args: argparse.Namespace, worker: DemoWorker) -> None:
    """Run generation after generation (a roll every ``--roll-s``) until Ctrl-C, ``--duration-s`` or the
    worker's exit."""
    import asyncio

    from ..io.kafka import compact_topic, delete_topics, ensure_topics
    from ..io.topics import changelog_topic_name

    endless = not args.synthetic_events  # a demo runs until stopped: the world's events again and again
    source = itertools.cycle(events) if endless else iter(events)
    stop_at = time.monotonic() + args.duration_s if args.duration_s else float("inf")
    generation = 0
    while True:
        current = generation_settings(settings, generation)
        roll_at = time.monotonic() + args.roll_s if args.roll_s > 0 else float("inf")
        if await run_generation(current, source, args, worker, roll_at=roll_at, stop_at=stop_at) != "roll":
            return  # the stop goes on in run(), under the traceback dump armed by run_generation
        faulthandler.cancel_dump_traceback_later()
        generation += 1
        new = generation_settings(settings, generation)
        say(f"rolling to topics '{new.topic(new.events_topic)}' and '{new.topic(new.recommendations_topic)}' "
            f"(the embedded broker keeps every batch until its topic is deleted); the worker restarts on them "
            f"and restores its users' states from the compacted changelog (~15 s)")
        await ensure_topics(new)
        await asyncio.to_thread(worker.process.stop)
        kept = await compact_topic(new, changelog_topic_name(new))
        shutil.rmtree(new.table_dir, ignore_errors=True)  # the restart restores from the compacted changelog
        say(f"state changelog compacted to {kept} records; worker pid {worker.start(new).proc.pid} started on them")
        await delete_topics(settings, [current.topic(current.events_topic),
                                       current.topic(current.recommendations_topic)])


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.broker import EmbeddedBroker, free_port
    from ..io.kafka import ensure_topics, produce_json
    from ..settings import Settings
    from stream_rec_devtools.synthetic import synthetic_events

    worker = None
    with signals_interrupt():  # SIGTERM / SIGHUP stop the demo like Ctrl-C
        model = demo_model(args)
        data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="stream-rec-demo-"))
        data_dir.mkdir(parents=True, exist_ok=True)
        with EmbeddedBroker(args.port or None, log_file=data_dir / "broker.log") as broker:
            settings = Settings.from_env(broker=broker.bootstrap, data_dir=data_dir / "worker",
                                         metrics_port=args.metrics_port or free_port(), model=model)
            settings = settings.replace(fetch_max_wait_ms=max(settings.fetch_max_wait_ms, WORKER_FETCH_WAIT_MS),
                                        partitions=DEMO_PARTITIONS)
            say(f"broker pid {broker.process.pid} on {broker.bootstrap} (embedded Tansu, in memory)")
            asyncio.run(ensure_topics(settings))
            items, events = synthetic_events(args.synthetic_events or POOL_EVENTS, args.synthetic_users, seed=0)
            items_file = data_dir / "items.jsonl"
            items_file.write_text("".join(json.dumps(i) + "\n" for i in items))
            asyncio.run(produce_json(settings, settings.topic(settings.catalog_topic), items, "item_id"))
            say(f"catalog: {len(items)} items published to '{settings.topic(settings.catalog_topic)}'")
            try:
                worker = DemoWorker(items_file, data_dir / "worker.log")
                say(f"worker pid {worker.start(settings).proc.pid} started (log: {worker.log_file}, http: {settings.http_url}/healthz); "
                    "it joins its group in ~10 s")
                say(f"producing {args.rate:g} events/s for {args.synthetic_users} users; recommendations below "
                    "(user, last items seen -> top items). Ctrl-C stops everything.")
                say(pages_line(settings, events[0]["user_id"]))
                asyncio.run(produce_and_tail(settings, events, args, worker))
            except KeyboardInterrupt:
                pass
            finally:
                # from here on a hang-up or a SIGTERM does not cut the stop short: the children go first
                for hangup in (signal.SIGHUP, signal.SIGTERM):
                    signal.signal(hangup, signal.SIG_IGN)
                if worker is not None and worker.process is not None:
                    say("stopping worker ...")
                    try:
                        worker.process.stop()
                    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                        worker.process.kill()
                faulthandler.cancel_dump_traceback_later()
                say("stopping broker ...")
    say(f"stopped; worker log and state kept in {data_dir}")
    return 0 if worker is None or worker.process is None or worker.process.proc.returncode in (
        0, -signal.SIGTERM, -signal.SIGKILL) else 1
