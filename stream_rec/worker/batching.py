"""When a micro-batch closes (pure: no Faust, no clock; worker/intake.py asks it while a batch fills).

DEVELOPERS.md ("Figures behind choices in the code") has the measurements behind the rule: a trickle of
events used to hold a batch open for the whole fill bound, while under a backlog large batches keep the
per-batch costs small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

INTAKE_IDLE_S = 0.001  # a batch is closed early when no event arrived for this long


@dataclass(frozen=True)
class Filling:
    """A batch being filled, as seen now (seconds)."""

    n_events: int
    filling_s: float  # since its first event was added
    idle_s: float  # since the last event was added
    oldest_wait_s: float  # since the stream took its oldest event
    ready: int = 0  # events fetched and in the stream's channel, not taken yet


@dataclass(frozen=True)
class BatchPolicy:
    """``max_events``: a full batch. ``fill_max_s``: the bound on filling, whatever else happens.
    ``max_wait_s``: how long its oldest event may wait (None: no such bound). ``idle_close_s``: how long
    without a new event counts as idle."""

    max_events: int
    fill_max_s: float
    max_wait_s: float | None = None
    idle_close_s: float = INTAKE_IDLE_S

    @classmethod
    def from_settings(cls, settings) -> "BatchPolicy":
        return cls(max_events=settings.batch_max_events,
                   fill_max_s=max(settings.batch_max_wait_ms, settings.batch_fill_max_ms) / 1000.0,
                   max_wait_s=settings.batch_max_wait_ms / 1000.0)

    def close_reason(self, now: Filling, behind: Callable[[], int]) -> str | None:
        """Why the batch closes now, or None to keep filling it.

        ``full``: ``max_events``. ``fill_max``: it has been filling for ``fill_max_s``. Otherwise it closes
        for latency -- ``max_wait``: its oldest event waited ``max_wait_s``, or ``idle``: no event was
        added for ``idle_close_s`` -- once the events already fetched (``now.ready``) are in it, and unless
        a backlog of at least ``max_events`` events waits at the broker (``behind()``, asked only then),
        in which case it fills up. So a trickle of events cannot hold a batch open for ``fill_max_s`` when
        the stream is not behind, and a batch that is late already (its first event waited while the
        previous batch ran) still takes the events that arrived meanwhile instead of leaving them for a
        batch of their own."""
        if now.n_events >= self.max_events:
            return "full"
        if now.filling_s >= self.fill_max_s:
            return "fill_max"
        late = self.max_wait_s is not None and now.oldest_wait_s >= self.max_wait_s
        if not late and now.idle_s < self.idle_close_s:
            return None
        if now.ready > 0 or behind() >= self.max_events:
            return None
        return "max_wait" if late else "idle"

    def next_check_s(self, now: Filling) -> float:
        """How long until the answer of :meth:`close_reason` may change without a new event: the nearest
        deadline, at most ``idle_close_s`` (a backlog may have gone meanwhile); 0 when events are ready
        (the stream takes one per loop iteration)."""
        if now.ready:
            return 0.0
        deadlines = [self.fill_max_s - now.filling_s, self.idle_close_s - now.idle_s, self.idle_close_s]
        if self.max_wait_s is not None:
            deadlines.append(self.max_wait_s - now.oldest_wait_s)
        return max(1e-4, min(t for t in deadlines if t > 0))
