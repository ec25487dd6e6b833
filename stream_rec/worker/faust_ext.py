"""Faust on the inside: what the worker adds to faust-streaming and aiokafka, each for a reason given
in stream_rec/worker/__init__.py.

* :class:`LowLatencyTransport` (URL scheme ``streamrec://``): the consumer honours
  ``Settings.fetch_max_wait_ms`` and confirms end offsets with a fetch;
* :class:`event_context`: make an event Faust's current event, so table reads and writes use its partition;
* :func:`take_batches`: adaptive micro-batches from a Faust stream, acked after the batch;
* :class:`RecordBatches` / :class:`BatchedChangelogTable`: records and changelog records sent as one
  Kafka record batch per partition per micro-batch;
* :func:`app_options`: the ``faust.App`` configuration; :func:`consumer_lag`: lag of the assigned partitions.

These use Faust's and aiokafka's internals (named where they do); the test suite runs every one of them
against the embedded broker.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable

import faust
from faust.streams import _current_event
from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as aiokafka_driver

from .. import metrics
from ..io.kafka import faust_credentials, fetched_end_offsets
from ..settings import Settings

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


class LowLatencyTransport(aiokafka_driver.Transport):
    """faust-streaming's aiokafka transport whose consumer honours ``Settings.fetch_max_wait_ms`` and
    checks end offsets with a fetch (:func:`stream_rec.io.kafka.fetched_end_offsets`: the embedded broker's
    ListOffsets answer is too low after batched produces, which breaks table recovery)."""

    Consumer = LowLatencyConsumer


faust_drivers.TRANSPORTS.aliases["streamrec"] = f"{__name__}:LowLatencyTransport"


def broker_urls(settings: Settings) -> str:
    return ";".join(f"streamrec://{h.strip()}" for h in settings.broker.split(",") if h.strip())


# Records of one micro-batch for one partition go out as one Kafka record batch (RecordBatches).
PRODUCER_MAX_BATCH_BYTES = 512 * 1024


def app_options(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments of the worker (besides its id)."""
    return dict(
        broker=broker_urls(settings),
        store="rocksdb://",
        datadir=str(settings.table_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
        consumer_auto_offset_reset="earliest",
        # Faust's web server is off: it would serve /table/<name>/ (every user's state) and binds 0.0.0.0
        # by default. The worker's one listener is stream_rec/worker/http.py (Settings.metrics_host/port);
        # canonical_url is the URL of that listener, which the partition assignor tells every member of
        # the group, so a lookup can be redirected to the worker that owns the user's partition.
        web_enabled=False,
        canonical_url=settings.http_url,
        # no linger: a micro-batch's records are already batched (RecordBatches, BatchedChangelogTable), and
        # while a request is in flight aiokafka batches what comes next anyway; lingering only adds its
        # wait to every recommendation (DEVELOPERS.md)
        producer_linger=0.0,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        **faust_credentials(settings),
    )


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


class _Intake:
    """The buffer of :func:`take_batches`, filled by a processor of the Faust stream, one event at a time
    (the same buffering as Faust's ``take_events``)."""

    def __init__(self, stream, max_events: int):
        self.stream, self.max_events = stream, max_events
        self.buffer: list = []
        self.has_events = asyncio.Event()  # set by the first event of a batch
        self.full = asyncio.Event()
        self.consumed = asyncio.Event()
        self.consuming: asyncio.Future | None = None  # while a batch is processed the intake waits on it

    async def add(self, value):
        """The stream processor: buffer the current event; hold while a batch is processed or when full."""
        stream = self.stream
        try:
            if self.consuming is not None:  # a batch is being processed: hold the intake
                try:
                    await self.consuming
                finally:
                    self.consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            self.buffer.append(event)
            self.has_events.set()
            if len(self.buffer) >= self.max_events:
                self.full.set()
                self.consumed.clear()
                await stream.wait(self.consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    async def fill(self, within_s: float, idle_s: float) -> list:
        """The batch, once full, or ``idle_s`` after the last arrival, or ``within_s`` after its first event."""
        loop = asyncio.get_running_loop()
        first_at, seen = loop.time(), len(self.buffer)
        while not self.full.is_set() and not self.stream.should_stop:
            left = within_s - (loop.time() - first_at)
            if left <= 0:
                break
            await self.stream.wait_for_stopped(self.full, timeout=min(idle_s, left))
            if len(self.buffer) == seen:  # intake idle: hand over what we have
                break
            seen = len(self.buffer)
        self.consuming = loop.create_future()
        return list(self.buffer)

    async def release(self, events: list) -> None:
        """After the batch was processed: ack its events and let the intake go on."""
        self.buffer.clear()
        self.has_events.clear()
        for event in events:
            await self.stream.ack(event)
        if not self.consuming.done():
            self.consuming.set_result(None)
        self.full.clear()
        self.consumed.set()


async def take_batches(stream, max_events: int, within_s: float, idle_s: float = INTAKE_IDLE_S):
    """Like Faust's ``stream.take_events(max_events, within_s)`` (same buffering processor, same acks
    after the loop body returns), but *adaptive*: a batch is handed over as soon as it is full, or when
    the intake went idle (no new event for ``idle_s``), or ``within_s`` after its first event.

    Why: ``take_events`` waits a fixed ``within`` from the end of the previous batch, and Faust delivers
    events to the buffer one at a time, so with a backlog a short window holds few events and the
    per-batch costs (model calls, one produce request per partition, awaits) dominate (DEVELOPERS.md).
    Here a backlog keeps the intake busy, so batches fill up to ``max_events``; a quiet stream closes its
    batch ``idle_s`` after the last arrival instead of waiting the whole window, so latency at moderate
    load stays low too."""
    intake = _Intake(stream, max_events)
    channel_it = stream.channel.__aiter__()
    enable_acks = stream.enable_acks
    stream.enable_acks = False  # events are acked by intake.release, after the batch was processed
    stream.add_processor(intake.add)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not intake.buffer:  # wait for a first event
                await stream.wait_for_stopped(intake.has_events)
                if not intake.buffer:
                    continue
            events = await intake.fill(within_s, idle_s)
            try:
                yield events
            finally:
                await intake.release(events)
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(intake.add)


# --- batched sends ---------------------------------------------------------------------------------
class RecordBatches:
    """Records collected into one aiokafka ``BatchBuilder`` per (topic, partition) and handed to the
    producer with ``send_batch``: one delivery future per batch instead of one per record.

    Why: aiokafka's per-record ``send`` (under Faust's ``producer.send``) creates a future, an accumulator
    entry and a metadata wait for every message, a large share of the worker's time at saturation
    (DEVELOPERS.md has the measurement, with the changelog records batched the same way by
    BatchedChangelogTable). Partitions come from the
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

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Queue one record (``value`` None = a tombstone). Without ``partition`` the producer's partitioner
        picks it (``ready(topic)`` must have been awaited); a given partition is checked by ``send``."""
        if partition is None:
            partition = self._producer._partition(topic, None, key, value, key, value)
        batches = self._batches.setdefault((topic, partition), [])
        if not batches or batches[-1].append(key=key, value=value, timestamp=None) is None:
            batch = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
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


class BatchedChangelogTable(faust.Table):
    """A Faust table whose changelog records go out as Kafka record batches, one per changelog partition
    per micro-batch, instead of one ``send_soon`` per key (Faust's producer buffer, a future and a
    persisted-offset write in RocksDB per record, which cost as much as the whole model step).

    Same records, same place: ``on_key_set``/``on_key_del`` queue the (raw) key and value -- a tombstone
    for a deletion -- on ``partition_for_key(key)``, i.e. the current event's partition, exactly where
    Faust would send them; the store write itself is Faust's, unchanged. The agent calls
    :meth:`send_changelog_batches` after its writes, before the batch's events are acked, so offsets are
    never committed before the changelog records are in the producer (and Faust flushes the producer
    before each commit). Deletions and writes of one micro-batch share the queue, so their order per key
    is kept. When a batch is delivered, the store's persisted offset of that partition is set to its last
    record (one RocksDB write per batch; recovery starts after it, as with Faust's own callback).
    Anything but raw bytes, or a transactional app, takes Faust's own per-record path."""

    _changelog_queue: RecordBatches | None = None

    def _batched(self, key, value) -> bool:
        return isinstance(key, bytes) and (value is None or isinstance(value, bytes)) and not self.app.in_transaction

    def on_key_set(self, key, value) -> None:
        if not self._batched(key, value):
            return super().on_key_set(key, value)
        self._queue_changelog(key, value)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key) -> None:
        if not self._batched(key, None):
            return super().on_key_del(key)
        self._queue_changelog(key, None)
        self._sensor_on_del(self, key)

    def _queue_changelog(self, key: bytes, value: bytes | None) -> None:
        partition = self.partition_for_key(key)  # the current event's partition (raises outside a stream)
        if partition is None:
            raise RuntimeError(f"table {self.name}: no partition for a changelog record (no current event)")
        if self._changelog_queue is None:
            self._changelog_queue = RecordBatches(self.app.producer._ensure_producer())
        self._changelog_queue.add(self.changelog_topic.get_topic_name(), key, value, partition=partition)

    async def send_changelog_batches(self) -> list:
        """Hand the queued changelog records to the producer; returns the delivery futures."""
        queue, self._changelog_queue = self._changelog_queue, None
        if queue is None:
            return []
        return await queue.send(on_delivered=self._changelog_delivered)

    def _changelog_delivered(self, topic: str, partition: int, n_records: int, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the agent awaits the same future and fails loudly
        sent = future.result()
        if sent is not None and sent.offset is not None:
            from faust.types import TP

            self.data.set_persisted_offset(TP(topic, partition), sent.offset + n_records - 1)


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


