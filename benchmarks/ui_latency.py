"""How long the live user page takes to show a new list: from the worker emitting it to the page's DOM
changed, over ``--updates`` updates, in a real browser (Debian's chromium, stream_rec_devtools/browser.py).

    python benchmarks/ui_latency.py                       # 100 updates, 50 events/s of other traffic
    python benchmarks/ui_latency.py --updates 200 --rate 200
    python benchmarks/ui_latency.py --hot-path            # what the pages cost the stream per micro-batch

One embedded broker, one worker (untrained model over a 480-item catalogue, so the watched user never runs
out of unseen items), a producer of ``--rate`` events/s for 200 other users, and the page of one watched
user open in Chromium. Every ``--every-s`` seconds one event of the watched user is sent; a
MutationObserver in the page notes when the list's ``data-produced-at`` (the ``produced_at`` of the record
on screen, stamped by the worker when it built the list) changes, with the page's clock (the same machine's).
Prints, over the updates seen:

* emitted -> DOM: the record's ``produced_at`` to the DOM change (the worker's hand-over, the server-sent
  event, the page's rendering);
* sent -> DOM: the test's send of the event to the DOM change (the producer, the broker, the worker too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from stream_rec.io.broker import EmbeddedBroker, free_port
from stream_rec.io.kafka import ensure_topics, kafka_producer
from stream_rec.settings import Settings
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools import browser, harness

OBSERVE = """
window.__changes = [];
new MutationObserver(() => window.__changes.push({t: performance.timeOrigin + performance.now(),
    produced: Number(document.getElementById('list').dataset.producedAt)}))
  .observe(document.getElementById('list'), {attributes: true, attributeFilter: ['data-produced-at']});
