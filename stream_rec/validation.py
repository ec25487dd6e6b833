"""Validation of raw ``events`` records: bytes -> :class:`Event` or :class:`Invalid` (never an exception);
and of ``catalog`` records (:func:`validate_catalog_record`, same reasons). JSON is parsed bounded
(stream_rec/boundedjson.py).

The worker never crashes on input: every record that is not a usable event becomes an ``Invalid`` with a
machine-readable ``reason`` (the DLQ record's ``reason`` and the ``reason`` label of
``stream_rec_events_invalid_total``) and a human-readable ``detail``. Reasons:

==================== =================================================================================
``empty``            no value (tombstone) or only whitespace
``oversize``         value longer than ``Settings.max_event_bytes`` (checked before parsing)
``bad_json``         not UTF-8 (a byte order mark or UTF-16 included), not JSON, or nested deeper than
                     ``boundedjson.MAX_DEPTH`` levels (checked before parsing: stream_rec/boundedjson.py)
``not_an_object``    JSON, but not an object
``missing_field``    ``user_id``, ``item_id``, ``event_type`` or ``timestamp`` absent or null (control events,
                     e.g. ``delete_user``, need no ``item_id``)
``wrong_type``       a field of the wrong type (ids must be strings with a non-space character and no lone
                     surrogate, at most ``MAX_ID_CHARS`` long, or integers in the 64-bit range -- ``1.0``
                     counts as ``1``, as in JSON Schema; ``timestamp`` and ``value`` numbers; ``context`` an
                     object whose ``text`` and ``device`` are strings and whose ``mmr_lambda`` is a number
                     in [0, 1])
``unknown_event_type`` ``event_type`` not in :data:`EVENT_TYPES`
``bad_timestamp``    NaN/inf, before 2000-01-01, or more than ``FUTURE_SLACK_S`` ahead of the worker clock
``key_mismatch``     the Kafka key is not the ``user_id``: the event sits on the wrong partition for the
                     co-partitioned state table, so applying it would split a user's state
``unknown_item``     ``item_id`` not in the live catalog (only checked once a catalog is known)
``processing_error`` a valid event whose processing raised (``pipeline.process_batch_isolating``: the
                     other events of its batch are processed; ``detail`` names the exception)
==================== =================================================================================

Timestamps are epoch seconds (float); milliseconds (> 1e11) are accepted and converted, because that is
what Kafka tooling and JavaScript produce.

The contract published to producers is ``topics/events.schema.json``. It says the same as this module
about one record on its own; what it cannot say is checked here only: the size limit, the Kafka key, the
catalog, and the clock (``bad_timestamp`` for more than a day ahead). tests/test_events_schema.py runs the
whole fuzz corpus (stream_rec_devtools/faults.py) and the edge cases through both and fails on any
disagreement; the schema's enum and bounds are compared with the constants below.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import boundedjson

EVENT_TYPES = frozenset({"view", "click", "rate", "purchase", "add_to_cart", "like", "share", "dislike", "skip"})
# Control events travel in the events topic, keyed by user, so they are ordered with the user's other
# events and handled on the partition that owns the user's state (see stream_rec/commands/forget.py).
DELETE_USER = "delete_user"
CONTROL_EVENT_TYPES = frozenset({DELETE_USER})
REQUIRED_FIELDS = ("user_id", "item_id", "event_type", "timestamp")
CONTROL_REQUIRED_FIELDS = ("user_id", "event_type", "timestamp")
MIN_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_SLACK_S = 86_400.0  # clocks drift; a day ahead is suspicious, more is wrong
MAX_ID_CHARS = 256
INT_ID_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # integer ids: int64 or uint64, as databases hand them out

REASONS = ("empty", "oversize", "bad_json", "not_an_object", "missing_field", "wrong_type",
           "unknown_event_type", "bad_timestamp", "key_mismatch", "unknown_item", "processing_error", "bad_header")


@dataclass(frozen=True)
class Event:
    """A validated interaction. ``timestamp`` is epoch seconds."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Invalid:
    reason: str  # one of REASONS
    detail: str

    def __bool__(self) -> bool:  # so `if result:` reads as "is it a valid event"
        return False


