"""Faust on the inside: what the worker adds to faust-streaming and aiokafka, each for a reason given
in stream_rec/worker/__init__.py.

* :class:`LowLatencyTransport` (URL scheme ``streamrec://``): the consumer honours
  ``Settings.fetch_max_wait_ms``, confirms end offsets with a fetch, and commits nothing once a record
  failed to be delivered;
* :func:`take_batches`: adaptive micro-batches from a Faust stream, acked only once the batch was handled;
* :class:`RecordBatches`: records sent as one Kafka record batch per partition per micro-batch;
* :class:`BatchedChangelogTable`: the state table, written behind its changelog (a state reaches the
  local store only once its changelog record was delivered), its changelog batched the same way;
* :func:`app_options` / :func:`rocksdb_options`: the ``faust.App`` and table configuration;
  :func:`consumer_lag`, :func:`waits_of`, :func:`recovering`, :func:`topic_partitions`: what the
  worker reads of Faust's and aiokafka's state.

These use Faust's and aiokafka's internals (named where they do); the test suite runs every one of them
against the embedded broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import faust
from faust.transport import drivers as faust_drivers
from mode.services import WaitResults
from faust.transport.drivers import aiokafka as aiokafka_driver

from .. import metrics
from ..io.kafka import faust_credentials, fetched_end_offsets
from ..io.records import contain_header_keys
from ..settings import Settings

log = logging.getLogger(__name__)


# --- low-latency consumer ------------------------------------------------------------------------
class LowLatencyConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        contain_header_keys()  # a non-UTF-8 header key must not crash the fetcher (stream_rec/io/records.py)
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


    def fetch_answered_at(self) -> float | None:
        """When the broker last answered a fetch (empty or not) of any assigned partition, as wall-clock
        seconds, read from aiokafka's ``last_poll_timestamp`` (None: no answer yet, or no consumer)."""
        consumer = self._consumer
        if consumer is None:
            return None
        stamps = [consumer.last_poll_timestamp(tp) for tp in consumer.assignment()]
        stamps = [s for s in stamps if s is not None]
        return max(stamps) / 1000.0 if stamps else None


class TracedConsumerThread(LowLatencyConsumerThread):
    """The consumer thread when the worker traces (``Settings.trace_file``, worker/trace.py): when a fetch
    response reached aiokafka's fetcher, when its records were handed over to Faust in this thread, and
    when they reached the worker's event loop."""

    _fetched_at = 0.0

    async def _fetch_records(self, consumer, *args, **kwargs):  # runs in the consumer thread
        fetcher = consumer._fetcher
        if not getattr(fetcher, "_stream_rec_traced", False):
            fetcher._stream_rec_traced = True
            self._trace_responses(fetcher, self.app.services.tracer)
        records = await super()._fetch_records(consumer, *args, **kwargs)
        if records:
            self._fetched_at = time.time()
        return records

    @staticmethod
    def _trace_responses(fetcher, tracer) -> None:
        """Wrap aiokafka's ``Fetcher._proc_fetch_request`` (one fetch request and its response)."""
        inner = fetcher._proc_fetch_request

        async def proc_fetch_request(assignment, node_id, request):
            before = dict(fetcher._records)
            result = await inner(assignment, node_id, request)
            tracer.response(time.time(), [(tp.topic, tp.partition, got._partition_records.next_fetch_offset)
                                          for tp, got in fetcher._records.items()
                                          if before.get(tp) is not got and got._partition_records is not None])
            return result

        fetcher._proc_fetch_request = proc_fetch_request

    async def getmany(self, active_partitions, timeout):  # runs on the worker's event loop
        records = await super().getmany(active_partitions, timeout)
        if records:
            self.app.services.tracer.fetch(self._fetched_at, time.time(), records)
        return records


