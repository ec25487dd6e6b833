"""The closed-loop simulator's world: a synthetic world (stream_rec_devtools.synthetic) whose new items arrive over
simulated days and whose simulated users answer the lists they are shown.

* **Before the simulation**: every user's history is the world's event log without the new items (they
  are new releases: absent from training). The model is trained on that log (``train_model``: what
  ``stream-rec train`` does with its defaults, through ``stream_rec.model.train``), new items excluded.
* **New items** are released at a uniform random time of the first ``release_days`` simulated days
  (seeded). Each has a *true appeal* ``a`` drawn from Beta(``appeal_beta``, ``appeal_beta``) -- with
  0.5 a hit-or-flop market (mean 0.5, most items near 0 or near 1) -- known to the simulator and to the
  oracle policy only.
* **A user's next event** is drawn from the world's own next-item probabilities given the user's whole
  history (``SyntheticWorld.oracle_next``), over released items the user has not seen, each new item's
  weighted by its appeal, and each item in the list the user holds weighted by ``1 + tilt`` (RecSim /
  RecoGym: the list shown changes what the user does, more so the more the list suits her):

      q(i) ∝ p_world(i | history) · appeal(i) · (1 + tilt · [i in list])   (appeal 1 for old items)

  Draws use one uniform number per event from a per-user generator (common random numbers): two
  policies that show a user the same lists get the same events.
* **When**: each user has events at the times of a Poisson process (``events_per_day``), the same for
  every policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream_rec.io.data import Interaction, Split, leave_one_out, sequences
from stream_rec_devtools.synthetic import SyntheticWorld, WorldSpec, make_spec_world

DAY = 86400.0

@dataclass(frozen=True)
class SimParams:
    days: int = 7
    users: int = 1500  # simulated users (the world's first ones)
    events_per_day: float = 4.0  # per user (Poisson)
    release_days: float = 5.0  # new items come out uniformly over the first this many days
    appeal_beta: float = 0.5  # true appeal ~ Beta(b, b)
    tilt: float = 1.0  # weight 1 + tilt for the items of the list the user holds
    k: int = 10
    seed: int = 0


@dataclass
class SimWorld:
    """A world ready to simulate: who, what they did, what comes out when, and how appealing it is."""

    world: SyntheticWorld
    params: SimParams
    texts: dict[str, str]  # item id -> the text the encoder reads ("title. text", as a catalog record)
    histories: dict[str, list[tuple[str, float]]]  # simulated user -> (item, timestamp) before the start
    new_items: list[str]
    release_at: dict[str, float]  # new item -> simulated time it joins the catalogue
    appeal: dict[str, float]  # new item -> true appeal (1 for the old items)
    start: float  # simulated time of day 0
    index: dict[str, int] = field(default_factory=dict)  # item id -> position in world.items
    weight: np.ndarray = field(default=None)  # [n items] appeal of every item

    @property
    def users(self) -> list[str]:
        return list(self.histories)

    def day_of(self, ts: float) -> int:
        return int((ts - self.start) // DAY)


def item_texts(world: SyntheticWorld) -> dict[str, str]:
    """What a catalog record {item_id, title, text} of each item reads as (``io.data.catalog_text``)."""
    return {it["item_id"]: f"{it['title']}. {it['text']}" for it in world.items}


def world_log(world: SyntheticWorld) -> dict[str, list[tuple[str, float]]]:
    """Every user's events without the new items, oldest first."""
    new = set(world.new_items)
    events = [Interaction(e["user_id"], e["item_id"], e["timestamp"]) for e in world.events if e["item_id"] not in new]
    return sequences(events)


def training_split(world: SyntheticWorld) -> Split:
    """Leave-one-out split of the log without the new items (what ``stream-rec train`` would be given)."""
    return leave_one_out(world_log(world))


