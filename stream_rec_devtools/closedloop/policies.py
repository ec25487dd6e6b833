"""The new-item policies of the offline serving path (``sources.ServingSource``): how a list is picked
from the model's scores.

* ``PlainPolicy``: the model's top-k, nothing else (``none``);
* ``FixedPolicy``: today's freshness policy (``stream_rec.recsys.freshness.fresh_topk``), a fixed number
  of slots for fresh items that pass its relevance bar (``fixed``);
* ``BanditPolicy``: the bandit of ``stream_rec.recsys.explore`` (``bandit``), and ``OraclePolicy``, the
  same bandit knowing each new item's true appeal (``oracle``);
* ``OmniscientPolicy``: a reference that knows every user's true next-item probabilities (``omniscient``).
"""

from __future__ import annotations

import numpy as np

from stream_rec.recsys.arms import Exposure, counted_arms, decode_exposure, encode_exposure, expose, resolve
from stream_rec.recsys.explore import GRADUATED, ArmBook, ArmView, ExplorePolicy, explore_topk
from stream_rec.recsys.freshness import FreshnessPolicy, content_relevance, fresh_topk

from .sources import Shown, ids_of, plain_rows


class Born:
    """When each new row joined the catalogue (simulated time): the fresh mask of a policy."""

    def __init__(self):
        self.born: dict[int, float] = {}

    def released(self, rec, item_ids, now: float) -> None:
        for r in rec.rows_for(item_ids):
            self.born.setdefault(int(r), now)

    def fresh(self, n_rows: int, now: float, max_age_s: float) -> np.ndarray:
        mask = np.zeros(n_rows, dtype=bool)
        rows = [r for r, t in self.born.items() if now - t < max_age_s and r < n_rows]
        mask[rows] = True
        return mask

    def feedback(self, user, item, ts) -> None:
        """Plain and fixed policies learn nothing from events."""


class PlainPolicy(Born):
    def __init__(self, k: int = 10):
        super().__init__()
        self.k = k

    def lists(self, rec, users, scores, seen, now) -> list[Shown]:
        _, rows = plain_rows(scores, seen, self.k)
        out = []
        for r in rows:
            ids = ids_of(rec, r)
            out.append(Shown(ids, [], ids))
        return out


class FixedPolicy(Born):
    def __init__(self, policy: FreshnessPolicy, k: int = 10):
        super().__init__()
        self.policy, self.k = policy, k

    def lists(self, rec, users, scores, seen, now) -> list[Shown]:
        fresh = self.fresh(scores.shape[1], now, self.policy.max_age_s)
        relevance = (content_relevance(rec.model.text_vectors, seen, fresh, self.policy.profile_items)
                     if self.policy.by == "content" else None)
        result = fresh_topk(scores, self.k, seen, fresh, self.policy, relevance)
        _, plain = plain_rows(scores, seen, self.k)
        return [Shown(ids_of(rec, rows), ids_of(rec, added), ids_of(rec, p))
                for rows, added, p in zip(result.rows, result.added, plain)]


class BanditPolicy(Born):
    """The bandit (``stream_rec.recsys.explore``), its arms in one ``ArmBook`` (one events partition) and
    each user's exposure as the user state would carry it (encoded and decoded at every event)."""

    def __init__(self, policy: ExplorePolicy, k: int = 10, seed: int = 0):
        super().__init__()
        self.policy, self.k = policy, k
        self.book = ArmBook(policy)
        self.exposure: dict[str, bytes] = {}
        self.rng = np.random.default_rng([seed, 4])
        self.impressions = self.hits = 0
        self.item_of_row: dict[int, str] = {}

    def released(self, rec, item_ids, now: float) -> None:
        super().released(rec, item_ids, now)
        for item, r in zip(item_ids, rec.rows_for(item_ids)):
            self.book.register(item, r, now)
            self.item_of_row[r] = item

    def feedback(self, user, item, ts) -> None:
        raw = self.exposure.get(user)
        if raw is None:
            return
        exposure, hit, _ = resolve(decode_exposure(raw), item, ts, self.policy.window_s)
        if hit is not None and item in self.book.arms:
            self.book.arms[item] = self.book.arms[item].hit()
            self.hits += 1
        self.exposure[user] = encode_exposure(exposure)

    def view(self, now: float) -> ArmView:
        return self.book.view(now)

    def lists(self, rec, users, scores, seen, now) -> list[Shown]:
        view = self.view(now)
        relevance = None
        if self.policy.by == "content":
            fresh = np.zeros(scores.shape[1], dtype=bool)
            fresh[view.rows] = True
            relevance = content_relevance(rec.model.text_vectors, seen, fresh, self.policy.profile_items)
        exposures = [decode_exposure(self.exposure[u]) if u in self.exposure else Exposure() for u in users]
        result = explore_topk(scores, self.k, seen, view, self.policy, self.rng, relevance)
        _, plain = plain_rows(scores, seen, self.k)
        out = []
        for u, e, rows, inserted, arms, p in zip(users, exposures, result.rows, result.inserted, result.arms, plain):
            probability = {self.item_of_row[r]: prob for r, prob in arms}
            counted = counted_arms(e, list(probability), self.policy.max_declines)
            for item in counted:
                self.book.arms[item] = self.book.arms[item].impressed(probability[item])
            self.impressions += len(counted)
            self.exposure[u] = encode_exposure(expose(e, counted, now))
            out.append(Shown(ids_of(rec, rows), ids_of(rec, inserted), ids_of(rec, p)))
        return out


