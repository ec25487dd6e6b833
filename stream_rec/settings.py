"""All stream-rec settings in one place.

Every field can be set from an environment variable ``STREAM_REC_<FIELD>`` (upper case), and CLI flags
override the environment (``Settings.from_env(**overrides)``). Defaults work for the embedded demo on
one machine: localhost broker, localhost-only listeners, small batches with a short max wait.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "STREAM_REC_"
DEFAULT_APP_ID = "stream-rec"
MAX_EVENTS_EPOCH = 0x7FFF  # the state keeps (epoch << 16 | partition) in a signed 32-bit field


def default_cache_dir() -> Path:
    """Where derived artefacts (extracted encoder, embedding cache, demo model) live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stream-rec"


class SettingsError(ValueError):
    """A ``STREAM_REC_*`` variable or flag value that does not fit its setting."""


@dataclass(frozen=True)
class Settings:
    # --- Kafka -------------------------------------------------------------------------------------
    broker: str = "127.0.0.1:9092"  # bootstrap servers, comma separated HOST:PORT
    app_id: str = DEFAULT_APP_ID  # consumer group id and prefix of changelog topics
    # prepended to the name of every topic stream-rec names (multi-tenant clusters); the consumer group and
    # Faust's own topics (the state changelog, the assignor's) are named from app_id, so a prefix needs an
    # app id of its own (io.topics.topic_specs refuses the default one)
    topic_prefix: str = ""
    events_topic: str = "events"
    catalog_topic: str = "catalog"
    recommendations_topic: str = "recommendations"
    dlq_topic: str = "events-dlq"
    control_topic: str = "control"
    explore_arms_topic: str = "explore-arms"  # the exploration's arm records, for every worker's view
    partitions: int = 4  # partitions of events/recommendations/state tables (co-partitioned)
    # Each user's state remembers the position of the last event it applied, (events_epoch, partition,
    # offset), and skips an event at or before it as a redelivery. A new events topic (recreated, migrated,
    # the demo's hourly roll) starts its offsets at 0 again: raise events_epoch with it, or every user's
    # events are skipped as redeliveries until the new offsets pass the old ones. 0..32767.
    events_epoch: int = 0
    # replicas of every topic stream-rec creates, Faust's changelog included (stream_rec.io.topics.TOPIC_LAYOUT);
    # 1 suits a one-broker dev cluster, production wants 3. Existing topics are not changed.
    replication_factor: int = 1
    min_insync_replicas: int = 0  # min.insync.replicas of those topics (0 = the broker's default)
    # faust-streaming hard-codes 1500 ms; on a quiet topic that is the event->rec latency floor.
    fetch_max_wait_ms: int = 10
    session_timeout_s: float = 6.0  # Faust waits ~half of this to join a group
    # every Kafka request of every client the project builds (the worker's Faust producer and consumer,
    # the catalog/control followers, the CLI tools) fails after this long instead of hanging: Faust's own
    # producer default is 20 minutes, during which a lost produce request looks like an idle worker
    request_timeout_s: float = 30.0
    # a command (and a worker at start) gives up with one `error:` line when no broker answers this long
    connect_timeout_s: float = 15.0
    # Security: PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # never in logs (repr is what gets logged)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    # --- Worker ------------------------------------------------------------------------------------
    data_dir: Path = Path("var/worker")  # RocksDB tables live under data_dir/<app_id>/
    model: str = ""  # model directory, or a directory of model directories (newest is used)
    # the worker's one HTTP listener: /metrics, /healthz, /readyz, /recommendations/{user_id}
    # (stream_rec/worker/http.py); 0 = no listener
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    # the URL other workers redirect a user's lookup to when this worker owns the user's partition (Faust's
    # canonical_url, shared with the group at every rebalance); empty = http://METRICS_HOST:METRICS_PORT, or
    # the host's name when METRICS_HOST is 0.0.0.0 (Kubernetes: the pod's DNS name, deploy/k8s)
    advertised_url: str = ""
    # the worker's pages under /ui/ on that listener (stream_rec/worker/ui.py; read-only): a user's list changing
    # live, an item, the system's recent figures. False = no pages, and nothing is kept for them
    ui: bool = True
    # access to the listener (stream_rec/worker/access.py): with a token, every route but /metrics, /healthz and
    # /readyz needs "Authorization: Bearer <token>" (never logged); token_required refuses to start without one
    # (the Kubernetes manifests set it, the token comes from their Secret)
    http_token: str = field(default="", repr=False)
    http_token_required: bool = False
    # a connection that has not sent a whole request (or stays idle after one) this long is closed, and at most
    # this many connections are open at once (more are closed on arrival): half-open clients cannot pile up
    http_idle_timeout_s: float = 10.0
    http_max_connections: int = 256
    # lookups waiting to be ranked (worker/lookups.py, in batches of 16); more are answered 503 at once
    lookup_max_pending: int = 1024
    # at most this share of the time goes to ranking and encoding lookups (on the HTTP listener's own thread,
    # which shares the process's CPU and GIL with the stream): a crowd of lookups waits for its answers
    # instead of slowing the stream (benchmarks/lookup_load.py)
    lookup_loop_share: float = 0.2
    # stall watchdog (stream_rec/worker/watchdog.py): no micro-batch for stall_warn_s while events wait -> a WARNING
    # saying what the worker waits on, stream_rec_ready 0; after stall_exit_s the worker exits with status
    # 75 so that its supervisor restarts it (0 = never exit)
    stall_warn_s: float = 30.0
    stall_exit_s: float = 300.0
    batch_max_events: int = 256  # micro-batch: at most this many events ...
    batch_max_wait_ms: int = 3  # ... and its oldest event waits at most this long, unless a backlog waits
    # the events agent fills a micro-batch adaptively (stream_rec.worker.intake.take_batches, batching.BatchPolicy):
    # it closes when full, 1 ms after the intake pauses or batch_max_wait_ms after its oldest event was taken
    # -- unless a whole batch of events waits (a backlog: then it fills up) -- and at the latest this long
    # after it started filling
    batch_fill_max_ms: int = 50
    # micro-batches whose records (recommendations, changelog) may be unacknowledged by the broker while the
    # stream goes on (stream_rec.worker.sends.InFlightBatches); 1 = wait for each batch's acks one batch later
    max_in_flight_batches: int = 4
    encoder_batch_max: int = 64  # text encoder micro-batch (slower, sized separately)
    # states of this many recently active users are kept in worker memory as well as in the table: a
    # read hits the dict instead of RocksDB through Faust's table get (DEVELOPERS.md: the profile).
    # Emptied at every rebalance, so it never outlives the worker's ownership. 0 = off.
    state_cache_users: int = 100_000
    # RocksDB memory per table partition (Faust's defaults: 3 x 64 MB write buffers and a 2 GiB block cache
    # for *each* partition, so the worker's RSS grows for hundreds of MB before it levels off, measured by
    # benchmarks/soak.py): write buffers of this size (two of them), and this block cache
    rocksdb_write_buffer_mb: int = 16
    rocksdb_block_cache_mb: int = 64
    top_k: int = 10
    history_len: int = 50  # rolling item history kept per user
    max_event_bytes: int = 16384  # larger events go to the DLQ as oversize
    # a DLQ record keeps at most this many bytes of the original value (flagged original_truncated), so it
    # always fits the worker producer's request and batch limits (1 MB, 512 KiB) after base64 (x4/3)
    dlq_max_original_bytes: int = 128 * 1024
    pseudonymize_key: str = field(default="", repr=False)  # when set, user ids become HMAC-SHA256(key, id) on ingest (stream_rec.privacy)
    device: str = "auto"  # auto | cpu | cuda
    # compute threads in the worker (torch intra-op and numpy's BLAS): the GRU step on a micro-batch is
    # tiny, and extra threads only contend with Faust's event loop and the consumer thread for the same
    # cores (DEVELOPERS.md). 0 = the libraries' defaults.
    torch_threads: int = 1
    context_alpha: float = 1.0  # weight of an event's context.text (a query) in its list; 0 = ignore context
    model_poll_s: float = 3.0  # hot reload: check the --model directory for a newer model this often (0 = never)
    # --- Smarter recommendations in the worker (stream_rec/recsys/, docs/SMARTER.md) ---------------------
    # MMR diversity re-rank: 1 = off (pure relevance), lower = more diverse (the trade-off against NDCG is
    # measured in docs/SMARTER.md); an event's context.mmr_lambda overrides it for the list it produces
    mmr_lambda: float = 1.0
    mmr_candidates: int = 50  # top candidates the MMR re-rank chooses from
    exposure_cap: int = 0  # demote items recommended more than this often in the last exposure_window lists (0 = off)
    exposure_window: int = 5000  # lists counted for the exposure cap (this worker's traffic)
    explain: bool = True  # give every recommended item a short `reason` ("because you watched X")
    interests_top: int = 3  # interest labels in each rec record's `interests` (0 = leave the field out)
    negative_rating_threshold: float = 2.0  # a `rate` event with value <= this is negative feedback
    negative_radius: float = 0.8  # items within this cosine of a disliked item are pushed down too
    negative_strength: float = 1.0  # push-down of a disliked item, in std devs of the user's scores
    negatives_per_user: int = 20  # recent negative items kept in each user's state (newest last)
    # Freshness (stream_rec/recsys/freshness.py): up to fresh_slots items that joined the catalogue after
    # training less than fresh_max_age_s ago enter a list (0 slots = off), each only while relevant enough:
    # fresh_by=content: text cosine to the user's recent items >= fresh_min_similarity; fresh_by=model: the
    # model gives it >= fresh_min_ratio times the probability of the item it displaces. Counted in
    # stream_rec_fresh_slots_total; new-item hits and the warm-item NDCG cost: benchmarks/quality.py.
    # fresh_slots -1: the policy `stream-rec train` chose on validation and wrote into the model directory
    # (recsys/freshchoice.py; none for a model without one); >= 0: these settings, whatever the model says.
    fresh_slots: int = -1
    fresh_max_age_s: float = 7 * 86400.0
    fresh_by: str = "content"
    fresh_min_similarity: float = 0.8
    fresh_min_ratio: float = 0.2
    # Exploration (issue 21, stream_rec/recsys/explore.py, docs/EXPLORATION.md): a bandit learns which new
    # items users take and gives them up to explore_slots positions beyond the plain ranking (0 = off; on,
    # it replaces the freshness policy). An item is an arm while younger than explore_max_age_s; put in
    # while its expected hits >= explore_min_gain x the displaced item's (explore_by=content: and text cosine
    # >= explore_min_similarity); a hit is the user's next event on it within explore_window_s; a user's
    # impressions of an item she left untaken explore_max_declines times in a row stop counting.
    # On by default (2 slots): in the closed loop the bandit gets most of the oracle policy's new-item hits at
    # a small warm cost (docs/EXPLORATION.md, phase 3, has the figures and the command).
    explore_slots: int = 2
    explore_max_age_s: float = 7 * 86400.0
    explore_min_gain: float = 0.5
    explore_window_s: float = 86400.0
    explore_by: str = "model"
    explore_min_similarity: float = 0.5
    explore_max_declines: int = 8
    drift_delta: float = 0.002  # ADWIN confidence of the online HR@k drift monitor
    drift_finetune: bool = False  # on a drift alarm, fine-tune on recent events into --model (a dir of model dirs)
    drift_finetune_cooldown_s: float = 3600.0  # at most one drift fine-tune per this many seconds
    drift_recent_events: int = 50000  # recent events kept in memory for the drift fine-tune

    # the latency microscope (stream_rec/worker/trace.py, benchmarks/profile_worker.py): when set, the worker
    # records the legs of every micro-batch and what else ran on its loops and threads, and writes them to
    # this file (JSON lines) when it exits. Empty = off (nothing is installed)
    trace_file: str = ""

    # --- Logs --------------------------------------------------------------------------------------
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "text"  # text | json (one JSON object per line: time, level, logger, message)

    # --- Paths -------------------------------------------------------------------------------------
    cache_dir: Path = field(default_factory=default_cache_dir)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``STREAM_REC_*`` variables, then apply non-None ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: _coerce(_field(k), v) if isinstance(v, str) else v
                       for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if not 0 <= self.events_epoch <= MAX_EVENTS_EPOCH:
            raise SettingsError(f"setting {ENV_PREFIX}EVENTS_EPOCH={self.events_epoch}: expected 0..{MAX_EVENTS_EPOCH}")

    def to_env(self) -> dict[str, str]:
        """These settings as ``STREAM_REC_*`` variables (to start a worker subprocess with them)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def topic(self, name: str) -> str:
        """Full topic name for a logical name (``events``, ``recommendations`` ...)."""
        return self.topic_prefix + name

    @property
    def table_dir(self) -> Path:
        """RocksDB directory for this app id: the store path itself does not include the app id,
        so sharing one data dir between two app ids would mix their offsets."""
        return Path(self.data_dir) / self.app_id

    @property
    def http_url(self) -> str:
        """The URL of this worker's HTTP listener as others reach it: ``advertised_url``, else built from
        ``metrics_host``/``metrics_port`` (a wildcard bind address names no host: the machine's name then)."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = self.metrics_host
        if host in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        return f"http://{f'[{host}]' if ':' in host else host}:{self.metrics_port}"


def _field(name: str) -> dataclasses.Field:
    for f in fields(Settings):
        if f.name == name:
            return f
    raise SettingsError(f"unknown setting {name!r}")


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise SettingsError(f"setting {ENV_PREFIX}{f.name.upper()}={raw!r}: expected {kind}") from None
    return raw
