"""Prequential ("test, then train") scoring of the recommendations the stream emits.

In a replay every user's sequence is known in advance, so each recommendation list the worker emits
after a user's event ``i`` can be scored against that user's event ``i+1``: HR@10 (was it in the
list) and NDCG@10 (1/log2(rank+2) when it was). This is the online counterpart of the offline
leave-one-out evaluation, measured on what the live service actually produced.

Which event a recommendation follows: the worker applies several events of one user in one
micro-batch and emits one record after the last of them. The record's ``history`` (the user's last
items, newest last) and ``event_timestamp`` locate that event in the user's streamed sequence: the
first position after the previously matched one where the sequence ends with that history at that
timestamp (records of one user arrive in order: one key, one partition). Events followed by no record
of their own (not the last of their user in their batch) are not scored; ``coverage`` says which
share was.

Two numbers come out:

* ``all``: every scored next event. The model was trained on most of these targets (leave-one-out
  keeps only each user's last two events out of training), so this is optimistic;
* ``test``: only recommendations made just before each user's *last* event -- exactly the offline
  test target -- so it is directly comparable with ``stream-rec evaluate`` on the same users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def rank_metrics(recommended: Sequence[str], target: str, k: int = 10) -> tuple[float, float]:
    """(HR@k, NDCG@k) of one list against one next item."""
    top = list(recommended)[:k]
    if target in top:
        return 1.0, 1.0 / math.log2(top.index(target) + 2)
    return 0.0, 0.0


@dataclass
class Scored:
    user_id: str
    event_index: int  # index (in the user's sequence) of the event the list followed
    hit: float
    ndcg: float
    is_test: bool  # the target is the user's last event (the offline leave-one-out target)
    latency_s: float | None  # send of the event -> receipt of its recommendation (replay clock)
    received_at: float


@dataclass
class PrequentialScorer:
    """Match emitted recommendation records to each user's next event and score them.

    ``sequences[user]`` is the user's streamed ``[(item_id, timestamp), ...]`` in stream order;
    ``test_index[user]`` is the position of the user's offline test target (their last event) when the
    whole sequence was streamed."""

    sequences: dict[str, list[tuple[str, float]]]
    test_index: dict[str, int] = field(default_factory=dict)
    k: int = 10
    scored: list[Scored] = field(default_factory=list)
    unmatched: int = 0  # records for unknown users, or whose history is not in the user's sequence
    last_event: int = 0  # records after a user's last streamed event (nothing to score)
    keep_lists: bool = False  # keep every matched list in ``lists`` (the temporal benchmark scores them itself)
    lists: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # (user, event index) -> item ids
    _position: dict[str, int] = field(default_factory=dict)  # user -> index of the last matched event

    def locate(self, record: dict) -> int | None:
        """Index in the user's sequence of the event ``record`` was emitted after, or None."""
        seq = self.sequences.get(record.get("user_id"))
        history = record.get("history")
        if not seq or not isinstance(history, list) or not history:
            return None
        ts = record.get("event_timestamp")
        start = max(self._position.get(record["user_id"], -1) + 1, len(history) - 1)
        h = len(history)
        for i in range(start, len(seq)):
            if seq[i][0] != history[-1] or (ts is not None and abs(seq[i][1] - float(ts)) > 1e-3):
                continue
            if [item for item, _ in seq[max(0, i - h + 1):i + 1]] == history[-(i + 1):]:
                return i
        return None

    def add(self, record: dict, received_at: float, sent_at: dict | None = None) -> Scored | None:
        """Score one ``recommendations`` record. ``sent_at[(user, index)]`` = when the event was produced."""
        user = record.get("user_id")
        index = self.locate(record)
        if index is None:
            self.unmatched += 1
            return None
        self._position[user] = index
        seq = self.sequences[user]
        items = [it["item_id"] if isinstance(it, dict) else it for it in record.get("items", [])]
        if self.keep_lists:
            self.lists[(user, index)] = items
        if index + 1 >= len(seq):
            self.last_event += 1
            return None
        hit, ndcg = rank_metrics(items, seq[index + 1][0], self.k)
        sent = None if sent_at is None else sent_at.get((user, index))
        s = Scored(user, index, hit, ndcg, self.test_index.get(user) == index + 1,
                   None if sent is None else received_at - sent, received_at)
        self.scored.append(s)
        return s

    def position(self, user: str) -> int:
        """Index of the last event of ``user`` a record was matched to (-1 = none yet)."""
        return self._position.get(user, -1)

    def done(self, user: str) -> bool:
        """True once the record after the user's last streamed event was matched."""
        return self._position.get(user, -1) == len(self.sequences.get(user, ())) - 1

    @property
    def scorable_events(self) -> int:
        """Events that have a next event (the most lists there could be to score)."""
        return sum(max(0, len(s) - 1) for s in self.sequences.values())

    def summary(self) -> dict:
        def agg(rows: list[Scored]) -> dict:
            if not rows:
                return {"n": 0, f"HR@{self.k}": None, f"NDCG@{self.k}": None}
            return {"n": len(rows), f"HR@{self.k}": float(np.mean([r.hit for r in rows])),
                    f"NDCG@{self.k}": float(np.mean([r.ndcg for r in rows]))}

        lat = [r.latency_s for r in self.scored if r.latency_s is not None]
        out = {
            "all": agg(self.scored),
            "test": agg([r for r in self.scored if r.is_test]),
            "coverage": len(self.scored) / self.scorable_events if self.scorable_events else 0.0,
            "test_users": len(self.test_index),
            "unmatched_records": self.unmatched,
        }
        if lat:
            p = np.percentile(np.asarray(lat) * 1000.0, [50, 95, 99])
            out["latency_ms"] = {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2]), "n": len(lat)}
        return out

    def windows(self, n_windows: int = 50) -> dict[str, list[float]]:
        """Quality and latency over time (by arrival order of the scored lists), for the plot."""
        rows = sorted(self.scored, key=lambda r: r.received_at)
        if not rows:
            return {"t": [], "ndcg": [], "hr": [], "p50_ms": [], "p95_ms": [], "count": []}
        t0 = rows[0].received_at
        edges = np.array_split(np.arange(len(rows)), min(n_windows, len(rows)))
        out: dict[str, list[float]] = {"t": [], "ndcg": [], "hr": [], "p50_ms": [], "p95_ms": [], "count": []}
        for idx in edges:
            chunk = [rows[i] for i in idx]
            lat = [r.latency_s * 1000.0 for r in chunk if r.latency_s is not None]
            out["t"].append(chunk[-1].received_at - t0)
            out["ndcg"].append(float(np.mean([r.ndcg for r in chunk])))
            out["hr"].append(float(np.mean([r.hit for r in chunk])))
            out["p50_ms"].append(float(np.percentile(lat, 50)) if lat else float("nan"))
            out["p95_ms"].append(float(np.percentile(lat, 95)) if lat else float("nan"))
            out["count"].append(len(chunk))
        return out


def plot_windows(windows: dict[str, list[float]], path, title: str = "", offline_ndcg: float | None = None) -> None:
    """Two panels: NDCG@10/HR@10 per window, and p50/p95 event->rec latency per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    ax1.plot(windows["t"], windows["ndcg"], label="prequential NDCG@10")
    ax1.plot(windows["t"], windows["hr"], label="prequential HR@10", alpha=0.7)
    if offline_ndcg is not None:
        ax1.axhline(offline_ndcg, color="k", ls="--", lw=1, label=f"offline NDCG@10 = {offline_ndcg:.3f}")
    ax1.set_ylabel("quality (window mean)")
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(windows["t"], windows["p50_ms"], label="p50")
    ax2.plot(windows["t"], windows["p95_ms"], label="p95")
    ax2.set_ylabel("event -> rec latency (ms)")
    ax2.set_xlabel("replay time (s)")
    ax2.legend(loc="best", fontsize=8)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
