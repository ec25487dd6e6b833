"""The worker's recent figures for /ui/system, read from its own Prometheus metrics (stream_rec/metrics.py):
once a second, events/s, recommendations/s, event -> recommendation p50/p99, the consumer lag, the mean
micro-batch size, readiness and the model served; the last ``keep_s`` seconds are kept (bounded deques).

Rates and quantiles are computed as the dashboard's PromQL computes them (an increase over the trailing
``window_s``; ``metrics.histogram_quantile``), so the charts tell what Grafana would. A tick reads only the
metrics it shows (``collect()`` of each), not the whole registry.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .. import metrics

SERIES = ("events_per_s", "recs_per_s", "p50_ms", "p99_ms", "lag", "batch_mean", "ready")


@dataclass(frozen=True)
class Reading:
    """The raw counters of one tick."""

    t: float
    events: float
    recs: float
    latency: list[tuple[float, float]]  # cumulative (le, count) of event -> recommendation seconds
    batch_sum: float
    batch_count: float
    lag: float


def _samples(metric, suffix: str, **match: str):
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in match.items()):
                yield s


def read_metrics(now: float) -> Reading:
    latency: dict[float, float] = {}
    for s in _samples(metrics.EVENT_TO_REC_LATENCY, "_bucket"):
        le = float(s.labels["le"])
        latency[le] = latency.get(le, 0.0) + s.value
    batch = metrics.BATCH_SIZE
    return Reading(t=now, events=sum(s.value for s in _samples(metrics.EVENTS_CONSUMED, "_total")),
                   recs=sum(s.value for s in _samples(metrics.RECOMMENDATIONS_EMITTED, "_total")),
                   latency=sorted(latency.items()),
                   batch_sum=sum(s.value for s in _samples(batch, "_sum", stage="events")),
                   batch_count=sum(s.value for s in _samples(batch, "_count", stage="events")),
                   lag=sum(s.value for s in _samples(metrics.CONSUMER_LAG, "")))


def model_served() -> str:
    """The version of ``stream_rec_model_info`` (empty before a model is served)."""
    for s in _samples(metrics.MODEL_INFO, ""):
        if s.value:
            return f"{s.labels.get('version', '')}" + ("" if s.labels.get("trained") == "true" else " (untrained)")
    return ""


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def figures(new: Reading, old: Reading) -> dict[str, float | None]:
    """The charts' values at ``new``, over the interval since ``old`` (None: nothing to tell)."""
    dt = new.t - old.t
    if dt <= 0:
        return {}
    increase = [(le, max(0.0, c - dict(old.latency).get(le, 0.0))) for le, c in new.latency]
    batches = new.batch_count - old.batch_count
    return {"events_per_s": _finite(max(0.0, new.events - old.events) / dt),
            "recs_per_s": _finite(max(0.0, new.recs - old.recs) / dt),
            "p50_ms": _finite(metrics.histogram_quantile(0.5, increase) * 1000),
            "p99_ms": _finite(metrics.histogram_quantile(0.99, increase) * 1000),
            "lag": new.lag,
            "batch_mean": _finite((new.batch_sum - old.batch_sum) / batches) if batches > 0 else None}


class MetricsSampler:
    """``tick()`` once a second (a task of the HTTP service); ``series()`` for the page. ``ready()`` says
    whether the worker is ready now (``/readyz``'s answer)."""

    def __init__(self, ready: Callable[[], bool], keep_s: float = 600.0, window_s: float = 10.0,
                 interval_s: float = 1.0, read: Callable[[float], Reading] = read_metrics):
        self.ready = ready
        self.window_s = window_s
        self.interval_s = interval_s
        self.read = read
        n = max(2, int(keep_s / interval_s))
        self.t: deque[float] = deque(maxlen=n)
        self.values: dict[str, deque] = {name: deque(maxlen=n) for name in SERIES}
        self._window: deque[Reading] = deque()
        self.models: deque[tuple[float, str]] = deque(maxlen=20)  # (since, version) each time it changes

    def tick(self, now: float | None = None) -> None:
        reading = self.read(time.time() if now is None else now)
        self._window.append(reading)
        while len(self._window) > 2 and self._window[1].t <= reading.t - self.window_s:
            self._window.popleft()
        if len(self._window) < 2:
            return
        point = {**figures(reading, self._window[0]), "ready": 1 if self.ready() else 0}
        self.t.append(reading.t)
        for name in SERIES:
            self.values[name].append(point.get(name))
        version = model_served()
        if not self.models or self.models[-1][1] != version:
            self.models.append((reading.t, version))

    def series(self) -> dict:
        return {"t": list(self.t), "window_s": self.window_s, "interval_s": self.interval_s,
                **{name: list(values) for name, values in self.values.items()},
                "models": [list(m) for m in self.models]}
