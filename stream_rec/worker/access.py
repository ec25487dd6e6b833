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
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable, Iterable

from aiohttp import web

OPEN_PATHS = ("/metrics", "/healthz", "/readyz")  # probes and Prometheus, never a user's data

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

    def __init__(self, token: str, open_paths: Iterable[str] = OPEN_PATHS, open_prefixes: Iterable[str] = ()):
        self._expected = f"Bearer {token}".encode() if token else None
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

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.is_open(request.path) or self.allows(request.headers.get("Authorization")):
            return await handler(request)
        return web.json_response({"error": "unauthorized", "detail": "this route needs Authorization: Bearer <token>"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="stream-rec"'})
