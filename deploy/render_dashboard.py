#!/usr/bin/env python3
"""Draw the key panels of the Grafana dashboard as one PNG, from a real worker's /metrics.

There is no Grafana on a developer machine, but the numbers behind the dashboard are plain Prometheus
metrics: this script scrapes them once a second, computes the panels the way the dashboard's PromQL does
(rate over a sliding window, ``histogram_quantile`` with Prometheus's linear interpolation inside the
bucket), and draws events/s, recommendations/s, event->recommendation latency p50/p95/p99 against the
100 ms p99 budget, micro-batch size, model step time and consumer lag.

Three sources of samples:

    # a self-contained run: embedded broker + worker + a synthetic producer ramping its rate
    python deploy/render_dashboard.py --demo --duration 60 --out dashboard.png

    # any running worker (e.g. during `stream-rec bench` or in the compose stack)
    python deploy/render_dashboard.py --metrics-url http://127.0.0.1:9108/metrics --duration 120 --out dash.png

    # re-draw samples saved by an earlier run (--save-samples)
    python deploy/render_dashboard.py --samples samples.json --out dash.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable

from stream_rec.metrics import histogram_quantile  # the dashboard's quantile, shared with the worker's /ui/system

# One scrape: "name{label=value,...}" -> value (labels sorted), plus the scrape time.
Sample = dict[str, float]
LATENCY_BUDGET_S = 0.1  # the p99 threshold of alert StreamRecLatencyP99OverBudget


# --- pure functions: the dashboard's PromQL, in Python ------------------------------------------------

def parse_exposition(text: str) -> Sample:
    """Prometheus text format -> flat {series: value} (same keys as tests/conftest.py's scrape)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _split(series: str) -> tuple[str, dict[str, str]]:
    if "{" not in series:
        return series, {}
    name, rest = series.split("{", 1)
    labels = {}
    for part in rest.rstrip("}").split('",'):
        if "=" in part:
            k, v = part.split("=", 1)
            labels[k] = v.strip('"')
    return name, labels


def total(sample: Sample, name: str, **match: str) -> float:
    """sum(name{match}) over all other labels (0 when absent)."""
    out = 0.0
    for series, value in sample.items():
        n, labels = _split(series)
        if n == name and all(labels.get(k) == v for k, v in match.items()):
            out += value
    return out


def buckets(sample: Sample, histogram: str, **match: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) pairs of ``histogram``, summed over other labels, sorted by le."""
    acc: dict[float, float] = {}
    for series, value in sample.items():
        n, labels = _split(series)
        if n == histogram + "_bucket" and all(labels.get(k) == v for k, v in match.items()):
            le = float(labels["le"])
            acc[le] = acc.get(le, 0.0) + value
    return sorted(acc.items())


def bucket_increase(new: list[tuple[float, float]], old: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-bucket increase between two scrapes (a counter reset counts from 0, like rate())."""
    before = dict(old)
    return [(le, c - before.get(le, 0.0) if c >= before.get(le, 0.0) else c) for le, c in new]


def panels(times: list[float], samples: list[Sample], window_s: float = 10.0) -> dict[str, list[float]]:
    """The dashboard's time series, one value per scrape, each over the trailing ``window_s``."""
    out: dict[str, list[float]] = {k: [] for k in (
        "events_per_s", "recs_per_s", "dlq_per_s", "p50", "p95", "p99", "consume_p99", "batch_mean",
        "step_p50", "step_p95", "rank_p95", "lag")}
    j = 0
    for i, (t, cur) in enumerate(zip(times, samples)):
        while times[j] < t - window_s:
            j += 1
        old, dt = samples[j], t - times[j]

        def rate(name: str, **match: str) -> float:
            return max(0.0, total(cur, name, **match) - total(old, name, **match)) / dt if dt > 0 else math.nan

        def quantile(q: float, histogram: str, **match: str) -> float:
            return histogram_quantile(q, bucket_increase(buckets(cur, histogram, **match),
                                                         buckets(old, histogram, **match)))

        out["events_per_s"].append(rate("stream_rec_events_consumed_total"))
        out["recs_per_s"].append(rate("stream_rec_recommendations_emitted_total"))
        out["dlq_per_s"].append(rate("stream_rec_events_dlq_total"))
        for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            out[key].append(quantile(q, "stream_rec_event_to_recommendation_seconds"))
        out["consume_p99"].append(quantile(0.99, "stream_rec_consume_to_recommendation_seconds"))
        n = rate("stream_rec_batch_size_events_count", stage="events")
        out["batch_mean"].append(rate("stream_rec_batch_size_events_sum", stage="events") / n if n else math.nan)
        out["step_p50"].append(quantile(0.5, "stream_rec_model_step_seconds", stage="step"))
        out["step_p95"].append(quantile(0.95, "stream_rec_model_step_seconds", stage="step"))
        out["rank_p95"].append(quantile(0.95, "stream_rec_model_step_seconds", stage="rank"))
        out["lag"].append(total(cur, "stream_rec_consumer_lag_messages"))
    return out


def render(times: list[float], samples: list[Sample], out: Path, title: str = "stream-rec",
           window_s: float = 10.0) -> dict[str, float]:
    """Draw the PNG; returns a few summary figures of the run (for the caller to print)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(samples) < 2:
        raise ValueError("need at least two scrapes to compute rates")
    p = panels(times, samples, window_s)
    x = [t - times[0] for t in times]
    ms = lambda values: [v * 1000.0 for v in values]  # noqa: E731 - seconds -> ms for the axes

    fig, axes = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
    fig.suptitle(f"{title} - key panels of the Grafana dashboard (rates and quantiles over {window_s:.0f} s)")
    ax = axes[0][0]
    ax.plot(x, p["events_per_s"], label="events consumed / s")
    ax.plot(x, p["recs_per_s"], label="recommendations / s")
    ax.plot(x, p["dlq_per_s"], label="dead-lettered / s")
    ax.set_title("Throughput")
    ax.set_ylabel("per second")
    ax = axes[0][1]
    for key in ("p50", "p95", "p99"):
        ax.plot(x, ms(p[key]), label=f"{key} event -> rec")
    ax.plot(x, ms(p["consume_p99"]), linestyle="--", label="p99 consume -> rec")
    ax.axhline(LATENCY_BUDGET_S * 1000, color="red", linewidth=1, label=f"p99 budget {LATENCY_BUDGET_S * 1000:.0f} ms")
    ax.set_title("Event -> recommendation latency")
    ax.set_ylabel("ms")
    ax = axes[1][0]
    ax.plot(x, p["batch_mean"], label="mean events per micro-batch")
    ax.set_title("Batch size")
    ax.set_ylabel("events")
    ax = axes[1][1]
    ax.plot(x, ms(p["step_p50"]), label="GRU step p50")
    ax.plot(x, ms(p["step_p95"]), label="GRU step p95")
    ax.plot(x, ms(p["rank_p95"]), label="rank p95")
    ax.set_title("Model step time (per micro-batch)")
    ax.set_ylabel("ms")
    ax = axes[2][0]
    ax.plot(x, p["lag"], label="consumer lag")
    ax.set_title("Consumer lag")
    ax.set_ylabel("messages")
    ax = axes[2][1]
    last = samples[-1]
    # the figures of the scraped interval (not of the worker's whole life: a start-up backlog stays out)
    whole = bucket_increase(buckets(last, "stream_rec_event_to_recommendation_seconds"),
                            buckets(samples[0], "stream_rec_event_to_recommendation_seconds"))
    text = [f"events consumed: {total(last, 'stream_rec_events_consumed_total'):.0f}",
            f"recommendations: {total(last, 'stream_rec_recommendations_emitted_total'):.0f}",
            f"dead-lettered: {total(last, 'stream_rec_events_dlq_total'):.0f}",
            f"p50 / p95 / p99 event -> rec over the scrapes: " + " / ".join(
                f"{histogram_quantile(q, whole) * 1000:.1f}" for q in (0.5, 0.95, 0.99)) + " ms",
            f"users in state: {total(last, 'stream_rec_users_in_state'):.0f}",
            f"scrapes: {len(samples)} over {x[-1]:.0f} s"]
    ax.axis("off")
    ax.text(0.02, 0.95, "\n".join(text), va="top", family="monospace", fontsize=10)
    ax.set_title("Run summary")
    for row in axes:
        for a in row:
            if a.lines:
                a.grid(alpha=0.3)
                a.legend(fontsize=8, loc="upper left")
                a.set_ylim(bottom=0)
    for a in axes[-1]:
        a.set_xlabel("seconds since first scrape")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    finite = [v for v in p["events_per_s"] if math.isfinite(v)]
    return {"events": total(last, "stream_rec_events_consumed_total"),
            "recommendations": total(last, "stream_rec_recommendations_emitted_total"),
            "peak_events_per_s": max(finite) if finite else math.nan,
            "p50_ms": histogram_quantile(0.5, whole) * 1000, "p95_ms": histogram_quantile(0.95, whole) * 1000,
            "p99_ms": histogram_quantile(0.99, whole) * 1000}


# --- sampling -------------------------------------------------------------------------------------------

def scrape_loop(url: str, duration_s: float, interval_s: float, stop=None) -> tuple[list[float], list[Sample]]:
    """Scrape ``url`` every ``interval_s`` for ``duration_s`` (or until ``stop()`` is true)."""
    from tqdm import tqdm

    times, samples = [], []
    start = time.monotonic()
    with tqdm(total=int(duration_s), unit="s", desc="scraping", leave=False) as bar:
        while time.monotonic() - start < duration_s and not (stop and stop()):
            tick = time.monotonic()
            try:
                text = urllib.request.urlopen(url, timeout=max(1.0, interval_s)).read().decode()
                times.append(time.time())
                samples.append(parse_exposition(text))
            except OSError as exc:
                print(f"scrape of {url} failed: {exc}", file=sys.stderr)
            bar.n = min(int(time.monotonic() - start), int(duration_s))
            bar.refresh()
            time.sleep(max(0.0, interval_s - (time.monotonic() - tick)))
    return times, samples


def rate_profile(duration_s: float, peak: float) -> Iterable[float]:
    """Target producer rate per second of the demo: ramp up to ``peak``, hold, a burst, back down."""
    for s in range(int(duration_s)):
        f = s / max(1.0, duration_s)
        if f < 0.4:
            yield peak * (0.1 + 0.9 * f / 0.4)
        elif f < 0.6:
            yield peak
        elif f < 0.7:
            yield peak * 1.5
        else:
            yield peak * 0.5


def run_demo(duration_s: float, interval_s: float, peak_rate: float, workdir: Path) -> tuple[list[float], list[Sample]]:
    """Embedded broker + one worker subprocess + a synthetic producer following ``rate_profile``."""
    import asyncio
    import os
    import subprocess
    import threading

    from stream_rec.io.broker import EmbeddedBroker, free_port
    from stream_rec.io.kafka import client_kwargs, ensure_topics
    from stream_rec.settings import Settings
    from stream_rec_devtools.synthetic import make_world

    workdir.mkdir(parents=True, exist_ok=True)
    world = make_world(n_users=500, events_per_user=(20, 40), seed=11)
    items_path = workdir / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in world.items))
    with EmbeddedBroker(log_file=workdir / "broker.log") as broker:
        settings = Settings(broker=broker.bootstrap, partitions=2, app_id="render-dashboard",
                            data_dir=workdir / "worker-data", metrics_port=free_port(),
                            device="cpu")
        asyncio.run(ensure_topics(settings))
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        log = open(workdir / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "stream_rec", "worker", "--items-file", str(items_path)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
        try:
            deadline = time.monotonic() + 120
            while True:  # wait for /metrics, then give the consumer group time to settle
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not come up; see {workdir / 'worker.log'}")
                time.sleep(0.5)
            time.sleep(8)

            async def produce() -> None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=2)
                await producer.start()
                events = iter(world.events)
                try:
                    for rate in rate_profile(duration_s, peak_rate):
                        second = time.monotonic()
                        n = int(rate)
                        for k in range(n):
                            e = next(events, None)
                            if e is None:
                                return
                            e = dict(e, timestamp=round(time.time(), 3))
                            await producer.send(settings.topic("events"), json.dumps(e).encode(),
                                                key=e["user_id"].encode())
                            await asyncio.sleep(max(0.0, second + (k + 1) / n - time.monotonic()))
                        await producer.flush()
                finally:
                    await producer.stop()

            producer_thread = threading.Thread(target=lambda: asyncio.run(produce()), daemon=True)
            producer_thread.start()
            result = scrape_loop(url, duration_s + 5, interval_s)
            producer_thread.join(timeout=30)
            return result
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the key panels of the stream-rec Grafana dashboard as a PNG, "
                                             "from a worker's Prometheus metrics.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics-url", help="scrape this running worker's /metrics URL (e.g. "
                                           "http://127.0.0.1:9108/metrics) for --duration seconds")
    src.add_argument("--demo", action="store_true", help="start an embedded broker, a worker and a synthetic "
                                                         "producer (rate ramps up to --peak-rate) and scrape that")
    src.add_argument("--samples", type=Path, help="re-render the samples JSON of an earlier run (--save-samples)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds to scrape (and, with --demo, to produce)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    ap.add_argument("--window", type=float, default=10.0, help="rate/quantile window in seconds (Grafana's "
                                                                "$__rate_interval)")
    ap.add_argument("--peak-rate", type=float, default=300.0, help="--demo: peak producer rate, events/s")
    ap.add_argument("--workdir", type=Path, default=Path("runs/render-dashboard"),
                    help="--demo: where the worker's data and the logs go")
    ap.add_argument("--save-samples", type=Path, help="also write the raw scrapes as JSON (re-render with --samples)")
    ap.add_argument("--title", default="stream-rec", help="figure title")
    ap.add_argument("--out", type=Path, default=Path("runs/dashboard.png"), help="PNG to write")
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or args.window <= 0:
        ap.error("--duration, --interval and --window must be positive")

    if args.samples:
        doc = json.loads(args.samples.read_text())
        times, samples = doc["times"], doc["samples"]
    elif args.demo:
        times, samples = run_demo(args.duration, args.interval, args.peak_rate, args.workdir)
    else:
        times, samples = scrape_loop(args.metrics_url, args.duration, args.interval)
    if args.save_samples:
        args.save_samples.parent.mkdir(parents=True, exist_ok=True)
        args.save_samples.write_text(json.dumps({"times": times, "samples": samples}))
    try:
        summary = render(times, samples, args.out, args.title, args.window)
    except ValueError as exc:
        print(f"render_dashboard: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
