"""What the worker (stream_rec/app.py) plugs in to serve the trained model live:

* :func:`catalog_text` -- the text the encoder reads for a ``catalog`` record (the demo model is
  trained on the same function, so a live item reads like a trained one);
* :class:`CatalogVectors` -- text vectors for the catalog records that need them, through the
  micro-batching :class:`~stream_rec.live.encoding.EncodingQueue` (the catalog task awaits it; the
  event agent keeps running meanwhile). Records of items the model already knows with the same text are
  not re-encoded and keep their trained vectors;
* :func:`control_loop` -- every worker follows the ``control`` topic (group-less, like the catalog: a
  consumer group would give each message to one worker only) and hot-reloads on
  ``{"type": "reload", "path"?: DIR}``. Messages older than the worker are ignored, so a restart does
  not replay old reloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Sequence

import numpy as np

from .. import boundedjson
from .encoding import EncodingQueue, encoder_function, metrics_hook
from .models import LiveModel, reload_request

log = logging.getLogger(__name__)


def catalog_text(record: dict) -> str:
    """``Title. free text. key: value, key: value`` -- what the encoder reads for a catalog record."""
    parts = [str(record.get("title") or "").strip(), str(record.get("text") or "").strip()]
    attrs = record.get("attributes")
    if isinstance(attrs, dict) and attrs:
        parts.append(", ".join(f"{k}: {v}" for k, v in attrs.items()))
    return ". ".join(p for p in parts if p)


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
        """Load the encoder at worker start (it takes seconds, ~20 s on a loaded 2-core box), so the first
        new catalog item or query does not wait for it. Nothing to do for an ID-only model."""
        if self.uses_text(model):
            t0 = time.perf_counter()
            try:
                await self.queue()
                log.info("text encoder ready for catalog items and queries (%.1f s)", time.perf_counter() - t0)
            except Exception as exc:  # the worker still serves; items then enter by id only
                log.error("could not load the text encoder: %s", exc)

    @staticmethod
    def uses_text(model) -> bool:
        return model is not None and bool(model.model.config.use_text) and model.model.config.text_dim > 0

    def needs_encoding(self, model, record: dict) -> bool:
        """New items, and known items whose text changed; not known items with their trained text."""
        row = model.row_of.get(record["item_id"])
        if row is None:
            return True
        texts = getattr(model, "item_texts", None)
        return texts is not None and texts[row - 1] != catalog_text(record)

    async def vectors_for(self, model, records: Sequence[dict]) -> tuple[list[dict], np.ndarray | None]:
        """(records to apply with vectors, their vectors) -- or (records, None) for an ID-only model."""
        if not self.uses_text(model):
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


async def control_loop(live: LiveModel, settings, poll_ms: int = 200, on_reload=None) -> None:
    """Follow the ``control`` topic and hot-reload on reload messages (every worker does this)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ..kafka import client_kwargs

    started_ms = int(time.time() * 1000) - 1000
    topic = settings.topic(settings.control_topic)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100))
    await consumer.start()
    try:
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    await asyncio.sleep(1.0)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            fetched = await consumer.getmany(timeout_ms=poll_ms, max_records=100)
            for msgs in fetched.values():
                for m in msgs:
                    if m.timestamp is not None and m.timestamp < started_ms:
                        continue  # sent before this worker started
                    path = reload_request(m.value)
                    if path is False:
                        skip_record("control", "not_a_command", m, "not a control command")
                        continue
                    try:
                        result = await live.reload(path)
                    except Exception as exc:  # no control record may stop the worker
                        skip_record("control", "reload_failed", m, repr(exc)[:200])
                        continue
                    log.info("control: reload -> %s", result)
                    if on_reload is not None:
                        on_reload(result)
    finally:
        await consumer.stop()


