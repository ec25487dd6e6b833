"""Fine-tuning in memory: a model trained on one world follows a shifted one, never gets worse on the
recent validation targets, and learns items it did not know."""

from types import SimpleNamespace

import torch

from stream_rec.model.gru import GRUConfig
from stream_rec.model.recommender import Recommender
from stream_rec.learning.finetune import FinetuneParams, finetune, time_slices
from stream_rec.model.sequences import to_sequence
from stream_rec.model.train import TrainParams, train_model
from stream_rec_devtools.synthetic import make_world


def _seqs(events, prefix=""):
    out = {}
    for e in events:
        out.setdefault(prefix + e["user_id"], []).append((e["item_id"], e["timestamp"]))
    return out


def test_finetune_follows_a_shifted_world_and_adds_new_items():
    torch.set_num_threads(1)
    old = make_world(n_users=120, items_per_theme=5, p_next=0.9, seed=1, themes=["space", "cooking", "nature"])
    ids = [it["item_id"] for it in old.items]
    row_of = {i: r for r, i in enumerate(ids, start=1)}
    seqs = [to_sequence(s[:-1], row_of, s[-1][0]) for s in _seqs(old.events).values()]
    config = GRUConfig(n_items=len(ids), text_dim=0, emb_dim=16, hidden=32, use_text=False, dropout=0.0)
    model, _ = train_model(seqs, config, params=TrainParams(epochs=3, device="cpu"), progress=False)
    rec = Recommender(model, ids, "v1", trained=True, device="cpu", item_texts=[""] * len(ids))
    # the recent world: other series order (p_next 0 -> random within theme) and a new theme
    new = make_world(n_users=120, items_per_theme=5, p_next=0.0, p_same_theme=0.9, seed=2,
                     themes=["space", "detective"])
    texts = {it["item_id"]: it["title"] for it in new.items}
    tuned, report = finetune(rec, _seqs(new.events, "n"), item_texts=texts,
                             params=FinetuneParams(epochs=3, lr=3e-3, device="cpu"), progress=False)
    assert report.added_items == 5  # the detective items
    assert all(i in tuned.row_of for i in texts) and "detective-00" not in rec.row_of  # original untouched
    valid = [e["valid_ndcg@10"] for e in report.epochs]
    assert report.best_epoch > 0 and valid[report.best_epoch] > valid[0]
    assert tuned.meta["finetune"]["from_version"] == "v1"


def test_time_slices_are_time_ordered_and_complete():
    events = [SimpleNamespace(timestamp=t) for t in [5, 1, 4, 2, 3, 9, 8, 7, 6, 10]]
    a, b, c = time_slices(events, (0.8, 0.9))
    assert [e.timestamp for e in a] == [1, 2, 3, 4, 5, 6, 7, 8] and [e.timestamp for e in b] == [9]
    assert [e.timestamp for e in c] == [10]
