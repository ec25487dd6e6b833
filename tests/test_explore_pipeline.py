"""The exploration bandit in the pure pipeline (stream_rec/recsys/exploring.py through pipeline.process_batch,
no Kafka): a new item put in and counted, a hit, the forgery rule, redelivery, the record's ``explore`` field."""

from __future__ import annotations

import json

import pytest
import numpy as np
import torch

from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, process_batch_isolating, read_state
from stream_rec.recsys.arms import decode_arm, decode_exposure, encode_arm, item_key
from stream_rec.recsys.explore import ExplorePolicy
from stream_rec.recsys.exploring import ARM_PREFIX, Explorer, arm_table_key
from stream_rec.settings import Settings
from stream_rec.state import UserState, decode_state, encode_state
from stream_rec_devtools.synthetic import make_catalog

torch.set_num_threads(1)
NOW = 1_750_000_000.0
NEW = "brand-new-item"
POLICY = ExplorePolicy(slots=1, min_gain=0.0)  # the new item goes into every list that lacks it


class Worker:
    """What the worker does around process_batch: a table of states and arm records, offsets per partition."""

    def __init__(self, policy=POLICY, explore=True):
        self.model = Recommender.untrained([c["item_id"] for c in make_catalog(4)], device="cpu")
        self.model.add_items([NEW], now=NOW - 100)
        self.table: dict[bytes, bytes] = {}
        self.explorer = Explorer(policy, read_arm=lambda p, i: self.table.get(arm_table_key(p, i)), seed=0) \
            if explore else None
        self.config = PipelineConfig(explore=policy if explore else None)
        self.offset = 0

    def batch(self, events, partition=0, offsets=None, keep_states=True, isolating=False, epoch=0):
        msgs = []
        for n, (user, item, ts) in enumerate(events):
            value = json.dumps({"user_id": user, "item_id": item, "event_type": "view", "timestamp": ts}).encode()
            offset = offsets[n] if offsets else self.offset
            self.offset = max(self.offset, offset + 1)
            msgs.append(Incoming(value, user.encode(), "events", partition, offset, NOW, epoch=epoch))
        run = process_batch_isolating if isolating else process_batch
        result = run(msgs, lambda u, p: self.table.get(u.encode()), self.model, self.config, now=lambda: NOW,
                     explorer=self.explorer)
        self.table.update({arm_table_key(p, i): v for (p, i), v in result.arms.items()})  # arms first
        if keep_states:
            self.table.update({u.encode(): v for u, v in result.states.items()})
        return result

    def arm(self, partition=0):
        raw = self.table.get(arm_table_key(partition, NEW))
        return decode_arm(raw) if raw else None

    def state(self, user):
        return read_state(self.table.get(user.encode()), self.model)


def test_a_new_item_is_put_in_counted_and_stored_as_the_users_exposure():
    w = Worker()
    result = w.batch([("u1", "space-00", NOW - 50)])
    rec = result.recommendations[0]
    assert NEW in [i["item_id"] for i in rec["items"]]
    assert rec["explore"] == {"arms": [NEW], "counted": [NEW], "inserted": [NEW]}
    assert result.explore["impressions"] == 1 and result.explore["exploring"] == 1
    arm = w.arm()
    assert (arm.impressions, arm.hits, arm.applied) == (1, 0, 0) and arm.expected > 0
    exposure = decode_exposure(w.state("u1").exposure)
    assert exposure.pending == [item_key(NEW)] and exposure.shown_at == NOW - 50


def test_a_hit_counts_once_per_impression_however_often_the_user_repeats_the_event():
    w = Worker()
    w.batch([("u1", "space-00", NOW - 50)])
    hit = w.batch([("u1", NEW, NOW - 40), ("u1", NEW, NOW - 39)])  # two events in one batch: one resolution
    assert hit.explore["hits"] == 1
    again = w.batch([("u1", NEW, NOW - 30)])  # the item is in her history now: not shown, nothing pending
    assert again.explore["hits"] == 0 and again.recommendations[0]["explore"]["arms"] == []
    arm = w.arm()
    assert (arm.impressions, arm.hits) == (1, 1)


def test_a_hit_needs_the_item_pending_within_the_window():
    w = Worker(ExplorePolicy(slots=1, min_gain=0.0, window_s=5.0))
    w.batch([("u1", "space-00", NOW - 50)])
    late = w.batch([("u1", NEW, NOW - 40)])  # 10 s after the list: outside the 5 s window
    assert late.explore["hits"] == 0 and w.arm().hits == 0
    w.batch([("u2", NEW, NOW - 40)])  # never shown it: no hit to forge
    assert w.arm().hits == 0


