"""The transition prior (model/transitions.py): counts, text back-off, leave-one-out, the gate's reach,
and its life in a model directory and a live catalogue. Tiny data, pure, no Kafka."""

import json

import numpy as np
import pytest
import torch

from stream_rec.model.evaluate import EvalCase, markov_scorer, step_histories
from stream_rec.model.gru import GRUConfig, HybridGRU
from stream_rec.model.recommender import ModelLoadError, Recommender
from stream_rec.model.transitions import CSR, build_tables, count_transitions, gather_rows, text_backoff

torch.set_num_threads(1)
N, TEXT_DIM = 12, 6


def dense(m: CSR) -> np.ndarray:
    out = np.zeros((m.n_rows, m.n_rows), np.float32)
    for r in range(m.n_rows):
        out[r, m.indices[m.indptr[r]:m.indptr[r + 1]]] = m.values[m.indptr[r]:m.indptr[r + 1]]
    return out


def text_table(seed=0):
    torch.manual_seed(seed)
    return torch.cat([torch.zeros(1, TEXT_DIM), torch.nn.functional.normalize(torch.randn(N, TEXT_DIM), dim=1)])


SEQS = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3, 5, 1])]


def test_counts_are_the_pairs_of_consecutive_events():
    c = dense(count_transitions(SEQS, N + 1))
    expected = np.zeros((N + 1, N + 1), np.float32)
    for (i, j), n in {(1, 2): 2, (2, 3): 2, (2, 4): 1, (3, 5): 1, (5, 1): 1}.items():
        expected[i, j] = n
    np.testing.assert_array_equal(c, expected)


def test_an_item_without_transitions_borrows_its_text_neighbours_rows():
    text = text_table()
    text[9] = text[2] + 0.01 * text[7]  # item 9 reads like item 2 and has no transitions of its own
    counts = count_transitions(SEQS, N + 1)
    back = dense(text_backoff(counts, text, k=1))
    np.testing.assert_allclose(back[9], dense(counts)[2])  # its one neighbour: item 2 (3 twice, 4 once)
    no_text = text.clone()
    no_text[9] = 0
    assert dense(text_backoff(counts, no_text, k=1))[9].sum() == 0  # no text: nothing to borrow
    assert dense(text_backoff(counts, None, k=3)).sum() == 0  # ID-only model: no back-off


def test_training_leaves_each_examples_own_transition_out():
    model = model_with_prior(gate_bias=0.0)
    last, target = torch.tensor([1, 2, 2]), torch.tensor([2, 3, 4])
    with torch.no_grad():
        full = model.prior.features(last)[:, 0]  # log1p(counts)
        loo = model.prior.features(last, leave_out=target)[:, 0]
    at = torch.arange(3)
    torch.testing.assert_close(torch.expm1(full[at, target]), torch.tensor([2.0, 2.0, 1.0]))
    torch.testing.assert_close(torch.expm1(loo[at, target]), torch.tensor([1.0, 1.0, 0.0]))  # minus itself
    other = torch.ones_like(full, dtype=torch.bool)
    other[at, target] = False
    assert torch.equal(full[other], loo[other])  # every other column untouched


def model_with_prior(gate_bias, neighbours: int = 2, seed: int = 0) -> HybridGRU:
    cfg = GRUConfig(n_items=N, text_dim=TEXT_DIM, emb_dim=6, hidden=8, recent=3, prior_neighbours=neighbours)
    model = HybridGRU(cfg, text_table(seed)).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        model.prior.gate.bias.copy_(torch.as_tensor(gate_bias, dtype=torch.float32).expand(3))
    model.prior.set_tables(*build_tables(SEQS, N + 1, model.text_vectors, neighbours))
    return model


def test_a_strong_gate_ranks_as_the_markov_chain_does():
    """With the gate's weights large, the items that follow the last item rank in the order of their counts,
    above everything else: the fused scores can always fall back to what the count table knows."""
    model = model_with_prior(gate_bias=[200.0, 200.0, -200.0], neighbours=0)  # the last item's counts only
    rec = Recommender(model, [f"i{n}" for n in range(N)], "t", trained=True, device="cpu")
    history = np.array([5, 2])  # last item 2: followed by 3 (twice) and 4 (once)
    scores = rec.score_rows(step_histories(rec, [history], [np.zeros(2, np.float32)]))[0]
    scores[history] = -np.inf
    top = torch.topk(scores, 2).indices.tolist()
    markov = markov_scorer(SEQS, N + 1)([EvalCase("u", history, np.zeros(2, np.float32), 0)])[0]
    markov[history] = -np.inf
    assert top == [3, 4] == torch.topk(markov, 2).indices.tolist()


