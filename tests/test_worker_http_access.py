"""Who may ask the worker's listener, and what a crowd of askers can do to it (issue 23, part 4).

* ``test_access_policy_*`` / ``test_lookup_batcher_*``: the pure pieces (worker/access.py, worker/lookups.py).
* ``test_lookups_with_a_token_odd_ids_a_crowd_and_half_open_clients``: two real workers with a bearer token:
  lookups without it (or with another) are 401 while /metrics, /healthz and /readyz stay open; ids with
  ``\\n``, ``.``, ``..``, ``/``, ``?`` are answered, and a redirect to the owner carries the id in its query
  and works with the token; 200 concurrent lookups are all answered while events flow; idle and half-open
  connections are closed after ``http_idle_timeout_s`` and connections beyond ``http_max_connections`` at
  once; the ``Server`` header names no software version. (How much a crowd of lookups slows the stream is a
  figure: ``benchmarks/lookup_load.py``, docs/RELIABILITY.md.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from urllib.parse import quote

import pytest
from aiohttp import ClientSession, TCPConnector

from conftest import WorkerProcess, consume, make_settings, produce, scrape, wait_until, write_items
from stream_rec.io.broker import free_port
from stream_rec.io.kafka import ensure_topics
from stream_rec_devtools.synthetic import make_catalog
from stream_rec.worker.access import AccessPolicy, TokenMissing, check_token_setting
from stream_rec.worker.http import user_partition
from stream_rec.worker.lookups import LookupBatcher, LookupsBusy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and signals")

CATALOG = make_catalog(items_per_theme=4)
TOKEN = "s3cret-token"
ODD_IDS = ["line\nbreak", ".", "..", "a/b", "what?#%", "tab\there"]


def test_access_policy_is_deny_by_default_and_compares_the_whole_header():
    policy = AccessPolicy(TOKEN)
    assert policy.is_open("/metrics") and policy.is_open("/readyz") and policy.is_open("/healthz")
    assert not policy.is_open("/recommendations/x") and not policy.is_open("/ui") and not policy.is_open("/metrics/x")
    assert policy.allows(f"Bearer {TOKEN}")
    assert not any(policy.allows(h) for h in (None, "", TOKEN, f"Bearer {TOKEN} ", f"bearer {TOKEN}", "Bearer s3cret",
                                              f"Bearer {TOKEN}\udcff"))
    assert AccessPolicy("").is_open("/recommendations/x") and AccessPolicy("").allows(None)  # no token: open
    assert AccessPolicy(TOKEN, open_prefixes=("/static/",)).is_open("/static/app.js")  # what a UI may add
    with pytest.raises(TokenMissing, match="STREAM_REC_HTTP_TOKEN"):
        check_token_setting("", required=True)
    check_token_setting("", required=False)


def test_lookup_batcher_ranks_a_burst_in_few_batches_and_refuses_beyond_its_bound():
    calls: list[list] = []

    def compute(keys):
        calls.append(list(keys))
        return [f"list of {k}" if k != "bad" else ValueError("bad user") for k in keys]

    async def go():
        batcher = LookupBatcher(compute, max_batch=64, max_pending=150)
        answers = await asyncio.gather(*(batcher.lookup(f"u{n}") for n in range(150)))
        assert answers == [f"list of u{n}" for n in range(150)]
        assert [len(c) for c in calls] == [64, 64, 22]  # three batches, not 150 rankings
        with pytest.raises(ValueError, match="bad user"):
            await batcher.lookup("bad")
        burst = [asyncio.ensure_future(batcher.lookup(f"v{n}")) for n in range(151)]
        await asyncio.sleep(0)
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert sum(isinstance(r, LookupsBusy) for r in results) == 1 and results[0] == "list of v0"
        batcher.close()

    asyncio.run(go())


# --- real workers ---------------------------------------------------------------------------------------------
async def get(session: ClientSession, url: str, token: str | None = TOKEN, follow: bool = False):
    """(status, body, headers) of a GET, with the bearer token; ``follow``: follow one redirect, token kept."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        status, hdrs = response.status, dict(response.headers)
    if follow and status == 307:
        return await get(session, hdrs["Location"], token)
    return status, json.loads(body) if body.startswith(b"{") else body, hdrs


