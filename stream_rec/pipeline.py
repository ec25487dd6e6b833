"""One micro-batch of the stream, as plain functions (no Kafka, no Faust):

    raw records -> validate -> group by user -> load state -> skip redelivered -> GRU steps -> top-K
                -> new states + recommendation records + DLQ records

``process_batch`` is what the Faust agent calls (stream_rec/app.py) and what the unit tests and the
benchmark call directly. The agent only moves bytes in and out: it reads states from the table, writes
``BatchResult.states`` back and sends ``BatchResult.recommendations`` / ``BatchResult.dlq``.

Batching across users is where the speed comes from: all users' k-th event of the batch go through the
GRU in one ``Recommender.step`` call, and all touched users share one ``Recommender.topk`` call, so a
batch of 256 events costs a handful of model calls instead of 256.
"""

from __future__ import annotations

import base64
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .kafka import key_partition
from .state import UserState, append_history, decode_state, encode_state, model_tag, StateDecodeError
from .privacy import pseudonymize
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
    # (partition, offset) where a re-routed copy was first written (header REROUTED_FROM); else None
    origin: tuple[int, int] | None = None


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
    # with another partitioner): the agent re-sends each there (REROUTED_FROM header); not applied here
    rerouted: list[tuple[int, int]] = field(default_factory=list)
    # (user_id, batch index) of delete_user events that arrived on another partition than the user's: the
    # agent deletes the user's key on *that* partition too (a state left there by such a producer)
    erased_elsewhere: list[tuple[str, int]] = field(default_factory=list)
    applied: int = 0  # events that changed a state
    duplicates: int = 0  # redelivered events skipped (offset already applied)
    # users whose events in the batch were all redelivered, the newest being the one their state applied
    # last: their list is sent again from the stored state (its recommendation may not have been delivered)
    replayed: int = 0
    event_timestamps: list[float] = field(default_factory=list)  # of applied events (latency metrics)
    received_at: list[float] = field(default_factory=list)
    step_seconds: float = 0.0
    topk_seconds: float = 0.0


@dataclass(frozen=True)
class PipelineConfig:
    top_k: int = 10
    history_len: int = 50
    max_event_bytes: int = 16384
    check_key: bool = True
    half_precision_state: bool = True
    pseudonymize_key: str = field(default="", repr=False)  # see stream_rec/privacy.py
    context_alpha: float = 1.0  # weight of an event's context.text query in its list (0 = ignore queries)
    partitions: int = 0  # of the events topic: events on another partition than their key's are re-routed (0 = no check)
    dlq_max_original_bytes: int = 128 * 1024  # original bytes kept in a DLQ record (see dlq_record)

    @classmethod
    def from_settings(cls, settings) -> "PipelineConfig":
        return cls(top_k=settings.top_k, history_len=settings.history_len, max_event_bytes=settings.max_event_bytes,
                   pseudonymize_key=settings.pseudonymize_key,
                   context_alpha=getattr(settings, "context_alpha", 1.0),
                   dlq_max_original_bytes=settings.dlq_max_original_bytes)


DLQ_MAX_KEY_BYTES = 1024  # record keys are user ids (<= 256 characters); a longer key is cut in the DLQ
DLQ_MAX_DETAIL_CHARS = 500


REROUTED_FROM = "stream-rec-rerouted-from"  # header of a re-routed copy: b"<partition>:<offset>" of the original


def origin_of(headers) -> tuple[int, int] | None:
    """The original (partition, offset) of a re-routed record, from its headers (None when not re-routed)."""
    for name, value in headers or ():
        if name == REROUTED_FROM:
            try:
                partition, offset = value.split(b":")
                return int(partition), int(offset)
            except (ValueError, AttributeError):
                return None
    return None


def rerouted_headers(headers, msg: Incoming) -> list[tuple[str, bytes]]:
    """The headers of a re-routed copy of ``msg``: its own (minus an older origin) plus where it came from.
    A copy of a copy keeps the first origin."""
    origin = msg.origin or (msg.partition, msg.offset)
    kept = [(name, value) for name, value in headers or () if name != REROUTED_FROM]
    return kept + [(REROUTED_FROM, f"{origin[0]}:{origin[1]}".encode())]


