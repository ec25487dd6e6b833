"""The exploration bandit (``explore``) in a micro-batch: what the pipeline does with it, pure (no Kafka).

Two steps per batch (stream_rec/pipeline.py calls them):

* :func:`resolve_feedback`, before the users' events are stepped: each user's *first* new event resolves
  the impressions of the list she held (``arms.resolve``, the exposure in her state): the event's item,
  if pending and within the window, is a hit on that arm; a negative event (``feedback.is_negative``) is
  a miss for every pending item. Her later events of the batch find nothing pending: one resolution per
  list. A replayed user (her list re-sent for a redelivered event) resolves nothing.
* :func:`explore_lists`, after the lists are ranked (and re-ranked by the enricher): arms the list left
  out are put in from its bottom up (``explore.fill_user``, by the model's own probabilities and each
  arm's Thompson draw); every arm in a sent list counts as an impression (``arms.counted_arms``) and
  becomes the user's pending exposure, stored with her state. The record gets an ``explore`` field.

**Where the arm records live.** One record per (events partition, item) (``arms.ArmStats``, 32 bytes),
in the user-state table under :func:`arm_table_key` (``"\\x00arm:<partition>:<item>"``; validation refuses
ids with a NUL character, so no user key can be one), staged for the partition of the events that
changed it, *before* the batch's user states: a delivered state implies that the arm totals including its
events were delivered. The reverse (arms delivered, a state not, then a crash) is closed by each record's
``applied`` watermark: an event of that partition at an offset <= the record's ``applied`` when the batch
started adds nothing to it (:class:`ArmUpdates`; offsets with the events epoch above them:
:func:`event_ordinal`). :class:`Explorer` caches the records it has read or written (the table stays the
truth: a rebalance clears the cache) and merges them, with the copies of other partitions' records that
every worker publishes to the ``explore-arms`` topic, into the bandit's view.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from .arms import (ArmDecodeError, ArmStats, Exposure, arm_key, counted_arms, decode_arm, decode_exposure,
                   encode_arm, encode_exposure, expose, item_key, resolve)
from .explore import ArmBook, ArmView, ExplorePolicy, exploration_gate, fill_user, log_appeals, masked_scores
from .feedback import is_negative

log = logging.getLogger(__name__)

ARM_PREFIX = "\x00arm:"
NEW_ITEM_REASON = "new in the catalogue"
ReadArm = Callable[[int, str], "bytes | None"]  # (partition, item id) -> the stored arm record, or None


def arm_table_key(partition: int, item_id: str) -> bytes:
    """The state-table key of an arm record: a prefix no user id can have."""
    return (ARM_PREFIX + arm_key(partition, item_id)).encode("utf-8", "surrogatepass")


class Explorer:
    """One worker's bandit: the policy, its Thompson draws, the arm records of the partitions it has read
    or written (``records``: a cache of the table, which ``read_arm`` reads), and the merged view."""

    def __init__(self, policy: ExplorePolicy, read_arm: ReadArm | None = None, seed=None):
        self.policy = policy
        self.read_arm: ReadArm = read_arm or (lambda partition, item_id: None)
        self.records: dict[tuple[int, str], ArmStats] = {}
        self.remote: dict[tuple[int, str], ArmStats] = {}  # every worker's records (the explore-arms topic)
        # item -> its records summed over partitions (merge_arms): a partition's record read here, else its remote one
        self.totals: dict[str, ArmStats] = {}
        self.partitions: set[int] = set()  # partitions whose records were loaded
        self.book = ArmBook(policy)
        self.rng = np.random.default_rng(seed)

    def forget(self) -> None:
        """At a rebalance: the records of partitions this worker may no longer own (read again later)."""
        self.records.clear()
        self.partitions.clear()
        self.totals = {}
        for key, arm in self.remote.items():
            self._shift(key[1], arm, None)

    def put(self, key: tuple[int, str], arm: ArmStats) -> None:
        """The latest record of ``key`` (read from the table or written here); the item's total follows."""
        old = self.records.get(key) or self.remote.get(key)
        self.records[key] = arm
        self._shift(key[1], arm, old)

    def put_remote(self, key: tuple[int, str], arm: ArmStats) -> None:
        """A record of the explore-arms topic: counts in the totals while this worker has not read ``key``'s
        own record (another worker's partition, or one of its own not processed since the last rebalance)."""
        old = self.remote.get(key)
        self.remote[key] = arm
        if key not in self.records:
            self._shift(key[1], arm, old)

    def _shift(self, item_id: str, new: ArmStats, old: ArmStats | None) -> None:
        total = self.totals.get(item_id)
        self.totals[item_id] = new if total is None else shifted(total, new, old)

    def record(self, partition: int, item_id: str, born: float) -> ArmStats:
        """The latest record of arm (partition, item): the cache, else the table, else a new one."""
        key = (partition, item_id)
        found = self.records.get(key)
        if found is None:
            raw = self.read_arm(partition, item_id)
            try:
                found = decode_arm(raw) if raw is not None else ArmStats(born=born)
            except ArmDecodeError as exc:  # not ours to stop the stream for: start the arm over
                log.warning("arm record %r is unreadable (%s): counted from zero", key, exc)
                found = ArmStats(born=born)
            self.put(key, found)
        return found

    def view(self, model, now: float, partitions: Sequence[int],
             overlay: dict | None = None) -> tuple[ArmView, list[str], Counter]:
        """The bandit's view for a batch: the items that joined ``model``'s catalogue after training less than
        ``max_age_s`` ago (their records on ``partitions`` and on every partition read before, merged).
        -> (view, the live arms' ids, newly graduated / retired items)"""
        added = np.flatnonzero(now - model.added_at < self.policy.max_age_s)  # trained items: -inf
        ids = [model.item_ids[r - 1] for r in added.tolist() if r > 0]
        self.partitions.update(partitions)
        records = self.records
        for p in self.partitions:
            for item_id, row in zip(ids, added.tolist()):
                if (p, item_id) not in records:
                    self.record(p, item_id, float(model.added_at[row]))
        book = self.book
        book.arms = {i: self.totals[i] for i in ids}
        for (p, i), arm in (overlay or {}).items():  # the batch's own changes, over the stored records
            if i in book.arms:
                book.arms[i] = shifted(book.arms[i], arm, records[(p, i)])  # read by ArmUpdates.add
        book.rows = dict(zip(ids, added.tolist()))
        before = (len(book.graduated), len(book.retired))
        view = book.view(now)
        changed = Counter(graduated=len(book.graduated) - before[0], retired=len(book.retired) - before[1])
        return view, book.live(now), changed

    def states(self, now: float) -> Counter:
        """Live arms by state, for the ``stream_rec_explore_arms`` gauge."""
        live = self.book.live(now)
        return Counter("graduated" if i in self.book.graduated else "retired" if i in self.book.retired
                       else "exploring" for i in live)


