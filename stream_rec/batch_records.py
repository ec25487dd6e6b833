"""One micro-batch's records in and out (pure, no Kafka; stream_rec/pipeline.py runs the phases).

In: what the worker hands over (:class:`Incoming`) and the first phase, :func:`validate_batch` -- bad records
to the DLQ (:func:`dlq_record`), events on another partition than their key's re-routed, each user's valid
events under her pseudonym -- and the filters of events a state applied already (:func:`fresh_events`).
Out: :class:`BatchResult` (what the worker stages and sends) and :func:`recommendation_record`. Between
them, :class:`PipelineConfig`."""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Sequence

from .io.topics import key_partition
from .privacy import pseudonymize
from .recsys.explore import ExplorePolicy
from .recsys.freshness import FreshnessPolicy
from .state import UserState, copy_origin
from .validation import DELETE_USER, Event, Invalid, validate_event

HISTORY_IN_RECORD = 5  # last items echoed in each recommendation record (for `tail` and debugging)


@dataclass(frozen=True)
class Incoming:
    """One consumed record, as the agent hands it over."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    received_at: float  # worker clock when the record was taken from the stream
    # (partition, offset) where a re-routed copy was first written (header io.topics.REROUTED_FROM); else None
    origin: tuple[int, int] | None = None
    header_error: str = ""  # what is wrong with the record's headers (io.topics.read_headers): DLQ bad_header
    epoch: int = 0  # Settings.events_epoch: which events topic the offsets count in

    @property
    def position(self) -> int:
        """The partition as a user state remembers it: with the events epoch, so that the offsets of a new
        events topic (which start at 0 again) are not taken for redeliveries of the old topic's."""
        return self.epoch << 16 | self.partition


@dataclass
class BatchResult:
    states: dict[str, bytes] = field(default_factory=dict)  # user_id -> encoded new state
    last_index: dict[str, int] = field(default_factory=dict)  # user_id -> batch index of its last applied event
    recommendations: list[dict] = field(default_factory=list)
    dlq: list[dict] = field(default_factory=list)
    # user_id -> batch index of the delete_user event that erased the user's state (the agent deletes the
    # table key in that event's context, so the tombstone lands on the user's changelog partition). A
    # user with events after the deletion also has a fresh entry in ``states``.
    deleted: dict[str, int] = field(default_factory=dict)
    invalid: Counter = field(default_factory=Counter)  # reason -> count
    # (batch index, partition its key belongs to) of events that arrived on another partition (a producer
    # with another partitioner): the worker re-sends each there; not applied here
    rerouted: list[tuple[int, int]] = field(default_factory=list)
    # (user_id, batch index) of delete_user events that arrived on another partition than the user's: the
    # worker deletes the user's key on *that* partition too (a state left there by such a producer)
    erased_elsewhere: list[tuple[str, int]] = field(default_factory=list)
    applied: int = 0  # events that changed a state
    duplicates: int = 0  # redelivered events skipped (offset already applied)
    replayed: int = 0  # users whose list was sent again for their redelivered last applied event
    event_timestamps: list[float] = field(default_factory=list)  # of applied events (latency metrics)
    received_at: list[float] = field(default_factory=list)
    # phase -> seconds: validate, load, step (GRU), store, rank (top-K), emit (metrics, the latency microscope)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    fresh_slots: int = 0  # list slots the freshness policy gave to new items (in the lists sent)
    # exploration (recsys/exploring.py): the arm records to stage, (partition, item id) -> encoded ArmStats
    arms: dict[tuple[int, str], bytes] = field(default_factory=dict)
    explore: Counter = field(default_factory=Counter)  # impressions, hits, exploring / graduated slots


