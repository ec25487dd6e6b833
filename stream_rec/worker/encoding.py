"""Micro-batched text encoding for the stream: an asyncio queue in front of the LLM text encoder.

Why a queue of its own: the text encoder is several times faster per text in batches than one text
at a time (DEVELOPERS.md), and one batch takes far longer than a GRU step over a whole batch of events.
So text requests (new ``catalog`` records, ``context.text`` of events) are not encoded inside the event
micro-batch. Callers ``await queue.encode(text)``; a single
background task gathers pending requests up to ``max_batch`` texts or ``max_wait_ms`` after the first
one, encodes them in one call in a worker thread (``asyncio.to_thread``) so the event loop keeps
consuming and stepping the GRU meanwhile, and resolves every caller's future with its vector.

In front of the encoder sits an in-memory LRU keyed by the text itself (identical texts -- the same
query, a catalog record re-sent on a compacted topic -- are encoded once); the encoder given to the
queue may have its own on-disk cache behind that (the model's embedding cache). Duplicate texts inside
one batch are encoded once too.

The encoder is any callable ``list[str] -> np.ndarray [n, dim]`` (normalised vectors), so tests and
benchmarks can pass a cheap one; :func:`encoder_function` adapts the model's ``TextEncoder``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

EncodeBatch = Callable[[list[str]], np.ndarray]


class EncodingError(RuntimeError):
    """The encoder failed on a batch; every request of that batch gets this error."""


class VectorLRU:
    """text -> vector, least recently used evicted first (bounded memory on an open-ended text stream)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        vec = self._data.get(text)
        if vec is None:
            self.misses += 1
            return None
        self._data.move_to_end(text)
        self.hits += 1
        return vec

    def put(self, text: str, vec: np.ndarray) -> None:
        self._data[text] = vec
        self._data.move_to_end(text)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class EncodingQueue:
    """Gather text-encoding requests into batches and encode them off the event loop.

    ``max_batch`` is ``Settings.encoder_batch_max`` (sized for the encoder, not for the GRU batches);
    ``max_wait_ms`` bounds how long the first request of a batch waits for company.
    """

    def __init__(self, encode_batch: EncodeBatch, max_batch: int = 64, max_wait_ms: float = 5.0,
                 cache_size: int = 100_000, on_batch: Callable[[int, float], Any] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.encode_batch = encode_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache = VectorLRU(cache_size)
        self.on_batch = on_batch  # (batch size, seconds) -> None, e.g. a metrics hook
        self.batches = 0
        self.texts_encoded = 0
        self._pending: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._runner: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- public API ------------------------------------------------------------------------------
    async def encode(self, text: str) -> np.ndarray:
        """The vector of one text (waits for its batch)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        self._ensure_running()
        fut = asyncio.get_running_loop().create_future()
        await self._pending.put((text, fut))
        return await fut

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of several texts, in order ``[n, dim]``; they share batches with everyone else's."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vecs = await asyncio.gather(*(self.encode(t) for t in texts))
        return np.stack(vecs)

    async def close(self) -> None:
        """Stop the background task; pending requests are failed, not left hanging."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
            self._runner = None
        if self._pending is not None:
            while not self._pending.empty():
                _, fut = self._pending.get_nowait()
                if not fut.done():
                    fut.set_exception(EncodingError("encoding queue closed"))

    # --- internals -------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._loop is not loop:
            self._loop = loop
            self._pending = asyncio.Queue()
            self._runner = loop.create_task(self._run(), name="stream-rec-encoding-queue")

    async def _gather_batch(self) -> list[tuple[str, asyncio.Future]]:
        assert self._pending is not None
        batch = [await self._pending.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._pending.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._pending.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather_batch()
            unique = list(dict.fromkeys(text for text, _ in batch))
            # another caller may have filled the cache while these waited
            ready: dict[str, np.ndarray] = {}
            todo = []
            for text in unique:
                vec = self.cache.get(text)
                if vec is None:
                    todo.append(text)
                else:
                    ready[text] = vec
            t0 = time.perf_counter()
            try:
                if todo:
                    vecs = await asyncio.to_thread(self.encode_batch, todo)
                    vecs = np.asarray(vecs, dtype=np.float32)
                    if vecs.ndim != 2 or vecs.shape[0] != len(todo):
                        raise EncodingError(f"encoder returned shape {vecs.shape} for {len(todo)} texts")
                    for text, vec in zip(todo, vecs):
                        self.cache.put(text, vec)
                        ready[text] = vec
            except Exception as exc:  # one bad batch must not kill the queue
                log.exception("text encoder failed on a batch of %d texts", len(todo))
                err = exc if isinstance(exc, EncodingError) else EncodingError(f"text encoder failed: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            seconds = time.perf_counter() - t0
            self.batches += 1
            self.texts_encoded += len(todo)
            if self.on_batch is not None and todo:
                self.on_batch(len(todo), seconds)
            for text, fut in batch:
                if not fut.done():
                    fut.set_result(ready[text])


def encoder_function(encoder: Any) -> EncodeBatch:
    """Adapt the model's text encoder (anything with ``encode(texts) -> array``, which may use its own
    on-disk cache) to the ``list[str] -> np.ndarray`` the queue calls."""
    cached = getattr(encoder, "encode_cached", None)
    encode = getattr(encoder, "encode", None)
    if cached is not None:
        def encode(texts):  # noqa: E306 - the disk cache sits behind the queue's LRU
            return cached(texts, progress=False)
    if encode is None:
        if callable(encoder):
            encode = encoder
        else:
            raise TypeError(f"{type(encoder).__name__} has no encode(texts) method")

    def encode_batch(texts: list[str]) -> np.ndarray:
        out = encode(texts)
        if hasattr(out, "detach"):  # a torch tensor
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    return encode_batch


def metrics_hook(batch_size: int, seconds: float) -> None:
    """``on_batch`` hook that records encoder batches in the worker's Prometheus metrics."""
    from .. import metrics

    metrics.BATCH_SIZE.labels(stage="encode").observe(batch_size)
    metrics.MODEL_STEP_SECONDS.labels(stage="encode").observe(seconds)
