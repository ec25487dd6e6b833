"""Unit tests of the spine's pure parts: validation, state codec, micro-batch processing (no Kafka)."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import torch

from stream_rec.model.recommender import Recommender
from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, read_state, states_in
from stream_rec.state import ItemKeys, StateDecodeError, UserState, decode_state, encode_state, model_tag
from stream_rec_devtools.synthetic import make_catalog
from stream_rec.validation import Event, Invalid, validate_event

torch.set_num_threads(1)
NOW = 1_750_000_000.0


def ev(user="u1", item="space-00", etype="view", ts=NOW - 10, **extra) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "event_type": etype, "timestamp": ts, **extra}).encode()


# --- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,key,reason", [
    (None, b"u1", "empty"),
    (b"   ", b"u1", "empty"),
    (b"x" * 20000, b"u1", "oversize"),
    (b"{not json", b"u1", "bad_json"),
    (b"\xff\xfe", b"u1", "bad_json"),
    (b"[1, 2]", b"u1", "not_an_object"),
    (json.dumps({"user_id": "u1", "item_id": "a"}).encode(), b"u1", "missing_field"),
    (ev(item=["a"]), b"u1", "wrong_type"),
    (ev(user=True), b"u1", "wrong_type"),
    (ev(ts="yesterday"), b"u1", "wrong_type"),
    (ev(value="high"), b"u1", "wrong_type"),
    (ev(context="phone"), b"u1", "wrong_type"),
    (ev(context={"mmr_lambda": 1.5}), b"u1", "wrong_type"),
    (ev(context={"mmr_lambda": -0.1}), b"u1", "wrong_type"),
    (ev(context={"mmr_lambda": "0.3"}), b"u1", "wrong_type"),
    (ev(context={"mmr_lambda": True}), b"u1", "wrong_type"),
    (ev(context={"mmr_lambda": float("nan")}), b"u1", "wrong_type"),
    (ev(value=10 ** 400), b"u1", "wrong_type"),  # beyond float range: a DLQ record, not an OverflowError
    (ev(etype="teleport"), b"u1", "unknown_event_type"),
    (b'{"user_id":"u1","item_id":"a","event_type":"view","timestamp":NaN}', b"u1", "bad_timestamp"),
    (b'{"user_id":"u1","item_id":"a","event_type":"view","timestamp":Infinity}', b"u1", "bad_timestamp"),
    (ev(ts=NOW + 10 * 86400), b"u1", "bad_timestamp"),
    (ev(ts=12.0), b"u1", "bad_timestamp"),
    (ev(), b"u2", "key_mismatch"),
    (ev(), None, "key_mismatch"),
    (ev(item="nope"), b"u1", "unknown_item"),
])
def test_invalid_events_have_reasons(raw, key, reason):
    out = validate_event(raw, key=key, known_item=lambda i: i.startswith("space"), now=NOW)
    assert isinstance(out, Invalid), out
    assert out.reason == reason, out


def test_valid_event_and_millisecond_timestamps():
    out = validate_event(ev(ts=(NOW - 5) * 1000, value=4.5, context={"text": "hi"}), key=b"u1", now=NOW)
    assert isinstance(out, Event)
    assert out.timestamp == pytest.approx(NOW - 5)
    assert out.value == 4.5 and out.context == {"text": "hi"}
    assert validate_event(ev(user=7), key=b"7", now=NOW).user_id == "7"


def test_an_event_log_is_shifted_to_end_now_as_the_validator_reads_its_times():
    from stream_rec.validation import log_shift

    old = [881250949, 881250960.5, "not a time", None]  # MovieLens-100K's age
    assert log_shift(old, NOW, always=False) == NOW - 881250960.5  # too old for the worker: shifted
    assert log_shift([NOW - 50, (NOW - 40) * 1000], NOW, always=False) == 0.0  # taken as it is
    assert log_shift([NOW - 50, (NOW - 40) * 1000], NOW) == pytest.approx(40.0)  # milliseconds read as seconds
    assert log_shift([], NOW) == 0.0


# --- state codec -----------------------------------------------------------------------------------
@pytest.mark.parametrize("half", [True, False])
def test_state_round_trip(half):
    h = np.linspace(-1, 1, 128).astype(np.float32)
    st = UserState(h, [("a", 1.5), ("ünïcode", 2.25)], partition=3, offset=12345678901, n_events=7,
                   model_tag=model_tag("m1"))
    raw = encode_state(st, half=half)
    back = decode_state(raw, items=ItemKeys(["a", "ünïcode"]))
    assert back.history == st.history and back.partition == 3 and back.offset == 12345678901
    assert back.n_events == 7 and back.model_tag == st.model_tag
    np.testing.assert_allclose(back.hidden, h, atol=1e-3 if half else 0)
    assert len(raw) < 128 * (2 if half else 4) + 80


def test_state_round_trip_with_negatives():
    st = UserState(np.ones(8, np.float32), [("a", 1.5)], partition=1, offset=9, n_events=3,
                   model_tag=model_tag("m1"), negatives=["b", "ünïcode-neg", "c"])
    raw = encode_state(st)
    assert raw[0] == 6  # version 6
    back = decode_state(raw, items=ItemKeys(["a", "b", "c", "ünïcode-neg"]))
    assert back.negatives == ["b", "ünïcode-neg", "c"] and back.history == [("a", 1.5)]
    assert back.seen_items() == ["a"]  # negatives are not "seen"
    assert decode_state(encode_state(UserState(history=[("a", 1.0)]))).negatives == []
    with pytest.raises(StateDecodeError):
        decode_state(raw[:-1])  # a truncated negative key


def test_state_decodes_version_1_bytes():
    """A state written before negatives existed (version 1, built by hand from the documented layout)."""
    import struct

    h = np.linspace(-1, 1, 4).astype(np.float16)
    item = "ünï".encode("utf-8")
    v1 = (struct.pack("<BBIiqIH", 1, 0x01, 77, 2, 41, 5, 4) + h.tobytes() + struct.pack("<H", 1)
          + struct.pack("<dH", 3.5, len(item)) + item)
    back = decode_state(v1)
    assert back.history == [("ünï", 3.5)] and back.negatives == []
    assert (back.model_tag, back.partition, back.offset, back.n_events) == (77, 2, 41, 5)
    np.testing.assert_allclose(back.hidden, h.astype(np.float32))
    with pytest.raises(StateDecodeError):
        decode_state(v1 + b"\x00\x00")  # version 1 has no negatives part: trailing bytes
    again = decode_state(encode_state(back), items=ItemKeys(["ünï"]))  # re-written as version 6
    assert again.history == back.history and again.negatives == []


@pytest.mark.parametrize("id_chars", [1, 10, 256])
def test_a_state_with_the_full_history_fits_in_1kb_at_any_id_length(id_chars):
    """50 history entries (the default history_len) and a 160-d float16 vector, with room left for the
    exposure section issue 21 adds (~115 bytes); old versions stored the ids (1,348 bytes at 10 characters)."""
    ids = [f"{n:04d}".rjust(id_chars, "x")[-id_chars:] if id_chars >= 4 else chr(0x4E00 + n) for n in range(50)]
    st = UserState(np.ones(160, np.float32), [(i, 1.7e9 + 30.5 * n) for n, i in enumerate(ids)], partition=1,
                   offset=2**40, n_events=10**6, model_tag=model_tag("m"), negatives=ids[:3])
    raw = encode_state(st)
    assert len(raw) <= 1024 - 115 - 18, len(raw)  # 3 negatives here
    back = decode_state(raw, items=ItemKeys(ids))
    assert back.seen_items() == ids and back.negatives == ids[:3]
    assert back.history[-1][1] == st.history[-1][1]  # the newest exactly (the next event's gap)
    np.testing.assert_allclose([t for _, t in back.history], [t for _, t in st.history], rtol=0, atol=1e-3)


def test_a_state_decodes_on_another_worker_and_after_a_reload_through_its_own_catalogue():
    """Item keys are a function of the id: another catalogue order (another model's vocabulary, live items
    in another arrival order) names the same items; a key the catalogue does not know (yet) survives
    re-encoding and is named once the catalogue knows it."""
    history = [("space-00", 10.0), ("live-item-7", 20.0), ("cooking-01", 35.5)]
    raw = encode_state(UserState(history=history, negatives=["live-item-7"]))
    other_order = ItemKeys(["cooking-01", "nature-02", "space-00", "live-item-9", "live-item-7"])
    assert decode_state(raw, items=other_order).history == history
    before_catalog = decode_state(raw, items=ItemKeys(["space-00", "cooking-01"]))
    unknown = before_catalog.history[1][0]
    assert unknown.startswith("unknown-item-") and unknown != "live-item-7" and unknown not in {"live-item-7": 1}
    again = encode_state(before_catalog)
    assert decode_state(again, items=other_order).history == history
    assert decode_state(again, items=other_order).negatives == ["live-item-7"]


def test_state_decodes_version_4_bytes():
    """A state of the previous writer (ids and timestamps in full, origins), built from its documented layout."""
    import struct

    h = np.linspace(-1, 1, 4).astype(np.float16)
    entries = b"".join(struct.pack("<dH", ts, len(i.encode())) + i.encode() for i, ts in [("a", 1.5), ("ü", 2.5)])
    v4 = (struct.pack("<BBIiqIH", 4, 0x01, 7, 1, 41, 2, 4) + h.tobytes() + struct.pack("<H", 2) + entries
          + struct.pack("<HH", 1, 1) + b"n" + struct.pack("<H", 1) + struct.pack("<iqQ", 3, 10, 99))
    back = decode_state(v4)
    assert back.history == [("a", 1.5), ("ü", 2.5)] and back.negatives == ["n"] and back.origins == [(3, 10, 99)]
    again = decode_state(encode_state(back), items=ItemKeys(["a", "ü", "n"]))  # re-written as version 6
    assert (again.history, again.negatives, again.origins) == (back.history, back.negatives, back.origins)
    np.testing.assert_array_equal(again.hidden, back.hidden)


def test_state_rejects_garbage():
    with pytest.raises(StateDecodeError):
        decode_state(b"\x09garbage")
    with pytest.raises(StateDecodeError):
        decode_state(encode_state(UserState(np.zeros(4, np.float32), [("a", 1.0)]))[:-1])


def test_empty_state_round_trip():
    back = decode_state(encode_state(UserState()))
    assert back.hidden is None and back.history == [] and back.offset == -1


# --- pipeline --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return Recommender.untrained([c["item_id"] for c in make_catalog(4)], device="cpu")


def msgs(raws, user_keys, start=0, partition=0):
    return [Incoming(r, k, "events", partition, start + n, time.time()) for n, (r, k) in enumerate(zip(raws, user_keys))]


def test_batch_produces_one_rec_per_user_excluding_seen(model):
    store: dict[str, bytes] = {}
    batch = msgs([ev("a", "space-00"), ev("b", "cooking-01"), ev("a", "space-01"), b"junk"], [b"a", b"b", b"a", b"x"])
    out = process_batch(batch, states_in(store), model, PipelineConfig(top_k=5))
    assert out.applied == 3 and out.invalid == {"bad_json": 1} and len(out.dlq) == 1
    assert out.dlq[0]["offset"] == 3 and base64.b64decode(out.dlq[0]["original_value_b64"]) == b"junk"
    recs = {r["user_id"]: r for r in out.recommendations}
    assert set(recs) == {"a", "b"}
    assert not {"space-00", "space-01"} & {i["item_id"] for i in recs["a"]["items"]}
    assert len(recs["a"]["items"]) == 5 and recs["a"]["model_version"] == model.version
    assert out.last_index == {"a": 2, "b": 1}
    st = read_state(out.states["a"], model)
    assert st.seen_items() == ["space-00", "space-01"] and st.offset == 2


def test_phases_are_timed_under_the_words_the_metric_exports(model):
    from stream_rec import metrics
    from stream_rec.pipeline import TIMED_PHASES

    out = process_batch(msgs([ev("a", "space-00")], [b"a"]), states_in({}), model)
    assert set(out.phase_seconds) == {"validate", "load", "step", "store", "rank", "emit"}
    exported = {s.labels["stage"] for m in metrics.MODEL_STEP_SECONDS.collect() for s in m.samples}
    assert set(TIMED_PHASES) <= set(out.phase_seconds) and set(TIMED_PHASES) <= exported


def test_a_state_reader_must_answer_bytes_or_none(model):
    """``load_state(user_id, partition)``: a dict's ``get`` given as the reader would take the partition
    for its default -- a mistake that must not pass silently."""
    with pytest.raises(TypeError):
        process_batch(msgs([ev("a", "space-00")], [b"a"], partition=1), {}.get, model)


def test_redelivery_is_skipped_and_state_continues(model):
    store: dict[str, bytes] = {}
    first = msgs([ev("a", "space-00"), ev("a", "space-01")], [b"a", b"a"])
    store.update(process_batch(first, states_in(store), model).states)
    again = msgs([ev("a", "space-00"), ev("a", "space-01"), ev("a", "space-02")], [b"a"] * 3)
    out = process_batch(again, states_in(store), model)
    assert out.duplicates == 2 and out.applied == 1
    assert read_state(out.states["a"], model).seen_items() == ["space-00", "space-01", "space-02"]


def test_a_new_events_epoch_is_not_taken_for_redeliveries(model):
    """A new events topic starts its offsets at 0 again: under the same epoch its events look like
    redeliveries of the old topic's and are skipped; with the next epoch (Settings.events_epoch) they are
    applied, and a redelivery within the new epoch is still skipped."""
    from dataclasses import replace

    store: dict[str, bytes] = {}
    store.update(process_batch(msgs([ev("a", f"space-0{n}") for n in range(4)], [b"a"] * 4), states_in(store),
                               model).states)
    restarted = msgs([ev("a", "nature-01"), ev("a", "nature-02")], [b"a"] * 2)  # offsets 0 and 1 again
    assert process_batch(restarted, states_in(store), model).duplicates == 2
    new_epoch = [replace(m, epoch=1) for m in restarted]
    out = process_batch(new_epoch, states_in(store), model)
    assert out.applied == 2 and out.duplicates == 0
    store.update(out.states)
    state = read_state(store["a"], model)
    assert state.n_events == 6 and state.seen_items()[-2:] == ["nature-01", "nature-02"]
    assert process_batch(new_epoch, states_in(store), model).duplicates == 2


def test_redelivered_last_event_sends_its_list_again_without_changing_the_state(model):
    """A crash after the state's changelog record was delivered but before the recommendation was: the
    redelivered event is a duplicate for the state, and its list is sent again (same list, same event)."""
    store: dict[str, bytes] = {}
    first = msgs([ev("a", "space-00"), ev("b", "space-01"), ev("a", "space-02")], [b"a", b"b", b"a"])
    out = process_batch(first, states_in(store), model)
    store.update(out.states)
    again = process_batch(first, states_in(store), model)
    assert again.duplicates == 3 and again.applied == 0 and again.replayed == 2 and not again.states
    recs = {r["user_id"]: r for r in again.recommendations}
    before = {r["user_id"]: r for r in out.recommendations}
    for user in ("a", "b"):
        assert recs[user]["items"] == before[user]["items"]
        assert recs[user]["event_timestamp"] == before[user]["event_timestamp"]
    # only the newest applied event replays: an older duplicate (a's first event alone) sends nothing
    older = process_batch(first[:1], states_in(store), model)
    assert older.duplicates == 1 and not older.recommendations


def test_batched_equals_one_by_one(model):
    """Micro-batching must not change results: one batch == the same events one per batch."""
    raws = [ev("a", "space-00", ts=NOW - 30), ev("b", "nature-02"), ev("a", "space-01", ts=NOW - 20),
            ev("a", "space-03", ts=NOW - 10)]
    keys = [b"a", b"b", b"a", b"a"]
    batched: dict[str, bytes] = {}
    batched.update(process_batch(msgs(raws, keys), states_in(batched), model).states)
    single: dict[str, bytes] = {}
    for n in range(len(raws)):
        single.update(process_batch(msgs(raws[n:n + 1], keys[n:n + 1], start=n), states_in(single), model).states)
    for user in ("a", "b"):
        a, b = read_state(batched[user], model), read_state(single[user], model)
        assert a.history == b.history
        np.testing.assert_allclose(a.hidden, b.hidden, atol=2e-3)


def test_state_from_other_model_is_rewarmed(model):
    store: dict[str, bytes] = {}
    store.update(process_batch(msgs([ev("a", "space-00")], [b"a"]), states_in(store), model).states)
    other = Recommender.untrained(model.item_ids, config=None, seed=1, device="cpu")
    other.version = "untrained-other"
    out = process_batch(msgs([ev("a", "space-01")], [b"a"], start=1), states_in(store), other)
    st = read_state(out.states["a"], other)
    assert st.model_tag == model_tag("untrained-other") and st.seen_items() == ["space-00", "space-01"]
    assert np.isfinite(st.hidden).all()


def test_no_model_sends_everything_to_dlq():
    out = process_batch(msgs([ev("a")], [b"a"]), states_in({}), None)
    assert out.invalid == {"unknown_item": 1} and not out.recommendations


# --- worker state cache --------------------------------------------------------------------------------
def test_state_cache_is_a_bounded_lru_that_forgets_on_discard_and_clear():
    from stream_rec.worker.services import StateCache

    cache = StateCache(2)
    cache.put(b"a", b"1")
    cache.put(b"b", b"2")
    assert cache.get(b"a") == b"1"  # a is now the most recent
    cache.put(b"c", b"3")  # evicts b, the least recently used
    assert cache.get(b"b") is None and cache.get(b"a") == b"1" and cache.get(b"c") == b"3"
    cache.put(b"a", b"1'")  # a write replaces the value
    assert cache.get(b"a") == b"1'"
    cache.discard(b"a")  # a deleted user
    assert cache.get(b"a") is None
    cache.clear()  # a rebalance
    assert len(cache) == 0 and cache.get(b"c") is None
    off = StateCache(0)
    off.put(b"a", b"1")
    assert off.get(b"a") is None
