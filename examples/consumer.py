#!/usr/bin/env python3
"""Read stream-rec's recommendations from your own service: a copyable aiokafka example.

    python examples/consumer.py --bootstrap localhost:9092                 # follow new recommendations
    python examples/consumer.py --bootstrap localhost:9092 --from-beginning --max 20

The ``recommendations`` topic (contract: topics/README.md) is keyed by user_id; each value is a JSON
object ``{"user_id", "items": [{"item_id", "score"}, ...], "model_version", "event_timestamp",
"produced_at", "latency_ms", "history"}``. Delivery is at-least-once: after a worker crash the same
event can yield a second, identical recommendation, so keep *the newest record per user* (e.g. a dict
or a compacted table keyed by user_id) rather than appending. Consumers in one ``--group`` share the
partitions; give each independent application its own group id.

Like producer.py, this file is self-contained on purpose (aiokafka + standard library): copy it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any


def parse_recommendation(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """The decoded record, or None for values that are not a recommendation (skipped, not fatal)."""
    if not value:
        return None
    try:
        rec = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(rec, dict) or "items" not in rec:
        return None
    if "user_id" not in rec and key is not None:
        rec["user_id"] = key.decode("utf-8", "replace")
    return rec


def format_recommendation(rec: dict[str, Any], top: int = 5) -> str:
    items = ", ".join(f"{i.get('item_id')} ({i.get('score', 0):.3f})" for i in rec.get("items", [])[:top])
    latency = rec.get("latency_ms")
    suffix = f"  [{latency:.1f} ms in worker]" if isinstance(latency, (int, float)) else ""
    return f"{rec.get('user_id')}: {items}{suffix}"


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


async def consume(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                                auto_offset_reset="earliest" if args.from_beginning else "latest",
                                enable_auto_commit=True, **security_kwargs(args))
    await consumer.start()
    latest: dict[str, dict[str, Any]] = {}  # newest recommendation per user: what a service would serve
    seen = 0
    loop = asyncio.get_running_loop()
    last_record_at = loop.time()  # --idle-exit-s counts from here: the start, then the newest record
    try:
        while args.max is None or seen < args.max:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            if batch:
                last_record_at = loop.time()
            elif args.idle_exit_s is not None and loop.time() - last_record_at >= args.idle_exit_s:
                break
            for msg in (m for records in batch.values() for m in records):
                rec = parse_recommendation(msg.key, msg.value)
                if rec is None:
                    continue
                latest[rec["user_id"]] = rec
                seen += 1
                print(json.dumps(rec) if args.json else format_recommendation(rec, args.top), flush=True)
                if args.max is not None and seen >= args.max:
                    break
    finally:
        await consumer.stop()
    print(f"{seen} recommendations for {len(latest)} users", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Subscribe to stream-rec's recommendations topic and print them.")
    p.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    p.add_argument("--topic", default="recommendations", help="recommendations topic, including any prefix")
    p.add_argument("--group", default="example-recommendation-reader",
                   help="consumer group id (consumers in one group share the partitions)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the oldest retained record when the group has no committed offset")
    p.add_argument("--max", type=int, default=None, help="stop after this many recommendations")
    p.add_argument("--idle-exit-s", type=float, default=None, help="stop once no record has arrived for this many seconds")
    p.add_argument("--top", type=int, default=5, help="items shown per recommendation")
    p.add_argument("--json", action="store_true", help="print each record as one JSON line")
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
    try:
        return asyncio.run(consume(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
