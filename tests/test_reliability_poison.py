"""No single record stops a worker: poison records on every topic it reads, and what an agent error does.

* ``test_poison_records_on_every_topic_worker_keeps_going``: nested, huge, binary, UTF-16 and BOM-prefixed
  records on ``events``, ``catalog`` and ``control``, each kind followed by good records that must all be
  processed, by the same worker process (pid unchanged), with every poison accounted for: events in the
  DLQ with a reason (and a DLQ record that fits the producer, the original cut and flagged when large),
  catalog/control records logged and counted in ``stream_rec_records_skipped_total``.
* ``test_agent_error_exits_without_committing_past_the_batch``: an agent body that raises (what is left
  when a record is not contained, e.g. a failed delivery) stops the worker process with a non-zero status
  and the committed offset stays at the failed batch -- Faust's own ``take_events`` acks a failed batch in
  a ``finally``, and its default supervisor restarts the agent on the next events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import WorkerProcess, consume, produce, settle_after_poisons, wait_until, write_items
from stream_rec_devtools.synthetic import make_catalog

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and signals")

CATALOG = make_catalog(items_per_theme=4)
ITEM_IDS = [r["item_id"] for r in CATALOG]
HUGE_BYTES = 800_000  # the 800 KB record: over every limit, under the test producer's 1 MB request


def with_nested(doc: dict, field: str, depth: int = 1000) -> bytes:
    """``doc`` as JSON with ``doc[field]`` = ``depth`` nested arrays (written as text: json.dumps itself
    would recurse that deep)."""
    return json.dumps({**doc, field: "NESTED"}).encode().replace(b'"NESTED"', b"[" * depth + b"1" + b"]" * depth)


def poisons(good: dict, rng: random.Random) -> dict[str, bytes]:
    """The five poison kinds, built around one otherwise good record ``good``."""
    text = json.dumps(good)
    return {
        "nested": with_nested(good, "context"),
        "huge": json.dumps({**good, "context": {"text": "x" * HUGE_BYTES}}).encode(),
        "binary": bytes(rng.getrandbits(8) for _ in range(300)),
        "utf16": text.encode("utf-16"),  # with its BOM (FF FE), as Windows tools write it
        "bom": b"\xef\xbb\xbf" + text.encode(),
    }


def test_poison_records_on_every_topic_worker_keeps_going(spine_settings, tmp_path):
    s = spine_settings
    rng = random.Random(5)
    now = time.time() - 60
    items = write_items(tmp_path, CATALOG)
    events_topic, catalog_topic, control_topic = (s.topic(s.events_topic), s.topic(s.catalog_topic),
                                                  s.topic(s.control_topic))
    view = lambda user, item, dt=0.0: {"user_id": user, "item_id": item, "event_type": "view", "timestamp": now + dt}
    good_users: list[str] = []

    def good_events(tag: str, item: str | None = None) -> list[dict]:
        out = []
        for n in range(3):
            user = f"good-{tag}-{n}"
            good_users.append(user)
            out.append(view(user, item or rng.choice(ITEM_IDS), n))
        return out

    with WorkerProcess(s, tmp_path, items=items) as worker:
        produce(s, events_topic, good_events("warmup"))
        wait_until(lambda: consume(s, s.topic(s.recommendations_topic), count=3, timeout_s=5) or None,
                   timeout_s=90, message="the worker's first recommendations")
        pid = worker.proc.pid

        # events: each poison kind, then good events
        event_poisons = poisons(view("poisoner", ITEM_IDS[0]), rng)
        for kind, value in event_poisons.items():
            produce(s, events_topic, [value], keys=[b"poisoner"])
            produce(s, events_topic, good_events(f"ev-{kind}"))
        # catalog: each poison kind, then a good record of a new item and events that need that item
        catalog_poisons = poisons({"item_id": "poison-item", "title": "t", "attributes": {"a": "b"}}, rng)
        catalog_poisons["nested"] = with_nested({"item_id": "poison-item"}, "attributes")
        for kind, value in catalog_poisons.items():
            produce(s, catalog_topic, [value], keys=[b"poison-item"])
            new_item = f"after-{kind}"
            produce(s, catalog_topic, [{"item_id": new_item, "title": f"new item after {kind}"}], key_field="item_id")
            time.sleep(1.0)  # the catalog follower polls every 0.5 s
            produce(s, events_topic, good_events(f"cat-{kind}", new_item))
        # control: each poison kind, then a well-formed reload request (for a path that does not exist)
        control_poisons = poisons({"type": "reload", "path": "/nowhere"}, rng)
        control_poisons["nested"] = with_nested({"type": "reload"}, "path")
        reload_paths = []
        for kind, value in control_poisons.items():
            produce(s, control_topic, [value], key_field=None)
            reload_paths.append(str(tmp_path / f"no-model-after-{kind}"))
            produce(s, control_topic, [{"type": "reload", "path": reload_paths[-1]}], key_field=None)
            produce(s, events_topic, good_events(f"ctl-{kind}"))

        recs, dlq, m, log_text = settle_after_poisons(s, worker, pid, set(good_users), len(event_poisons),
                                                      log_marks=reload_paths)

    # events: each poison in the DLQ with its reason, the DLQ record within the producer's limits
    reasons = {base64.b64decode(r["value"]["original_value_b64"]): r["value"]["reason"] for r in dlq}
    by_kind = {kind: reasons.get(value if kind != "huge" else value[:128 * 1024]) for kind, value in event_poisons.items()}
    assert by_kind == {"nested": "bad_json", "huge": "oversize", "binary": "bad_json", "utf16": "bad_json",
                       "bom": "bad_json"}, by_kind
    huge = next(r for r in dlq if r["value"]["reason"] == "oversize")
    assert huge["value"]["original_truncated"] is True and huge["value"]["original_size"] == len(event_poisons["huge"])
    assert len(json.dumps(huge["value"])) < 512 * 1024
    # catalog and control: logged and counted, never applied
    skipped = {k: v for k, v in m.items() if k.startswith("stream_rec_records_skipped_total")}
    assert sum(v for k, v in skipped.items() if 'topic="catalog"' in k) == len(catalog_poisons), skipped
    assert sum(v for k, v in skipped.items() if 'topic="control"' in k) == len(control_poisons), skipped
    assert m['stream_rec_records_skipped_total{reason="oversize",topic="catalog"}'] == 1
    print(f"\n[figures] poison: events DLQ {by_kind}; skipped {skipped}; huge DLQ record "
          f"{len(json.dumps(huge['value']))} bytes for a {len(event_poisons['huge'])}-byte event")


# --- an agent error ----------------------------------------------------------------------------------------
CRASH_APP = '''
import sys, faust, mode
from stream_rec.worker.batching import BatchPolicy
from stream_rec.worker.intake import take_batches
broker, topic, group, datadir = sys.argv[1:5]
app = faust.App(group, broker="kafka://" + broker, datadir=datadir, web_enabled=False,
                broker_session_timeout=6.0, consumer_auto_offset_reset="earliest", topic_partitions=1)
events = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                   partitions=1)

@app.agent(events, supervisor_strategy=mode.CrashingSupervisor)  # as stream_rec.worker.app.declare_agent
async def agent(stream):
    async for batch in take_batches(stream, BatchPolicy(max_events=10, fill_max_s=0.05)):
        if any(e.message.value == b"fail" for e in batch):
            raise RuntimeError("the batch with the failing record")

faust.Worker(app, loglevel="info").execute_from_commandline()
'''


def test_agent_error_exits_without_committing_past_the_batch(broker, tmp_path):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_rec.io.kafka import ensure_topics
    from conftest import make_settings

    settings = make_settings(broker, tmp_path / "data")
    asyncio.run(ensure_topics(settings))
    topic = settings.topic(settings.events_topic)
    fail_at = 150
    produce(settings, topic, [b"fail" if n == fail_at else b"ok" for n in range(300)], keys=[b"k"] * 300)
    script = tmp_path / "crash_app.py"
    script.write_text(CRASH_APP)
    group = f"crash-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, str(script), broker, topic, group, str(tmp_path / "faust")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "the batch with the failing record" in proc.stdout + proc.stderr

    async def committed() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # a full metadata fetch
            parts = sorted(consumer.partitions_for_topic(topic))
            return {p: await consumer.committed(TopicPartition(topic, p)) for p in parts}
        finally:
            await consumer.stop()

    offsets = asyncio.run(committed())
    partition = next(p for p, o in offsets.items() if o is not None)
    # all 300 records share one key (one partition); the batch holding offset 150 failed: nothing at or
    # after it may be committed, and the batches before it were
    assert offsets[partition] is not None and offsets[partition] <= fail_at, offsets
    assert offsets[partition] >= fail_at - 20, offsets
