"""`stream-rec worker`: the Faust stream processor (events -> state -> recommendations)."""

from __future__ import annotations

import argparse
import logging

from ._common import add_broker_flags, settings_from_args

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("worker", help="run the stream processor (Faust worker)",
                       description="Consume `events`, keep per-user state in RocksDB tables, publish "
                                   "`recommendations` (bad input to `events-dlq`). Every flag also has an "
                                   "env var STREAM_REC_<NAME>; flags win.")
    add_broker_flags(p)
    p.add_argument("--data-dir", metavar="DIR", help="RocksDB tables live in DIR/<app-id>/ (env STREAM_REC_DATA_DIR, "
                                                     "default var/worker); keep it to keep state across restarts")
    p.add_argument("--model", metavar="DIR", help="trained model directory; without it an UNTRAINED model of the "
                                                  "same architecture is served (env STREAM_REC_MODEL)")
    p.add_argument("--items", metavar="FILE", help="catalog JSONL ({item_id, title, text?, attributes?} per line) "
                                                   "or CSV with an item_id column, loaded at start; the `catalog` "
                                                   "topic adds to it live")
    p.add_argument("--app-id", metavar="ID", help="consumer group id and prefix of changelog topics "
                                                  "(env STREAM_REC_APP_ID, default stream-rec)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus /metrics port (env "
                                                                  "STREAM_REC_METRICS_PORT, default 9108; 0 = off)")
    p.add_argument("--metrics-host", metavar="HOST", help="interface of /metrics (default 127.0.0.1)")
    p.add_argument("--web-port", type=int, metavar="N", help="Faust's web server port (default 6066)")
    p.add_argument("--batch-max-events", type=int, metavar="N", help="micro-batch size limit (default 256)")
    p.add_argument("--batch-max-wait-ms", type=int, metavar="MS", help="micro-batch wait limit (default 5)")
    p.add_argument("--top-k", type=int, metavar="K", help="items per recommendation (default 10)")
    p.add_argument("--mmr-lambda", type=float, metavar="L", help="diversity re-rank: 1.0 = off (pure relevance), "
                                                                 "0.6 = suggested trade-off (env STREAM_REC_MMR_LAMBDA)")
    p.add_argument("--exposure-cap", type=int, metavar="N", help="demote items already shown N times in the last "
                                                                 "STREAM_REC_EXPOSURE_WINDOW lists (0 = off)")
    p.add_argument("--drift-finetune", action="store_true", default=None,
                   help="on a drift alarm of the online quality monitor, fine-tune on recent events and write a new "
                        "model version into --model (must be a folder of model folders); off by default")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                   help="worker log level (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from .. import metrics
    from ..io.data import read_catalog
    from ..io.kafka import ensure_topics
    from ..worker.run import make_worker

    settings = settings_from_args(
        args, data_dir=args.data_dir, model=args.model, app_id=args.app_id, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, web_port=args.web_port, batch_max_events=args.batch_max_events,
        batch_max_wait_ms=args.batch_max_wait_ms, top_k=args.top_k,
        mmr_lambda=args.mmr_lambda, exposure_cap=args.exposure_cap, drift_finetune=args.drift_finetune)
    items = read_catalog(args.items) if args.items else []
    asyncio.run(ensure_topics(settings))
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    worker = make_worker(settings, items, loglevel=args.loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
