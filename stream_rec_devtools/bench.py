"""The scenarios of `stream-rec bench` (stream_rec/commands/bench.py says what each measures): the bare
Faust consumer and the Faust floor as baselines, the worker with the untrained model ("spine"), and the
trained-model scenarios of ``bench_live``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from stream_rec.io.broker import EmbeddedBroker, free_port
from stream_rec.io.kafka import ensure_topics, publish
from stream_rec.settings import Settings
from stream_rec_devtools.synthetic import synthetic_events
from stream_rec.worker.models import load_newest

from .bench_live import run_live_scenarios
from .demo_model import demo_model_dir
from .harness import WorkerProcess
from .procfs import cpu_seconds


class _Progress:
    """Events counted by a baseline subprocess; at ``n`` it prints its one JSON result line and exits."""

    def __init__(self, n: int):
        self.n, self.count, self.first, self.first_count, self.cpu_first = n, 0, None, 0, 0.0

    def add(self, events: int) -> None:
        self.count += events
        if self.first is None:
            self.first, self.first_count, self.cpu_first = time.time(), self.count, time.process_time()
        if self.count >= self.n:
            print(json.dumps({"count": self.count, "t_first": self.first, "first_count": self.first_count,
                              "t_last": time.time(), "cpu_s": time.process_time() - self.cpu_first}), flush=True)
            os._exit(0)


def _baseline_app(broker: str, app_id: str, datadir: str, partitions: int, **conf):
    import faust

    return faust.App(app_id, broker=f"kafka://{broker}", datadir=datadir, consumer_auto_offset_reset="earliest",
                     broker_session_timeout=6.0, broker_heartbeat_interval=1.0, web_enabled=False,
                     topic_partitions=partitions, **conf)


def _run_baseline(app) -> None:
    import faust

    worker = faust.Worker(app, loglevel="warning", redirect_stdouts=False, quiet=True)
    worker.spinner = None  # as in stream_rec.worker.run.make_worker: the spinner turns on DEBUG logging
    worker.execute_from_commandline()


def bare_faust(broker: str, topic: str, n: int, app_id: str, datadir: str, partitions: int) -> None:
    """Entry point of the bare-Faust subprocess: count ``take(1000)`` batches, print one JSON line, exit."""
    app = _baseline_app(broker, app_id, datadir, partitions)
    events = app.topic(topic, key_type=bytes, value_type=bytes)
    progress = _Progress(n)

    @app.agent(events)
    async def count(stream):
        async for values in stream.take(1000, within=0.005):
            progress.add(len(values))

    _run_baseline(app)


class event_context:
    """``with event_context(event):`` makes ``event`` Faust's current event, so a stock Faust table write
    uses its partition (inside a ``take_batches`` batch no event is current). A class, not a
    ``contextlib.contextmanager``: it runs once per user per batch."""

    __slots__ = ("_event", "_token", "_var")

    def __init__(self, event):
        from faust.streams import _current_event

        self._event, self._var = event, _current_event

    def __enter__(self):
        self._token = self._var.set(weakref.ref(self._event))

    def __exit__(self, *exc) -> None:
        self._var.reset(self._token)


def faust_floor(broker: str, topic: str, n: int, app_id: str, datadir: str, partitions: int) -> None:
    """Entry point of the Faust-floor subprocess: the bare consumer plus what every stream-rec worker must
    do whatever its model -- write each user's state into a RocksDB table with a changelog and send one
    record for that user (once per user per micro-batch, as the worker does) -- through Faust's stock
    per-record paths, with a fixed 512-byte state and a fixed 300-byte record instead of a model. It shows
    the ceiling that the fixed shape (Faust table + changelog + one recommendation per event) sets on this
    machine, beside the bare consumer."""
    from stream_rec.worker.batching import BatchPolicy
    from stream_rec.worker.intake import take_batches

    app = _baseline_app(broker, app_id, datadir, partitions, store="rocksdb://", producer_linger=0.002)
    events = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    out_topic = f"{topic}.floor-out"
    table = app.Table("floor-state", key_type=bytes, value_type=bytes)
    state, record = bytes(512), bytes(300)
    progress = _Progress(n)

    @app.agent(events)
    async def count(stream):
        pending: list = []
        async for batch in take_batches(stream, BatchPolicy(max_events=256, fill_max_s=0.05)):
            last_of = {e.message.key: e for e in batch}
            for key, event in last_of.items():
                with event_context(event):
                    table[key] = state
            futures = [await app.producer.send(out_topic, key, record, None, None, None) for key in last_of]
            previous, pending = pending, futures
            if previous:
                await asyncio.gather(*previous)
            progress.add(len(batch))

    _run_baseline(app)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _histogram_quantile(text: str, name: str, q: float) -> float | None:
    """Quantile from cumulative ``_bucket`` lines (upper bound of the bucket holding it)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for bound, count in sorted(buckets):
        if count >= q * total:
            return bound
    return None


