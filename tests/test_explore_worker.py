"""The exploration bandit in a real worker on the embedded broker (issue 21, docs/EXPLORATION.md): a new
catalog item is shown, a user takes it, and its impressions and hits move in the metrics and in the state
table's changelog; a kill -9 mid-stream loses and doubles no count.

The users answer in rounds (one event each, then the list it produced arrives), so every event gets its
own list and the counts an uninterrupted worker makes are known in closed form: with one new item, 1
exploring slot and ``min_gain`` 0, every list of a user who has not taken the item holds it (an
impression); the user's event on it is one hit; after that it is in her history and never shown again."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from conftest import WorkerProcess, produce, scrape, wait_until, write_items
from stream_rec.io.kafka import read_topic
from stream_rec.recsys.arms import decode_arm, merge_arms
from stream_rec.recsys.exploring import arm_table_key
from stream_rec_devtools.harness import RecCollector, make_producer, read_changelog_arms, send_events
from stream_rec_devtools.synthetic import make_catalog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 needs signals")

CATALOG = make_catalog(items_per_theme=8)
OLD = [r["item_id"] for r in CATALOG]
NEW = "space-new-release"
NEW_RECORD = {"item_id": NEW, "title": "Nebula", "text": "a new science fiction space adventure"}
EXPLORE = dict(explore_slots=1, explore_min_gain=0.0, explore_window_s=3600.0)


@pytest.fixture
def explore_settings(spine_settings):
    settings = spine_settings.replace(**EXPLORE)
    produce(settings, settings.topic(settings.catalog_topic), [NEW_RECORD], key_field="item_id")
    return settings


class Rounds:
    """Users answering in rounds: each user's event, then her list (the record for that event)."""

    def __init__(self, settings, users: list[str], start: float):
        self.settings, self.users, self.start = settings, users, start
        self.round = 0
        self.records: dict[tuple[str, float], dict] = {}  # (user, event time) -> newest record for it

    async def play(self, choose, collector: RecCollector, producer, timeout_s: float = 120.0,
                   during=None) -> dict[str, dict]:
        """One round: ``choose(user, round)`` -> item; ``during()`` runs after the events are sent."""
        self.round += 1
        events = [{"user_id": u, "item_id": choose(u, self.round), "event_type": "view",
                   "timestamp": round(self.start + 10.0 * self.round + 0.001 * n, 3)} for n, u in enumerate(self.users)]
        await send_events(producer, self.settings, events)
        if during is not None:
            await during()
        wanted = {(e["user_id"], e["timestamp"]) for e in events}

        def arrived() -> bool:  # the collector's records not read yet (each collector reads the topic from its start)
            for _, rec in collector.records[getattr(collector, "rounds_read", 0):]:
                self.records[(rec["user_id"], rec["event_timestamp"])] = rec
            collector.rounds_read = len(collector.records)
            return wanted <= self.records.keys()

        assert await collector.wait_for(arrived, timeout_s), f"round {self.round}: lists missing"
        return {u: self.records[(u, ts)] for u, ts in wanted}


def taker_round(user: str) -> int | None:
    """The round in which ``user`` takes the new item (every third user, rounds 2-5), else None."""
    n = int(user.rsplit("-", 1)[1])
    return 2 + n % 4 if n % 3 == 0 else None


def choose(user: str, k: int) -> str:
    return NEW if taker_round(user) == k else OLD[(int(user.rsplit("-", 1)[1]) + 7 * k) % len(OLD)]


def expected_counts(users: list[str], rounds: int) -> tuple[int, int]:
    """(impressions, hits) an uninterrupted worker counts: a list per event holding the new item until the
    user took it (the list of the round she takes it is without it: it is in her history)."""
    impressions = sum(min(rounds, (taker_round(u) or rounds + 1) - 1) for u in users)
    hits = sum(1 for u in users if (taker_round(u) or rounds + 1) <= rounds)
    return impressions, hits


def totals(settings) -> tuple[int, int]:
    arms = asyncio.run(read_changelog_arms(settings))
    merged = merge_arms([a for (_, item), a in arms.items() if item == NEW])
    return merged.impressions, merged.hits


def new_item_known(worker) -> bool:
    return scrape(worker.metrics_url()).get("stream_rec_catalog_items_total", 0) >= 1