def test_the_earlier_recent_items_counts_reach_the_scores():
    """"Back to what was left": item 5 was followed by 1 once; with 5 before the last item, item 1 gains
    from the earlier items' counts (the attention has only item 5 to look at), and from nothing else."""
    model = model_with_prior(gate_bias=[-200.0, -200.0, 0.0])  # only the earlier items' feature
    with torch.no_grad():
        model.prior.gate.weight.zero_()
        prior = model.prior.scores(torch.zeros(2, 8), model.item_tables().vectors, torch.tensor([[0, 5, 3], [0, 0, 3]]))
    assert prior[0, 1] == pytest.approx(np.log1p(1.0) * np.log(1 + np.e ** 0.0), rel=1e-5)  # softplus(0) * log1p(1)
    assert prior[0].abs().sum() == pytest.approx(float(prior[0, 1]))
    assert float(prior[1].abs().sum()) == 0.0  # no earlier item


def test_gather_weighted_matches_the_dense_matrix():
    from stream_rec.model.transitions import gather_weighted

    counts = count_transitions(SEQS + [np.array([7, 8, 7, 9])], N + 1)
    rows, weights = torch.tensor([[2, 7], [0, 1]]), torch.tensor([[0.25, 2.0], [1.0, 0.5]])
    got = gather_weighted(*(torch.as_tensor(a) for a in counts), rows, weights, N + 1)
    d = np.log1p(dense(counts))
    np.testing.assert_allclose(got.numpy(), [0.25 * d[2] + 2.0 * d[7], 0.5 * d[1]], rtol=1e-6)


def test_head_rows_keep_the_largest_entries_of_each_row():
    from stream_rec.model.transitions import head_rows

    counts = count_transitions(SEQS + [np.array([2, 5]), np.array([2, 3]), np.array([2, 6]), np.array([2, 5])], N + 1)
    full, head = dense(counts), dense(head_rows(counts, 2))
    assert full[2].tolist()[3:7] == [3, 1, 2, 1] and head[2].tolist()[3:7] == [3, 0, 2, 0]  # 3 and 5 kept
    np.testing.assert_array_equal(np.delete(head, 2, axis=0), np.delete(full, 2, axis=0))  # short rows whole


def test_gather_rows_matches_the_dense_matrix():
    counts = count_transitions(SEQS + [np.array([7, 8, 7, 9])], N + 1)
    rows = torch.tensor([2, 0, 7, 12, 2])
    got = gather_rows(*(torch.as_tensor(a) for a in counts), rows, N + 1)
    np.testing.assert_array_equal(got.numpy(), dense(counts)[rows.numpy()])


def make_rec(prior=True) -> Recommender:
    model = model_with_prior(gate_bias=0.5) if prior else HybridGRU(
        GRUConfig(n_items=N, text_dim=TEXT_DIM, emb_dim=6, hidden=8, recent=3, prior=False), text_table()).eval()
    return Recommender(model, [f"i{n}" for n in range(N)], "t", trained=True, device="cpu",
                       item_texts=[f"t{n}" for n in range(N)])


def scores_after(rec, rows):
    return rec.score_rows(step_histories(rec, [np.array(rows)], [np.zeros(len(rows), np.float32)])).numpy()


