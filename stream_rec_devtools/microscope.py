"""The latency microscope: which leg took the time of each slow event, and what else ran at that moment.

A worker started with ``Settings.trace_file`` (stream_rec/worker/trace.py) writes, per micro-batch, when
each of its events was fetched, reached the event loop, was taken from the stream, when the batch closed
(and why), went through each phase and was acknowledged, plus spans of everything else that ran (GC,
slow loop callbacks and task steps, executor threads, Faust's commit). The bench side knows when each
event was sent and when its recommendation arrived. :func:`event_legs` joins the two by the
recommendation's ``(user_id, event_timestamp)``; :func:`analyse` compares the events above p95 with all
of them; :func:`format_report` prints it. :class:`CpuSampler` adds what the box's CPUs were doing
(worker, broker, bench, everything else) from ``/proc``, sampled in a child process.

``benchmarks/profile_worker.py --trace`` is the command that runs all of it.
"""

from __future__ import annotations

import bisect
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# the legs of one event, in the order they happen (names are the report's rows)
LEGS = (
    ("fetch", "sent -> its fetch response in the consumer thread (producer linger, broker, fetch wait)"),
    ("buffered", "fetch response -> handed to Faust by the consumer thread (waits for Faust's next getmany)"),
    ("handoff", "consumer thread -> worker event loop"),
    ("channel", "event loop -> taken by the stream (queued while a batch runs, or the loop is busy)"),
    ("fill", "taken -> its micro-batch closed"),
    ("queries", "batch closed -> context queries encoded"),
    ("process", "pipeline.process_batch (phases below)"),
    ("stage", "states staged (write-behind table, state cache)"),
    ("changelog", "changelog record batches handed to the producer"),
    ("records", "recommendations JSON-encoded and handed to the producer"),
    ("delivery", "handed over -> the batch's last record acknowledged by the broker"),
    ("to_bench", "acknowledged -> arrived at the bench's consumer (negative: arrived first)"),
)
PHASES = ("validate", "load", "step", "store", "rank", "emit")


@dataclass
class Trace:
    """A worker's trace file, indexed for the join."""

    fetches: dict[int, list[tuple[int, int, float, float]]]  # partition -> sorted (first, last, t_thread, t_loop)
    responses: dict[int, list[tuple[int, float]]]  # partition -> sorted (first offset, t) of fetch responses
    batches: dict[int, list]  # seq -> the batch record
    by_rec: dict[tuple[str, float], tuple[int, int]]  # (user_id, event_ts) -> (batch seq, event index)
    delivered: dict[int, float]
    spans: list[tuple]  # (kind, t0, t1, thread, detail, cpu seconds or None)

    @classmethod
    def read(cls, path: str | Path, events_topic: str) -> "Trace":
        return cls.of((json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()),
                      events_topic)

    @classmethod
    def of(cls, records: Iterable[list], events_topic: str | None = None) -> "Trace":
        fetches: dict[int, list] = defaultdict(list)
        responses: dict[int, list] = defaultdict(list)
        batches, by_rec, delivered, spans = {}, {}, {}, []
        for rec in records:
            kind = rec[0]
            if kind == "fetch":
                for topic, partition, first, last in rec[3]:
                    if events_topic is None or topic == events_topic:
                        fetches[partition].append((first, last, rec[1], rec[2]))
            elif kind == "response":
                for topic, partition, first in rec[2]:
                    if events_topic is None or topic == events_topic:
                        responses[partition].append((first, rec[1]))
            elif kind == "batch":
                batches[rec[1]] = rec
                for user_id, event_ts, index in rec[7]:
                    if index is not None:
                        by_rec[(user_id, event_ts)] = (rec[1], index)
            elif kind == "delivered":
                delivered[rec[1]] = rec[2]
            elif kind == "span":
                spans.append(tuple(rec[1:]))
        for entries in (*fetches.values(), *responses.values()):
            entries.sort()
        return cls(dict(fetches), dict(responses), batches, by_rec, delivered, spans)

    def fetch_of(self, partition: int, offset: int) -> tuple[float, float] | None:
        """(t_thread, t_loop) of the fetch that returned ``offset`` of ``partition``."""
        entries = self.fetches.get(partition, ())
        n = bisect.bisect_right(entries, (offset, float("inf"))) - 1
        if n >= 0 and entries[n][0] <= offset <= entries[n][1]:
            return entries[n][2], entries[n][3]
        return None


    def response_of(self, partition: int, offset: int) -> float | None:
        """When the fetch response holding ``offset`` of ``partition`` reached the consumer thread."""
        entries = self.responses.get(partition, ())
        n = bisect.bisect_right(entries, (offset, float("inf"))) - 1
        return entries[n][1] if n >= 0 else None