class OraclePolicy(BanditPolicy):
    """The bandit knowing every new item's true appeal: its appeal's prior is centred on ``appeal[item] x c``
    (``c``: how far the model's probabilities of new items are off, the same for all, learnt from all
    arms' feedback) and worth ``strength`` pseudo-hits; the item's own feedback still corrects the model's
    error on that very item. Nothing to explore: every arm is ranked in by its posterior mean, no slot cap.
    Its regret against the bandit is what not knowing the appeals costs."""

    def __init__(self, policy: ExplorePolicy, appeal: dict[str, float], k: int = 10, seed: int = 0,
                 strength: float = 10.0):
        super().__init__(policy, k, seed)
        self.appeal, self.strength = appeal, strength

    def view(self, now: float) -> ArmView:
        view = self.book.view(now)
        items = [self.item_of_row[r] for r in view.rows.tolist()]
        arms = [self.book.arms[i] for i in items]
        appeal = np.maximum(np.array([self.appeal.get(i, 1.0) for i in items]), 1e-6)
        scale = (1.0 + sum(a.hits for a in arms)) / (1.0 + float(np.dot(appeal, [a.expected for a in arms])))
        shape = self.strength + np.array([a.hits for a in arms], dtype=float)
        rate = self.strength / (appeal * scale) + np.array([a.expected for a in arms])
        return ArmView(view.rows, shape, rate, np.full(len(items), GRADUATED, dtype=np.int8))


class OmniscientPolicy(Born):
    """A reference beyond any learner: the bandit's selection (new items put in from the bottom up while
    their chance of being taken is at least ``min_gain`` times the displaced item's, no slot cap) with each
    user's *true* probabilities (the world's, the appeals) in place of the model's and a learnt appeal."""

    def __init__(self, policy: ExplorePolicy, users, k: int = 10):
        super().__init__()
        self.policy, self.users, self.k = policy, users, k

    def lists(self, rec, users, scores, seen, now) -> list[Shown]:
        from stream_rec.recsys.explore import fill_user, masked_scores

        arms = np.array(sorted(self.born), dtype=np.int64)
        view = ArmView(arms, np.ones(len(arms)), np.ones(len(arms)), np.full(len(arms), GRADUATED, dtype=np.int8))
        arm_of = {int(r): a for a, r in enumerate(arms.tolist())}
        s = masked_scores(scores, seen)
        _, plain = plain_rows(scores, seen, self.k)
        index = self.users.sim.index
        cols = np.array([index.get(i, 0) for i in rec.item_ids])
        out = []
        for b, user in enumerate(users):
            true = np.full(s.shape[1], -np.inf)
            with np.errstate(divide="ignore"):
                true[1:] = np.log(self.users.weights(user)[cols])
            true[~np.isfinite(s[b].numpy())] = -np.inf
            rows, _, inserted = fill_user(plain[b], true[arms], true, view, arm_of, self.policy)
            rows.sort(key=lambda r: -float(s[b, r]))
            out.append(Shown(ids_of(rec, rows), ids_of(rec, inserted), ids_of(rec, plain[b])))
        return out
