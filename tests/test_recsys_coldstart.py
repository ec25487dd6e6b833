"""Learned initial state on a tiny synthetic world: better first predictions than the zero state, and
it travels with the model directory."""

import numpy as np
import torch

from stream_rec.model.evaluate import EvalCase, evaluate_scorer, recommender_scorer
from stream_rec.model.gru import GRUConfig
from stream_rec.model.recommender import Recommender
from stream_rec.model.coldstart import INIT_STATE_FILE, learn_initial_state
from stream_rec.model.sequences import to_sequence
from stream_rec.model.train import TrainParams, train_model
from stream_rec_devtools.synthetic import make_world


def test_learned_initial_state_beats_zeros_for_new_users(tmp_path):
    torch.set_num_threads(1)
    # Popular starts: most users begin with episode 0 of their theme, so a good h0 knows where people start.
    world = make_world(n_users=300, events_per_user=(10, 16), items_per_theme=6, seed=5)
    by_user: dict[str, list] = {}
    for e in world.events:
        by_user.setdefault(e["user_id"], []).append((e["item_id"], e["timestamp"]))
    # every user's log starts at the first episode of a series: that is what a good h0 learns
    by_user = {u: s[k:] for u, s in by_user.items()
               for k in [next((i for i, (item, _) in enumerate(s) if item.endswith("-00")), len(s))] if len(s) - k >= 4}
    item_ids = [it["item_id"] for it in world.items]
    row_of = {i: r for r, i in enumerate(item_ids, start=1)}
    users = sorted(by_user)
    train_users, new_users = users[:-40], users[-40:]
    seqs = [to_sequence(by_user[u][:-1], row_of, valid_item=by_user[u][-1][0]) for u in train_users]
    config = GRUConfig(n_items=len(item_ids), text_dim=0, emb_dim=16, hidden=32, use_text=False, dropout=0.0)
    model, _ = train_model(seqs, config, params=TrainParams(epochs=4, batch_size=32, device="cpu"), progress=False)
    rec = Recommender(model, item_ids, "test", trained=True, device="cpu")

    # first events of new users: predict event t from the first t events, t = 0, 1, 2
    cases = []
    for u in new_users:
        s = to_sequence(by_user[u], row_of)
        for t in range(3):
            cases.append(EvalCase(u, s.rows[:t], s.gaps[:t], int(s.rows[t])))
    targets = torch.tensor([c.target for c in cases])

    def first_events_ce():
        return float(torch.nn.functional.cross_entropy(recommender_scorer(rec)(cases), targets))

    base, base_ce = evaluate_scorer(recommender_scorer(rec), cases, k=5), first_events_ce()
    rec.initial_state = learn_initial_state(model, seqs, first_n=3, epochs=40, lr=0.1, progress=False)
    learned, learned_ce = evaluate_scorer(recommender_scorer(rec), cases, k=5), first_events_ce()
    assert learned_ce < base_ce - 0.02  # held-out users' first events are likelier
    assert learned["hr@5"] >= base["hr@5"]

    rec.save(tmp_path / "m")
    assert (tmp_path / "m" / INIT_STATE_FILE).is_file()
    again = Recommender.load(tmp_path / "m", device="cpu")
    assert np.allclose(again.init_state(2), np.tile(rec.initial_state, (2, 1)))


def test_a_trained_model_carries_its_initial_state_and_the_worker_starts_new_users_from_it(tmp_path):
    """``train_recommender`` (what `stream-rec train` runs) learns h0 and the model directory carries it;
    the worker's first event of a user with no state steps from it, as ``Recommender.init_state`` does
    offline (`recommend`, `evaluate`), and not from zeros."""
    import json
    import time

    from stream_rec.io.data import leave_one_out, sequences, Interaction
    from stream_rec.model.train import train_recommender
    from stream_rec.pipeline import Incoming, PipelineConfig, process_batch, states_in
    from stream_rec.state import decode_state

    torch.set_num_threads(1)
    world = make_world(n_users=60, events_per_user=(6, 10), items_per_theme=6, seed=3)
    split = leave_one_out(sequences([Interaction(e["user_id"], e["item_id"], e["timestamp"]) for e in world.events]))
    params = TrainParams(epochs=1, batch_size=16, device="cpu", init_state_epochs=5)
    rec, _ = train_recommender(split, {}, {"use_text": False, "hidden": 16, "emb_dim": 8}, params, progress=False)
    assert rec.initial_state is not None and np.abs(rec.initial_state).sum() > 0
    rec.save(tmp_path / "m")
    assert (tmp_path / "m" / INIT_STATE_FILE).is_file()
    served = Recommender.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(served.initial_state, rec.initial_state, atol=1e-6)

    item = world.items[0]["item_id"]
    raw = json.dumps({"user_id": "newcomer", "item_id": item, "event_type": "view", "timestamp": 1.75e9}).encode()
    out = process_batch([Incoming(raw, b"newcomer", "events", 0, 0, time.time())], states_in({}), served,
                        PipelineConfig(top_k=5, half_precision_state=False))
    stored = decode_state(out.states["newcomer"]).hidden
    offline = served.step(served.init_state(1), served.rows_for([item]), [0.0])[0]
    from_zeros = served.step(served.model.init_state(1).numpy(), served.rows_for([item]), [0.0])[0]
    np.testing.assert_allclose(stored, offline, atol=1e-5)
    assert np.abs(stored - from_zeros).max() > 1e-3
    assert [i["item_id"] for i in out.recommendations[0]["items"]] == [
        i for i, _ in served.topk(offline[None], 5, [served.rows_for([item])])[0]]

    zero, _ = train_recommender(split, {}, {"use_text": False, "hidden": 16, "emb_dim": 8},
                                TrainParams(epochs=1, batch_size=16, device="cpu", init_state_epochs=0), progress=False)
    zero.save(tmp_path / "z")
    assert zero.initial_state is None and not (tmp_path / "z" / INIT_STATE_FILE).exists()
