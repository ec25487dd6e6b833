"""Every Kafka client of stream-rec is built here: the worker's own consumers, the CLI's, the tools' and
the tests'. One place turns :class:`~stream_rec.settings.Settings` security fields into client arguments,
for aiokafka (``client_kwargs``) and for Faust (``faust_credentials``), so SASL/SSL behaves the same in
the worker and in everything around it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any, AsyncIterator, Callable, Iterable

from ..settings import Settings
from .records import contain_header_keys
from .topics import (SPEC_CONFIG_KEYS, TopicSpec, check_create_response, check_replication, spec_mismatches,
                     topic_specs)

log = logging.getLogger(__name__)


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


class BrokerUnreachable(ConnectionError):
    """No Kafka broker answered within ``Settings.connect_timeout_s`` (the message names the servers)."""


async def start_client(client, settings: Settings):
    """``await client.start()`` (an aiokafka producer, consumer or admin client), bounded by
    ``Settings.connect_timeout_s``; a client that cannot reach a broker is closed and
    :class:`BrokerUnreachable` raised, so a command fails with one line instead of a traceback."""
    from aiokafka.errors import KafkaConnectionError

    quiet = _BootstrapErrors()  # aiokafka logs an ERROR per refused bootstrap server: the exception says it once
    logging.getLogger("aiokafka").addFilter(quiet)
    try:
        await asyncio.wait_for(client.start(), settings.connect_timeout_s)
    except (KafkaConnectionError, asyncio.TimeoutError, OSError) as exc:
        try:
            await (client.close() if hasattr(client, "close") else client.stop())
        except Exception:  # already half-closed: nothing more to release
            pass
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no answer within {settings.connect_timeout_s:g} s (STREAM_REC_CONNECT_TIMEOUT_S)"
        else:
            reason = quiet.errors[-1] if quiet.errors else str(exc) or type(exc).__name__
        raise BrokerUnreachable(f"no Kafka broker answers at {settings.broker}: {reason}; "
                                "check --broker / STREAM_REC_BROKER") from None
    finally:
        logging.getLogger("aiokafka").removeFilter(quiet)
    return client


class _BootstrapErrors(logging.Filter):
    """Keeps aiokafka's "Unable connect to HOST:PORT: why" records out of the log, and their text."""

    def __init__(self):
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Unable connect to"):
            self.errors.append(record.getMessage().replace("Unable connect to ", "", 1))
            return False
        return True


def kafka_producer(settings: Settings, **options: Any):
    """An aiokafka producer (not started) for ``settings``' brokers and security."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**client_kwargs(settings), **options)


def kafka_consumer(settings: Settings, *topics: str, **options: Any):
    """An aiokafka consumer (not started): no consumer group and nothing committed unless ``options``
    say otherwise (every reader of stream-rec's topics outside Faust reads on its own)."""
    from aiokafka import AIOKafkaConsumer

    contain_header_keys()  # a non-UTF-8 header key must not stop the consumer (io/records.py)
    return AIOKafkaConsumer(*topics, **client_kwargs(settings), **({"group_id": None, "enable_auto_commit": False}
                                                                     | options))


async def assign_from_beginning(consumer, topic: str, retry_s: float = 1.0) -> list:
    """Assign every partition of ``topic`` to a started group-less consumer and seek to the start.
    Waits (polling the metadata) until the topic exists."""
    from aiokafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        await consumer.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await asyncio.sleep(retry_s)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def follow_from_beginning(settings: Settings, topic: str, poll_ms: int, max_records: int) -> AsyncIterator[list]:
    """Every record of ``topic`` from its beginning, then each new one, as lists of aiokafka
    ``ConsumerRecord`` (one list per poll, possibly empty), read group-less: what every worker reads of
    the ``catalog`` and ``control`` topics. The consumer stops when the iteration ends or is cancelled."""
    consumer = kafka_consumer(settings, fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100))
    await consumer.start()
    try:
        await assign_from_beginning(consumer, topic)
        while True:
            fetched = await consumer.getmany(timeout_ms=poll_ms, max_records=max_records)
            yield [m for msgs in fetched.values() for m in msgs]
    finally:
        await consumer.stop()


async def _partition_layout(admin, names: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (partitions, replication factor) of existing topics."""
    if not names:
        return {}
    out = {}
    for topic in await admin.describe_topics(names):
        parts = topic.get("partitions") or []
        if topic.get("error_code", 0) == 0 and parts:
            out[topic["topic"]] = (len(parts), len(parts[0].get("replicas") or []))
    return out


async def ensure_topics(settings: Settings) -> list[TopicSpec]:
    """Create every topic of the spec that does not exist yet; returns the specs it created.

    Existing topics are kept as they are; a partition count or replication factor that differs from the
    spec is logged as a warning. Errors (a replication factor larger than the cluster, a refused config)
    raise :class:`TopicError`. Producers would otherwise create topics on first send with the broker's
    default partition count, which breaks co-partitioning of events and the state table; so every tool
    calls this first."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    specs = topic_specs(settings)
    admin = await start_client(AIOKafkaAdminClient(**client_kwargs(settings)), settings)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            check_replication(missing, len((await admin.describe_cluster())["brokers"]))
            created = set(check_create_response(await admin.create_topics(
                [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs) for s in missing])))
        else:
            created = set()
        layout = await _partition_layout(admin, [s.name for s in specs if s.name in existing])
        for spec in specs:
            if spec.name in layout:
                for problem in spec_mismatches(spec, *layout[spec.name]):
                    log.warning("%s", problem)
        return [s for s in specs if s.name in created]
    finally:
        await admin.close()


