"""What the worker's agents and tasks share (:class:`WorkerServices`), and the users' states: the read
cache, :func:`read_user_state` -- the one way anything in the worker reads a user's state -- and
:func:`stage_user_states`, the one way the batch handler writes them."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Hashable, Sequence

from .. import metrics
from ..learning.finetune import drift_finetuner
from ..pipeline import BatchResult, Incoming, PipelineConfig
from ..recsys.arms import ArmDecodeError, decode_arm
from ..recsys.enricher import Enricher
from ..recsys.exploring import ARM_PREFIX, Explorer, arm_table_key
from ..settings import Settings
from ..validation import Invalid
from .catalog import CatalogVectors, LiveCatalog
from .follow import follow_records
from .listener import StreamGate
from .live import UiState
from .models import LiveModel
from .sends import InFlightBatches
from .trace import Tracer
from .watchdog import StallWatchdog

log = logging.getLogger(__name__)


class WorkerServices:
    """The services of one worker: the live model (hot-reloadable), its catalog, the pipeline config,
    the enricher, the state cache, the stall watchdog, and what the batch handler carries from one batch
    to the next."""

    def __init__(self, settings: Settings, model=None):
        self.settings = settings
        # the served model lives in a LiveModel so it can be hot-reloaded (stream_rec/worker/models.py)
        self.live = LiveModel(model, settings.model or None, settings.device, on_swap=self._on_swap)
        if settings.model and model is not None:
            self.live.changed_on_disk()  # the hot-reload watcher's baseline: what was just loaded
        self.catalog_vectors = CatalogVectors(settings)
        # what the pages under /ui/ show beyond the state (worker/live.py); None = pages off, nothing recorded
        self.ui = UiState() if settings.ui and settings.metrics_port else None
        self.catalog = LiveCatalog(settings, self.live, self.catalog_vectors, on_new_model=self.announce_model,
                                   on_records=self.ui.items.add if self.ui is not None else None)
        self.config = PipelineConfig.from_settings(settings)
        # negatives, re-ranking, reasons, interests, online HR@k + drift (stream_rec/recsys/enricher.py); it
        # rebuilds its item vectors itself when the model is swapped or the catalog grows
        self.enricher = Enricher.from_settings(settings)
        # the exploration bandit (recsys/exploring.py): its arm records live in the state table (batch.py)
        self.explorer = Explorer(self.config.explore) if self.config.explore is not None else None
        self.finetuner = (drift_finetuner(settings, lambda: list(self.enricher.recent or ()))
                          if settings.drift_finetune else None)
        self.users_seen: set[str] = set()
        self.in_flight = InFlightBatches(settings.max_in_flight_batches)  # unacknowledged batches (worker/batch.py)
        # set once a record was not delivered: no offset is committed after it (transport.LowLatencyConsumer)
        self.delivery_failure: BaseException | None = None
        self.state_cache = StateCache(settings.state_cache_users)
        # readiness (worker/http.py): the group assigned partitions once; the stall watchdog, fed by the batch
        # handler (batch_handled) and the lag timer (check)
        self.joined = False
        self.watchdog = StallWatchdog(settings.stall_warn_s, settings.stall_exit_s)
        self.tracer = Tracer(settings.trace_file) if settings.trace_file else None  # the latency microscope
        # busy while the batch handler runs: the HTTP listener's thread waits before its next request or
        # lookup batch meanwhile (worker/listener.py)
        self.gate = StreamGate()
        self.announce_model()

    def forget_partitions(self, table) -> None:
        """At every rebalance: the state cache and the states not yet in the local store (of ``table``)
        may hold keys of partitions this worker no longer owns; Faust's recovery replays each changelog
        from the offset that reached the store."""
        self.state_cache.clear()
        table.forget_unflushed()
        if self.explorer is not None:  # arm records of partitions this worker may no longer own
            self.explorer.forget()
        if self.ui is not None:  # live pages: their user may now be answered by another worker
            self.ui.watchers.close_all("moved")

    def note_delivery(self, future: asyncio.Future) -> None:
        """Done-callback of every delivery future: remember the first failure (then nothing is committed,
        and the agent stops when it awaits the future)."""
        if not future.cancelled() and future.exception() is not None and self.delivery_failure is None:
            self.delivery_failure = future.exception()

    @property
    def model(self):
        """The model serving right now (a micro-batch reads it once, so it never mixes versions)."""
        return self.live.current

    def _on_swap(self, model) -> None:
        self.announce_model()
        metrics.MODEL_RELOADS.inc()

    def announce_model(self, model=None) -> None:
        """``stream_rec_model_info``: the version served and whether it is trained."""
        if self.model is not None:
            metrics.MODEL_INFO.clear()
            metrics.MODEL_INFO.labels(version=self.model.version, trained=str(self.model.trained).lower()).set(1)


class StateCache:
    """Write-through LRU copy of recently written user states (:func:`read_user_state` keys it by (state
    key, partition); values are state bytes).

    Correct because a worker is the only writer of the keys of the partitions it owns, and every write
    goes through ``put`` after the table write; ``clear`` runs on every rebalance (partitions revoked or
    assigned), so after one, reads fall back to the table that Faust recovers from the changelog."""

    def __init__(self, max_users: int):
        self.max_users = max_users
        self._data: "OrderedDict[Hashable, bytes]" = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def peek(self, key: Hashable) -> bytes | None:
        """``get`` without refreshing the key's recency: safe from another thread than the stream's (one
        C-level dict read; ``move_to_end`` could meet a key the stream just evicted)."""
        return self._data.get(key)

    def put(self, key: Hashable, value: bytes) -> None:
        if self.max_users <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_users:
            self._data.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def read_user_state(cache: StateCache, table, key: bytes, partition: int, *, elsewhere: bool = False) -> bytes | None:
    """A user's stored state on ``partition`` (None: none): the state cache, else the newest value staged
    or stored there (``table``: the worker's ``BatchedChangelogTable``, worker/table.py). The one read of a
    user's state: the batch path (worker/batch.py), the lookup and the pages (worker/http.py, worker/ui.py)
    all call it, so they see the same state -- an erasure included, from the moment its batch staged the
    tombstone (:func:`stage_user_states`).

    ``elsewhere``: the caller runs on another thread than the stream's event loop (the HTTP listener's,
    worker/listener.py). Then the read changes nothing the stream owns: the cache is only peeked, and a
    partition whose local store is not open raises ``table.StoreNotOpen`` (a rebalance moved it) instead
    of opening it. Every step is one read of a dict or of RocksDB, each atomic for the other thread; the
    stream stages a state before it caches it and writes the store before it forgets the staged value,
    so the read finds the newest state in one of the three places."""
    cached = cache.peek((key, partition)) if elsewhere else cache.get((key, partition))
    if cached is not None:
        return cached
    return table.stored(key, partition, open_store=not elsewhere)


def stage_user_states(cache: StateCache, table, result: BatchResult, batch: Sequence[Incoming]) -> None:
    """A micro-batch's new states and erasures, staged for the partition of the user's event that caused
    them (``table``: in memory now, in the local store once their changelog records are delivered); the
    state cache follows. An erasure with nothing after it is a tombstone; an erasure that arrived on
    another partition than the user's also deletes what a producer with another partitioner left there.
    The batch's exploration arm records go first (recsys/exploring.py says why)."""
    for (partition, item_id), arm in result.arms.items():
        table.stage(arm_table_key(partition, item_id), arm, partition)
    for user_id, index in result.deleted.items():
        key, partition = user_id.encode(), batch[index].partition
        cache.discard((key, partition))
        if user_id not in result.states:
            table.stage(key, None, partition)
    for user_id, state in result.states.items():
        key, partition = user_id.encode(), batch[result.last_index[user_id]].partition
        table.stage(key, state, partition)
        cache.put((key, partition), state)
    for user_id, index in result.erased_elsewhere:
        key, partition = user_id.encode(), batch[index].partition
        if read_user_state(cache, table, key, partition) is not None:
            table.stage(key, None, partition)
            cache.discard((key, partition))


def parse_arm_record(message):
    """An ``explore-arms`` record -> ((partition, item id), ArmStats), None (a tombstone) or Invalid."""
    if message.value is None:
        return None
    try:
        key = (message.key or b"").decode("utf-8")
        if not key.startswith(ARM_PREFIX):
            return Invalid("bad_key", "not an arm key")
        partition, item_id = key[len(ARM_PREFIX):].split(":", 1)
        return (int(partition), item_id), decode_arm(message.value)
    except (UnicodeDecodeError, ValueError, ArmDecodeError) as exc:  # ArmDecodeError is a ValueError
        return Invalid("bad_arm", str(exc)[:200])


async def arms_loop(explorer: Explorer, settings: Settings, poll_ms: int = 500) -> None:
    """Follow the ``explore-arms`` topic (every worker, whole topic, group-less): each partition's arm
    records, for the bandit's view of the arms of partitions this worker does not process."""
    async def apply(records) -> None:
        for _, (key, arm) in records:
            explorer.put_remote(key, arm)

    await follow_records(settings, settings.topic(settings.explore_arms_topic), role="explore-arms",
                         parse=parse_arm_record, apply=apply, poll_ms=poll_ms, max_records=5000)