def event_legs(trace: Trace, key: tuple[str, float], sent: float, arrived: float,
               acked: float | None = None) -> dict | None:
    """The legs (seconds) of the event whose recommendation is ``key``, with the batch it was in; None
    when the trace does not hold it. ``acked``: when the broker's acknowledgement of the event reached
    the bench's producer (reported beside the legs as ``ack``)."""
    where = trace.by_rec.get(key)
    if where is None:
        return None
    seq, index = where
    _, _, closed_by, t_closed, events, marks, phases, _ = trace.batches[seq]
    partition, offset, t_taken = events[index]
    fetched = trace.fetch_of(partition, offset)
    if fetched is None or t_taken is None:
        return None
    t_thread, t_loop = fetched
    t_response = trace.response_of(partition, offset)
    if t_response is None or t_response > t_thread:
        t_response = t_thread
    mark = {m[0]: m[1] for m in marks}
    cpu = {m[0]: m[2] for m in marks}
    delivered = trace.delivered.get(seq)
    points = [("fetch", t_response), ("buffered", t_thread), ("handoff", t_loop), ("channel", t_taken), ("fill", t_closed),
              ("queries", mark.get("queries")), ("process", mark.get("process")), ("stage", mark.get("stage")),
              ("changelog", mark.get("changelog")), ("records", mark.get("sent")), ("delivery", delivered),
              ("to_bench", arrived)]
    legs, before = {}, sent
    for name, t in points:
        if t is None:
            return None
        legs[name] = t - before
        before = t
    legs.update({f"phase:{p}": s for p, s in phases})
    # the bench's three legs (bench_live.latency_legs): in = sent -> taken, worker = taken -> record built
    # (the end of process_batch), out = built -> arrived
    legs["in"], legs["worker"], legs["out"] = t_taken - sent, mark["process"] - t_taken, arrived - mark["process"]
    if acked is not None:
        legs["ack"] = acked - sent
    return {"legs": legs, "total": arrived - sent, "batch": seq, "closed_by": closed_by, "batch_size": len(events),
            "window": (sent, arrived), "worker": (t_loop, mark.get("sent")),
            "handling": (mark["sent"] - mark["start"], cpu["sent"] - cpu["start"])}


# --- what else ran ------------------------------------------------------------------------------------
def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def span_label(span: tuple) -> str:
    kind, _, _, thread, detail = span[:5]
    if kind == "gc":
        return ("gc " if thread != "bench" else "gc [bench] ") + detail.split()[0]
    if kind in ("callback", "thread"):
        return f"{kind} [{thread}] {detail}"
    return kind


def activity(spans: Sequence[tuple], windows: Sequence[tuple[float, float]]) -> dict[str, dict]:
    """Per kind of span: in how many of ``windows`` it ran, and how long on average (ms per window)."""
    by_label: dict[str, list] = defaultdict(list)
    for span in spans:
        by_label[span_label(span)].append((span[1], span[2]))
    out = {}
    for label, items in by_label.items():
        items.sort()
        starts = [s for s, _ in items]
        hit, total = 0, 0.0
        for w0, w1 in windows:
            n = bisect.bisect_left(starts, w0 - 5.0)  # no span is longer than a few seconds
            got = 0.0
            for s, e in items[n:]:
                if s > w1:
                    break
                got += _overlap(w0, w1, s, e)
            hit += got > 0
            total += got
        if windows:
            out[label] = {"share": hit / len(windows), "ms": 1000.0 * total / len(windows)}
    return out


