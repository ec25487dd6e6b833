"""Plain aiokafka helpers shared by the CLI (produce, tail, bench), the tests and the app.

One place turns :class:`~stream_rec.settings.Settings` security fields into client arguments, both for
aiokafka (``client_kwargs``) and for Faust (``faust_credentials``), so SASL/SSL behaves the same in
the worker and in the tools around it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from typing import Any, Iterable

from .settings import Settings

# Logical topic name -> (partitions from Settings?, compacted?)
TOPIC_LAYOUT = {
    "events": ("partitions", False),
    "catalog": ("one", True),
    "recommendations": ("partitions", False),
    "events-dlq": ("one", False),
    "control": ("one", False),
}


@functools.lru_cache(maxsize=65536)  # the same users come back; murmur2 in Python costs ~6 us per key
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``: murmur2, as the Java
    client, Kafka Streams, aiokafka and Faust compute it (``aiokafka.partitioner.DefaultPartitioner``).
    librdkafka-based clients (confluent-kafka, and Go/C#/Node clients built on it) default to CRC32
    (``consistent_random``) and put a key elsewhere unless configured with ``partitioner=murmur2_random``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """SSL context for SSL/SASL_SSL, from the CA / client cert files in Settings (None otherwise)."""
    if "SSL" not in settings.security_protocol.upper():
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    return ctx


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for bootstrap + security (works for producer, consumer, admin)."""
    kw: dict[str, Any] = {"bootstrap_servers": settings.broker,
                          "request_timeout_ms": int(settings.request_timeout_s * 1000)}
    protocol = settings.security_protocol.upper()
    if protocol != "PLAINTEXT":
        kw["security_protocol"] = protocol
        if "SSL" in protocol:
            kw["ssl_context"] = ssl_context(settings)
        if protocol.startswith("SASL"):
            kw["sasl_mechanism"] = settings.sasl_mechanism
            kw["sasl_plain_username"] = settings.sasl_username
            kw["sasl_plain_password"] = settings.sasl_password
    return kw


def faust_credentials(settings: Settings) -> dict[str, Any]:
    """Faust App keyword arguments (``broker_credentials``) for the same security settings."""
    import faust

    protocol = settings.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    ctx = ssl_context(settings)
    if protocol.startswith("SASL"):
        creds = faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                      mechanism=settings.sasl_mechanism.upper(), ssl_context=ctx)
        return {"broker_credentials": creds}
    return {"broker_credentials": faust.SSLCredentials(ctx)}


def topic_specs(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(full name, partitions, config) of every stream-rec topic."""
    out = []
    for logical, (parts, compacted) in TOPIC_LAYOUT.items():
        name = {"events": settings.events_topic, "catalog": settings.catalog_topic,
                "recommendations": settings.recommendations_topic, "events-dlq": settings.dlq_topic,
                "control": settings.control_topic}[logical]
        n = settings.partitions if parts == "partitions" else 1
        config = {"cleanup.policy": "compact"} if compacted else {}
        out.append((settings.topic(name), n, config))
    return out


async def ensure_topics(settings: Settings) -> None:
    """Create the stream-rec topics with the right partition counts (already existing ones are kept).

    Producers create topics on first send with the broker's default partition count, which would
    break co-partitioning of events and the state table; so every tool calls this first."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, n, 1, topic_configs=config) for name, n, config in topic_specs(settings)
               if name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce_json(settings: Settings, topic: str, records: Iterable[dict], key_field: str | None = None,
                       producer=None, every_partition: bool = False) -> int:
    """Send JSON records (keyed by ``record[key_field]``) and wait for all acks. Returns the count of
    records. ``every_partition``: one copy of each record to every partition of the topic (``forget``)."""
    from aiokafka import AIOKafkaProducer

    own = producer is None
    if own:
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
        await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic)) if every_partition else [None]
        futures, count = [], 0
        for rec in records:
            key = str(rec[key_field]).encode() if key_field and key_field in rec else None
            value = json.dumps(rec).encode()
            for partition in partitions:
                futures.append(await producer.send(topic, value, key=key, partition=partition))
            count += 1
        for f in futures:
            await f
        return count
    finally:
        if own:
            await producer.stop()


async def fetched_end_offsets(listed: dict, **consumer_kwargs: Any) -> dict:
    """End offsets (next offset to be written) confirmed by a fetch, for partitions whose ListOffsets
    answer is in ``listed`` ({TopicPartition-like: offset}).

    Why: the embedded Tansu broker answers ListOffsets(latest) with *the base offset of the last record
    batch + 1*, not the last offset + 1, whenever producers batch (measured: 3 records at offsets 0-2 in
    one batch -> "end offset 1"). Faust's table recovery trusts that number, so it would stop replaying a
    changelog early and, with the consistency check on, refuse to start ("persisted offset is higher than
    the highwater"). The high watermark carried by a Fetch response is right, so we fetch from just
    before the listed end and take the larger of the two. On a real Kafka broker both agree."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out = dict(listed)
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, off in listed.items() if off}
    if not wanted:
        return out
    probe = AIOKafkaConsumer(**consumer_kwargs, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
    await probe.start()
    try:
        probe.assign(list(wanted))
        for tp, orig in wanted.items():
            probe.seek(tp, max(0, listed[orig] - 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline and any(probe.highwater(tp) is None for tp in wanted):
            await probe.getmany(timeout_ms=200)
        for tp, orig in wanted.items():
            high = probe.highwater(tp)
            if high is not None and high > out[orig]:
                out[orig] = high
    finally:
        await probe.stop()
    return out
