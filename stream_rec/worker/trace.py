"""The worker's side of the latency microscope (``benchmarks/profile_worker.py`` joins it with the latency
of every event): off unless ``Settings.trace_file`` is set. When it is, the worker keeps, in memory, when
each micro-batch went through each leg and what else ran on its event loops and threads, and writes it
to that file (JSON lines) when it exits. When tracing is off nothing here is installed, and the batch
handler's only cost is one ``if`` per mark.

Records (lists; every time is wall-clock ``time.time()`` seconds, the clock of the bench on the same host):

``["response", t, [[topic, partition, first_offset], ...]]``
    a fetch response with records reached aiokafka's fetcher in the consumer thread (the records from
    ``first_offset`` on, until the next response of the partition);
``["fetch", t_thread, t_loop, [[topic, partition, first_offset, last_offset], ...]]``
    records handed over by aiokafka in the consumer thread at ``t_thread``, received by the worker's event
    loop at ``t_loop`` (``transport.TracedConsumerThread``);
``["batch", seq, closed_by, t_closed, [[partition, offset, t_taken], ...], [[mark, t, cpu], ...],
[[phase, s], ...], [[user_id, event_timestamp, index], ...]]``
    one micro-batch: why and when it closed (``batching.BatchPolicy.close_reason``), its events (taken = the stream
    took it from its channel), the batch handler's marks (``BatchTrace.mark``: start, queries, process,
    stage, changelog, sent, settled, end; ``cpu`` = the loop thread's CPU seconds then, so a phase's CPU
    time can be told from its wall time), ``pipeline.process_batch``'s phases (seconds) and one entry per
    recommendation (the batch index of the event it answers);
``["delivered", seq, t]``
    the last of the batch's records (changelog and recommendations) acknowledged by the broker;
``["span", kind, t0, t1, thread, detail, cpu]``
    what else ran: ``gc`` (a collection, ``detail`` its generation), ``callback`` (an event-loop callback
    or task step of at least ``SLOW_CALLBACK_S``, ``detail`` the coroutine or function), ``thread`` (work of
    ``asyncio.to_thread``/executor threads, same threshold), ``commit`` / ``flush`` / ``tables.on_commit``
    (Faust's offset commit, the producer flush before it, the tables' commit hook); ``cpu``: the CPU seconds
    of the thread over a callback or executor span (below its wall time: the thread waited for the GIL or
    for a core), else null.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread as futures_thread
import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

SLOW_CALLBACK_S = 0.001  # loop callbacks and executor work shorter than this are not recorded


def _callback_name(callback: Any) -> str:
    """What a loop callback runs: a task step names the task's coroutine; else the function."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()  # None once the task is done (the tracer crashed the worker on it)
        return "task " + (getattr(coro, "__qualname__", None) or repr(coro))
    func = getattr(callback, "func", callback)  # functools.partial
    name = getattr(func, "__qualname__", None) or type(func).__name__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


