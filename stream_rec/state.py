"""Per-user state and its compact binary codec (the value of the RocksDB table and its changelog).

A user's state is what the stream needs to serve the next event without reading history elsewhere:

* ``hidden``: the GRU hidden vector after the user's last applied event (float16 by default: half the
  bytes, and the GRU's tanh-bounded state loses < 1e-3 per component);
* ``history``: the last N (item_id, timestamp) pairs, newest last: seen-item exclusion, the time gap
  feature, the ``history`` shown by ``tail``, and a way to rebuild ``hidden`` when the model changes;
* ``partition``/``offset``: the Kafka position of the last applied event, for idempotent redelivery
  (``partition`` carries ``Settings.events_epoch << 16``: a new events topic's offsets start at 0 again);
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

Layout (little endian), version 6 (what ``encode_state`` writes)::

    B version | B flags (bit0: hidden is float16) | I model_tag | i partition | q offset | I n_events
    H hidden_size | hidden_size x (e or f)
    H n_history | (n_history > 0:) d newest timestamp | n_history x 6-byte item key
                | (n_history - 1) x f seconds from each entry to the next (float32; may be negative)
    H n_negatives | n_negatives x 6-byte item key
    H n_origins | n_origins x (i partition, q offset, Q digest)
    H n_exposure | n_exposure bytes (issue 21: ``recsys.arms.encode_exposure``, the new items of the list
                 the user holds and those she left untaken; empty when exploration is off)

Item ids are stored as **item keys**: 48 bits of a BLAKE2b hash of the id's UTF-8 bytes
(:func:`item_key`), so a state's size does not depend on how long the ids are: with a 160-d float16
hidden vector and the default 50-item history, 856 bytes for ids of any length (versions 1-4 stored the
ids themselves: 1,348 bytes for 10-character ids). Why a hash, not a catalogue index: a state must decode
the same on every worker and after any model reload, while catalogue rows differ between models (each
its own vocabulary) and live items join each worker's catalogue in the order that worker saw them. A key
is a function of the id alone. Decoding maps keys back to ids through the serving catalogue
(:class:`ItemKeys`, built by the pipeline from the model's item ids); a key the catalogue does not know
(yet -- a worker still reading the catalog topic -- or any more) decodes as an :class:`UnknownItem`, which
keeps its key, so re-encoding the state loses nothing. Collisions: two ids of one catalogue share a key
with probability ~n^2/2^49 (0.2% for a million items); :class:`ItemKeys` keeps the first and logs it.
Timestamps: the newest exactly (the next event's time gap is computed from it), the others as float32
gaps (relative error < 1e-7 of each gap: what the model reads of them). With issue 21's exposure section
at its largest (115 bytes), 971 bytes: under 1 KB.

Versions 1-5 are still decoded (version 5 is version 6 without the exposure: empty): version 1 without the ``negatives`` part (empty), version 2 without
``origins``, version 3 with one (partition, highest offset) per origin partition (decoded as identities
with digest 0, matched on partition and offset alone), version 4 as version 5 but with the ids and every
timestamp in full (``H n | n x (d timestamp, H id_len, id_len bytes UTF-8)``, negatives ``H id_len, id``).
So tables and changelogs written by older workers load unchanged; a worker older than version 5 cannot
read a version-5 state and starts such a user over (the state is not corrupted: a newer worker reads it).

No pickle (unsafe and Python-only) and no JSON of floats (3-4x larger, slow). Unknown versions raise
``StateDecodeError``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import operator
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Iterable, Iterator
from weakref import WeakKeyDictionary

import numpy as np

log = logging.getLogger(__name__)

VERSION = 6
# 1: no negatives; 2: no origins; 3: origins as one high-water mark per partition; 4: ids and timestamps in
# full; 5: no exposure
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
MAX_EXPOSURE_BYTES = 1024  # the exposure section's bound (recsys/arms.py writes at most ~125 bytes)
KEY_BYTES = 6  # an item key: 48 bits of BLAKE2b of the id
FLAG_FLOAT16 = 0x01
_HEAD = struct.Struct("<BBIiqIH")
_ENTRY = struct.Struct("<dH")
_COUNT = struct.Struct("<H")
_ORIGIN_V3 = struct.Struct("<iq")
_ORIGIN = struct.Struct("<iqQ")
_NEWEST = struct.Struct("<d")
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


@functools.lru_cache(maxsize=1 << 18)
def item_key(item_id: str) -> bytes:
    """The 6-byte key a state stores for ``item_id``: 48 bits of its BLAKE2b hash (an :class:`UnknownItem`:
    the key it was decoded from)."""
    if type(item_id) is UnknownItem:
        return item_id.key
    return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


class UnknownItem(str):
    """An item of a decoded state whose key the decoding catalogue does not know: shown as
    ``unknown-item-<key>``, equal only to itself (no catalogue id matches it, so nothing recommends or
    excludes it by mistake), re-encoded with its own key."""

    key: bytes

    def __new__(cls, key: bytes) -> "UnknownItem":
        item = super().__new__(cls, f"unknown-item-{key.hex()}")
        item.key = key
        return item

    def __eq__(self, other) -> bool:
        return type(other) is UnknownItem and other.key == self.key

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((UnknownItem, self.key))


class ItemKeys(Mapping):
    """Item key -> item id of a catalogue that only grows (a model's item ids): :meth:`extend` with the
    whole id list again after it grew; only the new ids are hashed."""

    def __init__(self, item_ids: Iterable[str] = ()):
        self._ids: dict[bytes, str] = {}
        self.get = self._ids.get  # the decoder's lookup, without a Python call per key
        self.indexed = 0  # how many ids of the catalogue are hashed
        self.extend(list(item_ids))

    def extend(self, item_ids: list[str]) -> "ItemKeys":
        # the length is read once: the list may grow meanwhile (the catalogue on the stream's loop while
        # a lookup on the HTTP listener's thread reads a state), and what it grew by is indexed next time
        end = len(item_ids)
        for item_id in item_ids[self.indexed:end]:
            other = self._ids.setdefault(item_key(item_id), item_id)
            if other != item_id:
                log.warning("items %r and %r share a state key: states show the first", other, item_id)
        self.indexed = max(self.indexed, end)
        return self

    def __getitem__(self, key: bytes) -> str:
        return self._ids[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


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
    exposure: bytes = b""  # the exploration's record of the user's list (recsys/arms.py); b"" = none

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


def append_history(history: list[tuple[str, float]], item_id: str, timestamp: float,
                   limit: int) -> list[tuple[str, float]]:
    """History with one more entry, oldest dropped beyond ``limit``."""
    out = history + [(item_id, timestamp)]
    return out[-limit:] if limit > 0 else out


def encode_state(state: UserState, *, half: bool = True) -> bytes:
    hidden = np.zeros(0, dtype=np.float32) if state.hidden is None else np.asarray(state.hidden).ravel()
    dtype = "<f2" if half else "<f4"
    if max(len(state.history), hidden.size, len(state.negatives), len(state.origins)) > 0xFFFF \
            or len(state.exposure) > MAX_EXPOSURE_BYTES:
        raise ValueError("state too large to encode")
    parts = [_HEAD.pack(VERSION, FLAG_FLOAT16 if half else 0, state.model_tag & 0xFFFFFFFF, state.partition,
                        state.offset, min(state.n_events, 0xFFFFFFFF), hidden.size),
             hidden.astype(dtype).tobytes(), _COUNT.pack(len(state.history))]
    if state.history:
        ids, stamps = zip(*state.history)
        parts += [_NEWEST.pack(stamps[-1]), b"".join(map(item_key, ids)),
                  struct.pack(f"<{len(stamps) - 1}f", *map(operator.sub, stamps[1:], stamps[:-1]))]
    parts += [_COUNT.pack(len(state.negatives)), b"".join(map(item_key, state.negatives)),
              _COUNT.pack(len(state.origins))]
    parts.extend(_ORIGIN.pack(*origin) for origin in state.origins)
    parts += [_COUNT.pack(len(state.exposure)), bytes(state.exposure)]
    return b"".join(parts)


def decode_state(data: bytes, items: Mapping[bytes, str] | None = None) -> UserState:
    """The state in ``data``. ``items``: item key -> id of the serving catalogue (:class:`ItemKeys`), for the
    item keys of version 5 (without it, or for a key it does not know: :class:`UnknownItem`)."""
    items = items if items is not None else {}
    try:
        version, flags, tag, partition, offset, n_events, size = _HEAD.unpack_from(data, 0)
        if version not in READABLE_VERSIONS:
            raise StateDecodeError(f"unknown state version {version}")
        pos = _HEAD.size
        width = 2 if flags & FLAG_FLOAT16 else 4
        hidden = np.frombuffer(data, dtype="<f2" if width == 2 else "<f4", count=size, offset=pos).astype(np.float32)
        pos += size * width
        read_history = _history_v5 if version >= 5 else _history_v4
        history, pos = read_history(data, pos, items)
        negatives, origins = [], []
        if version >= 2:
            negatives, pos = (_keys_v5 if version >= 5 else _ids_v4)(data, pos, items)
        if version >= 3:
            origins, pos = _origins(data, pos, _ORIGIN if version >= 4 else _ORIGIN_V3)
        exposure = b""
        if version >= 6:
            n, pos = _count(data, pos)
            if n > MAX_EXPOSURE_BYTES or pos + n > len(data):
                raise StateDecodeError("exposure section out of range")
            exposure, pos = bytes(data[pos:pos + n]), pos + n
        if pos != len(data):
            raise StateDecodeError(f"{len(data) - pos} trailing bytes")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, StateDecodeError):
            raise
        raise StateDecodeError(f"corrupt state: {exc}") from exc
    return UserState(hidden=hidden if size else None, history=history, partition=partition, offset=offset,
                     n_events=n_events, model_tag=tag, negatives=negatives, origins=origins,
                     exposure=exposure)


def _count(data: bytes, pos: int) -> tuple[int, int]:
    return _COUNT.unpack_from(data, pos)[0], pos + _COUNT.size


def _history_v5(data: bytes, pos: int, items: Mapping[bytes, str]) -> tuple[list[tuple[str, float]], int]:
    n, pos = _count(data, pos)
    if n == 0:
        return [], pos
    (newest,) = _NEWEST.unpack_from(data, pos)
    ids, pos = _unpack_keys(data, pos + _NEWEST.size, n, items)
    gaps = struct.unpack_from(f"<{n - 1}f", data, pos)
    stamps = list(accumulate(reversed(gaps), operator.sub, initial=newest))  # newest first, less each gap
    stamps.reverse()
    return list(zip(ids, stamps)), pos + 4 * (n - 1)


def _history_v4(data: bytes, pos: int, items) -> tuple[list[tuple[str, float]], int]:
    n, pos = _count(data, pos)
    history = []
    for _ in range(n):
        ts, length = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        history.append((data[pos:pos + length].decode("utf-8"), ts))
        pos += length
    return history, pos


def _keys_v5(data: bytes, pos: int, items: Mapping[bytes, str]) -> tuple[list[str], int]:
    n, pos = _count(data, pos)
    return _unpack_keys(data, pos, n, items)


def _unpack_keys(data: bytes, pos: int, n: int, items: Mapping[bytes, str]) -> tuple[list[str], int]:
    end = pos + n * KEY_BYTES
    if end > len(data):
        raise StateDecodeError("truncated item keys")
    keys = _keys_struct(n).unpack_from(data, pos)
    ids = list(map(items.get, keys))
    if None in ids:
        ids = [UnknownItem(key) if i is None else i for key, i in zip(keys, ids)]
    return ids, end


@functools.lru_cache(maxsize=1024)
def _keys_struct(n: int) -> struct.Struct:
    return struct.Struct("<" + f"{KEY_BYTES}s" * n)


def _ids_v4(data: bytes, pos: int, items) -> tuple[list[str], int]:
    n, pos = _count(data, pos)
    ids = []
    for _ in range(n):
        length, pos = _count(data, pos)
        ids.append(data[pos:pos + length].decode("utf-8"))
        pos += length
    return ids, pos


def _origins(data: bytes, pos: int, entry: struct.Struct) -> tuple[list[Origin], int]:
    n, pos = _count(data, pos)
    origins = []
    for _ in range(n):
        origins.append((*entry.unpack_from(data, pos), 0)[:3])
        pos += entry.size
    return origins, pos


_CATALOGUE_KEYS: "WeakKeyDictionary[object, ItemKeys]" = WeakKeyDictionary()


def catalogue_keys(model) -> ItemKeys:
    """Item key -> item id of ``model``'s catalogue, how a state names its items (stream_rec/state.py),
    extended when the catalogue grew (live items join it)."""
    keys = _CATALOGUE_KEYS.get(model)
    if keys is None:
        keys = _CATALOGUE_KEYS[model] = ItemKeys()
    if keys.indexed != len(model.item_ids):
        keys.extend(model.item_ids)
    return keys


def read_state(raw: bytes | None, model=None, items: ItemKeys | None = None) -> UserState:
    """The stored state, its items named by ``model``'s catalogue (``items``: that catalogue's keys, when
    the caller has them already), or a fresh one (no state yet, or an unreadable old one: start the user
    over rather than stop the stream). Anything but bytes or None is a caller's mistake (e.g. a dict's
    ``get`` given as ``load_state``, which takes the partition for a default): TypeError."""
    if raw is not None and not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"a stored state is bytes or None, got {type(raw).__name__}")
    try:
        if items is None and model is not None:
            items = catalogue_keys(model)
        return decode_state(raw, items=items) if raw else UserState()
    except StateDecodeError:
        return UserState()
