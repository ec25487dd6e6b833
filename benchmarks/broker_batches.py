"""Does the embedded broker slow down with the number of record batches it holds? (No worker involved.)

    python benchmarks/broker_batches.py                         # 1-record batches, 20,000 per step, 5 steps
    python benchmarks/broker_batches.py --per-batch 1000 --steps 8 --step 50000   # large batches
    python benchmarks/broker_batches.py --isolation             # whose batches does a fetch pay for?

Each step produces ``--step`` records to a 4-partition topic in batches of ``--per-batch`` records, then
times fetches of the newest records and fetches from offset 0 with a fresh aiokafka consumer. Tansu 0.6's
memory engine answered in 20 ms at 20,000 batches and not at all (30 s timeouts) at 100,000, while
400,000 records in large batches were fetched in 8-14 ms (docs/RELIABILITY.md, "Stalls").

``--isolation`` fills partition 0 of one topic with 1-record batches (0, 10k, 25k, 50k) and at each level
times, on that partition, on the topic's other (empty) partition and on another topic: a produce, and a
produce followed by the fetch of its record, with the broker's CPU per operation.
Tansu's fetch lists the batch objects of the fetched partition (tansu-storage ``dynostore.rs``): the
answer says whether that cost is the partition's, the topic's or the whole store's.
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


async def _timed(op, broker_pid: int, rounds: int) -> tuple[float, float]:
    """(median ms, broker CPU ms per call) of ``rounds`` calls of ``op``."""
    from stream_rec_devtools.procfs import cpu_seconds

    times, cpu0 = [], cpu_seconds(broker_pid)
    for _ in range(rounds):
        t0 = time.perf_counter()
        await op()
        times.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (cpu_seconds(broker_pid) - cpu0) * 1000 / rounds
    return sorted(times)[len(times) // 2], cpu_ms


async def isolation(bootstrap: str, broker_pid: int, levels: list[int], rounds: int) -> None:
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.protocol.fetch import FetchRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("filled", 2, 1), NewTopic("other", 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    client, node = producer.client, producer.client.cluster.brokers().pop().nodeId
    probes = {"the filled partition": TopicPartition("filled", 0), "its topic's other partition":
              TopicPartition("filled", 1), "another topic": TopicPartition("other", 0)}
    filled = 0
    try:
        for level in levels:
            futures = []
            while filled < level:  # one record per batch, all into filled[0]
                batch = producer.create_batch()
                batch.append(key=None, value=b"x" * 100, timestamp=None)
                futures.append(await producer.send_batch(batch, "filled", partition=0))
                filled += 1
                if len(futures) >= 1000:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
            for name, tp in probes.items():
                last = {}

                async def produce(tp=tp):
                    last["offset"] = (await (await producer.send(tp.topic, b"y" * 100, partition=tp.partition))).offset

                async def fetch(tp=tp):  # the record just produced: the broker lists the partition's batches
                    request = FetchRequest(500, 1, 1 << 20, 0, [(tp.topic, [(tp.partition, last["offset"], 1 << 20)])])
                    response = await client.send(node, request)
                    assert response.topics[0][1][0][-1], "no record fetched"  # (partition, error, hwm, ..., records)

                prod = await _timed(produce, broker_pid, rounds)
                got = await _timed(fetch, broker_pid, rounds)
                print(f"{filled:>7,} batches in filled[0]; {name:<29}: produce {prod[0]:5.1f} ms ({prod[1]:5.2f} "
                      f"broker CPU ms); fetch of the newest record {got[0]:6.1f} ms ({got[1]:6.2f} broker CPU ms)",
                      flush=True)
    finally:
        await producer.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step", type=int, default=20_000, help="records produced per step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--per-batch", type=int, default=1, help="records per record batch")
    p.add_argument("--isolation", action="store_true", help="fetch/produce cost on the filled partition, its "
                                                              "topic's other partition and another topic")
    p.add_argument("--levels", default="0,10000,25000,50000", help="--isolation: batches in filled[0] per step")
    p.add_argument("--rounds", type=int, default=40, help="--isolation: timed calls per operation")
    args = p.parse_args()
    with EmbeddedBroker() as broker:  # started outside the event loop
        if args.isolation:
            asyncio.run(isolation(broker.bootstrap, broker.process.pid, [int(x) for x in args.levels.split(",")],
                                  args.rounds))
        else:
            asyncio.run(run(broker.bootstrap, args.step, args.steps, args.per_batch))


if __name__ == "__main__":
    main()