def batch_activity(trace: Trace, windows: Sequence[tuple[float, float]], own: Sequence[int]) -> dict[str, float]:
    """Mean ms per window that the worker spent on *other* micro-batches (processing: closed -> handed
    over; waiting for earlier deliveries: handed over -> settled) while the event waited."""
    proc, settle = [], []
    for seq, rec in trace.batches.items():
        mark = {m[0]: m[1] for m in rec[5]}
        if "sent" in mark:
            proc.append((rec[3], mark["sent"], seq))
            if "settled" in mark:
                settle.append((mark["sent"], mark["settled"], seq))
    out = {"other batches: processing": 0.0, "other batches: awaiting earlier deliveries": 0.0}
    for (w0, w1), mine in zip(windows, own):
        out["other batches: processing"] += sum(_overlap(w0, w1, a, b) for a, b, s in proc if s != mine)
        out["other batches: awaiting earlier deliveries"] += sum(_overlap(w0, w1, a, b) for a, b, s in settle
                                                                 if s != mine)
    return {k: 1000.0 * v / max(1, len(windows)) for k, v in out.items()}


# --- the analysis -------------------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "mean": float(a.mean()), "p99": float(np.percentile(a, 99))}


def analyse(joined: dict, trace: Trace, cpu: "CpuSamples | None" = None, quantile: float = 95.0) -> dict:
    """``joined``: key -> :func:`event_legs` result. The events above the ``quantile`` of total latency
    against all of them: legs, the leg that dominated each slow event, why their batches closed, and
    what else ran while they waited (spans, other batches, the box's CPU)."""
    items = list(joined.values())
    totals = np.array([j["total"] for j in items])
    cut = float(np.percentile(totals, quantile))
    slow = [j for j in items if j["total"] > cut]
    names = [n for n, _ in LEGS] + [f"phase:{p}" for p in PHASES] + ["in", "worker", "out", "ack"]
    legs = {n: {"all": _stats([j["legs"][n] for j in items if n in j["legs"]]),
                "slow": _stats([j["legs"][n] for j in slow if n in j["legs"]])} for n in names}
    dominant = Counter(max((n for n, _ in LEGS), key=lambda n: j["legs"][n]) for j in slow)
    out = {"events": len(items), "slow_events": len(slow), "cut_ms": 1000.0 * cut,
           "total": {"all": _stats(list(totals)), "slow": _stats([j["total"] for j in slow])},
           "legs": legs, "dominant": dict(dominant.most_common()),
           "closed_by": {"all": dict(Counter(j["closed_by"] for j in items)),
                         "slow": dict(Counter(j["closed_by"] for j in slow))},
           "batch_size": {"all": float(np.mean([j["batch_size"] for j in items])),
                          "slow": float(np.mean([j["batch_size"] for j in slow])) if slow else None},
           # the event's batch from closed to handed over: wall ms, and CPU ms of the loop thread meanwhile
           "handling": {k: {"wall_ms": 1000.0 * float(np.mean([j["handling"][0] for j in v])),
                            "cpu_ms": 1000.0 * float(np.mean([j["handling"][1] for j in v]))}
                        for k, v in (("all", items), ("slow", slow)) if v}}
    windows = {"all": [j["window"] for j in items], "slow": [j["window"] for j in slow]}
    act_all, act_slow = activity(trace.spans, windows["all"]), activity(trace.spans, windows["slow"])
    out["activity"] = {label: {"all": act_all[label], "slow": act_slow.get(label, {"share": 0.0, "ms": 0.0})}
                       for label in act_all}
    in_worker = {"all": [j["worker"] for j in items], "slow": [j["worker"] for j in slow]}
    out["other_batches"] = {k: batch_activity(trace, v, [j["batch"] for j in (items if k == "all" else slow)])
                            for k, v in in_worker.items()}
    if cpu is not None:
        out["cpu"] = {k: cpu.mean_over(v) for k, v in windows.items()}
    totals_by_label: dict[str, list] = defaultdict(list)
    for span in trace.spans:
        totals_by_label[span_label(span)].append((span[2] - span[1], span[5] if len(span) > 5 else None))
    out["spans_whole_run"] = {
        label: {"n": len(d), "total_ms": 1000.0 * sum(w for w, _ in d), "max_ms": 1000.0 * max(w for w, _ in d),
                "cpu_ms": 1000.0 * sum(c for _, c in d) if all(c is not None for _, c in d) else None}
        for label, d in totals_by_label.items()}
    return out