def state_partitions(batch: Sequence[Incoming], config: "PipelineConfig") -> dict[bytes, int]:
    """State key -> the partition that holds it, for the users of ``batch``: the key's partition under
    the default partitioner (``config.partitions``) -- states live only there -- or, without a partition
    count, the partition the user's event came in on. The agent reads states with it."""
    out: dict[bytes, int] = {}
    for msg in batch:
        if msg.key is None:
            continue
        key = msg.key
        if config.pseudonymize_key:
            key = pseudonymize(key.decode("utf-8", "replace"), config.pseudonymize_key).encode()
        out[key] = key_partition(msg.key, config.partitions) if config.partitions else msg.partition
    return out


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


def run_steps(model, hiddens: list[np.ndarray], sequences: list[list[tuple[int, float]]]) -> list[np.ndarray]:
    """Advance each hidden state through its own sequence of (item row, gap seconds), batching across
    sequences: round r steps every sequence that has an r-th element, in one model call."""
    hiddens = list(hiddens)
    longest = max((len(s) for s in sequences), default=0)
    for r in range(longest):
        active = [i for i, s in enumerate(sequences) if len(s) > r]
        states = np.stack([hiddens[i] for i in active])
        rows = [sequences[i][r][0] for i in active]
        gaps = [sequences[i][r][1] for i in active]
        out = model.step(states, rows, gaps)
        for j, i in enumerate(active):
            hiddens[i] = out[j]
    return hiddens


def _gaps(prev_ts: float | None, timestamps: Sequence[float]) -> list[float]:
    out = []
    for ts in timestamps:
        out.append(0.0 if prev_ts is None else max(0.0, ts - prev_ts))
        prev_ts = ts
    return out


def rewarm(model, states: list[UserState]) -> list[np.ndarray]:
    """Hidden vectors rebuilt by replaying each state's history through ``model`` (for states written by
    another model version or with another hidden size). Items the model does not know are skipped."""
    seqs = []
    for st in states:
        known = [(row, ts) for row, (_, ts) in zip(model.rows_for(st.seen_items()), st.history) if row]
        seqs.append(list(zip([r for r, _ in known], _gaps(None, [ts for _, ts in known]))))
    init = list(model.init_state(len(states))) if states else []
    return run_steps(model, init, seqs)


def recommendation_record(user_id: str, state: UserState, items: list[tuple[str, float]], model_version: str,
                          last: Incoming, event_ts: float, now: float, extra: dict | None = None) -> dict:
    """``extra`` (from ``live.enrich.Enricher.finish``): ``reasons`` (one per item) and ``interests``."""
    record = {
        "user_id": user_id,
        "items": [{"item_id": item, "score": round(score, 6)} for item, score in items],
        "model_version": model_version,
        "event_timestamp": event_ts,
        "produced_at": now,
        "latency_ms": round((now - last.received_at) * 1000.0, 3),
        "history": state.seen_items()[-HISTORY_IN_RECORD:],
    }
    if extra:
        for entry, reason in zip(record["items"], extra.get("reasons", ())):
            entry["reason"] = reason
        if extra.get("interests"):
            record["interests"] = extra["interests"]
    return record


def is_last_applied(state: UserState, msg: Incoming) -> bool:
    """``msg`` is the event the state applied last (a redelivery of it: its list may not have gone out)."""
    return state.offset == msg.offset and state.partition == msg.partition