def test_redelivered_events_count_nothing_again_and_the_watermark_covers_a_lost_state():
    w = Worker()
    first = w.batch([("u1", "space-00", NOW - 50), ("u2", "space-01", NOW - 50)], offsets=[0, 1], keep_states=False)
    assert first.explore["impressions"] == 2
    # the arm record was delivered, the states were not (a kill -9 between them): the events come again
    again = w.batch([("u1", "space-00", NOW - 50), ("u2", "space-01", NOW - 50)], offsets=[0, 1])
    assert again.explore["impressions"] == 0 and w.arm().impressions == 2
    assert decode_exposure(w.state("u1").exposure).pending == [item_key(NEW)]  # she still holds it
    replay = w.batch([("u1", "space-00", NOW - 50)], offsets=[0])  # state delivered: her list is sent again
    assert replay.replayed == 1 and replay.explore["impressions"] == 0 and w.arm().impressions == 2
    assert replay.recommendations[0]["explore"]["counted"] == []
    assert replay.recommendations[0]["explore"]["arms"] == [NEW]  # the list sent again holds what was counted


def test_a_list_sent_again_holds_the_counted_arms_and_no_new_draw():
    from stream_rec.recsys.arms import ArmStats

    w = Worker(ExplorePolicy(slots=1, min_gain=0.0))
    w.batch([("u1", "space-00", NOW - 50)], offsets=[0])
    w.model.add_items(["another-new-item"], now=NOW - 90)  # a second arm, not in the list she holds, that a
    w.explorer.put((0, "another-new-item"), ArmStats(10, 10, 0.01, NOW - 90))  # fresh draw would surely pick
    replay = w.batch([("u1", "space-00", NOW - 50)], offsets=[0])
    assert replay.replayed == 1 and replay.recommendations[0]["explore"]["arms"] == [NEW]
    assert w.arm().impressions == 1


def test_a_new_events_epoch_counts_again_from_offset_0():
    """A new events topic (``Settings.events_epoch`` raised) starts its offsets at 0 again: the arms'
    watermarks hold the epoch above the offset, so its events are not taken for counted ones."""
    w = Worker()
    w.batch([("u1", "space-00", NOW - 50), ("u2", "space-01", NOW - 50)], offsets=[500, 501])
    again = w.batch([("u3", "space-02", NOW - 40)], offsets=[0], epoch=1)
    assert again.explore["impressions"] == 1 and w.arm().impressions == 3


def test_one_user_cannot_push_an_item_down_beyond_max_declines():
    w = Worker(ExplorePolicy(slots=1, min_gain=0.0, max_declines=2))
    items = [i for i in w.model.item_ids if i != NEW][:5]
    for n, item in enumerate(items):
        w.batch([("u1", item, NOW - 50 + n)])
    arm = w.arm()
    assert arm.impressions == 2  # left untaken twice in a row: her further impressions stop counting
    assert w.state("u1").history[-1][0] == items[-1] and not decode_exposure(w.state("u1").exposure).pending


def test_the_isolating_path_counts_like_the_batch_path():
    w = Worker()
    w.batch([("u1", "space-00", NOW - 50), ("u2", "space-01", NOW - 50)], isolating=True)
    assert w.arm().impressions == 2


def test_exploration_off_leaves_lists_records_and_states_as_before():
    w = Worker(explore=False)
    result = w.batch([("u1", "space-00", NOW - 50)])
    assert "explore" not in result.recommendations[0] and not result.arms and not result.explore
    assert w.state("u1").exposure == b""
    assert PipelineConfig.from_settings(Settings(explore_slots=0)).explore is None  # 0 slots: off
    assert PipelineConfig.from_settings(Settings()).explore.slots == 2  # on by default (docs/EXPLORATION.md)


def test_a_state_written_before_exposures_existed_is_explored():
    w = Worker()
    old = bytearray(encode_state(UserState(history=[("space-00", NOW - 60)])))[:-2]  # version 5: no section
    old[0] = 5
    assert decode_state(bytes(old)).exposure == b""
    w.table[b"u1"] = bytes(old)
    assert w.batch([("u1", "space-01", NOW - 50)]).explore["impressions"] == 1


def test_arm_keys_cannot_be_user_keys():
    assert arm_table_key(3, NEW).startswith(ARM_PREFIX.encode()) and ARM_PREFIX[0] < " "