def format_report(a: dict, top: int = 12) -> str:
    """The analysis as text tables."""
    lines = [f"{a['events']} events joined with the trace; {a['slow_events']} above p95 ({a['cut_ms']:.1f} ms)",
             f"event -> recommendation: all p50 {a['total']['all']['p50']:.1f} / p99 {a['total']['all']['p99']:.1f} ms;"
             f" slow mean {a['total']['slow'].get('mean', float('nan')):.1f} ms", "",
             f"{'leg':<16}{'all p50':>9}{'all mean':>9}{'all p99':>9}{'slow p50':>10}{'slow mean':>10}  what"]
    described = {**dict(LEGS), "in": "(the bench's legs) sent -> taken by the stream",
                 "worker": "(the bench's legs) taken -> record built (fill + queries + process)",
                 "out": "(the bench's legs) built -> arrived", "ack": "sent -> the broker's ack reached the bench's producer"}
    for name, s in a["legs"].items():
        if not s["all"]:
            continue
        lines.append(f"{name:<16}{s['all']['p50']:>9.2f}{s['all']['mean']:>9.2f}{s['all']['p99']:>9.2f}"
                     f"{s['slow'].get('p50', float('nan')):>10.2f}{s['slow'].get('mean', float('nan')):>10.2f}  "
                     f"{described.get(name, '')}")
    lines += ["", "leg that took most of each slow event's time: " +
              ", ".join(f"{k} {v}" for k, v in a["dominant"].items()),
              "batches closed by (all events / slow events): " + json.dumps(a["closed_by"]["all"]) + " / " +
              json.dumps(a["closed_by"]["slow"]),
              f"mean batch size of the events: all {a['batch_size']['all']:.1f}, slow {a['batch_size']['slow'] or 0:.1f}",
              "their batch's handling (closed -> handed over), mean: " + "; ".join(
                  f"{k} {h['wall_ms']:.1f} ms wall, {h['cpu_ms']:.1f} ms CPU of the loop thread"
                  for k, h in a["handling"].items()),
              "", "while an event waited in the worker (arrived on its loop -> its records handed over), mean ms:"]
    for k in a["other_batches"]["all"]:
        lines.append(f"  {k:<48} all {a['other_batches']['all'][k]:6.2f}   slow {a['other_batches']['slow'][k]:6.2f}")
    lines += ["", "what else ran during an event's life (sent -> arrived): share of events it overlapped, mean ms",
              f"  {'activity':<70}{'all %':>7}{'all ms':>8}{'slow %':>8}{'slow ms':>8}"]
    ranked = sorted(a["activity"].items(), key=lambda kv: -(kv[1]["slow"]["ms"] - kv[1]["all"]["ms"]))
    for label, s in ranked[:top]:
        lines.append(f"  {label[:70]:<70}{100 * s['all']['share']:>7.0f}{s['all']['ms']:>8.2f}"
                     f"{100 * s['slow']['share']:>8.0f}{s['slow']['ms']:>8.2f}")
    if "cpu" in a:
        lines += ["", "CPU busy during an event's life (cores, of %d): " % a["cpu"]["all"].get("cores", 0)]
        for k in ("all", "slow"):
            lines.append(f"  {k:<5} " + ", ".join(f"{n} {v:.2f}" for n, v in a["cpu"][k].items() if n != "cores"))
    lines += ["", f"spans over the whole run (top {top} by total time): n, total ms, max ms, CPU ms of its thread"]
    for label, s in sorted(a["spans_whole_run"].items(), key=lambda kv: -kv[1]["total_ms"])[:top]:
        cpu = f"{s['cpu_ms']:>9.1f}" if s.get("cpu_ms") is not None else f"{'':>9}"
        lines.append(f"  {label[:80]:<80}{s['n']:>6}{s['total_ms']:>9.1f}{s['max_ms']:>8.1f}{cpu}")
    return "\n".join(lines)


