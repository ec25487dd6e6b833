#!/usr/bin/env python3
"""Publish interaction events to stream-rec from your own service: a copyable aiokafka example.

    python examples/producer.py --bootstrap localhost:9092 --count 200
    python examples/producer.py --bootstrap localhost:9092 --catalog examples/sample-catalog.jsonl --count 200

The three rules of the ``events`` topic (contract: topics/README.md, schema: topics/events.schema.json):

1. **Key = user_id** (UTF-8). Kafka partitions by key, so all events of a user land on one partition, in
   order, on the worker that holds that user's state. A record whose key is not its user_id is dead-
   lettered (``key_mismatch``). The partition must be the one Kafka's default partitioner picks
   (murmur2, as here with aiokafka, the Java client and Faust). librdkafka clients (``confluent-kafka``,
   and the Go/.NET/Node clients built on it) default to CRC32: configure them with
   ``"partitioner": "murmur2_random"``. The worker re-routes events that land on another partition
   (``stream_rec_events_rerouted_total``), at the cost of a second hop and of their order relative to
   the user's other events.
2. **Value = one JSON object** with ``user_id``, ``item_id``, ``event_type`` (view, click, rate,
   purchase, add_to_cart, like, share; dislike and skip as negative feedback) and ``timestamp`` (epoch seconds; milliseconds are accepted).
   ``value`` (number) and ``context`` (object, optional ``text``) are optional.
3. **Items must be in the catalog** (the compacted ``catalog`` topic, key = item_id) before their
   events arrive, or the events go to ``events-dlq`` as ``unknown_item``. ``--catalog`` publishes a
   JSON-lines catalog first.

Producer settings: ``acks="all"`` + idempotence so that retries neither lose, duplicate nor reorder a
user's events (pass ``--no-idempotence`` for brokers without idempotent producers, such as the embedded
dev broker of ``stream-rec demo``; aiokafka still keeps one request in flight per partition, so order
holds, but a retried send may then be written twice). Self-contained on purpose, so it can be copied: aiokafka and the standard library only
(jsonschema, when installed, checks each event against the schema before sending).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
import time
from pathlib import Path
from typing import Any, Iterable

# the enum of topics/events.schema.json; dislike and skip are negative feedback (pushed down, not learned as views)
EVENT_TYPES = ("view", "click", "rate", "purchase", "add_to_cart", "like", "share", "dislike", "skip")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "topics" / "events.schema.json"


def make_event(user_id: str, item_id: str, event_type: str = "view", timestamp: float | None = None,
               value: float | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """One event record as the ``events`` topic expects it (``timestamp`` defaults to now)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    event: dict[str, Any] = {"user_id": str(user_id), "item_id": str(item_id), "event_type": event_type,
                             "timestamp": round(time.time() if timestamp is None else timestamp, 3)}
    if value is not None:
        event["value"] = value
    if context:
        event["context"] = context
    return event


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) bytes: the key is the user_id, so a user's events stay on one partition, in order."""
    return str(event["user_id"]).encode("utf-8"), json.dumps(event, separators=(",", ":")).encode("utf-8")


def encode_item(item: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) bytes of a catalog record: key = item_id (the topic is compacted by it)."""
    if not item.get("item_id"):
        raise ValueError(f"catalog record without item_id: {item!r}")
    return str(item["item_id"]).encode("utf-8"), json.dumps(item, separators=(",", ":")).encode("utf-8")


def random_events(item_ids: list[str], count: int, users: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` view events of ``users`` users over ``item_ids``, timestamped now (for a quick try)."""
    rng = random.Random(seed)
    now = time.time()
    return [make_event(f"user-{rng.randrange(users):04d}", rng.choice(item_ids), "view", now + i * 0.001)
            for i in range(count)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{path}:{n}: not JSON: {exc}")
    return records


def schema_validator():
    """A function raising on events that break topics/events.schema.json (None if unavailable)."""
    try:
        import jsonschema
    except ImportError:
        return None
    if not SCHEMA_PATH.is_file():
        return None
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    return validator.validate


def security_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """aiokafka arguments for SASL and/or TLS (PLAINTEXT: none)."""
    kw: dict[str, Any] = {}
    protocol = args.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return kw
    kw["security_protocol"] = protocol
    if "SSL" in protocol:
        ctx = ssl.create_default_context(cafile=args.ssl_cafile)
        if args.ssl_certfile:
            ctx.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        kw["ssl_context"] = ctx
    if protocol.startswith("SASL"):
        kw.update(sasl_mechanism=args.sasl_mechanism, sasl_plain_username=args.sasl_username,
                  sasl_plain_password=args.sasl_password)
    return kw


async def publish(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], idempotence: bool = True,
                  **client: Any) -> int:
    """Send (key, value) records and wait until the broker acknowledged every one of them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotence,
                                linger_ms=5, **client)
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*pending)
        return len(pending)
    finally:
        await producer.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Publish events (key = user_id, JSON value) to the stream-rec events topic.")
    p.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    p.add_argument("--topic", default="events", help="events topic, including any prefix (default: events)")
    p.add_argument("--catalog-topic", default="catalog", help="catalog topic, including any prefix (default: catalog)")
    p.add_argument("--catalog", type=Path, help="JSON-lines catalog ({item_id, title, text, attributes}) to "
                   "publish before the events; its item ids are also the ones random events use")
    p.add_argument("--events", type=Path, help="JSON-lines events file to publish instead of random events")
    p.add_argument("--count", type=int, default=100, help="number of random events (without --events)")
    p.add_argument("--users", type=int, default=10, help="number of distinct random users (without --events)")
    p.add_argument("--items", default="space-00,space-01,space-02,space-03",
                   help="comma-separated item ids for random events when no --catalog is given")
    p.add_argument("--seed", type=int, default=0, help="random seed of the random events")
    p.add_argument("--no-idempotence", dest="idempotence", action="store_false",
                   help="plain acks=all producer, for brokers without idempotent producers (the embedded dev broker)")
    p.add_argument("--security-protocol", default="PLAINTEXT",
                   choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], help="Kafka security protocol")
    p.add_argument("--sasl-mechanism", default="PLAIN", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                   help="SASL mechanism (SASL_* protocols)")
    p.add_argument("--sasl-username", default="", help="SASL user name")
    p.add_argument("--sasl-password", default="", help="SASL password")
    p.add_argument("--ssl-cafile", default=None, help="CA bundle that signed the brokers' certificates")
    p.add_argument("--ssl-certfile", default=None, help="client certificate (mutual TLS)")
    p.add_argument("--ssl-keyfile", default=None, help="client private key (mutual TLS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = security_kwargs(args)
    catalog = read_jsonl(args.catalog) if args.catalog else []
    if args.events:
        events = read_jsonl(args.events)
    else:
        item_ids = [str(i["item_id"]) for i in catalog] or [s for s in args.items.split(",") if s]
        events = random_events(item_ids, args.count, args.users, args.seed)
    validate = schema_validator()
    if validate:
        for n, event in enumerate(events, 1):
            try:
                validate(event)
            except Exception as exc:  # jsonschema.ValidationError
                print(f"event {n} breaks {SCHEMA_PATH.name}: {exc}", file=sys.stderr)
                return 1
    if catalog:
        sent = asyncio.run(publish(args.bootstrap, args.catalog_topic, map(encode_item, catalog), args.idempotence,
                                   **client))
        print(f"published {sent} catalog records to {args.catalog_topic}")
    sent = asyncio.run(publish(args.bootstrap, args.topic, map(encode_event, events), args.idempotence, **client))
    print(f"published {sent} events to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
