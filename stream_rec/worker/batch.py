"""The batch handler: one micro-batch of Faust events through :func:`stream_rec.pipeline.process_batch`,
with the table reads and writes, the sends and the metrics around it (the agent in worker/app.py only
loops over ``take_batches`` and calls :func:`handle_batch`)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Callable, Sequence

import faust

from .. import metrics
from ..pipeline import BatchResult, Incoming, process_batch
from .catalog import context_vectors
from .faust_ext import RecordBatches, event_context
from .services import StateCache, WorkerServices


async def handle_batch(app: faust.App, batch: Sequence[Any], recs_topic: str, dlq_topic: str) -> None:
    """Run one micro-batch: read states, process, write states, send records, update metrics."""
    services: WorkerServices = app.services
    table = app.state_table
    incoming = incoming_records(batch)
    model = services.model  # one version for the whole batch, even if a reload lands meanwhile
    queries = await context_vectors(services.catalog_vectors, model, [m.value for m in incoming])
    result = process_batch(incoming, state_reader(table, services.state_cache, batch), model, services.config,
                           queries=queries, enricher=services.enricher)
    write_states(table, services, batch, result)
    futures = await send_records(app.producer, table, result, recs_topic, dlq_topic)
    sent = time.time()
    # Acks are awaited one batch late, so the stream is not paused for a broker round trip per batch.
    # Safe for at-least-once: Faust flushes the producer before every offset commit, so no offset is
    # committed before the records of its batch are delivered. A send that still fails after the
    # producer's retries is raised here, one batch later, and crashes the agent (recorded in the log);
    # the worker does not go on silently.
    previous, services.pending_sends = services.pending_sends, futures
    if previous:
        await asyncio.gather(*previous)
    record_metrics(services, len(batch), result, sent)
    services.watchdog.batch_handled()


def _received_at(message, wall: float, mono: float) -> float:
    time_in = getattr(message, "time_in", None)  # monotonic, set by Faust's monitor on arrival
    return wall - (mono - time_in) if time_in else wall


def incoming_records(batch: Sequence[Any]) -> list[Incoming]:
    """The pipeline's view of Faust events: bytes, where they came from, when the worker got them."""
    wall, mono = time.time(), time.monotonic()
    return [Incoming(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset,
                     _received_at(e.message, wall, mono)) for e in batch]


def state_reader(table, cache: StateCache, batch: Sequence[Any]) -> Callable[[str], bytes | None]:
    """``load_state(user_id)`` for the pipeline: the state cache, else the table in the context of the
    user's own first event of the batch (its partition)."""
    first_event_of = {}
    for e in batch:
        first_event_of.setdefault(e.message.key, e)

    def load_state(user_id: str) -> bytes | None:
        key = user_id.encode()
        cached = cache.get(key)
        if cached is not None:
            return cached
        event = first_event_of.get(key)
        if event is None:  # pseudonymised id (not the record key): Faust looks in every local partition
            return table.get(key)
        with event_context(event):  # the user's own partition
            return table.get(key)

    return load_state


def write_states(table, services: WorkerServices, batch: Sequence[Any], result: BatchResult) -> None:
    """Deletions (a changelog tombstone) and new states, each in the context of the user's event that
    caused it, so they land on the user's partition; the state cache follows."""
    cache = services.state_cache
    for user_id, index in result.deleted.items():
        cache.discard(user_id.encode())
        if user_id not in result.states:  # erased and nothing after: delete the key (changelog tombstone)
            with event_context(batch[index]):
                try:
                    del table[user_id.encode()]
                except KeyError:
                    pass
        services.users_seen.discard(user_id)
    for user_id, state in result.states.items():
        key = user_id.encode()
        with event_context(batch[result.last_index[user_id]]):
            table[key] = state
        cache.put(key, state)


async def send_records(producer, table, result: BatchResult, recs_topic: str, dlq_topic: str) -> list:
    """Hand the changelog batches, the recommendations (one record batch per partition) and the DLQ
    records to the producer; returns their delivery futures."""
    futures = await table.send_changelog_batches()
    if result.recommendations:
        recs = RecordBatches(producer._ensure_producer())
        await recs.ready(recs_topic)
        for rec in result.recommendations:
            recs.add(recs_topic, rec["user_id"].encode(), json.dumps(rec).encode())
        futures += await recs.send()
    for bad in result.dlq:
        key = None if bad["original_key_b64"] is None else base64.b64decode(bad["original_key_b64"])
        futures.append(await producer.send(dlq_topic, key, json.dumps(bad).encode(), None, None, None))
    return futures


def record_metrics(services: WorkerServices, n_events: int, result: BatchResult, sent: float) -> None:
    metrics.EVENTS_CONSUMED.inc(n_events)
    metrics.BATCH_SIZE.labels(stage="events").observe(n_events)
    for reason, n in result.invalid.items():
        metrics.EVENTS_INVALID.labels(reason=reason).inc(n)
    metrics.EVENTS_DLQ.inc(len(result.dlq))
    metrics.EVENTS_SKIPPED_DUPLICATE.inc(result.duplicates)
    metrics.RECOMMENDATIONS_EMITTED.inc(len(result.recommendations))
    if result.deleted:
        metrics.USERS_DELETED.inc(len(result.deleted))
    if result.applied:
        metrics.MODEL_STEP_SECONDS.labels(stage="step").observe(result.step_seconds)
        metrics.MODEL_STEP_SECONDS.labels(stage="topk").observe(result.topk_seconds)
        for ts in result.event_timestamps:
            metrics.EVENT_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        for ts in result.received_at:
            metrics.CONSUME_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        services.users_seen.update(result.states)
    metrics.USERS_IN_STATE.set(len(services.users_seen))