def skip_record(topic: str, reason: str, message, detail: str) -> None:
    """A ``catalog``/``control`` record the worker cannot use: one WARNING line (where it is, why, its
    size -- not its content) and ``stream_rec_records_skipped_total{topic, reason}``."""
    from .. import metrics

    log.warning("%s: skipping the record at partition %s offset %s (%d bytes): %s: %s", topic,
                getattr(message, "partition", "?"), getattr(message, "offset", "?"),
                len(getattr(message, "value", None) or b""), reason, detail)
    metrics.RECORDS_SKIPPED.labels(topic=topic, reason=reason).inc()


def reload_message(path: str | None = None) -> bytes:
    """The ``control`` record that asks every worker to reload (from ``path``, or its ``--model``)."""
    msg: dict = {"type": "reload"}
    if path:
        msg["path"] = str(path)
    return json.dumps(msg).encode()


def seed_catalog(model, records: Sequence[dict], settings) -> list[str]:
    """Add the ``--items`` records the model does not know, at start (synchronously: nothing is being
    served yet). A text model encodes them with the shared encoder (and its disk cache)."""
    if CatalogVectors.uses_text(model):
        from ..model.encoder import shared_encoder

        return model.add_catalog({str(r["item_id"]): catalog_text(r) for r in records},
                                 lambda: shared_encoder(settings.cache_dir, settings.device))
    new = [str(r["item_id"]) for r in records if str(r["item_id"]) not in model.row_of]
    if new:
        model.add_items(new)
    return new


# --- event context text (a query, a review) ------------------------------------------------------------
def context_text_of(raw: bytes | None, max_bytes: int = 16384) -> str:
    """The ``context.text`` of a raw event value ('' when none, or when the value is not an event the
    validator could accept: over ``max_bytes``, not bounded JSON). Cheap for the common case: records
    without the word ``context`` are not parsed twice."""
    if not raw or b'"context"' not in raw:
        return ""
    try:
        doc = boundedjson.parse(raw, max_bytes=max_bytes)
    except boundedjson.JSONRejected:
        return ""
    from ..recsys.context import context_text

    return context_text(doc.get("context")) if isinstance(doc, dict) and isinstance(doc.get("context"), dict) else ""


async def context_vectors(catalog_vectors: CatalogVectors, model, values: Sequence[bytes | None],
                          max_bytes: int = 16384) -> dict[int, np.ndarray]:
    """{batch index: query vector} for the events of a micro-batch that carry ``context.text``, encoded
    through the same micro-batching queue as the catalog (only for models that use text)."""
    if not CatalogVectors.uses_text(model):
        return {}
    texts = {i: t for i, t in enumerate(context_text_of(v, max_bytes) for v in values) if t}
    if not texts:
        return {}
    vecs = await (await catalog_vectors.queue()).encode_many(list(texts.values()))
    return dict(zip(texts, vecs))


def contextual_topk(model, hiddens: Sequence[np.ndarray], exclude: Sequence[Sequence[int]],
                    queries: dict[int, np.ndarray], k: int, alpha: float) -> dict[int, list[tuple[str, float]]]:
    """Top-k lists for the users (positions in ``hiddens``) whose request carries a query: model scores
    plus the query's match with each item's text (``recsys.context.context_boost``), seen items excluded."""
    import torch

    from ..model.gru import topk_excluding
    from ..recsys.context import context_boost

    if not queries or alpha == 0.0:
        return {}
    idx = list(queries)
    scores = model.score_rows(np.stack([hiddens[i] for i in idx])).cpu().numpy()
    boosted = context_boost(scores, np.stack([queries[i] for i in idx]),
                            model.model.text_vectors.detach().cpu().numpy(), alpha)
    values, rows = topk_excluding(torch.from_numpy(boosted), k, [list(exclude[i]) for i in idx])
    out = {}
    for pos, vs, rs in zip(idx, values.numpy(), rows.numpy()):
        out[pos] = [(model.item_ids[r - 1], float(v)) for v, r in zip(vs, rs) if r != 0 and np.isfinite(v)]
    return out
