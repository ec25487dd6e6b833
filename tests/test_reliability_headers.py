"""Headers and keys are bytes from outside too (issue 23, part 1).

A record whose header *key* is not UTF-8 made aiokafka's record reader raise in the consumer's fetch: the
worker crashed, and crashed again at every restart (uncommitted events, and the ``catalog`` and
``control`` topics, are read again at every start). ``stream_rec.io.records`` reads such a batch on with
the header keys escaped, and the layer that knows the record decides: an event goes to the DLQ as
``bad_header``, a catalog or control record is skipped with a WARNING and counted.

* ``test_records_with_non_utf8_header_keys_are_read_on``: the reader alone, on batches built in memory
  (plain and gzip): every record comes out, in order, with the header bytes kept (escaped).
* ``test_non_utf8_header_keys_values_and_keys_on_every_topic``: on ``events``, ``catalog`` and
  ``control``, a record with a non-UTF-8 header key, one with a non-UTF-8 header value and one with
  non-UTF-8 key bytes, each followed by good records that must all be processed, by the same worker
  process (pid unchanged); then a restart, which reads the poisoned ``catalog`` and ``control`` again,
  and goes on processing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

import pytest

from conftest import WorkerProcess, consume, produce, scrape, settle_after_poisons, wait_until, write_items
from stream_rec.io.topics import key_partition
from stream_rec_devtools.synthetic import make_catalog
from stream_rec_devtools.faults import produce_raw

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs signals")

CATALOG = make_catalog(items_per_theme=4)
ITEM_IDS = [r["item_id"] for r in CATALOG]
BAD = b"\xff\xfe"  # the header key: a UTF-16 BOM, not UTF-8


def test_records_with_non_utf8_header_keys_are_read_on():
    from aiokafka.consumer import fetcher
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    from stream_rec.io.records import contain_header_keys
    from stream_rec_devtools.faults import _RawHeaderKey

    contain_header_keys()
    for codec in (0, 1):  # none, gzip
        builder = _DefaultRecordBatchBuilderPy(2, codec, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                               base_sequence=0, batch_size=1 << 20)
        rows = [(b"a", b"1", [("ok", b"x")]), (b"b", b"2", [(_RawHeaderKey(BAD), b"v"), ("h", None)]),
                (None, b"3", [(_RawHeaderKey(b"\xc3\x28"), BAD)]), (b"d", None, [])]
        for n, (key, value, headers) in enumerate(rows):
            builder.append(n, timestamp=1_700_000_000_000 + n, key=key, value=value, headers=headers)
        records = fetcher.MemoryRecords(bytes(builder.build()) * 2)  # two batches
        out = []
        while records.has_next():
            batch = records.next_batch()
            assert batch.validate_crc()
            out += [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in batch]
        expected = [(n, key, value, [(str(h).encode("latin-1").decode("utf-8", "surrogateescape") if
                                      isinstance(h, _RawHeaderKey) else h, v) for h, v in headers],
                     1_700_000_000_000 + n) for n, (key, value, headers) in enumerate(rows)]
        assert out == expected * 2
        assert out[1][3][0][0].encode("utf-8", "surrogateescape") == BAD  # the bytes survive


def view(user: str, item: str, ts: float) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "event_type": "view", "timestamp": ts}).encode()


def test_non_utf8_header_keys_values_and_keys_on_every_topic(spine_settings, tmp_path):
    s = spine_settings
    now = time.time() - 60
    items = write_items(tmp_path, CATALOG)
    events, catalog, control = s.topic(s.events_topic), s.topic(s.catalog_topic), s.topic(s.control_topic)
    recs_topic = s.topic(s.recommendations_topic)
    good: list[str] = []

    def good_events(tag: str, item: str | None = None) -> None:
        users = [f"good-{tag}-{n}" for n in range(3)]
        good.extend(users)
        produce(s, events, [json.loads(view(u, item or ITEM_IDS[n], now + n)) for n, u in enumerate(users)])

    def raw(topic: str, key: bytes | None, value: bytes, headers) -> None:
        partition = key_partition(key, s.partitions) if topic == events and key else 0
        asyncio.run(produce_raw(s, topic, partition, [(key, value, headers)]))

    kinds = {"header_key": (b"poisoner", [(BAD, b"v")]), "header_value": (b"poisoner", [(b"trace", BAD)]),
             "key_bytes": (BAD, [])}
    with WorkerProcess(s, tmp_path / "w", items=items) as worker:
        good_events("warmup")
        wait_until(lambda: consume(s, recs_topic, count=3, timeout_s=5) or None, timeout_s=90,
                   message="the worker's first recommendations")
        pid = worker.proc.pid
        for kind, (key, headers) in kinds.items():
            raw(events, key, view("poisoner", ITEM_IDS[0], now + 10), headers)
            good_events(f"ev-{kind}")
            raw(catalog, key, json.dumps({"item_id": f"poison-{kind}", "title": "t"}).encode(), headers)
            produce(s, catalog, [{"item_id": f"after-{kind}", "title": f"new item after {kind}"}], key_field="item_id")
            raw(control, key, json.dumps({"type": "reload", "path": str(tmp_path / f"poison-{kind}")}).encode(),
                headers)
            produce(s, control, [{"type": "reload", "path": str(tmp_path / f"after-{kind}")}], key_field=None)
        time.sleep(1.5)  # the catalog follower polls every 0.5 s
        for kind in kinds:
            good_events(f"cat-{kind}", f"after-{kind}")  # unknown_item unless the catalog went on
        recs, dlq, m, log_text = settle_after_poisons(s, worker, pid, set(good), dlq_count=2, log_marks=[
            f"after-{k}" for k in kinds], timeout_s=90)

    # events: the header key -> bad_header, the key bytes -> key_mismatch (the user id is not the key), the
    # header value is nobody's business (the event is applied)
    reasons = sorted((r["value"]["reason"], base64.b64decode(r["value"]["original_key_b64"])) for r in dlq)
    assert reasons == [("bad_header", b"poisoner"), ("key_mismatch", BAD)], reasons
    assert any(r["value"]["user_id"] == "poisoner" for r in recs if isinstance(r["value"], dict))
    # catalog and control: the header-key records skipped and counted; the others are fine records
    assert m['stream_rec_records_skipped_total{reason="bad_header",topic="catalog"}'] == 1, m
    assert m['stream_rec_records_skipped_total{reason="bad_header",topic="control"}'] == 1, m
    assert "poison-header_value" in log_text and "poison-key_bytes" in log_text  # reloads handled
    assert "poison-header_key" not in log_text  # neither applied nor echoed

    # a restart reads the poisoned catalog and control topics from the beginning again
    skipped = 'stream_rec_records_skipped_total{reason="bad_header",topic="catalog"}'
    with WorkerProcess(s, tmp_path / "w", items=items) as worker:
        wait_until(lambda: scrape(worker.metrics_url()).get(skipped) == 1, timeout_s=90,
                   message="the restarted worker to read the catalog past its poison")
        good_events("restart", "after-header_key")  # an item that follows the poisoned record
        last = {f"good-restart-{n}" for n in range(3)}
        recs = consume(s, recs_topic, timeout_s=60,
                       until=lambda rs: last <= {r["value"]["user_id"] for r in rs if isinstance(r["value"], dict)})
        assert worker.alive(), worker.log_tail()
        m = scrape(worker.metrics_url())
    assert last <= {r["value"]["user_id"] for r in recs if isinstance(r["value"], dict)}
    print(f"\n[figures] headers: DLQ {reasons}; skipped after restart "
          f"{ {k: v for k, v in m.items() if 'records_skipped_total' in k} }")
