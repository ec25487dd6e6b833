"""The topic spec: every topic stream-rec uses -- the ones it creates itself and the ones Faust declares
(the state table's changelog, the assignor's leader topic) -- with partitions, cleanup policy, retention
and replication; how keys map to partitions (``key_partition``) and the header of an event the worker
re-routed to its key's partition; and the format of the ``control`` topic's messages. The JSON Schemas
of the record values live in ``topics/`` at the repository root. ``io.kafka.ensure_topics`` creates what
is missing.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..boundedjson import JSONRejected, parse
from ..settings import DEFAULT_APP_ID, Settings

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
    "explore-arms": ("explore_arms_topic", 1, "compact", None),  # recsys/exploring.py: every worker's view
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


def changelog_topic_name(settings: Settings) -> str:
    """Faust's name for the state table's changelog (``Table._changelog_topic_name``; app version 1)."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every stream-rec topic for these settings (TOPIC_LAYOUT with names, counts and replication filled in)."""
    check_namespace(settings)
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


def check_namespace(settings: Settings) -> None:
    """Refuse a topic prefix with the default app id: the consumer group and Faust's topics (the state
    changelog, the assignor's) are named from the app id alone, so two deployments that differ only by
    their prefix would share one group and one changelog -- each one's users' state restored into the
    other (issue 23). Renaming those from the prefix instead would move the state of every deployment
    that followed docs/DEPLOY.md (prefix *and* app id) to new, empty topics."""
    if settings.topic_prefix and settings.app_id == DEFAULT_APP_ID:
        raise TopicError(
            f"STREAM_REC_TOPIC_PREFIX={settings.topic_prefix!r} needs an app id of its own: the consumer group "
            f"and the state changelog ({changelog_topic_name(settings)}) are named from STREAM_REC_APP_ID, not "
            f"from the prefix, so deployments that differ only by prefix would share users' state; set "
            f"STREAM_REC_APP_ID (--app-id), e.g. {settings.topic_prefix}{DEFAULT_APP_ID}")


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


# --- partitioning of keyed topics ----------------------------------------------------------------------
@functools.lru_cache(maxsize=65536)  # the same users come back; murmur2 in Python is slow (DEVELOPERS.md)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``: murmur2, as the Java
    client, Kafka Streams, aiokafka and Faust compute it (``aiokafka.partitioner.DefaultPartitioner``).
    librdkafka-based clients (confluent-kafka, and Go/C#/Node clients built on it) default to CRC32
    (``consistent_random``) and put a key elsewhere unless configured with ``partitioner=murmur2_random``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


# header of an event the worker re-sent to its key's partition: b"<partition>:<offset>" of the original
REROUTED_FROM = "stream-rec-rerouted-from"
_ORIGIN = re.compile(rb"([0-9]{1,10}):([0-9]{1,19})")  # no sign, no spaces: what rerouted_headers writes


def read_headers(headers) -> tuple[tuple[int, int] | None, str]:
    """``(origin, problem)`` of a record's headers: the original (partition, offset) of a re-routed copy
    (None when not re-routed), and what is wrong with them ("" when nothing). Headers are bytes from
    outside like the rest of a record: a key that is not UTF-8 (``io.records`` passes it on escaped), more
    than one origin, or an origin that is not two non-negative integers is a problem, never an origin."""
    origin, seen = None, False
    for name, value in headers or ():
        if not isinstance(name, str) or not _is_utf8(name):
            return None, "a header key is not UTF-8"
        if name != REROUTED_FROM:
            continue
        if seen:
            return None, f"more than one {REROUTED_FROM} header"
        seen = True
        match = _ORIGIN.fullmatch(value) if isinstance(value, bytes) else None
        if match is None or int(match[1]) > 0x7FFFFFFF or int(match[2]) > 0x7FFFFFFFFFFFFFFF:
            shown = value[:40] if isinstance(value, bytes) else value
            return None, f"{REROUTED_FROM} header {shown!r} is not PARTITION:OFFSET"
        origin = int(match[1]), int(match[2])
    return origin, ""


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (io/records.py)
        return False
    return True


def origin_of(headers) -> tuple[int, int] | None:
    """The original (partition, offset) of a re-routed record (None: not re-routed, or headers with a
    problem, see :func:`read_headers`)."""
    return read_headers(headers)[0]


def rerouted_headers(headers, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers of a re-routed copy of the record at ``partition``/``offset``: its own (minus an older
    origin) plus where it came from. A copy of a copy keeps the first origin."""
    origin = origin_of(headers) or (partition, offset)
    kept = [(name, value) for name, value in headers or () if name != REROUTED_FROM]
    return kept + [(REROUTED_FROM, f"{origin[0]}:{origin[1]}".encode())]


# --- control topic -------------------------------------------------------------------------------------
def reload_message(path: str | None = None) -> bytes:
    """The ``control`` record that asks every worker to reload (from ``path``, or its ``--model``)."""
    msg: dict = {"type": "reload"}
    if path:
        msg["path"] = str(path)
    return json.dumps(msg).encode()


MAX_CONTROL_BYTES = 64 * 1024  # a control record is a few dozen bytes; anything this large is not one


def reload_request(message: Any) -> str | None | bool:
    """Parse a ``control`` topic message. Returns the path to reload from (None = the ``--model``
    root) for ``{"type": "reload", "path"?: ...}``, or False for anything else (bytes are parsed with
    the bounded parser of stream_rec/boundedjson.py: no size or nesting can make this raise)."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        try:
            message = parse(message, max_bytes=MAX_CONTROL_BYTES)
        except JSONRejected:
            return False
    if not isinstance(message, dict) or message.get("type") != "reload":
        return False
    path = message.get("path")
    if isinstance(path, str) and "\x00" in path:
        return False  # no file system path holds a NUL
    return path if isinstance(path, str) and path else None
