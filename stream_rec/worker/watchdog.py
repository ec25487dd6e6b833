"""Stall detection for the worker: no micro-batch handled for a while although work is waiting.

A worker can stop making progress without crashing: a request to the broker that never returns, a
consumer that stopped fetching, a broker that stopped answering. Nothing then reaches the log, and a lag
gauge alone does not tell a stall from a backlog being worked off -- nor sees a stall when the whole
backlog was fetched before the broker went quiet (lag 0, the events stuck in the worker behind
deliveries that never complete: issue 23). :class:`StallWatchdog` is fed by the worker
(``batch_handled`` after every micro-batch, ``check(...)`` from a timer) with what waits:

* ``waiting``: events the worker has not handled -- the consumer lag at the broker plus the events
  fetched but not acknowledged yet;
* ``undelivered_s``: how long the oldest record handed to the producer has gone unacknowledged;
* ``silent_s``: how long the broker has not answered a fetch of any partition of the worker's.

Stalled = no batch handled for ``warn_after_s`` since one of those started (events waiting, a delivery
pending, the broker silent) -> the worker logs a WARNING saying what it waits on and exports
``stream_rec_stalled_seconds`` / ``stream_rec_ready 0``; ``ready``: not stalled, not recovering (what
``/readyz`` reports); ``should_exit``: stalled for ``exit_after_s`` (0 = never) -> the worker exits with
:data:`STALL_EXIT_STATUS` so that its supervisor (systemd, Kubernetes) restarts it; at-least-once
delivery and the changelog-first state writes make that restart safe. A stall is counted from when its
cause began, not from the last batch: an idle worker whose broker goes quiet is stalled ``warn_after_s``
later, not at once.

:func:`check_stall` is what the worker's lag timer calls (worker/app.py): it feeds the watchdog and turns
its answers into the gauges, the log lines and the exit. ``WorkerServices.watchdog`` is the one instance.

Pure (a clock is injected; no Kafka, no Faust), so it is tested without a broker:

>>> t = [0.0]
>>> dog = StallWatchdog(warn_after_s=30, exit_after_s=300, clock=lambda: t[0])
>>> t[0] = 40.0; dog.check(waiting=0), dog.ready      # idle, nothing waiting: fine
(0.0, True)
>>> dog.check(waiting=5)                              # events just seen waiting: not a stall yet
0.0
>>> t[0] = 75.0; dog.check(waiting=5), dog.stalled    # 35 s without a batch while they wait
(35.0, True)
>>> dog.batch_handled(); dog.check(waiting=5), dog.ready
(0.0, True)
>>> t[0] = 400.0; dog.check(waiting=5, recovering=True), dog.ready, dog.should_exit   # restoring tables
(0.0, False, False)
>>> t[0] = 800.0; dog.check(waiting=5), dog.should_exit  # 400 s without a batch after the recovery
(400.0, True)
>>> dog.batch_handled(); t[0] = 900.0; dog.check(waiting=0, silent_s=40.0), dog.ready   # the broker is quiet
(40.0, False)
>>> dog.batch_handled(); t[0] = 910.0; dog.check(waiting=0, undelivered_s=35.0)   # a batch since: not stuck
0.0
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from .. import metrics

log = logging.getLogger(__name__)

STALL_EXIT_STATUS = 75  # EX_TEMPFAIL: "try again later" -- a supervisor restarts the worker
STALL_LOG_EVERY_S = 30.0  # while a stall lasts, its WARNING is repeated this often


class StallWatchdog:
    def __init__(self, warn_after_s: float, exit_after_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.warn_after_s = warn_after_s
        self.exit_after_s = exit_after_s
        self._clock = clock
        self.last_batch_at = clock()  # the start counts as progress
        self.waiting_since: float | None = None  # when events were first seen waiting (None: none wait)
        self.stalled_for = 0.0  # seconds without a batch since work started waiting (0 = not stalled)
        self.recovering = False

    def batch_handled(self) -> None:
        self.last_batch_at = self._clock()
        self.stalled_for = 0.0

    def check(self, waiting: int, recovering: bool = False, undelivered_s: float = 0.0, silent_s: float = 0.0) -> float:
        """Update from what waits (see the module docstring); returns the stalled seconds (0 = not stalled).
        ``recovering`` (a rebalance, or tables being restored from their changelogs): no batch is expected
        then, so it is not a stall -- but the worker is not ready either."""
        now = self._clock()
        self.recovering = recovering
        if recovering:
            self.last_batch_at = now
        if waiting <= 0:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now
        causes = [now - s for s in (undelivered_s, silent_s) if s > 0]
        if self.waiting_since is not None:
            causes.append(self.waiting_since)
        stuck = now - max(self.last_batch_at, min(causes)) if causes else 0.0
        self.stalled_for = stuck if stuck >= self.warn_after_s else 0.0
        return self.stalled_for

    @property
    def stalled(self) -> bool:
        return self.stalled_for > 0.0

    @property
    def ready(self) -> bool:
        return not self.stalled and not self.recovering

    @property
    def should_exit(self) -> bool:
        return self.exit_after_s > 0 and self.stalled_for >= self.exit_after_s


def check_stall(dog: StallWatchdog, waiting: int, recovering: bool, waits: Callable[[], str],
                undelivered_s: float = 0.0, silent_s: float = 0.0) -> None:
    """Feed ``dog`` (:meth:`StallWatchdog.check`): the ``stream_rec_ready`` / ``stream_rec_stalled_seconds``
    gauges, a WARNING with what the worker waits on (``waits()``) when a stall starts and every
    :data:`STALL_LOG_EVERY_S` while it lasts, and the exit that lets a supervisor restart the worker."""
    before = dog.stalled_for
    stalled = dog.check(waiting, recovering=recovering, undelivered_s=undelivered_s, silent_s=silent_s)
    metrics.READY.set(1 if dog.ready else 0)
    metrics.STALLED_SECONDS.set(stalled)
    if not stalled:
        if before:
            log.warning("stall over: micro-batches handled again after %.0f s", before)
        return
    if not before or stalled // STALL_LOG_EVERY_S != before // STALL_LOG_EVERY_S:
        log.warning("STALLED: no micro-batch handled for %.0f s while %d events wait (oldest undelivered record "
                    "%.0f s, broker silent %.0f s); waiting on: %s", stalled, waiting, undelivered_s, silent_s,
                    waits())
    if dog.should_exit:
        log.error("stalled for %.0f s (stall_exit_s=%.0f): exiting with status %d so that a supervisor restarts "
                  "the worker (uncommitted events are redelivered)", stalled, dog.exit_after_s, STALL_EXIT_STATUS)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(STALL_EXIT_STATUS)  # not a graceful stop: that would wait on what is stuck
