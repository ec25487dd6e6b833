"""The worker's pages, under ``/ui/`` on its one HTTP listener (worker/http.py mounts :meth:`UiPages.app`
there when ``Settings.ui`` is on). Read-only: every route is a GET.

=================================  ====================================================================
``/ui/``                           find a user (by id) or an item (by id or words of its text); the users
                                   of this worker's latest lists, the items it showed most in the hour
``/ui/users/{user_id}``            the user's list (scores, reasons), interest profile, last events, model;
                                   updated live from ``/ui/api/live/{user_id}`` (Server-Sent Events) when
                                   the worker emits a new list for the user. Answered by the owner of the
                                   user's partition: another worker answers 307 to it, like the lookup
``/ui/items/{item_id}``            the item's text, when it joined the catalogue, whether it is fresh, how
                                   often and why this worker showed it in the last hour
``/ui/system``                     events/s, latency p50/p99, lag, batch size, readiness, model: charts of
                                   the last minutes from the worker's own metrics (worker/sampler.py)
``/ui/api/...``                    the JSON behind each page; ``/ui/static/{name}``: the pages' files
=================================  ====================================================================

The pages are served on the listener's own thread, not the stream's loop (worker/listener.py: what they
read of the stream's objects is read as that module says). The pages are plain HTML/CSS/JS files shipped in the package (worker/static/), no build step and nothing
from another origin: a strict Content-Security-Policy (scripts and styles of this origin only, no inline
script) goes with every answer, and the scripts put data into the DOM with ``textContent`` only. A user's
data comes from :func:`~stream_rec.worker.services.read_user_state` and ``pipeline.current_record``, the
reads of the lookup ``GET /recommendations/{user_id}``, so the page shows the list the lookup returns.

Access control: every route lives in the one sub-application :meth:`UiPages.app` builds; a middleware
given as ``middlewares`` runs before each of them (the lookup's access control belongs there).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import web

from ..pipeline import PipelineConfig, current_record, read_state
from ..recsys.freshness import serving_policy
from .access import COOKIE
from .listener import ranked_while_unchanged
from .live import ERASED, STOPPING, UiState
from .sampler import MetricsSampler
from .table import StoreNotOpen
from .views import REDIRECTED, id_problem, item_view, path_segment, title_of, user_view

log = logging.getLogger(__name__)

PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
HEARTBEAT_S = 15.0  # an idle live page gets a comment line this often (a gone client is noticed then)
WRITE_TIMEOUT_S = 10.0  # a live page that does not take an update within this is closed
ANY_ID = r"[\s\S]+"  # any characters (a newline too): ids are checked by views.id_problem, not by the route


def load_static() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of every file in worker/static/ (the only files served)."""
    root = resources.files(__package__) / "static"
    out = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


