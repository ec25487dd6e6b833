"""`stream-rec worker`: the Faust stream processor (events -> state -> recommendations).

Consume `events`, keep per-user state in RocksDB tables, publish `recommendations` (bad input to
`events-dlq`). One HTTP listener (--metrics-host/--metrics-port) serves /metrics, /healthz, /readyz and
GET /recommendations/USER (stream_rec/worker/http.py). SIGTERM, SIGHUP and Ctrl-C stop it cleanly:
offsets committed, producer flushed, tables closed, the group left.
"""

from __future__ import annotations

import argparse

from ..logs import FORMATS, LEVELS
from ._common import add_broker_flags, add_command, add_setting, existing_path, settings_from_args

SUMMARY = "run the stream processor (Faust worker)"


def register(sub) -> None:
    p = add_command(sub, __name__, SUMMARY, __doc__)
    add_broker_flags(p)
    add_setting(p, "data_dir", "RocksDB tables live in DIR/<app-id>/; keep it to keep state across restarts",
                metavar="DIR")
    add_setting(p, "model", "trained model directory, or a directory of them (the newest is served, and "
                            "hot-reloaded); empty = an UNTRAINED model of the same architecture", metavar="DIR")
    p.add_argument("--items-file", metavar="FILE", type=existing_path,
                   help="catalog loaded at start: JSONL ({item_id, title, text?, attributes?} per line) or CSV "
                        "with an item_id column; the `catalog` topic adds to it live")
    add_setting(p, "metrics_port", "port of the HTTP listener: /metrics /healthz /readyz /recommendations "
                                   "(0 = none)", metavar="N")
    add_setting(p, "metrics_host", "interface of the HTTP listener (0.0.0.0 = every interface)", metavar="HOST")
    add_setting(p, "advertised_url", "URL other workers redirect lookups of this worker's users to "
                                     "(empty = http://METRICS_HOST:METRICS_PORT)", metavar="URL")
    add_setting(p, "batch_max_events", "micro-batch size limit", metavar="N")
    add_setting(p, "batch_max_wait_ms", "longest wait of a micro-batch's oldest event before it closes (a backlog "
                                        "fills batches instead)", metavar="MS")
    add_setting(p, "top_k", "items per recommendation", metavar="K")
    add_setting(p, "mmr_lambda", "diversity re-rank: 1.0 = off (pure relevance), 0.6 = suggested trade-off",
                metavar="L")
    add_setting(p, "exposure_cap", "demote items already shown N times in the last STREAM_REC_EXPOSURE_WINDOW "
                                   "lists (0 = off)", metavar="N")
    add_setting(p, "drift_finetune", "on a drift alarm of the online quality monitor, fine-tune on recent events "
                                     "and write a new model version into --model (a folder of model folders)")
    add_setting(p, "log_level", "log level", choices=LEVELS)
    add_setting(p, "log_format", "log lines as text, or as one JSON object each (time, level, logger, message)",
                choices=FORMATS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..io.kafka import ensure_topics

    settings = settings_from_args(args)
    asyncio.run(ensure_topics(settings))  # fails first, and fast, when no broker answers

    from ..io.data import read_catalog
    from ..worker.run import make_worker

    items = read_catalog(args.items_file) if args.items_file else []
    worker = make_worker(settings, items, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