def test_a_worker_exploring_shows_a_new_item_and_counts_impressions_and_hits(explore_settings, tmp_path):
    settings = explore_settings
    users = [f"user-{n}" for n in (0, 1, 2)]  # user-0 takes the new item in round 2
    with WorkerProcess(settings, tmp_path / "w", items=write_items(tmp_path, CATALOG)) as worker:
        wait_until(lambda: new_item_known(worker), timeout_s=90, message="the new catalog item")

        async def main():
            collector, producer = await RecCollector(settings).start(), await make_producer(settings)
            rounds = Rounds(settings, users, time.time() - 3600.0)
            try:
                first = await rounds.play(choose, collector, producer)
                assert all(NEW in [i["item_id"] for i in r["items"]] for r in first.values())
                assert all(r["explore"]["counted"] == [NEW] for r in first.values())
                await rounds.play(choose, collector, producer)  # user-0 takes it
                # user-0 repeats the event on it: no impression is pending any more, no second hit
                await rounds.play(lambda u, k: NEW if u == "user-0" else choose(u, k), collector, producer)
            finally:
                await producer.stop()
                await collector.stop()
        asyncio.run(main())
        metrics = scrape(worker.metrics_url())
    # user-0: a list in round 1 (impression), hit in round 2; users 1 and 2: three lists each
    assert metrics["stream_rec_explore_impressions_total"] == 1 + 3 + 3
    assert metrics["stream_rec_explore_hits_total"] == 1
    assert metrics['stream_rec_explore_slots_total{state="exploring"}'] >= 7
    assert totals(settings) == (7, 1)
    # every arm record also went to the explore-arms topic, for other workers' views
    published = {}
    for rec in asyncio.run(read_topic(settings, settings.topic(settings.explore_arms_topic))):
        published[rec.key] = decode_arm(rec.value)
    stored = asyncio.run(read_changelog_arms(settings))
    assert published == {arm_table_key(p, i): a for (p, i), a in stored.items()}


def test_kill9_during_exploration_loses_and_doubles_no_count(explore_settings, tmp_path):
    """kill -9 in the middle of a round, restart on the same data dir; later a worker on an EMPTY data dir
    (its arm records restored from the changelog alone) plays one more round: the arm's totals in the
    changelog equal the uninterrupted count."""
    settings = explore_settings
    users = [f"user-{n}" for n in range(60)]
    items = write_items(tmp_path, CATALOG)
    worker = WorkerProcess(settings, tmp_path / "w", items=items).start()
    rounds = Rounds(settings, users, time.time() - 3600.0)

    async def play(n_rounds: int, kill_in: int | None = None):
        collector, producer = await RecCollector(settings).start(), await make_producer(settings)
        nonlocal worker

        async def kill_and_restart():
            nonlocal worker
            await asyncio.sleep(0.15)  # batches of the round in flight
            worker.kill()
            assert worker.proc.returncode == -9
            worker = WorkerProcess(settings, tmp_path / "w", items=items).start()
        try:
            for k in range(n_rounds):
                await rounds.play(choose, collector, producer, during=kill_and_restart if k == kill_in else None)
        finally:
            await producer.stop()
            await collector.stop()
    try:
        wait_until(lambda: new_item_known(worker), timeout_s=90, message="the new catalog item")
        asyncio.run(play(4, kill_in=2))
        after = scrape(worker.metrics_url())  # the restarted worker got the killed one's uncommitted events
        assert after["stream_rec_events_duplicate_total"] + after["stream_rec_recommendations_replayed_total"] > 0
    finally:
        worker.stop()
    assert totals(settings) == expected_counts(users, 4)
    worker = WorkerProcess(settings.replace(data_dir=tmp_path / "empty-data-dir"), tmp_path / "w2", items=items)
    try:
        worker.start()
        wait_until(lambda: new_item_known(worker), timeout_s=90, message="the new catalog item")
        asyncio.run(play(1))
    finally:
        worker.stop()
    assert totals(settings) == expected_counts(users, 5)


@pytest.mark.slow
def test_a_rebalance_during_exploration_loses_and_doubles_no_count(explore_settings, tmp_path):
    """A second worker joins after round 2 (its own empty data dir: it restores the partitions it gets,
    their arm records with their users' states, from the changelog); the first leaves after round 4; one
    more round: the arm totals equal the uninterrupted count."""
    settings = explore_settings
    users = [f"user-{n}" for n in range(40)]
    items = write_items(tmp_path, CATALOG)
    rounds = Rounds(settings, users, time.time() - 3600.0)

    def assigned(worker) -> int:
        return worker.log_path.read_text(errors="replace").count("Setting newly assigned partitions")

    async def play(n_rounds: int):
        collector, producer = await RecCollector(settings).start(), await make_producer(settings)
        try:
            for _ in range(n_rounds):
                await rounds.play(choose, collector, producer)
        finally:
            await producer.stop()
            await collector.stop()
    worker_a = WorkerProcess(settings, tmp_path / "a", items=items).start()
    worker_b = None
    try:
        wait_until(lambda: new_item_known(worker_a), timeout_s=90, message="the new catalog item")
        asyncio.run(play(2))
        worker_b = WorkerProcess(settings.replace(data_dir=tmp_path / "data-b", metrics_port=0), tmp_path / "b",
                                 items=items).start()
        wait_until(lambda: assigned(worker_b) >= 1, timeout_s=90, message="the second worker's assignment")
        asyncio.run(play(2))
        worker_a.stop()  # everything moves to B
        wait_until(lambda: assigned(worker_b) >= 2, timeout_s=90, message="the rebalance after A left")
        asyncio.run(play(1))
        assert "Restoring state from changelog topics" in worker_b.log_path.read_text(errors="replace")
    finally:
        worker_a.stop()
        if worker_b is not None:
            worker_b.stop()
    assert totals(settings) == expected_counts(users, 5)
