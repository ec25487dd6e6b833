"""The batch handler: one micro-batch of Faust events through :func:`stream_rec.pipeline.process_batch_isolating`,
and what the worker does around it, in this order (the agent in worker/app.py only loops over
``take_batches`` and calls :func:`handle_batch`):

    incoming_records   Faust events -> the pipeline's ``Incoming`` records
    batch_queries      the context.text queries encoded (worker/catalog.py)
    process            the pipeline, each user's state read by ``services.read_user_state``
    stage              new states and erasures staged in the table (``services.stage_user_states``)
    changelog          the staged states' changelog records handed to the producer (worker/table.py)
    sent               recommendations, re-routed events, dead letters handed to the producer (worker/sends.py)
    settled            at most ``max_in_flight_batches`` batches unacknowledged (worker/sends.py)
    metrics            counters and histograms (:func:`record_metrics`)

The names are the latency microscope's marks (worker/trace.py).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import replace
from typing import Any, Sequence

from .. import metrics
from ..io.topics import read_headers, rerouted_headers
from ..pipeline import TIMED_PHASES, BatchResult, Incoming, LoadState, process_batch_isolating
from ..recsys.exploring import arm_table_key
from .catalog import context_vectors
from .context import WorkerContext
from .sends import OutRecord, send_records, topic_partitions
from .services import WorkerServices, read_user_state, stage_user_states

log = logging.getLogger(__name__)


async def handle_batch(ctx: WorkerContext, batch: Sequence[Any]) -> None:
    """Run one micro-batch: read states, process, stage states, send records, update metrics. The HTTP
    listener's thread holds back until the records are handed over (``services.gate``)."""
    services = ctx.services
    services.gate.busy()
    try:
        await _handle(ctx, services, batch)
    finally:
        services.gate.idle()


async def _handle(ctx: WorkerContext, services: WorkerServices, batch: Sequence[Any]) -> None:
    trace = services.tracer.batch(batch) if services.tracer is not None else None  # the latency microscope
    if not services.config.partitions:  # the events topic's partition count, for the partitioner check
        partitions = await topic_partitions(ctx.app.producer, ctx.events_topic)
        services.config = replace(services.config, partitions=partitions)
    incoming = incoming_records(batch, epoch=ctx.settings.events_epoch)
    model = services.model  # one version for the whole batch, even if a reload lands meanwhile
    queries = await batch_queries(services, model, incoming)
    _mark(trace, "queries")
    if services.explorer is not None:  # the arm records: read through the table (staged first)
        services.explorer.read_arm = arm_reader(ctx.table)
    result = process_batch_isolating(incoming, state_reader(ctx), model, services.config, queries=queries,
                                     enricher=services.enricher, on_error=_log_batch_error,
                                     explorer=services.explorer)
    _mark(trace, "process")
    stage_user_states(services.state_cache, ctx.table, result, incoming)
    _mark(trace, "stage")
    futures = await ctx.table.send_changelog_batches()
    _mark(trace, "changelog")
    futures += await send_records(ctx.app.producer, *output_records(ctx, batch, result))
    sent = time.time()
    for future in futures:
        future.add_done_callback(services.note_delivery)
    if services.ui is not None:  # the pages (worker/live.py): live lists of watched users, item counts
        services.ui.on_batch(result.recommendations, result.deleted)
    if trace:
        trace.mark("sent")
        trace.deliveries(futures)
    services.gate.idle()  # what is left waits for the broker
    # Acks are not awaited batch by batch: at most max_in_flight_batches batches stay unacknowledged
    # (sends.InFlightBatches says why that is safe). A send that still fails after the producer's
    # retries is raised here, once its batch's deliveries are done, and stops the worker (worker/app.py).
    services.in_flight.add(futures)
    await services.in_flight.settle()
    if services.delivery_failure is not None:  # a newer batch failed while an older one is still in flight
        raise services.delivery_failure
    _mark(trace, "settled")
    if ctx.table.store_error is not None:
        raise RuntimeError(f"writing delivered states to the local store failed: {ctx.table.store_error!r}")
    record_metrics(services, len(batch), result, sent)
    services.watchdog.batch_handled()
    if trace:
        trace.finish(result)


def _mark(trace, name: str) -> None:
    if trace is not None:
        trace.mark(name)


