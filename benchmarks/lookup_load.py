"""Does a crowd of lookups slow the stream? One worker on an embedded broker, events at a steady rate, first
alone, then while N clients keep asking ``GET /recommendations/{user}`` as fast as they are answered.

    python benchmarks/lookup_load.py [--rate 100] [--phase-s 10] [--rounds 4] [--concurrency 200] [--users 500]
                                     [--items-per-theme 100] [--model DIR] [--token TOKEN] [--set NAME=VALUE]
                                     [--client-nice N]

The two phases alternate ``--rounds`` times, and their order flips every round (idle, lookups; lookups,
idle; ...): the box's other load drifts, and so does the embedded broker (it slows with the batches it
holds, docs/RELIABILITY.md), so a fixed order would charge that drift to the later phase. Prints, for each
phase, the consume -> recommendation latency the worker stamps on every record (``latency_ms``: from the
moment it took the event to the moment the list was built) as p50 / p99 / mean, each round's ratio of the
loaded p99 to the idle p99 and the pooled one, and the lookups answered per second with their p50 / p99.
Issue 23's measurement (before lookups were batched): mean 4.9 -> 40.5 ms with 200 lookups at 100 ev/s.
The clients run in this process on the same cores as the worker and the broker; ``--client-nice N`` runs
them in a process of their own, niced N more than this one, instead (closer to clients on other machines: their CPU
then yields to the worker's). Compare ratios from one run, and rerun when the box is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from stream_rec.io.broker import EmbeddedBroker
from stream_rec.io.kafka import ensure_topics, kafka_consumer
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools import harness


def worker_cpu_s(worker) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request

    text = urllib.request.urlopen(worker.url("/metrics"), timeout=5).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "process_cpu_seconds_total")


def quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.1f} / p99 {cuts[98]:.1f} / mean {statistics.fmean(values):.1f} ms (n={len(values)})"


async def follow_latencies(settings, sink: dict) -> None:
    """Every recommendation's ``latency_ms``, filed under the phase running when it arrived."""
    consumer = kafka_consumer(settings, settings.topic(settings.recommendations_topic), auto_offset_reset="latest",
                              fetch_max_wait_ms=10)
    await consumer.start()
    try:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                for msg in msgs:
                    rec = json.loads(msg.value)
                    if rec.get("latency_ms") is not None and sink.get("phase"):
                        sink.setdefault(sink["phase"], []).append(rec["latency_ms"])
    finally:
        await consumer.stop()


async def ask(url_of, users: list[str], token: str, stop: asyncio.Event, times: list[float]) -> None:
    from aiohttp import ClientSession, TCPConnector

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with ClientSession(connector=TCPConnector(limit=0)) as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(url_of(random.choice(users)), headers=headers) as response:
                await response.read()
            times.append((time.perf_counter() - started) * 1000)


