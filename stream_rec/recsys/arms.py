"""The exploration bandit's state (``explore``): one small record per new item and events partition (the
arm), and what each user carries between two of her events (her exposure).

**Arm** (``ArmStats``, 32 bytes, ``encode_arm``): over the impressions of one item to the users of one
events partition: ``impressions``, ``hits``, ``expected`` (the model's own probabilities of those
impressions, summed: the hits the model expected), ``born`` (when the item joined the catalogue) and
``applied`` (the highest event offset of that partition whose feedback the record includes). The item's
*appeal relative to the model* -- how much more (or less) often users take it than the model predicts --
has the Gamma posterior ``Gamma(prior_hits + hits, prior_expected + expected)`` (a Poisson model of hits
with rate appeal x expected; ``posterior``).

Keying: the events topic is keyed by user, so each partition's users produce their own impressions and
hits. The worker keys an arm by ``arm_key(partition, item_id)`` and writes it while processing that
partition's events: the record lands on the same changelog partition and moves with the partition on a
rebalance. An item's global arm is the **sum** of its latest record on every partition (``merge_arms``):
each record is a cumulative total, so a record read twice (a changelog replay) changes nothing.

**Exposure** (``Exposure``, ``encode_exposure``, at most 125 bytes in the user's state): the arm items of
the list the user holds (4-byte keys, ``item_key``) and when it was emitted, and the items she left
untaken ``declined`` times in a row (at most ``MAX_DECLINED`` kept). Feedback rules (``resolve``): the
user's next event resolves her pending impressions -- the item of the event, if pending and within the
hit window, is one hit; the others are misses -- so one user's repeated events count once per impression
and a hit needs a preceding impression to that same user.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, replace

import numpy as np

ARM_VERSION = 1
_ARM = struct.Struct("<BBxxIIfdq")  # version, flags, -, impressions, hits, expected, born, applied offset
ARM_BYTES = _ARM.size
EXPOSURE_VERSION = 1
_EXPOSURE_HEAD = struct.Struct("<BdBB")  # version, shown_at, n_pending, n_declined
_DECLINED = struct.Struct("<IB")
MAX_PENDING = 16  # arm items of one list (k <= 16 of them can be new)
MAX_DECLINED = 8  # items a user left untaken, remembered (oldest forgotten first)


class ArmDecodeError(ValueError):
    """Bytes that are not an arm or exposure record this code can read."""


@dataclass(frozen=True)
class ArmStats:
    impressions: int = 0
    hits: int = 0
    expected: float = 0.0  # sum of the model's probability of the item at each impression
    born: float = 0.0  # when the item joined the catalogue (seconds)
    applied: int = -1  # highest events offset (of the record's partition) included

    def impressed(self, probability: float, offset: int = -1) -> "ArmStats":
        return replace(self, impressions=self.impressions + 1, expected=self.expected + float(probability),
                       applied=max(self.applied, offset))

    def hit(self, offset: int = -1) -> "ArmStats":
        return replace(self, hits=self.hits + 1, applied=max(self.applied, offset))


def encode_arm(arm: ArmStats) -> bytes:
    return _ARM.pack(ARM_VERSION, 0, min(arm.impressions, 0xFFFFFFFF), min(arm.hits, 0xFFFFFFFF),
                     arm.expected, arm.born, arm.applied)


def decode_arm(data: bytes) -> ArmStats:
    if len(data) != ARM_BYTES:
        raise ArmDecodeError(f"an arm record has {ARM_BYTES} bytes, got {len(data)}")
    version, _, impressions, hits, expected, born, applied = _ARM.unpack(data)
    if version != ARM_VERSION:
        raise ArmDecodeError(f"unknown arm record version {version}")
    if not (math.isfinite(expected) and expected >= 0 and math.isfinite(born)) or hits > impressions:
        raise ArmDecodeError("arm record out of range")
    return ArmStats(impressions, hits, expected, born, applied)


def arm_key(partition: int, item_id: str) -> str:
    """Table key of an item's arm on one events partition: its changelog record stays on that partition."""
    return f"{partition}:{item_id}"


def merge_arms(records) -> ArmStats:
    """One item's arm over all partitions: the sum of each partition's latest record (``born``: the
    earliest; ``applied`` means nothing across partitions: -1)."""
    records = list(records)
    if not records:
        return ArmStats()
    return ArmStats(sum(r.impressions for r in records), sum(r.hits for r in records),
                    sum(r.expected for r in records), min(r.born for r in records), -1)


