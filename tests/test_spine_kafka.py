"""The spine against a real embedded broker: end to end, DLQ, restart (RocksDB and changelog), metrics.

Each test starts `stream-rec worker` in a subprocess on its own topics (see conftest.py) and talks to it
only through Kafka and /metrics, like a user would.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jsonschema

from conftest import WorkerProcess, consume, produce, scrape, wait_until, write_items
from stream_rec_devtools.synthetic import make_world

TOPICS = Path(__file__).resolve().parents[1] / "topics"


def schema(name: str) -> dict:
    return json.loads((TOPICS / f"{name}.schema.json").read_text())


def small_world(n_users=6, per_user=(3, 4), seed=0):
    """Synthetic events re-stamped to "now" (events must be recent to be valid)."""
    world = make_world(n_users=n_users, events_per_user=per_user, items_per_theme=4, seed=seed)
    now = time.time()
    events = [dict(e, timestamp=round(now - 100 + n * 0.01, 3)) for n, e in enumerate(world.events)]
    return world.items, events


def latest_by_user(records: list[dict]) -> dict[str, dict]:
    out = {}
    for r in sorted(records, key=lambda r: r["value"]["produced_at"]):
        out[r["value"]["user_id"]] = r["value"]
    return out


def seen_by_user(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e["user_id"], []).append(e["item_id"])
    return out


def test_end_to_end_recommendations(spine_settings, tmp_path):
    s = spine_settings
    items, events = small_world()
    seen = seen_by_user(events)
    produce(s, s.topic("events"), events)
    with WorkerProcess(s, tmp_path, items=write_items(tmp_path, items)) as worker:
        # a user's events may span micro-batches: wait until each user's newest record covers them all
        recs = consume(s, s.topic("recommendations"), timeout_s=60,
                       until=lambda rs: all(latest_by_user(rs).get(u, {}).get("history") == items_seen[-5:]
                                            for u, items_seen in seen.items()))
        assert worker.alive(), worker.log_tail()
    users = {r["value"]["user_id"] for r in recs}
    assert users == set(seen), worker.log_tail()
    # one record per touched user and micro-batch: at least one each, never more than their events
    assert len(recs) <= len(events)
    validator = jsonschema.Draft202012Validator(schema("recommendations"))
    for r in recs:
        validator.validate(r["value"])
        assert r["key"] == r["value"]["user_id"].encode()
        assert r["value"]["model_version"].startswith("untrained-")
        assert r["value"]["latency_ms"] >= 0
    for user, rec in latest_by_user(recs).items():
        got = [i["item_id"] for i in rec["items"]]
        assert len(got) == s.top_k
        assert not set(got) & set(seen[user]), "seen items must be excluded"
        assert rec["history"] == seen[user][-5:]


BAD_RECORDS = [  # (value, key, expected reason)
    (b"{not json", b"u-bad", "bad_json"),
    (b"[1, 2, 3]", b"u-bad", "not_an_object"),
    (json.dumps({"user_id": "u-bad", "event_type": "view"}).encode(), b"u-bad", "missing_field"),
    (json.dumps({"user_id": "u-bad", "item_id": "space-00", "event_type": "teleport",
                 "timestamp": time.time()}).encode(), b"u-bad", "unknown_event_type"),
    (json.dumps({"user_id": "u-bad", "item_id": {"x": 1}, "event_type": "view",
                 "timestamp": time.time()}).encode(), b"u-bad", "wrong_type"),
    (b'{"user_id": "u-bad", "item_id": "space-00", "event_type": "view", "timestamp": NaN}', b"u-bad",
     "bad_timestamp"),
    (json.dumps({"user_id": "u-bad", "item_id": "space-00", "event_type": "view",
                 "timestamp": time.time() + 30 * 86400}).encode(), b"u-bad", "bad_timestamp"),
    (json.dumps({"user_id": "u-bad", "item_id": "no-such-item", "event_type": "view",
                 "timestamp": time.time()}).encode(), b"u-bad", "unknown_item"),
    (json.dumps({"user_id": "u-other", "item_id": "space-00", "event_type": "view",
                 "timestamp": time.time()}).encode(), b"u-bad", "key_mismatch"),
    (b"x" * 20000, b"u-bad", "oversize"),
    (b"", b"u-bad", "empty"),
]


def test_dlq_gets_every_bad_event_with_a_reason(spine_settings, tmp_path):
    s = spine_settings
    items, good = small_world(n_users=4, per_user=(2, 3), seed=1)
    values = [json.dumps(e).encode() for e in good] + [v for v, _, _ in BAD_RECORDS]
    keys = [e["user_id"].encode() for e in good] + [k for _, k, _ in BAD_RECORDS]
    # interleave good and bad, as a real stream would
    order = sorted(range(len(values)), key=lambda n: (n * 7919) % len(values))
    produce(s, s.topic("events"), [values[n] for n in order], keys=[keys[n] for n in order])
    with WorkerProcess(s, tmp_path, items=write_items(tmp_path, items)) as worker:
        dlq = consume(s, s.topic("events-dlq"), count=len(BAD_RECORDS), timeout_s=60)
        recs = consume(s, s.topic("recommendations"), timeout_s=30,
                       until=lambda rs: {r["value"]["user_id"] for r in rs} >= set(seen_by_user(good)))
        assert worker.alive(), worker.log_tail()
    assert len(dlq) == len(BAD_RECORDS), worker.log_tail()
    validator = jsonschema.Draft202012Validator(schema("events-dlq"))
    by_bytes = {}
    for r in dlq:
        validator.validate(r["value"])
        by_bytes[base64.b64decode(r["value"]["original_value_b64"])] = r["value"]
        assert r["value"]["topic"] == s.topic("events")
    for value, key, reason in BAD_RECORDS:
        assert by_bytes[value]["reason"] == reason, (value[:60], by_bytes[value])
        assert base64.b64decode(by_bytes[value]["original_key_b64"]) == key
    assert {r["value"]["user_id"] for r in recs} == set(seen_by_user(good))
    assert len(dlq) + len(good) == len(values)


def test_restart_recovers_state(spine_settings, tmp_path):
    """Stop the worker, restart it on the same data dir: history continues. Then start one on an EMPTY
    data dir with the same app id: the state must come back from the changelog topic, which proves the
    micro-batched writes landed on the right changelog partitions."""
    s = spine_settings
    items, events = small_world(n_users=5, per_user=(4, 4), seed=2)
    item_file = write_items(tmp_path, items)

    def phase(batch: list[dict], settings, expect_history: dict[str, list[str]]) -> None:
        start = time.time()
        produce(settings, settings.topic("events"), batch)
        with WorkerProcess(settings, tmp_path, items=item_file) as worker:
            def complete(rs):  # a user's events may span micro-batches: wait for each user's full history
                latest = latest_by_user([r for r in rs if r["value"]["produced_at"] >= start])
                return all(u in latest and latest[u]["history"] == h[-5:] for u, h in expect_history.items())
            recs = consume(settings, settings.topic("recommendations"), timeout_s=60, until=complete)
            assert worker.alive(), worker.log_tail()
            try:
                counters = {k: v for k, v in scrape(worker.metrics_url()).items() if "_total" in k}
            except OSError as exc:
                counters = {"scrape failed": str(exc)}
            assert worker.stop() == 0, worker.log_tail()
        latest = latest_by_user([r for r in recs if r["value"]["produced_at"] >= start])
        missing = set(expect_history) - set(latest)
        assert not missing, (f"no recommendation for {sorted(missing)}; worker counters {counters}; "
                             f"log: {worker.log_path}\n{worker.log_tail(3000)}")
        for user, history in expect_history.items():
            assert latest[user]["history"] == history[-5:], (user, latest[user], worker.log_tail())
            assert not {i["item_id"] for i in latest[user]["items"]} & set(history)

    # the synthetic chains may repeat an item, so split by position, not by value
    per_user: dict[str, list[dict]] = {}
    for e in events:
        per_user.setdefault(e["user_id"], []).append(e)
    first = [e for evs in per_user.values() for e in evs[:2]]
    second = [e for evs in per_user.values() for e in evs[2:3]]
    third = [e for evs in per_user.values() for e in evs[3:4]]
    hist = lambda k: {u: [e["item_id"] for e in evs[:k]] for u, evs in per_user.items()}

    phase(first, s, hist(2))
    phase(second, s, hist(3))  # same data dir: RocksDB state
    fresh = s.replace(data_dir=tmp_path / "empty-data-dir")
    phase(third, fresh, hist(4))  # empty data dir: state rebuilt from the changelog


def test_metrics_match_what_was_produced(spine_settings, tmp_path):
    s = spine_settings
    items, good = small_world(n_users=5, per_user=(2, 3), seed=3)
    bad = [(b"{oops", b"u-x"), (json.dumps({"user_id": "u-x"}).encode(), b"u-x")]
    produce(s, s.topic("events"), [json.dumps(e).encode() for e in good] + [v for v, _ in bad],
            keys=[e["user_id"].encode() for e in good] + [k for _, k in bad])
    total = len(good) + len(bad)
    with WorkerProcess(s, tmp_path, items=write_items(tmp_path, items)) as worker:
        m = wait_until(lambda: (lambda m: m if m.get("stream_rec_events_consumed_total", 0) >= total
                                and m.get("stream_rec_recommendations_emitted_total", 0) >= 5 else None)(
            scrape(worker.metrics_url())), timeout_s=60, message="metrics to count every event")
        time.sleep(2.5)  # one lag-timer tick
        m = scrape(worker.metrics_url())
        assert worker.alive(), worker.log_tail()
    assert m["stream_rec_events_consumed_total"] == total
    assert m['stream_rec_events_invalid_total{reason="bad_json"}'] == 1
    assert m['stream_rec_events_invalid_total{reason="missing_field"}'] == 1
    assert m["stream_rec_events_dlq_total"] == len(bad)
    # one record per touched user per micro-batch: the counter must match the topic exactly
    recs = consume(s, s.topic("recommendations"), count=int(m["stream_rec_recommendations_emitted_total"]) + 1,
                   timeout_s=5)
    assert m["stream_rec_recommendations_emitted_total"] == len(recs) >= len(seen_by_user(good))
    assert m["stream_rec_event_to_recommendation_seconds_count"] == len(good)
    assert m["stream_rec_consume_to_recommendation_seconds_count"] == len(good)
    assert m['stream_rec_batch_size_events_sum{stage="events"}'] == total
    assert m['stream_rec_model_step_seconds_count{stage="step"}'] >= 1
    assert m["stream_rec_users_in_state"] == len(seen_by_user(good))
    assert m["stream_rec_consumer_lag_messages"] == 0
    assert m['stream_rec_model_info{trained="false",version="untrained-gru-0"}'] == 1


def test_delete_user_erases_state_through_the_changelog(spine_settings, tmp_path):
    """`stream-rec forget` events: the state is dropped (tombstone on the user's changelog partition) and
    events after the deletion start a fresh history."""
    s = spine_settings
    items, _ = small_world()
    now = time.time() - 50
    ids = [i["item_id"] for i in items]
    view = lambda user, item, dt: {"user_id": user, "item_id": item, "event_type": "view", "timestamp": now + dt}
    delete = lambda user, dt: {"user_id": user, "event_type": "delete_user", "timestamp": now + dt}
    produce(s, s.topic("events"), [view("ann", ids[0], 0), view("ann", ids[1], 1), view("ben", ids[2], 0),
                                   delete("ann", 2), view("ann", ids[5], 3), delete("ben", 1)])
    with WorkerProcess(s, tmp_path, items=write_items(tmp_path, items)) as worker:
        recs = consume(s, s.topic("recommendations"), timeout_s=60,
                       until=lambda rs: any(r["value"]["user_id"] == "ann" and r["value"]["history"] == [ids[5]]
                                            for r in rs))
        changelog = consume(s, f"{s.app_id}-user-state-changelog", timeout_s=30,
                            until=lambda rs: any(r["key"] == b"ben" and r["value"] is None for r in rs))
        assert worker.alive(), worker.log_tail()
    assert latest_by_user(recs)["ann"]["history"] == [ids[5]], worker.log_tail()
    ben = [r for r in changelog if r["key"] == b"ben"]
    assert ben and ben[-1]["value"] is None, "ben's last changelog record must be a tombstone"
    ann = [r for r in changelog if r["key"] == b"ann"]
    assert len({r["partition"] for r in ann}) == 1, "a user's changelog records stay on one partition"


def test_traced_worker_writes_every_leg_of_its_batches(spine_settings, tmp_path):
    """``STREAM_REC_TRACE_FILE`` (the latency microscope): the worker's trace, written when it stops,
    holds the fetch responses and hand-overs of the consumer thread (which wrap private aiokafka parts),
    every micro-batch with its marks and phases, and their acknowledgements -- covering every event."""
    from dataclasses import replace

    trace = tmp_path / "trace.jsonl"
    s = replace(spine_settings, trace_file=str(trace))
    items, events = small_world(n_users=8, per_user=(4, 6), seed=3)
    with WorkerProcess(s, tmp_path, items=write_items(tmp_path, items)) as worker:
        produce(s, s.topic("events"), events)
        consume(s, s.topic("recommendations"), timeout_s=60,
                until=lambda rs: {r["value"]["user_id"] for r in rs} == {e["user_id"] for e in events})
        assert worker.alive(), worker.log_tail()
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = {r[0] for r in records}
    assert {"response", "fetch", "batch", "delivered"} <= kinds, kinds
    batches = [r for r in records if r[0] == "batch"]
    assert sum(len(b[4]) for b in batches) == len(events)  # every event in exactly one traced batch
    marks = [m[0] for m in batches[-1][5]]
    assert marks[0] == "start" and "process" in marks and "sent" in marks, marks
    assert {p for p, _ in batches[-1][6]} >= {"validate", "step", "rank"}
    assert {r[1] for r in records if r[0] == "delivered"} == {b[1] for b in batches}
