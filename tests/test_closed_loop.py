"""The closed-loop simulator (stream_rec_devtools/closedloop/): users answer the lists they hold, the same
random numbers for every policy, and the bandit's own accounting agrees with the simulator's grading."""

import numpy as np
import pytest

from stream_rec_devtools.synthetic import WorldSpec
from stream_rec_devtools.closedloop import policies, report
from stream_rec_devtools.closedloop.loop import batches, simulate
from stream_rec_devtools.closedloop.sources import ServingSource
from stream_rec_devtools.closedloop.world import SimParams, Users, event_times, make_sim_world, world_log

SPEC = WorldSpec(name="tiny", n_users=40, topics=2, series_per_topic=3, episodes=(3, 6), history=(5, 12),
                 new_share=0.25, seed=5)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices: torch's default threads only contend on a shared box (13 s instead of 0.7 s here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim():
    return make_sim_world(SPEC, SimParams(days=3, users=30, events_per_day=3, release_days=2, seed=0))


def untrained(sim):
    from stream_rec.model.recommender import Recommender

    new = set(sim.new_items)
    ids = [it["item_id"] for it in sim.world.items if it["item_id"] not in new]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    return Recommender.untrained(ids, vectors, device="cpu")


def test_the_world_keeps_new_items_out_of_the_log_and_releases_them_in_time(sim):
    new = set(sim.new_items)
    assert new and not any(i in new for h in world_log(sim.world).values() for i, _ in h)
    assert all(sim.start <= t < sim.start + 2 * 86400 for t in sim.release_at.values())
    assert all(0.0 <= a <= 1.0 for a in sim.appeal.values())
    times = event_times(sim)
    assert times == sorted(times) and all(sim.start <= t < sim.start + 3 * 86400 for t, _ in times)


def test_users_answer_the_list_they_hold_with_common_random_numbers(sim):
    user = sim.users[0]
    first, second = Users(sim), Users(sim)
    assert [first.next_item(user, []) for _ in range(5)] == [second.next_item(user, []) for _ in range(5)]
    # the tilt: an item in the list is taken more often than without the list (many fresh users)
    base = Users(sim)
    p = sim.world.oracle_next(user, base.history[user]) * base.released * base.unseen[user]
    shown_item = base.ids[int(np.argsort(-p)[1])]  # a likely item, not the likeliest
    assert p[sim.index[shown_item]] > 0
    taken_with, taken_without = 0, 0
    for n in range(300):
        a, b = Users(sim), Users(sim)
        a.rng[user], b.rng[user] = np.random.default_rng(n), np.random.default_rng(n)
        taken_with += a.next_item(user, [shown_item]) == shown_item
        taken_without += b.next_item(user, []) == shown_item
    assert taken_with > 1.3 * taken_without > 0


def test_batches_never_hold_a_user_twice():
    events = [(0.0, "a"), (1.0, "b"), (2.0, "a"), (3.0, "c"), (4.0, "d")]
    out = list(batches(events, 3))
    assert [[u for _, u in b] for b in out] == [["a", "b"], ["a", "c", "d"]]
    assert sum(len(b) for b in out) == len(events)


def test_bandit_accounting_agrees_with_the_simulator(sim):
    from stream_rec.recsys.explore import ExplorePolicy

    bandit = policies.BanditPolicy(ExplorePolicy(window_s=1e9, min_gain=0.05, slots=2, max_declines=255), seed=0)
    days = simulate(sim, ServingSource(untrained(sim), bandit, encoder=None), batch=8)
    new_hits = sum(d.new_hits for d in days)
    assert bandit.hits == new_hits  # every new item in a list is an arm; each hit resolved once
    assert bandit.impressions >= sum(d.slots for d in days) > 0
    assert sum(d.events for d in days) == len(event_times(sim))


def test_policies_run_through_one_simulation_and_the_table_compares_them(sim):
    from stream_rec.recsys.explore import ExplorePolicy
    from stream_rec.recsys.freshness import FreshnessPolicy

    runs = {}
    users = Users(sim)
    for name, policy in [("none", policies.PlainPolicy()),
                         ("fixed", policies.FixedPolicy(FreshnessPolicy(slots=2, by="content", min_similarity=-1))),
                         ("oracle", policies.OraclePolicy(ExplorePolicy(min_gain=0.05), sim.appeal)),
                         ("omniscient", policies.OmniscientPolicy(ExplorePolicy(min_gain=0.05), users))]:
        runs[name] = {"days": simulate(sim, ServingSource(untrained(sim), policy, encoder=None), batch=8,
                                       users=users if name == "omniscient" else None)}
    plain = runs["none"]["days"]
    assert sum(d.slots for d in plain) == 0
    assert sum(d.plain_warm_hits for d in plain) == sum(d.warm_hits for d in plain)  # plain: its own baseline
    assert sum(d.slots for d in runs["fixed"]["days"]) > 0
    summary = report.summarise(runs)
    assert summary["oracle"]["regret"] == 0 and summary["none"]["warm_cost_vs_none_ndcg"] == 0
    assert summary["fixed"]["regret"] == summary["oracle"]["new_hits"] - summary["fixed"]["new_hits"]
    # knowing every user's true probabilities beats an untrained model's lists on new items
    assert summary["omniscient"]["new_hits"] > summary["none"]["new_hits"]
    assert summary["omniscient"]["hits_over_omniscient"] == 1.0
    text = report.table("tiny", summary)
    assert text.count("\n| ") == 4 + 1  # header + one row per policy