def test_lookups_with_a_token_odd_ids_a_crowd_and_half_open_clients(broker, tmp_path):
    settings = make_settings(broker, tmp_path / "d1", http_token=TOKEN, http_idle_timeout_s=2.0,
                             http_max_connections=64)
    asyncio.run(ensure_topics(settings))
    items = write_items(tmp_path, CATALOG)
    users = ODD_IDS + [f"user-{n}" for n in range(20)]
    now = time.time() - 600
    events = [{"user_id": u, "item_id": CATALOG[(n + k) % len(CATALOG)]["item_id"], "event_type": "view",
               "timestamp": now + k} for n, u in enumerate(users) for k in range(2)]
    s2 = settings.replace(data_dir=tmp_path / "d2", metrics_port=free_port())
    with WorkerProcess(settings, tmp_path / "w1", items=items) as w1, WorkerProcess(s2, tmp_path / "w2", items=items) as w2:
        produce(settings, settings.topic(settings.events_topic), events)
        consume(settings, settings.topic(settings.recommendations_topic), timeout_s=90,
                until=lambda rs: {r["value"]["user_id"] for r in rs if r["value"]["event_timestamp"] == now + 1}
                >= set(users))
        wait_until(lambda: all(len(json.loads(urlopen(w.url("/readyz")))["partitions"]) == 1 for w in (w1, w2)),
                   timeout_s=60, message="each worker owns one partition")
        checks = asyncio.run(_ask(w1, w2, users, settings.partitions, settings.topic(settings.events_topic),
                                  settings, now))
        half_open = _half_open(w1, settings.http_max_connections)
        m = scrape(w1.metrics_url())
        assert w1.alive() and w2.alive(), w1.log_tail() + w2.log_tail()
        logs = w1.log_path.read_text(errors="replace") + w2.log_path.read_text(errors="replace")
    assert TOKEN not in logs
    refused, closed_s = half_open
    assert refused >= 6 and m["stream_rec_http_connections_refused_total"] >= refused, (refused, m)
    assert closed_s and max(closed_s) < settings.http_idle_timeout_s + 2, closed_s
    print(f"\n[figures] lookups: {checks}; half-open: {refused} of 70 closed on arrival (cap 64), the others after "
          f"{min(closed_s):.1f}-{max(closed_s):.1f} s (idle timeout 2 s)")