def test_the_prior_is_saved_and_loaded_with_the_model(tmp_path):
    rec = make_rec()
    loaded = Recommender.load(rec.save(tmp_path / "m"), device="cpu")
    for a, b in zip(loaded.model.prior.tables(), rec.model.prior.tables()):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(scores_after(loaded, [1, 2]), scores_after(rec, [1, 2]), atol=1e-6)
    assert np.abs(scores_after(rec, [1, 2])[0, 1:] - scores_after(make_rec(prior=False), [1, 2])[0, 1:]).max() > 0


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda t: t.update(counts_indices=np.array([1, 2, 99, 3, 5], np.int32)), "column", id="column"),
    pytest.param(lambda t: t.update(counts_values=-t["counts_values"]), "finite", id="negative"),
    pytest.param(lambda t: t.update(backoff_values=t["backoff_values"] * np.nan), "finite", id="nan"),
    pytest.param(lambda t: t.update(counts_indptr=t["counts_indptr"][::-1].copy()), "indptr", id="indptr"),
    pytest.param(lambda t: t.update(counts_indptr=t["counts_indptr"][:-1].copy()), "indptr", id="short"),
    pytest.param(lambda t: t.pop("backoff_indices"), "missing", id="missing_array"),
])
def test_a_tampered_prior_is_a_clear_error(tmp_path, edit, message):
    from safetensors.numpy import load_file, save_file

    out = make_rec().save(tmp_path / "m")
    tables = load_file(str(out / "transitions.safetensors"))
    edit(tables)
    save_file(tables, str(out / "transitions.safetensors"))
    with pytest.raises(ModelLoadError, match=message):
        Recommender.load(out, device="cpu")


def test_a_model_with_a_prior_needs_its_tables(tmp_path):
    out = make_rec().save(tmp_path / "m")
    (out / "transitions.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="transitions.safetensors"):
        Recommender.load(out, device="cpu")


def test_a_directory_from_before_the_prior_loads_with_its_old_behaviour(tmp_path):
    rec = make_rec(prior=False)
    out = rec.save(tmp_path / "old")
    config = json.loads((out / "config.json").read_text())
    config["format"] = 2
    for name in ("prior", "prior_neighbours"):
        del config["gru"][name]  # format 2 knew neither field
    (out / "config.json").write_text(json.dumps(config))
    loaded = Recommender.load(out, device="cpu")
    assert not loaded.model.has_prior
    np.testing.assert_allclose(scores_after(loaded, [1, 2]), scores_after(rec, [1, 2]), atol=1e-6)


def test_items_added_after_training_back_off_to_their_text_neighbours(tmp_path):
    rec = make_rec()
    like_two = rec.model.text_vectors[2].numpy()
    rows = rec.add_items(["fresh", "blank"], np.stack([like_two, np.zeros(TEXT_DIM, np.float32)]))
    prior = rec.model.prior
    assert prior.n_rows == N + 3 and prior.out_counts.shape == (N + 3,)
    counts, backoff = (dense(t) for t in prior.tables())
    assert counts[rows].sum() == 0  # no transitions of their own
    assert backoff[rows[0]].sum() > 0 and set(np.flatnonzero(backoff[rows[0]])) >= {3, 4}  # item 2's followers
    assert backoff[rows[1]].sum() == 0  # no text: no prior
    scores = scores_after(rec, [1, rows[0]])
    assert np.isfinite(scores[0, 1:]).all()
    loaded = Recommender.load(rec.save(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(scores_after(loaded, [1, rows[0]]), scores, atol=1e-6)


def test_training_hides_the_prior_of_the_items_whose_ids_are_dropped():
    """ID dropout simulates items that join after training; they have no transitions into them, so the rows
    whose IDs a draw hides lose their prior columns too (every other column keeps it)."""
    model = model_with_prior(gate_bias=2.0)
    model.config = type(model.config)(**(model.config.to_dict() | {"id_dropout": 0.5}))
    model.train()
    model.dropout.p = 0.0  # the same user vector in both calls
    torch.manual_seed(3)
    tables = model.item_tables()
    hidden = tables.id_hidden
    assert hidden is not None and 0 < int(hidden[1:].sum()) < N
    hidden = torch.zeros(N + 1, dtype=torch.bool)  # a draw fixed here: the test needs a hidden item with a prior
    hidden[[3, 7]] = True  # item 3 followed item 2 in training (a prior to hide), item 4 did too (kept)
    tables = tables._replace(id_hidden=hidden)
    state, recent = torch.randn(2, 8), torch.tensor([[0, 1, 2], [1, 2, 2]])
    with torch.no_grad():
        full = model.scores(state, tables, recent=recent)
        hid = model.scores(state, tables, recent=recent, hide_prior=True)
        prior = model.prior.scores(state, tables.vectors, recent)
    assert (prior[:, 3] > 0).all() and (prior[:, 4] > 0).all()
    torch.testing.assert_close(hid[:, ~hidden], full[:, ~hidden])
    torch.testing.assert_close(hid[:, hidden], (full - prior)[:, hidden])
    assert model.eval().item_tables().id_hidden is None  # serving: nothing hidden
