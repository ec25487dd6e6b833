"""One micro-batch of the stream as plain functions (no Kafka, no Faust), in named phases:

    phase             what                                                        passes on
    validate_batch    raw records -> valid events by user (bad ones -> DLQ,       {user: [(batch index, Event)]}
                      misplaced ones -> result.rerouted)
    load_users        stored states; redelivered events dropped (or replayed);    TouchedUsers: B users
                      deletions
    initial_hiddens   the stored vector if this model wrote it, else initial       [B] x [H]
                      state (new user) or rebuilt from the stored history
    positive_events   grade the previous lists; negative feedback not stepped     [B] x [(batch index, Event)]
    step_users        one GRU step per positive event, batched across users       [B] x [H]
    store_states      new states, encoded                                         result.states {user: bytes}
    rank_users        top-K per user, seen items excluded (+ query, Enricher)     [B] x [(item_id, score)]
    emit_records      recommendation records                                      result.recommendations

``process_batch`` is what the unit tests and the benchmark call directly; ``current_record`` is the same
ranking for one user without a new event, from the stored state alone (the worker's lookup,
``GET /recommendations/{user_id}``); the worker calls
``process_batch_isolating`` (the same, contained per record: an event whose processing raises goes to the
DLQ as ``processing_error`` and the rest of its batch is processed). The worker only moves bytes in and
out: it reads states from the table, writes ``BatchResult.states`` back and sends
``BatchResult.recommendations`` / ``BatchResult.dlq`` (and re-sends ``BatchResult.rerouted``).

Two rules keep a user's state right whatever reaches the worker:

* **Partitioner.** A user's state lives on the partition Kafka's default partitioner (murmur2) gives her
  key. An event that arrived on another one (a producer with another partitioner, e.g. librdkafka's
  CRC32 default) is not applied: ``validate_batch`` lists it in ``result.rerouted`` and the worker
  re-sends it to the right partition with a header naming its origin (``io.topics.REROUTED_FROM``); the
  state remembers the last applied origin offset per origin partition, so a copy re-sent twice (a crash
  before the commit) is applied once. A ``delete_user`` that arrived elsewhere is re-routed the same way
  and also erases whatever state sits on the partition where it landed (``result.erased_elsewhere``).
* **Redelivery.** Events already applied (offset <= the state's) are skipped. When all of a user's
  events in the batch are redelivered and the newest is the one the state applied last, the user's list
  is sent again from the stored state (``result.replayed``): the state's changelog record may have been
  delivered before a crash while the recommendation was not.

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

from .io.topics import key_partition
from .model.sequences import rewarm, run_steps, time_gaps
from .privacy import pseudonymize
from .recsys.context import boost_queries, context_text
from .recsys.freshness import FreshnessPolicy, model_policy
from .recsys.ranking import RankBatch, fresh_lists, plain_lists, rescore, top_k_lists
from .state import StateDecodeError, UserState, append_history, decode_state, encode_state, model_tag
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

    @classmethod
    def from_settings(cls, settings) -> "PipelineConfig":
        return cls(top_k=settings.top_k, history_len=settings.history_len, max_event_bytes=settings.max_event_bytes,
                   pseudonymize_key=settings.pseudonymize_key,
                   context_alpha=getattr(settings, "context_alpha", 1.0),
                   dlq_max_original_bytes=settings.dlq_max_original_bytes,
                   freshness=None if settings.fresh_slots < 0 else FreshnessPolicy(
                       slots=settings.fresh_slots, max_age_s=settings.fresh_max_age_s, min_ratio=settings.fresh_min_ratio,
                       by=settings.fresh_by, min_similarity=settings.fresh_min_similarity))


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


def state_partitions(batch: Sequence[Incoming], config: PipelineConfig) -> dict[bytes, int]:
    """State key -> the partition that holds it, for the users of ``batch``: the key's partition under
    the default partitioner (``config.partitions``) -- states live only there -- or, without a partition
    count, the partition the user's event came in on. The worker reads states with it."""
    out: dict[bytes, int] = {}
    for msg in batch:
        if msg.key is None:
            continue
        key = msg.key
        if config.pseudonymize_key:
            key = pseudonymize(key.decode("utf-8", "replace"), config.pseudonymize_key).encode()
        out[key] = key_partition(msg.key, config.partitions) if config.partitions else msg.partition
    return out


