"""Driving a real worker from the outside: shared by ``stream-rec replay``, ``stream-rec bench`` and the
end-to-end tests of the live model.

* :class:`WorkerProcess` runs ``stream-rec worker`` as a child process (its own process group, stopped
  with SIGINT then SIGKILL, never left behind), with every setting passed as ``STREAM_REC_*``
  environment variables, so the worker under test is exactly the one users run.
* :func:`isolated_settings` gives each run its own app id, topic prefix, ports and data dir, so runs
  sharing one broker never see each other's topics, consumer offsets or tables.
* :class:`RecCollector` consumes the recommendations topic in the background, stamping each record
  with its arrival time; :func:`send_events` produces events at a target rate with batched acks and
  reports the send time of every event (end-to-end latency = rec arrival - event send, one clock).
* :func:`wait_ready` sends probe events for a reserved user until a recommendation for it comes back:
  the worker has joined its group, loaded its model and written to Kafka, whatever its internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..broker import free_port
from ..settings import Settings

log = logging.getLogger(__name__)

PROBE_USER = "__stream_rec_probe__"


def isolated_settings(broker: str, data_dir: str | Path, tag: str = "run", **overrides) -> Settings:
    """Settings for one run on a shared broker: unique app id + topic prefix, free ports."""
    run = f"{tag}-{uuid.uuid4().hex[:8]}"
    base = dict(broker=broker, app_id=f"stream-rec-{run}", topic_prefix=f"{run}.", data_dir=Path(data_dir),
                metrics_port=free_port(), web_port=free_port())
    base.update(overrides)
    return Settings.from_env({}, **base)


class WorkerProcess:
    """``stream-rec worker`` in a child process, configured through the environment."""

    def __init__(self, settings: Settings, *, log_file: str | Path | None = None, extra_env: dict | None = None,
                 threads: int | None = None):
        self.settings = settings
        self.log_file = Path(log_file) if log_file else None
        self.extra_env = extra_env or {}
        self.threads = threads
        self.process: subprocess.Popen | None = None
        self._log = None
        self._own_log = False  # a temp log file we delete on stop

    def start(self) -> "WorkerProcess":
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env.update(self.extra_env)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="stream-rec-worker-", suffix=".log")
            os.close(fd)
            self.log_file, self._own_log = Path(name), True
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_file, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "stream_rec", "worker"], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the worker's log (for error messages)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def stop(self, grace_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and self.log_file is not None:
            self.log_file.unlink(missing_ok=True)

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class RecCollector:
    """Background consumer of the recommendations topic (from the start of the topic)."""

    settings: Settings
    records: list[tuple[float, dict]] = field(default_factory=list)  # (arrival time, record)
    by_user: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    on_record: Callable[[dict, float], None] | None = None
    _task: asyncio.Task | None = None
    _consumer: object | None = None
    _arrived: asyncio.Event | None = None

    async def start(self) -> "RecCollector":
        from aiokafka import AIOKafkaConsumer

        from ..kafka import client_kwargs

        topic = self.settings.topic(self.settings.recommendations_topic)
        self._consumer = AIOKafkaConsumer(topic, **client_kwargs(self.settings), auto_offset_reset="earliest",
                                          enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
        await self._consumer.start()
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=5000)
            now = time.time()
            for msgs in batches.values():
                for msg in msgs:
                    try:
                        rec = json.loads(msg.value)
                    except (TypeError, ValueError):
                        continue
                    self.records.append((now, rec))
                    self.by_user[rec.get("user_id")].append(rec)
                    if self.on_record is not None:
                        self.on_record(rec, now)
            if batches:
                self._arrived.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float, idle_s: float | None = None) -> bool:
        """Wait until ``predicate()``; give up after ``timeout_s``, or after ``idle_s`` without records."""
        deadline = time.monotonic() + timeout_s
        last_count, last_change = len(self.records), time.monotonic()
        while not predicate():
            now = time.monotonic()
            if now > deadline:
                return False
            if len(self.records) != last_count:
                last_count, last_change = len(self.records), now
            elif idle_s is not None and now - last_change > idle_s:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._consumer is not None:
            await self._consumer.stop()


def event_record(user_id: str, item_id: str, timestamp: float, event_type: str = "view",
                 value: float | None = None, context: dict | None = None) -> dict:
    rec = {"user_id": user_id, "item_id": item_id, "event_type": event_type, "timestamp": timestamp}
    if value is not None:
        rec["value"] = value
    if context:
        rec["context"] = context
    return rec


async def make_producer(settings: Settings):
    """An aiokafka producer for test/bench events (a 2 ms linger: bursts go out in batches)."""
    from aiokafka import AIOKafkaProducer

    from ..kafka import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=2, max_batch_size=256 * 1024)
    await producer.start()
    return producer


async def send_events(producer, settings: Settings, events: Iterable[dict], rate: float = 0.0,
                      on_sent: Callable[[int, dict, float], None] | None = None, chunk: int = 200,
                      progress=None) -> int:
    """Produce events (keyed by user_id) to the events topic at ``rate`` events/s (0 = as fast as the
    producer goes). ``on_sent(i, event, t)`` gets each event's send time. Acks are awaited in chunks,
    so throughput is not bound by one round trip per event."""
    topic = settings.topic(settings.events_topic)
    t_start = time.perf_counter()
    pending = []
    n = 0
    for n, ev in enumerate(events, start=1):
        if rate > 0:
            due = t_start + (n - 1) / rate
            delay = due - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)
        pending.append(await producer.send(topic, json.dumps(ev).encode(), key=str(ev["user_id"]).encode()))
        if on_sent is not None:
            on_sent(n - 1, ev, time.time())
        if len(pending) >= chunk:
            await asyncio.gather(*pending)
            pending.clear()
            if progress is not None:
                progress.update(chunk)
    if pending:
        await asyncio.gather(*pending)
        if progress is not None:
            progress.update(len(pending))
    return n


async def wait_ready(settings: Settings, collector: RecCollector, probe_item: str, timeout_s: float = 90.0,
                     producer=None) -> float:
    """Send probe events (user :data:`PROBE_USER`, a known item) until a recommendation for the probe
    user arrives. Returns the seconds it took."""
    t0 = time.monotonic()
    own = producer is None
    producer = producer or await make_producer(settings)
    try:
        while time.monotonic() - t0 < timeout_s:
            await send_events(producer, settings, [event_record(PROBE_USER, probe_item, time.time())])
            if await collector.wait_for(lambda: PROBE_USER in collector.by_user, timeout_s=2.0):
                return time.monotonic() - t0
        raise TimeoutError(f"no recommendation from the worker within {timeout_s:.0f} s")
    finally:
        if own:
            await producer.stop()


async def ensure_topics(settings: Settings) -> None:
    from ..kafka import ensure_topics as _ensure

    await _ensure(settings)