def make_sim_world(spec: WorldSpec, params: SimParams) -> SimWorld:
    world = make_spec_world(spec)
    log = world_log(world)
    users = sorted(log)[:params.users]
    rng = np.random.default_rng([params.seed, 1])
    new = sorted(world.new_items)
    start = max(ts for u in log for _, ts in log[u]) + 3600.0
    release = rng.uniform(0.0, params.release_days * DAY, size=len(new))
    appeal = rng.beta(params.appeal_beta, params.appeal_beta, size=len(new))
    index = {it["item_id"]: n for n, it in enumerate(world.items)}
    weight = np.ones(len(world.items))
    weight[[index[i] for i in new]] = appeal
    return SimWorld(world, params, item_texts(world), {u: log[u] for u in users}, new,
                    {i: start + float(t) for i, t in zip(new, release)}, dict(zip(new, appeal.tolist())),
                    start, index, weight)


def event_times(sim: SimWorld) -> list[tuple[float, str]]:
    """(time, user) of every simulated event, time-ordered: a Poisson process per user (seeded per user)."""
    p = sim.params
    out = []
    for n, user in enumerate(sim.users):
        rng = np.random.default_rng([p.seed, 2, n])
        count = rng.poisson(p.events_per_day * p.days)
        out.extend((sim.start + float(t), user) for t in rng.uniform(0.0, p.days * DAY, size=count))
    out.sort()
    return out


class Users:
    """The simulated users' side: histories, released items, and each next event drawn from the world."""

    def __init__(self, sim: SimWorld):
        self.sim = sim
        ids = [it["item_id"] for it in sim.world.items]
        self.ids = ids
        self.released = np.ones(len(ids))
        self.released[[sim.index[i] for i in sim.new_items]] = 0.0
        self.history = {u: [i for i, _ in h] for u, h in sim.histories.items()}
        self.unseen = {}
        for u, h in self.history.items():
            mask = np.ones(len(ids))
            mask[[sim.index[i] for i in h]] = 0.0
            self.unseen[u] = mask
        self.rng = {u: np.random.default_rng([sim.params.seed, 3, n]) for n, u in enumerate(sim.users)}

    def release(self, item_ids) -> None:
        self.released[[self.sim.index[i] for i in item_ids]] = 1.0

    def weights(self, user: str) -> np.ndarray:
        """[n items] how likely the user's next event is each item (before the list's tilt, unnormalised)."""
        sim = self.sim
        return sim.world.oracle_next(user, self.history[user]) * sim.weight * self.released * self.unseen[user]

    def next_item(self, user: str, shown: list[str]) -> str | None:
        """The user's next event given the list she holds (None: nothing left to watch)."""
        sim = self.sim
        p = self.weights(user)
        if shown:
            p[[sim.index[i] for i in shown if i in sim.index]] *= 1.0 + sim.params.tilt
        u = self.rng[user].random()  # drawn whatever happens: the user's stream of numbers stays aligned
        total = p.sum()
        if total <= 0:
            return None
        n = int(np.searchsorted(np.cumsum(p), u * total, side="right"))
        item = self.ids[min(n, len(self.ids) - 1)]
        self.history[user].append(item)
        self.unseen[user][sim.index[item]] = 0.0
        return item


def train_model(sim_or_world, encoder, *, budget_s: float, threads: int = 1, progress: bool = False,
                config_kwargs: dict | None = None, train_kwargs: dict | None = None):
    """``stream-rec train`` with its defaults (``config_kwargs`` / ``train_kwargs``: GRUConfig / TrainParams
    overrides, for experiments) on the world's log without the new items (excluded from the catalogue: they
    join it from their text during the simulation). -> (Recommender, History)"""
    from stream_rec.model.train import TrainParams, train_recommender

    world = sim_or_world.world if isinstance(sim_or_world, SimWorld) else sim_or_world
    params = TrainParams(**{"threads": threads, "time_budget_s": budget_s} | dict(train_kwargs or {}))
    return train_recommender(training_split(world), item_texts(world), dict(config_kwargs or {}), params, encoder=encoder,
                             exclude_items=list(world.new_items), progress=progress)