def _client_process(urls: list[str], token: str, concurrency: int, nice: int, stop, out) -> None:
    """A process of its own, ``nice`` levels below this one: ``concurrency`` clients until ``stop`` is set; their
    answer times (ms) go to ``out``."""
    import os

    os.nice(nice)

    async def main() -> list[float]:
        halt, times = asyncio.Event(), []
        clients = [asyncio.create_task(ask(lambda u: u, urls, token, halt, times)) for _ in range(concurrency)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        halt.set()
        await asyncio.gather(*clients, return_exceptions=True)
        return times

    out.put(asyncio.run(main()))


class Clients:
    """The lookup clients of one phase: tasks in this process, or (``nice`` set) a process of their own."""

    def __init__(self, args, worker, users: list[str], times: list[float]):
        self.args, self.worker, self.users, self.times = args, worker, users, times
        self.stop, self.tasks, self.proc = asyncio.Event(), [], None

    async def start(self) -> None:
        args, urls = self.args, [self.worker.url(f"/recommendations/{u}") for u in self.users]
        if args.client_nice is None:
            self.tasks = [asyncio.create_task(ask(lambda u: u, urls, args.token, self.stop, self.times))
                          for _ in range(args.concurrency)]
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            self.mp_stop, self.mp_out = ctx.Event(), ctx.Queue()
            self.proc = ctx.Process(target=_client_process, args=(urls, args.token, args.concurrency,
                                                                  args.client_nice, self.mp_stop, self.mp_out))
            self.proc.start()
        await asyncio.sleep(1 if args.client_nice is None else 3)  # clients connected (a spawned process imports)

    async def stop_all(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.proc is not None:
            self.mp_stop.set()
            self.times.extend(await asyncio.to_thread(self.mp_out.get, True, 60))
            await asyncio.to_thread(self.proc.join, 30)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


async def run(args, settings, worker, catalog_ids: list[str]) -> None:
    sink: dict = {}
    follower = asyncio.create_task(follow_latencies(settings, sink))
    producer = await harness.make_producer(settings)
    users = [f"user-{n}" for n in range(args.users)]
    clock = time.time() - 3600
    warm = [harness.event_record(u, random.choice(catalog_ids), clock + n) for n, u in enumerate(users)]
    await harness.send_events(producer, settings, warm, rate=0)
    await asyncio.sleep(5)  # the warm-up's lists are built; every user has a state

    def events(n: int):
        for k in range(n):
            yield harness.event_record(random.choice(users), random.choice(catalog_ids), time.time())

    results = {"idle": ([], [], 0.0, 0.0), "lookups": ([], [], 0.0, 0.0)}  # latencies, lookup times, s, cpu s
    own_cpu: dict[str, float] = {}  # this process (producer + clients): it shares the cores with the worker
    ratios = []
    for round_ in range(args.rounds):  # alternating phases, the order flipped each round: the box drifts
        got_by_phase = {}
        for phase in (("idle", "lookups") if round_ % 2 == 0 else ("lookups", "idle")):
            latencies, times, seconds, cpu_s = results[phase]
            clients = Clients(args, worker, users, times) if phase == "lookups" else None
            if clients is not None:
                await clients.start()
            cpu_before, started, own_before = worker_cpu_s(worker), time.monotonic(), time.process_time()
            sink["phase"] = phase
            await harness.send_events(producer, settings, events(int(args.rate * args.phase_s)), rate=args.rate,
                                      chunk=50)
            await asyncio.sleep(1)
            sink["phase"] = None
            if clients is not None:
                await clients.stop_all()
            got = got_by_phase[phase] = sink.pop(phase, [])
            print(f"round {round_ + 1} {phase:8s} {quantiles(got)}", flush=True)
            results[phase] = (latencies + got, times, seconds + time.monotonic() - started,
                              cpu_s + worker_cpu_s(worker) - cpu_before)
            own_cpu[phase] = own_cpu.get(phase, 0.0) + time.process_time() - own_before
        ratios.append(p99(got_by_phase["lookups"]) / p99(got_by_phase["idle"]))
        print(f"round {round_ + 1} p99 ratio {ratios[-1]:.2f}", flush=True)
    await producer.stop()
    follower.cancel()
    idle, loaded = results["idle"][0], results["lookups"][0]
    print(f"consume->recommendation, {args.rate:.0f} ev/s alone:            {quantiles(idle)}")
    print(f"consume->recommendation, with {args.concurrency} lookup clients: {quantiles(loaded)}")
    if len(idle) > 1 and len(loaded) > 1:
        print(f"p99 with lookups / p99 alone: {p99(loaded) / p99(idle):.2f} pooled, rounds "
              f"{' '.join(f'{r:.2f}' for r in ratios)} (goal: at most 1.20)")
    cpu = {phase: r[3] / r[2] for phase, r in results.items() if r[2]}
    where = ("this process" if args.client_nice is None
             else f"this process (clients in another, niced +{args.client_nice})")
    print(f"worker CPU: {cpu['idle']:.0%} of a core alone, {cpu['lookups']:.0%} with the lookups; {where}: "
          f"{own_cpu['idle'] / results['idle'][2]:.0%} / {own_cpu['lookups'] / results['lookups'][2]:.0%}")
    times, seconds = results["lookups"][1], results["lookups"][2]
    print(f"lookups: {len(times) / seconds:.0f}/s answered, {quantiles(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4, help="idle/lookups phase pairs, the order flipped each round")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items-per-theme", type=int, default=100, help="synthetic catalogue size (x themes)")
    parser.add_argument("--model", default="", help="a model directory (default: the untrained model)")
    parser.add_argument("--token", default="", help="run the worker with this bearer token")
    parser.add_argument("--client-nice", type=int, default=None, metavar="N",
                        help="run the clients in a process of their own, niced N more (default: in this one)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a worker setting, e.g. lookup_loop_share=0.1 (repeatable)")
    args = parser.parse_args()
    catalog = make_catalog(items_per_theme=args.items_per_theme)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "tansu.log") as broker:
        settings = harness.isolated_settings(broker.bootstrap, Path(tmp) / "data", tag="lookups", partitions=2,
                                             model=args.model, **({"http_token": args.token} if args.token else {}),
                                             **dict(kv.split("=", 1) for kv in args.set))
        asyncio.run(ensure_topics(settings))
        items = Path(tmp) / "items.jsonl"
        items.write_text("".join(json.dumps(r) + "\n" for r in catalog))
        with harness.WorkerProcess(settings, Path(tmp) / "w", items=items, threads=1) as worker:
            asyncio.run(_ready_then_run(args, settings, worker, [r["item_id"] for r in catalog]))
        print(f"(catalogue {len(catalog)} items, {args.users} users, one worker, 2 partitions; "
              f"{'token on' if args.token else 'no token'})")


async def _ready_then_run(args, settings, worker, catalog_ids) -> None:
    collector = await harness.RecCollector(settings).start()
    try:
        await harness.wait_ready(settings, collector, catalog_ids[0])
    finally:
        await collector.stop()
    await run(args, settings, worker, catalog_ids)


if __name__ == "__main__":
    main()
