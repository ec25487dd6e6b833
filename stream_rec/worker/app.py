"""The Faust app of the worker: topics, the state table, the events agent, the tasks beside it.
Declarations only; what they call lives in the modules next to this one (see __init__.py)."""

from __future__ import annotations

import gc
from pathlib import Path

import faust
import mode

from .. import metrics
from ..io.topics import STATE_TABLE, topic_spec
from ..learning.finetune import follow_alarms
from ..settings import Settings
from .batch import handle_batch
from .batching import BatchPolicy
from .catalog import catalog_loop
from .context import WorkerContext, bind
from .intake import take_batches
from .models import control_loop
from .observe import ConsumerLag, broker_silence_s, events_unacked, recovering, waits_of
from .options import app_options
from .services import WorkerServices, arms_loop
from .table import BatchedChangelogTable, rocksdb_options
from .transport import register_transport
from .watchdog import check_stall

RAW = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")  # our own codecs


def build_app(settings: Settings, services: WorkerServices | None = None) -> WorkerContext:
    """The Faust app with its topics, table, agent and tasks, and the context that carries them."""
    register_transport()  # streamrec:// (worker/transport.py), before the app resolves its broker URLs
    services = services or WorkerServices(settings)
    changelog = topic_spec(settings, "changelog")  # the topic spec also rules the topics Faust creates itself
    Path(settings.table_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(settings.app_id, **app_options(settings))
    events = app.topic(settings.topic(settings.events_topic), partitions=settings.partitions, **RAW)
    recommendations = app.topic(settings.topic(settings.recommendations_topic), partitions=settings.partitions, **RAW)
    dlq = app.topic(settings.topic(settings.dlq_topic), partitions=1, **RAW)
    table = app.tables.add(BatchedChangelogTable(  # raw codec: stream_rec/state.py
        app, name=STATE_TABLE, beacon=app.tables.beacon, key_type=bytes, value_type=bytes,
        partitions=changelog.partitions, extra_topic_configs=changelog.configs, options=rocksdb_options(settings)))
    ctx = WorkerContext(app=app, settings=settings, services=services, table=table,
                        events_topic=events.get_topic_name(), recommendations_topic=recommendations.get_topic_name(),
                        dlq_topic=dlq.get_topic_name())
    bind(ctx)  # for the consumer, which Faust builds with nothing but the app (worker/context.py)
    declare_agent(ctx, events)
    declare_tasks(ctx)
    return ctx


def declare_agent(ctx: WorkerContext, events) -> None:
    """The events agent (micro-batches through the batch handler) and what a rebalance resets."""
    app, services = ctx.app, ctx.services
    lag = ConsumerLag(app, ctx.events_topic)

    # an agent error stops the worker, its batch unacked (not Faust's restart on the next events: RELIABILITY.md)
    @app.agent(events, supervisor_strategy=mode.CrashingSupervisor)
    async def process_events(stream):
        gc.freeze()  # what the worker's start-up created stays too (see worker/run.py)
        if services.tracer is not None:  # the latency microscope (Settings.trace_file)
            services.tracer.install_app(app)
        async for batch in take_batches(stream, BatchPolicy.from_settings(ctx.settings), behind=lag,
                                        on_first=services.gate.busy):
            await handle_batch(ctx, batch)

    async def on_rebalance(app, partitions, **kwargs) -> None:  # partitions revoked or assigned
        services.forget_partitions(ctx.table)

    async def joined(app, partitions, **kwargs) -> None:  # /readyz: the group answered (worker/http.py)
        services.joined = True

    app.on_partitions_revoked.connect(on_rebalance)
    app.on_partitions_assigned.connect(on_rebalance)
    app.on_partitions_assigned.connect(joined)

    @app.timer(interval=2.0)
    async def report_lag():  # the lag gauge, and the stall watchdog fed with what waits (worker/watchdog.py)
        metrics.CONSUMER_LAG.set(lag())
        check_stall(services.watchdog, lag.last + events_unacked(app, ctx.events_topic), recovering(app),
                    lambda: waits_of(app, services.in_flight.pending()),
                    undelivered_s=services.in_flight.oldest_undelivered_s(), silent_s=broker_silence_s(app))


def declare_tasks(ctx: WorkerContext) -> None:
    """The tasks beside the stream: the catalog, the encoder's warm-up, hot reloads, fine-tuning."""
    app, settings, services = ctx.app, ctx.settings, ctx.services

    @app.task
    async def follow_catalog():  # every worker holds the whole catalog
        await catalog_loop(services.catalog, settings)

    @app.task
    async def warm_encoder():  # load the LLM encoder before the first catalog item or query needs it
        await services.catalog_vectors.warm_up(services.model)

    @app.task
    async def follow_control():  # hot reload on {"type": "reload"} (every worker: group-less consumer)
        await control_loop(services.live, settings)

    if settings.explore_slots > 0:  # exploration on (services.explorer)
        @app.task
        async def follow_arms():  # every partition's exploration arms, for this worker's view (every worker)
            await arms_loop(services.explorer, settings)

    if settings.model and settings.model_poll_s > 0:
        @app.task
        async def watch_models():  # hot reload when a newer model lands in --model
            await services.live.watch(settings.model_poll_s)

    if settings.drift_finetune:
        @app.task
        async def watch_drift():  # a drift alarm of the online monitor starts a fine-tune (in a thread)
            if services.finetuner is not None:  # None: --model cannot take a fine-tuned model (logged)
                await follow_alarms(services.enricher.monitor, services.finetuner)
