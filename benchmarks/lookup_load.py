"""Does a crowd of lookups slow the stream? One worker on an embedded broker, events at a steady rate, and N
clients that keep asking ``GET /recommendations/{user}`` as fast as they are answered, in short phases:

    python benchmarks/lookup_load.py [--rate 100] [--phase-s 3] [--rounds 20] [--concurrency 200] [--users 500]
                                     [--control] [--items-per-theme 100] [--model DIR] [--token TOKEN]
                                     [--set NAME=VALUE] [--client-nice N] [--verbose]

* ``idle``: the clients wait; ``lookups``: they ask the worker; ``control`` (with ``--control``): they ask a
  trivial server in a process of its own that answers as slowly as the worker did (so the clients ask at the
  worker's rate), which shows what the clients' own CPU costs the stream on these cores, apart from the
  worker's answering.
* The events flow the whole run; the clients (a process of their own, started once) are pointed at each
  phase's target; ``--settle-s`` after each switch is not measured. Rounds of short phases, their order
  turned each round: the box's other load drifts over seconds, and so does the embedded broker (it slows
  with the batches it holds, docs/RELIABILITY.md); over many short alternations every phase sees the same
  drift.
* The clients' process runs ``--client-nice`` levels below this one, in a session of its own whose Linux
  autogroup gets the same nice (autogroups share the CPU between sessions whatever a process's nice; the
  worker and the broker run in sessions of their own): the clients' CPU yields to the worker's, as it
  would with the clients on other machines.

Prints, per phase, the consume -> recommendation latency the worker stamps on every record (``latency_ms``:
from the moment it took the event to the moment the list was built) as p50 / p99 / mean over all rounds,
the p99 ratios (lookups / idle is issue 23's goal: at most 1.20), the worker's CPU per phase and the
lookups answered per second with their p50 / p99. Issue 23's measurement (before lookups were batched):
mean 4.9 -> 40.5 ms with 200 lookups at 100 ev/s. Compare ratios from one run, and rerun when the box is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def lower_priority(nice: int) -> None:
    """This process niced ``nice`` more, in a session of its own whose autogroup gets the same nice. Linux shares
    the CPU between sessions' autogroups whatever their processes' nice (``/proc/sys/kernel/sched_autogroup_enabled``;
    the worker and the broker run in sessions of their own), so a nice alone would not lower the clients."""
    import os

    os.nice(nice)
    try:
        os.setsid()
        Path("/proc/self/autogroup").write_text(str(min(19, os.nice(0))))
    except OSError:  # not Linux, or autogroups off: the nice is all there is
        pass


PAUSED, WORKER, CONTROL = 0, 1, 2  # where the clients aim (a shared value): nowhere, the worker, the control


@dataclass
class Shared:
    """What the benchmark and the client process share: where the clients aim, the worker's answers so far."""

    aim: Any
    answered: Any
    answered_ms: Any
    failed: Any


