"""The Faust service: thin agents around :func:`stream_rec.pipeline.process_batch`.

Data flow: ``events`` -> agent ``process_events`` (micro-batches) -> table ``user-state`` (RocksDB, with a
changelog topic) -> ``recommendations`` (+ ``events-dlq`` for bad input). A background task keeps the live
catalog of every worker up to date from the ``catalog`` topic.

Design decisions
----------------
**Micro-batching with a RocksDB table written behind its changelog.** Faust's own table write
(``table[key] = value``) picks the store partition and the changelog partition from
``faust.streams.current_event()``, which is unset inside ``stream.take()`` batches, and it writes the local
store *before* the changelog record is delivered. We iterate :func:`take_batches` instead (an adaptive
variant of Faust's ``stream.take_events``: batches fill up while a backlog lasts, close 1 ms after the
intake pauses), which yields the Faust ``Event`` objects, and write through
:class:`BatchedChangelogTable`: each new state is *staged* for the partition of the user's own event
(events are keyed by ``user_id`` and the table is co-partitioned with ``events``, so that is the
partition of the user's table key), kept in memory, and written to RocksDB -- with the store's persisted
changelog offset -- only when its changelog record is delivered. A ``kill -9`` therefore never leaves a
local state the changelog lacks (tests/test_reliability_faults.py::test_kill9_during_bursts_*). Records
whose Kafka key is not their ``user_id`` are rejected (``key_mismatch``) because they would break the
co-partitioning. ``take_batches`` acks the batch's offsets only after our loop body *returned*, i.e.
after states are staged and every recommendation/DLQ record is handed to the producer; a body that
raises acks nothing. tests/test_spine_kafka.py::test_restart_recovers_state checks the result end to
end: a worker restarted on the same data dir continues each user's history, and one started on an
*empty* data dir rebuilds the same states from the changelog alone. (The embedded broker under-reports
end offsets after batched produces, which would cut that changelog replay short;
:class:`LowLatencyTransport` confirms them with a fetch, see ``stream_rec.kafka.fetched_end_offsets``.)

**Deletion and pseudonyms.** ``delete_user`` control events (``stream-rec forget``) travel in ``events``
keyed by the user, so they are ordered with the user's own events; the key is deleted in that event's
context, so the tombstone lands on the user's changelog partition. With ``Settings.pseudonymize_key``
the pipeline replaces user ids by their keyed hash right after validation (table reads then search the
worker's local partitions, since the hash is not the record key; writes still use the event context).

**Delivery semantics: at-least-once delivery, effectively-once state.** A crash after sending
recommendations but before the offset commit redelivers events. Each state stores the (partition,
offset) of the last event applied to it; redelivered events (offset <= stored) are skipped and counted in
``stream_rec_events_duplicate_total``, so a user's GRU state and history never apply an event twice.
When all of a user's events in a batch are redelivered and the newest is the one the state applied
last, the user's list is sent again from the stored state (``stream_rec_recommendations_replayed_total``):
the state's changelog record may have been delivered before the crash while the recommendation was
not. A recommendation may be emitted twice for the same event (consumers key by user and keep the newest).

**Table.** RocksDB store (``store='rocksdb://'``, faust-streaming's rocksdict backend), keys are UTF-8
user ids and values our own binary codec (stream_rec/state.py, ``raw`` serializers: no pickle, no JSON
of floats). Data dir = ``Settings.table_dir`` (= data_dir/app_id: Faust's own path leaves the app id out,
so two apps sharing a data dir would mix offsets).

**Sends are batched.** ``await topic.send`` per record caps the worker at ~2.6k ev/s. A batch's
recommendations go into one Kafka record batch per partition (:class:`RecordBatches`, aiokafka's
``send_batch``: one future per partition, not per record), and so do its changelog records
(:class:`BatchedChangelogTable`: same records on the same partitions as Faust's per-key ``send_soon``,
queued by the table writes and handed over before the batch is acked). We await the delivery futures
together, one batch late (the stream does not stop for a broker round trip per batch).
That keeps at-least-once: Faust flushes the producer before it commits offsets, so a batch's offsets are
never committed before its records (and its changelog writes) are delivered.

**Low-latency fetches.** faust-streaming's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: on a
quiet topic a fetch waits that long before returning, which becomes the event->recommendation latency
floor. :class:`LowLatencyTransport` (URL scheme ``streamrec://``) sets ``Settings.fetch_max_wait_ms`` on
the consumer before it starts.

**Catalog per worker, not per partition.** Every worker needs the whole catalog to score, so the catalog
is not a group-consumed agent (that would give each worker only some partitions): a background task in
every worker reads the compacted ``catalog`` topic from the beginning with its own group-less consumer and
applies records in batches through ``Recommender.add_items``. Events for items not in the catalog yet go
to the DLQ as ``unknown_item``. ``--items FILE`` seeds the catalog at start.

**Exposure.** Faust's own web server is disabled (it serves table contents and binds every interface);
the only listener is the Prometheus endpoint on ``Settings.metrics_host`` (localhost by default).

**Model.** Until a trained model directory is given (``--model``), the worker runs
``Recommender.untrained`` (same HybridGRU, random weights) and says so in its logs, in ``model_version``
("untrained-...") and in the ``stream_rec_model_info{trained="false"}`` metric.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import time
import weakref
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import faust
import mode
import numpy as np
from faust.streams import _current_event
from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as aiokafka_driver

from . import metrics
from .kafka import client_kwargs, faust_credentials, fetched_end_offsets
from .live.service import skip_record
from .pipeline import (Incoming, PipelineConfig, origin_of, process_batch_isolating, rerouted_headers,
                       state_partitions)
from .settings import Settings
from .validation import Invalid, validate_catalog_record
from .watchdog import STALL_EXIT_STATUS, StallWatchdog

log = logging.getLogger(__name__)

STATE_TABLE = "user-state"


# --- low-latency consumer ------------------------------------------------------------------------
class LowLatencyConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 1500))
        return consumer


    async def _highwaters(self, partitions):
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        transport = self.transport
        conf = self.app.conf
        return await fetched_end_offsets(
            dict(listed), bootstrap_servers=aiokafka_driver.server_list(transport.url, transport.default_port),
            **aiokafka_driver.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


class LowLatencyConsumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self):
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets) -> bool:
        # Faust flushes the producer right before this. Once any record of ours failed to be delivered, no
        # offset may be committed any more: the batch it belonged to may be acked already (delivery is
        # awaited one batch late), and committing would skip its events for good. The agent stops on the
        # same failure; a restarted worker is redelivered everything after the last good commit.
        failure = getattr(getattr(self.app, "spine", None), "delivery_failure", None)
        if failure is not None:
            log.error("not committing offsets: a record was not delivered (%r)", failure)
            return False
        return await super()._commit(offsets)


class LowLatencyTransport(aiokafka_driver.Transport):
    """faust-streaming's aiokafka transport whose consumer honours ``Settings.fetch_max_wait_ms`` and
    checks end offsets with a fetch (:func:`stream_rec.kafka.fetched_end_offsets`: the embedded broker's
    ListOffsets answer is too low after batched produces, which breaks table recovery)."""

    Consumer = LowLatencyConsumer


faust_drivers.TRANSPORTS.aliases["streamrec"] = f"{__name__}:LowLatencyTransport"


def rocksdb_options(settings: Settings) -> dict:
    """The state table's RocksDB memory bounds (per partition; see Settings.rocksdb_*)."""
    mb = 1024 * 1024
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * mb, "max_write_buffer_number": 2,
            "block_cache_size": settings.rocksdb_block_cache_mb * mb}


