"""The data sets of the quality benchmark and the sweep: MovieLens folders and synthetic worlds.

    load("ml-100k", data_dir)       # MovieLens, all items in training
    load("ml-100k-new", data_dir)   # MovieLens with 10% of the items new: their events left out of training
    load("series", data_dir)        # a synthetic world (stream_rec.synthetic.WorldSpec), ignores data_dir

Every data set is the same leave-one-out split by time (each user's last event = test, the one before =
validation). Items in ``new_items`` are absent from training: they are not in the trained catalog and
join it afterwards from their text (``Recommender.add_catalog``). In the worlds they are new releases,
out just before each user's last two events (the validation and test events); in the MovieLens ``-new`` sets they
are 10% of the items picked at random, whose events are removed from the training sequences and the
validation targets (``train_split``; the protocol of issue 14). Test targets are never touched: the
users whose test item is new are the new-item users, the others the warm users.

The worlds (chosen before any model was run on them, knobs in ``WorldSpec``):

* ``series``: strong order -- 60% of next items are the next episode, half of the others go back to the
  series left unfinished; short histories (8-40);
* ``topics``: weak order, topic-driven -- 15% next episode, the rest mostly inside the user's topics;
  histories of 20-80;
* ``cold``: a quarter of the items are new releases (latest episodes), informative titles, 50% next episode;
* ``noise``: as ``cold`` with 8% new items, but item texts are random pseudo-words.

A first-order Markov chain is close to the best possible ranking (the generator's own probabilities,
``oracle_scorer``) when the next item depends on the last one only; ``resume`` is what makes the rest of
the history matter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from stream_rec.synthetic import WorldSpec

WORLDS = {
    "series": WorldSpec(name="series", order=0.6, resume=0.5, stickiness=0.8, history=(8, 40), new_share=0.08,
                        text="series", seed=11),
    "topics": WorldSpec(name="topics", order=0.15, resume=0.0, stickiness=0.85, history=(20, 80), new_share=0.05,
                        text="series", seed=12),
    "cold": WorldSpec(name="cold", order=0.5, resume=0.3, stickiness=0.7, history=(8, 40), new_share=0.25,
                      text="series", seed=13),
    "noise": WorldSpec(name="noise", order=0.5, resume=0.3, stickiness=0.7, history=(8, 40), new_share=0.08,
                       text="random", seed=14),
}
MOVIELENS = ("ml-100k", "ml-1m-half")
NEW_ITEM_SHARE = 0.1  # MovieLens "-new" variants: items held out of training
NAMES = list(MOVIELENS) + list(WORLDS) + [f"{m}-new" for m in MOVIELENS]


@dataclass
class Dataset:
    name: str
    split: object  # stream_rec.io.data.Split over all events
    items: dict[str, str]  # item id -> text
    new_items: set[str] = field(default_factory=set)
    informative_text: bool = True
    world: object = None  # stream_rec.synthetic.SyntheticWorld for a synthetic world (its oracle)

    @property
    def train_split(self):
        """``split`` with the new items' events removed from training and validation."""
        if not self.new_items:
            return self.split
        new = self.new_items
        s = self.split
        return type(s)(train={u: [e for e in seq if e[0] not in new] for u, seq in s.train.items()},
                       valid={u: v for u, v in s.valid.items() if v[0] not in new}, test=s.test, full=s.full)

    @property
    def new_item_users(self) -> set[str]:
        return {u for u, (item, _) in self.split.test.items() if item in self.new_items}

    @property
    def warm_users(self) -> set[str]:
        return set(self.split.test) - self.new_item_users

    def describe(self) -> dict:
        return {"events": sum(len(s) for s in self.split.full.values()), "users": len(self.split.full),
                "items": len(self.items), "new_items": len(self.new_items),
                "new_item_users": len(self.new_item_users)}


def world_dataset(spec: WorldSpec) -> Dataset:
    from stream_rec.io.data import Interaction, leave_one_out, sequences
    from stream_rec.synthetic import make_spec_world

    world = make_spec_world(spec)
    split = leave_one_out(sequences([Interaction(e["user_id"], e["item_id"], e["timestamp"]) for e in world.events]))
    items = {i["item_id"]: f"{i['title']}. {i['text']}" for i in world.items}
    return Dataset(spec.name, split, items, set(world.new_items), informative_text=spec.text != "random", world=world)


def oracle_scorer(ds: Dataset, row_of: dict[str, int]):
    """A scorer (``model.evaluate.evaluate_scorer``) that ranks by the world's true next-item
    probabilities given each case's last item: the ceiling of every model on that world."""
    import torch

    world = ds.world
    item_ids = [it["item_id"] for it in world.items]
    cols = torch.tensor([row_of.get(i, 0) for i in item_ids])
    id_of = {r: i for i, r in row_of.items()}

    def score(cases):
        out = torch.full((len(cases), len(row_of) + 1), -1.0)
        for b, c in enumerate(cases):  # the true last item: new items are missing from the case's history
            seq = [i for i, _ in ds.split.full[c.user_id]]
            at = seq.index(id_of[c.target]) if c.target in id_of else len(c.rows)
            p = torch.from_numpy(world.oracle_next(c.user_id, seq[:at])).float()
            out[b, cols[cols > 0]] = p[cols > 0]
        return out

    return score


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    if name in WORLDS:
        return world_dataset(WORLDS[name])
    base = name.removesuffix("-new")
    if base not in MOVIELENS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")
    if data_dir is None:
        raise ValueError(f"{name} needs --data-dir (the folder holding {base}/)")
    from stream_rec.io.data import leave_one_out, read_events, read_items, sequences

    path = Path(data_dir) / base
    split = leave_one_out(sequences(read_events(path)))
    items = read_items(path)
    new: set[str] = set()
    if name.endswith("-new"):
        occurring = sorted({i for seq in split.full.values() for i, _ in seq})
        new = set(random.Random(0).sample(occurring, max(1, int(NEW_ITEM_SHARE * len(occurring)))))
    return Dataset(name, split, items, new)