class Tracer:
    """The trace of one worker process. :meth:`install` hooks the process (GC, loop callbacks, executor
    threads); :meth:`install_app` hooks Faust's commit path; records are written by :meth:`write` (at exit)."""

    def __init__(self, path: str | Path, slow_s: float = SLOW_CALLBACK_S):
        self.path = Path(path)
        self.slow_s = slow_s
        self.records: list[tuple] = []  # tuples of atoms: the cyclic GC stops tracking them
        self._seq = 0
        self._gc_started: dict[int, float] = {}
        self._undo: list = []
        self._perf_to_wall = time.time() - time.perf_counter()

    # --- records ---------------------------------------------------------------------------------------
    def fetch(self, t_thread: float, t_loop: float, records: dict) -> None:
        self.records.append(("fetch", t_thread, t_loop, tuple((tp.topic, tp.partition, recs[0].offset, recs[-1].offset)
                                                              for tp, recs in records.items() if recs)))

    def response(self, t: float, fetched: list) -> None:
        if fetched:
            self.records.append(("response", t, tuple(fetched)))

    def span(self, kind: str, t0: float, t1: float, detail: str = "", cpu: float | None = None) -> None:
        self.records.append(("span", kind, t0, t1, threading.current_thread().name, detail, cpu))

    def batch(self, events: Sequence[Any]) -> "BatchTrace":
        self._seq += 1
        return BatchTrace(self, self._seq, events)

    # --- hooks -------------------------------------------------------------------------------------------
    def install(self) -> None:
        """GC collections, slow event-loop callbacks (every loop of the process: the worker's and the
        consumer thread's) and slow executor work become spans; the trace is written at exit."""
        gc.callbacks.append(self._on_gc)
        self._undo.append(lambda: gc.callbacks.remove(self._on_gc))
        tracer, slow_s, to_wall, perf, cpu = self, self.slow_s, self._perf_to_wall, time.perf_counter, time.thread_time

        handle_run = asyncio.events.Handle._run

        def _run(handle):
            callback, t0, c0 = handle._callback, perf(), cpu()
            handle_run(handle)
            t1 = perf()
            if t1 - t0 >= slow_s:
                tracer.span("callback", t0 + to_wall, t1 + to_wall, detail=_callback_name(callback), cpu=cpu() - c0)

        asyncio.events.Handle._run = _run
        self._undo.append(lambda: setattr(asyncio.events.Handle, "_run", handle_run))

        work_run = futures_thread._WorkItem.run

        def run(item):
            t0, c0 = perf(), cpu()
            work_run(item)
            t1 = perf()
            if t1 - t0 >= slow_s:
                tracer.span("thread", t0 + to_wall, t1 + to_wall, detail=_callback_name(item.fn), cpu=cpu() - c0)

        futures_thread._WorkItem.run = run
        self._undo.append(lambda: setattr(futures_thread._WorkItem, "run", work_run))
        atexit.register(self.write)
        self._undo.append(lambda: atexit.unregister(self.write))

    def install_app(self, app) -> None:
        """Spans for Faust's offset commit (``consumer.force_commit``), the producer flush it starts with and
        ``tables.on_commit``. Call once the app's consumer exists (the agent does, before its first batch)."""
        self._wrap(app.consumer, "force_commit", "commit")
        self._wrap(app.producer, "flush", "flush")
        self._wrap(app.tables, "on_commit", "tables.on_commit")

    def _wrap(self, obj: Any, method: str, kind: str) -> None:
        inner = getattr(obj, method)
        tracer = self
        if asyncio.iscoroutinefunction(inner):
            async def wrapper(*args, **kwargs):
                t0 = time.time()
                try:
                    return await inner(*args, **kwargs)
                finally:
                    tracer.span(kind, t0, time.time())
        else:
            def wrapper(*args, **kwargs):
                t0 = time.time()
                try:
                    return inner(*args, **kwargs)
                finally:
                    tracer.span(kind, t0, time.time())
        setattr(obj, method, wrapper)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started[info["generation"]] = time.time()
        else:
            t0 = self._gc_started.pop(info["generation"], None)
            if t0 is not None:
                self.span("gc", t0, time.time(), f"gen{info['generation']} collected {info.get('collected', 0)}")

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def write(self) -> None:
        """Write every record (JSON lines) to ``path``; the records are kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        log.info("trace: %d records written to %s", len(self.records), self.path)


class BatchTrace:
    """The legs of one micro-batch, marked by the batch handler (worker/batch.py)."""

    __slots__ = ("tracer", "seq", "events", "marks", "closed_by", "t_closed")

    def __init__(self, tracer: Tracer, seq: int, events: Sequence[Any]):
        self.tracer, self.seq = tracer, seq
        wall, mono = time.time(), time.monotonic()
        self.events = tuple((e.message.partition, e.message.offset,
                             wall - (mono - e.message.time_in) if e.message.time_in else None) for e in events)
        closed_at = getattr(events, "closed_at", None)  # intake.Batch: loop.time() is monotonic here
        self.closed_by = getattr(events, "closed_by", "")
        self.t_closed = wall - (mono - closed_at) if closed_at is not None else wall
        self.marks: list[tuple] = [("start", wall, time.thread_time())]

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time(), time.thread_time()))

    def deliveries(self, futures: Sequence[asyncio.Future]) -> None:
        """Record when the last of ``futures`` (this batch's records) is done."""
        left = [len(futures)]
        records, seq = self.tracer.records, self.seq

        def done(_future) -> None:
            left[0] -= 1
            if left[0] == 0:
                records.append(("delivered", seq, time.time()))

        for future in futures:
            future.add_done_callback(done)

    def finish(self, result) -> None:
        self.mark("end")
        recs = tuple((r["user_id"], r["event_timestamp"], result.last_index.get(r["user_id"]))
                     for r in result.recommendations)
        self.tracer.records.append(("batch", self.seq, self.closed_by, self.t_closed, self.events, tuple(self.marks),
                                    tuple(result.phase_seconds.items()), recs))