class GcSpans:
    """Collections of the cyclic GC in *this* process (the bench: its load generator and recommendation
    consumer share one event loop, so a long collection delays sends and arrivals alike), as spans like the
    worker's (thread ``bench``). Context manager."""

    def __init__(self):
        self.spans: list[tuple] = []
        self._started: dict[int, float] = {}

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started[info["generation"]] = time.time()
        elif info["generation"] in self._started:
            self.spans.append(("gc", self._started.pop(info["generation"]), time.time(), "bench",
                               f"gen{info['generation']} collected {info.get('collected', 0)}", None))

    def __enter__(self) -> "GcSpans":
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._on_gc)


# --- the box's CPU ------------------------------------------------------------------------------------
def _task_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` (``/proc/PID/task/*/schedstat``)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _box_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def sample_cpu(pids: dict[str, int], out: str, interval_s: float) -> None:
    """Entry point of the sampler child: one JSON line per sample, {"t", "box", name: seconds...}."""
    with open(out, "w") as f:
        while True:
            row = {"t": time.time(), "box": _box_busy_s(), **{n: _task_ns(p) / 1e9 for n, p in pids.items()}}
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(interval_s)


class CpuSampler:
    """A child process sampling the box's busy CPU time and that of named processes every ``interval_s``."""

    def __init__(self, pids: dict[str, int], out: str | Path, interval_s: float = 0.05):
        self.pids, self.out, self.interval_s = pids, str(out), interval_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CpuSampler":
        code = ("import json, sys; from stream_rec_devtools.microscope import sample_cpu; "
                "sample_cpu(json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(self.pids), self.out,
                                      str(self.interval_s)], stdin=subprocess.DEVNULL)
        return self

    def stop(self) -> "CpuSamples":
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        rows = [json.loads(line) for line in Path(self.out).read_text().splitlines() if line.strip()]
        return CpuSamples(rows, list(self.pids))


@dataclass
class CpuSamples:
    rows: list[dict]
    names: list[str]
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def mean_over(self, windows: Sequence[tuple[float, float]]) -> dict[str, float]:
        """Mean busy cores over ``windows`` (each widened to the samples around it): the box, each named
        process, and ``other`` (everything else on the box)."""
        t = np.array([r["t"] for r in self.rows])
        if len(t) < 2 or not windows:
            return {"cores": self.cores}
        cols = {n: np.array([r[n] for r in self.rows]) for n in ["box", *self.names]}
        sums = defaultdict(float)
        span = 0.0
        for w0, w1 in windows:
            i = max(0, int(np.searchsorted(t, w0)) - 1)
            j = min(len(t) - 1, int(np.searchsorted(t, w1)))
            if j <= i:
                continue
            dt = t[j] - t[i]
            span += dt
            for n, c in cols.items():
                sums[n] += c[j] - c[i]
        if span <= 0:
            return {"cores": self.cores}
        out = {n: sums[n] / span for n in cols}
        out["other"] = out["box"] - sum(out[n] for n in self.names)
        out["cores"] = self.cores
        return out