class ArmUpdates:
    """A micro-batch's changes to the arm records: read through the explorer, written here, handed to the
    result (and the explorer's cache) by :meth:`finish` once the batch went through."""

    def __init__(self, explorer: Explorer, born: Callable[[str], float]):
        self.explorer, self.born = explorer, born
        self.start: dict[tuple[int, str], int] = {}  # each touched record's ``applied`` when the batch began
        self.new: dict[tuple[int, str], ArmStats] = {}
        self.counts: Counter = Counter()

    def add(self, partition: int, item_id: str, offset: int, change: Callable[[ArmStats], ArmStats]) -> bool:
        """Apply ``change`` to the arm unless the event at ``offset`` is in it already (its watermark)."""
        key = (partition, item_id)
        current = self.new.get(key)
        if current is None:
            current = self.explorer.record(partition, item_id, self.born(item_id))
            self.start.setdefault(key, current.applied)
        if offset <= self.start[key]:
            return False
        self.new[key] = change(current)
        return True

    def finish(self, result) -> None:
        """The records to stage (hits clamped to impressions: a reader refuses more), the counts."""
        for key, arm in self.new.items():
            if arm.hits > arm.impressions:
                arm = replace(arm, hits=arm.impressions)
            result.arms[key] = encode_arm(arm)
            self.explorer.put(key, arm)
        result.explore.update(self.counts)


