"""The user-state table: :class:`BatchedChangelogTable` (a ``faust.Table`` written behind its changelog,
the changelog sent as record batches) and its RocksDB options.

The private Faust names used here (the rocksdb store's ``_dbs`` and ``_db_for_partition``, the producer's
``_ensure_producer``) are listed in worker/internals.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import faust

from ..settings import Settings
from .sends import OutRecord, RecordBatches


def rocksdb_options(settings: Settings) -> dict:
    """The state table's RocksDB memory bounds, per partition (Settings.rocksdb_*: Faust's defaults let
    the worker's memory grow by hundreds of MB before RocksDB flushes, DEVELOPERS.md)."""
    mb = 1024 * 1024
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * mb, "max_write_buffer_number": 2,
            "block_cache_size": settings.rocksdb_block_cache_mb * mb}


def write_batch(store):
    """An empty RocksDB write batch for Faust's rocksdb ``store`` (rocksdict or python-rocksdb driver)."""
    if store.use_rocksdict:
        import rocksdict

        return rocksdict.WriteBatch(raw_mode=True)
    import rocksdb

    return rocksdb.WriteBatch()


class StoreNotOpen(LookupError):
    """A partition's local store is not open here (revoked, or not assigned yet): ask again shortly."""


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
        self._queue.add(OutRecord(self.changelog_topic.get_topic_name(), key, value, partition))
        entry = (key, value, partition)
        self._unflushed[(key, partition)] = entry
        self._in_flight.setdefault(partition, deque()).append(entry)
        if value is None:
            self._sensor_on_del(self, key)
        else:
            self._sensor_on_set(self, key, value)

    def stored(self, key: bytes, partition: int | None, open_store: bool = True) -> bytes | None:
        """The key's newest value staged for ``partition``, else the one in that partition's local store
        (``partition`` None: search every local partition; only for a state key that is not a record key).
        ``open_store`` False (a read from another thread than the stream's): a partition whose store is not
        open raises :class:`StoreNotOpen` instead of being opened (Faust opens them at assignment)."""
        store = self.data
        if partition is not None:
            entry = self._unflushed.get((key, partition))
            if entry is not None:
                return entry[1]
            if open_store:
                return store._db_for_partition(partition).get(key)
            db = store._dbs.get(partition)
            if db is None:
                raise StoreNotOpen(f"the local store of partition {partition} is not open")
            return db.get(key)
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