def run_eagerly(coro) -> tuple[bool, Any]:
    """Run ``coro`` in the calling task until it returns -- ``(True, its value)`` -- or first has to wait:
    ``(False, a coroutine that finishes it)``, for a task to run (what Python 3.12's eager tasks do; this
    runs on 3.11). Exceptions of the eager part propagate to the caller."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _finish(coro, waiting)


async def _finish(coro, waiting):
    """The rest of a coroutine suspended on ``waiting`` (a future, or None for a bare yield), driven as a
    task drives it: wait, resume; when cancelled, cancel what it waits on and resume it (it sees the
    CancelledError at its own ``await``)."""
    while True:
        if waiting is not None:
            waiting._asyncio_future_blocking = False
            try:
                await asyncio.wait([waiting])
            except asyncio.CancelledError:
                waiting.cancel()
        else:
            await asyncio.sleep(0)
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _waits_on(coro, event) -> bool:
    """``coro`` is ``event.wait()`` (not started yet)."""
    frame = getattr(coro, "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is event


class LowLatencyConsumer(aiokafka_driver.Consumer):
    async def wait_first(self, *coros, timeout=None):
        # Faust's drain loop hands every fetched message to the streams with
        # ``wait_first(callback(message), self.suspend_flow.wait())``, and mode's ``wait_first`` starts four
        # tasks for it (the two coroutines, the service's stopped and crashed events): several event-loop
        # iterations and ~0.1 ms of the loop's time per message, where putting the message into the
        # stream's queue takes a few microseconds. The delivery is run eagerly instead: when it completes
        # without waiting (the queue had room, flow is not suspended), that is the result; when it has to
        # wait, the rest of it goes through ``wait_first`` exactly as before (a rebalance suspending the
        # flow still interrupts it).
        if len(coros) == 2 and timeout is None and _waits_on(coros[1], self.suspend_flow):
            done, value = run_eagerly(coros[0])
            if done:
                coros[1].close()
                return WaitResults([coros[0]], [value], False)
            coros = (value, coros[1])
        return await super().wait_first(*coros, timeout=timeout)

    _seeked: dict | None = None  # the stream partitions' read offsets set by the last perform_seek

    async def perform_seek(self) -> None:
        # Faust's recovery (``on_recovery_completed``, ``_resume_streams``) resumes fetching the stream
        # partitions, awaits this seek to the committed offsets, and only then resumes flow control, which
        # clears every stream's channel queue. With flow active (it is while changelogs are restored), the
        # events fetched during the seek's round trip went into those queues and were cleared unacked, and
        # the drain loop, part-way through a fetch from before the seek, saw its read offset reset to the
        # committed one, took its next record for a gap in the offsets (``_add_gap``) and then discarded the
        # re-fetched copies as read already; the next commit filled the gap: hundreds of events never
        # processed were committed (issue 23: a worker restarted after a stall exit, under load). So: no
        # record is handed over from here until flow resumes (each caller resumes it after the seek, or has
        # it stopped already), the partitions' gaps are forgotten (all from the committed offset is read
        # again), and ``resume_flow`` puts back the read offsets set here, whatever the drain loop wrote
        # while finishing the record it held.
        was_active = self.flow_active
        self.stop_flow()
        try:
            await super().perform_seek()
        except BaseException:
            if was_active:
                self.resume_flow()
            raise
        self._seeked = {tp: offset for tp, offset in self._read_offset.items() if not self._is_changelog_tp(tp)}
        for tp in self._seeked:
            self._gap.pop(tp, None)

    def resume_flow(self) -> None:
        seeked, self._seeked = self._seeked, None
        if seeked:
            self._read_offset.update(seeked)
        super().resume_flow()

    async def on_partitions_revoked(self, revoked) -> None:
        self._seeked = None  # a seek of an earlier assignment
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self._seeked = None
        await super().on_partitions_assigned(assigned, generation_id)

    def _new_consumer_thread(self):
        traced = getattr(getattr(self.app, "services", None), "tracer", None) is not None
        return (TracedConsumerThread if traced else LowLatencyConsumerThread)(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets) -> bool:
        # Faust flushes the producer right before this. Once any record of ours failed to be delivered, no
        # offset may be committed any more: the batch it belonged to may be acked already (delivery is
        # awaited one batch late), and committing would skip its events for good. The agent stops on the
        # same failure; a restarted worker is redelivered everything after the last good commit.
        failure = getattr(getattr(self.app, "services", None), "delivery_failure", None)
        if failure is not None:
            log.error("not committing offsets: a record was not delivered (%r)", failure)
            return False
        return await super()._commit(offsets)


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
        # bounded requests: Faust's producer default (20 min) would let a lost produce request look like an
        # idle worker; a delivery that fails for this long crashes the agent (and nothing is committed after it)
        producer_request_timeout=settings.request_timeout_s,
        broker_request_timeout=max(settings.request_timeout_s, settings.session_timeout_s),
        **faust_credentials(settings),
    )


def rocksdb_options(settings: Settings) -> dict:
    """The state table's RocksDB memory bounds, per partition (Settings.rocksdb_*: Faust's defaults let
    the worker's memory grow by hundreds of MB before RocksDB flushes, DEVELOPERS.md)."""
    mb = 1024 * 1024
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * mb, "max_write_buffer_number": 2,
            "block_cache_size": settings.rocksdb_block_cache_mb * mb}


