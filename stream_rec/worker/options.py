"""The ``faust.App`` configuration of the worker (:func:`app_options`), each choice with its reason."""

from __future__ import annotations

from typing import Any

from ..io.kafka import faust_credentials
from ..settings import Settings
from .transport import SCHEME

# Records of one micro-batch for one partition go out as one Kafka record batch (worker/sends.py).
PRODUCER_MAX_BATCH_BYTES = 512 * 1024


def broker_urls(settings: Settings) -> str:
    """The brokers as URLs of the worker's transport (``streamrec://``, worker/transport.py)."""
    return ";".join(f"{SCHEME}://{h.strip()}" for h in settings.broker.split(",") if h.strip())


def app_options(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments of the worker (besides its id)."""
    return dict(
        broker=broker_urls(settings),
        store="rocksdb://",
        datadir=str(settings.table_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
        consumer_auto_offset_reset="earliest",
        # Faust's web server is off: it would serve /table/<name>/ (every user's state) and binds 0.0.0.0
        # by default. The worker's one listener is stream_rec/worker/http.py (Settings.metrics_host/port);
        # canonical_url is the URL of that listener, which the partition assignor tells every member of
        # the group, so a lookup can be redirected to the worker that owns the user's partition.
        web_enabled=False,
        canonical_url=settings.http_url,
        # no linger: a micro-batch's records are already batched (worker/sends.py, worker/table.py), and
        # while a request is in flight aiokafka batches what comes next anyway; lingering only adds its
        # wait to every recommendation (DEVELOPERS.md)
        producer_linger=0.0,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        # bounded requests: Faust's producer default (20 min) would let a lost produce request look like an
        # idle worker; a delivery that fails for this long crashes the agent (and nothing is committed after it)
        producer_request_timeout=settings.request_timeout_s,
        broker_request_timeout=max(settings.request_timeout_s, settings.session_timeout_s),
        **faust_credentials(settings),
    )
