"""Synthetic worlds with time: users who come back over many days, tastes that drift, items that keep arriving.

The worlds of ``stream_rec_devtools.synthetic`` (``WorldSpec``) give each user one run of 8-40 events about an hour
apart, which is how MovieLens users rate too: a list computed last night has little to say about such a
user. Here the same catalogue and the same next-item model (``synthetic._Transitions``: next episode,
resume the series left unfinished, stay in the topic, else a favourite topic) are laid out in time:

* users arrive at a uniform time over the log's ``days`` and come back in **sessions**: a session holds
  ``session_events`` events, ``event_gap_s`` apart on average; sessions are ``session_gap_days`` apart
  on average (exponential gaps), until the end of the log or ``max_events``;
* **drift** (``drift_at``, a fraction of the span): from then on each topic's series popularity is
  reshuffled (the Zipf rank of every series inside its topic is permuted) and every user draws new
  favourite topics from reshuffled topic weights -- what a model trained before it learnt about
  popularity and about the user's topics is out of date;
* **arrivals** (``release_every_days``): every series starts at a uniform time between half a span
  before the log and its end and releases one episode every ``release_every_days``; nobody can watch an
  episode before its release, and an episode released after the log's end is not in the catalogue. Items
  keep arriving throughout the log, the replay window included.

Nothing here changes the worlds of ``stream_rec_devtools.synthetic``: the catalogue is theirs
(``make_spec_world`` with no users), the time layout is new. All seeded.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np

from .synthetic import WorldSpec, _Transitions, make_spec_world

DAY = 86400.0
START_TS = 1_700_000_000.0  # 2023-11-14: the worker's validation accepts it


@dataclass(frozen=True)
class TimeWorldSpec:
    """The time layout of a world (module docstring); ``world`` gives its catalogue and next-item model (its
    ``n_users``, ``history`` and ``new_share`` are not used)."""

    name: str
    world: WorldSpec
    n_users: int = 1500  # arriving at uniform times over the log
    days: float = 60.0  # the log's span
    session_events: tuple[int, int] = (1, 8)  # events per session (uniform)
    event_gap_s: float = 240.0  # mean gap between the events of a session (exponential)
    session_gap_days: float = 2.0  # mean gap between sessions (exponential)
    max_events: int = 150  # per user
    drift_at: float | None = None  # fraction of the span where popularity and favourite topics change
    release_every_days: float | None = None  # episodes of a series come out this far apart (None: all out)


def _spec(name: str, seed: int) -> WorldSpec:
    return WorldSpec(name=name, order=0.5, resume=0.5, stickiness=0.8, text="series", new_share=0.0, seed=seed)


# Chosen before any model ran on them: the knobs of the leave-one-out worlds (benchmarks/datasets.py),
# the time layout above, one thing changed per world.
TIME_WORLDS = {
    "returning": TimeWorldSpec("returning", _spec("returning", 31)),
    "drift": TimeWorldSpec("drift", _spec("drift", 32), drift_at=0.85),
    "arrivals": TimeWorldSpec("arrivals", _spec("arrivals", 33), release_every_days=2.0),
}


@dataclass
class TimeWorld:
    spec: TimeWorldSpec
    items: list[dict]  # catalogue records {item_id, title, text, attributes} of the items released by the end
    events: list[dict]  # {user_id, item_id, event_type, timestamp}, sorted by time
    released: dict[str, float] = field(default_factory=dict)  # item -> release time (arrivals world only)

    @property
    def texts(self) -> dict[str, str]:
        return {it["item_id"]: f"{it['title']}. {it['text']}" for it in self.items}


def drifted(items: list[dict], rng: random.Random) -> list[dict]:
    """The catalogue with every topic's series renamed by a random permutation of their indexes: the
    chains are unchanged, each series gets another series' popularity rank (``_Transitions`` reads the
    rank from the name)."""
    by_topic: dict[str, list[str]] = {}
    for it in items:
        names = by_topic.setdefault(it["attributes"]["topic"], [])
        if it["attributes"]["series"] not in names:
            names.append(it["attributes"]["series"])
    rename = {}
    for topic, names in by_topic.items():
        ranks = [int(n.rsplit("-", 1)[1]) for n in names]
        shuffled = ranks[:]
        rng.shuffle(shuffled)
        rename.update({f"{topic}-{a}": f"{topic}-{b}" for a, b in zip(ranks, shuffled)})
    return [dict(it, attributes=dict(it["attributes"], series=rename[it["attributes"]["series"]])) for it in items]


def release_times(items: list[dict], spec: TimeWorldSpec, rng: random.Random) -> np.ndarray:
    """Release time of every item: -inf without arrivals; else its series' start plus one
    ``release_every_days`` per earlier episode."""
    if spec.release_every_days is None:
        return np.full(len(items), -np.inf)
    span = spec.days * DAY
    starts: dict[str, float] = {}
    out = np.empty(len(items))
    for n, it in enumerate(items):
        series = it["attributes"]["series"]
        if series not in starts:
            starts[series] = START_TS + rng.uniform(-0.5 * span, span)
        out[n] = starts[series] + (int(it["attributes"]["episode"]) - 1) * spec.release_every_days * DAY
    return out


def favourite_topics(nprng: np.random.Generator, weights: np.ndarray, k: int) -> list[int]:
    return [int(t) for t in nprng.choice(len(weights), size=min(k, len(weights)), replace=False,
                                         p=weights / weights.sum())]


def make_time_world(spec: TimeWorldSpec) -> TimeWorld:
    """Generate the world of ``spec`` (deterministic in ``spec``; module docstring)."""
    items = make_spec_world(dataclasses.replace(spec.world, n_users=0)).items
    rng = random.Random(spec.world.seed)
    nprng = np.random.default_rng(spec.world.seed)
    moves = _Transitions(spec.world, items)
    after = _Transitions(spec.world, drifted(items, rng)) if spec.drift_at is not None else None
    released = release_times(items, spec, rng)
    end = START_TS + spec.days * DAY
    drift_ts = START_TS + spec.drift_at * spec.days * DAY if spec.drift_at is not None else np.inf
    weights = 1.0 / np.sqrt(np.arange(1, moves.n_topics + 1))
    weights_after = nprng.permutation(weights)
    ids = [it["item_id"] for it in items]
    events = []
    for u in range(spec.n_users):
        user = f"u{u:05d}"
        favourites = favourite_topics(nprng, weights, spec.world.favourite_topics)
        favourites_after = favourite_topics(nprng, weights_after, spec.world.favourite_topics)
        unseen = np.ones(len(items))
        history: list[int] = []
        t = START_TS + rng.uniform(0.0, spec.days * DAY)
        while t < end and len(history) < spec.max_events:
            for _ in range(rng.randint(*spec.session_events)):
                if t >= end or len(history) >= spec.max_events:
                    break
                late = t >= drift_ts
                p = (after if late else moves).next_probabilities(history, favourites_after if late else favourites)
                p = p * unseen * (released <= t)
                if p.sum() <= 0:
                    break
                pick = int(nprng.choice(len(items), p=p / p.sum()))
                history.append(pick)
                unseen[pick] = 0.0
                events.append({"user_id": user, "item_id": ids[pick], "event_type": "view", "timestamp": round(t, 3)})
                t += rng.expovariate(1.0 / spec.event_gap_s)
            t += rng.expovariate(1.0 / (spec.session_gap_days * DAY))
    events.sort(key=lambda e: (e["timestamp"], e["user_id"]))
    kept = [n for n in range(len(items)) if released[n] <= end]
    return TimeWorld(spec, [items[n] for n in kept], events,
                     {ids[n]: float(released[n]) for n in kept if np.isfinite(released[n])})