def _client_process(urls: dict, token: str, concurrency: int, nice: int, shared, stop, out) -> None:
    """A process of its own, ``nice`` levels below this one: ``concurrency`` clients, each asking as fast as it is
    answered the target that ``shared.aim`` names (none while :data:`PAUSED`), until ``stop`` is set. The
    worker's answer times (ms) go to ``out`` at the end, their count and sum to ``shared`` as they come."""
    import aiohttp
    from aiohttp import ClientSession, TCPConnector

    lower_priority(nice)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def client(session, times: list[float]) -> None:
        while not stop.is_set():
            target = shared.aim.value
            if target == PAUSED:
                await asyncio.sleep(0.01)
                continue
            started = time.perf_counter()
            try:
                async with session.get(random.choice(urls[target]), headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
                ok = False
            if not ok:  # counted, and asked again after a pause (a refusal is not an answer)
                shared.failed.value += 1
                await asyncio.sleep(0.1)
            elif target == WORKER:
                times.append((time.perf_counter() - started) * 1000)
                shared.answered.value += 1
                shared.answered_ms.value += times[-1]

    async def main() -> list[float]:
        times: list[float] = []
        async with ClientSession(connector=TCPConnector(limit=0)) as session:
            await asyncio.gather(*(client(session, times) for _ in range(concurrency)), return_exceptions=True)
        return times

    out.put(asyncio.run(main()))


def _control_server(port: int, body: bytes, nice: int, delay) -> None:
    """The control: a trivial HTTP server in a process of its own that answers every lookup with ``body`` after
    ``delay`` seconds (the worker's mean answer time, so that the clients ask at the worker's rate)."""
    from aiohttp import web

    lower_priority(nice)

    async def answer(request):
        await asyncio.sleep(delay.value)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/recommendations/{user}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Clients:
    """The lookup clients (and the control server), started once and aimed at each phase's target."""

    def __init__(self, args, worker, users: list[str], body: bytes):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.shared = Shared(aim=ctx.Value("i", PAUSED, lock=False), answered=ctx.Value("i", 0, lock=False),
                             answered_ms=ctx.Value("d", 0.0, lock=False), failed=ctx.Value("i", 0, lock=False))
        self.delay = ctx.Value("d", 0.0, lock=False)
        urls = {WORKER: [worker.url(f"/recommendations/{u}") for u in users]}
        self.server = None
        if args.control:
            port = free_port()
            urls[CONTROL] = [f"http://127.0.0.1:{port}/recommendations/{u}" for u in users]
            self.server = ctx.Process(target=_control_server, args=(port, body, args.client_nice, self.delay),
                                      daemon=True)
            self.server.start()
        self.proc = ctx.Process(target=_client_process, args=(urls, args.token, args.concurrency, args.client_nice,
                                                              self.shared, self.stop, self.out))
        self.proc.start()

    def point(self, phase: str) -> None:
        self.shared.aim.value = {"idle": PAUSED, "lookups": WORKER, "control": CONTROL}[phase]

    def mean_answer_s(self) -> float:
        return self.shared.answered_ms.value / max(1, self.shared.answered.value) / 1000

    async def close(self) -> list[float]:
        self.stop.set()
        times = await asyncio.to_thread(self.out.get, True, 60)
        await asyncio.to_thread(self.proc.join, 30)
        if self.server is not None:
            self.server.terminate()
        return times


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


async def run(args, settings, worker, catalog_ids: list[str]) -> None:
    import urllib.request

    sink: dict = {}
    follower = asyncio.create_task(follow_latencies(settings, sink))
    producer = await harness.make_producer(settings)
    users = [f"user-{n}" for n in range(args.users)]
    clock = time.time() - 3600
    warm = [harness.event_record(u, random.choice(catalog_ids), clock + n) for n, u in enumerate(users)]
    await harness.send_events(producer, settings, warm, rate=0)
    await asyncio.sleep(5)  # the warm-up's lists are built; every user has a state
    request = urllib.request.Request(worker.url(f"/recommendations/{users[0]}"),
                                     headers={"Authorization": f"Bearer {args.token}"} if args.token else {})
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
    clients = Clients(args, worker, users, body)
    await asyncio.sleep(3)  # the spawned processes have imported and connected

    halt = asyncio.Event()

    def events():
        while not halt.is_set():
            yield harness.event_record(random.choice(users), random.choice(catalog_ids), time.time())

    stream = asyncio.create_task(harness.send_events(producer, settings, events(), rate=args.rate, chunk=50))
    phases = ["idle", "lookups"] + (["control"] if args.control else [])
    seconds = dict.fromkeys(phases, 0.0)
    cpu = dict.fromkeys(phases, 0.0)
    for round_ in range(args.rounds):  # the phases' order turns each round: the box drifts
        for phase in phases[round_ % len(phases):] + phases[:round_ % len(phases)]:
            clients.point(phase)
            await asyncio.sleep(args.settle_s)  # the last phase's requests are answered, the new ones asked
            cpu_before, started = worker_cpu_s(worker), time.monotonic()
            sink["phase"] = phase
            await asyncio.sleep(args.phase_s)
            sink["phase"] = None
            seconds[phase] += time.monotonic() - started
            cpu[phase] += worker_cpu_s(worker) - cpu_before
            if phase == "lookups":  # the control answers as slowly as the worker does: the same request rate
                clients.delay.value = clients.mean_answer_s()
        if args.verbose:
            print(f"round {round_ + 1}: " + ", ".join(f"{p} p99 {p99(sink.get(p, [])):.1f} ms" for p in phases),
                  flush=True)
    clients.point("idle")
    halt.set()
    await stream
    await producer.stop()
    follower.cancel()
    times = await clients.close()
    report(args, sink, phases, seconds, cpu, times)
    print(f"requests that failed or were refused: {clients.shared.failed.value}")
def report(args, sink: dict, phases: list[str], seconds: dict, cpu: dict, times: list[float]) -> None:
    for phase in phases:
        print(f"consume->recommendation, {phase:8s} ({args.rate:.0f} ev/s): {quantiles(sink.get(phase, []))}")
    idle = p99(sink.get("idle", []))
    print(f"p99 with lookups / p99 alone: {p99(sink.get('lookups', [])) / idle:.2f} (goal: at most 1.20)")
    if args.control:
        control = p99(sink.get("control", []))
        print(f"p99 with the clients on the control / alone: {control / idle:.2f}; with lookups / with the "
              f"control: {p99(sink.get('lookups', [])) / control:.2f} (what the worker's own answering adds)")
    print("worker CPU: " + ", ".join(f"{p} {cpu[p] / seconds[p]:.0%}" for p in phases) + " of a core")
    print(f"lookups: {len(times) / seconds['lookups']:.0f}/s answered, {quantiles(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--phase-s", type=float, default=3.0, help="one phase's measured seconds")
    parser.add_argument("--settle-s", type=float, default=0.5, help="unmeasured seconds after each switch")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of the phases, their order turned each round")
    parser.add_argument("--control", action="store_true",
                        help="a third phase: the clients ask a trivial server in another process instead")
    parser.add_argument("--verbose", action="store_true", help="print each round's running p99s")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items-per-theme", type=int, default=100, help="synthetic catalogue size (x themes)")
    parser.add_argument("--model", default="", help="a model directory (default: the untrained model)")
    parser.add_argument("--token", default="", help="run the worker with this bearer token")
    parser.add_argument("--client-nice", type=int, default=10, metavar="N",
                        help="the clients' process (and the control's) runs niced N more than this one")
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
