"""Fetched record batches read so that no header key can stop a consumer.

Kafka's protocol declares a header key a String, and aiokafka's record reader (its C extension, and the
pure-Python one alike) decodes it with strict UTF-8 while it walks a fetched record batch. One record
whose header key is not UTF-8 -- any producer that writes raw header bytes can write one -- made that
read raise ``UnicodeDecodeError`` inside the consumer's fetch: the worker's Faust consumer crashed
(``Fetcher]: Crashed``), and because uncommitted records, the ``catalog`` and the ``control`` topic are
read again at every start, every worker crashed again at every restart (issue 23).

:func:`contain_header_keys` makes aiokafka's fetcher read record batches with
:class:`ContainedMemoryRecords`: batches are still read by aiokafka's C reader, record by record; only a
batch where that reader raises on a header key is read on from that record by :func:`tolerant_records`,
which decodes header keys with ``surrogateescape`` (the undecodable bytes survive as lone surrogates,
as Python does for undecodable file names). Nothing is dropped here: the record reaches the consumer,
and the layer that knows what the record is for decides (``io.topics.header_problem``: the worker sends
such an event to ``events-dlq`` as ``bad_header``; the catalog and control followers skip it with a
WARNING and count it). Keys, values and header values are bytes already and are never decoded here.

aiokafka internals used (each checked by tests/test_reliability_headers.py against the embedded broker):
the module global ``aiokafka.consumer.fetcher.MemoryRecords`` (the one name the fetcher builds record
sets with), ``aiokafka.record.memory_records._MemoryRecordsPy`` and its ``_next_slice``,
``aiokafka.record.default_records._DefaultRecordBatchPy`` (``_maybe_uncompress``, ``_buffer``, ``_pos``,
``_num_records``) and ``_DefaultRecordPy``.
"""

from __future__ import annotations

from typing import Iterator

_installed = False


def contain_header_keys() -> None:
    """Make every aiokafka consumer of this process read fetched batches with
    :class:`ContainedMemoryRecords` (idempotent; called by every consumer the project builds)."""
    global _installed
    if _installed:
        return
    from aiokafka.consumer import fetcher

    fetcher.MemoryRecords = _contained_records_class()
    _installed = True


def _contained_records_class():
    from aiokafka.record.memory_records import _MemoryRecordsPy

    class ContainedMemoryRecords(_MemoryRecordsPy):
        """aiokafka's record set, whose v2 batches are :class:`ContainedBatch` (see the module docstring)."""

        def next_batch(self, *args):
            raw = self._next_slice
            batch = super().next_batch(*args)
            if batch is None or raw is None or batch.magic < 2:  # v0/v1 message sets carry no headers
                return batch
            return ContainedBatch(batch, raw)

    return ContainedMemoryRecords


class ContainedBatch:
    """One v2 record batch: aiokafka's reader while it can, :func:`tolerant_records` from the first record
    it cannot decode. Everything else (CRC check, offsets, control and transaction flags) is the batch's."""

    __slots__ = ("_batch", "_raw", "_records", "_read")

    def __init__(self, batch, raw) -> None:
        self._batch, self._raw, self._records, self._read = batch, raw, batch, 0

    def __getattr__(self, name: str):
        return getattr(self._batch, name)

    def __iter__(self) -> "ContainedBatch":
        self._records = iter(self._batch)  # decompresses, as the batch's own __iter__ does
        return self

    def __next__(self):
        try:
            record = next(self._records)
        except Exception as exc:
            if self._records is not self._batch or not _is_header_decoding(exc):
                raise
            self._records = tolerant_records(self._raw, skip=self._read)
            record = next(self._records)
        self._read += 1
        return record


def _is_header_decoding(exc: BaseException) -> bool:
    # the C reader raises UnicodeDecodeError; the pure-Python one wraps it in CorruptRecordException
    return isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, UnicodeDecodeError)


def tolerant_records(raw, skip: int = 0) -> Iterator:
    """The records of the v2 batch ``raw`` (its bytes, header included) after the first ``skip``, as
    aiokafka's records, header keys decoded with ``surrogateescape``."""
    from aiokafka.errors import CorruptRecordException
    from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
    from aiokafka.record.util import decode_varint

    batch = _DefaultRecordBatchPy(raw)
    batch._maybe_uncompress()
    buffer, pos = batch._buffer, batch._pos
    log_append = batch.timestamp_type == batch.LOG_APPEND_TIME

    def nullable(pos: int) -> tuple[bytes | None, int]:
        length, pos = decode_varint(buffer, pos)
        return (None, pos) if length < 0 else (bytes(buffer[pos:pos + length]), pos + length)

    for index in range(batch._num_records):
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        _, pos = decode_varint(buffer, pos)  # attributes: unused in v2 records
        ts_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = nullable(pos)
        value, pos = nullable(pos)
        count, pos = decode_varint(buffer, pos)
        headers = []
        for _ in range(max(0, count)):
            name, pos = nullable(pos)
            header_value, pos = nullable(pos)
            headers.append(((name or b"").decode("utf-8", "surrogateescape"), header_value))
        if count < 0 or pos != end:
            raise CorruptRecordException(f"record {index} of the batch at offset {batch.base_offset} is malformed")
        pos = end
        if index >= skip:
            timestamp = batch.max_timestamp if log_append else batch.first_timestamp + ts_delta
            yield _DefaultRecordPy(batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value,
                                   headers)