def measure_spine(settings, items_file: Path, n: int, workdir: Path, timeout_s: float) -> dict:
    """``stream-rec worker`` (untrained model) over the ``n`` published events, read through its /metrics."""
    import urllib.request

    worker = WorkerProcess(settings, items=items_file, log_file=workdir / "spine-worker.log", loglevel="warning")
    url = worker.metrics_url()
    t_first = first_count = None
    deadline = time.monotonic() + timeout_s
    text = ""
    with worker:
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"spine worker exited ({worker.proc.returncode}); see {worker.log_path}")
            try:
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            consumed = _metric(text, "stream_rec_events_consumed_total")
            now = time.time()
            if consumed > 0 and t_first is None:
                t_first, first_count, cpu_first = now, consumed, cpu_seconds(worker.proc.pid)
            if consumed >= n:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"spine did not consume {n} events in {timeout_s:.0f} s; see {worker.log_path}")
        t_last, cpu_s = time.time(), cpu_seconds(worker.proc.pid) - cpu_first
    return {"count": consumed, "t_first": t_first, "first_count": first_count, "t_last": t_last, "cpu_s": cpu_s,
            "recommendations": _metric(text, "stream_rec_recommendations_emitted_total"),
            "dlq": _metric(text, "stream_rec_events_dlq_total"),
            "consume_to_rec_p50_s_le": _histogram_quantile(text, "stream_rec_consume_to_recommendation_seconds", 0.5),
            "consume_to_rec_p99_s_le": _histogram_quantile(text, "stream_rec_consume_to_recommendation_seconds", 0.99),
            "batch_mean": (_metric(text, 'stream_rec_batch_size_events_sum') /
                           max(1.0, _metric(text, 'stream_rec_batch_size_events_count')))}


