"""Fault injection for the reliability tests and benchmarks: pausing a process, malformed input.

Everything here acts on real OS processes (a worker subprocess, the broker) or produces real bytes
for the real broker; nothing mocks Kafka. Crashes are ``SIGKILL`` of a worker subprocess
(``harness.WorkerProcess.kill``): no shutdown hooks, no final commit, no producer flush.

* ``paused(proc, seconds)`` -- ``SIGSTOP`` then ``SIGCONT`` (the broker "hiccup": sockets stay open
  but nothing answers, as with a long GC pause or a frozen VM);
* ``fuzz_corpus(...)`` -- a seeded mix of malformed events of every kind the validator must survive,
  interleaved with good ones, each labelled with whether it must reach the DLQ;
* ``produce_raw(...)`` -- records with arbitrary bytes as header keys (which no client's API lets one
  write), as one record batch on one partition.

Memory, CPU and sockets of a process are read in ``procfs``; the state a worker stored is read back
by ``harness.read_changelog_states``. Linux only (``/proc``, signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence


# --- processes --------------------------------------------------------------------------------------
def _pid(proc: "subprocess.Popen | int") -> int:
    return proc if isinstance(proc, int) else proc.pid


@contextlib.contextmanager
def paused(proc: "subprocess.Popen | int", seconds: float | None = None) -> Iterator[None]:
    """SIGSTOP the process on entry, SIGCONT on exit (always, even if the body raises).

    With ``seconds`` the body's end is padded so the process stays stopped at least that long.
    """
    pid = _pid(proc)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        yield
        if seconds is not None:
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# --- raw records ---------------------------------------------------------------------------------------
class _RawHeaderKey(str):
    """A header key that encodes to the given bytes (UTF-8 or not): aiokafka's pure-Python batch builder
    writes ``key.encode("utf-8")``."""

    def __new__(cls, raw: bytes) -> "_RawHeaderKey":
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw
        return text

    def encode(self, *args, **kwargs) -> bytes:  # noqa: ARG002 -- the bytes, whatever the codec asked
        return self.raw


async def produce_raw(settings, topic: str, partition: int,
                      records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]]) -> int:
    """Send ``records`` -- (key, value, headers as (name bytes, value bytes)) -- to ``partition`` of ``topic``
    as one record batch, header names written as the bytes given; returns the first record's offset.
    (aiokafka's producer API takes ``str`` header names only: this swaps its batch's builder for the
    pure-Python one, ``BatchBuilder._builder``, which writes what ``str.encode`` returns.)"""
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
    from stream_rec.io.kafka import kafka_producer

    producer = kafka_producer(settings)
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                                      base_sequence=0, batch_size=1 << 20)
        for key, value, headers in records:
            if batch.append(timestamp=None, key=key, value=value,
                            headers=[(_RawHeaderKey(name), v) for name, v in headers]) is None:
                raise ValueError("the records do not fit in one batch")
        sent = await (await producer.send_batch(batch, topic, partition=partition))
        return sent.offset
    finally:
        await producer.stop()


# --- malformed input ------------------------------------------------------------------------------
# Bad-event families. Each maps to the reasons the validator may legitimately give for it: the fuzz
# test checks the DLQ record names *a* reason, not a precise one (e.g. a huge string may be rejected
# as ``oversize`` or as a too-long field, both fine).
FUZZ_KINDS = (
    "random_bytes", "truncated_json", "not_an_object", "missing_field", "wrong_type", "huge_string",
    "oversize", "unknown_event_type", "timestamp_far_future", "timestamp_far_past", "nan_value",
    "nan_timestamp", "bad_utf8", "lone_surrogate", "empty", "null_user", "unknown_item",
)


@dataclass(frozen=True)
class FuzzEvent:
    key: bytes | None
    value: bytes
    kind: str  # "good" or one of FUZZ_KINDS
    user_id: str | None = None  # for good events: whose history it must reach
    item_id: str | None = None

    @property
    def good(self) -> bool:
        return self.kind == "good"


def _dumps(obj: object) -> bytes:
    # allow_nan: json.dumps writes NaN/Infinity tokens, which Python's json.loads accepts by default:
    # exactly the kind of "valid-looking" number the validator has to refuse.
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _bad_event(kind: str, rng: random.Random, make_good: Callable[[str, str], dict], user: str, item: str,
               max_event_bytes: int) -> bytes:
    base = make_good(user, item)
    if kind == "random_bytes":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
    if kind == "truncated_json":
        raw = _dumps(base)
        return raw[: rng.randint(1, len(raw) - 1)]
    if kind == "not_an_object":
        return _dumps(rng.choice([[base], "event", 42, None, True, [], 1.5]))
    if kind == "missing_field":
        field = rng.choice(["user_id", "item_id", "timestamp", "event_type"])
        return _dumps({k: v for k, v in base.items() if k != field})
    if kind == "wrong_type":
        field = rng.choice(["user_id", "item_id", "timestamp", "event_type"])
        return _dumps({**base, field: rng.choice([[1, 2], {"x": 1}, True, None] +
                                                  ([] if field == "timestamp" else [3.5]))})
    if kind == "huge_string":  # a field far longer than any id, but the event itself under max bytes
        field = rng.choice(["user_id", "item_id", "event_type"])
        return _dumps({**base, field: "x" * rng.randint(2000, max(2001, max_event_bytes // 2))})
    if kind == "oversize":
        return _dumps({**base, "context": {"text": "y" * (max_event_bytes + rng.randint(1, 5000))}})
    if kind == "unknown_event_type":
        return _dumps({**base, "event_type": rng.choice(["hover", "VIEW ", "", "drop table", "\u202eweiv"])})
    if kind == "timestamp_far_future":
        return _dumps({**base, "timestamp": base["timestamp"] + rng.uniform(400, 10_000) * 86400 * 365})
    if kind == "timestamp_far_past":
        return _dumps({**base, "timestamp": rng.choice([-1.0, 0.0, 86400.0, -1e12])})
    if kind == "nan_value":
        return _dumps({**base, "event_type": "rate", "value": rng.choice([float("nan"), float("inf"), float("-inf")])})
    if kind == "nan_timestamp":
        return _dumps({**base, "timestamp": rng.choice([float("nan"), float("inf"), float("-inf")])})
    if kind == "bad_utf8":
        raw = _dumps(base)
        cut = rng.randint(1, len(raw) - 1)
        return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28"]) + raw[cut:]
    if kind == "lone_surrogate":  # valid JSON (an escaped surrogate) that no UTF-8 encoder accepts
        field = rng.choice(["user_id", "item_id"])
        raw = _dumps({**base, field: "SURROGATE"})
        return raw.replace(b"SURROGATE", rng.choice([b"\\ud800", b"x\\udfff", b"\\udc00y"]))
    if kind == "empty":
        return rng.choice([b"", b" ", b"\n", b"{}", b"null"])
    if kind == "null_user":
        return _dumps({**base, "user_id": rng.choice([None, "", "   "])})
    if kind == "unknown_item":
        return _dumps({**base, "item_id": "no-such-item-" + str(rng.randint(0, 10**9))})
    raise ValueError(f"unknown fuzz kind {kind!r}")


# Unicode that is valid but awkward: used in *good* events' user ids so the good path is exercised
# with combining marks, right-to-left text, emoji, zero-width joiners and non-BMP characters.
UNICODE_USER_SUFFIXES = ("", "é", "e\u0301", "\u05e9\u05dc\u05d5\u05dd", "\U0001f600", "\u200d", "\u4e2d\u6587",
                         "\U00010348", "'\";--")


def fuzz_corpus(n_bad: int, n_good: int, item_ids: Sequence[str], *, now_s: float | None = None,
                max_event_bytes: int = 16384, n_users: int = 50, seed: int = 0,
                kinds: Sequence[str] = FUZZ_KINDS) -> list[FuzzEvent]:
    """``n_bad`` malformed events (cycling through ``kinds``) shuffled among ``n_good`` valid ones.

    Good events use ids from ``item_ids`` (the catalog the worker knows), timestamps around ``now_s``
    (seconds, increasing per user so each user's history order is unambiguous) and users with unicode
    edge cases in their ids. Bad events are keyed like real traffic (by a user id) so they spread over
    partitions; ``random_bytes`` events get random keys.
    """
    if not item_ids:
        raise ValueError("fuzz_corpus needs at least one known item id for the good events")
    rng = random.Random(seed)
    now_s = time.time() if now_s is None else now_s
    users = [f"fuzz-user-{i}{UNICODE_USER_SUFFIXES[i % len(UNICODE_USER_SUFFIXES)]}" for i in range(n_users)]
    clock = {u: now_s - 3600.0 for u in users}

    def make_good(user: str, item: str) -> dict:
        clock[user] += 1.0
        return {"user_id": user, "item_id": item, "event_type": rng.choice(["view", "click", "purchase"]),
                "timestamp": clock[user]}

    events: list[FuzzEvent] = []
    for i in range(n_bad):
        kind = kinds[i % len(kinds)]
        user, item = rng.choice(users), rng.choice(item_ids)
        value = _bad_event(kind, rng, lambda u, it: {"user_id": u, "item_id": it, "event_type": "view",
                                                     "timestamp": now_s}, user, item, max_event_bytes)
        key = bytes(rng.getrandbits(8) for _ in range(8)) if kind == "random_bytes" else user.encode()
        events.append(FuzzEvent(key, value, kind))
    good_slots = sorted(rng.sample(range(n_bad + n_good), n_good))
    out: list[FuzzEvent] = []
    bad_iter = iter(events)
    good_set = set(good_slots)
    for slot in range(n_bad + n_good):
        if slot in good_set:
            user, item = rng.choice(users), rng.choice(item_ids)
            rec = make_good(user, item)
            out.append(FuzzEvent(user.encode("utf-8", "surrogatepass"), _dumps(rec), "good", user, item))
        else:
            out.append(next(bad_iter))
    return out