# --- adaptive micro-batches ----------------------------------------------------------------------
INTAKE_IDLE_S = 0.001  # a batch is closed early when no event arrived for this long


def close_reason(n_events: int, max_events: int, filling_s: float, fill_max_s: float, idle_s: float,
                 oldest_wait_s: float, max_wait_s: float | None, ready: int, behind: Callable[[], int],
                 idle_close_s: float = INTAKE_IDLE_S) -> str | None:
    """Why a micro-batch that holds ``n_events`` closes now, or None to keep filling it (pure).

    ``full``: ``max_events``. ``fill_max``: it has been filling for ``fill_max_s`` (the bound, whatever
    else happens). Otherwise it closes for latency -- ``max_wait``: its oldest event waited ``max_wait_s``
    since the stream took it (None: no such bound), or ``idle``: no event was added for ``idle_close_s``
    -- once the events already fetched (``ready``: in the stream's channel, not taken yet) are in it, and
    unless a backlog of at least ``max_events`` events waits at the broker (``behind()``, asked only then),
    in which case it fills up: at saturation large batches keep the per-batch costs small. So a trickle
    of events can no longer hold a batch open for ``fill_max_s`` when the stream is not behind, and a batch
    that is late already (its first event waited while the previous batch ran) still takes the events
    that arrived meanwhile instead of leaving them for a batch of their own."""
    if n_events >= max_events:
        return "full"
    if filling_s >= fill_max_s:
        return "fill_max"
    late = max_wait_s is not None and oldest_wait_s >= max_wait_s
    if not late and idle_s < idle_close_s:
        return None
    if ready > 0 or behind() >= max_events:
        return None
    return "max_wait" if late else "idle"


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Batch(list):
    """The events of one micro-batch, and why and when (``loop.time()``) it was closed."""

    __slots__ = ("closed_by", "closed_at", "ready")

    def __init__(self, events, closed_by: str, closed_at: float, ready: int = 0):
        super().__init__(events)
        self.closed_by, self.closed_at, self.ready = closed_by, closed_at, ready  # ready: left in the channel


