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
from .catalog import catalog_loop
from .faust_ext import (BatchedChangelogTable, app_options, broker_silence_s, consumer_lag, events_unacked, recovering,
                        rocksdb_options, take_batches, waits_of)
from .models import control_loop
from .services import WorkerServices
from .watchdog import check_stall

RAW = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")  # our own codecs


def build_app(settings: Settings, services: WorkerServices | None = None) -> faust.App:
    """The Faust app with its topics, table, agent and tasks. ``app.services`` holds the live model."""
    services = services or WorkerServices(settings)
    changelog = topic_spec(settings, "changelog")  # the topic spec also rules the topics Faust creates itself
    Path(settings.table_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(settings.app_id, **app_options(settings))
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by faust_ext.LowLatencyConsumerThread
    app.services = services
    events = app.topic(settings.topic(settings.events_topic), partitions=settings.partitions, **RAW)
    recommendations = app.topic(settings.topic(settings.recommendations_topic), partitions=settings.partitions, **RAW)
    dlq = app.topic(settings.topic(settings.dlq_topic), partitions=1, **RAW)
    app.state_table = app.tables.add(BatchedChangelogTable(  # raw codec: stream_rec/state.py
        app, name=STATE_TABLE, beacon=app.tables.beacon, key_type=bytes, value_type=bytes,
        partitions=changelog.partitions, extra_topic_configs=changelog.configs, options=rocksdb_options(settings)))

    # an agent error stops the worker, its batch unacked (not Faust's restart on the next events: RELIABILITY.md)
    @app.agent(events, supervisor_strategy=mode.CrashingSupervisor)
    async def process_events(stream):
        gc.freeze()  # what the worker's start-up created stays too (see worker/run.py)
        if services.tracer is not None:  # the latency microscope (Settings.trace_file)
            services.tracer.install_app(app)
        fill_s = max(settings.batch_max_wait_ms, settings.batch_fill_max_ms) / 1000.0
        events_topic = events.get_topic_name()
        async for batch in take_batches(stream, settings.batch_max_events, fill_s,
                                        max_wait_s=settings.batch_max_wait_ms / 1000.0,
                                        behind=lambda: consumer_lag(app, events_topic)):
            await handle_batch(app, batch, recommendations.get_topic_name(), dlq.get_topic_name())

    async def on_rebalance(app, partitions, **kwargs) -> None:  # partitions revoked or assigned
        app.services.forget_partitions(app.state_table)

    app.on_partitions_revoked.connect(on_rebalance)
    app.on_partitions_assigned.connect(on_rebalance)

    async def joined(app, partitions, **kwargs) -> None:  # /readyz: the group answered (worker/http.py)
        app.services.joined = True

    app.on_partitions_assigned.connect(joined)

    @app.task
    async def follow_catalog():  # every worker holds the whole catalog
        await catalog_loop(services.catalog, settings)

    @app.task
    async def warm_encoder():  # load the LLM encoder before the first catalog item or query needs it
        await services.catalog_vectors.warm_up(services.model)

    @app.task
    async def follow_control():  # hot reload on {"type": "reload"} (every worker: group-less consumer)
        await control_loop(services.live, settings)

    if settings.model and settings.model_poll_s > 0:
        @app.task
        async def watch_models():  # hot reload when a newer model lands in --model
            await services.live.watch(settings.model_poll_s)

    if settings.drift_finetune:
        @app.task
        async def watch_drift():  # a drift alarm of the online monitor starts a fine-tune (in a thread)
            if services.finetuner is not None:  # None: --model cannot take a fine-tuned model (logged)
                await follow_alarms(services.enricher.monitor, services.finetuner)

    @app.timer(interval=2.0)
    async def report_lag():  # the lag gauge, and the stall watchdog fed with what waits (worker/watchdog.py)
        lag = consumer_lag(app, events.get_topic_name())
        metrics.CONSUMER_LAG.set(lag)
        check_stall(services.watchdog, lag + events_unacked(app, events.get_topic_name()), recovering(app),
                    lambda: waits_of(app, services.in_flight.pending()),
                    undelivered_s=services.in_flight.oldest_undelivered_s(), silent_s=broker_silence_s(app))

    return app