def broker_urls(settings: Settings) -> str:
    return ";".join(f"streamrec://{h.strip()}" for h in settings.broker.split(",") if h.strip())


# --- current-event context (see module docstring) ------------------------------------------------
class event_context:
    """``with event_context(event):`` makes ``event`` Faust's current event, so table reads/writes use its
    partition. (A class, not ``contextlib.contextmanager``: it runs once per user per batch.)"""

    __slots__ = ("_event", "_token")

    def __init__(self, event):
        self._event = event

    def __enter__(self):
        self._token = _current_event.set(weakref.ref(self._event))

    def __exit__(self, *exc) -> None:
        _current_event.reset(self._token)


# --- adaptive micro-batches ----------------------------------------------------------------------
INTAKE_IDLE_S = 0.001  # a batch is closed early when no event arrived for this long


async def take_batches(stream, max_events: int, within_s: float, idle_s: float = INTAKE_IDLE_S):
    """Like Faust's ``stream.take_events(max_events, within_s)`` (same buffering processor, same acks
    after the loop body returns), but *adaptive*: a batch is handed over as soon as it is full, or when
    the intake went idle (no new event for ``idle_s``), or ``within_s`` after its first event.

    Why: ``take_events`` waits a fixed ``within`` from the end of the previous batch, and Faust delivers
    events to the buffer one at a time (~0.1-0.3 ms each on 2 busy cores), so with a backlog a 5 ms
    window held only 13-17 events and the per-batch costs (model calls, one produce request per
    partition, awaits) dominated. Here a backlog keeps the intake busy, so batches fill up to
    ``max_events``; a quiet stream closes its batch ``idle_s`` after the last arrival instead of waiting
    the whole window, so latency at moderate load stays low too."""
    buffer: list = []
    has_events = asyncio.Event()  # set by the first event of a batch
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future | None = None
    loop = asyncio.get_running_loop()
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value):
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:  # a batch is being processed: hold the intake
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            buffer.append(event)
            has_events.set()
            if len(buffer) >= max_events:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # events are acked below, after the batch was processed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not buffer:  # wait for a first event
                await stream.wait_for_stopped(has_events)
                if not buffer:
                    continue
            first_at = loop.time()
            seen = len(buffer)
            while not buffer_full.is_set() and not stream.should_stop:
                left = within_s - (loop.time() - first_at)
                if left <= 0:
                    break
                await stream.wait_for_stopped(buffer_full, timeout=min(idle_s, left))
                if len(buffer) == seen:  # intake idle: hand over what we have
                    break
                seen = len(buffer)
            buffer_consuming = loop.create_future()
            events = list(buffer)
            try:
                yield events
                # Only a batch the loop body finished is acked. Faust's take_events acks in a `finally`:
                # when the body raises (or the agent is cancelled), its events would be acked -- and their
                # offsets committed -- without having been processed. Here they stay unacked, so the
                # commit can never pass them (the agent crashes the worker, see build_app).
                for event in events:
                    await stream.ack(event)
            finally:
                buffer.clear()
                has_events.clear()
                if not buffer_consuming.done():
                    buffer_consuming.set_result(None)
                buffer_full.clear()
                buffer_consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