class _Intake:
    """The buffer of :func:`take_batches`, filled by a processor of the Faust stream, one event at a time
    (the same buffering as Faust's ``take_events``)."""

    def __init__(self, stream, max_events: int):
        self.stream, self.max_events = stream, max_events
        self.buffer: list = []
        self.full = asyncio.Event()
        self.consumed = asyncio.Event()
        self.consuming: asyncio.Future | None = None  # while a batch is processed the intake waits on it
        self._wake: asyncio.Future | None = None  # what fill() and take_batches sleep on (see sleep)

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
            if len(self.buffer) == 1 or len(self.buffer) >= self.max_events:
                self.wake()  # a first event, or a full batch
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

    def wake(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def sleep(self, timeout_s: float) -> None:
        """Until ``timeout_s`` passed or :meth:`wake` (a first event, a full batch). A plain future and a
        timer: this runs every millisecond while a batch fills, and mode's ``wait_for_stopped`` creates
        tasks at every call."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def fill(self, within_s: float, idle_s: float, max_wait_s: float | None = None,
                   ready: Callable[[], int] = lambda: 0, behind: Callable[[], int] = lambda: 0) -> "Batch":
        """The batch, once :func:`close_reason` says so (re-checked at every new event or deadline)."""
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        now = first_at = changed_at = loop.time()
        seen = len(buffer)
        oldest = getattr(buffer[0].message, "time_in", None) or first_at  # monotonic, like loop.time()
        reason = "stopping"
        while not self.stream.should_stop:
            waiting = ready()
            reason = close_reason(len(buffer), self.max_events, now - first_at, within_s, now - changed_at,
                                  now - oldest, max_wait_s, waiting, behind, idle_s)
            if reason is not None:
                break
            # re-checked at the next deadline, at least every idle_s (a backlog may have gone meanwhile);
            # at once when events wait in the channel (the stream takes one per loop iteration)
            deadlines = [within_s - (now - first_at), idle_s - (now - changed_at), idle_s]
            if max_wait_s is not None:
                deadlines.append(max_wait_s - (now - oldest))
            await self.sleep(0.0 if waiting else max(1e-4, min(t for t in deadlines if t > 0)))
            now = loop.time()
            if len(buffer) != seen:
                seen, changed_at = len(buffer), now
        self.consuming = loop.create_future()
        return Batch(buffer, reason, now, waiting)

    async def release(self) -> None:
        """After the batch (acked by ``take_batches`` if it was handled): let the intake go on."""
        self.buffer.clear()
        if not self.consuming.done():
            self.consuming.set_result(None)
        self.full.clear()
        self.consumed.set()


async def take_batches(stream, max_events: int, within_s: float, idle_s: float = INTAKE_IDLE_S,
                       max_wait_s: float | None = None, behind: Callable[[], int] | None = None):
    """Like Faust's ``stream.take_events(max_events, within_s)`` (same buffering processor), but
    *adaptive* and *latency-aware*: a batch is handed over when :func:`close_reason` says so -- full;
    ``within_s`` after it started filling; or, once the events already in the stream's channel are in it
    and unless ``behind()`` (events not fetched yet: the consumer lag) holds a whole batch, when its oldest
    event waited ``max_wait_s`` or the intake went idle (no new event for ``idle_s``) -- and a batch is
    acked only when the loop body *returned* for it. Each batch is a :class:`Batch` (it says why and when
    it closed).

    Why the acks: ``take_events`` acks in a ``finally``, so when the body raises (or the agent is
    cancelled) the batch's offsets are committed without its events having been processed. Here they
    stay unacked and the commit cannot pass them (the agent then stops the worker, worker/app.py).

    Why adaptive: ``take_events`` waits a fixed ``within`` from the end of the previous batch, and Faust
    delivers events to the buffer one at a time, so with a backlog a short window holds few events and the
    per-batch costs (model calls, one produce request per partition, awaits) dominate (DEVELOPERS.md).
    Here a backlog keeps the batch filling up to ``max_events``; a stream that is not behind closes its
    batch ``idle_s`` after the last arrival, and at the latest ``max_wait_s`` after its oldest event was
    taken (a trickle of events at moderate load used to keep a batch open for the whole ``within_s``)."""
    intake = _Intake(stream, max_events)
    queue = getattr(stream.channel, "queue", None)  # events fetched, not taken by the stream yet
    ready = queue.qsize if queue is not None else (lambda: 0)
    channel_it = stream.channel.__aiter__()
    enable_acks = stream.enable_acks
    stream.enable_acks = False  # events are acked below, once the batch was processed
    stream.add_processor(intake.add)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not intake.buffer:  # wait for a first event (re-checking now and then whether to stop)
                await intake.sleep(0.1)
                continue
            events = await intake.fill(within_s, idle_s, max_wait_s, ready, behind or (lambda: 0))
            try:
                yield events
                for event in events:  # only a batch the loop body finished
                    await stream.ack(event)
            finally:
                await intake.release()
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

    def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            timestamp_ms: int | None = None, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Queue one record (``value`` None = a tombstone; ``timestamp_ms`` None = now). Without
        ``partition`` the producer's partitioner picks it (``ready(topic)`` must have been awaited); a
        given partition is checked by ``send``."""
        if partition is None:
            partition = self._producer._partition(topic, None, key, value, key, value)
        record = dict(key=key, value=value, timestamp=timestamp_ms, headers=list(headers))
        batches = self._batches.setdefault((topic, partition), [])
        if not batches or batches[-1].append(**record) is None:
            batch = self._producer.create_batch()
            if batch.append(**record) is None:
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


class InFlightBatches:
    """The delivery futures of the micro-batches handed to the producer, acknowledged or not yet: at most
    ``max_batches`` batches stay unacknowledged while the stream goes on.

    Why: awaiting each batch's acks before taking the next batch stalled the intake whenever the broker
    answered slowly. Correctness does not need that wait: Faust flushes the producer before every offset
    commit (so no offset passes an undelivered record), the state table writes a state to the local store
    only in its changelog record's delivery callback (``BatchedChangelogTable``), and once a delivery failed
    nothing is committed any more (``LowLatencyConsumer._commit``). The bound keeps memory and the time to
    notice a failure small: :meth:`settle` raises the first failed delivery of an acknowledged batch (the
    agent then stops the worker), oldest batch first."""

    def __init__(self, max_batches: int, clock: Callable[[], float] = time.monotonic):
        self.max_batches = max(1, max_batches)
        self._batches: deque[list[asyncio.Future]] = deque()
        self._added: deque[float] = deque()  # when each batch was handed over (clock)
        self._clock = clock

    def add(self, futures: Sequence[asyncio.Future]) -> None:
        if futures:
            self._batches.append(list(futures))
            self._added.append(self._clock())

    def oldest_undelivered_s(self) -> float:
        """How long the oldest batch with an unacknowledged record has waited (0: none waits): a broker
        that takes records and never answers is a stall (worker/watchdog.py)."""
        now = self._clock()
        return next((now - added for batch, added in zip(self._batches, self._added)
                     if not all(f.done() for f in batch)), 0.0)

    async def settle(self) -> None:
        """Forget the acknowledged batches, oldest first (raising a failure among them); wait for the oldest
        while more than ``max_batches`` are in flight."""
        batches = self._batches
        while batches and (len(batches) > self.max_batches or all(f.done() for f in batches[0])):
            self._added.popleft()
            await asyncio.gather(*batches.popleft())

    def pending(self) -> list[asyncio.Future]:
        """Every delivery future not forgotten yet (done or not)."""
        return [f for batch in self._batches for f in batch]

    def __len__(self) -> int:
        return len(self._batches)


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
    per record, which cost as much as the whole model step). The agent calls :meth:`send_changelog_batches`
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
        return await queue.send(on_delivered=lambda t, p, n, f: self._changelog_delivered(in_flight, p, n, f))

    def _changelog_delivered(self, in_flight: dict, partition: int, n_records: int, future: asyncio.Future) -> None:
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


