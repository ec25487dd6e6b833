"""The one loop that follows the ``catalog`` and ``control`` topics, with what keeps a record from stopping
the worker.

Every worker reads both topics whole, group-less (``io.kafka.follow_from_beginning``: a consumer group
would give each worker only some partitions). Records come from outside, so each one is contained:

* a record whose headers are not what a producer may write (a header key that is not UTF-8, passed on
  escaped by ``io.records``; ``io.topics.read_headers``) is an ``Invalid`` ``bad_header`` before it is parsed;
* ``parse(message)`` turns it into a value to apply, an :class:`~stream_rec.validation.Invalid` or None
  (nothing to do: a tombstone, a command older than the worker). It must not raise: the parsers are
  bounded (stream_rec/boundedjson.py);
* an ``Invalid`` is skipped with one WARNING line -- where the record is, why, its size, never its
  content -- and counted in ``stream_rec_records_skipped_total{topic, reason}`` (:func:`skip_record`);
* the values of one poll go to ``apply`` together; if that raises, one at a time, so one record that
  cannot be applied is skipped (``apply_failed``) and the others still are. ``apply`` must therefore
  take a record it applied already again (catalog records and reload requests do).

The catalog topic is read from the beginning at every start: a record that stopped the worker would
stop it again at every restart.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any, Awaitable, Callable, Sequence

from .. import metrics
from ..io.kafka import follow_from_beginning
from ..io.topics import read_headers
from ..validation import Invalid

log = logging.getLogger(__name__)

Parse = Callable[[Any], Any]  # a ConsumerRecord -> a value | Invalid | None
Apply = Callable[[Sequence[tuple[Any, Any]]], Awaitable[Any]]  # [(ConsumerRecord, value)] -> anything


async def follow_records(settings, topic: str, role: str, parse: Parse, apply: Apply, poll_ms: int,
                         max_records: int) -> None:
    """Follow ``topic`` forever: parse, skip, apply (see above). ``role`` (``catalog``, ``control``) names
    the topic in log lines and in the skipped counter's ``topic`` label."""
    async with aclosing(follow_from_beginning(settings, topic, poll_ms, max_records)) as polls:
        async for fetched in polls:
            records = []
            for message in fetched:
                problem = read_headers(message.headers)[1]
                value = Invalid("bad_header", problem) if problem else parse(message)
                if isinstance(value, Invalid):
                    skip_record(role, value.reason, message, value.detail)
                elif value is not None:
                    records.append((message, value))
            if records:
                await apply_contained(role, records, apply)


async def apply_contained(role: str, records: Sequence[tuple[Any, Any]], apply: Apply) -> None:
    """``apply(records)``; if it raises, each record on its own, a record that raises again skipped."""
    try:
        await apply(records)
        return
    except Exception as exc:
        log.error("%s: applying %d records failed (%r); applying them one at a time", role, len(records), exc)
    for record in records:
        try:
            await apply([record])
        except Exception as exc:
            skip_record(role, "apply_failed", record[0], repr(exc)[:200])


def skip_record(role: str, reason: str, message, detail: str) -> None:
    """A ``catalog``/``control`` record the worker cannot use: one WARNING line and the skipped counter."""
    log.warning("%s: skipping the record at partition %s offset %s (%d bytes): %s: %s", role,
                getattr(message, "partition", "?"), getattr(message, "offset", "?"),
                len(getattr(message, "value", None) or b""), reason, detail)
    metrics.RECORDS_SKIPPED.labels(topic=role, reason=reason).inc()