def process_batch(batch: Sequence[Incoming], load_state: Callable[[str], bytes | None], model,
                  config: PipelineConfig = PipelineConfig(), now: Callable[[], float] = time.time,
                  queries: dict[int, np.ndarray] | None = None, enricher=None) -> BatchResult:
    """Process one micro-batch. ``load_state(user_id)`` returns the stored state bytes or None; ``model``
    is a :class:`~stream_rec.model.recommender.Recommender` (or None when no catalog is known yet: every
    event is then ``unknown_item``). ``queries`` maps batch indexes of events that carry a
    ``context.text`` to its text vector: the list of that user is then boosted toward items matching the
    query (``stream_rec.live.service.contextual_topk``; the user's newest query in the batch counts).
    ``enricher`` (a :class:`~stream_rec.live.enrich.Enricher`, or None = the plain model) adds negative
    feedback, MMR / exposure re-ranking, reasons, interests and the online quality monitor.
    Never raises on bad input: bad records end up in ``result.dlq``."""
    result = BatchResult()
    t_now = now()
    known_item = (lambda item: item in model.row_of) if model is not None else (lambda item: False)

    # 1. validate; group the good ones by user, in arrival (= offset) order
    by_user: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for index, msg in enumerate(batch):
        checked = validate_event(msg.value, key=msg.key, check_key=config.check_key,
                                 max_bytes=config.max_event_bytes, known_item=known_item, now=t_now)
        if isinstance(checked, Invalid):
            result.invalid[checked.reason] += 1
            result.dlq.append(dlq_record(msg, checked, t_now, config.dlq_max_original_bytes))
        else:
            if config.pseudonymize_key:  # after the key check, which compares raw ids
                checked = replace(checked, user_id=pseudonymize(checked.user_id, config.pseudonymize_key))
            if config.partitions and msg.key is not None:
                home = key_partition(msg.key, config.partitions)
                if home != msg.partition:  # another partitioner: the user's state is not on this partition
                    result.rerouted.append((index, home))
                    if checked.event_type == DELETE_USER:  # and erase what such a producer left here
                        result.erased_elsewhere.append((checked.user_id, index))
                        if enricher is not None:
                            enricher.forget(checked.user_id)
                    continue
            by_user[checked.user_id].append((index, checked))
    if not by_user:
        return result

    # 2. load states, drop redelivered events (effectively-once state under at-least-once delivery),
    # apply deletions: a delete_user drops the stored state and the user's earlier events in the batch
    users, states, pending = [], [], []
    replays: set[int] = set()  # positions in ``users`` whose list is re-sent, their state unchanged
    for user_id, items in by_user.items():
        raw = load_state(user_id)
        try:
            state = decode_state(raw) if raw else UserState()
        except StateDecodeError:
            state = UserState()  # unreadable old state: start over rather than stop the stream
        fresh = [(i, e) for i, e in items
                 if not state.already_applied(batch[i].partition, batch[i].offset, batch[i].origin)]
        result.duplicates += len(items) - len(fresh)
        if not fresh and is_last_applied(state, batch[items[-1][0]]) and items[-1][1].event_type != DELETE_USER:
            replays.add(len(users))
            users.append(user_id)
            states.append(state)
            pending.append(items[-1:])
            continue
        deletes = [n for n, (_, e) in enumerate(fresh) if e.event_type == DELETE_USER]
        if deletes:
            result.deleted[user_id] = fresh[deletes[-1]][0]
            state, fresh = UserState(), fresh[deletes[-1] + 1:]
            if enricher is not None:  # erasure covers the enricher's per-user memory too
                enricher.forget(user_id)
        if fresh:
            users.append(user_id)
            states.append(state)
            pending.append(fresh)
    if not users:
        return result
    result.replayed = len(replays)
    tag = model_tag(model.version)

    # 3. hidden vectors: stored ones when they come from this model, else rebuilt from history
    t0 = time.perf_counter()
    hiddens: list[np.ndarray | None] = []
    stale, fresh_users = [], []
    for n, st in enumerate(states):
        usable = st.hidden is not None and st.model_tag == tag and st.hidden.shape[0] == model.hidden_size
        if usable:
            hiddens.append(st.hidden)
        elif not st.history:  # a new user: the model's initial state, nothing to replay
            hiddens.append(None)
            fresh_users.append(n)
        else:
            hiddens.append(None)
            stale.append(n)
    if fresh_users:
        for n, h in zip(fresh_users, model.init_state(len(fresh_users))):
            hiddens[n] = h
    for n, h in zip(stale, rewarm(model, [states[n] for n in stale])):
        hiddens[n] = h

    # 4. one GRU step per new event, batched across users (with an enricher: negative feedback is not stepped)
    positives = [[] if n in replays else fresh for n, fresh in enumerate(pending)]
    if enricher is not None:
        applied = [n for n in range(len(users)) if n not in replays]
        enricher.observe([users[n] for n in applied], [pending[n][0][1] for n in applied])
        positives = [[(i, e) for i, e in fresh if not enricher.is_negative(e)] for fresh in positives]
    seqs = []
    for st, fresh in zip(states, positives):
        rows = model.rows_for([e.item_id for _, e in fresh])
        gaps = _gaps(st.last_timestamp, [e.timestamp for _, e in fresh])
        seqs.append(list(zip(rows, gaps)))
    hiddens = run_steps(model, hiddens, seqs)
    if config.half_precision_state:  # serve from the state as stored, so a restarted worker agrees with this one
        hiddens = list(np.stack(hiddens).astype(np.float16).astype(np.float32))  # one conversion per batch
    result.step_seconds = time.perf_counter() - t0

    # 5. new states
    for n, (user_id, st, fresh) in enumerate(zip(users, states, pending)):
        if n in replays:
            continue
        history = st.history
        for _, e in positives[n]:
            history = append_history(history, e.item_id, e.timestamp, config.history_len)
        negatives = st.negatives  # kept in the state (survives a restart); no enricher: carried unchanged
        if enricher is not None:
            negatives = enricher.remember_negatives(user_id, [e for _, e in fresh], negatives)
        last_index = fresh[-1][0]
        origins = st.origins
        if any(batch[i].origin for i, _ in fresh):
            origins = dict(origins)
            for i, _ in fresh:
                if batch[i].origin:
                    origins[batch[i].origin[0]] = max(batch[i].origin[1], origins.get(batch[i].origin[0], -1))
        st = UserState(hiddens[n], history, batch[last_index].partition, batch[last_index].offset,
                       st.n_events + len(fresh), tag, negatives, origins)
        states[n] = st
        result.states[user_id] = encode_state(st, half=config.half_precision_state)
        result.last_index[user_id] = last_index
        result.applied += len(fresh)
        result.event_timestamps.extend(e.timestamp for _, e in fresh)
        result.received_at.extend(batch[i].received_at for i, _ in fresh)

    # 6. top-K for every touched user, seen items excluded, one call
    t0 = time.perf_counter()
    exclude = [[r for r in model.rows_for(st.seen_items()) if r] for st in states]
    lists = model.topk(np.stack(hiddens), config.top_k, exclude)
    user_queries = {}
    for n, fresh in enumerate(pending):
        asked = [i for i, _ in fresh if queries and i in queries]
        if asked:
            user_queries[n] = queries[asked[-1]]
    if user_queries and config.context_alpha != 0.0:
        from .live.service import contextual_topk

        for n, items in contextual_topk(model, hiddens, exclude, user_queries, config.top_k,
                                        config.context_alpha).items():
            lists[n] = items
    extras = [None] * len(users)
    if enricher is not None:
        lists, extras = enricher.finish(model, users, states, pending, hiddens, exclude, lists, config.top_k,
                                        user_queries if config.context_alpha != 0.0 else {}, queries or {},
                                        config.context_alpha)
    result.topk_seconds = time.perf_counter() - t0

    t_sent = now()
    for user_id, st, fresh, items, extra in zip(users, states, pending, lists, extras):
        last = batch[fresh[-1][0]]
        result.recommendations.append(
            recommendation_record(user_id, st, items, model.version, last, fresh[-1][1].timestamp, t_sent, extra))
    return result


