"""The HTTP listener's own thread and event loop (worker/http.py serves every route on it), and what crosses
between it and the stream's event loop.

Why a thread: lookups (``GET /recommendations/...``) shared the stream's loop. Batched and held to a share of
the loop (worker/lookups.py), 200 clients asking as fast as they were answered still made the consume ->
recommendation p99 1.9-2.4x its idle figure on an idle box (``python benchmarks/lookup_load.py``,
docs/RELIABILITY.md), 1.38x with the lookups' share at 1 %: parsing, queueing and answering 200 clients'
requests ran on the stream's loop whatever the share. Here the stream's loop never parses a request nor
ranks a lookup; it only refreshes a snapshot every :data:`TICK_S` and answers a health ping.

* :class:`ListenerThread` -- a daemon thread running its own asyncio loop at a lower CPU priority than the
  stream (:data:`NICE`, ``os.setpriority`` of the thread: Linux; elsewhere the thread keeps the process's).
  The GIL is one for the whole process: the stream's thread waits for it at most the switch interval
  (:data:`SWITCH_INTERVAL_S`, set when the thread starts) whenever the listener's thread holds it, and
  torch releases it in its kernels.
* :class:`StreamSnapshot` -- what the listener knows of the stream: readiness inputs, this worker's
  partitions and every member's, taken on the stream's loop and replaced whole (one reference).
* :func:`ping` -- whether the stream's loop runs a callback within a timeout (``/healthz``).
* :func:`bind_listener` (the socket, bound at start) and :func:`capped` (at most so many connections).

The rules between the two loops: the listener reads the stream's objects only through reads that are
atomic for another thread (one dict or RocksDB read, a copy of a container in one C call; the users' states:
``services.read_user_state(..., elsewhere=True)``; the catalogue: :func:`ranked_while_unchanged` ranks
again when it grew meanwhile; the enricher's item space is replaced whole); it changes nothing of the stream's
but through ``loop.call_soon_threadsafe``; the stream wakes a live page on the listener's loop the same
way (worker/live.py). Prometheus metrics are thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from .. import metrics
from ..settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

TICK_S = 0.1  # how often the stream's loop refreshes the snapshot (and measures its own lag)
NICE = 5  # the listener thread's niceness above the process's (a lower CPU priority than the stream's)
SWITCH_INTERVAL_S = 0.001  # the GIL switch interval while a listener thread runs (Python's default: 5 ms)


@dataclass(frozen=True)
class StreamSnapshot:
    """The stream as the listener's thread sees it, taken on the stream's loop at ``at`` (monotonic s)."""

    status: Any  # worker/http.py's WorkerStatus
    owned: frozenset = frozenset()  # partitions of the state table this worker owns
    owners: dict = field(default_factory=dict)  # URL -> frozenset of partitions, every member
    url: str = ""  # this worker's canonical URL
    at: float = 0.0


class StreamGate:
    """The stream's loop says when it handles a micro-batch (:meth:`busy` ... :meth:`idle`); the listener's
    thread calls :meth:`wait` before its next piece of work and sleeps, without the GIL, until the batch is
    handled or ``max_wait_s`` passed (so the listener is slowed, never stopped, by a saturated stream).
    The GIL is one for the process: without this, every time the stream's thread let it go (a torch
    kernel, a socket write) it waited up to the switch interval to get it back from the listener."""

    def __init__(self, max_wait_s: float = 0.05):
        self.max_wait_s = max_wait_s
        self._idle = threading.Event()
        self._idle.set()

    def busy(self) -> None:
        self._idle.clear()

    def idle(self) -> None:
        self._idle.set()

    def wait(self) -> None:
        if not self._idle.is_set():
            self._idle.wait(self.max_wait_s)


class ListenerThread:
    """A daemon thread with its own event loop; :meth:`start` and :meth:`stop` are called from the stream's
    loop (or any other thread), :meth:`call` runs a coroutine on the listener's loop."""

    def __init__(self, name: str = "stream-rec-http", nice: int = NICE):
        self.name, self.nice = name, nice
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.native_id: int | None = None
        self._switch_before: float | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        self.loop = loop
        self.thread = threading.Thread(target=self._run, args=(loop, started), name=self.name, daemon=True)
        self.thread.start()
        started.wait()
        self._switch_before = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_before, SWITCH_INTERVAL_S))

    def _run(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        self.native_id = threading.get_native_id()
        lower_priority(self.native_id, self.nice)
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future:
        """Run ``coro`` on the listener's loop; the future is thread-safe."""
        assert self.loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Awaitable[T]) -> T:
        """Await ``coro`` run on the listener's loop, from another loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop and wait for the thread (what runs on it was closed by the caller first)."""
        if self.loop is not None and self.running:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                log.warning("the HTTP listener's thread did not stop within %.0f s", timeout_s)
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None


