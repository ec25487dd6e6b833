"""The worker's one HTTP listener (``Settings.metrics_host:metrics_port``, localhost by default), served by
aiohttp on a thread and event loop of its own (worker/listener.py), never on the stream's:

=================================  ====================================================================
``GET /metrics``                   Prometheus exposition of stream_rec/metrics.py (process CPU/memory too)
``GET /healthz``                   200 while the process runs and the stream's event loop answers (it
                                   runs a callback within ``HEALTH_TIMEOUT_S``; else 503); the stream
                                   loop's lag is in the body
``GET /readyz``                    200 when the model is loaded, the consumer group assigned partitions,
                                   no rebalance or table recovery is under way, the worker is not
                                   stalled and the stream's loop refreshed the listener's snapshot of
                                   it lately; else 503 with a JSON body naming what is missing
``GET /recommendations/{user_id}`` the user's current list, computed from the stored state by the ranking
``GET /recommendations?user_id=``  the stream uses (``pipeline.current_records``, in batches on the
                                   listener's thread: worker/lookups.py); served by the worker that owns the user's
                                   partition: another worker answers 307 to it (the id in the query of
                                   ``Location``, percent-encoded: no client rewrites ``.``/``..`` there)
``GET /ui/...``                    the worker's pages (``Settings.ui``; stream_rec/worker/ui.py): a user's
                                   list changing live, an item, the system's recent figures
=================================  ====================================================================

With ``Settings.http_token`` every route but the first three needs ``Authorization: Bearer <token>``
(worker/access.py). Connections that send no whole request for ``Settings.http_idle_timeout_s`` are
closed, at most ``Settings.http_max_connections`` are open at once, and the ``Server`` header names no
software version.

Pure pieces, tested without Kafka: :class:`Readiness` (what ``/readyz`` says, from a
:class:`WorkerStatus` snapshot and a stall watchdog) and :func:`route` (answer here, redirect, or say
that the owner is unknown). :class:`HttpService` is the Faust/mode service around them; it starts before
the Faust app (``faust.Worker(app, http_service)``), so the probes answer during start-up, and stops after
it. Its one task on the stream's loop refreshes, every ``listener.TICK_S``, the snapshot the handlers read
(readiness, the partitions' owners: ``listener.StreamSnapshot``) and measures the loop's lag; everything
else (parsing, routing, ranking lookups, the pages) runs on the listener's thread, whose rules for reading
the stream's objects are in worker/listener.py. 200 clients asking as fast as answered at 100 ev/s made the
stream's p99 1.15-1.44x its idle figure, 1.01-2.79x on the stream's loop (docs/RELIABILITY.md has the runs).
Faust's own web server stays off: it binds every interface and serves whole tables.

Who owns a user: events are keyed by the raw user id and partitioned by murmur2 of that key (what every
Kafka producer and Faust pick), and the state table is co-partitioned with ``events``, so the user's
partition is :func:`user_partition` of the raw id -- also with ``pseudonymize_key``, where the table key
is the pseudonym but the record key, hence the partition, is the raw id. Which worker owns a partition
comes from Faust's partition assignor: every member publishes its ``canonical_url``
(``Settings.http_url``) with the group assignment, and every member learns the others' at each rebalance.

No access log: request paths carry user ids, which the worker never logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from aiohttp import web
from mode import Service

from .. import metrics
from ..io.topics import changelog_topic_name
from ..pipeline import current_records
from ..privacy import pseudonymize
from .access import AccessPolicy, check_token_setting
from .context import WorkerContext
from .listener import (TICK_S, ListenerThread, StreamSnapshot, bind_listener, capped, ping,  # noqa: F401 (bind_listener)
                       ranked_while_unchanged)
from .lookups import LookupBatcher, LookupsBusy
from .services import read_user_state
from .table import StoreNotOpen
from .ui import PREFIX, UiPages
from .views import REDIRECTED

log = logging.getLogger(__name__)

SERVER_NAME = "stream-rec"  # the Server header (aiohttp's default names its version)
LOOKUP_BATCH = 16  # users ranked together by one lookup batch (worker/lookups.py): a few ms of the listener's thread
MAX_REQUEST_LINE = 16384
HEALTH_TIMEOUT_S = 3.0  # /healthz: the stream's loop must run a callback this soon (the probes wait 4-5 s)
SILENT_LOOP_S = 5.0  # /readyz: 503 when the stream's loop has not refreshed the snapshot for this long


# --- readiness (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerStatus:
    """What the worker knows about itself when ``/readyz`` is asked."""

    model_loaded: bool  # a model is served (--model, or the untrained one once catalog records arrived)
    joined: bool  # the consumer group assigned partitions at least once (an empty assignment counts)
    rebalancing: bool  # a rebalance, or the table recovery after it, is under way
    recovery_remaining: int = 0  # changelog records still to replay (0: none, or not known)
    stopping: bool = False
    loop_silent_s: float = 0.0  # since the stream's loop last refreshed the listener's snapshot of it


class Readiness:
    """``/readyz``: ready when nothing is missing. ``watchdog``: an object with ``stalled`` (bool) and
    ``stalled_for`` (seconds), fed by the worker -- :class:`stream_rec.worker.watchdog.StallWatchdog`, which
    reports a stall when events wait, a delivery is pending or the broker is silent and no micro-batch was
    handled for ``Settings.stall_warn_s``."""

    def __init__(self, watchdog: Any, silent_loop_s: float = SILENT_LOOP_S):
        self.watchdog = watchdog
        self.silent_loop_s = silent_loop_s

    def missing(self, status: WorkerStatus) -> dict[str, str]:
        """name -> why, for each condition of readiness that does not hold (empty: ready)."""
        out: dict[str, str] = {}
        if status.stopping:
            out["running"] = "the worker is stopping"
        if not status.model_loaded:
            out["model"] = "no model yet: no --model, and no catalog record has arrived"
        if not status.joined:
            out["group"] = "not joined: the consumer group has not assigned partitions yet"
        elif status.rebalancing:
            left = f" ({status.recovery_remaining} changelog records left)" if status.recovery_remaining else ""
            out["recovery"] = "rebalancing: partitions are being assigned or tables recovered" + left
        if status.loop_silent_s > self.silent_loop_s:
            out["loop"] = f"the stream's event loop has not answered for {status.loop_silent_s:.0f} s"
        if self.watchdog.stalled:
            out["progress"] = (f"stalled: no micro-batch handled for {self.watchdog.stalled_for:.0f} s "
                               "while events, deliveries or the broker wait")
        return out


# --- lookups: who answers (pure) ------------------------------------------------------------------------
def user_partition(user_id: str, partitions: int) -> int:
    """The partition of the user's events (and state): murmur2 of the raw id, as Kafka's default
    partitioner and Faust compute it."""
    from aiokafka.partitioner import murmur2

    return (murmur2(user_id.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Route:
    kind: str  # "here" | "redirect" | "unknown"
    url: str | None = None  # the owner's URL for "redirect"
    reason: str = ""  # for "unknown"


def route(partition: int, own_url: str, owned: set[int], owners: dict[str, set[int]], rebalancing: bool,
          redirected: bool = False) -> Route:
    """Where the lookup of a user on ``partition`` is answered: here (this worker owns it), at another
    worker's URL (``owners``: URL -> active partitions, from the group assignment), or nowhere right now.
    A request that was redirected once is never redirected again (stale assignments cannot ping-pong)."""
    if rebalancing:
        return Route("unknown", reason="rebalancing: partition owners are being assigned; retry shortly")
    if partition in owned:
        return Route("here")
    owner = next((url for url, parts in owners.items() if partition in parts), None)
    if owner is None:
        return Route("unknown", reason=f"no worker owns partition {partition} right now")
    if owner.rstrip("/") == own_url.rstrip("/") or redirected:
        return Route("unknown", reason=f"the group assignment of partition {partition} is out of date here")
    return Route("redirect", url=owner.rstrip("/"))


# --- the service ----------------------------------------------------------------------------------------
class HttpService(Service):
    """aiohttp on the listener's own thread (worker/listener.py): ``/metrics``, ``/healthz``, ``/readyz``,
    ``/recommendations``, ``/ui/``. Started and stopped by mode on the stream's loop."""

    def __init__(self, ctx: WorkerContext, sock: socket.socket, **kwargs):
        super().__init__(**kwargs)
        self.ctx = ctx  # what the worker carries (worker/context.py)
        self.app = ctx.app  # the faust.App of stream_rec/worker/app.py
        self.settings = ctx.settings
        self.sock = sock
        self.readiness = Readiness(ctx.services.watchdog)
        self.started_at = time.monotonic()
        self.loop_lags: deque[float] = deque(maxlen=int(60 / TICK_S))  # the stream loop's, the last minute
        check_token_setting(self.settings.http_token, self.settings.http_token_required)
        self.access = AccessPolicy(self.settings.http_token)
        self.lookups = LookupBatcher(self._current_records, LOOKUP_BATCH, self.settings.lookup_max_pending,
                                     self.settings.lookup_loop_share)
        self.thread = ListenerThread()
        self.stream_loop: asyncio.AbstractEventLoop | None = None
        self.snapshot = StreamSnapshot(WorkerStatus(False, False, False))  # replaced whole by refresh()
        self._runner = self._server = self._sampler = None  # aiohttp's runner and server, the charts' task
        ui = ctx.services.ui  # None: Settings.ui off
        self.pages = UiPages(self, ui) if ui is not None else None

    async def on_start(self) -> None:
        self.stream_loop = asyncio.get_running_loop()
        self.refresh()  # the first snapshot, before anyone can ask
        self.thread.start()
        await self.thread.call(self._serve())
        log.info("HTTP on %s:%d (/metrics /healthz /readyz /recommendations/USER%s%s) on its own thread, advertised "
                 "to the group as %s", self.settings.metrics_host, self.settings.metrics_port,
                 " /ui/" if self.pages else "", "; lookups need the bearer token" if self.settings.http_token else "",
                 self.app.conf.canonical_url)

    async def on_stop(self) -> None:
        if self.thread.running:
            await self.thread.call(self._close())
        self.thread.stop()

    async def _serve(self) -> None:
        """On the listener's loop: the routes, the runner and the server on the bound socket."""
        web_app = web.Application(middlewares=[self._after_stream, self.access.middleware])
        web_app.on_response_prepare.append(_server_header)
        web_app.router.add_get("/metrics", self.get_metrics)
        web_app.router.add_get("/healthz", self.get_healthz)
        web_app.router.add_get("/readyz", self.get_readyz)
        web_app.router.add_get("/recommendations", self.get_recommendations)  # ?user_id=
        web_app.router.add_get(r"/recommendations/{user_id:[\s\S]+}", self.get_recommendations)  # "\n" too
        if self.pages is not None:  # every page route is in this one sub-application (worker/ui.py)
            web_app.router.add_get(PREFIX, lambda request: web.HTTPPermanentRedirect(PREFIX + "/"))
            web_app.add_subapp(PREFIX + "/", self.pages.app())
            self._sampler = asyncio.get_running_loop().create_task(self._sample_metrics())
        # keepalive_timeout also closes a connection that never sends a whole request (aiohttp arms it on
        # connect); request lines up to 16 KiB (aiohttp's default: 8 KiB): a valid id is at most 256 characters
        # (3 KiB percent-encoded), and an id that is too long is answered by the page that says so
        self._runner = web.AppRunner(web_app, access_log=None, handle_signals=False, max_line_size=MAX_REQUEST_LINE,
                                     keepalive_timeout=self.settings.http_idle_timeout_s)
        await self._runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            capped(self._runner.server, self.settings.http_max_connections), sock=self.sock)

    async def _close(self) -> None:
        """On the listener's loop: live pages and lookups end, then the server and the runner."""
        if self.pages is not None:
            self.pages.close()  # live pages end, so the listener need not wait for them
        if self._sampler is not None:
            self._sampler.cancel()
        self.lookups.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @Service.task
    async def _tick(self) -> None:
        """On the stream's loop: how late a timer fires there, and the listener's snapshot refreshed."""
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            before = loop.time()
            await self.sleep(TICK_S)
            lag = max(0.0, loop.time() - before - TICK_S)
            self.loop_lags.append(lag)
            metrics.EVENT_LOOP_LAG.set(lag)
            try:
                self.refresh()
            except Exception as exc:  # Faust's state mid-rebalance: keep the last snapshot (it ages: /readyz)
                log.warning("refreshing the HTTP listener's snapshot failed: %r", exc)

    async def _sample_metrics(self) -> None:
        """On the listener's loop: the /ui/system charts' figures, once a second (worker/sampler.py)."""
        sampler = self.pages.sampler
        while True:
            try:
                sampler.tick()
            except Exception as exc:  # the charts must never stop the worker
                log.warning("sampling the metrics for /ui/system failed: %r", exc)
            await asyncio.sleep(sampler.interval_s)

    @web.middleware
    async def _after_stream(self, request: web.Request, handler) -> web.StreamResponse:
        """Every request waits (the thread sleeps) while the stream handles a micro-batch (listener.StreamGate)."""
        self.services.gate.wait()
        return await handler(request)

    # --- what the worker knows --------------------------------------------------------------------------
    def refresh(self) -> None:
        """On the stream's loop: a new :class:`StreamSnapshot` (Faust's state is read here only)."""
        app = self.app
        remaining = 0
        if app.in_recovery:
            try:
                remaining = int(app.tables.recovery.active_remaining_total())
            except Exception:  # Faust internals: the count is only informative
                remaining = 0
        status = WorkerStatus(model_loaded=self.services.model is not None, joined=self.services.joined,
                              rebalancing=bool(app.rebalancing or app.in_recovery), recovery_remaining=remaining,
                              stopping=bool(app.should_stop))
        changelog = changelog_topic_name(self.settings)
        assignor = app.assignor
        owned = frozenset(tp.partition for tp in assignor.assigned_actives() if tp.topic == changelog)
        owners = {url: frozenset(topics.get(changelog, ())) for url, topics in assignor.table_metadata(changelog).items()}
        self.snapshot = StreamSnapshot(status, owned, owners, str(app.conf.canonical_url), time.monotonic())

    def status(self) -> WorkerStatus:
        snapshot = self.snapshot
        return replace(snapshot.status, loop_silent_s=time.monotonic() - snapshot.at)

    def is_ready(self) -> bool:
        return not self.readiness.missing(self.status())

    def locate(self, user_id: str, redirected: bool = False) -> tuple[int, Route]:
        """(the user's partition, where it is answered): :func:`route` from the group's assignment."""
        partition = user_partition(user_id, self.settings.partitions)
        snapshot = self.snapshot
        return partition, route(partition, snapshot.url, snapshot.owned, snapshot.owners,
                                rebalancing=snapshot.status.rebalancing, redirected=redirected)

    def user_key(self, user_id: str) -> str:
        """The user's state key (the pseudonym when pseudonymising)."""
        return pseudonymize(user_id, self.settings.pseudonymize_key)

    def user_state(self, user_id: str, partition: int) -> bytes | None:
        """The user's stored state, read as the batch path reads it (``services.read_user_state``)."""
        return self.stored_state(self.user_key(user_id), partition)

    def stored_state(self, key: str, partition: int) -> bytes | None:
        """The state under state key ``key`` on ``partition``, read from the listener's thread (StoreNotOpen: moving)."""
        return read_user_state(self.services.state_cache, self.ctx.table, key.encode(), partition, elsewhere=True)

    @property
    def services(self):
        return self.ctx.services

    # --- handlers (on the listener's loop) --------------------------------------------------------------
    async def get_metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def get_healthz(self, request: web.Request) -> web.Response:
        answers = self.stream_loop is not None and await ping(self.stream_loop, HEALTH_TIMEOUT_S)
        lags = list(self.loop_lags)
        body = {"status": "ok" if answers else "stream loop not answering", "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_at, 1),
                "loop_lag_ms": round(lags[-1] * 1000, 1) if lags else None,
                "loop_lag_max_ms_1m": round(max(lags) * 1000, 1) if lags else None}
        return web.json_response(body, status=200 if answers else 503)

    async def get_readyz(self, request: web.Request) -> web.Response:
        snapshot, status = self.snapshot, self.status()
        missing = self.readiness.missing(status)
        body = {"ready": not missing, "missing": sorted(missing), "detail": missing,
                "partitions": sorted(snapshot.owned) if status.joined else [], "url": snapshot.url}
        return web.json_response(body, status=503 if missing else 200)

    async def get_recommendations(self, request: web.Request) -> web.Response:
        user_id = request.match_info.get("user_id") or request.query.get("user_id")
        if not user_id:
            return answer("bad_request", {"error": "no user id", "detail": "GET /recommendations/{user_id} or "
                                          "/recommendations?user_id="}, 400)
        partition, where = self.locate(user_id, REDIRECTED in request.query)
        if where.kind == "redirect":
            return answer("redirect", {"redirect": where.url, "partition": partition}, 307,
                          {"Location": redirect_location(where.url, user_id)})
        if where.kind == "unknown":
            return answer("owner_unknown", {"error": "owner unknown", "detail": where.reason, "partition": partition},
                          503, {"Retry-After": "1"})
        if self.services.model is None:
            return answer("no_model", {"error": "no model yet", "partition": partition}, 503, {"Retry-After": "5"})
        try:
            body = await self.lookups.lookup((self.user_key(user_id), partition))
        except LookupsBusy:
            return answer("busy", {"error": "busy", "detail": "too many lookups waiting", "partition": partition},
                          503, {"Retry-After": "1"})
        except StoreNotOpen:
            return answer("owner_unknown", {"error": "owner unknown", "detail": "the partition is moving (a "
                                            "rebalance); retry shortly", "partition": partition}, 503, {"Retry-After": "1"})
        if body is None:
            return answer("unknown_user", {"error": "unknown user", "detail": "no state for this user on its "
                                           "partition", "partition": partition}, 404)
        metrics.LOOKUPS.labels(answer="ok").inc()
        return web.Response(body=body, content_type="application/json")

    def _current_records(self, keys: list[tuple[str, int]]) -> list[bytes | None | Exception]:
        """One lookup batch (worker/lookups.py): the lists of (state key, partition), ranked together and
        encoded; a key whose partition's store is not open gets the exception (its lookup answers 503)."""
        services, raws, failed = self.services, [], {}
        services.gate.wait()
        for n, (key, partition) in enumerate(keys):
            try:
                raws.append(self.stored_state(key, partition))
            except StoreNotOpen as exc:
                raws.append(None)
                failed[n] = exc
        model = services.model
        records = ranked_while_unchanged(model, lambda: current_records(
            [key for key, _ in keys], raws, model, config=services.config, enricher=services.enricher))
        return [failed[n] if n in failed else None if record is None else
                json.dumps({**record, "partition": partition}).encode()
                for n, (record, (_, partition)) in enumerate(zip(records, keys))]


def answer(kind: str, body: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    """A lookup's JSON answer, counted in ``stream_rec_lookups_total{answer=kind}``."""
    metrics.LOOKUPS.labels(answer=kind).inc()
    return web.json_response(body, status=status, headers=headers)


def redirect_location(owner_url: str, user_id: str) -> str:
    """Where a lookup is sent on: the owner's ``/recommendations`` with the id, percent-encoded, in the query
    (as a path segment, ids ``.`` and ``..`` are dot segments that clients remove, even encoded as ``%2E``)."""
    return f"{owner_url}/recommendations?user_id={quote(user_id, safe='')}&{REDIRECTED}=1"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
