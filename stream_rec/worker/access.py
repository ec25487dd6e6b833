"""Who may ask the worker's HTTP listener: a bearer token, checked by one aiohttp middleware.

The listener serves two kinds of routes: the ones probes and Prometheus need (``/metrics``, ``/healthz``,
``/readyz``: open, they say nothing about users) and everything else (``/recommendations/...`` -- a user's
list, its reasons and last items -- and whatever is added later, e.g. a web UI), which needs
``Authorization: Bearer <Settings.http_token>`` when a token is set. Deny by default: a route is open only
when its path is listed in ``open_paths`` or starts with one of ``open_prefixes``. The token is compared in
constant time (``hmac.compare_digest``), and a refused request learns nothing else (401, the same body
whatever the path).

    app = web.Application(middlewares=[AccessPolicy(token, open_paths=OPEN_PATHS).middleware])

:func:`check_token_setting` refuses to start a worker that must have a token and has none
(``Settings.http_token_required``: the Kubernetes manifests set it, the token comes from their Secret).

Browsers: a live page's ``EventSource`` cannot send an Authorization header, so the pages under ``/ui/``
(worker/ui.py) trade the token once, at ``/ui/login``, for an ``HttpOnly``, ``SameSite=Strict`` cookie
(:data:`COOKIE`) that the check accepts in place of the header. A page request without either is sent to
that form (303); every other refused request gets the 401.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable, Iterable

from aiohttp import web

OPEN_PATHS = ("/metrics", "/healthz", "/readyz")  # probes and Prometheus, never a user's data
LOGIN_PATH = "/ui/login"  # the pages' form that trades the token for the cookie (worker/ui.py)
COOKIE = "stream_rec_token"  # the browser's copy of the token (HttpOnly, SameSite=Strict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenMissing(ValueError):
    """``Settings.http_token_required`` without a token (the message says what to set)."""


def check_token_setting(token: str, required: bool) -> None:
    if required and not token:
        raise TokenMissing("STREAM_REC_HTTP_TOKEN_REQUIRED is set but STREAM_REC_HTTP_TOKEN is empty: the lookup "
                           "would be open to anyone who reaches the listener; set the token (Kubernetes: the "
                           "stream-rec-secrets Secret, docs/DEPLOY.md)")


class AccessPolicy:
    """Bearer-token access for every route but the open ones (``token`` empty: everything open)."""

    def __init__(self, token: str, open_paths: Iterable[str] = OPEN_PATHS + (LOGIN_PATH,),
                 open_prefixes: Iterable[str] = ()):
        self._expected = f"Bearer {token}".encode() if token else None
        self._token = token.encode() if token else None
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def is_open(self, path: str) -> bool:
        return self._expected is None or path in self.open_paths or path.startswith(self.open_prefixes)

    def allows(self, authorization: str | None) -> bool:
        """``authorization``: the request's Authorization header (None when absent)."""
        if self._expected is None:
            return True
        given = (authorization or "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._expected)

    def token_matches(self, given: str | None) -> bool:
        """``given`` (a cookie's or the login form's value) is the token; True when there is no token."""
        if self._token is None:
            return True
        return hmac.compare_digest((given or "").encode("utf-8", "surrogateescape"), self._token)

    def admits(self, request: web.Request) -> bool:
        return (self.is_open(request.path) or self.allows(request.headers.get("Authorization"))
                or (COOKIE in request.cookies and self.token_matches(request.cookies[COOKIE])))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.admits(request):
            return await handler(request)
        if request.path.startswith("/ui/") and not request.path.startswith("/ui/api/"):
            raise web.HTTPSeeOther(LOGIN_PATH)  # a person at a browser: the form, not a JSON 401
        return web.json_response({"error": "unauthorized", "detail": "this route needs Authorization: Bearer <token>"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="stream-rec"'})
