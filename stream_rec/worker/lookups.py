"""Lookups (``GET /recommendations/...``) answered in batches, so that a burst of them cannot slow the stream.

Each lookup ranks the whole catalogue for one user: 200 concurrent lookups computed one by one on the
stream's event loop held it for most of their time (issue 23: consume -> recommendation 4.9 -> 40.5 ms
mean while 200 lookups ran). Here a lookup only queues its user; one task takes up to ``max_batch``
queued users at a time and ranks them in one ``pipeline.current_records`` call -- as the stream ranks a
micro-batch -- and encodes their answers, then pauses long enough that lookups take at most
``loop_share`` of the time (``Settings.lookup_loop_share``): a batch that took ``t`` seconds is followed by
``t * (1 - loop_share) / loop_share`` seconds without lookup work. The batcher runs on the HTTP listener's
own thread and loop (worker/listener.py), not on the stream's: the share bounds what lookups take of the
process's CPU and GIL, which the two threads share, and the listener's thread also waits while the stream
handles a micro-batch (``listener.StreamGate``). A crowd of clients therefore waits longer for its answers
instead of slowing the stream (and clients that wait for an answer before they ask again slow down with
it). At most ``max_pending`` lookups wait; beyond that a lookup is refused at once (:class:`LookupsBusy`:
the listener answers 503 with ``Retry-After``).

How much a crowd of lookups still costs the stream, and why (the listener's HTTP handling shares the GIL with
the stream): ``python benchmarks/lookup_load.py --control``, docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Hashable, Sequence

log = logging.getLogger(__name__)

Compute = Callable[[Sequence[Hashable]], Sequence[object]]  # keys -> one answer (or exception) per key


class LookupsBusy(RuntimeError):
    """More lookups wait than ``max_pending``."""


class LookupBatcher:
    def __init__(self, compute: Compute, max_batch: int = 16, max_pending: int = 1024, loop_share: float = 1.0):
        self.compute, self.max_batch, self.max_pending = compute, max(1, max_batch), max(1, max_pending)
        self.loop_share = min(1.0, max(0.01, loop_share))
        self._queue: list[tuple[Hashable, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.batches = 0  # batches computed (tests, the benchmark)

    async def lookup(self, key: Hashable):
        """The answer for ``key``, computed in the next batch. Raises :class:`LookupsBusy` when full."""
        if len(self._queue) >= self.max_pending:
            raise LookupsBusy(f"{len(self._queue)} lookups waiting")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.append((key, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # let the other lookups of this burst queue up first
            taken, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            if not self._queue:
                self._wake.clear()
            taken = [(key, future) for key, future in taken if not future.done()]  # a client gone: skipped
            if not taken:
                continue
            started = time.perf_counter()
            try:
                answers = self.compute([key for key, _ in taken])
            except Exception as exc:  # one bad batch must not stop the lookups: each caller sees the error
                log.error("lookup batch of %d failed: %r", len(taken), exc)
                answers = [exc] * len(taken)
            took = time.perf_counter() - started
            self.batches += 1
            for (_, future), answer in zip(taken, answers):
                if not future.done():
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
            await asyncio.sleep(took * (1.0 - self.loop_share) / self.loop_share)  # the stream's turn

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, future in self._queue:
            if not future.done():
                future.cancel()
        self._queue = []
