""":func:`take_batches`: micro-batches from a Faust stream, closed when :class:`~.batching.BatchPolicy` says
so and acked only once the batch was handled.

Uses Faust's stream processors (``Stream.add_processor``) and two private names of Faust's ``Stream``
(``_enable_passive``, ``_processors``: what ``take_events`` itself uses), listed in worker/internals.py.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .batching import BatchPolicy, Filling


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Batch(list):
    """The events of one micro-batch, and why and when (``loop.time()``) it was closed."""

    __slots__ = ("closed_by", "closed_at", "ready")

    def __init__(self, events, closed_by: str, closed_at: float, ready: int = 0):
        super().__init__(events)
        self.closed_by, self.closed_at, self.ready = closed_by, closed_at, ready  # ready: left in the channel


class _Intake:
    """The buffer of :func:`take_batches`, filled by a processor of the Faust stream, one event at a time
    (the same buffering as Faust's ``take_events``)."""

    def __init__(self, stream, max_events: int, on_first: Callable[[], None] | None = None):
        self.stream, self.max_events, self.on_first = stream, max_events, on_first
        self.buffer: list = []
        self.full = asyncio.Event()
        self.consumed = asyncio.Event()
        self.consuming: asyncio.Future | None = None  # while a batch is processed the intake waits on it
        self._wake: asyncio.Future | None = None  # what fill() and take_batches sleep on (see sleep)

    async def add(self, value):
        """The stream processor: buffer the current event; hold while a batch is processed or when full."""
        stream = self.stream
        try:
            if self.consuming is not None:  # a batch is being processed: hold the intake
                try:
                    await self.consuming
                finally:
                    self.consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            self.buffer.append(event)
            if len(self.buffer) == 1 and self.on_first is not None:
                self.on_first()
            if len(self.buffer) == 1 or len(self.buffer) >= self.max_events:
                self.wake()  # a first event, or a full batch
            if len(self.buffer) >= self.max_events:
                self.full.set()
                self.consumed.clear()
                await stream.wait(self.consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    def wake(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def sleep(self, timeout_s: float) -> None:
        """Until ``timeout_s`` passed or :meth:`wake` (a first event, a full batch). A plain future and a
        timer: this runs every millisecond while a batch fills, and mode's ``wait_for_stopped`` creates
        tasks at every call."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def fill(self, policy: BatchPolicy, ready: Callable[[], int], behind: Callable[[], int]) -> Batch:
        """The batch, once ``policy`` says so (re-checked at every new event or deadline)."""
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        now = first_at = changed_at = loop.time()
        seen = len(buffer)
        oldest = getattr(buffer[0].message, "time_in", None) or first_at  # monotonic, like loop.time()
        reason, waiting = "stopping", 0
        while not self.stream.should_stop:
            waiting = ready()
            filling = Filling(n_events=len(buffer), filling_s=now - first_at, idle_s=now - changed_at,
                              oldest_wait_s=now - oldest, ready=waiting)
            reason = policy.close_reason(filling, behind)
            if reason is not None:
                break
            await self.sleep(policy.next_check_s(filling))
            now = loop.time()
            if len(buffer) != seen:
                seen, changed_at = len(buffer), now
        self.consuming = loop.create_future()
        return Batch(buffer, reason, now, waiting)

    async def release(self) -> None:
        """After the batch (acked by ``take_batches`` if it was handled): let the intake go on."""
        self.buffer.clear()
        if not self.consuming.done():
            self.consuming.set_result(None)
        self.full.clear()
        self.consumed.set()


async def take_batches(stream, policy: BatchPolicy, behind: Callable[[], int] | None = None,
                       on_first: Callable[[], None] | None = None):
    """Like Faust's ``stream.take_events(max_events, within)`` (same buffering processor), but *adaptive*
    and *latency-aware*: a batch is handed over when ``policy`` says so (:meth:`BatchPolicy.close_reason`:
    full; ``fill_max_s`` after it started filling; or, once the events already in the stream's channel are
    in it and unless ``behind()`` (events not fetched yet: the consumer lag) holds a whole batch, when its
    oldest event waited ``max_wait_s`` or the intake went idle), and a batch is acked only when the loop
    body *returned* for it. Each batch is a :class:`Batch` (it says why and when it closed).

    Why the acks: ``take_events`` acks in a ``finally``, so when the body raises (or the agent is
    cancelled) the batch's offsets are committed without its events having been processed. Here they
    stay unacked and the commit cannot pass them (the agent then stops the worker, worker/app.py).

    Why adaptive: ``take_events`` waits a fixed ``within`` from the end of the previous batch, and Faust
    delivers events to the buffer one at a time, so with a backlog a short window holds few events and the
    per-batch costs (model calls, one produce request per partition, awaits) dominate (DEVELOPERS.md).

    ``on_first()`` is called when a batch's first event arrives (the worker holds its HTTP listener back
    from then until the batch's records are sent: worker/listener.py's ``StreamGate``)."""
    intake = _Intake(stream, policy.max_events, on_first)
    queue = getattr(stream.channel, "queue", None)  # events fetched, not taken by the stream yet
    ready = queue.qsize if queue is not None else (lambda: 0)
    channel_it = stream.channel.__aiter__()
    enable_acks = stream.enable_acks
    stream.enable_acks = False  # events are acked below, once the batch was processed
    stream.add_processor(intake.add)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not intake.buffer:  # wait for a first event (re-checking now and then whether to stop)
                await intake.sleep(0.1)
                continue
            events = await intake.fill(policy, ready, behind or (lambda: 0))
            try:
                yield events
                for event in events:  # only a batch the loop body finished
                    await stream.ack(event)
            finally:
                await intake.release()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(intake.add)
