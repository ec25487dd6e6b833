"""Driving a real worker from the outside: shared by the tests, ``stream-rec demo``/``bench``/``replay``
and the benchmarks.

* :class:`WorkerProcess` runs ``stream-rec worker`` as a child process (its own process group, stopped
  with SIGTERM -- a clean Faust shutdown -- then SIGKILL, never left behind; ``kill`` is a crash), with
  every setting passed as ``STREAM_REC_*`` environment variables, so the worker under test is exactly the
  one users run.
* :func:`isolated_settings` gives each run its own app id, topic prefix, ports and data dir, so runs
  sharing one broker never see each other's topics, consumer offsets or tables.
* :class:`RecCollector` consumes the recommendations topic in the background, stamping each record
  with its arrival time; :func:`send_events` produces events at a target rate with batched acks and
  reports the send time of every event (end-to-end latency = rec arrival - event send, one clock).
* :func:`wait_ready` sends probe events for a reserved user until a recommendation for it comes back:
  the worker has joined its group, loaded its model and written to Kafka, whatever its internals.
* :func:`read_changelog_states` / :func:`state_bytes_per_user` / :func:`read_changelog_arms`: the state table
  as its changelog holds it (users' states; the exploration's arm records).
"""

from __future__ import annotations

import asyncio
import contextlib
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

import numpy as np

from stream_rec.io.broker import free_port, stop_with_parent_hook
from stream_rec.io.kafka import kafka_consumer, kafka_producer, read_topic
from stream_rec.io.topics import changelog_topic_name
from stream_rec.settings import Settings
from stream_rec.recsys.arms import ArmStats, decode_arm
from stream_rec.recsys.exploring import ARM_PREFIX
from stream_rec.state import ItemKeys, decode_state

log = logging.getLogger(__name__)

PROBE_USER = "__stream_rec_probe__"


def isolated_settings(broker: str, data_dir: str | Path, tag: str = "run", **overrides) -> Settings:
    """Settings for one run on a shared broker: unique app id + topic prefix, free ports."""
    run = f"{tag}-{uuid.uuid4().hex[:8]}"
    base = dict(broker=broker, app_id=f"stream-rec-{run}", topic_prefix=f"{run}.", data_dir=Path(data_dir),
                metrics_port=free_port())
    base.update(overrides)
    return Settings.from_env({}, **base)


class WorkerProcess:
    """``stream-rec worker`` in a child process, configured through the environment. Context manager.

    ``workdir``: the worker's working directory (its log goes there too); ``items``: an ``--items-file``;
    ``log_file``: where the log goes (default: in ``workdir``, else a temporary file deleted on stop);
    ``threads``: OMP_NUM_THREADS of the worker (default: inherited)."""

    def __init__(self, settings: Settings, workdir: str | Path | None = None, items: str | Path | None = None,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None, *,
                 log_file: str | Path | None = None, threads: int | None = None, loglevel: str = "info"):
        self.settings = settings
        self.workdir = Path(workdir) if workdir is not None else None
        self.items = items
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.threads = threads
        self.loglevel = loglevel
        self.log_path = Path(log_file) if log_file else None
        if self.log_path is None and self.workdir is not None:
            self.log_path = self.workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._own_log = False  # a temporary log file, deleted on stop

    def start(self) -> "WorkerProcess":
        threads = {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1", **threads, **self.env}
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="stream-rec-worker-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "stream_rec", "worker", "--log-level", self.loglevel, *self.extra_args]
        if self.items:
            cmd += ["--items-file", str(self.items)]
        self._log = open(self.log_path, "ab")
        # stops with this process even when it is killed (no orphaned worker after a killed test run or bench)
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=stop_with_parent_hook())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the worker's log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def metrics_url(self) -> str:
        return self.url("/metrics")

    def url(self, path: str = "") -> str:
        """A URL of the worker's HTTP listener (/metrics, /healthz, /readyz, /recommendations/USER)."""
        return f"http://{self.settings.metrics_host}:{self.settings.metrics_port}{path}"

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM (a clean Faust shutdown), SIGKILL after ``grace_s``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown hooks, no final commit, no producer flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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
        topic = self.settings.topic(self.settings.recommendations_topic)
        self._consumer = kafka_consumer(self.settings, topic, auto_offset_reset="earliest", fetch_max_wait_ms=10)
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


