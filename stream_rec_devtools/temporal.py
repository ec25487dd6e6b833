"""Temporal replay: a global split at time T, systems replayed over every later event, prequential scoring.

The protocol (Meng et al., RecSys 2020, "Exploring Data Splitting Strategies for the Evaluation of
Recommendation Models"; Sun, SIGIR 2023, "Take a Fresh Look at Recommender Systems from an Evaluation
Standpoint": a global temporal split, no information from after the cut):

* **Split.** Models are trained on the events before T (:func:`split_time`: by default 80 % of the log's
  time span); every event at or after T is replayed, in time order.
* **Held lists.** Before each replayed event, each system holds a list for that user: the list it
  computed last (after the user's previous event for a live system, at the last cadence boundary for a
  batch system). The event is a *hit* when its item is in the first ``k`` items of that list once the
  items the user had already seen at that moment are filtered out (as a client would filter), and its
  NDCG@k is ``1/log2(rank+2)``. An event whose item the user had seen before (a repeat) is not scored,
  nor is a user's first event ever (no system has seen the user: any list is a fallback); both counts
  are reported.
* **Cadences.** A batch system's list is computed at its boundaries -- T, then every ``period`` of UTC
  time (each hour, each midnight) -- from the events before the boundary; users with no history at that
  boundary get the popularity of the 24 hours before it. :class:`CadenceLists` computes those lists
  lazily (a user's list for a boundary is computed at the user's first event after it, from the state
  the user had at the boundary: the user had no event in between), which gives the lists a full batch
  job would have given to the users who come back, and only those.
* **Rounds.** The replay walks hourly windows; inside a window each user's events keep their order and
  the users' k-th events of the window form round k, processed as one batch by every system
  (:func:`windows`). Users are independent in a frozen model, so this is exact for per-user state; what
  is global (the catalogue, a model swap) changes at window starts or between rounds.

Everything here is pure (no model, no Kafka): the systems are in ``temporal_systems``, the benchmark in
benchmarks/temporal.py.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

HOUR, DAY = 3600.0, 86400.0
# list age bins of the staleness curve (seconds): < 1 min, < 10 min, < 1 h, < 6 h, < 1 day, < 7 days, more
AGE_EDGES_S = (60.0, 600.0, HOUR, 6 * HOUR, DAY, 7 * DAY)
AGE_LABELS = ("<1 min", "1-10 min", "10-60 min", "1-6 h", "6-24 h", "1-7 days", ">7 days")


@dataclass(frozen=True)
class Held:
    """A list a system holds for a user: item ids, best first, and when it was computed."""

    items: Sequence[str]
    computed_at: float


@dataclass
class Log:
    """A time-ordered event log (stable: events with equal timestamps keep their input order)."""

    users: list[str]
    items: list[str]
    ts: np.ndarray  # float64 [n], non-decreasing

    @classmethod
    def of(cls, triples: Sequence[tuple[str, str, float]]) -> "Log":
        order = sorted(range(len(triples)), key=lambda i: triples[i][2])  # stable
        return cls([triples[i][0] for i in order], [triples[i][1] for i in order],
                   np.array([float(triples[i][2]) for i in order], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.users)

    def index_at(self, t: float) -> int:
        """Number of events strictly before ``t``."""
        return int(np.searchsorted(self.ts, t, side="left"))

    def shifted(self, seconds: float) -> "Log":
        return Log(self.users, self.items, self.ts + seconds)

    def sequences(self, stop: int | None = None) -> dict[str, list[tuple[str, float]]]:
        """Each user's ``[(item, ts), ...]`` of the events before index ``stop`` (all by default)."""
        out: dict[str, list[tuple[str, float]]] = {}
        for u, i, t in zip(self.users[:stop], self.items[:stop], self.ts[:stop].tolist()):
            out.setdefault(u, []).append((i, t))
        return out