async def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete the topics ``names`` (full names) that exist; the others are ignored. The demo drops its
    rolled-over topics with it: the embedded broker frees a deleted topic's batches (docs/RELIABILITY.md)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = await start_client(AIOKafkaAdminClient(**client_kwargs(settings)), settings)
    try:
        doomed = sorted(set(names) & set(await admin.list_topics()))
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def compact_topic(settings: Settings, topic: str) -> int:
    """Rewrite ``topic`` (one of the spec's, e.g. the state changelog) with only the newest record of each
    key on each partition, a tombstone dropping its key: what a compacting broker keeps. The embedded
    broker never compacts, so the demo does this at each roll, its worker stopped (nothing may write
    meanwhile). Returns the records kept."""
    newest: dict[tuple[int, bytes | None], Any] = {}  # only the newest of each key is held, not the topic
    await read_topic(settings, topic, timeout_s=300.0,
                     take=lambda records: newest.update(((r.partition, r.key), r) for r in records))
    kept = [r for r in newest.values() if r.value is not None]
    await delete_topics(settings, [topic])
    await ensure_topics(settings)
    producer = await start_client(kafka_producer(settings, linger_ms=5), settings)
    try:
        sent = [await producer.send(topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers or ()))
                for r in kept]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return len(kept)

async def describe_topics(settings: Settings) -> list[dict[str, Any]]:
    """The spec's topics as the broker has them: ``{spec, exists, partitions, replication_factor, configs}``,
    configs being what DescribeConfigs reports for the keys the spec sets (a real Kafka broker reports
    defaults too; the embedded Tansu broker only the configs set at creation)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    specs = topic_specs(settings)
    admin = await start_client(AIOKafkaAdminClient(**client_kwargs(settings)), settings)
    try:
        existing = set(await admin.list_topics())
        names = [s.name for s in specs if s.name in existing]
        layout = await _partition_layout(admin, names)
        configs: dict[str, dict[str, str]] = {name: {} for name in names}
        if names:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            for response in responses:
                for _code, _msg, _type, name, entries in response.resources:
                    if name in configs:
                        configs[name] = {e[0]: e[1] for e in entries if e[0] in SPEC_CONFIG_KEYS}
    finally:
        await admin.close()
    out = []
    for spec in specs:
        parts, replicas = layout.get(spec.name, (None, None))
        out.append({"spec": spec, "exists": spec.name in existing, "partitions": parts,
                    "replication_factor": replicas, "configs": configs.get(spec.name, {})})
    return out


async def produce_json(settings: Settings, topic: str, records: Iterable[dict], key_field: str | None = None,
                       producer=None, every_partition: bool = False) -> int:
    """Send JSON records (keyed by ``record[key_field]``) and wait for all acks. Returns the count of
    records. ``every_partition``: one copy of each record to every partition of the topic (``forget``)."""
    own = producer is None
    if own:
        producer = await start_client(kafka_producer(settings, linger_ms=5), settings)
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


async def publish(settings: Settings, topic: str, events: Iterable[dict], total: int | None, rate: float,
                  stamp_now: bool, progress: bool = True, *, burst_s: float = 0.0) -> int:
    """Send events keyed by user_id, paced to ``rate`` ev/s (0 = as fast as possible), with a progress
    bar; acks are awaited in chunks (not per record). ``stamp_now`` replaces timestamps with the send time.
    ``burst_s``: pace in bursts, the events due in each ``burst_s`` sent at once, so that a partition
    gets one record batch per burst instead of one per event (Tansu's in-memory engine slows with the
    number of batches it holds: docs/RELIABILITY.md, "The embedded broker ages")."""
    from tqdm import tqdm

    producer = await start_client(kafka_producer(settings, linger_ms=5), settings)
    bar = tqdm(total=total, unit="ev", disable=not progress, desc=f"-> {topic}")
    sent, pending = 0, []
    start = time.monotonic()
    try:
        for ev in events:
            if rate > 0:
                ahead = start + sent / rate - time.monotonic()
                if ahead > 0:
                    if pending:
                        await asyncio.gather(*pending)
                        pending.clear()
                    await asyncio.sleep(max(ahead, burst_s))
            if stamp_now and isinstance(ev, dict):
                ev = dict(ev, timestamp=round(time.time(), 3))
            key = str(ev.get("user_id")).encode() if isinstance(ev, dict) and ev.get("user_id") is not None else None
            pending.append(await producer.send(topic, json.dumps(ev).encode(), key=key))
            sent += 1
            bar.update(1)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)
    finally:
        bar.close()
        await producer.stop()
    return sent


async def read_topic(settings: Settings, topic: str, *, timeout_s: float = 30.0,
                     take: Callable[[list], Any] | None = None) -> list:
    """Every record of ``topic`` from the beginning up to its end offsets at call time (aiokafka
    ``ConsumerRecord`` objects, partition by partition). No consumer group, nothing committed. With ``take``,
    each fetched list goes to it instead and nothing is kept (a caller may keep less than the topic)."""
    from aiokafka import TopicPartition

    consumer = await start_client(kafka_consumer(settings, auto_offset_reset="earliest"), settings)
    try:
        await consumer.topics()  # a full metadata fetch, so partitions_for_topic knows this topic
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # The end is the high watermark the *fetch* responses report: Tansu answers ListOffsets(latest),
        # which ``end_offsets`` uses, with the last batch's base offset + 1, not the high watermark.
        records: list = []
        take = take or records.extend
        deadline = time.monotonic() + timeout_s
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp_records in batch.values():
                take(tp_records)
            ends = {tp: consumer.highwater(tp) for tp in tps}
            behind = [tp for tp, end in ends.items() if end is None or await consumer.position(tp) < end]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {timeout_s} s")
            await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()


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
    contain_header_keys()
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
