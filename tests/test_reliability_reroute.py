"""Re-routed events are applied exactly once, whatever a producer writes in the origin header (issue 23,
part 2).

An event that lands on another partition than its key's (a producer with another partitioner) is re-sent
by the worker to the key's partition with a ``stream-rec-rerouted-from: P:O`` header; a copy sent twice
(the worker killed between the re-route and its offset commit) must be applied once. That header is
also just bytes a producer may write. Against a real broker and real worker processes:

* kill -9 while misplaced events of 180 users are re-routed behind 3,000 events queued on their home
  partition, restart: both copies of an event often land in one micro-batch; every user's ``n_events``
  (read from the changelog) is exactly the events produced for her;
* two copies with the same origin and bytes in one produce batch: applied once; the same origin on two
  different events: two events, both applied;
* origins ``-1:-1``, ``0:-7``, ``abc``, two origin headers, an origin on the event's own partition:
  each in the DLQ as ``bad_header`` (never silently dropped);
* a forged ``1:999999999`` on the right partition: applied as an event of its own, and it does not mask
  the user's later genuine re-route from partition 1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time

import pytest

from conftest import WorkerProcess, consume, produce, scrape, wait_until, write_items
from stream_rec.io.kafka import kafka_producer
from stream_rec.io.topics import REROUTED_FROM, changelog_topic_name, key_partition
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools.faults import produce_raw
from stream_rec_devtools.harness import read_changelog_states

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs signals")

CATALOG = make_catalog(items_per_theme=4)
ITEM_IDS = [r["item_id"] for r in CATALOG]
HOME = 0  # every user of this test lives on partition 0 of 2; misplaced events are written to partition 1


def users_at_home(prefix: str, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if key_partition(f"{prefix}-{i}".encode(), 2) == HOME:
            out.append(f"{prefix}-{i}")
        i += 1
    return out


def event(user: str, n: int, base: float) -> bytes:
    return json.dumps({"user_id": user, "item_id": ITEM_IDS[(n + len(user)) % len(ITEM_IDS)],
                       "event_type": "view", "timestamp": base + n}).encode()


def send_to(settings, topic: str, partition: int, records: list[tuple[bytes, bytes]], pause_s: float = 0.0,
            chunk: int = 0) -> None:
    """Send (key, value) records to one partition; ``chunk`` records at a time, ``pause_s`` apart."""
    async def go():
        producer = kafka_producer(settings, linger_ms=2)
        await producer.start()
        try:
            size = chunk or len(records)
            for start in range(0, len(records), size):
                futures = [await producer.send(topic, value, key=key, partition=partition)
                           for key, value in records[start:start + size]]
                await asyncio.gather(*futures)
                if pause_s:
                    await asyncio.sleep(pause_s)
        finally:
            await producer.stop()
    asyncio.run(go())


def test_rerouted_copies_are_applied_exactly_once_whatever_the_origin_header_says(spine_settings, tmp_path):
    s = spine_settings
    topic, recs_topic = s.topic(s.events_topic), s.topic(s.recommendations_topic)
    items = write_items(tmp_path, CATALOG)
    base = time.time() - 3600
    fillers, misplaced = users_at_home("filler", 300), users_at_home("moved", 180)
    expected = {u: 10 for u in fillers} | {u: 1 for u in misplaced}

    with WorkerProcess(s, tmp_path / "w", items=items) as worker:
        produce(s, topic, [{"user_id": "warm", "item_id": ITEM_IDS[0], "event_type": "view", "timestamp": base}])
        wait_until(lambda: consume(s, recs_topic, count=1, timeout_s=5) or None, timeout_s=90,
                   message="the worker's first recommendation")
        # 3,000 events queued on the home partition, then the misplaced ones on partition 1 as a trickle
        send_to(s, topic, HOME, [(u.encode(), event(u, n, base)) for n in range(10) for u in fillers])
        trickle = threading.Thread(target=send_to, args=(s, topic, 1, [(u.encode(), event(u, 0, base + 100))
                                                                       for u in misplaced], 0.04, 10))
        trickle.start()
        wait_until(lambda: scrape(worker.metrics_url(), timeout_s=1).get("stream_rec_events_rerouted_total", 0) >= 10,
                   timeout_s=60, interval_s=0.05, message="the first re-routes")
        worker.kill()  # kill -9 before the commit of the re-routed events' offsets
        trickle.join()

    raw = lambda origin_values, user, n: (user.encode(), event(user, n, base + 200),
                                          [(REROUTED_FROM.encode(), v) for v in origin_values])
    twin, pair, forged = users_at_home("twin", 1)[0], users_at_home("pair", 1)[0], users_at_home("forged", 1)[0]
    garbage = users_at_home("garbage", 5)
    with WorkerProcess(s, tmp_path / "w", items=items) as worker:
        same = raw([b"1:5"], twin, 0)
        asyncio.run(produce_raw(s, topic, HOME, [same, same, raw([b"1:6"], pair, 0), raw([b"1:6"], pair, 1)]))
        asyncio.run(produce_raw(s, topic, HOME, [raw([b"-1:-1"], garbage[0], 0), raw([b"0:-7"], garbage[1], 0),
                                                 raw([b"abc"], garbage[2], 0), raw([b"1:1", b"1:2"], garbage[3], 0),
                                                 raw([f"{HOME}:3".encode()], garbage[4], 0),
                                                 raw([b"1:999999999"], forged, 0)]))
        send_to(s, topic, 1, [(forged.encode(), event(forged, 1, base + 200))])  # a genuine re-route from 1
        expected |= {twin: 1, pair: 2, forged: 2}
        dlq = consume(s, s.topic(s.dlq_topic), count=len(garbage), timeout_s=60)
        changelog = changelog_topic_name(s)

        def caught_up() -> bool:
            states = asyncio.run(read_changelog_states(s, changelog))
            return all(states.get(u) is not None and states[u].n_events >= n for u, n in expected.items())

        wait_until(caught_up, timeout_s=120, interval_s=2, message="every user's events in the changelog")
        time.sleep(3)  # anything applied twice would land now
        m = scrape(worker.metrics_url())
        assert worker.alive(), worker.log_tail()

    states = asyncio.run(read_changelog_states(s, changelog))
    wrong = {u: (states.get(u) and states[u].n_events, n) for u, n in expected.items()
             if states.get(u) is None or states[u].n_events != n}
    copies = [r for r in consume(s, topic, idle_s=3, timeout_s=30) if r["partition"] == HOME
              and r["key"].decode() in misplaced and any(k == REROUTED_FROM for k, _ in r["headers"])]
    assert not wrong, f"{len(wrong)} users with another n_events than produced (got, want): {list(wrong.items())[:5]}"
    assert len(copies) > len(misplaced), "the kill came after the commit: no copy was sent twice (rerun)"
    reasons = sorted(r["value"]["reason"] for r in dlq)
    assert reasons == ["bad_header"] * len(garbage), reasons
    assert {base64.b64decode(r["value"]["original_key_b64"]).decode() for r in dlq} == set(garbage)
    assert not set(garbage) & set(states)  # not applied either
    print(f"\n[figures] reroute: {len(copies)} copies for {len(misplaced)} misplaced events after a kill -9; "
          f"duplicates skipped {m.get('stream_rec_events_duplicate_total')}; every n_events exact "
          f"({sum(expected.values())} events); DLQ {reasons}")