def shifted(total: ArmStats, new: ArmStats, old: ArmStats | None) -> ArmStats:
    """An item's total with one partition's record ``old`` replaced by ``new`` (``arms.merge_arms``
    incrementally: born the earliest, applied meaningless)."""
    old = old or ArmStats(born=new.born)
    return ArmStats(impressions=total.impressions + new.impressions - old.impressions,
                    hits=total.hits + new.hits - old.hits,
                    expected=max(0.0, total.expected + new.expected - old.expected),
                    born=min(total.born, new.born), applied=-1)


def event_ordinal(msg) -> int:
    """An event's place on its partition as an arm's ``applied`` watermark remembers it: the events epoch
    (``Settings.events_epoch``: a new events topic starts its offsets at 0 again) above the offset."""
    return msg.epoch << 48 | msg.offset


def read_exposure(raw: bytes) -> Exposure:
    try:
        return decode_exposure(raw) if raw else Exposure()
    except ArmDecodeError:
        return Exposure()


def resolve_feedback(updates: ArmUpdates, states: list, pending: Sequence[Sequence[tuple[int, object]]],
                     replays: set[int], batch: Sequence) -> None:
    """Each user's first new event resolves her pending impressions (``states[n]`` gets the resolved
    exposure; a hit is added to the arm on the event's partition)."""
    window = updates.explorer.policy.window_s
    for n, (st, fresh) in enumerate(zip(states, pending)):
        if n in replays or not st.exposure or not fresh:
            continue
        index, event = fresh[0]
        exposure = read_exposure(st.exposure)
        negative = is_negative(event.event_type, event.value)
        exposure, hit, _ = resolve(exposure, "" if negative else event.item_id, event.timestamp, window)
        at = event_ordinal(batch[index])
        if hit is not None and updates.add(batch[index].partition, event.item_id, at, lambda arm: arm.hit(at)):
            updates.counts["hits"] += 1
        states[n] = replace(st, exposure=encode_exposure(exposure))


def explore_lists(updates: ArmUpdates, model, *, states: list, hiddens, seen: list[list[int]],
                  offsets: Sequence[tuple[int, int, float]], lists: list, extras: list, replays: set[int],
                  now: float) -> tuple[list, list]:
    """Arms put into each user's list (from its bottom up), their impressions counted and stored as the
    user's exposure (``states[n]``); ``offsets[n]``: (partition, offset, event time) of the event her list
    answers. A replayed user's list (sent again for a redelivered event) gets the arms her stored exposure
    holds, no new draw, and counts nothing: the list sent again shows what was counted. -> (lists, extras)"""
    explorer, policy = updates.explorer, updates.explorer.policy
    view, live, changed = explorer.view(model, now, sorted({p for p, _, _ in offsets}), overlay=updates.new)
    updates.counts.update(changed)
    if not live:
        return lists, extras
    s, log_p, value = arm_values(model, hiddens, seen, view, policy, explorer.rng)
    arm_of = {int(r): a for a, r in enumerate(view.rows.tolist())}
    item_of = {int(r): i for i, r in explorer.book.rows.items() if int(r) in arm_of}  # the live arms' ids
    lists, extras = list(lists), [dict(e) if e else {} for e in extras]
    for b, items in enumerate(lists):
        current = [r for r in model.rows_for([i for i, _ in items]) if r]
        wanted = value[b] if b not in replays else held_arms(states[b], view, item_of)
        rows, explored, inserted = fill_user(current, wanted, log_p=log_p[b], view=view, arm_of=arm_of, policy=policy)
        if list(np.argsort(-log_p[b, current], kind="stable")) == list(range(len(current))):
            rows.sort(key=lambda r: -log_p[b, r])  # a list in the model's order stays in it
        lists[b], extras[b] = relisted(model, items, rows=rows, inserted=set(inserted), scores=s[b], extra=extras[b])
        arms = [item_of[r] for r in rows if r in item_of]
        entry = {"arms": arms, "counted": [], "inserted": [item_of[r] for r in inserted]}
        if b not in replays:
            probability = {item_of[r]: math.exp(float(log_p[b, r])) for r in rows if r in item_of}
            entry["counted"] = count_impressions(updates, b, states=states, arms=arms, where=offsets[b],
                                                 probability=probability)
            updates.counts["exploring"] += len(explored)
            updates.counts["graduated_slots"] += len(inserted) - len(explored)
        extras[b]["explore"] = entry
    return lists, extras


