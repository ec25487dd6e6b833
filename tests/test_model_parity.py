"""The serving path (one model step per event from a stored state) must give the same scores as the
full-sequence forward pass used in training -- with and without the recent-items read-out, whose rows
travel in the state and must survive the state table's float16 round trip exactly, and with the
transition prior, whose last item the serving path reads from those rows."""

import numpy as np
import pytest
import torch

from stream_rec.model.evaluate import step_histories
from stream_rec.model.gru import PAD, GRUConfig, HybridGRU, decode_rows, encode_rows, recent_windows
from stream_rec.model.recommender import Recommender
from stream_rec.model.sequences import UserSequence
from stream_rec.model.train import final_states
from stream_rec.model.transitions import build_tables

torch.set_num_threads(1)
N_ITEMS, TEXT_DIM = 40, 16


def make_model(use_time_gap=True, use_text=True, seed=0, recent=4, prior_mix=False):
    torch.manual_seed(seed)
    text = torch.cat([torch.zeros(1, TEXT_DIM), torch.nn.functional.normalize(torch.randn(N_ITEMS, TEXT_DIM), dim=1)])
    cfg = GRUConfig(n_items=N_ITEMS, text_dim=TEXT_DIM, emb_dim=12, hidden=20, use_text=use_text,
                    use_time_gap=use_time_gap, dropout=0.3, recent=recent, text_bias=use_text, id_dropout=0.3,
                    prior_neighbours=3, prior_mix=prior_mix)
    model = HybridGRU(cfg, text).eval()
    with torch.no_grad():  # non-trivial weights everywhere, as after training
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.id_embedding.weight[PAD].zero_()
    if model.has_prior:  # counts of other random histories, and their text back-off
        model.prior.set_tables(*build_tables(random_histories(12, seed=7)[0], N_ITEMS + 1, text, 3))
    return model


def random_histories(n, seed=1, max_len=17):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=n)
    rows = [rng.integers(1, N_ITEMS + 1, size=L).astype(np.int64) for L in lengths]
    gaps = [np.concatenate([[0.0], rng.exponential(3600 * 5, size=L - 1)]).astype(np.float32) for L in lengths]
    return rows, gaps


@pytest.mark.parametrize("use_time_gap,recent,prior_mix", [(True, 4, False), (False, 4, False), (True, 0, False),
                                                          (True, 4, True)])
def test_step_by_step_equals_full_forward(use_time_gap, recent, prior_mix):
    model = make_model(use_time_gap, recent=recent, prior_mix=prior_mix)
    rows, gaps = random_histories(1, max_len=30)
    items, g = torch.from_numpy(rows[0])[None], torch.from_numpy(gaps[0])[None]
    with torch.no_grad():
        full = model(items, g)[0]  # [T, H]: the training pass
        windows = recent_windows(items, recent)[0] if recent else None  # [T, K]: what training scores with
        state = model.init_state(1)
        assert state.shape == (1, 20 + 2 * recent)
        for t in range(items.shape[1]):
            state = model.step(state, items[:, t], g[:, t])
            torch.testing.assert_close(state[0, :20], full[t], atol=1e-5, rtol=0)
            trained = model.scores(full[t:t + 1], recent=None if windows is None else windows[t:t + 1])[0]
            torch.testing.assert_close(model.scores(state)[0], trained, atol=1e-5, rtol=0)
            assert torch.isfinite(trained[1:]).all()


def test_the_prior_takes_part_in_the_parity_checks():
    assert make_model().has_prior and not make_model(recent=0).has_prior
    model = make_model()
    with torch.no_grad():
        state = model.step(model.init_state(1), torch.tensor([5]), torch.tensor([0.0]))
        with_prior = model.scores(state)
        del model.prior
        assert (with_prior - model.scores(state))[0, 1:].abs().max() > 0.1


def test_recent_rows_survive_float16():
    rows = torch.tensor([[0, 1, 2047, 2048, 2049, 70_000, 4_000_000]])
    digits = encode_rows(rows)
    assert torch.equal(decode_rows(digits.half().float()), rows)


def test_recommender_serving_path_equals_training_forward():
    """Recommender.step (numpy, batched across users of different lengths) == final_states (chunked
    full-sequence pass with right padding and carried state, as in training)."""
    model = make_model()
    rows, gaps = random_histories(9)
    rec = Recommender(model, [f"i{n}" for n in range(N_ITEMS)], "test", trained=True, device="cpu")
    served = step_histories(rec, rows, gaps)
    trained = final_states(model, [UserSequence(r, g) for r, g in zip(rows, gaps)], batch_size=4, max_len=5)
    np.testing.assert_allclose(served, trained.numpy(), atol=1e-5)
    s_serv = rec.score_rows(served)
    s_train = model.scores(trained)
    finite = torch.isfinite(s_train)
    torch.testing.assert_close(s_serv[finite], s_train[finite], atol=1e-5, rtol=0)


def test_topk_excludes_seen_and_padding():
    model = make_model()
    rec = Recommender(model, [f"i{n}" for n in range(N_ITEMS)], "test", trained=True, device="cpu")
    rows, gaps = random_histories(3)
    states = step_histories(rec, rows, gaps)
    lists = rec.topk(states, 10, [r.tolist() for r in rows])
    for recs, seen in zip(lists, rows):
        assert len(recs) == 10
        ids = [i for i, _ in recs]
        assert not set(rec.rows_for(ids)) & set(seen.tolist())
        assert PAD not in rec.rows_for(ids)
        assert [s for _, s in recs] == sorted((s for _, s in recs), reverse=True)


def test_state_is_the_hidden_vector_and_the_recent_rows():
    rec = Recommender(make_model(), [f"i{n}" for n in range(N_ITEMS)], "test", trained=True, device="cpu")
    assert rec.init_state(3).shape == (3, 20 + 2 * 4)
    assert rec.state_bytes == (20 + 8) * 4
    state = rec.step(rec.init_state(1), [7], [0.0])
    state = rec.step(state, [3], [60.0])
    assert decode_rows(torch.from_numpy(state[:, 20:])).tolist() == [[0, 0, 7, 3]]
    as_stored = state.astype(np.float16).astype(np.float32)  # the state table keeps float16
    np.testing.assert_array_equal(as_stored[:, 20:], state[:, 20:])