# --- batched sends ---------------------------------------------------------------------------------
PRODUCER_MAX_BATCH_BYTES = 512 * 1024  # one record batch holds a whole micro-batch's records of a partition


class RecordBatches:
    """Records collected into one aiokafka ``BatchBuilder`` per (topic, partition) and handed to the
    producer with ``send_batch``: one delivery future per batch instead of one per record.

    Why: aiokafka's per-record ``send`` (under Faust's ``producer.send``) creates a future, an accumulator
    entry and a metadata wait for every message; with the changelog records (BatchedChangelogTable) batched
    the same way the worker went from ~2.5k to ~3.2k events/s at saturation. Partitions come from the
    producer's own partitioner (murmur2 of the key, exactly as ``send`` picks them), so a user's
    recommendations stay on one partition, in order. The batches go through the producer's accumulator
    like any other record, so Faust's ``producer.flush()`` before each offset commit covers them
    (at-least-once is unchanged). Uses two private aiokafka methods (``client._wait_on_metadata``,
    ``_partition``), the same ones ``send``/``send_batch`` use; the test suite exercises both."""

    def __init__(self, producer):  # an aiokafka.AIOKafkaProducer (Faust: app.producer._ensure_producer())
        self._producer = producer
        self._batches: dict[tuple[str, int], list] = {}

    async def ready(self, topic: str) -> None:
        """Wait until the producer knows the topic's partitions (instant after the first time)."""
        await self._producer.client._wait_on_metadata(topic)

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            timestamp: float | None = None, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Queue one record (``value`` None = a tombstone; ``timestamp`` in epoch seconds, None = now).
        Without ``partition`` the producer's partitioner picks it (``ready(topic)`` must have been
        awaited); a given partition is checked by ``send``."""
        if partition is None:
            partition = self._producer._partition(topic, None, key, value, key, value)
        headers = list(headers)
        batches = self._batches.setdefault((topic, partition), [])
        if not batches or batches[-1].append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            batch = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                raise ValueError(f"a {len(value or b'')}-byte record does not fit in a producer batch")
            batches.append(batch)

    async def send(self, on_delivered: Callable[[str, int, int, asyncio.Future], None] | None = None) -> list:
        """Hand every batch to the producer; returns their delivery futures.
        ``on_delivered(topic, partition, n_records, future)`` is attached to each future."""
        futures = []
        for (topic, partition), batches in self._batches.items():
            for batch in batches:
                n_records = batch.record_count()
                future = await self._producer.send_batch(batch, topic, partition=partition)
                if on_delivered is not None:
                    future.add_done_callback(lambda f, t=topic, p=partition, n=n_records: on_delivered(t, p, n, f))
                futures.append(future)
        self._batches.clear()
        return futures


def write_batch(store):
    """An empty RocksDB write batch for Faust's rocksdb ``store`` (rocksdict or python-rocksdb driver)."""
    if store.use_rocksdict:
        import rocksdict

        return rocksdict.WriteBatch(raw_mode=True)
    import rocksdb

    return rocksdb.WriteBatch()