@dataclass(frozen=True)
class PipelineConfig:
    top_k: int = 10
    history_len: int = 50
    max_event_bytes: int = 16384
    check_key: bool = True
    half_precision_state: bool = True
    pseudonymize_key: str = field(default="", repr=False)  # see stream_rec/privacy.py
    context_alpha: float = 1.0  # weight of an event's context.text query in its list (0 = ignore queries)
    partitions: int = 0  # of the events topic: events off their key's partition are re-routed (0 = no check)
    dlq_max_original_bytes: int = 128 * 1024  # original bytes kept in a DLQ record (see dlq_record)
    # slots for items new since training (0 slots = off); None: the model's own policy (``model_policy``)
    freshness: FreshnessPolicy | None = None
    # the exploration bandit (recsys/explore.py; in place of the freshness policy); None = off
    explore: ExplorePolicy | None = None

    @classmethod
    def from_settings(cls, settings) -> "PipelineConfig":
        return cls(top_k=settings.top_k, history_len=settings.history_len, max_event_bytes=settings.max_event_bytes,
                   pseudonymize_key=settings.pseudonymize_key,
                   context_alpha=getattr(settings, "context_alpha", 1.0),
                   dlq_max_original_bytes=settings.dlq_max_original_bytes,
                   freshness=None if settings.fresh_slots < 0 else FreshnessPolicy(
                       slots=settings.fresh_slots, max_age_s=settings.fresh_max_age_s, min_ratio=settings.fresh_min_ratio,
                       by=settings.fresh_by, min_similarity=settings.fresh_min_similarity),
                   explore=ExplorePolicy.from_settings(settings))


DLQ_MAX_KEY_BYTES = 1024  # record keys are user ids (<= 256 characters); a longer key is cut in the DLQ
DLQ_MAX_DETAIL_CHARS = 500


def dlq_record(msg: Incoming, invalid: Invalid, now: float, max_original_bytes: int = 128 * 1024) -> dict:
    """The events-dlq record: original bytes (base64) + where they came from + why they failed.

    The original value is kept up to ``max_original_bytes`` (``original_truncated`` says whether it was
    cut, ``original_size`` is its full length) and the key up to ``DLQ_MAX_KEY_BYTES``, so a DLQ record
    always fits what the worker's producer can send, whatever the size of the record it describes."""
    value = msg.value or b""
    key = msg.key
    return {
        "original_value_b64": base64.b64encode(value[:max_original_bytes]).decode("ascii"),
        "original_key_b64": None if key is None else base64.b64encode(key[:DLQ_MAX_KEY_BYTES]).decode("ascii"),
        "original_size": len(value),
        "original_truncated": len(value) > max_original_bytes,
        "original_key_truncated": key is not None and len(key) > DLQ_MAX_KEY_BYTES,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "reason": invalid.reason,
        "detail": invalid.detail[:DLQ_MAX_DETAIL_CHARS],
        "failed_at": now,
    }


def validate_batch(batch: Sequence[Incoming], model, config: PipelineConfig, *, now: float,
                   result: BatchResult) -> dict[str, list[tuple[int, Event]]]:
    """Each user's valid events in arrival (= offset) order; invalid records go to ``result.dlq``, events
    on another partition than their key's to ``result.rerouted`` (and a ``delete_user`` among them to
    ``result.erased_elsewhere`` too). With ``pseudonymize_key`` users are keyed by their pseudonym (after
    the key check, which compares raw ids). Each event's pseudonym and partition are computed here and
    nowhere else: a user's events in the result are all on her state's partition, which is where the
    pipeline reads her state and the worker writes it."""
    known_item = (lambda item: item in model.row_of) if model is not None else (lambda item: False)
    by_user: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for index, msg in enumerate(batch):
        header_error = msg.header_error or origin_problem(msg, config.partitions)
        if header_error:
            checked = Invalid("bad_header", header_error)
        else:
            checked = validate_event(msg.value, key=msg.key, check_key=config.check_key,
                                     max_bytes=config.max_event_bytes, known_item=known_item, now=now)
        if isinstance(checked, Invalid):
            result.invalid[checked.reason] += 1
            result.dlq.append(dlq_record(msg, checked, now, config.dlq_max_original_bytes))
            continue
        if config.pseudonymize_key:
            checked = replace(checked, user_id=pseudonymize(checked.user_id, config.pseudonymize_key))
        home = key_partition(msg.key, config.partitions) if config.partitions and msg.key else msg.partition
        if home != msg.partition:  # another partitioner: the user's state is not on this partition
            result.rerouted.append((index, home))
            if checked.event_type == DELETE_USER:  # and erase what such a producer left here
                result.erased_elsewhere.append((checked.user_id, index))
            continue
        by_user[checked.user_id].append((index, checked))
    return by_user


