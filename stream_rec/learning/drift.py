"""Online quality monitor: the worker grades its own recommendations against what users do next.

For each user we keep the last top-k list we sent. When the user's next event arrives, the event's item
is a *hit* if it was in that list. Hits feed

* Prometheus: ``stream_rec_online_scored_total`` / ``stream_rec_online_hits_total`` (their ratio over a
  time window is online HR@k; see stream_rec/metrics.py), and
* ``river.drift.ADWIN`` (Bifet & Gavalda 2007, river's maintained implementation) over the 0/1 hit
  stream. ADWIN reports any change of the mean; we call it an *alarm* only when the recent window's hit
  rate is lower than before (a drop), count it in ``stream_rec_drift_detected_total`` and append it to
  ``alarms``. The monitor only records: what to do about an alarm (a fine-tune) is decided beside the
  stream, by a worker task that reads ``alarms`` (``learning.finetune.follow_alarms``), never inside
  the micro-batch that graded the event.

Lists are kept in memory, least recently used users evicted beyond ``max_users``: a worker restart
loses one pending grade per user, which does not bias the estimate. Grading is per event in arrival
order; ``observe_batch`` / ``record_batch`` take a micro-batch's parallel lists.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

from river.drift import ADWIN

from .. import metrics


@dataclass(frozen=True)
class DriftAlarm:
    """One drop of the online hit rate."""

    hit_rate_before: float  # ADWIN's estimate just before the change was detected
    hit_rate_after: float  # estimate over the window ADWIN kept (the recent data)
    n_scored: int  # events graded so far by this monitor


class OnlineQualityMonitor:
    def __init__(self, k: int = 10, delta: float = 0.002, max_users: int = 1_000_000, export_metrics: bool = True,
                 grace_period: int = 100):
        self.k = k
        self.max_users = max_users
        self.export_metrics = export_metrics
        self.detector = ADWIN(delta=delta, grace_period=grace_period)
        self.last_lists: OrderedDict[Hashable, frozenset] = OrderedDict()
        self.n_scored = 0
        self.n_hits = 0
        self.alarms: list[DriftAlarm] = []

    @property
    def hit_rate(self) -> float:
        """Online HR@k since start."""
        return self.n_hits / self.n_scored if self.n_scored else 0.0

    @property
    def recent_hit_rate(self) -> float:
        """ADWIN's estimate: the hit rate over its current (adaptive, recent) window."""
        return float(self.detector.estimation)

    def record(self, user: Hashable, items: Iterable) -> None:
        """The top-k list just sent to ``user`` (item ids or rows; only the first k count)."""
        self.last_lists[user] = frozenset(list(items)[: self.k])
        self.last_lists.move_to_end(user)
        if len(self.last_lists) > self.max_users:
            self.last_lists.popitem(last=False)

    def observe(self, user: Hashable, item) -> bool | None:
        """Grade ``user``'s new event against their previous list: True/False, None when there is none."""
        previous = self.last_lists.get(user)
        if previous is None:
            return None
        hit = item in previous
        self.n_scored += 1
        self.n_hits += hit
        if self.export_metrics:
            metrics.ONLINE_SCORED.inc()
            if hit:
                metrics.ONLINE_HIT.inc()
        before = self.detector.estimation
        self.detector.update(1.0 if hit else 0.0)
        if self.detector.drift_detected and self.detector.estimation < before:
            alarm = DriftAlarm(float(before), float(self.detector.estimation), self.n_scored)
            self.alarms.append(alarm)
            if self.export_metrics:
                metrics.DRIFT_DETECTED.inc()
        return hit

    def observe_batch(self, users: Sequence[Hashable], items: Sequence) -> list[bool | None]:
        """``observe`` for a micro-batch, in arrival order (call before ``record_batch``)."""
        return [self.observe(u, i) for u, i in zip(users, items)]

    def record_batch(self, users: Sequence[Hashable], lists: Sequence[Iterable]) -> None:
        for u, items in zip(users, lists):
            self.record(u, items)
