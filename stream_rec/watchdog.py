"""Stall detection for the worker: no micro-batch handled for a while although events are waiting.

A worker can stop making progress without crashing: a request to the broker that never returns, a
consumer that stopped fetching. Nothing then reaches the log, and a lag gauge alone does not tell a
stall from a backlog being worked off. :class:`StallWatchdog` is fed by the worker (``batch_handled``
after every micro-batch, ``check(lag)`` from a timer) and answers:

* ``stalled``: events wait (lag > 0) and no batch was handled for ``warn_after_s`` -> the worker logs a
  WARNING saying what it waits on and exports ``stream_rec_stalled_seconds`` / ``stream_rec_ready 0``;
* ``ready``: not stalled (what a ``/readyz`` endpoint reports);
* ``should_exit``: stalled for ``exit_after_s`` (0 = never) -> the worker exits with
  :data:`STALL_EXIT_STATUS` so that its supervisor (systemd, Kubernetes) restarts it; at-least-once
  delivery and the changelog-first state writes make that restart safe.

Pure (a clock is injected), so it is tested without Kafka:

>>> t = [0.0]
>>> dog = StallWatchdog(warn_after_s=30, exit_after_s=300, clock=lambda: t[0])
>>> t[0] = 40.0; dog.check(lag=0), dog.ready        # idle, nothing waiting: fine
(0.0, True)
>>> dog.check(lag=5), dog.stalled                   # 40 s without a batch while 5 events wait
(40.0, True)
>>> dog.batch_handled(); dog.check(lag=5), dog.ready
(0.0, True)
>>> t[0] = 400.0; dog.check(lag=5, recovering=True), dog.ready, dog.should_exit   # restoring tables
(0.0, False, False)
>>> t[0] = 800.0; dog.check(lag=5), dog.should_exit  # 400 s without a batch after the recovery
(400.0, True)
"""

from __future__ import annotations

import time
from typing import Callable

STALL_EXIT_STATUS = 75  # EX_TEMPFAIL: "try again later" -- a supervisor restarts the worker


class StallWatchdog:
    def __init__(self, warn_after_s: float, exit_after_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.warn_after_s = warn_after_s
        self.exit_after_s = exit_after_s
        self._clock = clock
        self.last_batch_at = clock()  # the start counts as progress
        self.stalled_for = 0.0  # seconds without a batch while events wait (0 = not stalled)
        self.recovering = False

    def batch_handled(self) -> None:
        self.last_batch_at = self._clock()
        self.stalled_for = 0.0

    def check(self, lag: int, recovering: bool = False) -> float:
        """Update from the current consumer lag; returns the stalled seconds (0 = not stalled).
        ``recovering`` (a rebalance, or tables being restored from their changelogs): no batch is expected
        then, so it is not a stall -- but the worker is not ready either."""
        self.recovering = recovering
        if recovering:
            self.last_batch_at = self._clock()
        idle = self._clock() - self.last_batch_at
        self.stalled_for = idle if lag > 0 and idle >= self.warn_after_s else 0.0
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
