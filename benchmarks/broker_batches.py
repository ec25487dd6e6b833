"""Does the embedded broker slow down with the number of record batches it holds? (No worker involved.)

    python benchmarks/broker_batches.py                         # 1-record batches, 20,000 per step, 5 steps
    python benchmarks/broker_batches.py --per-batch 1000 --steps 8 --step 50000   # large batches

Each step produces ``--step`` records to a 4-partition topic in batches of ``--per-batch`` records, then
times fetches of the newest records and fetches from offset 0 with a fresh aiokafka consumer. Tansu 0.6's
memory engine answered in 20 ms at 20,000 batches and not at all (30 s timeouts) at 100,000, while
400,000 records in large batches were fetched in 8-14 ms (docs/RELIABILITY.md, "Stalls").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from stream_rec.io.broker import EmbeddedBroker

TOPIC = "batches"


async def fetch_ms(bootstrap: str, from_start: bool, rounds: int = 5) -> tuple[float, float]:
    """(ms per fetch round over the 4 partitions, records per round)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=10, request_timeout_ms=30_000)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        ends = {tp: await consumer.position(tp) for tp in tps}
        t0, n = time.perf_counter(), 0
        for _ in range(rounds):
            for tp in tps:
                consumer.seek(tp, 0 if from_start else max(0, ends[tp] - 200))
            got = await consumer.getmany(timeout_ms=30_000, max_records=800)
            n += sum(len(v) for v in got.values())
        return (time.perf_counter() - t0) / rounds * 1000, n / rounds
    finally:
        await consumer.stop()


async def run(bootstrap: str, step: int, steps: int, per_batch: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, 4, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    value = json.dumps({"user_id": "u0001", "item_id": "space-01", "event_type": "view", "timestamp": 1.7e9}).encode()
    records = batches = 0
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            futures = []
            for i in range(0, step, per_batch):
                batch = producer.create_batch()
                for j in range(per_batch):
                    batch.append(key=b"u%05d" % ((i + j) % 2000), value=value, timestamp=None)
                futures.append(await producer.send_batch(batch, TOPIC, partition=batches % 4))
                batches += 1
            await asyncio.gather(*futures)
            records += step
            rate = step / (time.perf_counter() - t0)
            head_ms, head_n = await fetch_ms(bootstrap, from_start=False)
            start_ms, start_n = await fetch_ms(bootstrap, from_start=True)
            print(f"{records:>9,} records in {batches:>8,} batches: produced at {rate:>7,.0f} rec/s; fetch of the "
                  f"newest {head_ms:8.1f} ms ({head_n:.0f} records), from offset 0 {start_ms:8.1f} ms "
                  f"({start_n:.0f} records)", flush=True)
    finally:
        await producer.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step", type=int, default=20_000, help="records produced per step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--per-batch", type=int, default=1, help="records per record batch")
    args = p.parse_args()
    with EmbeddedBroker() as broker:  # started outside the event loop
        asyncio.run(run(broker.bootstrap, args.step, args.steps, args.per_batch))


if __name__ == "__main__":
    main()
