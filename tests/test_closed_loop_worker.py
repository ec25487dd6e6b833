"""The closed-loop simulation through a real worker on the embedded broker (``closedloop.sources.
WorkerSource``): every simulated event gets the list the worker emitted for it, the bandit puts new items
in, and the arm records in the state table's changelog count exactly the new-item hits the simulator saw."""

import sys

import pytest

from conftest import make_settings
from stream_rec.recsys.arms import merge_arms
from stream_rec_devtools.closedloop.loop import simulate
from stream_rec_devtools.closedloop.sources import WorkerSource
from stream_rec_devtools.closedloop.world import SimParams, Users, event_times, make_sim_world
from stream_rec_devtools.harness import read_changelog_arms
from stream_rec_devtools.synthetic import WorldSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a worker subprocess")

SPEC = WorldSpec(name="tiny", n_users=40, topics=2, series_per_topic=3, episodes=(3, 6), history=(5, 12),
                 new_share=0.25, seed=5)


@pytest.mark.slow  # 15 s; the default run keeps tests/test_explore_worker.py's exact counts (the suite's 15 min)
def test_the_simulation_runs_through_a_real_worker_and_its_arms_count_the_hits(broker, tmp_path):
    import asyncio

    from stream_rec.model.recommender import Recommender

    sim = make_sim_world(SPEC, SimParams(days=3, users=30, events_per_day=3, release_days=2, seed=0))
    new = set(sim.new_items)
    model = Recommender.untrained([it["item_id"] for it in sim.world.items if it["item_id"] not in new], device="cpu")
    model.save(tmp_path / "model")
    settings = make_settings(broker, tmp_path / "data", model=str(tmp_path / "model"), fresh_slots=0,
                             explore_slots=2, explore_min_gain=0.05, explore_window_s=1e9, explore_max_declines=255)
    source = WorkerSource(settings, tmp_path / "w", timeout_s=120).start()
    try:
        days = simulate(sim, source, batch=8, users=Users(sim))
    finally:
        source.stop()
    assert sum(d.events for d in days) == len(event_times(sim))  # every event answered by the worker's list
    assert sum(d.slots for d in days) > 0  # the worker's bandit put new items in
    arms = asyncio.run(read_changelog_arms(settings))
    totals = [merge_arms([a for (_, i), a in arms.items() if i == item]) for item in new]
    assert sum(a.hits for a in totals) == sum(d.new_hits for d in days) > 0  # each hit once, none missed
    assert sum(a.impressions for a in totals) >= sum(d.slots for d in days)