def item_key(item_id: str) -> int:
    """32-bit key of an item id: the user state stores keys, not ids of unbounded length. A key is only
    ever compared with a user's own few pending or declined items (a false match: ~16 / 2^32 per event)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=4).digest(), "little")


@dataclass
class Exposure:
    shown_at: float = 0.0  # when the pending list was emitted (the event time that produced it)
    pending: list[int] = field(default_factory=list)  # item keys of the arms in that list
    declined: dict[int, int] = field(default_factory=dict)  # item key -> times in a row left untaken (insertion order)


def encode_exposure(exposure: Exposure) -> bytes:
    pending = exposure.pending[:MAX_PENDING]
    declined = list(exposure.declined.items())[-MAX_DECLINED:]
    return b"".join([_EXPOSURE_HEAD.pack(EXPOSURE_VERSION, exposure.shown_at, len(pending), len(declined)),
                     struct.pack(f"<{len(pending)}I", *pending),
                     b"".join(_DECLINED.pack(k, min(n, 255)) for k, n in declined)])


def decode_exposure(data: bytes) -> Exposure:
    try:
        version, shown_at, n_pending, n_declined = _EXPOSURE_HEAD.unpack_from(data, 0)
        if version != EXPOSURE_VERSION:
            raise ArmDecodeError(f"unknown exposure version {version}")
        if n_pending > MAX_PENDING or n_declined > MAX_DECLINED or not math.isfinite(shown_at):
            raise ArmDecodeError("exposure record out of range")
        pos = _EXPOSURE_HEAD.size
        pending = list(struct.unpack_from(f"<{n_pending}I", data, pos))
        pos += 4 * n_pending
        declined = {}
        for _ in range(n_declined):
            key, n = _DECLINED.unpack_from(data, pos)
            declined[key] = n
            pos += _DECLINED.size
    except struct.error as exc:
        raise ArmDecodeError(f"corrupt exposure record: {exc}") from exc
    if pos != len(data):
        raise ArmDecodeError(f"{len(data) - pos} trailing bytes")
    return Exposure(shown_at, pending, declined)


def resolve(exposure: Exposure, item_id: str, ts: float, window_s: float) -> tuple[Exposure, int | None, list[int]]:
    """The user's event on ``item_id`` at ``ts`` resolves her pending impressions.
    -> (exposure after it, the key hit or None, the keys missed). A hit needs the item pending and the
    event within ``window_s`` of the list; every other pending item is a miss (counted in ``declined``);
    an impression resolves once, so a repeated event finds nothing pending."""
    if not exposure.pending:
        return exposure, None, []
    key = item_key(item_id)
    in_window = 0.0 <= ts - exposure.shown_at <= window_s
    hit = key if in_window and key in exposure.pending else None
    missed = [k for k in exposure.pending if k != hit]
    declined = dict(exposure.declined)
    for k in missed:
        declined[k] = declined.pop(k, 0) + 1  # moved to the end: the most recent is kept longest
    declined.pop(key, None)  # taken: not declined any more
    while len(declined) > MAX_DECLINED:
        declined.pop(next(iter(declined)))
    return Exposure(exposure.shown_at, [], declined), hit, missed


def expose(exposure: Exposure, item_ids, ts: float) -> Exposure:
    """The exposure after a list whose arm items are ``item_ids`` was emitted at ``ts``."""
    return Exposure(ts, [item_key(i) for i in list(item_ids)[:MAX_PENDING]], dict(exposure.declined))


def counted_arms(exposure: Exposure, item_ids, max_declines: int) -> list[str]:
    """The arm items of an emitted list that count as impressions for this user: all but those she left
    untaken ``max_declines`` times in a row (so one user adds at most that many misses to an item in a
    row; she may still be shown it)."""
    return [i for i in item_ids if exposure.declined.get(item_key(i), 0) < max_declines]


@dataclass(frozen=True)
class Prior:
    hits: float = 1.0  # prior pseudo-hits ...
    expected: float = 1.0  # ... over prior pseudo-expected hits: prior mean appeal 1 (the model is right)


def posterior(arms: list[ArmStats], prior: Prior = Prior()) -> tuple[np.ndarray, np.ndarray]:
    """Gamma (shape, rate) of each arm's appeal relative to the model."""
    shape = np.array([prior.hits + a.hits for a in arms], dtype=np.float64)
    rate = np.array([prior.expected + a.expected for a in arms], dtype=np.float64)
    return shape, rate


def gamma_quantile(shape: np.ndarray, rate: np.ndarray, z: float) -> np.ndarray:
    """Approximate quantile (standard-normal score ``z``) of Gamma(shape, rate): Wilson-Hilferty (no scipy
    in the serving package). Within a few percent for the upper tail from shape 1 and the lower tail from
    shape ~3 (at shape 1 the lower 5% quantile comes out ~20% low: the graduation test that reads it
    needs several hits anyway)."""
    c = 1.0 / (9.0 * np.asarray(shape, dtype=np.float64))
    return shape * np.maximum(1.0 - c + z * np.sqrt(c), 0.0) ** 3 / rate