@contextlib.contextmanager
def no_gc_pauses():
    """The cyclic GC off in this process while a measurement runs (back on, and run, afterwards). A bench
    process sends the events and receives the recommendations on one event loop, and keeps every record
    it timed: a full collection over those took 300 ms in the middle of a latency run, which delayed
    sends and arrivals alike and showed up as the worker's latency (benchmarks/profile_worker.py --trace)."""
    import gc

    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


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
    producer = kafka_producer(settings, linger_ms=2, max_batch_size=256 * 1024)
    await producer.start()
    return producer


async def send_events(producer, settings: Settings, events: Iterable[dict], rate: float = 0.0,
                      on_sent: Callable[[int, dict, float], None] | None = None, chunk: int = 200,
                      progress=None, on_acked: Callable[[int, dict, float], None] | None = None) -> int:
    """Produce events (keyed by user_id) to the events topic at ``rate`` events/s (0 = as fast as the
    producer goes). ``on_sent(i, event, t)`` gets each event's send time, ``on_acked(i, event, t)`` the
    time the broker's acknowledgement reached the producer. Acks are awaited in chunks, so throughput is
    not bound by one round trip per event."""
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
        future = await producer.send(topic, json.dumps(ev).encode(), key=str(ev["user_id"]).encode())
        pending.append(future)
        if on_sent is not None:
            on_sent(n - 1, ev, time.time())
        if on_acked is not None:
            future.add_done_callback(lambda _f, i=n - 1, ev=ev: on_acked(i, ev, time.time()))
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


def catalog_applied(worker: WorkerProcess) -> float:
    """How many catalog records the worker has applied (``stream_rec_catalog_items_total``; 0 while its
    listener is not up)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(worker.metrics_url(), timeout=5).read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("stream_rec_catalog_items_total "):
            return float(line.split()[1])
    return 0.0


# --- the state table, read from its changelog ----------------------------------------------------------
def _decode_table_key(raw: bytes | None) -> str | None:
    """Faust writes table keys raw or JSON-encoded depending on the table's key serializer: accept both."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    if text.startswith('"') and text.endswith('"'):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return text


async def read_changelog_states(settings: Settings, topic: str | None = None, items: Iterable[str] = ()) -> dict:
    """user id -> ``UserState`` as the table's changelog says now (the last record per key wins;
    a tombstone maps to None). This is exactly what a worker restoring the table would rebuild. ``items``:
    the catalogue's item ids, which name the states' items (stream_rec/state.py: item keys)."""
    states: dict = {}
    catalogue = ItemKeys(items)
    for rec in await read_topic(settings, topic or changelog_topic_name(settings)):
        user = _decode_table_key(rec.key)
        if user is not None and user.startswith(ARM_PREFIX):
            continue  # an exploration arm's record (read_changelog_arms)
        states[user] = None if rec.value is None else decode_state(rec.value, items=catalogue)
    return states


async def read_changelog_arms(settings: Settings, topic: str | None = None) -> dict[tuple[int, str], ArmStats]:
    """(events partition, item id) -> the exploration arm record as the state table's changelog holds it
    (the latest per key; recsys/exploring.py). ``arms.merge_arms`` of an item's records is its total."""
    arms: dict[tuple[int, str], ArmStats] = {}
    for rec in await read_topic(settings, topic or changelog_topic_name(settings)):
        key = _decode_table_key(rec.key)
        if key is None or not key.startswith(ARM_PREFIX) or rec.value is None:
            continue
        partition, item_id = key[len(ARM_PREFIX):].split(":", 1)
        arms[(int(partition), item_id)] = decode_arm(rec.value)
    return arms


async def state_bytes_per_user(settings: Settings) -> dict:
    """Mean/max size of the latest state value per user (the probe user left out), from the changelog."""
    latest: dict[bytes, int] = {}
    for rec in await read_topic(settings, changelog_topic_name(settings)):
        if rec.key is not None and rec.key != PROBE_USER.encode() and not rec.key.startswith(ARM_PREFIX.encode()):
            latest[rec.key] = len(rec.value or b"")
    if not latest:
        return {"users": 0}
    sizes = np.array(list(latest.values()))
    return {"users": len(sizes), "mean_bytes": round(float(sizes.mean()), 1), "max_bytes": int(sizes.max())}
