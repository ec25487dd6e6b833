"""The worker's live catalog: every worker holds the whole catalog (it scores every item), kept up to
date from the compacted ``catalog`` topic, and the text vectors of new items and of event queries.

* :class:`CatalogVectors` -- text vectors for the catalog records that need them (new items, and known
  items whose text changed; an unchanged known item keeps its trained vector), through the
  micro-batching :class:`~stream_rec.worker.encoding.EncodingQueue` (the catalog task awaits it; the
  event agent keeps running meanwhile); also the query vectors of a micro-batch (:func:`context_vectors`);
* :class:`LiveCatalog` -- applies catalog records to the served model (``Recommender.add_items``),
  creating the untrained model from the first records when there is none yet;
* :func:`catalog_loop` -- a task in every worker reads the ``catalog`` topic from the beginning with its
  own group-less consumer (a consumer group would give each worker only some partitions) and applies
  records in batches, each record validated and contained (worker/follow.py); ``--items-file FILE`` seeds the
  catalog at start (:func:`seed_catalog`).

Events for items not in the catalog yet go to the DLQ as ``unknown_item``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np

from .. import metrics
from ..io.data import catalog_text
from ..recsys.context import context_text_of
from ..validation import validate_catalog_record
from .encoding import EncodingQueue, encoder_function, metrics_hook
from .follow import follow_records

log = logging.getLogger(__name__)


def uses_text(model) -> bool:
    """The model scores items through text vectors (a hybrid or text-only model; not an ID-only one)."""
    return model is not None and bool(model.model.config.use_text) and model.model.config.text_dim > 0


class CatalogVectors:
    """Encode catalog records for the served model, lazily loading the LLM encoder on first need."""

    def __init__(self, settings, encode_batch=None):
        self.settings = settings
        self._encode_batch = encode_batch  # tests/bench may inject a cheap encoder
        self._queue: EncodingQueue | None = None
        self._lock = threading.Lock()  # warm-up thread vs. a first request
        self.encoder_id: str | None = None

    def load_encoder(self) -> None:
        """Load the encoder now, synchronously (at worker start, before the stream runs)."""
        self._ensure_queue()

    def _ensure_queue(self) -> EncodingQueue:
        with self._lock:
            return self._make_queue()

    def _make_queue(self) -> EncodingQueue:
        if self._queue is None:
            encode_batch = self._encode_batch
            if encode_batch is None:
                from ..model.encoder import shared_encoder

                encoder = shared_encoder(self.settings.cache_dir, self.settings.device)
                self.encoder_id = encoder.encoder_id
                encode_batch = encoder_function(encoder)
            self._queue = EncodingQueue(encode_batch, max_batch=self.settings.encoder_batch_max,
                                        max_wait_ms=self.settings.batch_max_wait_ms, on_batch=metrics_hook)
        return self._queue

    async def queue(self) -> EncodingQueue:
        """The encoding queue; the first call loads the encoder in a thread (the event loop keeps going)."""
        if self._queue is None:
            await asyncio.to_thread(self._ensure_queue)
        return self._queue

    async def warm_up(self, model) -> None:
        """Load the encoder at worker start (it takes seconds), so the first new catalog item or query
        does not wait for it. Nothing to do for an ID-only model."""
        if uses_text(model):
            t0 = time.perf_counter()
            try:
                await self.queue()
                log.info("text encoder ready for catalog items and queries (%.1f s)", time.perf_counter() - t0)
            except Exception as exc:  # the worker still serves; items then enter by id only
                log.error("could not load the text encoder: %s", exc)

    def needs_encoding(self, model, record: dict) -> bool:
        """New items, and known items whose text changed; not known items with their trained text."""
        row = model.row_of.get(record["item_id"])
        if row is None:
            return True
        texts = getattr(model, "item_texts", None)
        return texts is not None and texts[row - 1] != catalog_text(record)

    async def vectors_for(self, model, records: Sequence[dict]) -> tuple[list[dict], np.ndarray | None]:
        """(records to apply with vectors, their vectors) -- or (records, None) for an ID-only model."""
        if not uses_text(model):
            return list(records), None
        todo = [r for r in records if self.needs_encoding(model, r)]
        if not todo:
            return [], None
        if model.encoder_id and self.encoder_id and model.encoder_id != self.encoder_id:
            log.warning("model was trained with encoder %s, the worker has %s", model.encoder_id, self.encoder_id)
        vecs = await (await self.queue()).encode_many([catalog_text(r) for r in todo])
        return todo, vecs

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.close()


class LiveCatalog:
    """Applies catalog records to the served model of ``live`` (a :class:`~stream_rec.worker.models.LiveModel`).
    ``on_new_model(model)`` is called when the first records create the (untrained) model;
    ``on_records(records)`` with every batch of records applied (the pages' item index, worker/live.py)."""

    def __init__(self, settings, live, vectors: CatalogVectors, on_new_model: Callable | None = None,
                 on_records: Callable | None = None):
        self.settings = settings
        self.live = live
        self.vectors = vectors
        self.on_new_model = on_new_model
        self.on_records = on_records

    async def update_catalog(self, records: Sequence[dict], times: Sequence[float | None] = ()) -> int:
        """``apply_catalog`` after encoding the records' texts through the micro-batching encoder queue
        (new items, and known items whose text changed), so a new item is scored by its text vector.
        ``times``: each record's own time (its Kafka timestamp, seconds), see :func:`date_items`."""
        times = _times_by_item(records, times)
        records = _with_ids(records)
        model = self.live.current
        if model is not None and records:
            try:
                vector_records, vectors = await self.vectors.vectors_for(model, records)
            except Exception as exc:  # the encoder failing must not stop the catalog
                log.error("catalog: text encoding failed, items enter by id only: %s", exc)
                vector_records, vectors = [], None
            if vectors is not None:
                return self.apply_catalog(records, vector_records, vectors, times=times)
        return self.apply_catalog(records, times=times)

    def apply_catalog(self, records: Sequence[dict], vector_records: Sequence[dict] = (),
                      vectors: np.ndarray | None = None, times: dict[str, float | None] | None = None) -> int:
        """Add new items / update known ones; returns how many records were applied.
        ``vectors`` are the text vectors of ``vector_records`` (see ``update_catalog``); ``times``: item id
        -> its record's time (:func:`date_items`)."""
        records = _with_ids(records)
        if not records:
            return 0
        if self.on_records is not None:
            self.on_records(records)
        model = self.live.current
        if model is None:
            self.live.current = untrained_model(records, self.settings)
            if self.on_new_model is not None:
                self.on_new_model(self.live.current)
        else:
            if vectors is not None and len(vector_records):
                try:
                    model.add_items([r["item_id"] for r in vector_records], vectors,
                                    texts=[catalog_text(r) for r in vector_records])
                except ValueError as exc:  # the model was swapped for one with another encoder meanwhile
                    log.warning("catalog: %s; adding the items by id only", exc)
            new = [r for r in records if r["item_id"] not in model.row_of]
            if new:
                model.add_items([r["item_id"] for r in new])
            date_items(model, times or {})
        metrics.CATALOG_ITEMS.inc(len(records))
        return len(records)


def date_items(model, times: dict[str, float | None]) -> None:
    """An item that joined the catalogue after training counts as new (the freshness policy,
    ``Recommender.item_ages``) from its catalog record's own time, not from when this worker read it: the
    catalog topic is read again from the beginning at every start, and a restart must not make last
    week's items new again. ``times``: item id -> the record's time (None: unknown, read now). An item
    keeps the earliest time it was given (a re-published record does not make it newer), never later
    than now, and trained items stay trained."""
    now = time.time()
    for item_id, at in times.items():
        row = model.row_of.get(item_id)
        if row is not None and at is not None and np.isfinite(model.added_at[row]):
            model.added_at[row] = min(model.added_at[row], at, now)


def _times_by_item(records: Sequence[dict], times: Sequence[float | None]) -> dict[str, float | None]:
    """item id -> the earliest known time of its records (``times``: one per record, or none)."""
    out: dict[str, float | None] = {}
    for record, at in zip(records, times):
        if isinstance(record, dict) and record.get("item_id"):
            item_id, earlier = str(record["item_id"]), out.get(str(record["item_id"]))
            out[item_id] = at if earlier is None else earlier if at is None else min(at, earlier)
    return out


def _with_ids(records: Sequence[dict]) -> list[dict]:
    """The records that are dicts with an item id, the id made a string."""
    records = [r for r in records if isinstance(r, dict) and r.get("item_id")]
    for r in records:
        r["item_id"] = str(r["item_id"])
    return records


def untrained_model(items: Sequence[dict], settings):
    """The untrained (ID-only) model over ``items``, what the worker serves until it is given a model."""
    from ..model.recommender import Recommender

    model = Recommender.untrained([r["item_id"] for r in items], device=settings.device)
    log.warning("SERVING AN UNTRAINED MODEL (%s, %d items): recommendations are random until a trained "
                "model is given with --model", model.version, model.n_items)
    return model


def seed_catalog(model, records: Sequence[dict], settings) -> list[str]:
    """Add the ``--items-file`` records the model does not know, at start (synchronously: nothing is being
    served yet). A text model encodes them with the shared encoder (and its disk cache)."""
    if uses_text(model):
        from ..model.encoder import shared_encoder

        return model.add_catalog({str(r["item_id"]): catalog_text(r) for r in records},
                                 lambda: shared_encoder(settings.cache_dir, settings.device))
    new = [str(r["item_id"]) for r in records if str(r["item_id"]) not in model.row_of]
    if new:
        model.add_items(new)
    return new


async def catalog_loop(catalog: LiveCatalog, settings, poll_ms: int = 500) -> None:
    """Read the whole catalog topic (group-less, from the beginning) and keep following it. Each record
    is validated (``validation.validate_catalog_record``: bounded parse, an ``item_id``); one that is
    not an item, or that the model cannot take, is skipped (logged and counted, ``worker/follow.py``)."""

    async def apply(records) -> None:  # [(ConsumerRecord, item record)]; a record's timestamp is in ms
        times = [None if m.timestamp is None or m.timestamp < 0 else m.timestamp / 1000.0 for m, _ in records]
        applied = await catalog.update_catalog([record for _, record in records], times)
        if applied:
            log.info("catalog: applied %d records (%d items known)", applied, catalog.live.current.n_items)

    await follow_records(settings, settings.topic(settings.catalog_topic), role="catalog",
                         parse=lambda message: validate_catalog_record(message.value), apply=apply, poll_ms=poll_ms,
                         max_records=1000)


async def context_vectors(catalog_vectors: CatalogVectors, model, values: Sequence[bytes | None],
                          max_bytes: int = 16384) -> dict[int, np.ndarray]:
    """{batch index: query vector} for the events of a micro-batch that carry ``context.text``, encoded
    through the same micro-batching queue as the catalog (only for models that use text). ``max_bytes``:
    larger values are not parsed (the validator refuses them as ``oversize``)."""
    if not uses_text(model):
        return {}
    texts = {i: t for i, t in enumerate(context_text_of(v, max_bytes) for v in values) if t}
    if not texts:
        return {}
    vecs = await (await catalog_vectors.queue()).encode_many(list(texts.values()))
    return dict(zip(texts, vecs))
