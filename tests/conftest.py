"""Shared test fixtures and helpers: one real embedded broker per test session, workers in a subprocess,
produce/consume with aiokafka, Prometheus scraping.

Every test gets its own topic prefix and app id (``spine_settings``), so tests sharing the session broker
never see each other's records or consumer groups.

Workers run in a subprocess (``WorkerProcess``: stream_rec_devtools.harness's, with one compute thread),
not in the pytest process: Faust keeps process-wide state (the current-event ContextVar, signal handlers,
the Prometheus registry of stream_rec.metrics), so two workers, or a worker and a test, in one process
would share counters and handlers. "In process" is the pure layer: ``stream_rec.pipeline.process_batch``
with a dict as the state store (see tests/test_spine_units.py), which is what the worker runs per
micro-batch.

    def test_something(spine_settings, tmp_path):
        settings = spine_settings                      # Settings bound to the session broker
        produce(settings, settings.topic("events"), events, key_field="user_id")
        with WorkerProcess(settings, tmp_path, items=write_items(tmp_path, catalog)) as worker:
            recs = consume(settings, settings.topic("recommendations"), count=3)
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from stream_rec.io.broker import EmbeddedBroker, free_port
from stream_rec.io.kafka import ensure_topics, kafka_consumer, kafka_producer
from stream_rec.settings import Settings
from stream_rec_devtools import harness

REPO = Path(__file__).resolve().parents[1]


# --- broker ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> str:
    """Bootstrap address ("127.0.0.1:PORT") of an embedded Tansu broker running for the whole session."""
    log_file = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_file=log_file) as b:
        yield b.bootstrap


def make_settings(bootstrap: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for one test: unique topic prefix and app id, 2 partitions, free ports, short timeouts."""
    tag = uuid.uuid4().hex[:8]
    values = dict(broker=bootstrap, topic_prefix=f"t{tag}-", app_id=f"test-{tag}", partitions=2,
                  data_dir=data_dir, metrics_port=free_port(), session_timeout_s=6.0,
                  device="cpu")
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def spine_settings(broker, tmp_path) -> Settings:
    """Settings bound to the session broker with this test's own topics (already created)."""
    settings = make_settings(broker, tmp_path / "worker-data")
    asyncio.run(ensure_topics(settings))
    return settings


# --- data ------------------------------------------------------------------------------------------------
def write_items(directory: Path, items: Iterable[dict]) -> Path:
    """Write catalog records as JSONL (the worker's ``--items`` format); returns the path."""
    path = Path(directory) / "items.jsonl"
    with open(path, "w") as fh:
        for item in items:
            fh.write(json.dumps(item) + "\n")
    return path


def produce(settings: Settings, topic: str, records: Iterable[dict | bytes], key_field: str | None = "user_id",
            keys: Iterable[bytes | None] | None = None) -> int:
    """Publish records (dicts as JSON, bytes as they are) and wait for every ack.

    Keys come from ``record[key_field]`` for dicts, or from ``keys`` (one per record) when given."""
    async def go() -> int:
        producer = kafka_producer(settings, linger_ms=2)
        await producer.start()
        try:
            recs = list(records)
            key_list = list(keys) if keys is not None else [
                str(r[key_field]).encode() if isinstance(r, dict) and key_field and key_field in r else None
                for r in recs]
            futures = [await producer.send(topic, r if isinstance(r, bytes) else json.dumps(r).encode(), key=k)
                       for r, k in zip(recs, key_list)]
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()
    return asyncio.run(go())


def consume(settings: Settings, topic: str, count: int | None = None, timeout_s: float = 60.0,
            until: Callable[[list[dict]], bool] | None = None, idle_s: float | None = None) -> list[dict]:
    """Read ``topic`` from the beginning (no consumer group) until ``count`` records, ``until(records)``,
    ``idle_s`` seconds without a new record (after at least one), or ``timeout_s``. Each record is a dict:
    ``{key, value (parsed JSON or raw bytes), partition, offset, topic, timestamp (ms), headers}``."""
    async def go() -> list[dict]:
        consumer = kafka_consumer(settings, topic, auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        try:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    for m in msgs:
                        try:
                            value: Any = json.loads(m.value)
                        except (TypeError, ValueError):
                            value = m.value
                        out.append({"key": m.key, "value": value, "partition": m.partition, "offset": m.offset,
                                    "topic": m.topic, "timestamp": m.timestamp, "headers": list(m.headers or ())})
                        last_new = time.monotonic()
                if count is not None and len(out) >= count:
                    break
                if until is not None and until(out):
                    break
                if idle_s is not None and out and time.monotonic() - last_new > idle_s:
                    break
        finally:
            await consumer.stop()
        return out
    return asyncio.run(go())


# --- worker ---------------------------------------------------------------------------------------------
# ``stream-rec worker`` in a subprocess with these settings (STREAM_REC_* env vars), one compute thread:
# ``WorkerProcess(settings, workdir, items=..., extra_args=..., env=...)``; context manager; ``stop()`` is a
# clean Faust shutdown (SIGTERM), ``kill()`` a crash (SIGKILL); the log is ``log_path`` (``log_tail()``).
WorkerProcess = functools.partial(harness.WorkerProcess, threads=1)


# --- metrics ---------------------------------------------------------------------------------------------
def scrape(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Prometheus text exposition -> {"name{label="v",...}": value} (labels sorted, none -> bare name)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def recommended_users(records: Iterable[dict]) -> set[str]:
    """The user ids of consumed recommendation records (poison-test outputs may hold non-dict values)."""
    return {r["value"]["user_id"] for r in records if isinstance(r["value"], dict)}


def settle_after_poisons(settings: Settings, worker, pid: int, wanted: set[str], dlq_count: int,
                         log_marks: Iterable[str], timeout_s: float = 120.0) -> tuple[list, list, dict, str]:
    """After poison records each followed by good ones: wait for a list for every ``wanted`` user,
    ``dlq_count`` DLQ records and every ``log_marks`` line, then check that the same process (``pid``) did
    it all without a traceback. Returns (recommendations, DLQ records, metrics, the worker's log)."""
    recs = consume(settings, settings.topic(settings.recommendations_topic), timeout_s=timeout_s,
                   until=lambda rs: wanted <= recommended_users(rs))
    dlq = consume(settings, settings.topic(settings.dlq_topic), count=dlq_count, timeout_s=30)
    marks = list(log_marks)
    wait_until(lambda: all(m in worker.log_path.read_text(errors="replace") for m in marks), timeout_s=30,
               message="every expected line in the worker's log")
    metrics = scrape(worker.metrics_url())
    assert worker.alive() and worker.proc.pid == pid, worker.log_tail()
    log_text = worker.log_path.read_text(errors="replace")
    missing = wanted - recommended_users(recs)
    assert not missing, f"good events after a poison not processed: {sorted(missing)[:5]}"
    assert "Traceback" not in log_text and "Crashed" not in log_text, log_text[-4000:]
    return recs, dlq, metrics, log_text


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.2,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail the test after the timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # e.g. metrics endpoint not up yet
            last_exc = exc
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {message} (last error: {last_exc})")