@pytest.mark.parametrize("negative", ["dislike", "skip"])
def test_a_negative_event_on_the_pending_item_is_a_miss(negative):
    w = Worker()
    w.batch([("u1", "space-00", NOW - 50)])
    value = json.dumps({"user_id": "u1", "item_id": NEW, "event_type": negative, "timestamp": NOW - 40}).encode()
    result = process_batch([Incoming(value, b"u1", "events", 0, 99, NOW)], lambda u, p: w.table.get(u.encode()),
                           w.model, w.config, now=lambda: NOW, explorer=w.explorer)
    assert result.explore["hits"] == 0
    assert decode_exposure(decode_state(result.states["u1"]).exposure).declined == {item_key(NEW): 1}


def test_the_pipeline_puts_in_the_arms_explore_topk_puts_in():
    """The worker's step (``explore_lists`` on the plain lists) and the offline bandit (``explore_topk``)
    pick the same lists from the same view and the same draws."""
    from stream_rec.recsys.arms import ArmStats
    from stream_rec.recsys.explore import explore_topk
    from stream_rec.recsys.exploring import ArmUpdates, explore_lists

    w = Worker(ExplorePolicy(slots=2, min_gain=0.3))
    new = [f"new-{n}" for n in range(6)]
    w.model.add_items(new, now=NOW - 100)
    for n, item in enumerate(new):  # some arms taken often, some never
        w.explorer.put((0, item), ArmStats(impressions=20, hits=[0, 9, 1, 0, 4, 2][n], expected=2.0, born=NOW - 100))
    rng = np.random.default_rng(3)
    h = w.model.init_state(16)
    for _ in range(3):  # users with a few old items each
        h = w.model.step(h, rng.integers(1, len(w.model.item_ids) - len(new), size=16).tolist(), [60.0] * 16)
    hiddens = list(h)
    seen = [sorted(set(rng.integers(1, w.model.n_items, size=5).tolist())) for _ in hiddens]
    plain = w.model.topk(np.stack(hiddens), 10, seen)
    w.explorer.rng = np.random.default_rng(7)
    lists, _ = explore_lists(ArmUpdates(w.explorer, lambda item: NOW - 100), w.model,
                             states=[UserState() for _ in hiddens], hiddens=hiddens, seen=seen,
                             offsets=[(0, n, NOW) for n in range(len(hiddens))], lists=plain,
                             extras=[None] * len(hiddens), replays=set(), now=NOW)
    view, _, _ = w.explorer.view(w.model, NOW, [0])
    ref = explore_topk(w.model.score_rows(np.stack(hiddens)), 10, seen, view, w.explorer.policy,
                       np.random.default_rng(7))
    assert [w.model.rows_for([i for i, _ in items]) for items in lists] == ref.rows
    assert sum(len(r) for r in ref.inserted) > 0  # arms were put in


def test_the_view_merges_other_workers_arms_without_counting_a_partition_twice():
    """Records of the explore-arms topic count for partitions this worker has not read itself; once it reads
    a partition's own record (it processes that partition), the topic's copy no longer counts; after a
    rebalance (forget) the topic's records are the view again."""
    from stream_rec.recsys.arms import ArmStats
    from stream_rec.recsys.exploring import Explorer

    w = Worker()
    w.table[arm_table_key(0, NEW)] = encode_arm(ArmStats(impressions=5, hits=1, expected=0.5, born=NOW - 100))
    explorer = Explorer(POLICY, read_arm=lambda p, i: w.table.get(arm_table_key(p, i)))
    explorer.put_remote((1, NEW), ArmStats(impressions=7, hits=2, expected=0.7, born=NOW - 100))
    explorer.put_remote((0, NEW), ArmStats(impressions=4, hits=1, expected=0.4, born=NOW - 100))  # an older copy
    assert (explorer.totals[NEW].impressions, explorer.totals[NEW].hits) == (11, 3)  # both from the topic
    explorer.view(w.model, NOW, [0])  # a batch of partition 0: its own record replaces the topic's copy
    assert (explorer.book.arms[NEW].impressions, explorer.book.arms[NEW].hits) == (12, 3)
    explorer.put_remote((0, NEW), ArmStats(impressions=5, hits=1, expected=0.5, born=NOW - 100))  # its own, echoed
    explorer.put_remote((1, NEW), ArmStats(impressions=9, hits=2, expected=0.9, born=NOW - 100))  # the other moved on
    assert (explorer.totals[NEW].impressions, explorer.totals[NEW].hits) == (14, 3)
    explorer.forget()
    assert (explorer.totals[NEW].impressions, explorer.totals[NEW].hits) == (14, 3)
