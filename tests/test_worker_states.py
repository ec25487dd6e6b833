"""The worker's one read of a user's state (``worker/services.read_user_state``): the batch path, the lookup
``GET /recommendations/{user_id}`` and the pages read the same bytes -- states staged and not delivered yet,
tombstones, states delivered to RocksDB, after a rebalance -- with the state cache on and off. Against the
real table (``BatchedChangelogTable``, RocksDB) and a producer on the embedded broker; the worker's own
WorkerContext, from ``build_app``."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from stream_rec.io.topics import key_partition
from stream_rec.pipeline import Incoming, current_record, process_batch_isolating
from stream_rec.commands.forget import delete_user_event

ITEMS = [f"item-{n:02d}" for n in range(12)]
USERS = ["ann", "ben", "cat", "dan"]


def _event(user: str, item: str, ts: float) -> tuple[str, bytes]:
    return user, json.dumps({"user_id": user, "item_id": item, "event_type": "view", "timestamp": ts}).encode()


def _incoming(records, partitions: int, first_offset: int) -> list[Incoming]:
    out = []
    for n, (user, value) in enumerate(records):
        out.append(Incoming(value, user.encode(), topic="events", partition=key_partition(user.encode(), partitions),
                            offset=first_offset + n, received_at=time.time()))
    return out


def _reads(ctx, http, user: str) -> dict:
    """What the batch path, the lookup and the pages read of ``user`` now."""
    from stream_rec.worker.batch import state_reader

    partition = key_partition(user.encode(), ctx.settings.partitions)
    lookup = http.user_state(user, partition)
    record = current_record(user, lookup, ctx.services.model, ctx.services.config, enricher=ctx.services.enricher)
    page = http.pages.user_data(user, partition)
    return {"batch": state_reader(ctx)(user, partition), "lookup": lookup,
            "lookup_items": None if record is None else [i["item_id"] for i in record["items"]],
            "page_items": None if page is None else [i["item_id"] for i in page["items"]]}


def _assert_agree(ctx, http, user: str, present: bool) -> bytes | None:
    seen = _reads(ctx, http, user)
    assert seen["batch"] == seen["lookup"], user
    assert seen["lookup_items"] == seen["page_items"], user
    assert (seen["lookup"] is not None) == present and (seen["page_items"] is not None) == present, (user, seen)
    return seen["lookup"]


@pytest.mark.parametrize("cache_users", [0, 1000], ids=["cache-off", "cache-on"])
def test_batch_path_lookup_and_pages_read_the_same_state(spine_settings, cache_users):
    from stream_rec.worker.app import build_app
    from stream_rec.worker.catalog import untrained_model
    from stream_rec.worker.http import HttpService, bind_listener
    from stream_rec.worker.services import WorkerServices, stage_user_states

    settings = replace(spine_settings, state_cache_users=cache_users)
    services = WorkerServices(settings, untrained_model([{"item_id": i} for i in ITEMS], settings))
    services.config = replace(services.config, partitions=settings.partitions)
    ctx = build_app(settings, services)
    listener = bind_listener(settings)
    http = HttpService(ctx, listener)
    assert http.pages is not None
    now = time.time() - 60

    async def scenario() -> None:
        from stream_rec.worker.batch import state_reader

        def step(records, first_offset):
            incoming = _incoming(records, settings.partitions, first_offset)
            result = process_batch_isolating(incoming, state_reader(ctx), services.model, services.config)
            stage_user_states(services.state_cache, ctx.table, result, incoming)
            return result

        # staged, not delivered: in the table's memory (and the cache, when on)
        first = step([_event(u, ITEMS[n], now + n) for n, u in enumerate(USERS)], 0)
        assert sorted(first.states) == USERS
        staged = {u: _assert_agree(ctx, http, u, present=True) for u in USERS}
        # ann erased (a staged tombstone), ben has a new event on top of his staged state
        step([("ann", json.dumps(delete_user_event("ann", now=now + 10)).encode()),
              _event("ben", ITEMS[5], now + 11)], 10)
        _assert_agree(ctx, http, "ann", present=False)
        assert _assert_agree(ctx, http, "ben", present=True) != staged["ben"]
        # delivered: the changelog records acked, the states written to RocksDB
        futures = await ctx.table.send_changelog_batches()
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert not ctx.table._unflushed
        delivered = {u: _assert_agree(ctx, http, u, present=u != "ann") for u in USERS}
        # a rebalance forgets the cache and what was not written locally: the store answers alone
        services.forget_partitions(ctx.table)
        assert len(services.state_cache) == 0
        assert {u: _assert_agree(ctx, http, u, present=u != "ann") for u in USERS} == delivered

    async def main() -> None:
        await ctx.app.producer.start()
        try:
            await scenario()
        finally:
            await ctx.app.producer.stop()

    try:
        asyncio.run(main())
    finally:
        listener.close()
