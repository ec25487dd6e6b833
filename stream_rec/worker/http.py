"""The worker's one HTTP listener (``Settings.metrics_host:metrics_port``, localhost by default), served by
aiohttp on the worker's own event loop:

=================================  ====================================================================
``GET /metrics``                   Prometheus exposition of stream_rec/metrics.py (process CPU/memory too)
``GET /healthz``                   200 while the process runs and its event loop answers (this answer
                                   comes from the loop itself); the loop lag it measures is in the body
``GET /readyz``                    200 when the model is loaded, the consumer group assigned partitions,
                                   no rebalance or table recovery is under way and the worker is not
                                   stalled; else 503 with a JSON body naming what is missing
``GET /recommendations/{user_id}`` the user's current list, computed from the stored state by the ranking
``GET /recommendations?user_id=``  the stream uses (``pipeline.current_records``, in batches:
                                   worker/lookups.py); served by the worker that owns the user's
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
it. Faust's own web server stays off: it binds every interface and serves whole tables.

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
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web
from mode import Service

from .. import metrics
from ..io.topics import changelog_topic_name
from ..pipeline import current_records
from ..privacy import pseudonymize
from ..settings import Settings
from .access import AccessPolicy, check_token_setting
from .context import WorkerContext
from .lookups import LookupBatcher, LookupsBusy
from .services import read_user_state
from .ui import PREFIX, UiPages
from .views import REDIRECTED

log = logging.getLogger(__name__)

SERVER_NAME = "stream-rec"  # the Server header (aiohttp's default names its version)
LOOKUP_BATCH = 16  # users ranked together by one lookup batch (worker/lookups.py): a few ms of the loop
MAX_REQUEST_LINE = 16384


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


# --- readiness (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerStatus:
    """What the worker knows about itself when ``/readyz`` is asked."""

    model_loaded: bool  # a model is served (--model, or the untrained one once catalog records arrived)
    joined: bool  # the consumer group assigned partitions at least once (an empty assignment counts)
    rebalancing: bool  # a rebalance, or the table recovery after it, is under way
    recovery_remaining: int = 0  # changelog records still to replay (0: none, or not known)
    stopping: bool = False


class Readiness:
    """``/readyz``: ready when nothing is missing. ``watchdog``: an object with ``stalled`` (bool) and
    ``stalled_for`` (seconds), fed by the worker -- :class:`stream_rec.worker.watchdog.StallWatchdog`, which
    reports a stall when events wait, a delivery is pending or the broker is silent and no micro-batch was
    handled for ``Settings.stall_warn_s``."""

    def __init__(self, watchdog: Any):
        self.watchdog = watchdog

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
    """aiohttp on the worker's event loop: ``/metrics``, ``/healthz``, ``/readyz``, ``/recommendations``."""

    LOOP_LAG_INTERVAL_S = 0.5

    def __init__(self, ctx: WorkerContext, sock: socket.socket, **kwargs):
        super().__init__(**kwargs)
        self.ctx = ctx  # what the worker carries (worker/context.py)
        self.app = ctx.app  # the faust.App of stream_rec/worker/app.py
        self.settings = ctx.settings
        self.sock = sock
        self.readiness = Readiness(ctx.services.watchdog)
        self.started_at = time.monotonic()
        self.loop_lags: deque[float] = deque(maxlen=int(60 / self.LOOP_LAG_INTERVAL_S))  # the last minute
        check_token_setting(self.settings.http_token, self.settings.http_token_required)
        self.access = AccessPolicy(self.settings.http_token)
        self.lookups = LookupBatcher(self._current_records, LOOKUP_BATCH, self.settings.lookup_max_pending,
                                     self.settings.lookup_loop_share)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        ui = ctx.services.ui  # None: Settings.ui off
        self.pages = UiPages(self, ui) if ui is not None else None

    async def on_start(self) -> None:
        web_app = web.Application(middlewares=[self.access.middleware])
        web_app.on_response_prepare.append(_server_header)
        web_app.router.add_get("/metrics", self.get_metrics)
        web_app.router.add_get("/healthz", self.get_healthz)
        web_app.router.add_get("/readyz", self.get_readyz)
        web_app.router.add_get("/recommendations", self.get_recommendations)  # ?user_id=
        web_app.router.add_get(r"/recommendations/{user_id:[\s\S]+}", self.get_recommendations)  # "\n" too
        if self.pages is not None:  # every page route is in this one sub-application (worker/ui.py)
            web_app.router.add_get(PREFIX, lambda request: web.HTTPPermanentRedirect(PREFIX + "/"))
            web_app.add_subapp(PREFIX + "/", self.pages.app())
        # keepalive_timeout also closes a connection that never sends a whole request (aiohttp arms it on
        # connect); request lines up to 16 KiB (aiohttp's default: 8 KiB): a valid id is at most 256 characters
        # (3 KiB percent-encoded), and an id that is too long is answered by the page that says so
        self._runner = web.AppRunner(web_app, access_log=None, handle_signals=False, max_line_size=MAX_REQUEST_LINE,
                                     keepalive_timeout=self.settings.http_idle_timeout_s)
        await self._runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            capped(self._runner.server, self.settings.http_max_connections), sock=self.sock)
        log.info("HTTP on %s:%d (/metrics /healthz /readyz /recommendations/USER%s%s), advertised to the group as %s",
                 self.settings.metrics_host, self.settings.metrics_port, " /ui/" if self.pages else "",
                 "; lookups need the bearer token" if self.settings.http_token else "", self.app.conf.canonical_url)

    async def on_stop(self) -> None:
        if self.pages is not None:
            self.pages.close()  # live pages end, so the listener need not wait for them
        self.lookups.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @Service.task
    async def _measure_loop_lag(self) -> None:
        """How late a timer fires on the event loop: everything the worker does shares that loop."""
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            before = loop.time()
            await self.sleep(self.LOOP_LAG_INTERVAL_S)
            lag = max(0.0, loop.time() - before - self.LOOP_LAG_INTERVAL_S)
            self.loop_lags.append(lag)
            metrics.EVENT_LOOP_LAG.set(lag)

    @Service.task
    async def _sample_metrics(self) -> None:
        """The /ui/system charts' figures, once a second (worker/sampler.py)."""
        if self.pages is None:
            return
        sampler = self.pages.sampler
        while not self.should_stop:
            try:
                sampler.tick()
            except Exception as exc:  # the charts must never stop the worker
                log.warning("sampling the metrics for /ui/system failed: %r", exc)
            await self.sleep(sampler.interval_s)

    # --- what the worker knows --------------------------------------------------------------------------
    def status(self) -> WorkerStatus:
        app = self.app
        remaining = 0
        if app.in_recovery:
            try:
                remaining = int(app.tables.recovery.active_remaining_total())
            except Exception:  # Faust internals: the count is only informative
                remaining = 0
        return WorkerStatus(model_loaded=self.services.model is not None, joined=self.services.joined,
                            rebalancing=bool(app.rebalancing or app.in_recovery), recovery_remaining=remaining,
                            stopping=bool(app.should_stop))

    def is_ready(self) -> bool:
        return not self.readiness.missing(self.status())

    def locate(self, user_id: str, redirected: bool = False) -> tuple[int, Route]:
        """(the user's partition, where it is answered): :func:`route` from the group's assignment."""
        partition = user_partition(user_id, self.settings.partitions)
        owned, owners = self.owners()
        return partition, route(partition, str(self.app.conf.canonical_url), owned, owners,
                                rebalancing=bool(self.app.rebalancing or self.app.in_recovery), redirected=redirected)

    def user_key(self, user_id: str) -> str:
        """The user's state key (the pseudonym when pseudonymising)."""
        return pseudonymize(user_id, self.settings.pseudonymize_key)

    def user_state(self, user_id: str, partition: int) -> bytes | None:
        """The user's stored state, read as the batch path reads it (``services.read_user_state``)."""
        return self.stored_state(self.user_key(user_id), partition)

    def stored_state(self, key: str, partition: int) -> bytes | None:
        """The state stored under the state key ``key`` (:meth:`user_key`) on ``partition``."""
        return read_user_state(self.services.state_cache, self.ctx.table, key.encode(), partition)

    @property
    def services(self):
        return self.ctx.services

    def owners(self) -> tuple[set[int], dict[str, set[int]]]:
        """(partitions this worker owns, URL -> partitions of every member) of the state table."""
        changelog = changelog_topic_name(self.settings)
        assignor = self.app.assignor
        owned = {tp.partition for tp in assignor.assigned_actives() if tp.topic == changelog}
        owners = {url: set(topics.get(changelog, ())) for url, topics in assignor.table_metadata(changelog).items()}
        return owned, owners

    # --- handlers ---------------------------------------------------------------------------------------
    async def get_metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def get_healthz(self, request: web.Request) -> web.Response:
        lags = list(self.loop_lags)
        return web.json_response({
            "status": "ok", "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started_at, 1),
            "loop_lag_ms": round(lags[-1] * 1000, 1) if lags else None,
            "loop_lag_max_ms_1m": round(max(lags) * 1000, 1) if lags else None})

    async def get_readyz(self, request: web.Request) -> web.Response:
        status = self.status()
        missing = self.readiness.missing(status)
        owned, _ = self.owners() if status.joined else (set(), {})
        body = {"ready": not missing, "missing": sorted(missing), "detail": missing,
                "partitions": sorted(owned), "url": str(self.app.conf.canonical_url)}
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
        if body is None:
            return answer("unknown_user", {"error": "unknown user", "detail": "no state for this user on its "
                                           "partition", "partition": partition}, 404)
        metrics.LOOKUPS.labels(answer="ok").inc()
        return web.Response(body=body, content_type="application/json")

    def _current_records(self, keys: list[tuple[str, int]]) -> list[bytes | None]:
        """One lookup batch (worker/lookups.py): the lists of (state key, partition), ranked together and
        encoded (the JSON too is lookup work, done inside the batch's share of the loop)."""
        services = self.services
        users = [key for key, _ in keys]
        raws = [self.stored_state(key, partition) for key, partition in keys]
        records = current_records(users, raws, services.model, config=services.config, enricher=services.enricher)
        return [None if record is None else json.dumps({**record, "partition": partition}).encode()
                for record, (_, partition) in zip(records, keys)]


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