class BatchedChangelogTable(faust.Table):
    """The user-state table, written *behind* its changelog: a state reaches the local RocksDB store only
    after its changelog record was delivered.

    Why: Faust writes the store at ``table[key] = value`` and sends the changelog record later. A worker
    killed in between restarts with a local state that the changelog never got; the state's stored offset
    says its events were applied, so their redelivery is skipped, their recommendations are never sent, and
    a worker that restores the partition from the changelog (empty disk, rebalance) loses those events for
    good. Here :meth:`stage` queues the record (raw key and value, or a tombstone) for the given changelog
    partition -- the event's partition, which is the key's partition (co-partitioned) -- and keeps the value
    in memory (:meth:`stored` reads it first). When the producer reports a changelog batch delivered, its
    records and the store's persisted changelog offset go to that partition's RocksDB in one write batch.
    So a crash loses only states whose changelog records were not delivered -- which the redelivered,
    uncommitted events rebuild -- and after any restart the local store, the changelog and the committed
    offsets agree.

    Batching: one Kafka record batch per changelog partition per micro-batch (:class:`RecordBatches`)
    instead of Faust's per-key ``send_soon`` (a producer buffer entry, a future and a persisted-offset write
    per record: measured as costly as our whole model step). The agent calls :meth:`send_changelog_batches`
    after staging, before the batch's events are acked (and Faust flushes the producer before each commit).

    Rebalance: :meth:`forget_unflushed` (every rebalance) drops the states not yet written locally and
    detaches the deliveries still in flight: Faust's recovery then replays those partitions' changelogs
    from the persisted offset, which only ever moves together with what reached the store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: RecordBatches | None = None
        # (key, partition) -> the newest entry staged for it: (key, value, partition)
        self._unflushed: dict[tuple[bytes, int], tuple[bytes, bytes | None, int]] = {}
        self._in_flight: dict[int, deque] = {}  # partition -> staged entries not yet delivered, in send order
        self.store_error: BaseException | None = None  # a failed local write (the agent stops on it)

    def stage(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Queue ``key`` -> ``value`` (None = delete) for changelog ``partition``; readable at once."""
        if self._queue is None:
            self._queue = RecordBatches(self.app.producer._ensure_producer())
        self._queue.add(self.changelog_topic.get_topic_name(), key, value, partition=partition)
        entry = (key, value, partition)
        self._unflushed[(key, partition)] = entry
        self._in_flight.setdefault(partition, deque()).append(entry)
        if value is None:
            self._sensor_on_del(self, key)
        else:
            self._sensor_on_set(self, key, value)

    def stored(self, key: bytes, partition: int | None) -> bytes | None:
        """The key's newest value staged for ``partition``, else the one in that partition's local store
        (``partition`` None: search every local partition; only for a state key that is not a record key)."""
        store = self.data
        if partition is not None:
            entry = self._unflushed.get((key, partition))
            return entry[1] if entry is not None else store._db_for_partition(partition).get(key)
        for (staged, _), entry in self._unflushed.items():
            if staged == key:
                return entry[1]
        for db in list(store._dbs.values()):
            value = db.get(key)
            if value is not None:
                return value
        return None

    async def send_changelog_batches(self) -> list:
        """Hand the staged changelog records to the producer; returns the delivery futures."""
        queue, self._queue = self._queue, None
        if queue is None:
            return []
        in_flight = self._in_flight
        return await queue.send(on_delivered=lambda t, p, n, f: self._changelog_delivered(in_flight, t, p, n, f))

    def _changelog_delivered(self, in_flight: dict, topic: str, partition: int, n_records: int,
                             future: asyncio.Future) -> None:
        # a partition's batches are delivered (and their callbacks run) in the order they were sent
        entries = in_flight.get(partition, ())
        written = [entries.popleft() for _ in range(min(n_records, len(entries)))]
        if future.cancelled() or future.exception() is not None:
            return  # not delivered: the agent awaits the same future and stops
        store = self.data
        db = store._dbs.get(partition)
        if in_flight is not self._in_flight or db is None:
            return  # sent before a rebalance: Faust recovers the partition from the changelog
        sent = future.result()
        batch = write_batch(store)
        for key, value, _ in written:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if sent is not None and sent.offset is not None:
            batch.put(store.offset_key, str(sent.offset + n_records - 1).encode())
        try:
            db.write(batch)
        except Exception as exc:  # e.g. a full disk: keep the states in memory, stop the agent
            self.store_error = exc
            return
        for entry in written:
            if self._unflushed.get((entry[0], partition)) is entry:
                del self._unflushed[(entry[0], partition)]

    def forget_unflushed(self) -> None:
        """At a rebalance: states not yet in the local store are dropped (recovery replays them)."""
        self._queue = None
        self._unflushed = {}
        self._in_flight = {}