def held_arms(state, view: ArmView, item_of: dict[int, str]) -> np.ndarray:
    """[A] values that put in exactly the arms pending in the user's exposure (any bar passed), no other."""
    pending = set(read_exposure(state.exposure).pending)
    return np.array([1e30 if item_key(item_of[int(r)]) in pending else -np.inf for r in view.rows.tolist()])


def arm_values(model, hiddens, seen: list[list[int]], view: ArmView, policy: ExplorePolicy, rng):
    """(masked scores [B, N+1], the model's log-probabilities over unseen items, each arm's log expected
    hits [B, A] with the Thompson draws, -inf where the gate closes)."""
    scores = model.score_rows(np.stack(hiddens))
    s = masked_scores(scores, seen)
    log_p = (s - torch.logsumexp(s, dim=1, keepdim=True)).numpy()
    relevance = None
    if policy.by == "content":
        from .freshness import content_relevance

        fresh = np.zeros(s.shape[1], dtype=bool)
        fresh[view.rows] = True
        relevance = content_relevance(model.model.text_vectors, seen, fresh, policy.profile_items)
    value = log_appeals(view, s.shape[0], rng) + log_p[:, view.rows]
    value[~exploration_gate(s, view, policy, relevance)] = -np.inf
    return s.numpy(), log_p, value


def relisted(model, items: list, rows: list[int], inserted: set[int], scores: np.ndarray, extra: dict):
    """The (item_id, score) list of ``rows`` (a kept item keeps its score, a new one gets the model's) and
    the extra fields with the reasons moved along (an item put in: ``NEW_ITEM_REASON``)."""
    score_of = dict(items)
    ids = [model.item_ids[r - 1] for r in rows]
    out = [(i, score_of.get(i, float(scores[r]))) for i, r in zip(ids, rows)]
    if "reasons" in extra:
        reason_of = dict(zip([i for i, _ in items], extra["reasons"]))
        extra["reasons"] = [NEW_ITEM_REASON if r in inserted else reason_of.get(i, "") for i, r in zip(ids, rows)]
    return out, extra


def count_impressions(updates: ArmUpdates, n: int, states: list, arms: list[str], where: tuple[int, int, float],
                      probability: dict[str, float]) -> list[str]:
    """The impressions of user ``n``'s sent list (``arms``: its new items), added to the arms of her
    events' partition; her exposure becomes that list. -> the items counted"""
    partition, offset, ts = where
    exposure = read_exposure(states[n].exposure)
    counted = counted_arms(exposure, arms, updates.explorer.policy.max_declines)
    for item in counted:
        p = probability.get(item, 0.0)
        if updates.add(partition, item, offset, lambda arm, p=p: arm.impressed(p, offset)):
            updates.counts["impressions"] += 1
    states[n] = replace(states[n], exposure=encode_exposure(expose(exposure, counted, ts)))
    return counted
