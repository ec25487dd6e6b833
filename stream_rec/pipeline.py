"""One micro-batch of the stream as plain functions (no Kafka, no Faust), in named phases:

    phase             what                                                        passes on
    validate_batch    raw records -> valid events by user, pseudonymised (bad     {user: [(batch index, Event)]}
    (batch_records)   ones -> DLQ, misplaced ones -> result.rerouted)
    load_users        stored states, read from the partition of the user's        TouchedUsers: B users
                      events; redelivered events dropped (or replayed); deletions
    initial_hiddens   the stored vector if this model wrote it, else initial       [B] x [H]
                      state (new user) or rebuilt from the stored history
    positive_events   grade the previous lists; negative feedback not stepped     [B] x [(batch index, Event)]
    step_users        one GRU step per positive event, batched across users       [B] x [H]
    store_states      new states, encoded                                         result.states {user: bytes}
    rank_users        top-K per user, seen items excluded (+ query, Enricher)     [B] x [(item_id, score)]
    emit_records      recommendation records                                      result.recommendations

Each phase's seconds go into ``BatchResult.phase_seconds`` under the words above without their suffix
(``validate``, ``load``, ``step``, ``store``, ``rank``, ``emit``); the worker exports ``step`` and ``rank``
as ``stream_rec_model_step_seconds{stage=...}`` (:data:`TIMED_PHASES`).

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
  re-sends it to the right partition with a header naming its origin (``io.topics.REROUTED_FROM``). A
  copy is identified by its origin *and* a digest of its key and value (``state.copy_origin``), and the
  state remembers the identities of the last ``state.ORIGINS_KEPT`` copies applied, so a copy re-sent
  twice (a crash before the commit) is applied once, also when both copies are in one micro-batch. The
  header is a producer's claim: one that no worker could have written (not ``P:O``, twice, a partition
  the event cannot come from) sends the event to the DLQ as ``bad_header``; a plausible forged one makes
  the event an event of its own, applied once, and masks nothing but a byte-identical copy of itself. A
  ``delete_user`` that arrived elsewhere is re-routed the same way and also erases whatever state sits on
  the partition where it landed (``result.erased_elsewhere``).
* **Redelivery.** Events already applied (offset <= the state's) are skipped. When all of a user's
  events in the batch are redelivered and the newest is the one the state applied last, the user's list
  is sent again from the stored state (``result.replayed``): the state's changelog record may have been
  delivered before a crash while the recommendation was not.

Batching across users is where the speed comes from: all users' k-th event of the batch go through the
GRU in one ``Recommender.step`` call, and all touched users share one ``Recommender.topk`` call, so a
batch of 256 events costs a handful of model calls instead of 256.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

# Incoming, PipelineConfig, BatchResult, dlq_record and recommendation_record are part of the pipeline's API
from .batch_records import (BatchResult, Incoming, PipelineConfig, dlq_record, fresh_events, is_last_applied,
                            merge_at, recommendation_record, validate_batch)
from .model.sequences import rewarm, run_steps, time_gaps
from .recsys.context import boost_queries, context_text
from .recsys.freshness import serving_policy
from .recsys.ranking import RankBatch, fresh_lists, plain_lists, rescore, top_k_lists
from .recsys.exploring import ArmUpdates, Explorer, event_ordinal, explore_lists, resolve_feedback
from .state import (ORIGINS_KEPT, Origin, UserState, append_history, catalogue_keys, copy_origin, encode_state,
                    model_tag, read_state)
from .validation import DELETE_USER, Event, Invalid

TIMED_PHASES = ("step", "rank")  # phases exported as stream_rec_model_step_seconds{stage=...} by the worker
# load_state(user_id, partition): the user's stored state bytes on that partition (the partition of her events), or None
LoadState = Callable[[str, int], "bytes | None"]


@dataclass
class TouchedUsers:
    """The users of a batch with new events, in order of their first event (parallel lists, [B] each)."""

    users: list[str] = field(default_factory=list)
    states: list[UserState] = field(default_factory=list)  # as stored; the new ones after store_states
    pending: list[list[tuple[int, Event]]] = field(default_factory=list)  # new (batch index, event), oldest first
    # positions of users whose list is sent again, state unchanged (``pending`` holds the redelivered event)
    replays: set[int] = field(default_factory=set)


def states_in(store: Mapping[str, bytes]) -> LoadState:
    """``load_state`` over states kept in a dict by user id (tests, benchmarks, in-process tools): the
    partition is not looked at."""
    return lambda user_id, partition: store.get(user_id)


def process_batch(batch: Sequence[Incoming], load_state: LoadState, model, config: PipelineConfig = PipelineConfig(),
                  now: Callable[[], float] = time.time, queries: dict[int, np.ndarray] | None = None,
                  enricher=None, explorer: Explorer | None = None) -> BatchResult:
    """Process one micro-batch. ``load_state(user_id, partition)`` returns the user's stored state bytes
    on ``partition`` (where her events are) or None; ``model`` is a
    :class:`~stream_rec.model.recommender.Recommender` (or None when no catalog is known yet: every
    event is then ``unknown_item``). ``queries`` maps batch indexes of events that carry a
    ``context.text`` to its text vector: the list of that user is then boosted toward items matching the
    query (``recsys.context.boost_queries``; the user's newest query in the batch counts).
    ``enricher`` (a :class:`~stream_rec.recsys.enricher.Enricher`, or None = the plain model) adds negative
    feedback, MMR / exposure re-ranking, reasons, interests and the online quality monitor. ``explorer``
    (a :class:`~stream_rec.recsys.exploring.Explorer`, or None = off) puts new items in by the exploration
    bandit, counts their impressions and hits (``result.arms``, ``result.explore``) and keeps each user's
    exposure in her state. Never raises on bad input: bad records end up in ``result.dlq``."""
    result = BatchResult()
    phases, clock = result.phase_seconds, time.perf_counter
    t0 = clock()
    by_user = validate_batch(batch, model, config, now=now(), result=result)
    t1 = clock()
    touched = load_users(by_user, batch, load_state, model, result=result, enricher=enricher)
    t2 = clock()
    phases["validate"], phases["load"] = t1 - t0, t2 - t1
    if not touched.users:
        return result
    arms = ArmUpdates(explorer, lambda item: float(model.added_at[model.row_of[item]])) if explorer else None
    if arms is not None:  # each user's first new event resolves the list she held
        resolve_feedback(arms, touched.states, touched.pending, touched.replays, batch)
    hiddens = initial_hiddens(model, touched.states)
    positives = positive_events(touched, enricher)
    hiddens = step_users(model, hiddens, touched.states, positives=positives,
                         half_precision=config.half_precision_state)
    t3 = clock()
    store_states(touched, positives=positives, hiddens=hiddens, tag=model_tag(model.version), batch=batch,
                 config=config, result=result, enricher=enricher)
    t4 = clock()
    lists, extras = rank_users(model, touched, hiddens=hiddens, queries=queries or {}, config=config,
                               enricher=enricher, result=result, now=now(), fresh=arms is None)
    if arms is not None:
        lists, extras = explore_step(arms, model, touched, hiddens=hiddens, lists=lists, extras=extras, batch=batch,
                                     config=config, result=result, now=now())
    t5 = clock()
    emit_records(touched, lists=lists, extras=extras, model_version=model.version, batch=batch, now=now(),
                 result=result)
    if arms is not None:
        arms.finish(result)  # only a batch that went through changes the explorer's records
    phases["step"], phases["store"], phases["rank"], phases["emit"] = t3 - t2, t4 - t3, t5 - t4, clock() - t5
    return result


def process_batch_isolating(batch: Sequence[Incoming], load_state: LoadState, model,
                            config: PipelineConfig = PipelineConfig(), now: Callable[[], float] = time.time,
                            queries: dict[int, np.ndarray] | None = None, enricher=None,
                            on_error: Callable[[BaseException], None] | None = None,
                            explorer: Explorer | None = None) -> BatchResult:
    """:func:`process_batch`, contained per record: if the batch raises (a bug, or a record that trips
    the model -- validation itself never raises), its events are processed again one at a time, each on
    top of the states the earlier ones produced, and an event whose own processing raises goes to the DLQ
    as ``processing_error``. So no single record can stop the stream, and no event is skipped silently.
    ``on_error(exc)`` is told of the batch's failure (the worker logs it). The one-at-a-time pass sends one
    recommendation per event, and an enricher sees the events of the failed attempt twice (its online
    quality counters only)."""
    try:
        return process_batch(batch, load_state, model, config=config, now=now, queries=queries, enricher=enricher,
                             explorer=explorer)
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
    merged = BatchResult()
    overlay: dict[str, bytes | None] = {}  # states written by the events already processed

    def load(user_id: str, partition: int) -> bytes | None:
        return overlay[user_id] if user_id in overlay else load_state(user_id, partition)

    for index, msg in enumerate(batch):
        query = {0: queries[index]} if queries and index in queries else None
        try:
            one = process_batch([msg], load, model, config=config, now=now, queries=query, enricher=enricher,
                                explorer=explorer)
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


def current_record(user_id: str, raw_state: bytes | None, model, config: PipelineConfig = PipelineConfig(),
                   now: float | None = None, enricher=None) -> dict | None:
    """The list the user has now, as a recommendation record, from the stored state alone: the phases of a
    micro-batch without a new event -- ``initial_hiddens`` (the stored vector, or one rebuilt from the
    stored history when another model version wrote it) and ``rank_users`` (seen items excluded, the
    enricher's stages) -- with nothing recorded (no exposure counted, no list for the quality monitor).
    None when there is no state for ``user_id`` (its stored key: the pseudonym when pseudonymising)."""
    return current_records([user_id], [raw_state], model, config=config, now=now, enricher=enricher)[0]


def current_records(user_ids: Sequence[str], raw_states: Sequence[bytes | None], model,
                    config: PipelineConfig = PipelineConfig(), now: float | None = None,
                    enricher=None) -> list[dict | None]:
    """:func:`current_record` for many users at once, ranked in one batch as the stream ranks a micro-batch
    (the worker's lookups are answered in such batches: worker/lookups.py)."""
    out: list[dict | None] = [None] * len(user_ids)
    if model is None:
        return out
    touched, where = TouchedUsers(), []
    for n, (user_id, raw) in enumerate(zip(user_ids, raw_states)):
        state = read_state(raw, model) if raw else None
        if state is not None and (state.hidden is not None or state.history):
            touched.users.append(user_id)
            touched.states.append(state)
            touched.pending.append([])
            where.append(n)
    if not where:
        return out
    hiddens = initial_hiddens(model, touched.states)
    lists, extras = rank_users(model, touched, hiddens=hiddens, queries={}, config=config, enricher=enricher,
                               record=False, fresh=config.explore is None)  # exploration: the plain list
    stamp = time.time() if now is None else now
    for n, user_id, state, items, extra in zip(where, touched.users, touched.states, lists, extras):
        out[n] = recommendation_record(user_id, state, items, model_version=model.version, last=None,
                                       event_ts=state.last_timestamp, now=stamp, extra=extra)
    return out


def load_users(by_user: dict[str, list[tuple[int, Event]]], batch: Sequence[Incoming], load_state: LoadState,
               model, *, result: BatchResult, enricher) -> TouchedUsers:
    """The users with new events and their stored states, each read from the partition of her events (all
    on one partition: ``validate_batch`` re-routes the others). Redelivered events (offset, or origin of a
    re-routed copy, already applied) are dropped: effectively-once state under at-least-once delivery; a
    user whose newest redelivered event is the one the state applied last is replayed (her list is sent
    again). A ``delete_user`` drops the stored state and the user's earlier events of the batch (and the
    enricher's memory of the user, also for a deletion that arrived on another partition)."""
    touched = TouchedUsers()
    if enricher is not None:
        for user_id, _ in result.erased_elsewhere:
            enricher.forget(user_id)
    keys = catalogue_keys(model) if model is not None else None  # once per batch, not per user
    for user_id, items in by_user.items():
        state = read_state(load_state(user_id, batch[items[0][0]].partition), items=keys)
        fresh = fresh_events(state, items, batch)
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


def step_users(model, hiddens: list[np.ndarray], states: Sequence[UserState], *,
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


def store_states(touched: TouchedUsers, *, positives: Sequence[Sequence[tuple[int, Event]]],
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
        st = UserState(hidden=hiddens[n], history=history, partition=batch[last_index].position,
                       offset=batch[last_index].offset, n_events=st.n_events + len(fresh), model_tag=tag,
                       negatives=negatives, origins=applied_origins(st.origins, batch, fresh), exposure=st.exposure)
        touched.states[n] = st
        result.states[user_id] = encode_state(st, half=config.half_precision_state)
        result.last_index[user_id] = last_index
        result.applied += len(fresh)
        result.event_timestamps.extend(e.timestamp for _, e in fresh)
        result.received_at.extend(batch[i].received_at for i, _ in fresh)


def applied_origins(origins: list[Origin], batch: Sequence[Incoming],
                    fresh: Sequence[tuple[int, Event]]) -> list[Origin]:
    """``origins`` (the last applied re-routed copies, oldest first) after the copies among ``fresh``."""
    rerouted = [copy_origin(batch[i].origin, batch[i].key, batch[i].value) for i, _ in fresh if batch[i].origin]
    return (origins + rerouted)[-ORIGINS_KEPT:] if rerouted else origins


def rank_users(model, touched: TouchedUsers, *, hiddens: Sequence[np.ndarray], queries: dict[int, np.ndarray],
               config: PipelineConfig, enricher, record: bool = True, result: BatchResult | None = None,
               now: float | None = None, fresh: bool = True) -> tuple[list[list[tuple[str, float]]], list[dict | None]]:
    """Top-K of every touched user, seen items excluded; a user's newest query of the batch (``queries``:
    batch index -> vector) boosts their list; with an enricher its stages and annotations (``record``: the
    lists are sent, so the enricher counts them). ``fresh`` False: no freshness policy (exploration is
    on: ``explore_step`` is the new-item step). With a freshness policy (``config.freshness``, else the
    model's own), the plain lists give slots to items new since training (counted in ``result.fresh_slots``
    when they stay in the final list; a list the enricher re-ranks starts from the plain scores).
    -> ([B] lists of (item_id, score), [B] extra fields or None)"""
    batch = RankBatch(model, touched.users, hiddens=hiddens, k=config.top_k,
                      seen=[[r for r in model.rows_for(st.seen_items()) if r] for st in touched.states],
                      events=[[e for _, e in fresh] for fresh in touched.pending],
                      negatives=[st.negatives for st in touched.states], context_alpha=config.context_alpha)
    if config.context_alpha != 0.0:
        for n, fresh in enumerate(touched.pending):
            asked = [(i, e) for i, e in fresh if i in queries]
            if asked:
                batch.queries[n], batch.query_texts[n] = queries[asked[-1][0]], context_text(asked[-1][1].context)
    put_in: list[set[str]] = []
    policy = serving_policy(config.freshness, model)
    ages = model.item_ages(now) if policy.slots > 0 and fresh else None
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


def explore_step(arms: ArmUpdates, model, touched: TouchedUsers, *, hiddens: Sequence[np.ndarray], lists: list,
                 extras: list, batch: Sequence[Incoming], config: PipelineConfig, result: BatchResult,
                 now: float) -> tuple[list, list]:
    """Arms put into the lists and counted (``exploring.explore_lists``); states stored with their exposure."""
    seen = [[r for r in model.rows_for(st.seen_items()) if r] for st in touched.states]
    answered = [(batch[fresh[-1][0]].partition, event_ordinal(batch[fresh[-1][0]]), fresh[-1][1].timestamp)
                for fresh in touched.pending]
    lists, extras = explore_lists(arms, model, states=touched.states, hiddens=hiddens, seen=seen, offsets=answered,
                                  lists=lists, extras=extras, replays=touched.replays, now=now)
    for n, user_id in enumerate(touched.users):
        if n not in touched.replays:
            result.states[user_id] = encode_state(touched.states[n], half=config.half_precision_state)
    return lists, extras


def emit_records(touched: TouchedUsers, *, lists: Sequence[list[tuple[str, float]]], extras: Sequence[dict | None],
                 model_version: str, batch: Sequence[Incoming], now: float, result: BatchResult) -> None:
    """One recommendation record per touched user, after the user's last new event."""
    for user_id, st, fresh, items, extra in zip(touched.users, touched.states, touched.pending, lists, extras):
        last = batch[fresh[-1][0]]
        result.recommendations.append(recommendation_record(
            user_id, st, items, model_version=model_version, last=last, event_ts=fresh[-1][1].timestamp, now=now,
            extra=extra))
