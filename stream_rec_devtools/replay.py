"""`stream-rec replay` (stream_rec/commands/replay.py has its flags): a log streamed through a real broker
and a real worker, every emitted list scored prequentially (``prequential``) beside the offline numbers."""

from __future__ import annotations

import logging

from . import harness

log = logging.getLogger(__name__)


def build_stream(seqs: dict[str, list[tuple[str, float]]], users: list[str], max_events: int = 0):
    """The time-ordered event stream of ``users`` (stable sort: each user's order is kept), cut after
    ``max_events``; plus each user's streamed sequence and which users were streamed whole."""
    flat = [(ts, u, item) for u in users for item, ts in seqs[u]]
    flat.sort(key=lambda t: t[0])  # stable
    if max_events:
        flat = flat[:max_events]
    streamed: dict[str, list[tuple[str, float]]] = {}
    for ts, u, item in flat:
        streamed.setdefault(u, []).append((item, ts))
    complete = {u for u, s in streamed.items() if len(s) == len(seqs[u])}
    return flat, streamed, complete


async def send_paced(producer, settings, flat, scorer, args, on_sent, bar, wake) -> None:
    """Per-user closed loop: a user's next event goes out once the list for its previous event came back
    (or after 10 s); up to ``args.in_flight`` users in flight, the earliest next event first. Cross-user
    order does not matter to the scores (the model is fixed, state is per user); each user's order does."""
    import asyncio
    import heapq
    import time
    from collections import deque

    topic = settings.topic(settings.events_topic)
    queues: dict[str, deque] = {}
    for ts, u, item in flat:
        queues.setdefault(u, deque()).append((ts, item))
    ready = [(q[0][0], u) for u, q in queues.items()]
    heapq.heapify(ready)
    in_flight: dict[str, tuple[int, float]] = {}  # user -> (index sent, when)
    sent_count: dict[str, int] = {}
    pending_acks = []
    t0, n_sent = time.perf_counter(), 0
    while ready or in_flight:
        now = time.monotonic()
        for u, (index, when) in list(in_flight.items()):  # list back (or given up on): the user may go on
            if scorer.position(u) >= index or now - when > 10.0:
                del in_flight[u]
                if queues[u]:
                    heapq.heappush(ready, (queues[u][0][0], u))
        while ready and len(in_flight) < args.in_flight:
            if args.rate > 0 and n_sent >= args.rate * (time.perf_counter() - t0):
                break
            _, u = heapq.heappop(ready)
            ts, item = queues[u].popleft()
            ev = harness.event_record(u, item, ts, args.event_type)
            pending_acks.append(await producer.send(topic, json_bytes(ev), key=u.encode()))
            index = sent_count.get(u, 0)
            sent_count[u] = index + 1
            in_flight[u] = (index, time.monotonic())
            on_sent(n_sent, ev, time.time())
            n_sent += 1
            bar.update(1)
        if len(pending_acks) >= 200 or (pending_acks and not ready):
            await asyncio.gather(*pending_acks)
            pending_acks.clear()
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), 0.01)
        except asyncio.TimeoutError:
            pass
    if pending_acks:
        await asyncio.gather(*pending_acks)


def json_bytes(record: dict) -> bytes:
    import json

    return json.dumps(record).encode()


def offline_numbers(rec, seqs: dict[str, list[tuple[str, float]]], users: list[str]) -> dict:
    """Leave-one-out test numbers of ``rec`` on ``users`` through the `evaluate` code path: each user's
    last event is the target, everything before it the history (seen items excluded)."""
    import numpy as np

    from stream_rec.model.evaluate import EvalCase, evaluate_scorer, recommender_scorer
    from stream_rec.model.sequences import time_gaps

    cases = []
    for u in users:
        seq = seqs[u]
        if len(seq) < 3:
            continue
        hist = [(rec.row_of[i], ts) for i, ts in seq[:-1] if i in rec.row_of]
        target = rec.row_of.get(seq[-1][0])
        if target is None or not hist:
            continue
        cases.append(EvalCase(u, np.array([r for r, _ in hist], dtype=np.int64),
                              np.array(time_gaps([t for _, t in hist]), dtype=np.float32), target))
    return evaluate_scorer(recommender_scorer(rec), cases, desc="offline evaluate", progress=True)


