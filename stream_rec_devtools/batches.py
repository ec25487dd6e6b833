"""How many record batches a broker holds for a topic's partitions, read with raw fetch requests.

Tansu 0.6's in-memory engine (the embedded broker) lists every batch of a partition on every fetch of it,
so its cost grows with the number of batches, not of records (docs/RELIABILITY.md, "The embedded broker
ages"); benchmarks/demo_aging.py and the tests count them with this.
"""

from __future__ import annotations


async def record_batches(bootstrap: str, topic: str, partitions: int | None = None, *,
                         max_fetches: int = 10_000) -> list[int]:
    """The number of record batches in each of ``topic``'s partitions 0..partitions-1 (None: all of them,
    from the metadata), from offset 0 to the high watermark (one raw fetch after another; ``max_fetches``
    bounds the requests per partition)."""
    from aiokafka import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node = client.cluster.brokers().pop().nodeId
        if partitions is None:
            await client.force_metadata_update()  # bootstrap's metadata names no topics
            partitions = len(client.cluster.partitions_for_topic(topic) or ())
        counts = []
        for partition in range(partitions):
            count = offset = 0
            for _ in range(max_fetches):
                request = FetchRequest(100, 1, 4 << 20, 0, [(topic, [(partition, offset, 4 << 20)])])
                answer = (await client.send(node, request)).topics[0][1][0]  # (partition, error, hwm, ..., records)
                records = MemoryRecords(bytes(answer[-1] or b""))
                batch = records.next_batch()
                if batch is None:
                    break
                while batch is not None:
                    count, offset = count + 1, batch.next_offset
                    batch = records.next_batch()
                if offset >= answer[2]:  # the high watermark
                    break
            counts.append(count)
        return counts
    finally:
        await client.close()
