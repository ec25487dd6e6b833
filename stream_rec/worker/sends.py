"""What the worker sends, and the bound on what is unacknowledged:

* :class:`RecordBatches`: records collected into one Kafka record batch per topic partition;
* :func:`send_records`: a micro-batch's records handed to the producer (recommendations and re-routed
  events as record batches, dead letters one by one), returning their delivery futures;
* :class:`InFlightBatches`: at most ``Settings.max_in_flight_batches`` micro-batches unacknowledged;
* :func:`topic_partitions`: how many partitions a topic has (the producer's metadata).

The private aiokafka names used here are listed in worker/internals.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable, NamedTuple, Sequence


class OutRecord(NamedTuple):
    """One record to send (``value`` None: a tombstone)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # None: the producer's partitioner (murmur2 of the key)
    timestamp_ms: int | None = None  # None: now
    headers: Sequence[tuple[str, bytes]] = ()


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
    ``_partition``), the same ones ``send``/``send_batch`` use."""

    def __init__(self, producer):  # an aiokafka.AIOKafkaProducer (Faust: app.producer._ensure_producer())
        self._producer = producer
        self._batches: dict[tuple[str, int], list] = {}

    async def ready(self, topic: str) -> None:
        """Wait until the producer knows the topic's partitions (instant after the first time)."""
        await self._producer.client._wait_on_metadata(topic)

    def add(self, record: OutRecord) -> None:
        """Queue one record. Without a partition the producer's partitioner picks it (``ready(topic)``
        must have been awaited); a given partition is checked by ``send``."""
        topic, key, value, partition, timestamp_ms, headers = record
        if partition is None:
            partition = self._producer._partition(topic, partition=None, key=key, value=value, serialized_key=key,
                                                  serialized_value=value)
        fields = dict(key=key, value=value, timestamp=timestamp_ms, headers=list(headers))
        batches = self._batches.setdefault((topic, partition), [])
        if not batches or batches[-1].append(**fields) is None:
            batch = self._producer.create_batch()
            if batch.append(**fields) is None:
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

async def send_records(producer, batched: Sequence[OutRecord],
                       single: Sequence[OutRecord] = ()) -> list[asyncio.Future]:
    """Hand ``batched`` to Faust's ``producer`` as one record batch per topic partition
    (:class:`RecordBatches`) and ``single`` one record at a time (``producer.send``: the dead letters, rare
    and up to ~170 KB each); returns the delivery futures."""
    futures: list[asyncio.Future] = []
    if batched:
        batches = RecordBatches(producer._ensure_producer())
        for topic in {r.topic for r in batched if r.partition is None}:
            await batches.ready(topic)
        for record in batched:
            batches.add(record)
        futures += await batches.send()
    for record in single:
        timestamp = None if record.timestamp_ms is None else record.timestamp_ms / 1000.0  # Faust's: seconds
        futures.append(await producer.send(record.topic, record.key, record.value, partition=record.partition,
                                           timestamp=timestamp, headers=record.headers or None))
    return futures


async def topic_partitions(producer, topic: str) -> int:
    """How many partitions ``topic`` has (the Faust producer's metadata; waits for it the first time)."""
    client = producer._ensure_producer().client
    await client._wait_on_metadata(topic)
    return len(client.cluster.partitions_for_topic(topic))