def process_batch_isolating(batch: Sequence[Incoming], load_state: Callable[[str], bytes | None], model,
                            config: PipelineConfig = PipelineConfig(), now: Callable[[], float] = time.time,
                            queries: dict[int, np.ndarray] | None = None, enricher=None,
                            on_error: Callable[[BaseException], None] | None = None) -> BatchResult:
    """:func:`process_batch`, contained per record: if the batch raises (a bug, or a record that trips
    the model -- validation itself never raises), its events are processed again one at a time, each on
    top of the states the earlier ones produced, and an event whose own processing raises goes to the DLQ
    as ``processing_error``. So no single record can stop the stream, and no event is skipped silently.
    ``on_error(exc)`` is told of the batch's failure (the agent logs it). The one-at-a-time pass sends one
    recommendation per event, and an enricher sees the events of the failed attempt twice (its online
    quality counters only)."""
    try:
        return process_batch(batch, load_state, model, config, now, queries, enricher)
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
    merged = BatchResult()
    overlay: dict[str, bytes | None] = {}  # states written by the events already processed

    def load(user_id: str) -> bytes | None:
        return overlay[user_id] if user_id in overlay else load_state(user_id)

    for index, msg in enumerate(batch):
        query = {0: queries[index]} if queries and index in queries else None
        try:
            one = process_batch([msg], load, model, config, now, query, enricher)
        except Exception as exc:
            merged.invalid["processing_error"] += 1
            merged.dlq.append(dlq_record(msg, Invalid("processing_error", f"{type(exc).__name__}: {exc}"), now(),
                                         config.dlq_max_original_bytes))
            continue
        for user_id in one.deleted:
            overlay[user_id] = None
            merged.deleted[user_id] = index
            merged.states.pop(user_id, None)
            merged.last_index.pop(user_id, None)
        for user_id, state in one.states.items():
            overlay[user_id] = state
            merged.states[user_id] = state
            merged.last_index[user_id] = index
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
        merged.step_seconds += one.step_seconds
        merged.topk_seconds += one.topk_seconds
    return merged