# --- model -----------------------------------------------------------------------------------------
def load_catalog_file(path: str | Path) -> list[dict]:
    """Catalog records from a JSONL file (one ``{item_id, title, text?, attributes?}`` per line) or a
    CSV file with an ``item_id`` column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--items: no such file {path}")
    if path.suffix.lower() == ".csv":
        import csv
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = []
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
    bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not r.get("item_id")]
    if bad:
        raise ValueError(f"{path}: records without item_id at lines {bad[:5]}")
    for r in rows:
        r["item_id"] = str(r["item_id"])
    return rows


def load_model(settings: Settings, items: Sequence[dict]):
    """The Recommender to serve: ``Settings.model`` if given, else untrained over ``items`` (None when
    there are no items yet: the first catalog records create it)."""
    from .model.recommender import Recommender

    if settings.model:
        from .live.models import load_newest
        from .live.service import seed_catalog

        model_dir, model = load_newest(settings.model, device=settings.device)  # skips broken model dirs
        log.info("serving trained model %s from %s on %s", model.version, model_dir, model.device)
        if items:
            seed_catalog(model, items, settings)
        return model
    if not items:
        return None
    return untrained_model(items, settings)


def untrained_model(items: Sequence[dict], settings: Settings):
    from .model.recommender import Recommender

    model = Recommender.untrained([r["item_id"] for r in items], device=settings.device)  # ID-only until trained
    log.warning("SERVING AN UNTRAINED MODEL (%s, %d items): recommendations are random until a trained "
                "model is given with --model", model.version, model.n_items)
    return model


class StateCache:
    """Write-through LRU copy of recently written user states (key bytes -> state bytes).

    Correct because a worker is the only writer of the keys of the partitions it owns, and every write
    goes through ``put`` after the table write; ``clear`` runs on every rebalance (partitions revoked or
    assigned), so after one, reads fall back to the table that Faust recovers from the changelog."""

    def __init__(self, max_users: int):
        from collections import OrderedDict

        self.max_users = max_users
        self._data: "OrderedDict[bytes, bytes]" = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        if self.max_users <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_users:
            self._data.popitem(last=False)

    def discard(self, key: bytes) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Spine:
    """What the agents share: settings, the live model, the pipeline config."""

    def __init__(self, settings: Settings, model=None):
        from .live.models import LiveModel
        from .live.service import CatalogVectors

        self.settings = settings
        # the served model lives in a LiveModel so it can be hot-reloaded (stream_rec/live/models.py)
        self.live = LiveModel(model, settings.model or None, settings.device, on_swap=self._on_swap)
        if settings.model and model is not None:
            self.live.changed_on_disk()  # the hot-reload watcher's baseline: what was just loaded
        self.catalog_vectors = CatalogVectors(settings)
        self.config = PipelineConfig.from_settings(settings)
        # negatives, re-ranking, reasons, interests, online HR@k + drift (stream_rec/live/enrich.py); it
        # rebuilds its item vectors itself when the model is swapped or the catalog grows
        from .live.enrich import Enricher

        self.enricher = Enricher.from_settings(settings)
        self.users_seen: set[str] = set()
        self.pending_sends: list = []  # delivery futures of the previous batch (see handle_batch)
        self.delivery_failure: BaseException | None = None  # set once a record was not delivered: no commit after it
        self.state_cache = StateCache(settings.state_cache_users)
        self.watchdog = StallWatchdog(settings.stall_warn_s, settings.stall_exit_s)  # fed by handle_batch
        self._announce_model()

    def note_delivery(self, future: asyncio.Future) -> None:
        """Done-callback of every delivery future: remember a failure (LowLatencyConsumer then refuses to
        commit offsets, and the agent stops when it awaits the future)."""
        if not future.cancelled() and future.exception() is not None and self.delivery_failure is None:
            self.delivery_failure = future.exception()

    @property
    def model(self):
        """The model serving right now (a micro-batch reads it once, so it never mixes versions)."""
        return self.live.current

    @model.setter
    def model(self, model) -> None:
        self.live.current = model

    def _on_swap(self, model) -> None:
        self._announce_model()
        metrics.MODEL_RELOADS.inc()

    async def update_catalog(self, records: Sequence[dict]) -> int:
        """``apply_catalog`` after encoding the records' texts through the micro-batching encoder queue
        (new items, and known items whose text changed), so a new item is scored by its text vector."""
        records = [r for r in records if isinstance(r, dict) and r.get("item_id")]
        for r in records:
            r["item_id"] = str(r["item_id"])
        vectors = None
        if self.model is not None and records:
            try:
                vector_records, vectors = await self.catalog_vectors.vectors_for(self.model, records)
            except Exception as exc:  # the encoder failing must not stop the catalog
                log.error("catalog: text encoding failed, items enter by id only: %s", exc)
                vector_records, vectors = [], None
            if vectors is not None:
                return self.apply_catalog(records, vector_records, vectors)
        return self.apply_catalog(records)

    def _announce_model(self) -> None:
        if self.model is not None:
            metrics.MODEL_INFO.clear()
            metrics.MODEL_INFO.labels(version=self.model.version, trained=str(self.model.trained).lower()).set(1)

    def apply_catalog(self, records: Sequence[dict], vector_records: Sequence[dict] = (),
                      vectors: np.ndarray | None = None) -> int:
        """Add new items / update known ones; returns how many records were applied.
        ``vectors`` are the text vectors of ``vector_records`` (see ``update_catalog``)."""
        records = [r for r in records if isinstance(r, dict) and r.get("item_id")]
        if not records:
            return 0
        for r in records:
            r["item_id"] = str(r["item_id"])
        if self.model is None:
            self.model = untrained_model(records, self.settings)
            self._announce_model()
        else:
            from .live.service import catalog_text

            if vectors is not None and len(vector_records):
                try:
                    self.model.add_items([r["item_id"] for r in vector_records], vectors,
                                         texts=[catalog_text(r) for r in vector_records])
                except ValueError as exc:  # the model was swapped for one with another encoder meanwhile
                    log.warning("catalog: %s; adding the items by id only", exc)
            new = [r for r in records if r["item_id"] not in self.model.row_of]
            if new:
                self.model.add_items([r["item_id"] for r in new])
        metrics.CATALOG_ITEMS.inc(len(records))
        return len(records)


# --- the app -----------------------------------------------------------------------------------------
def build_app(settings: Settings, spine: Spine | None = None) -> faust.App:
    """The Faust app with its topics, table, agent and timers. ``app.spine`` holds the live model."""
    spine = spine or Spine(settings)
    Path(settings.table_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings),
        store="rocksdb://",
        datadir=str(settings.table_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
        consumer_auto_offset_reset="earliest",
        # Faust's web server is off: it would serve /table/<name>/ (every user's state) and binds 0.0.0.0
        # by default. Metrics have their own localhost server (Settings.metrics_host/port); nothing of
        # ours uses Faust's web views or its table router.
        web_enabled=False,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # no linger: a micro-batch's records are already batched (RecordBatches, BatchedChangelogTable), and
        # while a request is in flight aiokafka batches what comes next anyway; lingering only added its
        # 2 ms to every recommendation (measured: p50 built->arrived 11.1 -> 7.5 ms at 1k ev/s)
        producer_linger=0.0,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        # bounded requests: Faust's producer default (20 min) would let a lost produce request look like an
        # idle worker; now a delivery that fails for this long crashes the agent (no commit after it)
        producer_request_timeout=settings.request_timeout_s,
        broker_request_timeout=max(settings.request_timeout_s, settings.session_timeout_s),
        **faust_credentials(settings),
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.spine = spine
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    events = app.topic(settings.topic(settings.events_topic), partitions=settings.partitions, **raw)
    recommendations = app.topic(settings.topic(settings.recommendations_topic), partitions=settings.partitions, **raw)
    dlq = app.topic(settings.topic(settings.dlq_topic), partitions=1, **raw)
    table = app.tables.add(BatchedChangelogTable(app, name=STATE_TABLE, beacon=app.tables.beacon, key_type=bytes,
                                                 value_type=bytes, partitions=settings.partitions,  # raw codec
                                                 options=rocksdb_options(settings)))
    app.state_table = table

    # CrashingSupervisor: an error in the agent (a failed delivery, a bug outside the per-record
    # containment of process_batch_isolating) stops the worker with a non-zero exit status instead of
    # Faust's default in-process restart, which would go on with the next events while the failed batch
    # stays unacked (a gap Faust's commit does not always respect: it commits past it when the group has
    # no committed offset yet). A supervisor (systemd, Kubernetes) restarts the worker, which is then
    # redelivered everything after the last commit.
    @app.agent(events, supervisor_strategy=mode.CrashingSupervisor)
    async def process_events(stream):
        gc.freeze()  # what the worker's start-up created stays too (see make_worker)
        fill_s = max(settings.batch_max_wait_ms, settings.batch_fill_max_ms) / 1000.0
        async for batch in take_batches(stream, settings.batch_max_events, fill_s):
            await handle_batch(app, batch, recommendations.get_topic_name(), dlq.get_topic_name())

    # The state cache holds only keys of partitions this worker owns; ownership changes at a rebalance.
    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs) -> None:
        app.spine.state_cache.clear()
        table.forget_unflushed()

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs) -> None:
        app.spine.state_cache.clear()
        table.forget_unflushed()

    @app.task
    async def follow_catalog():
        await catalog_loop(app, settings)

    @app.task
    async def warm_encoder():  # load the LLM encoder before the first catalog item or query needs it
        await app.spine.catalog_vectors.warm_up(app.spine.model)

    @app.task
    async def follow_control():  # hot reload on {"type": "reload"} (every worker: group-less consumer)
        from .live.service import control_loop

        await control_loop(app.spine.live, settings)

    if settings.model and settings.model_poll_s > 0:
        @app.task
        async def watch_models():  # hot reload when a newer model lands in --model
            await app.spine.live.watch(settings.model_poll_s)

    @app.timer(interval=2.0)
    async def report_lag():
        lag = consumer_lag(app, events.get_topic_name())
        metrics.CONSUMER_LAG.set(lag)
        check_stall(app, lag)

    return app


def _log_batch_error(exc: BaseException) -> None:
    log.error("processing a micro-batch raised %r; processing its events one at a time (an event that raises "
              "again goes to the DLQ as processing_error)", exc, exc_info=exc)


def _received_at(message, wall: float, mono: float) -> float:
    time_in = getattr(message, "time_in", None)  # monotonic, set by Faust's monitor on arrival
    return wall - (mono - time_in) if time_in else wall


async def handle_batch(app: faust.App, batch: Sequence[Any], recs_topic: str, dlq_topic: str) -> None:
    """Run one micro-batch: read states, process, write states, send records, update metrics."""
    spine: Spine = app.spine
    table = app.state_table
    producer = app.producer
    events_topic = batch[0].message.topic
    if not spine.config.partitions:  # the events topic's partition count, for the partitioner check
        spine.config = replace(spine.config, partitions=await topic_partitions(producer, events_topic))
    wall, mono = time.time(), time.monotonic()
    incoming = [Incoming(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset,
                         _received_at(e.message, wall, mono), origin_of(e.message.headers)) for e in batch]
    partition_of = state_partitions(incoming, spine.config)  # state key -> the partition that holds it
    cache = spine.state_cache

    def load_state(user_id: str) -> bytes | None:
        key = user_id.encode()
        cached = cache.get(key)
        if cached is not None:
            return cached
        return table.stored(key, partition_of.get(key))  # None: not a record key (check_key off): search

    from .live.service import context_vectors

    model = spine.model  # one version for the whole batch, even if a reload lands meanwhile
    try:
        queries = await context_vectors(spine.catalog_vectors, model, [m.value for m in incoming],
                                        spine.config.max_event_bytes)
    except Exception as exc:  # queries only boost lists: serve the batch without them
        log.error("encoding the batch's context.text queries failed, serving without them: %r", exc)
        queries = {}
    result = process_batch_isolating(incoming, load_state, model, spine.config, queries=queries,
                                     enricher=spine.enricher, on_error=_log_batch_error)

    # new states (and deletions) are staged: in memory now, in the local store once their changelog
    # records are delivered (BatchedChangelogTable)
    for user_id, index in result.deleted.items():
        key = user_id.encode()
        cache.discard(key)
        if user_id not in result.states:  # a tombstone on the partition of the delete_user event
            table.stage(key, None, batch[index].message.partition)
        spine.users_seen.discard(user_id)
    for user_id, state in result.states.items():
        key = user_id.encode()
        table.stage(key, state, batch[result.last_index[user_id]].message.partition)
        cache.put(key, state)
    for user_id, index in result.erased_elsewhere:  # a state another partitioner's events left there
        key, partition = user_id.encode(), batch[index].message.partition
        if table.stored(key, partition) is not None:
            table.stage(key, None, partition)

    futures = await table.send_changelog_batches()
    if result.recommendations or result.rerouted:
        records = RecordBatches(producer._ensure_producer())
        await records.ready(recs_topic)
        for rec in result.recommendations:
            records.add(recs_topic, rec["user_id"].encode(), json.dumps(rec).encode())
        for index, partition in result.rerouted:  # to the partition of the key: applied there, once
            m = batch[index].message
            records.add(events_topic, m.key, m.value, partition=partition, timestamp=m.timestamp,
                        headers=rerouted_headers(m.headers, incoming[index]))
        futures += await records.send()
    for bad in result.dlq:
        key = None if bad["original_key_b64"] is None else base64.b64decode(bad["original_key_b64"])
        futures.append(await producer.send(dlq_topic, key, json.dumps(bad).encode(), None, None, None))
    for future in futures:
        future.add_done_callback(spine.note_delivery)
    sent = time.time()
    # Acks are awaited one batch late, so the stream is not paused for a broker round trip per batch
    # (measured: ~5 ms per batch, as long as the processing itself). Safe for at-least-once: Faust
    # flushes the producer before every offset commit, so no offset is committed before the records of
    # its batch are delivered. A send that still fails after the producer's retries is raised here, one
    # batch later, and crashes the agent (recorded in the log); the worker does not go on silently.
    previous, spine.pending_sends = spine.pending_sends, futures
    if previous:
        await asyncio.gather(*previous)
    if table.store_error is not None:
        raise RuntimeError(f"writing delivered states to the local store failed: {table.store_error!r}")

    metrics.EVENTS_CONSUMED.inc(len(batch))
    metrics.BATCH_SIZE.labels(stage="events").observe(len(batch))
    for reason, n in result.invalid.items():
        metrics.EVENTS_INVALID.labels(reason=reason).inc(n)
    metrics.EVENTS_DLQ.inc(len(result.dlq))
    metrics.EVENTS_SKIPPED_DUPLICATE.inc(result.duplicates)
    metrics.RECOMMENDATIONS_EMITTED.inc(len(result.recommendations))
    if result.replayed:
        metrics.RECOMMENDATIONS_REPLAYED.inc(result.replayed)
    if result.rerouted:
        metrics.EVENTS_REROUTED.inc(len(result.rerouted))
    if result.deleted:
        metrics.USERS_DELETED.inc(len(result.deleted))
    if result.applied:
        metrics.MODEL_STEP_SECONDS.labels(stage="step").observe(result.step_seconds)
        metrics.MODEL_STEP_SECONDS.labels(stage="topk").observe(result.topk_seconds)
        for ts in result.event_timestamps:
            metrics.EVENT_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        for ts in result.received_at:
            metrics.CONSUME_TO_REC_LATENCY.observe(max(0.0, sent - ts))
        spine.users_seen.update(result.states)
    metrics.USERS_IN_STATE.set(len(spine.users_seen))
    spine.watchdog.batch_handled()


async def catalog_loop(app: faust.App, settings: Settings, poll_ms: int = 500) -> None:
    """Read the whole catalog topic (group-less, from the beginning) and keep following it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topic(settings.catalog_topic)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100))
    await consumer.start()
    try:
        partitions = None
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or None
                if partitions is None:
                    await asyncio.sleep(1.0)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            fetched = await consumer.getmany(timeout_ms=poll_ms, max_records=1000)
            records = []
            for message in (m for msgs in fetched.values() for m in msgs):
                record = validate_catalog_record(message.value)
                if isinstance(record, Invalid):
                    skip_record("catalog", record.reason, message, record.detail)
                elif record is not None:
                    records.append((message, record))
            applied = await apply_catalog_records(app.spine, records)
            if applied:
                log.info("catalog: applied %d records (%d items known)", applied, app.spine.model.n_items)
    except asyncio.CancelledError:
        raise
    finally:
        await consumer.stop()


