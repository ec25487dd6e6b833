"""The online monitor on a replay: a first-order Markov model fitted on world A grades itself while the
stream continues in world A (stable) or switches to a shifted world B (other chains)."""

from collections import Counter, defaultdict

import pytest

from stream_rec import metrics
from stream_rec.learning.drift import OnlineQualityMonitor
from stream_rec_devtools.synthetic import make_world


def _markov_lists(events, k=10):
    """item -> its k most frequent next items (the 'model' being monitored)."""
    last, nxt = {}, defaultdict(Counter)
    for e in events:
        if e["user_id"] in last:
            nxt[last[e["user_id"]]][e["item_id"]] += 1
        last[e["user_id"]] = e["item_id"]
    return {i: [j for j, _ in c.most_common(k)] for i, c in nxt.items()}


def _replay(monitor, events, lists):
    for e in events:
        monitor.observe(e["user_id"], e["item_id"])
        monitor.record(e["user_id"], lists.get(e["item_id"], []))


def _renamed(world, prefix):
    """Events with user ids made unique per world (make_world numbers users from u0000 each time)."""
    return [dict(e, user_id=prefix + e["user_id"]) for e in world.events]


def _worlds(shift: bool):
    train = make_world(n_users=150, p_next=0.9, p_same_theme=0.08, seed=1)
    stable = make_world(n_users=300, p_next=0.9, p_same_theme=0.08, seed=2, start_ts=1_800_000_000.0)
    # world B: users now jump around inside their theme instead of following the series
    shifted = make_world(n_users=300, p_next=0.0, p_same_theme=0.3, seed=3, start_ts=1_900_000_000.0)
    more_stable = make_world(n_users=300, p_next=0.9, p_same_theme=0.08, seed=4, start_ts=1_900_000_000.0)
    return train.events, _renamed(stable, "a-"), _renamed(shifted if shift else more_stable, "b-")


@pytest.mark.parametrize("shift", [False, True])
def test_drift_alarm_only_when_the_world_changes(shift):
    train, first, second = _worlds(shift)
    lists = _markov_lists(train, k=3)  # top-3: a hit needs the actual next episode
    scored_before = metrics.ONLINE_SCORED._value.get()
    drift_before = metrics.DRIFT_DETECTED._value.get()
    monitor = OnlineQualityMonitor(k=3)
    alarms = monitor.alarms  # the monitor records alarms; a worker task acts on them (learning.finetune)
    _replay(monitor, first, lists)
    assert monitor.hit_rate > 0.7 and not alarms  # stable world: no alarm
    hr_first = monitor.hit_rate
    _replay(monitor, second, lists)
    assert metrics.ONLINE_SCORED._value.get() - scored_before == monitor.n_scored
    if shift:
        assert alarms, "the shifted world must raise a drift alarm"
        assert alarms[0].hit_rate_after < alarms[0].hit_rate_before
        assert monitor.recent_hit_rate < hr_first - 0.3
        assert metrics.DRIFT_DETECTED._value.get() - drift_before == len(alarms)
    else:
        assert not alarms


def test_first_event_of_a_user_is_not_graded_and_lru_bound():
    monitor = OnlineQualityMonitor(k=2, max_users=2, export_metrics=False)
    assert monitor.observe("a", "x") is None
    monitor.record_batch(["a", "b", "c"], [["x", "y", "z"], ["x"], ["y"]])
    assert "a" not in monitor.last_lists  # evicted: only 2 users kept
    assert monitor.observe_batch(["b", "c"], ["x", "x"]) == [True, False]
    assert monitor.hit_rate == 0.5


def test_a_task_beside_the_stream_hands_new_alarms_to_the_finetuner():
    """The monitor only records alarms; ``follow_alarms`` (a worker task) passes each new one on once."""
    import asyncio

    from stream_rec.learning.drift import DriftAlarm
    from stream_rec.learning.finetune import follow_alarms

    monitor = OnlineQualityMonitor(k=2, export_metrics=False)
    monitor.alarms.append(DriftAlarm(0.9, 0.5, 10))  # raised before the task started: not handed on
    handed: list = []

    async def main():
        task = asyncio.create_task(follow_alarms(monitor, handed.append, interval_s=0.01))
        await asyncio.sleep(0.05)
        monitor.alarms.extend([DriftAlarm(0.8, 0.4, 20), DriftAlarm(0.7, 0.3, 30)])
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert [a.n_scored for a in handed] == [20, 30]