def recommendation_record(user_id: str, state: UserState, items: list[tuple[str, float]], model_version: str,
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
    return record


@dataclass
class TouchedUsers:
    """The users of a batch with new events, in order of their first event (parallel lists, [B] each)."""

    users: list[str] = field(default_factory=list)
    states: list[UserState] = field(default_factory=list)  # as stored; the new ones after store_states
    pending: list[list[tuple[int, Event]]] = field(default_factory=list)  # new (batch index, event), oldest first
    # positions of users whose list is sent again, state unchanged (``pending`` holds the redelivered event)
    replays: set[int] = field(default_factory=set)


def process_batch(batch: Sequence[Incoming], load_state: Callable[[str], bytes | None], model,
                  config: PipelineConfig = PipelineConfig(), now: Callable[[], float] = time.time,
                  queries: dict[int, np.ndarray] | None = None, enricher=None) -> BatchResult:
    """Process one micro-batch. ``load_state(user_id)`` returns the stored state bytes or None; ``model``
    is a :class:`~stream_rec.model.recommender.Recommender` (or None when no catalog is known yet: every
    event is then ``unknown_item``). ``queries`` maps batch indexes of events that carry a
    ``context.text`` to its text vector: the list of that user is then boosted toward items matching the
    query (``recsys.context.boost_queries``; the user's newest query in the batch counts).
    ``enricher`` (a :class:`~stream_rec.recsys.enricher.Enricher`, or None = the plain model) adds negative
    feedback, MMR / exposure re-ranking, reasons, interests and the online quality monitor.
    Never raises on bad input: bad records end up in ``result.dlq``."""
    result = BatchResult()
    phases, clock = result.phase_seconds, time.perf_counter
    t0 = clock()
    by_user = validate_batch(batch, model, config, now(), result)
    t1 = clock()
    touched = load_users(by_user, batch, load_state, result, enricher)
    t2 = clock()
    phases["validate"], phases["load"] = t1 - t0, t2 - t1
    if not touched.users:
        return result
    hiddens = initial_hiddens(model, touched.states)
    positives = positive_events(touched, enricher)
    hiddens = step_users(model, hiddens, touched.states, positives, config.half_precision_state)
    t3 = clock()
    phases["step"] = t3 - t2
    store_states(touched, positives, hiddens, model_tag(model.version), batch, config, result, enricher)
    t4 = clock()
    lists, extras = rank_users(model, touched, hiddens, queries or {}, config, enricher, result=result, now=now())
    t5 = clock()
    phases["rank"] = t5 - t4
    emit_records(touched, lists, extras, model.version, batch, now(), result)
    phases["store"], phases["emit"] = t4 - t3, clock() - t5
    return result


def process_batch_isolating(batch: Sequence[Incoming], load_state: Callable[[str], bytes | None], model,
                            config: PipelineConfig = PipelineConfig(), now: Callable[[], float] = time.time,
                            queries: dict[int, np.ndarray] | None = None, enricher=None,
                            on_error: Callable[[BaseException], None] | None = None) -> BatchResult:
    """:func:`process_batch`, contained per record: if the batch raises (a bug, or a record that trips
    the model -- validation itself never raises), its events are processed again one at a time, each on
    top of the states the earlier ones produced, and an event whose own processing raises goes to the DLQ
    as ``processing_error``. So no single record can stop the stream, and no event is skipped silently.
    ``on_error(exc)`` is told of the batch's failure (the worker logs it). The one-at-a-time pass sends one
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
        overlay.update(one.states)
        merge_at(merged, one, index)
    return merged


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


def current_record(user_id: str, raw_state: bytes | None, model, config: PipelineConfig = PipelineConfig(),
                   now: float | None = None, enricher=None) -> dict | None:
    """The list the user has now, as a recommendation record, from the stored state alone: the phases of a
    micro-batch without a new event -- ``initial_hiddens`` (the stored vector, or one rebuilt from the
    stored history when another model version wrote it) and ``rank_users`` (seen items excluded, the
    enricher's stages) -- with nothing recorded (no exposure counted, no list for the quality monitor).
    None when there is no state for ``user_id`` (its stored key: the pseudonym when pseudonymising)."""
    if not raw_state or model is None:
        return None
    state = read_state(raw_state)
    if state.hidden is None and not state.history:
        return None
    touched = TouchedUsers([user_id], [state], [[]])
    hiddens = initial_hiddens(model, touched.states)
    lists, extras = rank_users(model, touched, hiddens, {}, config, enricher, record=False)
    return recommendation_record(user_id, state, lists[0], model.version, None, state.last_timestamp,
                                 time.time() if now is None else now, extras[0])


def validate_batch(batch: Sequence[Incoming], model, config: PipelineConfig, now: float,
                   result: BatchResult) -> dict[str, list[tuple[int, Event]]]:
    """Each user's valid events in arrival (= offset) order; invalid records go to ``result.dlq``, events
    on another partition than their key's to ``result.rerouted`` (and a ``delete_user`` among them to
    ``result.erased_elsewhere`` too). With ``pseudonymize_key`` users are keyed by their pseudonym (after
    the key check, which compares raw ids)."""
    known_item = (lambda item: item in model.row_of) if model is not None else (lambda item: False)
    by_user: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for index, msg in enumerate(batch):
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


def read_state(raw: bytes | None) -> UserState:
    """The stored state, or a fresh one (no state yet, or an unreadable old one: start the user over
    rather than stop the stream)."""
    try:
        return decode_state(raw) if raw else UserState()
    except StateDecodeError:
        return UserState()


def load_users(by_user: dict[str, list[tuple[int, Event]]], batch: Sequence[Incoming],
               load_state: Callable[[str], bytes | None], result: BatchResult, enricher) -> TouchedUsers:
    """The users with new events and their stored states. Redelivered events (offset, or origin of a
    re-routed copy, already applied) are dropped: effectively-once state under at-least-once delivery; a
    user whose newest redelivered event is the one the state applied last is replayed (her list is sent
    again). A ``delete_user`` drops the stored state and the user's earlier events of the batch (and the
    enricher's memory of the user, also for a deletion that arrived on another partition)."""
    touched = TouchedUsers()
    if enricher is not None:
        for user_id, _ in result.erased_elsewhere:
            enricher.forget(user_id)
    for user_id, items in by_user.items():
        state = read_state(load_state(user_id))
        fresh = [(i, e) for i, e in items
                 if not state.already_applied(batch[i].partition, batch[i].offset, batch[i].origin)]
        result.duplicates += len(items) - len(fresh)
        if not fresh and is_last_applied(state, batch[items[-1][0]]) and items[-1][1].event_type != DELETE_USER:
            touched.replays.add(len(touched.users))
            fresh = items[-1:]
        deletes = [n for n, (_, e) in enumerate(fresh) if e.event_type == DELETE_USER]
        if deletes:
            result.deleted[user_id] = fresh[deletes[-1]][0]
            state, fresh = UserState(), fresh[deletes[-1] + 1:]
            if enricher is not None:
                enricher.forget(user_id)
        if fresh:
            touched.users.append(user_id)
            touched.states.append(state)
            touched.pending.append(fresh)
    result.replayed = len(touched.replays)
    return touched


def is_last_applied(state: UserState, msg: Incoming) -> bool:
    """``msg`` is the event the state applied last (a redelivery of it: its list may not have gone out)."""
    return state.offset == msg.offset and state.partition == msg.partition


def initial_hiddens(model, states: Sequence[UserState]) -> list[np.ndarray]:
    """Each user's hidden vector before this batch: the stored one when this model wrote it, the
    model's initial state for a new user, else rebuilt from the stored history (a state of another
    model version or hidden size).  [B] states -> [B] x [H]"""
    tag = model_tag(model.version)
    hiddens: list[np.ndarray | None] = [None] * len(states)
    new, stale = [], []
    for n, st in enumerate(states):
        if st.hidden is not None and st.model_tag == tag and st.hidden.shape[0] == model.hidden_size:
            hiddens[n] = st.hidden
        elif not st.history:
            new.append(n)
        else:
            stale.append(n)
    if new:
        for n, h in zip(new, model.init_state(len(new))):
            hiddens[n] = h
    for n, h in zip(stale, rewarm(model, [states[n].history for n in stale])):
        hiddens[n] = h
    return hiddens


def positive_events(touched: TouchedUsers, enricher) -> list[list[tuple[int, Event]]]:
    """The new events stepped through the GRU: all of them, or with an enricher the positive ones
    (negative feedback is kept apart), after each user's first new event graded the list sent before.
    Nothing for a replayed user: her state stays as stored."""
    replays = touched.replays
    pending = [[] if n in replays else fresh for n, fresh in enumerate(touched.pending)]
    if enricher is None:
        return pending
    applied = [n for n in range(len(touched.users)) if n not in replays]
    enricher.observe([touched.users[n] for n in applied], [pending[n][0][1] for n in applied])
    return [[(i, e) for i, e in fresh if not enricher.is_negative(e)] for fresh in pending]


def step_users(model, hiddens: list[np.ndarray], states: Sequence[UserState],
               positives: Sequence[Sequence[tuple[int, Event]]], half_precision: bool) -> list[np.ndarray]:
    """One GRU step per positive event, batched across users.  [B] x [H] -> [B] x [H]"""
    seqs = []
    for st, fresh in zip(states, positives):
        rows = model.rows_for([e.item_id for _, e in fresh])
        gaps = time_gaps([e.timestamp for _, e in fresh], st.last_timestamp)
        seqs.append(list(zip(rows, gaps)))
    hiddens = run_steps(model, hiddens, seqs)
    if half_precision:  # serve from the state as stored, so a restarted worker agrees with this one
        hiddens = list(np.stack(hiddens).astype(np.float16).astype(np.float32))  # one conversion per batch
    return hiddens


def store_states(touched: TouchedUsers, positives: Sequence[Sequence[tuple[int, Event]]],
                 hiddens: Sequence[np.ndarray], tag: int, batch: Sequence[Incoming], config: PipelineConfig,
                 result: BatchResult, enricher) -> None:
    """The users' new states (history of positives, negatives, last applied offset, origins of re-routed
    events), into ``touched.states`` and, encoded, ``result.states``. Replayed users keep theirs."""
    for n, (user_id, st, fresh) in enumerate(zip(touched.users, touched.states, touched.pending)):
        if n in touched.replays:
            continue
        history = st.history
        for _, e in positives[n]:
            history = append_history(history, e.item_id, e.timestamp, config.history_len)
        negatives = st.negatives  # kept in the state (survives a restart); no enricher: carried unchanged
        if enricher is not None:
            negatives = enricher.remember_negatives(user_id, [e for _, e in fresh], negatives)
        last_index = fresh[-1][0]
        st = UserState(hiddens[n], history, batch[last_index].partition, batch[last_index].offset,
                       st.n_events + len(fresh), tag, negatives, applied_origins(st.origins, batch, fresh))
        touched.states[n] = st
        result.states[user_id] = encode_state(st, half=config.half_precision_state)
        result.last_index[user_id] = last_index
        result.applied += len(fresh)
        result.event_timestamps.extend(e.timestamp for _, e in fresh)
        result.received_at.extend(batch[i].received_at for i, _ in fresh)


def applied_origins(origins: dict[int, int], batch: Sequence[Incoming],
                    fresh: Sequence[tuple[int, Event]]) -> dict[int, int]:
    """``origins`` (origin partition -> last applied origin offset) after the re-routed events of ``fresh``."""
    rerouted = [batch[i].origin for i, _ in fresh if batch[i].origin]
    if not rerouted:
        return origins
    out = dict(origins)
    for partition, offset in rerouted:
        out[partition] = max(offset, out.get(partition, -1))
    return out


def rank_users(model, touched: TouchedUsers, hiddens: Sequence[np.ndarray], queries: dict[int, np.ndarray],
               config: PipelineConfig, enricher, record: bool = True, result: BatchResult | None = None,
               now: float | None = None) -> tuple[list[list[tuple[str, float]]], list[dict | None]]:
    """Top-K of every touched user, seen items excluded; a user's newest query of the batch (``queries``:
    batch index -> vector) boosts their list; with an enricher its stages and annotations (``record``: the
    lists are sent, so the enricher counts them). With ``config.freshness`` on, the plain lists give slots
    to items new since training (counted in ``result.fresh_slots`` when they stay in the final list; a
    list the enricher re-ranks starts from the plain scores).
    -> ([B] lists of (item_id, score), [B] extra fields or None)"""
    batch = RankBatch(model, touched.users, hiddens, [[r for r in model.rows_for(st.seen_items()) if r]
                                                      for st in touched.states], config.top_k,
                      events=[[e for _, e in fresh] for fresh in touched.pending],
                      negatives=[st.negatives for st in touched.states], context_alpha=config.context_alpha)
    if config.context_alpha != 0.0:
        for n, fresh in enumerate(touched.pending):
            asked = [(i, e) for i, e in fresh if i in queries]
            if asked:
                batch.queries[n], batch.query_texts[n] = queries[asked[-1][0]], context_text(asked[-1][1].context)
    put_in: list[set[str]] = []
    policy = config.freshness if config.freshness is not None else model_policy(model)
    ages = model.item_ages(now) if policy.slots > 0 else None
    if ages is not None and bool((ages[1:] < policy.max_age_s).any()):
        lists, put_in = fresh_lists(batch, policy, ages)
    else:
        lists = plain_lists(batch)
    if enricher is not None:
        lists, extras = enricher.finish(batch, lists, record=record)
    else:
        asked = sorted(batch.queries)
        if asked:
            scores = rescore(batch, asked, [boost_queries])
            for n, items in zip(asked, top_k_lists(model, scores, config.top_k, [batch.seen[n] for n in asked])):
                lists[n] = items
        extras = [None] * len(lists)
    if result is not None and put_in:
        result.fresh_slots += sum(len(ids & {i for i, _ in items}) for ids, items in zip(put_in, lists))
    return lists, extras


def emit_records(touched: TouchedUsers, lists: Sequence[list[tuple[str, float]]], extras: Sequence[dict | None],
                 model_version: str, batch: Sequence[Incoming], now: float, result: BatchResult) -> None:
    """One recommendation record per touched user, after the user's last new event."""
    for user_id, st, fresh, items, extra in zip(touched.users, touched.states, touched.pending, lists, extras):
        last = batch[fresh[-1][0]]
        result.recommendations.append(
            recommendation_record(user_id, st, items, model_version, last, fresh[-1][1].timestamp, now, extra))