async def apply_catalog_records(spine: Spine, records: Sequence[tuple[Any, dict]]) -> int:
    """``spine.update_catalog`` for (message, record) pairs; if the batch fails, record by record, so one
    record the model cannot take is skipped (logged, counted) and the others still enter the catalog."""
    if not records:
        return 0
    try:
        return await spine.update_catalog([r for _, r in records])
    except Exception as exc:
        log.error("catalog: applying %d records failed (%r); applying them one at a time", len(records), exc)
    applied = 0
    for message, record in records:
        try:
            applied += await spine.update_catalog([record])
        except Exception as exc:
            skip_record("catalog", "apply_failed", message, repr(exc)[:200])
    return applied


async def topic_partitions(producer, topic: str) -> int:
    """How many partitions ``topic`` has (the producer's metadata; waits for it the first time)."""
    client = producer._ensure_producer().client
    await client._wait_on_metadata(topic)
    return len(client.cluster.partitions_for_topic(topic))


STALL_LOG_EVERY_S = 30.0


def check_stall(app: faust.App, lag: int) -> None:
    """Feed the stall watchdog the lag (every 2 s): gauges, a WARNING with what the worker waits on when a
    stall starts and every 30 s while it lasts, and the exit that lets a supervisor restart the worker."""
    dog: StallWatchdog = app.spine.watchdog
    before = dog.stalled_for
    stalled = dog.check(lag, recovering=bool(app.rebalancing or getattr(app, "in_recovery", False)))
    metrics.READY.set(1 if dog.ready else 0)
    metrics.STALLED_SECONDS.set(stalled)
    if not stalled:
        if before:
            log.warning("stall over: micro-batches handled again after %.0f s", before)
        return
    if not before or stalled // STALL_LOG_EVERY_S != before // STALL_LOG_EVERY_S:
        log.warning("STALLED: no micro-batch handled for %.0f s while %d events wait; waiting on: %s", stalled, lag,
                    waits_of(app))
    if dog.should_exit:
        log.error("stalled for %.0f s (stall_exit_s=%.0f): exiting with status %d so that a supervisor restarts "
                  "the worker (uncommitted events are redelivered)", stalled, dog.exit_after_s, STALL_EXIT_STATUS)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(STALL_EXIT_STATUS)  # not a graceful stop: that would wait on what is stuck


