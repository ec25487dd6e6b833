"""The batch handler: one micro-batch of Faust events through :func:`stream_rec.pipeline.process_batch_isolating`,
with the table reads and staged writes, the sends and the metrics around it (the agent in worker/app.py
only loops over ``take_batches`` and calls :func:`handle_batch`)."""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import faust

from .. import metrics
from ..io.topics import read_headers, rerouted_headers
from ..pipeline import BatchResult, Incoming, process_batch_isolating, state_partitions
from .catalog import context_vectors
from .faust_ext import RecordBatches, topic_partitions
from .services import StateCache, WorkerServices, read_user_state

log = logging.getLogger(__name__)


async def handle_batch(app: faust.App, batch: Sequence[Any], recs_topic: str, dlq_topic: str) -> None:
    """Run one micro-batch: read states, process, stage states, send records, update metrics."""
    services: WorkerServices = app.services
    table = app.state_table
    trace = services.tracer.batch(batch) if services.tracer is not None else None  # the latency microscope
    if not services.config.partitions:  # the events topic's partition count, for the partitioner check
        partitions = await topic_partitions(app.producer, batch[0].message.topic)
        services.config = replace(services.config, partitions=partitions)
    incoming = incoming_records(batch)
    model = services.model  # one version for the whole batch, even if a reload lands meanwhile
    queries = await batch_queries(services, model, incoming)
    if trace:
        trace.mark("queries")
    result = process_batch_isolating(incoming, state_reader(table, services.state_cache, incoming, services.config),
                                     model, services.config, queries=queries, enricher=services.enricher,
                                     on_error=_log_batch_error)
    if trace:
        trace.mark("process")
    stage_states(table, services, batch, result)
    if trace:
        trace.mark("stage")
    futures = await send_records(app.producer, table, batch, result, recs_topic, dlq_topic, trace)
    for future in futures:
        future.add_done_callback(services.note_delivery)
    sent = time.time()
    if services.ui is not None:  # the pages (worker/live.py): live lists of watched users, item counts
        services.ui.on_batch(result.recommendations, result.deleted)
    if trace:
        trace.mark("sent")
        trace.deliveries(futures)
    # Acks are not awaited batch by batch: at most max_in_flight_batches batches stay unacknowledged
    # (faust_ext.InFlightBatches says why that is safe). A send that still fails after the producer's
    # retries is raised here, once its batch's deliveries are done, and stops the worker (worker/app.py).
    services.in_flight.add(futures)
    await services.in_flight.settle()
    if services.delivery_failure is not None:  # a newer batch failed while an older one is still in flight
        raise services.delivery_failure
    if trace:
        trace.mark("settled")
    if table.store_error is not None:
        raise RuntimeError(f"writing delivered states to the local store failed: {table.store_error!r}")
    record_metrics(services, len(batch), result, sent)
    services.watchdog.batch_handled()
    if trace:
        trace.finish(result)


def _log_batch_error(exc: BaseException) -> None:
    log.error("processing a micro-batch raised %r; processing its events one at a time (an event that raises "
              "again goes to the DLQ as processing_error)", exc, exc_info=exc)


def _received_at(message, wall: float, mono: float) -> float:
    time_in = getattr(message, "time_in", None)  # monotonic, set by Faust's monitor on arrival
    return wall - (mono - time_in) if time_in else wall


def incoming_records(batch: Sequence[Any]) -> list[Incoming]:
    """The pipeline's view of Faust events: bytes, where they came from (and where a re-routed copy was
    first written), when the worker got them."""
    wall, mono = time.time(), time.monotonic()
    out = []
    for e in batch:
        m = e.message
        origin, problem = read_headers(m.headers)
        out.append(Incoming(m.value, m.key, m.topic, m.partition, m.offset, _received_at(m, wall, mono), origin,
                            problem))
    return out


async def batch_queries(services: WorkerServices, model, incoming: Sequence[Incoming]) -> dict:
    """The query vectors of the batch's ``context.text`` (encoded by the catalog's queue). Queries only
    boost lists: if encoding fails, the batch is served without them."""
    try:
        return await context_vectors(services.catalog_vectors, model, [m.value for m in incoming],
                                     services.config.max_event_bytes)
    except Exception as exc:
        log.error("encoding the batch's context.text queries failed, serving without them: %r", exc)
        return {}


def state_reader(table, cache: StateCache, incoming: Sequence[Incoming], config) -> Callable[[str], bytes | None]:
    """``load_state(user_id)`` for the pipeline: the state cache, else the newest value staged or stored
    on the partition that holds the user's state (``pipeline.state_partitions``)."""
    partition_of = state_partitions(incoming, config)

    def load_state(user_id: str) -> bytes | None:
        key = user_id.encode()  # partition None: not a record key (check_key off): every partition is searched
        return read_user_state(cache, table, key, partition_of.get(key))

    return load_state


def stage_states(table, services: WorkerServices, batch: Sequence[Any], result: BatchResult) -> None:
    """Deletions (a changelog tombstone) and new states, staged for the partition of the user's event
    that caused them: in memory now, in the local store once their changelog records are delivered
    (``faust_ext.BatchedChangelogTable``); the state cache follows."""
    cache = services.state_cache
    for user_id, index in result.deleted.items():
        key = user_id.encode()
        cache.discard(key)
        if user_id not in result.states:  # erased and nothing after: a tombstone
            table.stage(key, None, batch[index].message.partition)
        services.users_seen.discard(user_id)
    for user_id, state in result.states.items():
        key = user_id.encode()
        table.stage(key, state, batch[result.last_index[user_id]].message.partition)
        cache.put(key, state)
    for user_id, index in result.erased_elsewhere:  # a state another partitioner's events left there
        key, partition = user_id.encode(), batch[index].message.partition
        if table.stored(key, partition) is not None:
            table.stage(key, None, partition)


async def send_records(producer, table, batch: Sequence[Any], result: BatchResult, recs_topic: str,
                       dlq_topic: str, trace=None) -> list:
    """Hand the changelog batches, the recommendations and the re-routed events (one record batch per
    partition) and the DLQ records to the producer; returns their delivery futures."""
    futures = await table.send_changelog_batches()
    if trace:
        trace.mark("changelog")
    if result.recommendations or result.rerouted:
        records = RecordBatches(producer._ensure_producer())
        await records.ready(recs_topic)
        for rec in result.recommendations:
            records.add(recs_topic, rec["user_id"].encode(), json.dumps(rec).encode())
        for index, partition in result.rerouted:  # to the partition of the key: applied there, once
            m = batch[index].message
            records.add(m.topic, m.key, m.value, partition=partition,
                        timestamp_ms=None if m.timestamp is None else int(m.timestamp * 1000),
                        headers=rerouted_headers(m.headers, m.partition, m.offset))
        futures += await records.send()
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
    metrics.RECOMMENDATIONS_REPLAYED.inc(result.replayed)
    metrics.EVENTS_REROUTED.inc(len(result.rerouted))
    if result.fresh_slots:
        metrics.FRESH_SLOTS.inc(result.fresh_slots)
    if result.deleted:
        metrics.USERS_DELETED.inc(len(result.deleted))
    if result.applied:
        metrics.MODEL_STEP_SECONDS.labels(stage="step").observe(result.phase_seconds.get("step", 0.0))
        metrics.MODEL_STEP_SECONDS.labels(stage="topk").observe(result.phase_seconds.get("rank", 0.0))
        for ts in result.event_timestamps:
            metrics.EVENT_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        for ts in result.received_at:
            metrics.CONSUME_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        services.users_seen.update(result.states)
    metrics.USERS_IN_STATE.set(len(services.users_seen))
