"""What the worker reads of Faust's and aiokafka's state, best effort (a consumer that is not started, or
is rebalancing, answers nothing useful): the consumer lag, the events taken but not acknowledged, how
long the broker has been silent, whether a rebalance or a recovery is under way, and what the worker
waits on (the stall WARNING). The private names read here are listed in worker/internals.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator, Sequence

import faust


def _assigned(app: faust.App, topic: str | None = None) -> Iterator[tuple[Any, int | None, int | None]]:
    """(partition, last read offset, high watermark) of each partition assigned to the worker's consumer
    (of ``topic`` only, when given). Reads Faust's consumer internals; raises when it is not started."""
    consumer = app.consumer
    read = consumer._read_offset
    for tp in sorted(consumer.assignment()):
        if topic is None or tp.topic == topic:
            yield tp, read.get(tp), consumer.highwater(tp)


class ConsumerLag:
    """The consumer lag of ``topic``: the sum over its assigned partitions of high watermark - (last read
    offset + 1). Called: the lag now, or the last one known while the consumer is not started or is
    rebalancing (0 before any)."""

    def __init__(self, app: faust.App, topic: str):
        self.app, self.topic, self.last = app, topic, 0

    def __call__(self) -> int:
        try:
            self.last = sum(max(0, high - (pos + 1 if pos is not None else 0))
                            for _, pos, high in _assigned(self.app, self.topic) if high is not None)
        except Exception:  # not started / rebalancing: keep the last value
            pass
        return self.last


def events_unacked(app: faust.App, topic: str) -> int:
    """Events of ``topic`` the worker's consumer handed to the stream that are not acknowledged yet (taken,
    buffered, or in a batch being handled). Reads Faust's ``Consumer.unacked``."""
    try:
        return sum(1 for m in list(app.consumer.unacked) if not m.acked and m.topic == topic)
    except Exception:  # not started
        return 0


def broker_silence_s(app: faust.App) -> float:
    """Seconds since the broker last answered a fetch of the worker's consumer (0: unknown, or no
    partition assigned). Reads the consumer thread through Faust's ``Consumer._thread``."""
    try:
        answered = app.consumer._thread.fetch_answered_at()
    except Exception:  # not started / rebalancing
        return 0.0
    return max(0.0, time.time() - answered) if answered is not None else 0.0


def recovering(app: faust.App) -> bool:
    """A rebalance, or tables being restored from their changelogs: no micro-batch is expected then."""
    return bool(app.rebalancing or app.in_recovery)


def waits_of(app: faust.App, pending_sends: Sequence[asyncio.Future]) -> str:
    """What the worker is waiting on, for the stall WARNING (each part best effort): the deliveries of the
    batches in flight (``pending_sends``), the producer's queue, the partitions behind, paused or stopped flow."""
    pending = [f for f in pending_sends if not f.done()]
    parts = [f"{len(pending)} of the in-flight batches' {len(pending_sends)} deliveries unanswered",
             f"broker last answered a fetch {broker_silence_s(app):.1f} s ago"]
    try:
        accumulator = app.producer._ensure_producer()._message_accumulator
        parts.append(f"{sum(len(q) for q in accumulator._batches.values())} record batches queued in the producer")
    except Exception:
        pass
    try:
        behind = [f"{tp.topic}[{tp.partition}] read {pos} of {high}" for tp, pos, high in _assigned(app)
                  if high is not None and (pos is None or pos + 1 < high)]
        parts.append("partitions behind: " + (", ".join(behind) or "none"))
        consumer = app.consumer
        if consumer._paused_partitions:
            parts.append(f"paused: {sorted(consumer._paused_partitions)}")
        if not consumer.flow_active:
            parts.append("consumer flow stopped (rebalance?)")
    except Exception as exc:
        parts.append(f"consumer state unreadable ({exc!r})")
    return "; ".join(parts)