def waits_of(app: faust.App) -> str:
    """What the worker is waiting on, for the stall WARNING (each part best effort)."""
    parts = []
    pending = [f for f in app.spine.pending_sends if not f.done()]
    parts.append(f"{len(pending)} of the previous batch's {len(app.spine.pending_sends)} deliveries unanswered")
    try:
        accumulator = app.producer._ensure_producer()._message_accumulator
        queued = sum(len(q) for q in accumulator._batches.values())
        parts.append(f"{queued} record batches queued in the producer")
    except Exception:
        pass
    try:
        consumer = app.consumer
        read = getattr(consumer, "_read_offset", {})
        behind = []
        for tp in sorted(consumer.assignment()):
            high = consumer.highwater(tp)
            pos = read.get(tp)
            if high is not None and (pos is None or pos + 1 < high):
                behind.append(f"{tp.topic}[{tp.partition}] read {pos} of {high}")
        parts.append("partitions behind: " + (", ".join(behind) or "none"))
        if getattr(consumer, "_paused_partitions", None):
            parts.append(f"paused: {sorted(consumer._paused_partitions)}")
        if not getattr(consumer, "flow_active", True):
            parts.append("consumer flow stopped (rebalance?)")
    except Exception as exc:
        parts.append(f"consumer state unreadable ({exc!r})")
    return "; ".join(parts)