async def replay(args, bootstrap: str) -> dict:
    import json
    from pathlib import Path

    from stream_rec.io.data import read_events, read_items, sequences
    from stream_rec.worker.models import load_newest

    from .prequential import plot_windows

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, rec = load_newest(args.model, device="cpu")
    seqs = sequences(read_events(args.events_file))
    users = list(seqs)[: args.max_users] if args.max_users else list(seqs)
    unknown_items = {i for u in users for i, _ in seqs[u] if i not in rec.row_of}
    if args.items_file:
        catalog = read_items(args.items_file)
        unknown_items |= {i for i in catalog if i not in rec.row_of} & {i for u in users for i, _ in seqs[u]}
    # the worker sends events for items its model does not know to the DLQ; leave them out of the log
    n_before = sum(len(seqs[u]) for u in users)
    seqs = {u: [(i, ts) for i, ts in seqs[u] if i in rec.row_of] for u in users}
    dropped = n_before - sum(len(s) for s in seqs.values())
    users = [u for u in users if seqs[u]]
    seqs = shift_to_now(seqs)
    run = await stream_through_worker(args, bootstrap, seqs, users, model_dir, rec, out)
    scorer, settings, complete = run["scorer"], run["settings"], run["complete"]
    summary = scorer.summary()
    result = {
        "model": {"dir": str(model_dir), "version": rec.version},
        "events": args.events_file,
        "users": len(scorer.sequences),
        "users_streamed_whole": len(complete),
        "events_streamed": run["events_streamed"],
        "events_dropped_unknown_item": dropped,
        "unknown_items": len(unknown_items),
        "order": args.order,
        "in_flight_users": args.in_flight if args.order == "paced" else None,
        "rate_offered": args.rate or "max",
        "worker_history_len": settings.history_len,
        "worker_batch_max_events": settings.batch_max_events,
        "send_seconds": round(run["send_seconds"], 2),
        "events_per_s_end_to_end": (round(run["events_streamed"] / run["drain_seconds"], 1)
                                    if run["drain_seconds"] > 0 else None),
        "all_recommendations_received": run["finished"],
        "interrupted_after_events": run["interrupted_after_events"],
        "prequential": summary,
        "wall_seconds": run["wall_seconds"],
    }
    if not args.no_offline:
        offline_users = sorted(complete)
        result["offline_same_users"] = offline_numbers(rec, seqs, offline_users)
        off = result["offline_same_users"].get("ndcg@10")
        on = summary["test"].get("NDCG@10")
        if off and on is not None:
            result["prequential_test_vs_offline_ndcg"] = round(on / off, 3)
    windows = scorer.windows()
    result["windows"] = windows
    (out / "replay.json").write_text(json.dumps(result, indent=2))
    plot_windows(windows, out / "replay.png",
                 title=f"replay of {run['events_streamed']} events, {len(scorer.sequences)} users, model {rec.version}",
                 offline_ndcg=(result.get("offline_same_users") or {}).get("ndcg@10"))
    result.pop("windows")
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'replay.json'} and {out / 'replay.png'}")
    return result


def shift_to_now(seqs: dict[str, list[tuple[str, float]]]) -> dict[str, list[tuple[str, float]]]:
    """The log shifted to end now. The worker dead-letters timestamps before 2000-01-01 (validation.py,
    bad_timestamp): a log as old as MovieLens-100K (1997-98) would never get a list. The gaps between
    events, which the model reads, stay as they are."""
    import time

    from stream_rec.validation import log_shift

    shift = log_shift((ts for seq in seqs.values() for _, ts in seq), time.time())
    return {u: [(i, ts + shift) for i, ts in seq] for u, seq in seqs.items()}