def _assigned(app: faust.App, topic: str | None = None) -> Iterator[tuple[Any, int | None, int | None]]:
    """(partition, last read offset, high watermark) of each partition assigned to the worker's consumer
    (of ``topic`` only, when given). Reads Faust's consumer internals; raises when it is not started."""
    consumer = app.consumer
    read = getattr(consumer, "_read_offset", {})
    for tp in sorted(consumer.assignment()):
        if topic is None or tp.topic == topic:
            yield tp, read.get(tp), consumer.highwater(tp)


def consumer_lag(app: faust.App, topic: str) -> int:
    """Sum over assigned partitions of ``topic``: high watermark - (last read offset + 1)."""
    try:
        return sum(max(0, high - (pos + 1 if pos is not None else 0))
                   for _, pos, high in _assigned(app, topic) if high is not None)
    except Exception:  # not started / rebalancing: keep the last value
        return int(metrics.CONSUMER_LAG._value.get())


def events_unacked(app: faust.App, topic: str) -> int:
    """Events of ``topic`` the worker's consumer handed to the stream that are not acknowledged yet (taken,
    buffered, or in a batch being handled). Reads Faust's ``Consumer.unacked``."""
    try:
        return sum(1 for m in list(app.consumer.unacked) if not m.acked and m.topic == topic)
    except Exception:  # not started
        return 0


def broker_silence_s(app: faust.App) -> float:
    """Seconds since the broker last answered a fetch of the worker's consumer (0: unknown, or no
    partition assigned). Reads the consumer thread through Faust's ``Consumer._thread``."""
    try:
        answered = app.consumer._thread.fetch_answered_at()
    except Exception:  # not started / rebalancing
        return 0.0
    return max(0.0, time.time() - answered) if answered is not None else 0.0


def recovering(app: faust.App) -> bool:
    """A rebalance, or tables being restored from their changelogs: no micro-batch is expected then."""
    return bool(app.rebalancing or getattr(app, "in_recovery", False))


def waits_of(app: faust.App, pending_sends: Sequence[asyncio.Future]) -> str:
    """What the worker is waiting on, for the stall WARNING (each part best effort): the deliveries of the
    batches in flight (``pending_sends``), the producer's queue, the partitions behind, paused or stopped flow."""
    pending = [f for f in pending_sends if not f.done()]
    parts = [f"{len(pending)} of the in-flight batches' {len(pending_sends)} deliveries unanswered",
             f"broker last answered a fetch {broker_silence_s(app):.1f} s ago"]
    try:
        accumulator = app.producer._ensure_producer()._message_accumulator
        parts.append(f"{sum(len(q) for q in accumulator._batches.values())} record batches queued in the producer")
    except Exception:
        pass
    try:
        behind = [f"{tp.topic}[{tp.partition}] read {pos} of {high}" for tp, pos, high in _assigned(app)
                  if high is not None and (pos is None or pos + 1 < high)]
        parts.append("partitions behind: " + (", ".join(behind) or "none"))
        consumer = app.consumer
        if getattr(consumer, "_paused_partitions", None):
            parts.append(f"paused: {sorted(consumer._paused_partitions)}")
        if not getattr(consumer, "flow_active", True):
            parts.append("consumer flow stopped (rebalance?)")
    except Exception as exc:
        parts.append(f"consumer state unreadable ({exc!r})")
    return "; ".join(parts)


async def topic_partitions(producer, topic: str) -> int:
    """How many partitions ``topic`` has (the Faust producer's metadata; waits for it the first time)."""
    client = producer._ensure_producer().client
    await client._wait_on_metadata(topic)
    return len(client.cluster.partitions_for_topic(topic))
