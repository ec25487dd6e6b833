"""Soak: a steady offered load for minutes, to find a worker that stalls, leaks or loses events.

    python benchmarks/soak.py                                   # 300,000 events at 2,500 ev/s, 2,000 users
    python benchmarks/soak.py --events 150000 --rate 1250       # shorter
    python benchmarks/soak.py --py-spy-on-stall                 # dump the worker's stacks if it stalls

One embedded broker, one worker (untrained model over a 500-item catalog, published to the ``catalog``
topic first), one paced producer in this process. Every ``--every-s`` seconds it prints a row: events
offered and consumed, the consumer lag, the worker's RSS and CPU, the broker's CPU and RSS, and the
worker's ready/stalled gauges (its watchdog). After the last event it waits for the worker to drain; a
worker that consumes nothing for ``--stall-s`` seconds while events are left is a stall (with
``--py-spy-on-stall`` the worker's and broker's thread stacks are dumped then). Finally the state
changelog is read back: every user's ``n_events`` must equal the events offered for that user.

Exit status 0 = drained with nothing lost. Prints ``[soak] ...`` summary lines for docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stream_rec.io.broker import EmbeddedBroker
from stream_rec.io.kafka import ensure_topics, kafka_producer
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools import harness
from stream_rec_devtools.bench_live import bench_events
from stream_rec_devtools.harness import read_changelog_states
from stream_rec_devtools.procfs import cpu_seconds, proc_status_kb


def metrics_of(url: str) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def py_spy_dump(pid: int) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        return subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"


async def soak(args: argparse.Namespace, broker: EmbeddedBroker, workdir: Path) -> int:
    settings = harness.isolated_settings(broker.bootstrap, workdir / "data", "soak", partitions=args.partitions,
                                         **dict(kv.split("=", 1) for kv in args.set))
    await ensure_topics(settings)
    catalog = make_catalog(items_per_theme=max(1, args.items // 10))[:args.items]
    # The linger decides how many record batches the broker must hold: the embedded broker's fetches slow
    # down with the number of batches it holds (docs/RELIABILITY.md), so the default packs ~50 ms of events
    producer = kafka_producer(settings, linger_ms=args.linger_ms, max_batch_size=512 * 1024)
    await producer.start()
    for item in catalog:
        await producer.send(settings.topic(settings.catalog_topic), json.dumps(item).encode(),
                            key=item["item_id"].encode())
    await producer.flush()
    events = bench_events([c["item_id"] for c in catalog], args.events, args.users, seed=3, prefix="soak")
    offered = collections.Counter(e["user_id"] for e in events)
    worker = harness.WorkerProcess(settings, log_file=workdir / "worker.log").start()
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        t0 = time.monotonic()
        probes = 0
        while metrics_of(url).get("stream_rec_recommendations_emitted_total", 0) < 1:  # catalog read, group joined
            if time.monotonic() - t0 > 180 or not worker.alive():
                print(worker.log_tail())
                raise SystemExit("the worker did not start")
            probes += await harness.send_events(producer, settings, [harness.event_record(
                "soak-probe", catalog[0]["item_id"], time.time())])
            await asyncio.sleep(2.0)
        pid = worker.proc.pid
        cpu_pids = {"worker": pid, "broker": broker.process.pid}
        cpu_prev = {name: (cpu_seconds(p), time.monotonic()) for name, p in cpu_pids.items()}

        def cpu_percent(name: str) -> int:  # since the previous row
            now_cpu, now_t = cpu_seconds(cpu_pids[name]), time.monotonic()
            was_cpu, was_t = cpu_prev[name]
            cpu_prev[name] = (now_cpu, now_t)
            return round(100 * (now_cpu - was_cpu) / max(1e-9, now_t - was_t))
        rss_start = (proc_status_kb(pid, "VmRSS") or 0) / 1024
        total = len(events) + probes
        sent = [0]

        async def produce() -> None:
            def on_sent(i, ev, t):
                sent[0] = i + 1
            await harness.send_events(producer, settings, events, rate=args.rate, on_sent=on_sent, chunk=500)

        started = time.monotonic()
        producing = asyncio.create_task(produce())
        print(f"[soak] {len(events):,} events for {args.users:,} users offered at {args.rate:,.0f} ev/s to one "
              f"worker ({args.partitions} partitions); RSS at start {rss_start:.0f} MB")
        print(f"{'t_s':>6} {'offered':>9} {'consumed':>9} {'lag':>8} {'ev/s':>6} {'rss_MB':>7} {'w_cpu%':>6} "
              f"{'b_cpu%':>6} {'b_rss_MB':>8} {'ready':>5} {'stall_s':>7}")
        rows, last_consumed, last_progress, prev = [], 0.0, time.monotonic(), (0.0, time.monotonic())
        stalled = False
        while True:
            await asyncio.sleep(args.every_s)
            m = metrics_of(url)
            now = time.monotonic()
            consumed = m.get("stream_rec_events_consumed_total", last_consumed)
            rate = (consumed - prev[0]) / max(1e-9, now - prev[1])
            prev = (consumed, now)
            if consumed > last_consumed:
                last_consumed, last_progress = consumed, now
            rss = (proc_status_kb(pid, "VmRSS") or 0) / 1024
            b_rss = (proc_status_kb(broker.process.pid, "VmRSS") or 0) / 1024
            row = dict(t=round(now - started), offered=sent[0], consumed=int(consumed),
                       lag=int(m.get("stream_rec_consumer_lag_messages", -1)), rate=round(rate),
                       rss_mb=round(rss), worker_cpu=cpu_percent("worker"), broker_cpu=cpu_percent("broker"),
                       broker_rss_mb=round(b_rss),
                       ready=int(m.get("stream_rec_ready", -1)), stalled_s=round(m.get("stream_rec_stalled_seconds", -1)))
            rows.append(row)
            print(f"{row['t']:>6} {row['offered']:>9,} {row['consumed']:>9,} {row['lag']:>8,} {row['rate']:>6,} "
                  f"{row['rss_mb']:>7} {row['worker_cpu']:>6} {row['broker_cpu']:>6} {row['broker_rss_mb']:>8} "
                  f"{row['ready']:>5} {row['stalled_s']:>7}", flush=True)
            if consumed >= total and producing.done():
                break
            if not worker.alive():
                print(f"[soak] the worker exited (status {worker.proc.returncode}):\n{worker.log_tail(3000)}")
                break
            if now - last_progress > args.stall_s:
                stalled = True
                print(f"[soak] STALL: nothing consumed for {now - last_progress:.0f} s at {int(consumed):,} of "
                      f"{total:,} events")
                if args.py_spy_on_stall:
                    print("[soak] worker stacks:\n" + py_spy_dump(pid))
                break
        producing.cancel()
        drained_s = time.monotonic() - started
        peak = (proc_status_kb(pid, "VmHWM") or 0) / 1024
    finally:
        worker.stop()
        await producer.stop()
    states = await read_changelog_states(settings)
    lost = {u: (n, states[u].n_events if states.get(u) else 0) for u, n in offered.items()
            if not states.get(u) or states[u].n_events != n}
    reflected = sum(states[u].n_events for u in offered if states.get(u))
    rss = [r["rss_mb"] for r in rows]
    thirds = [rss[i * len(rss) // 3:(i + 1) * len(rss) // 3] for i in range(3)] if len(rss) >= 3 else [rss]
    print(f"[soak] drained={not stalled and last_consumed >= total} in {drained_s:.0f} s "
          f"({last_consumed / max(drained_s, 1e-9):,.0f} ev/s overall); offered {len(events):,}, in state "
          f"{reflected:,}; users with a wrong count: {len(lost)} {list(lost.items())[:3]}")
    print(f"[soak] worker RSS MB: start {rss_start:.0f}, mean by thirds of the run "
          f"{[round(sum(t) / len(t)) for t in thirds if t]}, end {rss[-1] if rss else 0}, peak (VmHWM) {peak:.0f}; "
          f"broker RSS MB end {rows[-1]['broker_rss_mb'] if rows else 0}")
    ok = not stalled and last_consumed >= total and not lost
    return 0 if ok else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rate", type=float, default=2500.0, help="offered events/s")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--linger-ms", type=int, default=50, help="the load generator's producer linger")
    p.add_argument("--every-s", type=float, default=5.0, help="seconds between progress rows")
    p.add_argument("--stall-s", type=float, default=120.0, help="no progress for this long = a stall")
    p.add_argument("--py-spy-on-stall", action="store_true", help="dump the worker's stacks on a stall")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a worker setting")
    p.add_argument("--workdir", help="keep the broker/worker logs and data here (default: a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="stream-rec-soak-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with EmbeddedBroker(log_file=workdir / "tansu.log") as broker:  # started outside the event loop
            status = asyncio.run(soak(args, broker, workdir))
    sys.exit(status)


if __name__ == "__main__":
    main()
