"""The mixture of the model's softmax with the last item's normalised count row (``GRUConfig.prior_mix``,
``TransitionPrior.mix``): its scores are the mixture's log-probabilities, a saturated gate ranks as the
Markov chain, an item without transitions leaves the model alone, and training leaves each example's own
transition out of the row. Tiny data, pure, no Kafka."""

import dataclasses

import numpy as np
import pytest
import torch

from stream_rec.model.gru import GRUConfig, HybridGRU
from stream_rec.model.transitions import build_tables

torch.set_num_threads(1)
N, TEXT_DIM = 12, 6
SEQS = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3, 5, 1])]  # 2 -> 3 twice, 2 -> 4 once


def models(mix_bias: float, seed: int = 0) -> tuple[HybridGRU, HybridGRU]:
    """The same weights with and without the mixture (its gate constant: share sigmoid(mix_bias))."""
    torch.manual_seed(seed)
    text = torch.cat([torch.zeros(1, TEXT_DIM), torch.nn.functional.normalize(torch.randn(N, TEXT_DIM), dim=1)])
    cfg = GRUConfig(n_items=N, text_dim=TEXT_DIM, emb_dim=6, hidden=8, recent=3, prior_neighbours=2, prior_mix=True)
    mixed = HybridGRU(cfg, text).eval()
    with torch.no_grad():
        for p in mixed.parameters():
            p.normal_(0, 0.3)
        mixed.prior.mix_gate.weight.zero_()
        mixed.prior.mix_gate.bias.fill_(mix_bias)
    plain = HybridGRU(dataclasses.replace(cfg, prior_mix=False), text).eval()
    plain.load_state_dict({k: v for k, v in mixed.state_dict().items() if not k.startswith("prior.mix_gate")})
    for m in (mixed, plain):
        m.prior.set_tables(*build_tables(SEQS, N + 1, text, 2))
    return mixed, plain


def scores(model, last: int, leave_out=None):
    hidden = torch.linspace(-1, 1, 8).unsqueeze(0)
    with torch.no_grad():
        lo = None if leave_out is None else torch.tensor([leave_out])
        return model.scores(hidden, recent=torch.tensor([[0, 5, last]]), leave_out=lo)[0]


def test_the_scores_are_the_log_probabilities_of_the_mixture():
    mixed, plain = models(mix_bias=0.4)
    lam = float(torch.sigmoid(torch.tensor(0.4)))
    got = torch.exp(scores(mixed, last=2))[1:]
    row = torch.zeros(N + 1)
    row[3], row[4] = 2 / 3, 1 / 3
    expected = (1 - lam) * torch.softmax(scores(plain, last=2), 0)[1:] + lam * row[1:]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-5)


def test_a_saturated_gate_ranks_as_the_markov_chain_does():
    mixed, _ = models(mix_bias=40.0)
    s = scores(mixed, last=2)
    s[[5, 2]] = -np.inf  # seen
    assert torch.topk(s, 2).indices.tolist() == [3, 4]  # in the order of their counts, above every other item


def test_an_item_without_transitions_leaves_the_model_alone():
    mixed, plain = models(mix_bias=40.0)  # item 4 is never followed by anything
    torch.testing.assert_close(scores(mixed, last=4)[1:], torch.log_softmax(scores(plain, last=4), 0)[1:])


def test_training_leaves_each_examples_own_transition_out_of_the_row():
    mixed, plain = models(mix_bias=40.0)
    lam = float(torch.sigmoid(torch.tensor(40.0)))
    s = torch.exp(scores(mixed, last=2, leave_out=4))  # 2 -> 4 was the example's own: the row is 3 only
    assert float(s[3]) == pytest.approx(lam, rel=1e-5)
    assert float(s[4]) < 1e-6


def test_a_directory_from_before_the_mixture_loads_without_it(tmp_path):
    import json

    from stream_rec.model.recommender import Recommender

    _, plain = models(mix_bias=0.0)
    rec = Recommender(plain, [f"i{n}" for n in range(N)], "t", trained=True, device="cpu")
    out = rec.save(tmp_path / "old")
    config = json.loads((out / "config.json").read_text())
    config["format"] = 3
    del config["gru"]["prior_mix"]  # format 3 did not know the field
    (out / "config.json").write_text(json.dumps(config))
    loaded = Recommender.load(out, device="cpu")
    assert loaded.model.config.prior_mix is False and not hasattr(loaded.model.prior, "mix_gate")
    torch.testing.assert_close(scores(loaded.model, last=2), scores(plain, last=2))
