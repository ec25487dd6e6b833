"""Reliability and privacy building blocks, without a broker (fast).

The broker-backed proofs are in tests/test_reliability_faults.py; these check the pieces they rely on:
the fuzz corpus really is malformed in every advertised way (and the validator rejects all of it, which
is the "worker never crashes on input" promise at the function level), the process fault tools act on
real processes, and the privacy functions keep raw ids out.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import pytest

from stream_rec.commands.forget import delete_user_event
from stream_rec_devtools.faults import FUZZ_KINDS, fuzz_corpus, paused
from stream_rec_devtools.procfs import RssSampler, proc_status_kb
from stream_rec.privacy import pseudonymize
from stream_rec.state import UserState, encode_state
from stream_rec.validation import DELETE_USER, Invalid, validate_event

ITEMS = [f"item-{i}" for i in range(30)]


# --- privacy ---------------------------------------------------------------------------------------

def test_pseudonymize_is_keyed_stable_and_hides_the_id():
    a = pseudonymize("alice@example.com", "k1")
    assert a == pseudonymize("alice@example.com", "k1")  # same user -> same state key, every worker
    assert a != pseudonymize("alice@example.com", "k2")  # the key matters (no dictionary attack without it)
    assert a != pseudonymize("bob@example.com", "k1")
    assert "alice" not in a and a.startswith("u_") and len(a) == 2 + 64
    assert pseudonymize("alice@example.com", "") == "alice@example.com"  # off by default
    # not idempotent on purpose: a pseudonym sent as a user id must not address that pseudonym's state
    assert pseudonymize(a, "k1") != a


def test_delete_user_event_shape():
    ev = delete_user_event("alice", now=1_700_000_000.0)
    assert ev == {"user_id": "alice", "event_type": DELETE_USER, "timestamp": 1_700_000_000.0}
    with pytest.raises(ValueError):
        delete_user_event("  ")


# --- fuzz corpus -----------------------------------------------------------------------------------

def test_fuzz_corpus_is_all_rejected_and_good_events_all_accepted():
    corpus = fuzz_corpus(10_000, 1_000, ITEMS, seed=1)
    assert sum(not e.good for e in corpus) == 10_000 and sum(e.good for e in corpus) == 1_000
    kinds = collections.Counter(e.kind for e in corpus)
    assert set(kinds) == set(FUZZ_KINDS) | {"good"}
    known = set(ITEMS).__contains__
    for e in corpus:
        result = validate_event(e.value, key=e.key, known_item=known)
        if e.good:
            assert not isinstance(result, Invalid), (e, result)
            assert result.user_id == e.user_id and result.item_id == e.item_id
        else:
            assert isinstance(result, Invalid) and result.reason, e


def test_every_accepted_event_can_be_stored_even_without_a_catalog():
    """Before a catalog is known the validator accepts any item id: whatever it accepts must survive the
    state codec (a JSON-escaped lone surrogate is valid JSON but not encodable UTF-8), and come back."""
    from stream_rec.state import ItemKeys, decode_state

    results = [validate_event(e.value, key=e.key, known_item=None) for e in fuzz_corpus(3_000, 100, ITEMS, seed=2)]
    accepted = [r for r in results if not isinstance(r, Invalid)]
    unknown = [r for r in accepted if r.item_id not in ITEMS]  # accepted only because no catalog is known yet
    assert len(accepted) - len(unknown) == 100 and len(unknown) >= 50, (len(accepted), len(unknown))
    for result in accepted:
        entry = (result.item_id, result.timestamp)
        assert decode_state(encode_state(UserState(history=[entry])), items=ItemKeys([result.item_id])).history == [entry]
        result.user_id.encode("utf-8")


# --- process fault tools ---------------------------------------------------------------------------

def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and POSIX signals")
def test_paused_stops_and_resumes_the_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with paused(proc):
            time.sleep(0.2)
            assert _proc_state(proc.pid) == "T"
        time.sleep(0.1)
        assert _proc_state(proc.pid) in {"S", "R"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_rss_sampler_sees_an_allocation():
    code = "import time; b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with RssSampler(proc.pid, interval_s=0.05) as rss:
            proc.wait(20)
        assert rss.peak_mb >= 80, rss.samples
        assert rss.hwm_mb is not None and rss.hwm_mb >= 80
        assert proc_status_kb(proc.pid, "VmRSS") is None  # gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_listening_sockets_reports_bound_addresses():
    from stream_rec_devtools.procfs import listening_sockets

    code = ("import socket, time\n"
            "a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen()\n"
            "b = socket.socket(); b.bind(('0.0.0.0', 0)); b.listen()\n"
            "print(a.getsockname()[1], b.getsockname()[1], flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        local_port, any_port = map(int, proc.stdout.readline().split())
        found = set(listening_sockets(proc.pid))
        assert ("127.0.0.1", local_port) in found and ("0.0.0.0", any_port) in found
    finally:
        proc.kill()
        proc.wait()


# --- privacy in the pure pipeline --------------------------------------------------------------------

def _batch(records: list[tuple[str, dict]], partition: int = 0, first_offset: int = 0):
    import json as _json

    from stream_rec.pipeline import Incoming
    return [Incoming(_json.dumps(doc).encode(), user.encode(), "events", partition, first_offset + i, time.time())
            for i, (user, doc) in enumerate(records)]


@pytest.fixture(scope="module")
def small_model():
    import torch

    from stream_rec.model.recommender import Recommender
    torch.set_num_threads(1)
    return Recommender.untrained(ITEMS, device="cpu")


def _view(user: str, item: str, ts: float) -> tuple[str, dict]:
    return user, {"user_id": user, "item_id": item, "event_type": "view", "timestamp": ts}


def test_delete_user_event_erases_state_and_later_events_start_fresh(small_model):
    from stream_rec.pipeline import PipelineConfig, process_batch, read_state, states_in
    from stream_rec.state import decode_state

    now = time.time() - 100
    store: dict[str, bytes] = {}
    first = process_batch(_batch([_view("ann", ITEMS[0], now), _view("ann", ITEMS[1], now + 1),
                                  _view("ben", ITEMS[2], now)]), states_in(store), small_model, PipelineConfig())
    store.update(first.states)
    assert decode_state(store["ann"]).n_events == 2

    # one batch: an event, the deletion, then a new event of the same user; ben untouched
    batch = _batch([_view("ann", ITEMS[3], now + 2), ("ann", delete_user_event("ann", now=now + 3)),
                    _view("ann", ITEMS[4], now + 4), _view("ben", ITEMS[5], now + 1)], first_offset=3)
    result = process_batch(batch, states_in(store), small_model, PipelineConfig())
    assert result.deleted == {"ann": 1}
    assert not result.dlq
    ann = read_state(result.states["ann"], small_model)
    assert ann.n_events == 1 and ann.seen_items() == [ITEMS[4]], "state after the deletion must start fresh"
    assert decode_state(result.states["ben"]).n_events == 2

    # a deletion alone: no new state, only the delete (the agent turns it into a tombstone)
    alone = process_batch(_batch([("ben", delete_user_event("ben", now=now + 5))], first_offset=10), states_in(store),
                          small_model, PipelineConfig())
    assert alone.deleted == {"ben": 0} and "ben" not in alone.states and not alone.recommendations
    # and it is validated like any event: wrong key -> DLQ
    bad = process_batch(_batch([("mallory", delete_user_event("ben", now=now))]), states_in(store), small_model,
                        PipelineConfig())
    assert not bad.deleted and bad.dlq[0]["reason"] == "key_mismatch"


def test_pseudonymize_on_ingest_keeps_raw_ids_out_of_state_and_output(small_model):
    from stream_rec.pipeline import PipelineConfig, process_batch, states_in

    now = time.time() - 100
    config = PipelineConfig(pseudonymize_key="k")
    store: dict[str, bytes] = {}
    result = process_batch(_batch([_view("ann@example.com", ITEMS[0], now)]), states_in(store), small_model, config)
    hashed = pseudonymize("ann@example.com", "k")
    assert list(result.states) == [hashed]
    assert [r["user_id"] for r in result.recommendations] == [hashed]
    assert b"ann@example.com" not in result.states[hashed]
    store.update(result.states)
    deleted = process_batch(_batch([("ann@example.com", delete_user_event("ann@example.com", now=now))],
                                   first_offset=1), states_in(store), small_model, config)
    assert deleted.deleted == {hashed: 0}


# --- bounded parsing of external bytes (stream_rec/boundedjson.py) ------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads alone: RecursionError


@pytest.mark.parametrize("raw, reason", [
    (DEEP, "bad_json"),
    (b'{"a": ' + b"[" * 33 + b"]" * 33 + b"}", "bad_json"),  # one level over the limit
    (b"\xef\xbb\xbf{}", "bad_json"),  # UTF-8 byte order mark
    ('{"a": 1}'.encode("utf-16"), "bad_json"),  # UTF-16 with BOM
    ('{"a": 1}'.encode("utf-16-le"), "bad_json"),  # UTF-16 without BOM: valid UTF-8 with NULs, not JSON
    (b'{"a": "\xff"}', "bad_json"),
    (b"1" * 10_000, "bad_json"),  # an integer beyond int's string-conversion limit
    (b"{}" + b" " * 100, "oversize"),
])
def test_bounded_parse_rejects_with_a_reason_and_never_recurses(raw, reason):
    from stream_rec import boundedjson

    with pytest.raises(boundedjson.JSONRejected) as info:
        boundedjson.parse(raw, max_bytes=100 if reason == "oversize" else 1 << 20)
    assert info.value.reason == reason


def test_bounded_parse_counts_depth_outside_strings_only():
    from stream_rec import boundedjson

    brackets_in_text = b'{"t": "' + b"[{" * 500 + b'\\"]]"}'
    assert boundedjson.parse(brackets_in_text, max_bytes=1 << 20) == {"t": "[{" * 500 + '"]]'}
    wide = b"[" + b",".join([b"[1]"] * 1000) + b"]"  # 1,001 brackets, depth 2
    assert len(boundedjson.parse(wide, max_bytes=1 << 20)) == 1000
    exact = b"[" * 32 + b"]" * 32
    assert boundedjson.parse(exact, max_bytes=100) is not None
    assert boundedjson.nesting_depth(DEEP.decode(), 32) == 33  # stops counting past the limit


def test_every_parser_of_external_bytes_survives_the_poison_kinds():
    from stream_rec.io.topics import reload_request
    from stream_rec.recsys.context import context_text_of
    from stream_rec.validation import validate_catalog_record

    nested = b'{"item_id": "x", "type": "reload", "context": {"text": "q"}, "attributes": ' + DEEP + b"}"
    for raw in (nested, b"\xef\xbb\xbf" + b'{"item_id": "x"}', '{"item_id": "x"}'.encode("utf-16"),
                bytes(range(256)), b'{"item_id": "x", "title": "' + b"y" * 1_000_000 + b'"}'):
        assert isinstance(validate_event(raw, key=b"u"), Invalid)
        assert isinstance(validate_catalog_record(raw), Invalid)
        assert reload_request(raw) is False
        assert context_text_of(raw) == ""
    assert validate_catalog_record(b'{"item_id": 7, "title": "t"}') == {"item_id": "7", "title": "t"}
    assert validate_catalog_record(None) is None  # a tombstone: nothing to apply, nothing to report
    assert validate_catalog_record(b'{"item_id": true}').reason == "wrong_type"


def test_dlq_record_of_a_huge_record_is_cut_and_says_so():
    import base64
    import json as json_

    from stream_rec.pipeline import Incoming, dlq_record

    msg = Incoming(b"x" * 900_000, b"k" * 5000, "events", 0, 7, time.time())
    rec = dlq_record(msg, Invalid("oversize", "d" * 5000), time.time(), max_original_bytes=1000)
    assert base64.b64decode(rec["original_value_b64"]) == b"x" * 1000
    assert rec["original_truncated"] and rec["original_size"] == 900_000 and rec["original_key_truncated"]
    assert len(rec["detail"]) == 500 and len(json_.dumps(rec)) < 5000
    small = dlq_record(Incoming(b"{}", b"k", "events", 0, 8, 0.0), Invalid("empty", ""), 0.0)
    assert not small["original_truncated"] and base64.b64decode(small["original_value_b64"]) == b"{}"


def test_a_record_that_makes_processing_raise_goes_to_the_dlq_and_the_rest_is_processed(small_model):
    from stream_rec.pipeline import PipelineConfig, process_batch_isolating, read_state, states_in

    class Tripwire:  # the model, except that stepping one item raises (a bug a record can trigger)
        def __init__(self, model, bad_row):
            self._model, self._bad = model, bad_row

        def __getattr__(self, name):
            return getattr(self._model, name)

        def step(self, states, rows, gaps):
            if self._bad in rows:
                raise FloatingPointError("tripwire")
            return self._model.step(states, rows, gaps)

    model = Tripwire(small_model, small_model.row_of[ITEMS[5]])
    now = time.time() - 100
    errors = []
    batch = _batch([_view("ann", ITEMS[0], now), _view("ben", ITEMS[5], now), _view("ann", ITEMS[1], now + 1),
                    _view("cat", ITEMS[2], now)])
    out = process_batch_isolating(batch, states_in({}), model, PipelineConfig(), on_error=errors.append)
    assert len(errors) == 1 and isinstance(errors[0], FloatingPointError)
    assert [d["reason"] for d in out.dlq] == ["processing_error"] and out.dlq[0]["offset"] == 1
    assert "tripwire" in out.dlq[0]["detail"] and out.invalid == {"processing_error": 1}
    assert read_state(out.states["ann"], small_model).seen_items() == [ITEMS[0], ITEMS[1]]  # on its own first event
    assert out.last_index == {"ann": 2, "cat": 3} and "ben" not in out.states and out.applied == 3


def test_catalog_and_control_records_that_cannot_be_applied_are_skipped_one_by_one():
    """worker/follow.py: a poll's records are applied together; when that raises, one at a time, and the
    record that raises again is skipped (counted under its topic) while the others are applied."""
    import asyncio
    from types import SimpleNamespace

    from stream_rec import metrics
    from stream_rec.worker.follow import apply_contained

    applied: list[list[str]] = []

    async def apply(records):
        values = [value for _, value in records]
        if "bad" in values:
            raise ValueError("the model cannot take this record")
        applied.append(values)

    skipped = metrics.RECORDS_SKIPPED.labels(topic="catalog", reason="apply_failed")
    before = skipped._value.get()
    records = [(SimpleNamespace(partition=0, offset=n, value=b"{}"), v) for n, v in enumerate(["a", "bad", "c"])]
    asyncio.run(apply_contained("catalog", records, apply))
    assert applied == [["a"], ["c"]] and skipped._value.get() == before + 1
    asyncio.run(apply_contained("catalog", records[:1], apply))  # a good poll: applied in one call
    assert applied[-1] == ["a"] and skipped._value.get() == before + 1


def test_stall_watchdog():
    import doctest

    from stream_rec.worker import watchdog

    assert doctest.testmod(watchdog).failed == 0
    t = [0.0]
    dog = watchdog.StallWatchdog(warn_after_s=10, exit_after_s=0, clock=lambda: t[0])
    t[0] = 1e6
    assert dog.check(waiting=1) == 0.0  # events just seen waiting after a long idle time: not a stall yet
    t[0] += 11
    assert dog.check(waiting=1) == 11 and not dog.should_exit  # exit_after_s=0: never exits
    assert dog.check(waiting=0, silent_s=10) == 10 and dog.check(waiting=0, silent_s=5) == 0


def test_in_flight_batches_tell_how_long_a_delivery_waits():
    import asyncio

    from stream_rec.worker.sends import InFlightBatches

    async def go():
        t = [0.0]
        batches = InFlightBatches(4, clock=lambda: t[0])
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        batches.add([first])
        t[0] = 5.0
        batches.add([second])
        t[0] = 12.0
        assert batches.oldest_undelivered_s() == 12.0
        first.set_result(None)
        assert batches.oldest_undelivered_s() == 7.0
        second.set_result(None)
        await batches.settle()
        assert batches.oldest_undelivered_s() == 0.0 and len(batches) == 0

    asyncio.run(go())


def test_no_record_reaches_the_streams_between_a_seek_and_the_flows_resume(tmp_path):
    """Issue 23 (a restart after a stall lost 200-900 events): Faust's recovery resumes fetching the stream
    partitions, awaits ``perform_seek`` (the committed offsets), then clears the streams' queues and resumes
    the flow. The worker's consumer stops the flow for the seek, forgets the gaps it noted (everything from
    the committed offset is read again, and a gap is what a commit fills), and at ``resume_flow`` puts back
    the read offsets the seek set, whatever the drain loop wrote while finishing the record it held (a read
    offset past the committed one drops the re-fetched events as read already). No broker: the committed
    offsets are given."""
    import asyncio

    from faust.types import TP

    from stream_rec.settings import Settings
    from stream_rec.worker.app import build_app
    from stream_rec.worker.services import WorkerServices
    from stream_rec.worker.transport import LowLatencyConsumer

    tp = TP("events", 0)

    async def go():
        settings = Settings(broker="127.0.0.1:1", data_dir=tmp_path, app_id="unit-seek")
        app = build_app(settings, WorkerServices(settings)).app  # the worker's app: its consumer is ours
        consumer = app.consumer
        assert isinstance(consumer, LowLatencyConsumer) and consumer.flow_active
        flow_during_seek = []

        async def committed_offsets():
            flow_during_seek.append(consumer.flow_active)
            return {tp: 3}

        consumer.seek_to_committed = committed_offsets
        consumer._read_offset[tp] = 350  # records 3..350 handed over before the seek
        await consumer._add_gap(tp, 4, 200)  # the gap such a fetch looked like once the read offset was reset
        await consumer.perform_seek()
        assert flow_during_seek == [False] and not consumer.flow_active  # until the caller resumes it
        assert consumer._read_offset[tp] == 3 and not consumer._gap.get(tp)
        consumer._read_offset[tp] = 351  # the drain loop finishing the record it held
        consumer.resume_flow()
        assert consumer.flow_active and consumer._read_offset[tp] == 3
        consumer._read_offset[tp] = 20  # read on since: a later resume (no seek in between) changes nothing
        consumer.stop_flow()
        consumer.resume_flow()
        assert consumer._read_offset[tp] == 20

        async def no_answer():
            raise TimeoutError

        consumer.seek_to_committed = no_answer  # a failed seek leaves the flow as it found it
        with pytest.raises(TimeoutError):
            await consumer.perform_seek()
        assert consumer.flow_active

    asyncio.run(go())


def test_events_on_another_partition_than_their_keys_are_rerouted_once(small_model):
    """The partitioner check of process_batch (4 partitions: murmur2 puts "alice" on 1, librdkafka's CRC32
    on 3): a misplaced event is re-routed, not applied; its copy (origin header) is applied once on the
    right partition, and a second copy of the same original (a crash before the commit) is a duplicate."""
    import json as json_

    from stream_rec.io.topics import key_partition, origin_of, rerouted_headers
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.state import decode_state, encode_state

    config = PipelineConfig(partitions=4)
    home = key_partition(b"alice", 4)
    assert home == 1
    now = time.time() - 100
    value = lambda item, dt: json_.dumps({"user_id": "alice", "item_id": item, "event_type": "view",
                                          "timestamp": now + dt}).encode()
    delete = json_.dumps(delete_user_event("alice", now=now + 9)).encode()
    landed = [Incoming(value(ITEMS[0], 0), b"alice", "events", 3, 10, 0.0),
              Incoming(delete, b"alice", "events", 3, 11, 0.0)]
    out = process_batch(landed, states_in({}), small_model, config)
    assert out.rerouted == [(0, home), (1, home)] and out.erased_elsewhere == [("alice", 1)]
    assert not out.states and not out.recommendations

    headers = rerouted_headers([("trace", b"x")], landed[0].partition, landed[0].offset)
    assert headers == [("trace", b"x"), ("stream-rec-rerouted-from", b"3:10")] and origin_of(headers) == (3, 10)
    assert rerouted_headers(headers, home, 50) == headers  # a copy of a copy keeps the first origin
    copy = Incoming(landed[0].value, b"alice", "events", home, 50, 0.0, origin_of(headers))
    store: dict[str, bytes] = {}
    first = process_batch([copy], states_in(store), small_model, config)
    state = decode_state(first.states["alice"])
    assert first.applied == 1 and [o[:2] for o in state.origins] == [(3, 10)]
    assert decode_state(encode_state(state)).origins == state.origins  # state codec version 5
    store.update(first.states)
    again = Incoming(landed[0].value, b"alice", "events", home, 51, 0.0, (3, 10))  # re-sent after a crash
    second = process_batch([again], states_in(store), small_model, config)
    assert second.duplicates == 1 and not second.states


def test_rerouted_copies_once_whatever_the_origin_header_claims(small_model):
    """Issue 23: the duplicate check compared a copy with the stored state only, so two copies of one
    event in one micro-batch were both applied; ``-1:-1`` and ``0:-7`` made an event vanish as a
    "duplicate"; a forged ``W:999999999`` masked every later genuine copy from W. A copy is now its origin
    plus a digest of its bytes, checked against the batch and the state; impossible origins are DLQ'd."""
    import json as json_

    from stream_rec.io.topics import REROUTED_FROM, read_headers
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, read_state, states_in
    from stream_rec.state import ORIGINS_KEPT, decode_state

    config = PipelineConfig(partitions=4)  # alice lives on partition 1
    now = time.time() - 100
    value = lambda item, dt: json_.dumps({"user_id": "alice", "item_id": item, "event_type": "view",
                                          "timestamp": now + dt}).encode()

    def copy(offset: int, header: bytes, item: str = ITEMS[0], dt: float = 0.0) -> Incoming:
        origin, problem = read_headers([(REROUTED_FROM, header)])
        return Incoming(value(item, dt), b"alice", "events", 1, offset, 0.0, origin, problem)

    store: dict[str, bytes] = {}

    def run(batch):
        out = process_batch(batch, states_in(store), small_model, config)
        store.update(out.states)
        return out

    both = run([copy(20, b"3:5"), copy(21, b"3:5")])  # the same copy twice in one batch
    assert both.applied == 1 and both.duplicates == 1
    assert run([copy(22, b"3:5")]).duplicates == 1  # and once more later
    two = run([copy(23, b"3:6", ITEMS[1], 1), copy(24, b"3:6", ITEMS[2], 2)])  # one origin, two events
    assert two.applied == 2
    garbage = [b"-1:-1", b"0:-7", b"abc", b"3:", b" 3:5", b"+3:5", b"1:7", b"4:7", b"99999999999:1"]
    bad = run([copy(30 + n, h, ITEMS[3], 3) for n, h in enumerate(garbage)])  # 1: own partition; 4: no such
    assert bad.applied == 0 and bad.invalid == {"bad_header": len(garbage)} and len(bad.dlq) == len(garbage)
    twice = read_headers([(REROUTED_FROM, b"3:5"), (REROUTED_FROM, b"3:6")])
    assert twice[0] is None and "more than one" in twice[1]
    forged = run([copy(40, b"2:999999999", ITEMS[4], 4)])  # applied: an event of its own
    genuine = run([copy(41, b"2:7", ITEMS[5], 5)])  # a later genuine copy from partition 2 is not masked
    assert forged.applied == 1 and genuine.applied == 1
    state = read_state(store["alice"], small_model)
    assert state.n_events == 5 and state.seen_items()[-2:] == [ITEMS[4], ITEMS[5]]
    many = run([copy(100 + n, f"2:{100 + n}".encode(), ITEMS[n % 30], 10 + n) for n in range(ORIGINS_KEPT + 10)])
    assert many.applied == ORIGINS_KEPT + 10 and len(decode_state(store["alice"]).origins) == ORIGINS_KEPT


def test_state_codec_reads_version_3_origins():
    """States written before issue 23 (one high-water offset per origin partition) still load: their
    origins match on partition and offset alone."""
    import struct

    from stream_rec.state import ItemKeys, decode_state

    # the documented version-3 layout: head, no hidden, one history entry, no negatives, one origin partition
    v3 = (struct.pack("<BBIiqIH", 3, 0x01, 0, 1, 5, 1, 0) + struct.pack("<H", 1) + struct.pack("<dH", 1.0, 1) + b"a"
          + struct.pack("<H", 0) + struct.pack("<H", 1) + struct.pack("<iq", 3, 10))
    state = decode_state(v3)
    assert state.history == [("a", 1.0)] and (state.partition, state.offset, state.n_events) == (1, 5, 1)
    assert state.origins == [(3, 10, 0)] and state.applied_copy((3, 10, 12345)) and not state.applied_copy((3, 9, 1))
    assert decode_state(encode_state(state), items=ItemKeys(["a"])) == state