def consumer_lag(app: faust.App, topic: str) -> int:
    """Sum over assigned partitions of ``topic``: high watermark - (last read offset + 1)."""
    try:
        consumer = app.consumer
        read = getattr(consumer, "_read_offset", {})
        lag = 0
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            high = consumer.highwater(tp)
            if high is None:
                continue
            pos = read.get(tp)
            lag += max(0, high - (pos + 1 if pos is not None else 0))
        return lag
    except Exception:  # not started / rebalancing: keep the last value
        return int(metrics.CONSUMER_LAG._value.get())


# --- running a worker ---------------------------------------------------------------------------------
def make_worker(settings: Settings, items: Sequence[dict] = (), loglevel: str = "info", **worker_kwargs):
    """A ``faust.Worker`` for the app (run it with ``.execute_from_commandline()``)."""
    if settings.torch_threads > 0:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(settings.torch_threads)
        # numpy's OpenBLAS too: it starts one helper thread per core at import, and that thread spins
        # after every BLAS call (the reasons' and re-ranking's matrix products): measured 6.5 CPU-seconds
        # per 20k events at saturation, 42% of the worker's CPU, taken from the broker on a 2-core box
        threadpool_limits(settings.torch_threads)
    spine = Spine(settings, load_model(settings, items))
    if spine.catalog_vectors.uses_text(spine.model):
        # Load the LLM encoder before consuming: loading it on a thread while the stream runs held the
        # GIL for seconds (profiled: 12% of the worker's samples during the first 20 s of a backlog).
        spine.catalog_vectors.load_encoder()
    if spine.model is None:
        log.warning("no catalog yet (no --items, no --model): waiting for records on the %s topic",
                    settings.topic(settings.catalog_topic))
    app = build_app(settings, spine)
    # Everything loaded so far (torch, transformers, the model, Faust) lives as long as the worker: move it
    # out of the cyclic GC's reach. Without this every full collection walks them all: measured 210 ms
    # per full collection, one every ~1.5 s at saturation (a latency spike each time), vs 5-10 ms frozen.
    gc.collect()
    gc.freeze()
    worker = faust.Worker(app, loglevel=loglevel, **worker_kwargs)
    # Faust's terminal spinner sets the root logger to DEBUG (to show every record while it spins) when
    # the level is WARNING or above: every aiokafka send then builds a debug record (measured ~10% of
    # the worker's CPU). No spinner: the level asked for is the level we get.
    worker.spinner = None
    return worker
