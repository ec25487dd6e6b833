"""Where does a worker's time go? One worker, one embedded broker, one workload, and every number needed
to find the next bottleneck: CPU per *thread* of the worker (a native thread spinning is invisible to a
Python profiler), CPU of the broker, the worker's mean micro-batch, event->recommendation latency split
into legs, and optionally a py-spy profile of the worker.

    python benchmarks/profile_worker.py --model runs/models/ml-1m-half-hybrid                 # saturation
    python benchmarks/profile_worker.py --model DIR --rate 1000 --events 10000                 # fixed load
    python benchmarks/profile_worker.py --model DIR --py-spy worker.txt                        # + profile
    python benchmarks/profile_worker.py --model DIR --set explain=false --set interests_top=0   # a setting
    python benchmarks/profile_worker.py --model DIR --rate 1000 --events 15000 --trace --out runs/scope.json

The py-spy output is in py-spy's ``raw`` format (collapsed stacks, one per line). ``stream-rec bench`` is
the benchmark (baselines, goals, same-run ratios); this is the microscope used between its runs.

``--trace`` is the latency microscope (stream_rec_devtools/microscope.py): the worker runs with
``STREAM_REC_TRACE_FILE`` (stream_rec/worker/trace.py) and the events above p95 are explained leg by leg
-- fetch, hand-off to the event loop, waiting in the stream's channel, waiting in the batch, the batch's
phases, the sends, the broker's acknowledgement -- beside what else ran meanwhile (GC, slow loop callbacks
and task steps by coroutine, executor threads, Faust's commit, other batches) and, sampled from /proc
every ``--cpu-sample-ms``, what the box's CPUs were busy with (worker, broker, this process, the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stream_rec.io.broker import EmbeddedBroker
from stream_rec.io.kafka import ensure_topics
from stream_rec.worker.models import load_recommender
from stream_rec_devtools import harness
from stream_rec_devtools.bench_live import bench_events, latency_legs, percentiles, worker_times_of
from stream_rec_devtools.microscope import CpuSampler, GcSpans, Trace, analyse, event_legs, format_report
from stream_rec_devtools.procfs import Usage, thread_cpu_seconds


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def profile(broker: EmbeddedBroker, data_dir: Path, args: argparse.Namespace) -> None:
    items = load_recommender(args.model, device="cpu").item_ids
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.trace:
        overrides["trace_file"] = str(data_dir / "trace.jsonl")
    settings = harness.isolated_settings(broker.bootstrap, data_dir, "profile", model=str(args.model),
                                         partitions=args.partitions, **overrides)
    await ensure_topics(settings)
    producer = await harness.make_producer(settings)
    events = bench_events(items, args.events, args.users, seed=1, prefix="p")
    last = {e["user_id"]: e["timestamp"] for e in events}
    arrivals: dict = {}
    worker_times: dict = {}

    def on_record(rec: dict, t: float) -> None:
        key = (rec.get("user_id"), rec.get("event_timestamp"))
        arrivals.setdefault(key, t)
        if key not in worker_times:
            worker_times[key] = worker_times_of(rec)

    collector = await harness.RecCollector(settings, on_record=on_record).start()
    spy = sampler = cpu = None
    bench_gc = GcSpans()
    sent: dict = {}
    acked: dict = {}
    on_sent = lambda i, ev, t: sent.__setitem__((ev["user_id"], ev["timestamp"]), t)  # noqa: E731
    on_acked = lambda i, ev, t: acked.__setitem__((ev["user_id"], ev["timestamp"]), t)  # noqa: E731
    backlog = args.rate <= 0  # saturation: published before the worker starts, as `stream-rec bench` does
    if backlog:
        await harness.send_events(producer, settings, events, on_sent=on_sent, on_acked=on_acked)
    worker = harness.WorkerProcess(settings, log_file=data_dir / "worker.log").start()
    try:
        if backlog:  # measured from the first recommendation on (the worker loads everything before it)
            await collector.wait_for(lambda: any(u in last for u, _ in arrivals), timeout_s=300)
        else:
            await harness.wait_ready(settings, collector, items[0], producer=producer)
            t0 = time.monotonic()
            while "text encoder ready" not in worker.log_tail(1_000_000) and time.monotonic() - t0 < 180:
                await asyncio.sleep(0.5)
        pid = worker.proc.pid
        if args.py_spy:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # PATH or the venv
            spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-o", args.py_spy, "-r", "200",
                                    "--nonblocking", "-f", "raw"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.trace and args.cpu_sample_ms > 0:
            sampler = CpuSampler({"worker": pid, "broker": broker.process.pid, "bench": os.getpid()},
                                 data_dir / "cpu.jsonl", args.cpu_sample_ms / 1000.0).start()
        threads0, worker_usage, broker_usage = thread_cpu_seconds(pid), Usage(pid), Usage(broker.process.pid)
        with bench_gc, harness.no_gc_pauses():
            if not backlog:
                await harness.send_events(producer, settings, events, rate=args.rate, chunk=50, on_sent=on_sent,
                                          on_acked=on_acked)
            drained = await collector.wait_for(lambda: all(k in arrivals for k in last.items()), timeout_s=300,
                                               idle_s=60)
        times = sorted(t for (u, _), t in arrivals.items() if u in last)
        span = times[-1] - times[0]
        print(f"drained={drained}: {len(events)} events in {span:.2f} s = {len(events) / span:,.0f} events/s")
        print(f"worker {worker_usage.read()}\nbroker {broker_usage.read()}")
        threads1 = thread_cpu_seconds(pid)
        busiest = sorted(((threads1[t] - threads0.get(t, 0.0), t) for t in threads1), reverse=True)[:5]
        print("worker threads (CPU s, tid):", [(round(c, 2), t) for c, t in busiest])
        text = urllib.request.urlopen(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics").read().decode()
        batches = metric(text, 'stream_rec_batch_size_events_count{stage="events"}')
        batched = metric(text, 'stream_rec_batch_size_events_sum{stage="events"}')
        print(f"mean micro-batch {batched / batches:.1f} events ({batches:.0f} batches, whole run)")
        warm = [k for k in sent if k in arrivals and sent[k] - min(sent.values()) > 1.0]  # first second = warm-up
        print("latency after the first second:", percentiles([arrivals[k] - sent[k] for k in warm]))
        print("legs:", latency_legs({k: sent[k] for k in warm}, worker_times, arrivals))
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if sampler is not None:
            cpu = sampler.stop()
        await collector.stop()
        await producer.stop()
        worker.stop()  # a clean stop: the worker writes its trace as it exits
    if args.trace:
        trace = Trace.read(settings.trace_file, settings.topic(settings.events_topic))
        trace.spans += bench_gc.spans
        joined = {}
        for k in warm:
            legs = event_legs(trace, k, sent[k], arrivals[k], acked.get(k))
            if legs is not None:
                joined[k] = legs
        print(f"\n--- latency microscope ({len(joined)} of {len(warm)} events found in the trace) ---")
        analysis = analyse(joined, trace, cpu)
        print(format_report(analysis))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(analysis, indent=1))
            print(f"analysis written to {args.out}")
        if args.keep_trace:
            shutil.copy(settings.trace_file, args.keep_trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="trained model directory")
    parser.add_argument("--events", type=int, default=20000, help="events to send (default 20000)")
    parser.add_argument("--users", type=int, default=5000, help="synthetic users (default 5000)")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s (default 0 = a backlog, as fast as possible)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--py-spy", metavar="FILE", help="record a py-spy profile of the worker into FILE")
    parser.add_argument("--trace", action="store_true", help="the latency microscope: trace the worker, explain "
                                                                 "the events above p95 leg by leg")
    parser.add_argument("--cpu-sample-ms", type=float, default=50.0,
                        help="with --trace: sample the box's CPU this often (0 = no sampling; default 50)")
    parser.add_argument("--out", metavar="FILE", help="with --trace: write the analysis as JSON")
    parser.add_argument("--keep-trace", metavar="FILE", help="with --trace: keep the worker's trace file here")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a worker setting (Settings field), e.g. --set fetch_max_wait_ms=5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        asyncio.run(profile(broker, Path(tmp), args))


if __name__ == "__main__":
    main()