class UiPages:
    """The pages of one worker. ``host``: the HTTP service (worker/http.py), which knows where a user is
    answered (``locate``), reads states (``user_state``), and whether the worker is ready (``is_ready``)."""

    def __init__(self, host: Any, ui: UiState):
        self.host = host
        self.ui = ui
        self.static = load_static()
        self.sampler = MetricsSampler(host.is_ready)

    def app(self, middlewares=()) -> web.Application:
        """The sub-application of every route under ``/ui/`` (``middlewares`` first, then the guard)."""
        sub = web.Application(middlewares=[*middlewares, self._guard])
        get = sub.router.add_get
        get("/", self._page("index.html"))
        get("/system", self._page("system.html"))
        get("/users/{user_id:" + ANY_ID + "}", self.user_page)
        get("/items/{item_id:" + ANY_ID + "}", self.item_page)
        get("/static/{name}", self.static_file)
        get("/api/home", self.api_home)
        get("/api/search", self.api_search)
        get("/api/system", self.api_system)
        get("/api/users/{user_id:" + ANY_ID + "}", self.api_user)
        get("/api/items/{item_id:" + ANY_ID + "}", self.api_item)
        get("/api/live/{user_id:" + ANY_ID + "}", self.api_live)
        get("/login", self._page("login.html"))
        sub.router.add_post("/login", self.login)  # the one POST: trades the token for a cookie (worker/access.py)
        sub.router.add_route("*", "/{rest:[\\s\\S]*}", self.not_found)  # last: anything else under /ui/
        return sub

    def close(self) -> None:
        """The worker stops: every live page ends (their handlers return, the listener can close)."""
        self.ui.watchers.close_all(STOPPING)

    # --- answers --------------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Security headers on every answer; an unexpected error is a 500 page without its traceback."""
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except StoreNotOpen:  # a rebalance is moving the user's partition (worker/table.py)
            response = self.error(503, "Moving", "The user's partition is moving between workers; ask again "
                                  "shortly.", api=request.path.startswith(PREFIX + "/api/"), **{"Retry-After": "1"})
        except Exception:
            log.exception("a /ui/ page failed")
            response = self.error(500, "Internal error", "The worker could not build this page; its log says why.",
                                  api=request.path.startswith(PREFIX + "/api/"))
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def error(self, status: int, title: str, message: str, api: bool = False, **headers: str) -> web.Response:
        """An error answer: JSON for /ui/api/, else the error page (every part escaped)."""
        if api:
            return web.json_response({"error": title, "detail": message}, status=status, headers=headers)
        template = self.static["error.html"][0].decode()
        body = template.replace("{status}", str(status)).replace("{title}", html.escape(title)).replace(
            "{message}", html.escape(message))
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=headers)

    def _page(self, name: str):
        async def handler(request: web.Request) -> web.Response:
            return self.file(name)
        return handler

    def file(self, name: str) -> web.Response:
        body, content_type = self.static[name]
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def static_file(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in self.static:
            return await self.not_found(request)
        return self.file(request.match_info["name"])

    async def not_found(self, request: web.Request) -> web.Response:
        api = request.path.startswith(PREFIX + "/api/")
        if request.method not in ("GET", "HEAD"):
            return self.error(405, "Read-only", "These pages only answer GET requests.", api, Allow="GET")
        return self.error(404, "Not found", "There is no such page here. Start from /ui/.", api)

    async def login(self, request: web.Request) -> web.Response:
        """The login form's POST: the right token sets the cookie the access check accepts (HttpOnly: no
        script reads it; SameSite=Strict: no other site's page sends it) and goes to /ui/."""
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not self.host.access.token_matches(token):
            return self.error(401, "Wrong token", "That is not this worker's token (STREAM_REC_HTTP_TOKEN).")
        response = web.HTTPSeeOther(PREFIX + "/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise response

    # --- users ----------------------------------------------------------------------------------------
    def where(self, request: web.Request, kind: str, api: bool) -> tuple[str, int, web.Response | None]:
        """(user id, partition, None) when this worker answers for the user; else the answer to give: a bad
        id (400), a redirect to the owner (307, as the lookup), or an unknown owner (503)."""
        user_id = request.match_info["user_id"]
        problem = id_problem(user_id)
        if problem is not None:
            return user_id, -1, self.error(400, "Not a user id", problem + ".", api)
        partition, where = self.host.locate(user_id, REDIRECTED in request.query)
        if where.kind == "redirect":
            location = f"{where.url}{PREFIX}/{kind}/{path_segment(user_id)}?{REDIRECTED}=1"
            return user_id, partition, web.json_response({"redirect": where.url, "partition": partition},
                                                         status=307, headers={"Location": location})
        if where.kind == "unknown":
            return user_id, partition, self.error(503, "Owner unknown", f"{where.reason}.", api, **{"Retry-After": "1"})
        return user_id, partition, None

    def user_data(self, user_id: str, partition: int) -> dict | None:
        """The user page's data from the lookup's reads (None: no state, or no model yet)."""
        services = self.host.services
        model, raw = services.model, self.host.user_state(user_id, partition)
        record = ranked_while_unchanged(model, lambda: current_record(self.host.user_key(user_id), raw, model,
                                                                       services.config, enricher=services.enricher))
        if record is None:
            return None
        view = user_view(user_id, record, read_state(raw, model), self.ui.items, model=model, partition=partition,
                         source="lookup")
        return {**view, "worker": self.host.settings.http_url}

    async def user_page(self, request: web.Request) -> web.Response:
        user_id, partition, answer = self.where(request, "users", api=False)
        if answer is not None:
            return answer
        if self.host.services.model is None:
            return self.error(503, "No model yet", "The worker has no model yet: no catalogue has arrived.",
                              **{"Retry-After": "5"})
        if not self.host.user_state(user_id, partition):
            return self.error(404, "Unknown user", "This worker owns the user's partition and holds no state for "
                                                   "this id: no event of it was applied, or it was erased.")
        return self.file("user.html")

    async def api_user(self, request: web.Request) -> web.Response:
        user_id, partition, answer = self.where(request, "api/users", api=True)
        if answer is not None:
            return answer
        if self.host.services.model is None:
            return self.error(503, "no model yet", "no catalogue has arrived", api=True)
        view = self.user_data(user_id, partition)
        if view is None:
            return self.error(404, "unknown user", "no state for this user on its partition", api=True)
        return web.json_response(view)

    async def api_live(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``list`` (the user page's data, each time the worker emits a list for the
        user), then ``erased`` / ``moved`` / ``stopping`` when the page's user is gone from here."""
        user_id, partition, answer = self.where(request, "api/live", api=True)
        if answer is not None:
            return self.error(409, "moved", "ask the page again", api=True) if answer.status == 307 else answer
        sub = self.ui.watchers.subscribe(self.host.user_key(user_id), loop=asyncio.get_running_loop())
        if sub is None:
            return self.error(503, "too many live pages", f"at most {self.ui.watchers.max_pages}", api=True)
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await self._send(response, "retry: 2000\n\n")
            await self._stream(request, response, sub, user_id=user_id, partition=partition)
        except (ConnectionError, asyncio.TimeoutError, RuntimeError):
            pass  # the page went away, or stopped reading
        finally:
            self.ui.watchers.unsubscribe(sub)
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, sub, user_id: str,
                      partition: int) -> None:
        while request.transport is not None and not request.transport.is_closing():
            if not await sub.wait(HEARTBEAT_S):
                await self._send(response, ": still here\n\n")
                continue
            updates = sub.take()
            if updates and not sub.ended:  # only the newest list matters to the page
                raw = self.host.user_state(user_id, partition)
                if not raw:
                    sub.end(ERASED)
                else:
                    model = self.host.services.model
                    view = user_view(user_id, updates[-1], read_state(raw, model), self.ui.items, model=model,
                                     partition=partition, source="stream")
                    view["dropped"] = sub.dropped
                    await self._send(response, f"event: list\ndata: {json.dumps(view)}\n\n")
            if sub.ended:
                await self._send(response, f"event: {sub.ended}\ndata: {{}}\n\n")
                return

    @staticmethod
    async def _send(response: web.StreamResponse, text: str) -> None:
        await asyncio.wait_for(response.write(text.encode()), WRITE_TIMEOUT_S)

    # --- items, search, home, system ------------------------------------------------------------------
    def item_data(self, item_id: str) -> dict | None:
        settings, model = self.host.settings, self.host.services.model
        policy = serving_policy(PipelineConfig.from_settings(settings).freshness, model)
        view = item_view(item_id, model, self.ui.items, self.ui.exposure,
                         fresh_max_age_s=policy.max_age_s, fresh_slots=policy.slots)
        return None if view is None else {**view, "worker": settings.http_url}

    async def item_page(self, request: web.Request) -> web.Response:
        item_id = request.match_info["item_id"]
        problem = id_problem(item_id)
        if problem is not None:
            return self.error(400, "Not an item id", problem + ".")
        if self.item_data(item_id) is None:
            return self.error(404, "Unknown item", "Neither the catalogue nor the model knows this item id.")
        return self.file("item.html")

    async def api_item(self, request: web.Request) -> web.Response:
        item_id = request.match_info["item_id"]
        problem = id_problem(item_id)
        view = None if problem else self.item_data(item_id)
        if view is None:
            return self.error(400 if problem else 404, "bad item id" if problem else "unknown item",
                              problem or "neither the catalogue nor the model knows it", api=True)
        return web.json_response(view)

    def _titled(self, item_ids) -> list[dict]:
        model = self.host.services.model
        return [{"item_id": i, "title": title_of(i, self.ui.items, model)} for i in item_ids]

    async def api_search(self, request: web.Request) -> web.Response:
        """``q``: a user id (is it a user here?) and/or an item id or words of item texts."""
        query = request.query.get("q", "")[:300]
        user = None
        if query.strip() and id_problem(query) is None:
            partition, where = self.host.locate(query, False)
            known = bool(self.host.user_state(query, partition)) if where.kind == "here" else None
            user = {"user_id": query, "here": where.kind == "here", "known": known}
        return web.json_response({"query": query, "user": user, "items": self._titled(self.ui.items.search(query))})

    async def api_home(self, request: web.Request) -> web.Response:
        users = []
        if not self.host.settings.pseudonymize_key:  # pseudonyms are no ids a page can be asked for
            for user_id in self.ui.recent_users(24):
                partition, where = self.host.locate(user_id, False)
                if where.kind == "here" and self.host.user_state(user_id, partition):
                    users.append(user_id)
        top = self.ui.exposure.top(10)
        items = [{**entry, "shown": n} for entry, (_, n) in zip(self._titled(i for i, _ in top), top)]
        return web.json_response({"users": users[:12], "top_items": items, "url": self.host.settings.http_url,
                                  "catalogue_items": len(self.ui.items.items)})

    async def api_system(self, request: web.Request) -> web.Response:
        status = self.host.status()
        missing = self.host.readiness.missing(status)
        model = self.host.services.model
        return web.json_response({
            "series": self.sampler.series(), "ready": not missing, "missing": missing,
            "model_version": model.version if model is not None else None,
            "trained": bool(model is not None and model.trained), "live_pages": len(self.ui.watchers),
            "url": self.host.settings.http_url})