async def stream_through_worker(args, bootstrap: str, seqs: dict[str, list[tuple[str, float]]], users: list[str],
                                model_dir, rec, out, keep_lists: bool = False) -> dict:
    """Stream the events of ``users`` (``seqs``: each user's ``[(item, ts)]``, timestamps the worker accepts)
    through a worker serving ``model_dir`` on the broker ``bootstrap``, and match every recommendation it
    sends to the event it followed (``PrequentialScorer``; with ``keep_lists`` the lists themselves are kept
    too). ``args``: the replay flags (order, rate, in_flight, event_type, max_events, batch_max_events,
    history_len, timeout_s). Returns the scorer, the worker's settings and the run's timings."""
    import asyncio
    import shutil
    import tempfile
    import time

    from tqdm import tqdm

    from stream_rec.io.kafka import ensure_topics

    from .prequential import PrequentialScorer

    flat, streamed, complete = build_stream(seqs, users, args.max_events)
    test_index = {u: len(streamed[u]) - 1 for u in complete if len(streamed[u]) >= 3}
    scorer = PrequentialScorer(streamed, test_index, keep_lists=keep_lists)
    sent_at: dict[tuple[str, int], float] = {}
    position: dict[str, int] = {}
    log.info("replaying %d events of %d users through model %s (%s)", len(flat), len(streamed), rec.version, model_dir)

    data_dir = tempfile.mkdtemp(prefix="stream-rec-replay-")
    overrides = {"model": str(model_dir)}
    if args.batch_max_events:
        overrides["batch_max_events"] = args.batch_max_events
    if args.history_len:
        overrides["history_len"] = args.history_len
    settings = harness.isolated_settings(bootstrap, data_dir, "replay", **overrides)
    worker = harness.WorkerProcess(settings, log_file=out / "worker.log")
    done_users: set[str] = set()
    bar_recs = None
    interrupted = False

    wake = asyncio.Event()

    def on_record(record: dict, received: float) -> None:
        if record.get("user_id") == harness.PROBE_USER:
            return
        scorer.add(record, received, sent_at)
        wake.set()
        if bar_recs is not None:
            bar_recs.update(1)
        u = record.get("user_id")
        if u in streamed and scorer.done(u):
            done_users.add(u)

    def on_sent(_: int, ev: dict, t: float) -> None:
        u = ev["user_id"]
        i = position.get(u, -1) + 1
        position[u] = i
        sent_at[(u, i)] = t

    collector = harness.RecCollector(settings, on_record=on_record)
    t_start = time.time()
    try:
        await ensure_topics(settings)
        await collector.start()
        worker.start()
        try:
            ready_s = await harness.wait_ready(settings, collector, rec.item_ids[0])
        except TimeoutError:
            raise SystemExit(f"replay: the worker sent no recommendation; its log ends with:\n{worker.log_tail()}")
        log.info("worker ready after %.1f s", ready_s)
        producer = await harness.make_producer(settings)
        events = (harness.event_record(u, item, ts, args.event_type) for ts, u, item in flat)
        quiet = not getattr(args, "progress", True)
        bar_recs = tqdm(total=None, desc="recommendations", unit="rec", position=1, leave=False, mininterval=0.5,
                        disable=quiet)
        t_send = time.time()
        try:
            with tqdm(total=len(flat), desc="events sent", unit="ev", position=0, mininterval=0.5,
                      disable=quiet) as bar:
                if args.order == "time":
                    await harness.send_events(producer, settings, events, rate=args.rate, on_sent=on_sent,
                                              progress=bar)
                else:
                    await send_paced(producer, settings, flat, scorer, args, on_sent, bar, wake)
            send_seconds = time.time() - t_send
            finished = await collector.wait_for(lambda: len(done_users) >= len(streamed), timeout_s=1e9,
                                                idle_s=args.timeout_s)
        except asyncio.CancelledError:  # Ctrl-C: score what came back so far instead of losing it all
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            interrupted = True
            send_seconds = time.time() - t_send
            finished = False
            log.warning("interrupted after %d events: scoring the %d lists received so far", len(sent_at),
                        len(scorer.scored))
        drain_seconds = time.time() - t_send
        await producer.stop()
        bar_recs.close()
        if not worker.alive() and not interrupted:
            raise SystemExit(f"replay: the worker died; its log ends with:\n{worker.log_tail()}")
    finally:
        await collector.stop()
        worker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"scorer": scorer, "settings": settings, "complete": complete, "events_streamed": len(flat),
            "send_seconds": send_seconds, "drain_seconds": drain_seconds, "finished": finished,
            "interrupted_after_events": len(sent_at) if interrupted else None,
            "wall_seconds": round(time.time() - t_start, 1)}