def _as_id(name: str, value: Any) -> str | Invalid:
    if isinstance(value, float) and value.is_integer():  # 1.0: an integer to JSON Schema, and to us
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Invalid("wrong_type", f"{name} must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, int) and not INT_ID_RANGE[0] <= value <= INT_ID_RANGE[1]:
        return Invalid("wrong_type", f"{name} is an integer outside the 64-bit range")
    text = str(value)
    if not text.strip():
        return Invalid("wrong_type", f"{name} is empty")
    if len(text) > MAX_ID_CHARS:
        return Invalid("wrong_type", f"{name} longer than {MAX_ID_CHARS} characters")
    if "\x00" in text:  # the state table keeps other records under keys that start with NUL (the arms')
        return Invalid("wrong_type", f"{name} contains a NUL character")
    try:  # JSON may escape a lone surrogate ("\udc00"): valid JSON, not storable UTF-8
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Invalid("wrong_type", f"{name} is not valid Unicode text (lone surrogate)")
    return text


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond float range: not a usable number (and must not raise)
        return None


def json_object(raw: bytes, max_bytes: int) -> dict | Invalid:
    """The JSON object in ``raw`` (bounded parse: stream_rec/boundedjson.py), or why there is none."""
    try:
        doc = boundedjson.parse(raw, max_bytes=max_bytes)
    except boundedjson.JSONRejected as exc:
        return Invalid(exc.reason, exc.detail)
    if not isinstance(doc, dict):
        return Invalid("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def validate_event(raw: bytes | None, *, key: bytes | None = None, check_key: bool = True,
                   max_bytes: int = 16384, known_item: Callable[[str], bool] | None = None,
                   now: float | None = None) -> Event | Invalid:
    """Parse and check one record value. ``known_item`` (None = accept any id) checks the catalog;
    with ``check_key`` the Kafka key must equal the user id (see ``key_mismatch``)."""
    if raw is None or not raw.strip():
        return Invalid("empty", "record has no value")
    if len(raw) > max_bytes:
        return Invalid("oversize", f"{len(raw)} bytes > max_event_bytes={max_bytes}")
    doc = json_object(raw, max_bytes)
    if isinstance(doc, Invalid):
        return doc
    control = isinstance(doc.get("event_type"), str) and doc["event_type"] in CONTROL_EVENT_TYPES
    missing = [f for f in (CONTROL_REQUIRED_FIELDS if control else REQUIRED_FIELDS) if doc.get(f) is None]
    if missing:
        return Invalid("missing_field", "missing " + ", ".join(missing))
    ids = _check_ids(doc, control)
    if isinstance(ids, Invalid):
        return ids
    user_id, item_id, event_type = ids
    ts = _check_timestamp(doc["timestamp"], time.time() if now is None else now)
    if isinstance(ts, Invalid):
        return ts
    extras = _check_value_and_context(doc)
    if isinstance(extras, Invalid):
        return extras
    if check_key:
        key_text = key.decode("utf-8", "replace") if key is not None else None
        if key_text != user_id:
            shown = key_text if key_text is None or len(key_text) <= MAX_ID_CHARS else key_text[:MAX_ID_CHARS] + "..."
            return Invalid("key_mismatch", f"record key {shown!r} is not the user_id {user_id!r}")
    if known_item is not None and not control and not known_item(item_id):
        return Invalid("unknown_item", f"item_id {item_id!r} is not in the catalog")
    return Event(user_id, item_id, event_type, ts, *extras)


def _check_ids(doc: dict, control: bool) -> tuple[str, str, str] | Invalid:
    """(user_id, item_id, event_type); a control event has no item (``""``)."""
    user_id = _as_id("user_id", doc["user_id"])
    if isinstance(user_id, Invalid):
        return user_id
    item_id = "" if control else _as_id("item_id", doc["item_id"])
    if isinstance(item_id, Invalid):
        return item_id
    event_type = doc["event_type"]
    if not isinstance(event_type, str):
        return Invalid("wrong_type", f"event_type must be a string, got {type(event_type).__name__}")
    if event_type not in EVENT_TYPES and not control:
        return Invalid("unknown_event_type", f"{event_type[:50]!r} not in {sorted(EVENT_TYPES)}")
    return user_id, item_id, event_type


def event_seconds(value: Any) -> float | None:
    """A timestamp as the validator reads it: epoch seconds, milliseconds converted (None: not a finite number)."""
    ts = _as_number(value)
    if ts is None or not math.isfinite(ts):
        return None
    return ts / 1000.0 if ts > 1e11 else ts  # above 1e11: epoch milliseconds


def log_shift(timestamps: Iterable[Any], now: float, always: bool = True) -> float:
    """Seconds to add to every timestamp of an event log so that its newest event is at ``now``; the gaps
    between events, which the model reads, stay as they are. ``always`` False: only for a log this
    validator would refuse as too old (a timestamp before 2000-01-01: ``bad_timestamp``; MovieLens-100K is
    from 1997-98), else 0. Timestamps are read as the validator reads them; others are left out. Used by
    ``stream-rec produce --events-file`` and ``stream-rec replay``."""
    seconds = [ts for ts in map(event_seconds, timestamps) if ts is not None]
    if not seconds or (not always and min(seconds) >= MIN_TIMESTAMP):
        return 0.0
    return now - max(seconds)


def _check_timestamp(value: Any, now: float) -> float | Invalid:
    """Epoch seconds (milliseconds converted), not before 2000, not more than a day ahead of ``now``."""
    if _as_number(value) is None:
        return Invalid("wrong_type", f"timestamp must be a number (epoch seconds), got {type(value).__name__}")
    ts = event_seconds(value)
    if ts is None:
        return Invalid("bad_timestamp", f"timestamp is {value}")
    if ts < MIN_TIMESTAMP:
        return Invalid("bad_timestamp", f"timestamp {ts} is before 2000-01-01")
    if ts > now + FUTURE_SLACK_S:
        return Invalid("bad_timestamp", f"timestamp {ts} is {ts - now:.0f} s in the future")
    return ts


def _check_value_and_context(doc: dict) -> tuple[float | None, dict[str, Any]] | Invalid:
    """(value, context): an optional finite number; an optional object whose known keys are typed: ``text``
    and ``device`` strings, ``mmr_lambda`` a number in [0, 1] (null = absent, for each)."""
    value = doc.get("value")
    if value is not None:
        value = _as_number(value)
        if value is None or not math.isfinite(value):
            return Invalid("wrong_type", "value must be a finite number")
    context = doc.get("context")
    if context is None:
        return value, {}
    if not isinstance(context, dict):
        return Invalid("wrong_type", f"context must be an object, got {type(context).__name__}")
    for key in ("text", "device"):
        if context.get(key) is not None and not isinstance(context[key], str):
            return Invalid("wrong_type", f"context.{key} must be a string")
    if context.get("mmr_lambda") is not None:  # per-request diversity (stream_rec/recsys/enricher.py)
        lam = _as_number(context["mmr_lambda"])
        if lam is None or not 0.0 <= lam <= 1.0:  # NaN fails the range check too
            return Invalid("wrong_type", f"context.mmr_lambda must be a number in [0, 1], "
                                         f"got {str(context['mmr_lambda'])[:50]!r}")
    return value, context


# --- catalog records ------------------------------------------------------------------------------------
MAX_CATALOG_RECORD_BYTES = 256 * 1024  # a title, a description and some attributes; larger is not an item


def validate_catalog_record(raw: bytes | None, max_bytes: int = MAX_CATALOG_RECORD_BYTES) -> dict | Invalid | None:
    """A ``catalog`` record value -> the item record (``item_id`` as a string), an :class:`Invalid` with
    the same reasons as events (the worker logs and counts it, then goes on), or None for a tombstone
    (the topic is compacted; deletions are not applied). Never raises."""
    if raw is None:
        return None
    doc = json_object(raw, max_bytes)
    if isinstance(doc, Invalid):
        return doc
    if doc.get("item_id") is None:
        return Invalid("missing_field", "missing item_id")
    item_id = _as_id("item_id", doc["item_id"])
    if isinstance(item_id, Invalid):
        return item_id
    doc["item_id"] = item_id
    return doc
