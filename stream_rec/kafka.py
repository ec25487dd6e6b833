"""Plain aiokafka helpers shared by the CLI (produce, tail, bench), the tests and the app, and the one
topic spec (TOPIC_LAYOUT: names, partitions, cleanup policy, retention, replication of every topic).

One place turns :class:`~stream_rec.settings.Settings` security fields into client arguments, both for
aiokafka (``client_kwargs``) and for Faust (``faust_credentials``), so SASL/SSL behaves the same in
the worker and in the tools around it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Iterable

from .settings import Settings

log = logging.getLogger(__name__)

STATE_TABLE = "user-state"  # the worker's Faust table; Faust names its changelog <app_id>-user-state-changelog

HOUR_MS = 3_600_000
# The one topic spec: every topic stream-rec creates, read by ensure_topics (`stream-rec topics create`,
# run by the compose init job and the Kubernetes Job, and by every tool before it produces) and by the
# Faust app for the topics Faust declares itself (the table's changelog, the assignor's leader topic).
# role -> (Settings field holding the name, or None for Faust's own topics;
#          partitions: "partitions" = Settings.partitions (co-partitioned with the state), else 1;
#          cleanup.policy; retention.ms, None = the broker's default)
# Retention (topics/README.md): events 7 days by broker default (the state lives in the table),
# recommendations short (consumers keep the newest per user), dead letters long (evidence).
TOPIC_LAYOUT: dict[str, tuple[str | None, str | int, str, int | None]] = {
    "events": ("events_topic", "partitions", "delete", None),
    "catalog": ("catalog_topic", 1, "compact", None),
    "recommendations": ("recommendations_topic", "partitions", "delete", 6 * HOUR_MS),
    "events-dlq": ("dlq_topic", 1, "delete", 28 * 24 * HOUR_MS),
    "control": ("control_topic", 1, "delete", 24 * HOUR_MS),
    "changelog": (None, "partitions", "compact", None),  # the user-state table: one partition per events partition
    "leader": (None, 1, "delete", None),  # Faust's leader-election topic
}
SPEC_CONFIG_KEYS = ("cleanup.policy", "retention.ms", "min.insync.replicas")  # topic configs a spec may set


class TopicError(RuntimeError):
    """A topic could not be created as the spec says; the message names the topic and the reason."""


@dataclass(frozen=True)
class TopicSpec:
    role: str  # key of TOPIC_LAYOUT
    name: str  # full name on the cluster
    partitions: int
    replication_factor: int
    cleanup_policy: str  # delete | compact
    retention_ms: int | None = None  # None: the broker's default
    min_insync_replicas: int = 0  # 0: the broker's default

    @property
    def configs(self) -> dict[str, str]:
        """Topic configs as CreateTopics takes them (only what the spec sets)."""
        out = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        if self.min_insync_replicas:
            out["min.insync.replicas"] = str(self.min_insync_replicas)
        return out


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
    kw: dict[str, Any] = {"bootstrap_servers": settings.broker}
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


def changelog_topic_name(settings: Settings) -> str:
    """Faust's name for the state table's changelog (``Table._changelog_topic_name``; app version 1)."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every stream-rec topic for these settings (TOPIC_LAYOUT with names, counts and replication filled in)."""
    rf, min_isr = settings.replication_factor, settings.min_insync_replicas
    if rf < 1:
        raise TopicError(f"replication factor {rf}: must be at least 1 (STREAM_REC_REPLICATION_FACTOR)")
    if not 0 <= min_isr <= rf:
        raise TopicError(f"min.insync.replicas {min_isr} with replication factor {rf}: must be between 0 (broker "
                         "default) and the replication factor, or acks=all producers could never write "
                         "(STREAM_REC_MIN_INSYNC_REPLICAS)")
    faust_names = {"changelog": changelog_topic_name(settings), "leader": f"{settings.app_id}-__assignor-__leader"}
    out = []
    for role, (field_name, parts, policy, retention_ms) in TOPIC_LAYOUT.items():
        name = settings.topic(getattr(settings, field_name)) if field_name else faust_names[role]
        out.append(TopicSpec(role, name, settings.partitions if parts == "partitions" else int(parts), rf, policy,
                             retention_ms, min_isr))
    return out


def topic_spec(settings: Settings, role: str) -> TopicSpec:
    return next(s for s in topic_specs(settings) if s.role == role)


def check_replication(specs: Iterable[TopicSpec], brokers: int) -> None:
    """Refuse a replication factor larger than the cluster before creating anything. (Kafka would answer
    INVALID_REPLICATION_FACTOR per topic; the embedded Tansu broker accepts any factor and keeps one copy.)"""
    for spec in specs:
        if spec.replication_factor > brokers:
            raise TopicError(f"cannot create topic {spec.name}: replication factor {spec.replication_factor} is "
                             f"larger than the {brokers} broker(s) of the cluster (set STREAM_REC_REPLICATION_FACTOR "
                             f"to at most {brokers})")


def check_create_response(response) -> list[str]:
    """Names of the topics a CreateTopics response says were created; TopicAlreadyExists counts as fine
    (another worker was first), any other per-topic error raises :class:`TopicError` with the broker's
    error name and message."""
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    created, failed = [], []
    for name, code, *message in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            text = message[0] if message and message[0] else ""
            failed.append(f"topic {name}: {for_code(code).__name__} (error {code}){': ' + text if text else ''}")
    if failed:
        raise TopicError("the broker refused to create " + "; ".join(failed))
    return created


def spec_mismatches(spec: TopicSpec, partitions: int, replication_factor: int) -> list[str]:
    """What differs between an existing topic and its spec (ensure_topics never alters existing topics)."""
    out = []
    if partitions != spec.partitions:
        out.append(f"topic {spec.name} has {partitions} partitions, the spec says {spec.partitions}"
                   + (" (events and the state changelog must be co-partitioned: users would move to partitions "
                      "where their state is not)" if spec.role in ("events", "changelog") else ""))
    if replication_factor != spec.replication_factor:
        out.append(f"topic {spec.name} has replication factor {replication_factor}, the spec says "
                   f"{spec.replication_factor}")
    return out


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
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
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


async def describe_topics(settings: Settings) -> list[dict[str, Any]]:
    """The spec's topics as the broker has them: ``{spec, exists, partitions, replication_factor, configs}``,
    configs being what DescribeConfigs reports for the keys the spec sets (a real Kafka broker reports
    defaults too; the embedded Tansu broker only the configs set at creation)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
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
                       producer=None) -> int:
    """Send JSON records (keyed by ``record[key_field]``) and wait for all acks. Returns the count."""
    from aiokafka import AIOKafkaProducer

    own = producer is None
    if own:
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
        await producer.start()
    try:
        futures = []
        for rec in records:
            key = str(rec[key_field]).encode() if key_field and key_field in rec else None
            futures.append(await producer.send(topic, json.dumps(rec).encode(), key=key))
        for f in futures:
            await f
        return len(futures)
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
