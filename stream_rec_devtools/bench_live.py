"""Measuring a real worker serving a trained model (used by ``stream-rec bench``).

Each scenario runs ``stream-rec worker`` as a child process against the same broker and measures it from
the outside, so the numbers include Kafka, Faust, RocksDB and the model, exactly as deployed:

* **saturation**: a backlog of N events is published, then the worker starts (it loads its model and text
  encoder before it consumes) and drains it; throughput = events / (last recommendation - first
  recommendation), and per CPU-second of the worker over that drain -- measured like the bare Faust and
  Faust-floor baselines, which also drain a backlog published before they start (before, the burst was
  produced by this process while the worker drained it, on the same cores);
* **latency at a fixed offered load**: with the worker warm, events are sent at R events/s; latency of
  each recommendation = its arrival - the send time of the event it follows (one clock, this process),
  reported as p50/p95/p99 and split into legs (``latency_legs``). The events' producer lingers 2 ms (in
  the ``in`` leg; without linger it sends a request per event and the broker, on the same cores, gets
  slower: DEVELOPERS.md) and the recommendations' consumer fetches with a 10 ms wait;
* **CPU% and RSS** of the worker process from ``/proc`` (CPU seconds / wall seconds over the phase; peak
  RSS), and **bytes of state per user** from the state table's changelog topic (the latest value of
  every key: exactly what RocksDB stores).

Events come from fresh synthetic users (many users, few events each, unique timestamps), so a
recommendation is matched to its event by ``(user_id, event_timestamp)``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import numpy as np

from stream_rec.io.kafka import ensure_topics

from . import harness
from .procfs import Usage, cpu_seconds

log = logging.getLogger(__name__)


# --- workload ----------------------------------------------------------------------------------------
def bench_events(item_ids: list[str], n_events: int, n_users: int, seed: int = 0, start_ts: float | None = None,
                 prefix: str = "b") -> list[dict]:
    """``n_events`` events over ``n_users`` users, unique increasing timestamps, items from the model's
    catalog (walks along the catalog order, like the synthetic world's chains)."""
    rng = random.Random(seed)
    ts = start_ts if start_ts is not None else time.time() - 3600.0
    pos = {}
    out = []
    for n in range(n_events):
        u = f"{prefix}{rng.randrange(n_users):06d}"
        p = pos.get(u)
        p = rng.randrange(len(item_ids)) if p is None or rng.random() < 0.2 else (p + 1) % len(item_ids)
        pos[u] = p
        ts += 0.001
        out.append(harness.event_record(u, item_ids[p], round(ts, 3)))
    return out


def worker_times_of(rec: dict) -> tuple[float, float] | None:
    """(taken from the stream, record built) in the worker's clock, from a recommendation record."""
    built, worker_ms = rec.get("produced_at"), rec.get("latency_ms")
    if isinstance(built, (int, float)) and isinstance(worker_ms, (int, float)):
        return built - worker_ms / 1000.0, built
    return None


def latency_legs(sent: dict, worker_times: dict, arrivals: dict) -> dict:
    """Where event->recommendation latency goes (one clock: worker and bench share the machine):
    ``in`` = event sent -> taken from the stream by the worker (producer, broker, fetch, Faust delivery,
    waiting while the previous batch runs); ``worker`` = taken -> recommendation record built (batch
    fill + processing); ``out`` = built -> arrived at a consumer of the recommendations topic (sends,
    broker, the consumer's fetch)."""
    keys = [k for k in sent if worker_times.get(k) and k in arrivals]
    if not keys:
        return {}
    legs = {"in": [worker_times[k][0] - sent[k] for k in keys],
            "worker": [worker_times[k][1] - worker_times[k][0] for k in keys],
            "out": [arrivals[k] - worker_times[k][1] for k in keys]}
    return {name: {q: v for q, v in percentiles(values).items() if q in ("p50_ms", "p99_ms")}
            for name, values in legs.items()}


def percentiles(values_s: list[float]) -> dict:
    if not values_s:
        return {"n": 0}
    p = np.percentile(np.asarray(values_s) * 1000.0, [50, 95, 99])
    return {"p50_ms": round(float(p[0]), 2), "p95_ms": round(float(p[1]), 2), "p99_ms": round(float(p[2]), 2),
            "max_ms": round(float(np.max(values_s) * 1000.0), 2), "n": len(values_s)}


# --- scenarios -----------------------------------------------------------------------------------------
async def run_model_worker(broker: str, data_dir: Path, model_dir: Path, item_ids: list[str], *, tag: str,
                           batch_max_events: int, saturation_events: int, latency_rate: float,
                           latency_seconds: float, n_users: int = 5000, log_dir: Path | None = None,
                           partitions: int = 4, progress: bool = True, uses_text: bool = False,
                           batch_max_wait_ms: int | None = None) -> dict:
    """Saturation throughput (a backlog published before the worker starts, drained from its first
    recommendation to its last), then latency at ``latency_rate`` ev/s with the worker warm, of one worker
    configuration. ``uses_text``: the model has text vectors (the worker loads its encoder before it
    consumes; recorded in the result)."""
    from tqdm import tqdm

    settings = harness.isolated_settings(broker, data_dir, tag, model=str(model_dir), partitions=partitions,
                                         batch_max_events=batch_max_events, batch_max_wait_ms=batch_max_wait_ms)
    await ensure_topics(settings)
    producer = await harness.make_producer(settings)
    result: dict = {"batch_max_events": batch_max_events, "uses_text": uses_text}
    backlog = bench_events(item_ids, saturation_events, n_users, seed=1, prefix=f"{tag}-s")
    last_ts = {}
    for ev in backlog:
        last_ts[ev["user_id"]] = ev["timestamp"]
    arrivals: dict[tuple[str, float], float] = {}
    worker_times: dict[tuple[str, float], tuple[float, float] | None] = {}  # (taken at, record built at)
    cpu_at_first_rec: list[float] = []

    def on_record(rec: dict, t: float) -> None:
        key = (rec.get("user_id"), rec.get("event_timestamp"))
        arrivals.setdefault(key, t)
        if key not in worker_times:
            worker_times[key] = worker_times_of(rec)
        if not cpu_at_first_rec and rec.get("user_id") in last_ts:
            cpu_at_first_rec.append(cpu_seconds(worker.proc.pid))

    worker = harness.WorkerProcess(settings, log_file=(log_dir / f"{tag}-worker.log") if log_dir else None)
    collector = harness.RecCollector(settings, on_record=on_record)
    await collector.start()
    # The backlog is published before the worker starts, as for the bare Faust and Faust-floor baselines:
    # the drain is measured alone, not beside this process producing it on the same cores. The worker
    # loads its model and text encoder before it consumes (worker/run.py), so the first recommendation
    # marks a warm worker, and the rate is measured from there.
    with tqdm(total=len(backlog), desc=f"{tag}: backlog", unit="ev", disable=not progress, leave=False) as bar:
        await harness.send_events(producer, settings, backlog, progress=bar)
    worker.start()
    try:
        usage = Usage(worker.proc.pid)
        ok = await collector.wait_for(lambda: all((u, ts) in arrivals for u, ts in last_ts.items()),
                                      timeout_s=600, idle_s=120)
        if not ok:
            raise RuntimeError(f"{tag}: worker did not drain the backlog; log tail:\n{worker.log_tail()}")
        times = sorted(t for (u, _), t in arrivals.items() if u in last_ts)
        span = times[-1] - times[0]
        sat = usage.read()  # over the worker's life so far: CPU% includes its start-up
        drain_cpu = cpu_seconds(worker.proc.pid) - cpu_at_first_rec[0]
        result["saturation"] = {"events": len(backlog), "seconds": round(span, 2),
                                "events_per_s": round(len(backlog) / span, 1) if span > 0 else None,
                                "drain_cpu_seconds": round(drain_cpu, 2),
                                "events_per_cpu_s": round(len(backlog) / drain_cpu, 1) if drain_cpu > 0 else None,
                                "recommendations": len(times), **sat}
        # latency at a fixed offered load, worker warm (latency_rate <= 0: half the measured saturation)
        if latency_rate <= 0:
            latency_rate = max(10.0, round(0.5 * (result["saturation"]["events_per_s"] or 20.0)))
        load = bench_events(item_ids, int(latency_rate * latency_seconds), n_users, seed=2, prefix=f"{tag}-l",
                            start_ts=time.time() - 60.0)
        sent: dict[tuple[str, float], float] = {}
        usage = Usage(worker.proc.pid)
        with tqdm(total=len(load), desc=f"{tag}: {latency_rate:.0f} ev/s", unit="ev", disable=not progress,
                  leave=False) as bar, harness.no_gc_pauses():
            await harness.send_events(producer, settings, load, rate=latency_rate, chunk=50, progress=bar,
                                      on_sent=lambda i, ev, t: sent.__setitem__((ev["user_id"], ev["timestamp"]), t))
            await collector.wait_for(lambda: all(k in arrivals for k in list(sent)[-20:]), timeout_s=30)
        lat = [arrivals[k] - t for k, t in sent.items() if k in arrivals]
        result["latency"] = {"offered_events_per_s": latency_rate, "seconds": latency_seconds,
                             **percentiles(lat), **usage.read(), "legs": latency_legs(sent, worker_times, arrivals)}
        result["state"] = await harness.state_bytes_per_user(settings)
        if not worker.alive():
            raise RuntimeError(f"{tag}: worker died; log tail:\n{worker.log_tail()}")
    finally:
        await collector.stop()
        await producer.stop()
        worker.stop()
    return result


def model_stage_events_per_s(model_dir: Path, batch: int = 256, n_batches: int = 40, device: str = "auto",
                             n_users: int = 4096, threads: int = 1) -> dict:
    """The model stage alone (no Kafka): ``pipeline.process_batch`` over in-memory states, events/s
    (validation, state codec, batched GRU step, top-K, record building), with the worker's torch threads."""
    import json as _json

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.worker.models import load_recommender

    rec = load_recommender(model_dir, device=device)
    events = bench_events(rec.item_ids, batch * n_batches, n_users, seed=3, prefix="m")
    store: dict[str, bytes] = {}
    cfg = PipelineConfig(check_key=False)
    msgs = [Incoming(_json.dumps(e).encode(), e["user_id"].encode(), "events", 0, n, time.time())
            for n, e in enumerate(events)]
    process_batch(msgs[:batch], states_in(store), rec, cfg)  # warm up
    t0 = time.perf_counter()
    for s in range(batch, len(msgs), batch):
        res = process_batch(msgs[s:s + batch], states_in(store), rec, cfg)
        store.update(res.states)
    dt = time.perf_counter() - t0
    return {"batch": batch, "events_per_s": round((len(msgs) - batch) / dt, 1), "device": str(rec.device),
            "torch_threads": torch.get_num_threads()}


def run_live_scenarios(broker: str, data_dir: Path, model_dir: Path, *, saturation_events: int = 20000,
                       batch1_events: int = 3000, latency_rate: float = 1000.0, latency_seconds: float = 10.0,
                       batch_max_events: int = 256, log_dir: Path | None = None, progress: bool = True,
                       n_users: int = 5000, batch_max_wait_ms: int | None = None, model_stage: bool = True) -> dict:
    """(b) the full pipeline with the trained model and, unless ``batch1_events`` is 0, (c) the same
    pipeline with batch size 1, on the same broker; plus (``model_stage``) the model stage alone (no Kafka).
    Returns one dict per scenario. The batch-1 pipeline cannot sustain ``latency_rate``; its latency is
    measured at half its own saturation rate."""
    from stream_rec.worker.catalog import uses_text as model_uses_text
    from stream_rec.worker.models import load_recommender

    rec = load_recommender(model_dir, device="cpu")
    item_ids = rec.item_ids
    uses_text = model_uses_text(rec)
    out = {"model_stage": model_stage_events_per_s(model_dir, batch=batch_max_events)} if model_stage else {}
    out["pipeline"] = asyncio.run(run_model_worker(
        broker, data_dir, model_dir, item_ids, tag="pipeline", batch_max_events=batch_max_events,
        saturation_events=saturation_events, latency_rate=latency_rate, latency_seconds=latency_seconds,
        log_dir=log_dir, progress=progress, n_users=n_users, uses_text=uses_text,
        batch_max_wait_ms=batch_max_wait_ms))
    if batch1_events > 0:
        out["pipeline_batch1"] = asyncio.run(run_model_worker(
            broker, data_dir, model_dir, item_ids, tag="batch1", batch_max_events=1,
            saturation_events=batch1_events, latency_rate=0.0, latency_seconds=latency_seconds / 2,
            log_dir=log_dir, progress=progress, n_users=n_users, uses_text=uses_text,
            batch_max_wait_ms=batch_max_wait_ms))
    return out
