"""The temporal replay's systems over stream-rec's own serving code (stream_rec_devtools/temporal_systems.py),
with an untrained model on a tiny synthetic log: no Kafka, seconds."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from stream_rec.learning.drift import DriftAlarm
from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import PipelineConfig
from stream_rec.settings import Settings
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools.temporal import DAY, HOUR, Log, Scoreboard, WindowPopularity, replay
from stream_rec_devtools.temporal_systems import (CadenceGRU, Catalogue, MarkovLive, OnlinePipeline, PipelineSystem,
                                                  new_item_policy, warm_pipeline)

T0 = 1_700_006_400.0  # a UTC midnight
ITEMS = [c["item_id"] for c in make_catalog(4)]  # 24 items


def tiny_log(n_users: int = 12, events: int = 14, seed: int = 3) -> Log:
    """Users with sessions over four days around T (T0 + 1.5 days) (histories under the worker's 50)."""
    rng = random.Random(seed)
    triples = []
    for u in range(n_users):
        t = T0 + rng.uniform(0, DAY)
        for item in rng.sample(ITEMS[:22], events):  # no repeats
            triples.append((f"u{u}", item, round(t, 3)))
            t += rng.choice([120.0, 300.0, 0.4 * DAY])
    return Log.of(triples)


@pytest.fixture()
def model():
    return Recommender.untrained(ITEMS, device="cpu")


def start_systems(model, log: Log, t_split: float, period: float):
    stop = log.index_at(t_split)
    config = PipelineConfig()
    states, lists = warm_pipeline(model, log, stop, config, progress=False)
    live = PipelineSystem(model, config)
    live.start(states, lists)
    cadence = CadenceGRU(model, t_split, period, WindowPopularity(log))
    cadence.start(states, {u: {i for i, _ in s} for u, s in log.sequences(stop).items()})
    return stop, live, cadence


def test_a_cadence_of_zero_holds_exactly_the_live_pipelines_lists(model):
    """A list recomputed at every event from the state before it (period 0) is what the worker sent after
    the previous event: the pipeline path (JSON, validation, state codec in float16, step, top-K) and the
    raw stepping agree, from the states at T on."""
    log = tiny_log()
    t_split = T0 + 1.5 * DAY
    stop, live, cadence = start_systems(model, log, t_split, 0.0)
    board = Scoreboard(["live", "cadence"])
    stats = replay(log, stop, t_split, {"live": live, "cadence": cadence}, board, set(log.items[:stop]),
                   set(log.users[:stop]), progress=False)
    assert stats.scored > 40
    assert board.hit["live"] == board.hit["cadence"] and board.ndcg["live"] == board.ndcg["cadence"]
    assert sum(board.hit["live"]) > 0  # the lists are not trivially empty of targets
    for user, held in live.lists.items():  # and item for item, at the end
        seen = {i for i, _ in log.sequences()[user]}
        assert list(held.items) == [i for i in cadence._compute([user], [0.0])[0] if i not in seen][:10]


def test_nightly_lists_come_from_the_state_at_midnight(model):
    log = tiny_log()
    t_split = T0 + 1.5 * DAY
    stop, live, nightly = start_systems(model, log, t_split, DAY)
    board = Scoreboard(["nightly"])
    replay(log, stop, t_split, {"nightly": nightly}, board, set(log.items[:stop]), set(log.users[:stop]),
           progress=False)
    ages = np.asarray(board.age["nightly"])
    times = np.asarray(board.t)
    bounds = np.maximum(t_split, np.floor(times / DAY) * DAY)
    assert np.allclose(ages, times - bounds)  # every list was computed at T or at the last midnight
    assert nightly.lists.computed < len(log) - stop  # lazily: one list per user and night, not per event


def test_new_items_join_at_release_and_stay_out_of_older_batch_lists(model):
    log = tiny_log()
    t_split = T0 + 1.5 * DAY
    catalogue = Catalogue({"new-1": "a new item"}, {"new-1": t_split + 3 * HOUR}, None)
    stop, live, nightly = start_systems(model, log, t_split, DAY)
    live.catalogue = nightly.catalogue = catalogue
    live.window(t_split + HOUR)
    assert "new-1" not in model.row_of
    live.window(t_split + 4 * HOUR)
    row = model.row_of["new-1"]
    assert model.added_at[row] == t_split + 3 * HOUR
    model.model.item_bias.data[row] = 1e3  # the new item outranks everything ...
    model.refresh_item_table()
    user = log.users[stop]
    assert "new-1" in nightly._compute([user], [t_split + 4 * HOUR])[0]
    assert "new-1" not in nightly._compute([user], [t_split])[0]  # ... but not in a list made before its release
    live.update([user], ["new-1"], [t_split + 5 * HOUR], [len(log)])  # consumed: no dead letter
    assert "new-1" not in live.lists[user].items


def test_markov_lists_follow_the_last_item():
    row_of = {"a": 1, "b": 2, "c": 3}
    markov = MarkovLive([np.array([1, 2]), np.array([1, 2]), np.array([1, 3]), np.array([3, 3, 3])], row_of)
    markov.start({"u": [("not-in-training", 1.0)]})
    markov.update(["u"], ["a"], [2.0], [0])
    assert list(markov.lists["u"].items)[:2] == ["b", "c"]  # a -> b twice, a -> c once; 'a' itself seen


def test_new_item_policy_is_the_settings_policy_today(model):
    policy = new_item_policy(model, Settings(fresh_slots=3, fresh_by="content", fresh_min_similarity=0.5))
    assert (policy.slots, policy.by, policy.min_similarity) == (3, "content", 0.5)
    assert new_item_policy(model, Settings()).slots == 0  # off by default


def test_online_learning_fine_tunes_on_an_alarm_and_swaps_after_its_wall_time(model, tmp_path):
    log = tiny_log(n_users=20, events=20)
    t_split = T0 + 1.5 * DAY
    stop = log.index_at(t_split)
    model_dir = model.save(tmp_path / "models" / "v0")
    served = Recommender.load(model_dir, device="cpu")
    config = PipelineConfig()
    states, lists = warm_pipeline(served, log, stop, config, progress=False)
    settings = dataclasses.replace(Settings(), drift_finetune_cooldown_s=3600.0)
    online = OnlinePipeline(served, config, model_dir, tmp_path / "models", settings)
    online.start(states, lists, [{"user_id": u, "item_id": i, "timestamp": t}
                                 for u, i, t in zip(log.users[:stop], log.items[:stop], log.ts[:stop])])
    e = stop
    users, items, ts = [log.users[e]], [log.items[e]], [float(log.ts[e])]
    online.enricher.monitor.alarms.append(DriftAlarm(0.5, 0.1, 100))
    online.update(users, items, ts, [e])
    assert len(online.finetunes) == 1 and online.pending is not None
    swap_at = online.pending[0]
    assert swap_at >= ts[0] and online.rec is served  # the old model serves until the fine-tune's time passed
    online.enricher.monitor.alarms.append(DriftAlarm(0.5, 0.1, 200))  # within the cooldown: no second run
    online.update([log.users[e + 1]], [log.items[e + 1]], [ts[0] + 1.0], [e + 1])
    assert len(online.finetunes) == 1
    later = swap_at + 1.0
    online.update([users[0]], [ITEMS[23]], [later], [e + 2])
    assert online.rec is not served and online.rec.version != served.version
    assert online.lists[users[0]].computed_at == later