def split_time(ts: np.ndarray, fraction: float = 0.8) -> float:
    """T: the point ``fraction`` of the way through the log's time span."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the split fraction must be in (0, 1), got {fraction}")
    return float(ts.min() + fraction * (ts.max() - ts.min()))


def cadence_boundary(t: float, start: float, period_s: float) -> float:
    """The last boundary at or before ``t`` of a cadence whose boundaries are ``start`` (T) and every
    multiple of ``period_s`` of epoch time after it (UTC hours, UTC midnights); ``t`` itself for a
    period of 0 (a live list)."""
    if period_s <= 0:
        return t
    return max(start, math.floor(t / period_s) * period_s)


def windows(log: Log, start: int, t_start: float, period_s: float = HOUR) -> Iterator[tuple[float, list[list[int]]]]:
    """(window start, rounds) over the events from index ``start``: windows of ``period_s`` aligned on
    epoch multiples (the first one starts at ``t_start``); round k of a window holds the k-th event of
    each user who has one in the window, in time order (so no user appears twice in a round)."""
    n = len(log)
    i, first = start, True
    while i < n:
        w0 = t_start if first else cadence_boundary(float(log.ts[i]), t_start, period_s)
        first = False
        w1 = (math.floor(w0 / period_s) + 1) * period_s
        j = int(np.searchsorted(log.ts, w1, side="left"))
        rounds: list[list[int]] = []
        count: Counter = Counter()
        for e in range(i, j):
            r = count[log.users[e]]
            count[log.users[e]] += 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(e)
        yield w0, rounds
        i = j


@dataclass
class Scoreboard:
    """Prequential scores of several systems on the same replayed events.

    ``add_event`` registers a scored event (its time, whether its item was born after T, whether its user
    had no history at T); ``score`` records one system's held list for it. Summaries are per system."""

    systems: Sequence[str]
    k: int = 10
    t: list[float] = field(default_factory=list)
    new_item: list[bool] = field(default_factory=list)
    new_user: list[bool] = field(default_factory=list)
    hit: dict[str, list[float]] = field(default_factory=dict)
    ndcg: dict[str, list[float]] = field(default_factory=dict)
    age: dict[str, list[float]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # first_event, repeat

    def __post_init__(self):
        for s in self.systems:
            self.hit.setdefault(s, [])
            self.ndcg.setdefault(s, [])
            self.age.setdefault(s, [])

    def add_event(self, t: float, new_item: bool, new_user: bool) -> int:
        self.t.append(float(t))
        self.new_item.append(bool(new_item))
        self.new_user.append(bool(new_user))
        return len(self.t) - 1

    def score(self, system: str, row: int, held: Held | None, target: str, seen: set) -> None:
        """One system's held list for event ``row``: seen items filtered out, the first ``k`` kept."""
        hit, gain, age = 0.0, 0.0, math.nan
        if held is not None:
            top = [i for i in held.items if i not in seen][:self.k]
            if target in top:
                hit, gain = 1.0, 1.0 / math.log2(top.index(target) + 2)
            age = self.t[row] - held.computed_at
        assert len(self.hit[system]) == row, f"{system}: scores out of order"
        self.hit[system].append(hit)
        self.ndcg[system].append(gain)
        self.age[system].append(age)

    # --- summaries --------------------------------------------------------------------------------
    def _mean(self, values: list[float], mask: np.ndarray | None = None) -> float | None:
        v = np.asarray(values, dtype=np.float64)
        if mask is not None:
            v = v[mask]
        return float(v.mean()) if len(v) else None

    def metrics(self, system: str, mask: np.ndarray | None = None) -> dict:
        n = int(len(self.t) if mask is None else mask.sum())
        return {"n": n, f"hr{self.k}": self._mean(self.hit[system], mask),
                f"ndcg{self.k}": self._mean(self.ndcg[system], mask)}

    def masks(self, t_start: float, t_end: float) -> dict[str, np.ndarray]:
        t = np.asarray(self.t)
        return {"new_item": np.asarray(self.new_item, dtype=bool), "new_user": np.asarray(self.new_user, dtype=bool),
                "last_third": t >= t_start + (2.0 / 3.0) * (t_end - t_start)}

    def staleness(self, system: str) -> list[dict]:
        """Hit rate of the held lists by their age (hours since they were computed)."""
        age = np.asarray(self.age[system], dtype=np.float64)
        hit = np.asarray(self.hit[system], dtype=np.float64)
        known = np.isfinite(age)
        bins = np.digitize(age[known], AGE_EDGES_S)
        out = []
        for b, label in enumerate(AGE_LABELS):
            sel = bins == b
            out.append({"age": label, "n": int(sel.sum()),
                        f"hr{self.k}": float(hit[known][sel].mean()) if sel.any() else None,
                        "median_age_h": float(np.median(age[known][sel]) / HOUR) if sel.any() else None})
        return out

    def periodic(self, system: str, t_start: float, bin_s: float = DAY) -> list[tuple[float, int, float]]:
        """(bin start in days since T, events, hit rate) per ``bin_s`` bin of the replay."""
        t = np.asarray(self.t)
        hit = np.asarray(self.hit[system])
        b = np.floor((t - t_start) / bin_s).astype(int)
        return [(float(k * bin_s / DAY), int((b == k).sum()), float(hit[b == k].mean())) for k in np.unique(b)]

    def summary(self, t_start: float, t_end: float, reference: str = "live") -> dict:
        masks = self.masks(t_start, t_end)
        out = {}
        key = f"ndcg{self.k}"
        ref = self.metrics(reference)[key] if reference in self.hit else None
        for s in self.systems:
            row = self.metrics(s)
            row["ratio_to_live"] = round(row[key] / ref, 4) if ref and row[key] is not None else None
            hr, ref_hr = row[f"hr{self.k}"], self.metrics(reference)[f"hr{self.k}"] if ref else None
            row["hr_ratio_to_live"] = round(hr / ref_hr, 4) if ref_hr and hr is not None else None
            row["new_item_events"] = self.metrics(s, masks["new_item"])
            row["new_item_hits"] = int(np.asarray(self.hit[s])[masks["new_item"]].sum())
            row["users_new_at_T"] = self.metrics(s, masks["new_user"])
            row["users_with_history_at_T"] = self.metrics(s, ~masks["new_user"])
            row["last_third"] = self.metrics(s, masks["last_third"])
            row["staleness"] = self.staleness(s)
            out[s] = row
        return out


class WindowPopularity:
    """The most consumed items of a sliding time window (``window_s`` before ``t``), from a log."""

    def __init__(self, log: Log, window_s: float = DAY, length: int = 200):
        self.log, self.window_s, self.length = log, window_s, length
        self.codes: dict[str, int] = {}
        self.item_codes = np.array([self.codes.setdefault(i, len(self.codes)) for i in log.items], dtype=np.int64)
        self.names = list(self.codes)
        self._cache: tuple[tuple[int, int], list[str]] | None = None

    def top(self, t: float) -> list[str]:
        """Items of the ``window_s`` before ``t`` (events strictly before ``t``), most events first
        (ties: the item consumed first in the log first)."""
        lo, hi = self.log.index_at(t - self.window_s), self.log.index_at(t)
        if self._cache is not None and self._cache[0] == (lo, hi):
            return self._cache[1]
        counts = np.bincount(self.item_codes[lo:hi], minlength=len(self.names))
        n = min(self.length, int((counts > 0).sum()))
        best = np.argsort(-counts, kind="stable")[:n]
        items = [self.names[c] for c in best]
        self._cache = ((lo, hi), items)
        return items


class CadenceLists:
    """Lists refreshed at the boundaries of a cadence (see the module docstring), computed lazily.

    ``held(users, ts, has_history, compute)``: the list each user holds at ``ts``; for a user whose cached
    list is from an older boundary, ``compute(users, boundaries)`` gives the new lists of those with a
    history (batched), the others get the popularity of the 24 h before the boundary. Call it before the
    users' events are applied: the state ``compute`` reads must be the state at the boundary."""

    def __init__(self, start: float, period_s: float, popularity: WindowPopularity):
        self.start, self.period_s, self.popularity = start, period_s, popularity
        self.cache: dict[str, Held] = {}
        self.computed = 0  # lists computed (the lazy job's size)

    def held(self, users: Sequence[str], ts: Sequence[float], has_history: Callable[[str], bool],
             compute: Callable[[list[str], list[float]], list[Sequence[str]]]) -> list[Held]:
        bounds = [cadence_boundary(t, self.start, self.period_s) for t in ts]
        stale = [n for n, (u, b) in enumerate(zip(users, bounds))
                 if u not in self.cache or self.cache[u].computed_at != b]
        known = [n for n in stale if has_history(users[n])]
        if known:
            lists = compute([users[n] for n in known], [bounds[n] for n in known])
            for n, items in zip(known, lists):
                self.cache[users[n]] = Held(list(items), bounds[n])
        for n in stale:
            if n not in known:
                self.cache[users[n]] = Held(self.popularity.top(bounds[n]), bounds[n])
        self.computed += len(stale)
        return [self.cache[u] for u in users]


@dataclass
class ReplayStats:
    events: int = 0
    scored: int = 0
    cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wall_s: float = 0.0


def replay(log: Log, start: int, t_start: float, systems: dict, board: Scoreboard, born_before: set,
           users_at_t: set, progress: bool = True, max_events: int = 0) -> ReplayStats:
    """Replay the events from index ``start`` through ``systems`` (name -> object with ``window(t)``,
    ``held(users, ts) -> [Held | None]`` and ``update(users, items, ts, offsets)``), scoring every held
    list on ``board``. ``born_before``: the items with an event before T; ``users_at_t``: the users with
    one. CPU seconds (process time) per system are in the result. ``max_events``: stop after that many
    (development runs)."""
    from tqdm import tqdm

    stats = ReplayStats()
    seen: dict[str, set] = defaultdict(set)
    for u, i in zip(log.users[:start], log.items[:start]):
        seen[u].add(i)
    total = (len(log) - start) if not max_events else min(max_events, len(log) - start)
    bar = tqdm(total=total, desc="replay", unit="ev", disable=not progress, mininterval=1.0)
    wall0 = time.perf_counter()
    for w0, rounds in windows(log, start, t_start):
        for name, system in systems.items():
            c0 = time.process_time()
            system.window(w0)
            stats.cpu_s[name] += time.process_time() - c0
        for rnd in rounds:
            if max_events and stats.events >= max_events:
                break
            _replay_round(log, rnd, systems, board, seen, born_before, users_at_t, stats)
            bar.update(len(rnd))
        if max_events and stats.events >= max_events:
            break
    bar.close()
    stats.wall_s = time.perf_counter() - wall0
    return stats


def _replay_round(log: Log, rnd: list[int], systems: dict, board: Scoreboard, seen: dict, born_before: set,
                  users_at_t: set, stats: ReplayStats) -> None:
    users = [log.users[e] for e in rnd]
    items = [log.items[e] for e in rnd]
    ts = [float(log.ts[e]) for e in rnd]
    rows = []
    for u, i, t in zip(users, items, ts):
        if not seen[u]:
            board.skipped["first_event"] += 1
            rows.append(None)
        elif i in seen[u]:
            board.skipped["repeat"] += 1
            rows.append(None)
        else:
            rows.append(board.add_event(t, i not in born_before, u not in users_at_t))
    for name, system in systems.items():
        c0 = time.process_time()
        held = system.held(users, ts)
        stats.cpu_s[name] += time.process_time() - c0
        for n, row in enumerate(rows):
            if row is not None:
                board.score(name, row, held[n], items[n], seen[users[n]])
    for name, system in systems.items():
        c0 = time.process_time()
        system.update(users, items, ts, rnd)
        stats.cpu_s[name] += time.process_time() - c0
    for u, i in zip(users, items):
        seen[u].add(i)
    stats.events += len(rnd)
    stats.scored += sum(r is not None for r in rows)