def origin_problem(msg: Incoming, partitions: int) -> str:
    """Why ``msg``'s origin header cannot be a worker's (a copy comes from another partition of the same
    topic), or "" (also when it has none)."""
    if msg.origin is None:
        return ""
    partition = msg.origin[0]
    if partition == msg.partition or (partitions and partition >= partitions):
        return f"re-route origin partition {partition} for an event on partition {msg.partition} of {partitions or '?'}"
    return ""


def fresh_events(state: UserState, items: list[tuple[int, Event]], batch: Sequence[Incoming]) -> list[tuple[int, Event]]:
    """``items`` less those applied already: redelivered (offset), or a re-routed copy applied before or
    earlier in this batch."""
    fresh, copies = [], set()
    for i, e in items:
        msg = batch[i]
        if state.already_applied(msg.position, msg.offset):
            continue
        if msg.origin is not None:
            origin = copy_origin(msg.origin, msg.key, msg.value)
            if origin in copies or state.applied_copy(origin):
                continue
            copies.add(origin)
        fresh.append((i, e))
    return fresh


def is_last_applied(state: UserState, msg: Incoming) -> bool:
    """``msg`` is the event the state applied last (a redelivery of it: its list may not have gone out)."""
    return state.offset == msg.offset and state.partition == msg.position


def recommendation_record(user_id: str, state: UserState, items: list[tuple[str, float]], *, model_version: str,
                          last: Incoming | None, event_ts: float, now: float, extra: dict | None = None) -> dict:
    """``extra`` (from ``recsys.enricher.Enricher.finish``): ``reasons`` (one per item) and ``interests``.
    ``last``: the event the list answers (None for a lookup: no ``latency_ms`` then)."""
    record = {
        "user_id": user_id,
        "items": [{"item_id": item, "score": round(score, 6)} for item, score in items],
        "model_version": model_version,
        "event_timestamp": event_ts,
        "produced_at": now,
        "latency_ms": None if last is None else round((now - last.received_at) * 1000.0, 3),
        "history": state.seen_items()[-HISTORY_IN_RECORD:],
    }
    if last is None:
        del record["latency_ms"]
    if extra:
        for entry, reason in zip(record["items"], extra.get("reasons", ())):
            entry["reason"] = reason
        if extra.get("interests"):
            record["interests"] = extra["interests"]
        if "explore" in extra:
            record["explore"] = extra["explore"]
    return record


def merge_at(merged: BatchResult, one: BatchResult, index: int) -> None:
    """Add the result of the one-event batch ``[batch[index]]`` to ``merged`` (its batch indexes become
    ``index``; a user's deletion drops what ``merged`` held for her)."""
    for user_id in one.deleted:
        merged.deleted[user_id] = index
        merged.states.pop(user_id, None)
        merged.last_index.pop(user_id, None)
    merged.states.update(one.states)
    merged.last_index.update((user_id, index) for user_id in one.states)
    merged.rerouted.extend((index, partition) for _, partition in one.rerouted)
    merged.erased_elsewhere.extend((user_id, index) for user_id, _ in one.erased_elsewhere)
    merged.recommendations.extend(one.recommendations)
    merged.dlq.extend(one.dlq)
    merged.invalid.update(one.invalid)
    merged.applied += one.applied
    merged.duplicates += one.duplicates
    merged.replayed += one.replayed
    merged.event_timestamps.extend(one.event_timestamps)
    merged.received_at.extend(one.received_at)
    for phase, seconds in one.phase_seconds.items():
        merged.phase_seconds[phase] = merged.phase_seconds.get(phase, 0.0) + seconds
    merged.fresh_slots += one.fresh_slots
    merged.arms.update(one.arms)
    merged.explore.update(one.explore)
