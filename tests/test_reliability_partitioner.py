"""Producers with another partitioner: librdkafka (confluent-kafka) beside aiokafka.

librdkafka's default partitioner is CRC32 (``consistent_random``), not murmur2 like aiokafka, Faust and the
Java client: for ``alice`` on 4 partitions it picks partition 3, murmur2 partition 1. The worker keeps a
user's state on the murmur2 partition of her key and re-routes events that land elsewhere
(stream_rec/pipeline.py, worker/batch.py). Checked with a real confluent-kafka producer against the embedded broker:

* one user's events from both clients build one state, holding every event once, in order;
* ``stream-rec forget`` and then a worker restoring from the changelog on an empty data dir: no trace of
  the user (her next event starts a fresh state).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import WorkerProcess, consume, make_settings, produce, scrape, wait_until, write_items
from stream_rec.io.kafka import ensure_topics
from stream_rec.io.topics import REROUTED_FROM, changelog_topic_name, key_partition
from stream_rec_devtools.harness import read_changelog_states
from stream_rec_devtools.synthetic import make_catalog

confluent_kafka = pytest.importorskip("confluent_kafka")

CATALOG = make_catalog(items_per_theme=4)
ITEM_IDS = [r["item_id"] for r in CATALOG]


def test_key_partition_is_murmur2_like_aiokafka_and_not_librdkafkas_default():
    from aiokafka.partitioner import DefaultPartitioner

    for n in (1, 2, 4, 7):
        for key in (b"alice", b"bob", "é\U0001f600".encode(), b"u" * 300):
            assert key_partition(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))
    assert key_partition(b"alice", 4) == 1  # librdkafka's CRC32 default puts alice on 3 (checked below)


class Librdkafka:
    """A confluent-kafka producer with librdkafka's defaults (partitioner consistent_random = CRC32)."""

    def __init__(self, bootstrap: str):
        self.producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.partitions: list[int] = []

    def send(self, topic: str, event: dict) -> None:
        def delivered(err, msg):
            assert err is None, err
            self.partitions.append(msg.partition())
        self.producer.produce(topic, json.dumps(event).encode(), key=event["user_id"].encode(), on_delivery=delivered)
        assert self.producer.flush(30) == 0


def rec_for(settings, user: str, event: dict, timeout_s: float = 90.0) -> dict:
    """The recommendation that followed ``user``'s ``event`` (same event timestamp)."""
    def mine(records):
        return [r["value"] for r in records if isinstance(r["value"], dict) and r["value"]["user_id"] == user
                and r["value"]["event_timestamp"] == event["timestamp"]]
    found = mine(consume(settings, settings.topic(settings.recommendations_topic), timeout_s=timeout_s,
                         until=lambda rs: bool(mine(rs))))
    assert found, f"no recommendation for {user}'s event at {event['timestamp']}"
    return found[-1]


def test_librdkafka_and_aiokafka_producers_build_one_state_and_forget_leaves_no_trace(broker, tmp_path):
    settings = make_settings(broker, tmp_path / "data", partitions=4)
    asyncio.run(ensure_topics(settings))
    topic = settings.topic(settings.events_topic)
    items = write_items(tmp_path, CATALOG)
    lib = Librdkafka(broker)
    now = time.time() - 600
    users = ["alice", "bob", "carol", "dave"]
    produced: dict[str, list[str]] = {u: [] for u in users}

    def event(user: str, n: int) -> dict:
        item = ITEM_IDS[(n * 7 + len(user)) % len(ITEM_IDS)]
        produced[user].append(item)
        return {"user_id": user, "item_id": item, "event_type": "view", "timestamp": now + n}

    with WorkerProcess(settings, tmp_path / "w1", items=items) as worker:
        for n in range(6):  # alternate the two clients; each event waits for its recommendation (order)
            sent = [event(user, n) for user in users]
            for e in sent:
                if n % 2 == 0:
                    lib.send(topic, e)
                else:
                    produce(settings, topic, [e])
            for e in sent:
                rec_for(settings, e["user_id"], e)
        m = scrape(worker.metrics_url())
        assert worker.alive(), worker.log_tail()
    assert lib.partitions[0] == 3, "librdkafka's default partitioner no longer differs from murmur2 for alice"
    assert m["stream_rec_events_rerouted_total"] >= 3, m.get("stream_rec_events_rerouted_total")

    changelog = changelog_topic_name(settings)
    states = asyncio.run(read_changelog_states(settings, changelog, items=[i["item_id"] for i in CATALOG]))
    for user in users:  # one state per user, every event in it once, in the order produced
        assert states[user].n_events == 6 and states[user].seen_items() == produced[user], (user, states[user])
    records = consume(settings, changelog, idle_s=3, timeout_s=30)
    for user in users:
        assert {r["partition"] for r in records if r["key"] == user.encode()} == {key_partition(user.encode(), 4)}
    # each re-routed copy: on its key's partition, naming its origin, with the original's Kafka timestamp (ms)
    copies = [r for r in consume(settings, topic, idle_s=3, timeout_s=30)
              if any(name == REROUTED_FROM for name, _ in r["headers"])]
    assert copies and all(r["partition"] == key_partition(r["key"], 4) for r in copies)
    assert all(abs(r["timestamp"] / 1000 - time.time()) < 3600 for r in copies), [r["timestamp"] for r in copies]

    # forget alice, then a worker on an EMPTY data dir restores everything from the changelog
    env = {**os.environ, **settings.to_env()}
    out = subprocess.run([sys.executable, "-m", "stream_rec", "forget", "alice"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with WorkerProcess(settings, tmp_path / "w1", items=items) as worker:  # applies the deletion
        wait_until(lambda: scrape(worker.metrics_url()).get("stream_rec_users_deleted_total", 0) >= 1,
                   timeout_s=90, message="the deletion")
        time.sleep(3)  # the re-routed copies of the deletion too
    fresh = settings.replace(data_dir=tmp_path / "empty-data-dir")
    with WorkerProcess(fresh, tmp_path / "w2", items=items) as worker:
        last = {"alice": event("alice", 10), "bob": event("bob", 10)}
        lib.send(topic, last["alice"])
        produce(settings, topic, [last["bob"]])
        alice = rec_for(settings, "alice", last["alice"])
        bob = rec_for(settings, "bob", last["bob"])
        assert worker.alive(), worker.log_tail()
    assert alice["history"] == [produced["alice"][-1]], f"the erased user came back: {alice['history']}"
    assert bob["history"] == produced["bob"][-5:]
    states = asyncio.run(read_changelog_states(settings, changelog, items=[i["item_id"] for i in CATALOG]))
    assert states["alice"].n_events == 1 and states["bob"].n_events == 7
    print(f"\n[figures] partitioner: librdkafka partitions {lib.partitions[:4]} (alice, bob, carol, dave), "
          f"re-routed {m['stream_rec_events_rerouted_total']:.0f}; after forget + empty-dir restore alice "
          f"history {alice['history']}")