def lower_priority(native_id: int, nice: int) -> bool:
    """Raise the niceness of one thread by ``nice`` (Linux: a thread id is a process id to setpriority);
    False where that is not supported or not allowed."""
    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, native_id, os.getpriority(os.PRIO_PROCESS, native_id) + nice)
    except OSError as exc:
        log.info("the HTTP listener keeps the process's CPU priority: %s", exc)
        return False
    return True


async def ping(loop: asyncio.AbstractEventLoop, timeout_s: float) -> bool:
    """Whether ``loop`` (another thread's) runs a callback within ``timeout_s``."""
    answered = concurrent.futures.Future()
    try:
        loop.call_soon_threadsafe(_resolve, answered)
    except RuntimeError:  # that loop is closed
        return False
    try:
        await asyncio.wait_for(asyncio.wrap_future(answered), timeout_s)
    except asyncio.TimeoutError:
        return False
    return True


def _resolve(future: concurrent.futures.Future) -> None:
    try:
        future.set_result(None)
    except concurrent.futures.InvalidStateError:  # the pinger gave up (cancelled) meanwhile
        pass


# --- the catalogue, read from the listener's thread -------------------------------------------------------
CONSISTENT_TRIES = 3


def ranked_while_unchanged(model, rank: Callable[[], T]) -> T:
    """``rank()`` (a ranking over ``model``: ``pipeline.current_records``) run from the listener's thread while
    the stream's loop may grow the catalogue (``Recommender.add_items``): a ranking that overlapped a growth
    (``model.catalogue_changes`` odd, or moved meanwhile) may have mixed the catalogue's sizes, so it is run
    again; after ``CONSISTENT_TRIES`` such tries it runs holding the catalogue still (``model.unchanging()``:
    a growth, and the stream's own model calls, wait for it)."""
    if not hasattr(model, "unchanging"):  # no model yet, or one that never grows
        return rank()
    for _ in range(CONSISTENT_TRIES):
        before = model.catalogue_changes
        try:
            out = rank()
        except Exception:
            if before % 2 == 0 and model.catalogue_changes == before:
                raise
        else:
            if before % 2 == 0 and model.catalogue_changes == before:
                return out
    with model.unchanging():
        return rank()


# --- the socket ------------------------------------------------------------------------------------------
class ListenError(OSError):
    """The HTTP listener's address cannot be bound (port in use, no such interface)."""


def bind_listener(settings: Settings) -> socket.socket:
    """The listening socket on ``metrics_host:metrics_port``, bound now (at start, so a port in use fails
    the command with one line before anything else starts)."""
    host, port = settings.metrics_host, settings.metrics_port
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port} (STREAM_REC_METRICS_HOST/PORT): "
                          f"{exc.strerror or exc}") from None


def capped(protocol_factory, max_connections: int):
    """``protocol_factory`` (aiohttp's ``web.Server``) for ``loop.create_server``, closing a connection on
    arrival while ``max_connections`` are open. Counted here, not with ``Server.connections``: asyncio accepts
    a burst of connections before it tells any handler it is connected. A handler whose connection ended
    has dropped its manager (aiohttp's ``RequestHandler._manager``)."""
    handlers: set = set()

    def make():
        handlers.difference_update([h for h in handlers if h._manager is None])
        if len(handlers) >= max_connections:
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            return _Refused()
        handler = protocol_factory()
        handlers.add(handler)
        return handler

    return make


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