def urlopen(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


async def _ask(w1, w2, users, partitions, topic, settings, now) -> dict:
    owned = {w: set(json.loads(urlopen(w.url("/readyz")))["partitions"]) for w in (w1, w2)}
    async with ClientSession(connector=TCPConnector(limit=50)) as session:
        for path in ("/metrics", "/healthz", "/readyz"):  # open, token or not
            assert (await get(session, w1.url(path), token=None))[0] == 200
        status, body, headers = await get(session, w1.url("/recommendations/user-0"), token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and headers["Server"] == "stream-rec"
        assert (await get(session, w1.url("/recommendations/user-0"), token="wrong"))[0] == 401
        assert (await get(session, w1.url("/recommendations?user_id=nobody-at-all"), follow=True))[0] == 404
        for user in users:  # the owner answers, the other redirects (id in the query), with the token both ways
            owner = w1 if user_partition(user, partitions) in owned[w1] else w2
            other = w2 if owner is w1 else w1
            for url in (owner.url(f"/recommendations?user_id={quote(user, safe='')}"),
                        other.url(f"/recommendations?user_id={quote(user, safe='')}")):
                status, body, _ = await get(session, url, follow=True)
                assert status == 200 and body["user_id"] == user and len(body["history"]) == 2, (user, status, body)
            if user not in (".", ".."):  # as a path segment too (clients remove dot segments there)
                status, body, _ = await get(session, owner.url(f"/recommendations/{quote(user, safe='')}"))
                assert status == 200 and body["user_id"] == user, (user, status, body)
            status, _, headers = await get(session, other.url(f"/recommendations/{quote(user, safe='')}")
                                           if user not in (".", "..") else
                                           other.url(f"/recommendations?user_id={quote(user, safe='')}"))
            assert status == 307 and headers["Location"] == owner.url(
                f"/recommendations?user_id={quote(user, safe='')}&redirected=1"), (user, headers)
        # a crowd: 200 concurrent lookups (all following redirects) while events flow
        flow = asyncio.get_running_loop().run_in_executor(None, produce, settings, topic, [
            {"user_id": f"flow-{n}", "item_id": CATALOG[n % len(CATALOG)]["item_id"], "event_type": "view",
             "timestamp": now + 10} for n in range(300)])
        started = time.monotonic()
        crowd = await asyncio.gather(*(get(session, (w1, w2)[n % 2].url(f"/recommendations/user-{n % 20}"),
                                           follow=True) for n in range(200)))
        crowd_s = time.monotonic() - started
        await flow
    statuses = [status for status, _, _ in crowd]
    assert statuses == [200] * 200, sorted(set(statuses))
    await _pages_behind_the_token(w1)
    return {"crowd": f"200 lookups in {crowd_s:.2f} s, all 200", "odd ids": len(ODD_IDS)}


async def _pages_behind_the_token(worker) -> None:
    """The pages under /ui/ need the token too: a browser (no header on an EventSource) trades it at the login
    form for an HttpOnly cookie; without it a page is sent to the form and the JSON behind it is 401."""
    from aiohttp import CookieJar

    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:  # unsafe: cookies of 127.0.0.1
        status, _, headers = await get(session, worker.url("/ui/users/user-0"), token=None)
        assert status == 303 and headers["Location"] == "/ui/login", (status, headers)
        assert (await get(session, worker.url("/ui/api/live/user-0"), token=None))[0] == 401
        assert (await get(session, worker.url("/ui/login"), token=None))[0] == 200
        async with session.post(worker.url("/ui/login"), data={"token": "wrong"}, allow_redirects=False) as r:
            assert r.status == 401 and "stream_rec_token" not in r.cookies
        assert (await get(session, worker.url("/ui/api/home"), token=None))[0] == 401
        async with session.post(worker.url("/ui/login"), data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303 and r.cookies["stream_rec_token"]["httponly"] and \
                r.cookies["stream_rec_token"]["samesite"] == "Strict"
        assert (await get(session, worker.url("/ui/api/home"), token=None))[0] == 200  # the cookie, no header
        assert (await get(session, worker.url("/recommendations?user_id=user-0"), token=None))[0] in (200, 307)


def _half_open(worker, cap: int) -> tuple[int, list[float]]:
    """70 connections that send nothing or half a request line: how many were closed on arrival (over the
    cap), and after how many seconds the others were."""
    import select

    opened, socks = time.monotonic(), []
    for n in range(70):
        sock = socket.create_connection((worker.settings.metrics_host, worker.settings.metrics_port), timeout=5)
        if n % 7 == 0:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # a slow client that never finishes its request
        socks.append(sock)
    closed_at: dict[socket.socket, float] = {}
    try:
        while len(closed_at) < len(socks) and time.monotonic() - opened < 10:
            readable, _, _ = select.select([s for s in socks if s not in closed_at], [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed_at[sock] = time.monotonic() - opened
        assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} connections still open after 10 s"
        times = sorted(closed_at.values())
        refused = sum(t < 1.0 for t in times)
        return refused, [t for t in times if t >= 1.0]
    finally:
        for sock in socks:
            sock.close()