"""
WATCHED = "watched-user"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(name: str, ms: list[float]) -> str:
    return (f"{name}: n={len(ms)} median {statistics.median(ms):.1f} ms, p90 {percentile(ms, 0.9):.1f}, "
            f"p99 {percentile(ms, 0.99):.1f}, max {max(ms):.1f}")


class Producer:
    """An aiokafka producer on its own loop in a thread: ``send(event)`` from this thread; ``--rate``
    background events for other users meanwhile."""

    def __init__(self, settings: Settings, items: list[str], rate: float):
        self.settings, self.items, self.rate = settings, items, rate
        self.loop = asyncio.new_event_loop()
        self.stop = threading.Event()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.producer = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.background = asyncio.run_coroutine_threadsafe(self._background(), self.loop) if rate > 0 else None

    async def _start(self):
        producer = kafka_producer(self.settings, linger_ms=1)
        await producer.start()
        return producer

    async def _send(self, event: dict) -> None:
        value = json.dumps(event).encode()
        await self.producer.send_and_wait(self.settings.topic("events"), value, key=event["user_id"].encode())

    def send(self, event: dict) -> None:
        asyncio.run_coroutine_threadsafe(self._send(event), self.loop).result(30)

    async def _background(self) -> None:
        rng, n = random.Random(1), 0
        start = time.monotonic()
        while not self.stop.is_set():
            event = {"user_id": f"bg-{rng.randrange(200)}", "item_id": rng.choice(self.items), "event_type": "view",
                     "timestamp": time.time()}
            await self.producer.send(self.settings.topic("events"), json.dumps(event).encode(),
                                     key=event["user_id"].encode())
            n += 1
            await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        if self.background is not None:
            self.background.cancel()
        asyncio.run_coroutine_threadsafe(self.producer.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def measure(worker, producer: Producer, items: list[str], updates: int, every_s: float) -> tuple[list, list]:
    rng = random.Random(2)
    producer.send({"user_id": WATCHED, "item_id": items[0], "event_type": "view", "timestamp": time.time()})
    harness_wait(lambda: urllib.request.urlopen(worker.url(f"/recommendations/{WATCHED}"), timeout=5).status == 200)
    emitted_ms, sent_ms = [], []
    with browser.chromium() as driver:
        driver.get(worker.url(f"/ui/users/{WATCHED}"))
        harness_wait(lambda: driver.execute_script("return document.getElementById('live').textContent") == "live")
        driver.execute_script(OBSERVE)
        for n in range(updates):
            sent = time.time()
            producer.send({"user_id": WATCHED, "item_id": rng.choice(items), "event_type": "view", "timestamp": sent})
            change, deadline = None, time.monotonic() + 10
            while change is None and time.monotonic() < deadline:
                change = driver.execute_script("return window.__changes.find(c => c.t >= arguments[0]) || null",
                                               sent * 1000.0)
                time.sleep(0.005)
            if change is None:
                print(f"update {n}: no change of the page within 10 s", file=sys.stderr)
            else:
                emitted_ms.append(change["t"] - change["produced"] * 1000.0)
                sent_ms.append(change["t"] - sent * 1000.0)
            driver.execute_script("window.__changes.length = 0")
            time.sleep(max(0.0, sent + every_s - time.time()))
    return emitted_ms, sent_ms


def harness_wait(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("timed out")


def hot_path(batches: int = 60, size: int = 256) -> None:
    """What the pages cost the stream per micro-batch (in process, no Kafka): ``UiState.on_batch`` with
    nobody watching and with a watched user, against ``process_batch`` of the same batches (untrained
    model over 480 items, the enricher on: reasons, as the worker emits them)."""
    import torch

    from stream_rec.model.recommender import Recommender
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.recsys.enricher import Enricher
    from stream_rec.worker.live import UiState

    torch.set_num_threads(1)
    items = [c["item_id"] for c in make_catalog(items_per_theme=80)]
    model, enricher, store = Recommender.untrained(items, device="cpu"), Enricher(export_metrics=False), {}
    rng, offset = random.Random(3), 0
    quiet, watched = UiState(), UiState()
    watched.watchers.subscribe("u-7")
    variants = (("on_batch, nobody watching", quiet), ("on_batch, one user watched", watched))
    timings: dict[str, list[float]] = {"process_batch": [], **{name: [] for name, _ in variants}}
    for n in range(batches):
        batch = []
        for _ in range(size):
            user = f"u-{rng.randrange(2000)}"
            value = json.dumps({"user_id": user, "item_id": rng.choice(items), "event_type": "view",
                                "timestamp": time.time()}).encode()
            batch.append(Incoming(value, user.encode(), "events", 0, offset, time.time()))
            offset += 1
        t0 = time.perf_counter()
        result = process_batch(batch, states_in(store), model, PipelineConfig(), enricher=enricher)
        timings["process_batch"].append((time.perf_counter() - t0) * 1e6)
        store.update(result.states)
        encoded = [json.dumps(rec).encode() for rec in result.recommendations]  # what the worker sends, as it does
        for name, ui in (variants if n % 2 else variants[::-1]):  # each variant first in half of the batches
            t0 = time.perf_counter()
            ui.on_batch(result.recommendations, result.deleted)
            timings[name].append((time.perf_counter() - t0) * 1e6)
        del encoded
    base = statistics.median(timings["process_batch"])
    print(f"[ui-hot-path] {batches} batches of {size} events, 2,000 users, medians:")
    for name, values in timings.items():
        print(f"[ui-hot-path]   {name}: {statistics.median(values):,.0f} us per batch "
              f"({statistics.median(values) / base:.2%} of process_batch)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=100, help="updates of the watched user's list to time")
    ap.add_argument("--every-s", type=float, default=0.5, help="seconds between the watched user's events")
    ap.add_argument("--rate", type=float, default=50.0, help="events/s of other users meanwhile (0 = none)")
    ap.add_argument("--hot-path", action="store_true", help="only measure what the pages cost per micro-batch "
                                                             "(in process, no browser, no Kafka)")
    args = ap.parse_args(argv)
    if args.hot_path:
        hot_path()
        return 0
    if browser.unavailable():
        print(f"ui_latency: {browser.unavailable()}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="stream-rec-ui-latency-"))
    catalog = make_catalog(items_per_theme=80)
    items = [c["item_id"] for c in catalog]
    (work / "items.jsonl").write_text("".join(json.dumps(c) + "\n" for c in catalog))
    with EmbeddedBroker(log_file=work / "broker.log") as broker:
        settings = Settings(broker=broker.bootstrap, partitions=2, app_id="ui-latency", data_dir=work / "data",
                            metrics_port=free_port(), device="cpu")
        asyncio.run(ensure_topics(settings))
        with harness.WorkerProcess(settings, work / "worker", items=work / "items.jsonl", threads=1) as worker:
            harness_wait(lambda: urllib.request.urlopen(worker.url("/readyz"), timeout=5).status == 200)
            producer = Producer(settings, items, args.rate)
            try:
                emitted_ms, sent_ms = measure(worker, producer, items, args.updates, args.every_s)
            finally:
                producer.close()
    print(f"[ui-latency] {args.updates} updates of one user's page, {args.rate:g} events/s of other traffic, "
          f"one worker, embedded broker, headless chromium")
    print("[ui-latency] " + summary("emitted -> DOM changed", emitted_ms))
    print("[ui-latency] " + summary("event sent -> DOM changed", sent_ms))
    return 0 if len(emitted_ms) == args.updates else 1


if __name__ == "__main__":
    sys.exit(main())
