"""Synthetic worlds with knobs (stream_rec_devtools.synthetic.WorldSpec): seeded, new releases only among each
user's last two events, the knobs do what they say, and the oracle is a probability distribution."""

import dataclasses

import numpy as np
import pytest

from stream_rec_devtools.synthetic import WorldSpec, make_spec_world

SMALL = WorldSpec(n_users=150, topics=4, series_per_topic=5, episodes=(3, 8), history=(6, 20), new_share=0.1, seed=3)


def by_user(world):
    out = {}
    for e in world.events:
        out.setdefault(e["user_id"], []).append(e["item_id"])
    return out


def test_seeded_and_new_releases_only_at_the_end():
    a, b = make_spec_world(SMALL), make_spec_world(SMALL)
    assert a.events == b.events and a.items == b.items and a.new_items == b.new_items
    assert make_spec_world(dataclasses.replace(SMALL, seed=4)).events != a.events
    new = set(a.new_items)
    assert abs(len(new) - 0.1 * len(a.items)) <= 1
    episodes = {i["item_id"]: int(i["attributes"]["episode"]) for i in a.items}
    assert all(episodes[i] > 1 for i in new)  # latest episodes, never a series' first
    sequences = by_user(a)
    assert all(not new & set(seq[:-2]) for seq in sequences.values())
    assert any(new & set(seq[-2:]) for seq in sequences.values())
    assert all(len(seq) == len(set(seq)) for seq in sequences.values())  # nobody sees an item twice


def follows_series(world):
    series = {i["item_id"]: (i["attributes"]["series"], int(i["attributes"]["episode"])) for i in world.items}
    pairs = [(series[x], series[y]) for seq in by_user(world).values() for x, y in zip(seq, seq[1:])]
    return np.mean([sx == sy and ey == ex + 1 for (sx, ex), (sy, ey) in pairs])


def test_order_knob():
    strong = follows_series(make_spec_world(dataclasses.replace(SMALL, order=0.9)))
    weak = follows_series(make_spec_world(dataclasses.replace(SMALL, order=0.1)))
    assert strong > 0.6 > 0.3 > weak


def test_text_modes():
    series = make_spec_world(dataclasses.replace(SMALL, text="series"))
    random_ = make_spec_world(dataclasses.replace(SMALL, text="random"))
    first = series.items[0]
    assert "episode 1" in first["title"]
    topic_words = set(" ".join(i["text"] for i in series.items).split())
    assert not topic_words & set(" ".join(i["title"] + " " + i["text"] for i in random_.items).lower().split())
    with pytest.raises(ValueError):
        make_spec_world(dataclasses.replace(SMALL, text="poetry"))


def test_oracle_is_the_generators_distribution():
    world = make_spec_world(dataclasses.replace(SMALL, resume=0.5))
    user, seq = next(iter(by_user(world).items()))
    p = world.oracle_next(user, seq[:3])
    assert p.shape == (len(world.items),) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-9
    # with strong order the next episode of the last item is the single most likely item
    ordered = make_spec_world(dataclasses.replace(SMALL, order=0.9))
    ids = [i["item_id"] for i in ordered.items]
    first = ids[0]  # episode 1 of the first series
    assert ids[int(np.argmax(ordered.oracle_next(next(iter(ordered.favourites)), [first])))] == ids[1]
