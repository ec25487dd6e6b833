"""The synthetic worlds with time (stream_rec_devtools/time_worlds.py): sessions over many days, drift,
arrivals, on small specs."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

import numpy as np

from stream_rec_devtools.synthetic import WorldSpec, _Transitions, make_spec_world
from stream_rec_devtools.time_worlds import DAY, START_TS, TIME_WORLDS, TimeWorldSpec, drifted, make_time_world

BASE = WorldSpec(name="t", topics=4, series_per_topic=5, episodes=(4, 8), order=0.5, resume=0.5, stickiness=0.8,
                 new_share=0.0, seed=5)


def small(**kw) -> TimeWorldSpec:
    return TimeWorldSpec("t", BASE, **({"n_users": 80, "days": 30.0} | kw))


def by_user(events):
    out = defaultdict(list)
    for e in events:
        out[e["user_id"]].append(e)
    return out


def test_users_come_back_in_sessions_over_many_days_and_the_catalogue_is_the_worlds():
    world = make_time_world(small())
    assert world.items == make_spec_world(dataclasses.replace(BASE, n_users=0)).items
    assert world == make_time_world(small())  # deterministic
    ts = [e["timestamp"] for e in world.events]
    assert ts == sorted(ts) and max(ts) - min(ts) <= 30 * DAY
    users = by_user(world.events)
    days = [len({int(e["timestamp"] // DAY) for e in evs}) for evs in users.values()]
    assert np.median(days) >= 4  # they return on many days ...
    gaps = np.diff([e["timestamp"] for e in max(users.values(), key=len)])
    assert (gaps < 3600).mean() > 0.5 and gaps.max() > DAY  # ... in sessions of minutes, days apart
    for evs in users.values():
        items = [e["item_id"] for e in evs]
        assert len(items) == len(set(items)) <= 150


def topic_shift(world, t_cut: float) -> float:
    """Total variation distance between the topics watched before and after ``t_cut``."""
    topics = {it["item_id"]: it["attributes"]["topic"] for it in world.items}
    names = sorted(set(topics.values()))
    dist = []
    for late in (False, True):
        watched = [topics[e["item_id"]] for e in world.events if (e["timestamp"] >= t_cut) == late]
        dist.append(np.array([watched.count(n) for n in names]) / len(watched))
    return 0.5 * float(np.abs(dist[0] - dist[1]).sum())


def test_drift_reshuffles_popularity_and_favourites_from_its_time_on():
    world = make_time_world(small(drift_at=0.5))
    moves = _Transitions(BASE, world.items)
    after = _Transitions(BASE, drifted(world.items, random.Random(BASE.seed)))
    assert not np.allclose(moves.jump_item, after.jump_item)  # other series are popular
    assert (moves.next == after.next).all()  # the chains are the same
    t_cut = START_TS + 0.5 * 30 * DAY
    assert topic_shift(world, t_cut) > 2 * topic_shift(make_time_world(small()), t_cut)  # what users watch moved


def test_arrivals_release_items_over_time_and_nobody_watches_an_episode_before_its_release():
    world = make_time_world(small(release_every_days=2.0))
    start = min(e["timestamp"] for e in world.events)
    assert all(e["timestamp"] >= world.released[e["item_id"]] for e in world.events)
    late = [t for t in world.released.values() if t > start + 0.8 * 30 * DAY]
    assert len(late) > 10  # items keep arriving in the last fifth of the log
    assert set(world.released) == {it["item_id"] for it in world.items}  # nothing released after the end is listed


def test_the_benchmark_worlds_differ_in_one_knob():
    spec = {name: s for name, s in TIME_WORLDS.items()}
    assert spec["drift"].drift_at and spec["drift"].release_every_days is None
    assert spec["arrivals"].release_every_days and spec["arrivals"].drift_at is None
    assert spec["returning"].drift_at is None and spec["returning"].release_every_days is None
