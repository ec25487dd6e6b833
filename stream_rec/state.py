"""Per-user state and its compact binary codec (the value of the RocksDB table and its changelog).

A user's state is what the stream needs to serve the next event without reading history elsewhere:

* ``hidden``: the GRU hidden vector after the user's last applied event (float16 by default: half the
  bytes, and the GRU's tanh-bounded state loses < 1e-3 per component);
* ``history``: the last N (item_id, timestamp) pairs, newest last: seen-item exclusion, the time gap
  feature, the ``history`` shown by ``tail``, and a way to rebuild ``hidden`` when the model changes;
* ``partition``/``offset``: the Kafka position of the last applied event, for idempotent redelivery;
* ``model_tag``: 32-bit hash of the model version that produced ``hidden``. A state from another model
  (a trained model replacing the untrained one, or a different hidden size) is re-warmed by replaying
  ``history`` through the new model instead of feeding it a foreign vector;
* ``negatives``: the user's recent negative items (``dislike``/``skip``, or a low ``rate``), newest last,
  at most ``Enricher.negatives_per_user`` (stream_rec/recsys/enricher.py). They are kept apart from
  ``history`` (never stepped through the GRU, never replayed by a re-warm, not "seen") and live here so
  a restarted or rebalanced worker still pushes them down;
* ``origins``: the identities -- (original partition, original offset, digest of key and value) -- of
  the last :data:`ORIGINS_KEPT` events the worker applied as re-routed copies (a producer with another
  partitioner, see stream_rec/pipeline.py), oldest first, so a copy sent twice (a crash between the
  re-route and the offset commit) is applied once. Exact identities, not a high-water mark per partition:
  the origin header is a producer's claim, and a forged ``P:999999999`` must not mask every later genuine
  copy from P.

Layout (little endian), version 4 (what ``encode_state`` writes when ``origins`` is not empty;
version 2 otherwise, so states of users never re-routed stay readable by version-2 workers)::

    B version | B flags (bit0: hidden is float16) | I model_tag | i partition | q offset | I n_events
    H hidden_size | hidden_size x (e or f)
    H n_history | n_history x (d timestamp, H id_len, id_len bytes UTF-8)
    H n_negatives | n_negatives x (H id_len, id_len bytes UTF-8)
    H n_origins | n_origins x (i partition, q offset, Q digest)             (version 4 only)

Version 1 is the same without the ``negatives`` part; it is still decoded (``negatives`` empty), so
tables and changelogs written before version 2 load unchanged. Version 3 held one (partition, highest
offset) per origin partition instead; it is decoded as identities with digest 0 (matched on partition and
offset alone). (An older reader cannot read a newer
version: it treats such a state as unreadable and starts the user over.)

No pickle (unsafe and Python-only) and no JSON of floats (3-4x larger, slow): about 300 bytes for a
128-d float16 state with 10 history entries. Unknown versions raise ``StateDecodeError``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)  # 1: no negatives; 2: no origins; 3: origins as one high-water mark per partition
FLAG_FLOAT16 = 0x01
_HEAD = struct.Struct("<BBIiqIH")
_ENTRY = struct.Struct("<dH")
_COUNT = struct.Struct("<H")
_ORIGIN_V3 = struct.Struct("<iq")
_ORIGIN = struct.Struct("<iqQ")
NO_OFFSET = -1
# re-routed copies remembered per user (20 bytes each): a duplicate copy comes from the re-routing worker's
# restart after a crash, so it follows the first copy within that worker's uncommitted window (Faust commits
# every ~3 s) plus its restart; a user with more misplaced events than this in that window could see one
# applied twice. Users never re-routed carry none.
ORIGINS_KEPT = 64

Origin = tuple[int, int, int]  # (original partition, original offset, digest of key and value; 0 = unknown)


class StateDecodeError(ValueError):
    """Bytes that are not a state this code can read."""


def model_tag(version: str) -> int:
    """Stable 32-bit tag of a model version string (crc32)."""
    return zlib.crc32(version.encode("utf-8"))


@dataclass
class UserState:
    hidden: np.ndarray | None = None  # [H] float32 in memory; None = no hidden state yet
    history: list[tuple[str, float]] = field(default_factory=list)  # (item_id, timestamp), newest last
    partition: int = -1
    offset: int = NO_OFFSET  # last applied offset on ``partition``
    n_events: int = 0  # events applied since the state was created
    model_tag: int = 0
    negatives: list[str] = field(default_factory=list)  # recent negative item ids, newest last
    origins: list[Origin] = field(default_factory=list)  # the last ORIGINS_KEPT re-routed copies applied

    def already_applied(self, partition: int, offset: int) -> bool:
        """True for a redelivered event (same partition, offset not after the last applied one)."""
        return partition == self.partition and offset <= self.offset

    def applied_copy(self, origin: Origin) -> bool:
        """True when the re-routed copy ``origin`` (see :data:`Origin`) was applied already."""
        return any(o[:2] == origin[:2] and (o[2] == origin[2] or not o[2]) for o in self.origins)

    @property
    def last_timestamp(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def seen_items(self) -> list[str]:
        return [item for item, _ in self.history]


def copy_origin(origin: tuple[int, int], key: bytes | None, value: bytes | None) -> Origin:
    """The identity of a re-routed copy: its ``origin`` (partition, offset) and a digest of its key and
    value (a worker's copy carries the original's bytes; a forged origin on other bytes is another event)."""
    digest = hashlib.blake2b(digest_size=8)
    key = key or b""
    digest.update(len(key).to_bytes(4, "little") + key)
    digest.update(value or b"")
    return origin[0], origin[1], int.from_bytes(digest.digest(), "little") or 1  # 0 means "unknown"


def append_history(history: list[tuple[str, float]], item_id: str, timestamp: float, limit: int) -> list[tuple[str, float]]:
    """History with one more entry, oldest dropped beyond ``limit``."""
    out = history + [(item_id, timestamp)]
    return out[-limit:] if limit > 0 else out


def encode_state(state: UserState, *, half: bool = True) -> bytes:
    hidden = np.zeros(0, dtype=np.float32) if state.hidden is None else np.asarray(state.hidden).ravel()
    dtype = "<f2" if half else "<f4"
    if len(state.history) > 0xFFFF or hidden.size > 0xFFFF or len(state.negatives) > 0xFFFF or len(state.origins) > 0xFFFF:
        raise ValueError("state too large to encode")
    version = VERSION if state.origins else 2
    parts = [_HEAD.pack(version, FLAG_FLOAT16 if half else 0, state.model_tag & 0xFFFFFFFF, state.partition,
                        state.offset, min(state.n_events, 0xFFFFFFFF), hidden.size),
             hidden.astype(dtype).tobytes(), _COUNT.pack(len(state.history))]
    for item_id, ts in state.history:
        raw = item_id.encode("utf-8")
        parts.append(_ENTRY.pack(ts, len(raw)))
        parts.append(raw)
    parts.append(_COUNT.pack(len(state.negatives)))
    for item_id in state.negatives:
        raw = item_id.encode("utf-8")
        parts.append(_COUNT.pack(len(raw)))
        parts.append(raw)
    if version >= 3:
        parts.append(_COUNT.pack(len(state.origins)))
        parts.extend(_ORIGIN.pack(*origin) for origin in state.origins)
    return b"".join(parts)


def decode_state(data: bytes) -> UserState:
    try:
        version, flags, tag, partition, offset, n_events, size = _HEAD.unpack_from(data, 0)
        if version not in READABLE_VERSIONS:
            raise StateDecodeError(f"unknown state version {version}")
        pos = _HEAD.size
        width = 2 if flags & FLAG_FLOAT16 else 4
        hidden = np.frombuffer(data, dtype="<f2" if width == 2 else "<f4", count=size, offset=pos).astype(np.float32)
        pos += size * width
        (n_hist,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        history = []
        for _ in range(n_hist):
            ts, length = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            history.append((data[pos:pos + length].decode("utf-8"), ts))
            pos += length
        negatives = []
        if version >= 2:
            (n_neg,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            for _ in range(n_neg):
                (length,) = _COUNT.unpack_from(data, pos)
                pos += _COUNT.size
                negatives.append(data[pos:pos + length].decode("utf-8"))
                pos += length
        origins = []
        if version >= 3:
            (n_origins,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            entry = _ORIGIN if version >= 4 else _ORIGIN_V3
            for _ in range(n_origins):
                origins.append((*entry.unpack_from(data, pos), 0)[:3])
                pos += entry.size
        if pos != len(data):
            raise StateDecodeError(f"{len(data) - pos} trailing bytes")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, StateDecodeError):
            raise
        raise StateDecodeError(f"corrupt state: {exc}") from exc
    return UserState(hidden if size else None, history, partition, offset, n_events, tag, negatives, origins)