def measure_bare(broker: str, topic: str, n: int, partitions: int, workdir: Path, timeout_s: float,
                 entry: str = "bare_faust", repeat: int = 0) -> dict:
    """Run ``entry`` (``bare_faust`` or ``faust_floor``) in a subprocess over the ``n`` published events
    (its own consumer group and data dir for each ``repeat``: every run reads the whole backlog)."""
    code = (f"import sys; from stream_rec_devtools.bench import {entry}; "
            f"{entry}(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))")
    proc = subprocess.run([sys.executable, "-c", code, broker, topic, str(n), f"bench-{entry}-{os.getpid()}-{repeat}",
                           str(workdir / f"{entry}-data-{repeat}"), str(partitions)], capture_output=True, text=True,
                          timeout=timeout_s, start_new_session=True)  # its own session, like the worker (harness)
    for line in reversed(proc.stdout.splitlines()):
        if '{"count"' in line:  # Faust's worker may prefix terminal control codes
            return json.loads(line[line.index('{"count"'):])
    raise RuntimeError(f"{entry} consumer failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def rate(r: dict) -> float:
    span = r["t_last"] - r["t_first"]
    return (r["count"] - r["first_count"]) / span if span > 0 else float("nan")


def cpu_rate(r: dict) -> float:
    """Events per CPU-second of the consumer process: what one dedicated core would sustain. On a
    shared machine (other processes on the same cores) this is the steadier figure to compare."""
    return (r["count"] - r["first_count"]) / r["cpu_s"] if r.get("cpu_s") else float("nan")


def run_bench(args: argparse.Namespace) -> int:
    """`stream-rec bench` (its flags in ``args``): every scenario on every model, ``args.repeats`` times;
    figures printed (the table: median and min-max over the repeats) and written to ``args.out``."""
    workdir = Path(tempfile.mkdtemp(prefix="stream-rec-bench-"))
    models = [] if args.skip_model else model_dirs(args.model)
    results: dict = {"events": args.synthetic_events, "users": args.synthetic_users, "partitions": args.partitions,
                     "batch_max_events": args.batch_max_events, "batch_max_wait_ms": args.batch_max_wait_ms,
                     "latency_rate": args.latency_rate, "latency_duration_s": args.latency_duration_s,
                     "repeats": args.repeats, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                     "models": {label: str(d) for label, d in models}, "runs": []}
    with EmbeddedBroker(log_file=workdir / "broker.log") as broker:
        settings = Settings.from_env(broker=broker.bootstrap, partitions=args.partitions, data_dir=workdir / "spine",
                                     metrics_port=free_port(), app_id="bench-spine",
                                     batch_max_events=args.batch_max_events,
                                     batch_max_wait_ms=args.batch_max_wait_ms)
        asyncio.run(ensure_topics(settings))
        items, events = synthetic_events(args.synthetic_events, args.synthetic_users, seed=0)
        items_file = workdir / "items.jsonl"
        items_file.write_text("".join(json.dumps(i) + "\n" for i in items))
        topic = settings.topic(settings.events_topic)
        print(f"[bench] broker {broker.bootstrap}; publishing {len(events)} events ({args.synthetic_users} users, "
              f"{args.partitions} partitions) ...", flush=True)
        asyncio.run(publish(settings, topic, events, len(events), 0.0, True, progress=True))
        for repeat in range(args.repeats):
            if args.repeats > 1:
                print(f"[bench] === run {repeat + 1} of {args.repeats} (load average {os.getloadavg()[0]:.2f}) ===",
                      flush=True)
            run: dict = {"load_before": os.getloadavg()}
            if not args.skip_bare:
                run_baselines(broker.bootstrap, topic, len(events), args, workdir, run, repeat)
            if not args.skip_spine:
                spine_settings = settings.replace(app_id=f"bench-spine-{repeat}", metrics_port=free_port(),
                                                  data_dir=workdir / f"spine-{repeat}")
                run["spine"] = run_spine(spine_settings, items_file, len(events), workdir, args.timeout_s)
            if models:
                run["models"] = {}
                for label, model_dir in models:  # interleaved: a change of the box's load hits every model
                    run["models"][label] = run_model_scenarios(args, broker.bootstrap, workdir / f"{label}-{repeat}",
                                                               model_dir, label, first=repeat == 0)
            run["load_after"] = os.getloadavg()
            results["runs"].append(run)
    results["load_after"] = os.getloadavg()
    if models:
        results["table"] = summary_table(results["runs"])
        print(format_table(results["table"], results), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"[bench] results written to {out}", flush=True)
    if models:
        plot = out.with_suffix(".png")
        plot_table(results["table"], plot, title=f"stream-rec bench ({os.cpu_count()} CPUs, {args.repeats} runs, "
                                                 f"{args.latency_rate:g} ev/s)")
        print(f"[bench] plot written to {plot}", flush=True)
    return 0


def model_dirs(names: list[str] | None) -> list[tuple[str, Path]]:
    """(label, directory) of each ``--model``: ``demo`` is the demo model of the synthetic world (trained
    on first use and cached, stream_rec_devtools/demo_model.py); a directory's label is its name."""
    out, seen = [], set()
    for name in names or ["demo"]:
        label, path = ("demo", demo_model_dir()) if name == "demo" else (Path(name).name, Path(name))
        while label in seen:
            label += "'"
        seen.add(label)
        out.append((label, path))
    return out


def run_baselines(broker: str, topic: str, n: int, args: argparse.Namespace, workdir: Path, run: dict,
                  repeat: int) -> None:
    print("[bench] bare Faust consumer (take(1000)) ...", flush=True)
    bare = measure_bare(broker, topic, n, args.partitions, workdir, args.timeout_s, repeat=repeat)
    bare["events_per_s"], bare["events_per_cpu_s"] = rate(bare), cpu_rate(bare)
    run["bare_faust"] = bare
    print(f"[bench]   bare Faust: {bare['events_per_s']:,.0f} events/s "
          f"({bare['events_per_cpu_s']:,.0f} per CPU-second)", flush=True)
    print("[bench] Faust floor (bare + a RocksDB table write and a record per user per micro-batch) ...", flush=True)
    floor = measure_bare(broker, topic, n, args.partitions, workdir, args.timeout_s, entry="faust_floor",
                         repeat=repeat)
    floor["events_per_s"], floor["events_per_cpu_s"] = rate(floor), cpu_rate(floor)
    run["faust_floor"] = floor
    print(f"[bench]   Faust floor: {floor['events_per_s']:,.0f} events/s "
          f"({floor['events_per_cpu_s']:,.0f} per CPU-second) = {rate(floor) / rate(bare):.2f} x bare", flush=True)


def run_spine(settings, items_file: Path, n: int, workdir: Path, timeout_s: float) -> dict:
    print("[bench] spine worker (validate + RocksDB state + GRU step + top-K + sends) ...", flush=True)
    spine = measure_spine(settings, items_file, n, workdir, timeout_s)
    spine["events_per_s"], spine["events_per_cpu_s"] = rate(spine), cpu_rate(spine)
    print(f"[bench]   spine: {spine['events_per_s']:,.0f} events/s consumed with recommendations sent "
          f"({spine['events_per_cpu_s']:,.0f} per CPU-second; "
          f"{spine['recommendations']:.0f} records, mean batch {spine['batch_mean']:.0f} events, "
          f"consume->rec p50 <= {spine['consume_to_rec_p50_s_le']} s, p99 <= {spine['consume_to_rec_p99_s_le']} s)",
          flush=True)
    return spine


def run_model_scenarios(args: argparse.Namespace, bootstrap: str, workdir: Path, model_dir: Path, label: str,
                        first: bool = True) -> dict:
    """The full pipeline with a trained model (and, with ``--batch1-events``, the same with batch size 1;
    in the first run the model stage alone too): bench_live."""
    model_dir, rec = load_newest(model_dir, device="cpu")
    print(f"[bench] {label}: pipeline with model {rec.version}: backlog of {args.synthetic_events} events, then "
          f"{args.latency_rate:g} ev/s for {args.latency_duration_s:g} s"
          f"{'; then the same with batch size 1' if args.batch1_events else ''} ...", flush=True)
    live = run_live_scenarios(bootstrap, workdir, model_dir, saturation_events=args.synthetic_events,
                              batch1_events=args.batch1_events, latency_rate=args.latency_rate,
                              latency_seconds=args.latency_duration_s, batch_max_events=args.batch_max_events,
                              log_dir=workdir, n_users=args.synthetic_users, batch_max_wait_ms=args.batch_max_wait_ms,
                              model_stage=first)
    live["model"] = {"dir": str(model_dir), "version": rec.version, "hidden": rec.hidden_size, "items": rec.n_items}
    for name in ("pipeline", "pipeline_batch1"):
        if name not in live:
            continue
        r = live[name]
        print(f"[bench]   {label} {name}: {r['saturation']['events_per_s']:,.0f} events/s at saturation "
              f"({r['saturation'].get('events_per_cpu_s', float('nan')):,.0f} per CPU-second; "
              f"CPU {r['saturation']['cpu_percent']}%, RSS {r['saturation']['rss_mb']} MB); at "
              f"{r['latency']['offered_events_per_s']:g} ev/s p50/p95/p99 = {r['latency'].get('p50_ms')}/"
              f"{r['latency'].get('p95_ms')}/{r['latency'].get('p99_ms')} ms; state {r['state'].get('mean_bytes')} "
              f"B/user", flush=True)
        legs = r["latency"].get("legs") or {}
        if legs:
            print("[bench]     latency legs p50/p99 ms: " + ", ".join(
                f"{leg_name} {leg.get('p50_ms')}/{leg.get('p99_ms')}" for leg_name, leg in legs.items()), flush=True)
    if "model_stage" in live:
        print(f"[bench]   {label} model stage alone: {live['model_stage']['events_per_s']:,.0f} events/s "
              f"({live['model_stage']['device']})", flush=True)
    return live


# --- the table: every figure of every model, median and spread over the runs ----------------------------
TABLE = (  # (key, heading, how to read it from one run's figures of one model (None: not measured))
    ("p50_ms", "p50", lambda m, run: m["pipeline"]["latency"].get("p50_ms")),
    ("p95_ms", "p95", lambda m, run: m["pipeline"]["latency"].get("p95_ms")),
    ("p99_ms", "p99", lambda m, run: m["pipeline"]["latency"].get("p99_ms")),
    ("worker_p50_ms", "worker p50", lambda m, run: (m["pipeline"]["latency"].get("legs") or {}).get("worker", {}).get("p50_ms")),
    ("worker_p99_ms", "worker p99", lambda m, run: (m["pipeline"]["latency"].get("legs") or {}).get("worker", {}).get("p99_ms")),
    ("saturation_events_per_s", "saturation ev/s", lambda m, run: m["pipeline"]["saturation"].get("events_per_s")),
    ("over_faust_floor", "/ Faust floor",
     lambda m, run: (m["pipeline"]["saturation"]["events_per_s"] / run["faust_floor"]["events_per_s"]
                     if "faust_floor" in run and m["pipeline"]["saturation"].get("events_per_s") else None)),
    ("state_bytes_per_user", "state B/user", lambda m, run: m["pipeline"]["state"].get("mean_bytes")),
)
GOALS = {"p99_ms": ("<=", 50.0), "worker_p99_ms": ("<=", 10.0), "over_faust_floor": (">=", 0.9),
         "state_bytes_per_user": ("<=", 1024.0)}  # on the median of the runs (issue 17)


def spread(values: list) -> dict:
    """Median, min and max of the figures that were measured (None left out)."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": float(np.median(got)), "min": got[0], "max": got[-1], "values": values}


def summary_table(runs: list[dict]) -> dict:
    """model -> figure -> spread over the runs, and which goals the medians meet."""
    labels = list(runs[0].get("models", {}))
    table = {}
    for label in labels:
        row = {key: spread([read(run["models"][label], run) for run in runs]) for key, _, read in TABLE}
        row["goals_met"] = {key: (row[key]["median"] is not None and
                                  (row[key]["median"] <= bound if op == "<=" else row[key]["median"] >= bound))
                            for key, (op, bound) in GOALS.items()}
        table[label] = row
    return table


def format_table(table: dict, results: dict) -> str:
    """The table as text: ``median (min-max)`` per cell; a ``*`` marks a median that misses its goal."""
    def cell(key: str, s: dict, met: dict) -> str:
        if s["median"] is None:
            return "-"
        fmt = (lambda v: f"{v:.2f}") if key == "over_faust_floor" else (lambda v: f"{v:,.0f}" if v >= 1000 else f"{v:.1f}")
        mark = "*" if key in met and not met[key] else ""
        return f"{fmt(s['median'])}{mark} ({fmt(s['min'])}-{fmt(s['max'])})"

    heads = [h for _, h, _ in TABLE]
    rows = [[label] + [cell(key, row[key], row["goals_met"]) for key, _, _ in TABLE] for label, row in table.items()]
    widths = [max(len(x) for x in col) for col in zip(["model"] + heads, *rows)]
    lines = [f"[bench] {results['repeats']} run(s) per model at {results['latency_rate']:g} ev/s (latency, ms) and a "
             f"{results['events']}-event backlog (saturation); median (min-max); * = the median misses its goal "
             f"(p99 <= 50 ms, worker p99 <= 10 ms, >= 0.9 x Faust floor, <= 1024 B/user); load average before/after: "
             f"{results['load_before'][0]:.2f} / {results['load_after'][0]:.2f}",
             "  ".join(h.ljust(w) for h, w in zip(["model"] + heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plot_table(table: dict, path: Path, title: str) -> None:
    """Latency percentiles and the worker leg per model (median, min-max whiskers), and saturation over the
    Faust floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    keys = ("p50_ms", "p95_ms", "p99_ms", "worker_p99_ms")
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        med = [table[m][key]["median"] or 0.0 for m in labels]
        err = [[med[i] - (table[m][key]["min"] or 0.0) for i, m in enumerate(labels)],
               [(table[m][key]["max"] or 0.0) - med[i] for i, m in enumerate(labels)]]
        ax1.bar(np.arange(len(labels)) + (j - 1.5) * width, med, width, yerr=err, capsize=3,
                label=key.replace("_ms", "").replace("_", " "))
    ax1.axhline(50, color="k", ls="--", lw=1)
    ax1.axhline(10, color="grey", ls=":", lw=1)
    ax1.set_xticks(np.arange(len(labels)), labels)
    ax1.set_ylabel("event -> recommendation latency (ms)")
    ax1.legend(fontsize=8)
    ratio = [table[m]["over_faust_floor"]["median"] or 0.0 for m in labels]
    ax2.bar(labels, ratio, color="tab:green")
    ax2.axhline(0.9, color="k", ls="--", lw=1)
    ax2.set_ylabel("saturation / Faust floor")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