def _log_batch_error(exc: BaseException) -> None:
    log.error("processing a micro-batch raised %r; processing its events one at a time (an event that raises "
              "again goes to the DLQ as processing_error)", exc, exc_info=exc)


def _received_at(message, wall: float, mono: float) -> float:
    time_in = getattr(message, "time_in", None)  # monotonic, set by Faust's monitor on arrival
    return wall - (mono - time_in) if time_in else wall


def incoming_records(batch: Sequence[Any], epoch: int = 0) -> list[Incoming]:
    """The pipeline's view of Faust events: bytes, where they came from (and where a re-routed copy was
    first written; ``epoch``: Settings.events_epoch), when the worker got them."""
    wall, mono = time.time(), time.monotonic()
    out = []
    for e in batch:
        m = e.message
        origin, problem = read_headers(m.headers)
        out.append(Incoming(m.value, m.key, topic=m.topic, partition=m.partition, offset=m.offset,
                            received_at=_received_at(m, wall, mono), origin=origin, header_error=problem,
                            epoch=epoch))
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


def state_reader(ctx: WorkerContext) -> LoadState:
    """``load_state(user_id, partition)`` for the pipeline: :func:`~.services.read_user_state`."""
    cache, table = ctx.services.state_cache, ctx.table
    return lambda user_id, partition: read_user_state(cache, table, user_id.encode(), partition)


def arm_reader(table):
    """``read_arm(partition, item_id)`` for the explorer: the arm's record staged or stored on that partition."""
    return lambda partition, item_id: table.stored(arm_table_key(partition, item_id), partition)


def output_records(ctx: WorkerContext, batch: Sequence[Any],
                   result: BatchResult) -> tuple[list[OutRecord], list[OutRecord]]:
    """(the records sent as record batches: recommendations and re-routed events; the dead letters)."""
    records = [OutRecord(ctx.recommendations_topic, rec["user_id"].encode(), json.dumps(rec).encode())
               for rec in result.recommendations]
    for index, partition in result.rerouted:  # to the partition of the key: applied there, once
        m = batch[index].message
        records.append(OutRecord(m.topic, m.key, m.value, partition=partition,
                                 timestamp_ms=None if m.timestamp is None else int(m.timestamp * 1000),
                                 headers=rerouted_headers(m.headers, m.partition, m.offset)))
    if result.arms:  # every worker's view of the arms (recsys/exploring.py): the explore-arms topic
        topic = ctx.settings.topic(ctx.settings.explore_arms_topic)
        records += [OutRecord(topic, arm_table_key(p, item), arm) for (p, item), arm in result.arms.items()]
    dead = [OutRecord(ctx.dlq_topic, _original_key(bad), json.dumps(bad).encode()) for bad in result.dlq]
    return records, dead


def _original_key(dead_letter: dict) -> bytes | None:
    key = dead_letter["original_key_b64"]
    return None if key is None else base64.b64decode(key)


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
    if result.explore:  # exploration on (services.explorer) and something counted
        record_explore_metrics(services.explorer, result)
    services.users_seen.difference_update(result.deleted)
    if result.applied:
        for phase in TIMED_PHASES:
            metrics.MODEL_STEP_SECONDS.labels(stage=phase).observe(result.phase_seconds.get(phase, 0.0))
        for ts in result.event_timestamps:
            metrics.EVENT_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        for ts in result.received_at:
            metrics.CONSUME_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        services.users_seen.update(result.states)
    metrics.USERS_IN_STATE.set(len(services.users_seen))


def record_explore_metrics(explorer, result: BatchResult) -> None:
    """The exploration's counters (docs/EXPLORATION.md) and its arms by state."""
    counts = result.explore
    metrics.EXPLORE_IMPRESSIONS.inc(counts["impressions"])
    metrics.EXPLORE_HITS.inc(counts["hits"])
    metrics.EXPLORE_SLOTS.labels(state="exploring").inc(counts["exploring"])
    metrics.EXPLORE_SLOTS.labels(state="graduated").inc(counts["graduated_slots"])
    metrics.EXPLORE_GRADUATED.inc(counts["graduated"])
    metrics.EXPLORE_RETIRED.inc(counts["retired"])
    states = explorer.states(time.time())
    for state in ("exploring", "graduated", "retired"):
        metrics.EXPLORE_ARMS.labels(state=state).set(states[state])
