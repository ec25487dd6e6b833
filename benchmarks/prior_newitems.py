"""How the transition prior treats new items (issue 21, phase 3): for a trained model and a synthetic world,
the new-item users' and warm users' validation events ranked among all items (the new items joined from
their text), with the prior's part of the new items' scores replaced by serving-time patches.

    python benchmarks/prior_newitems.py --model runs/x21/models_default/cold --world cold

Prints, per variant, new-item users' HR/NDCG@10 and the warm users' NDCG@10 cost against the model as it
is; and, as is, the gate's mean weights and the new-item targets' median rank with and without the prior.
Variants (scores of the items nothing led to in training, i.e. the new ones): ``max5``, the largest prior
part of their 5 nearest items by text; ``offB``, a constant B logits; ``wbB``, B times the last item's
share of distinct followers (T / (N + T), Witten-Bell). docs/EXPLORATION.md, phase 3, has the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory with a transition prior")
    p.add_argument("--world", default="cold", help="a synthetic world of benchmarks/datasets.py")
    p.add_argument("--events", default="valid", choices=["valid", "test"], help="validation (default) or test events")
    p.add_argument("--limit", type=int, default=1500, help="users per group")
    return p.parse_args(argv)


def ranks(scores, cases, targets):
    import torch

    s = scores.clone()
    for n, c in enumerate(cases):
        s[n, torch.as_tensor(c.rows, dtype=torch.long)] = -math.inf
    s[:, 0] = -math.inf
    return (s > s[torch.arange(len(cases)), targets][:, None]).sum(1)


def main(argv=None) -> int:
    import torch

    import datasets
    from stream_rec.model.encoder import shared_encoder
    from stream_rec.model.evaluate import step_histories, test_cases
    from stream_rec.model.recommender import Recommender
    from stream_rec.model.transitions import text_neighbours

    args = parse_args(argv)
    torch.set_num_threads(1)
    encoder = shared_encoder()
    ds = datasets.load(args.world, None)
    rec = Recommender.load(args.model, device="cpu")
    rec.add_catalog({i: ds.items.get(i, "") for i in sorted(ds.new_items)}, lambda: encoder)
    m, prior = rec.model, rec.model.prior
    n_rows = prior.n_rows
    incoming = torch.bincount(prior.counts_indices, minlength=n_rows)[:n_rows] > 0
    has_text = m.text_vectors.abs().sum(1) > 0
    cols = torch.nonzero(~incoming & has_text).squeeze(1)
    nb, _ = text_neighbours(m.text_vectors, torch.nonzero(incoming & has_text).squeeze(1), cols, 5)
    followers = torch.diff(prior.counts_indptr).float()
    wb = torch.where(prior.out_counts > 0, followers / (prior.out_counts + followers).clamp(min=1e-9), torch.zeros(()))
    captured = {}
    original = prior.scores

    def keep(h, vectors, recent, leave_out=None):
        captured["w"] = prior.weights(h, vectors[recent[:, -1]], recent[:, -1], leave_out)
        captured["p"] = original(h, vectors, recent, leave_out)
        return captured["p"]

    prior.scores = keep
    patches = {"as is": None, "max5": lambda p, last: p[:, nb].max(-1)[0]}
    patches |= {f"off{b:g}": (lambda p, last, b=b: b) for b in (1.0, 1.5, 2.0, 2.5)}
    patches |= {f"wb{b:g}": (lambda p, last, b=b: b * wb[last][:, None]) for b in (2.0, 4.0, 6.0)}
    results = {name: {} for name in patches}
    events = getattr(ds.split, args.events)
    for group in ("new", "warm"):
        targets = {u: t for u, t in events.items() if (t[0] in ds.new_items) == (group == "new")}
        cases = test_cases(ds.split.full, targets, rec.row_of)[:args.limit]
        states = step_histories(rec, [c.rows for c in cases], [c.gaps for c in cases])
        with torch.no_grad():
            full = rec.score_rows(states).cpu()
        p, target = captured["p"], torch.tensor([c.target for c in cases])
        last = torch.tensor([int(c.rows[-1]) if len(c.rows) else 0 for c in cases])
        if group == "new":
            print(f"gate weights (own, text back-off, recent), mean: {[round(x, 3) for x in captured['w'].mean(0).tolist()]}")
            top = full.topk(10, dim=1).indices
            print(f"prior part of the top-10 scores, mean: {p.gather(1, top).mean().item():.2f} logits; "
                  f"of the new-item targets: {p[torch.arange(len(cases)), target].mean().item():.2f}")
            for label, s in (("with the prior", full), ("GRU part alone", full - p)):
                print(f"new-item targets' median rank {label}: {ranks(s, cases, target).float().median().item():.0f}")
        for name, patch in patches.items():
            s = full.clone()
            if patch is not None:
                s[:, cols] = (full - p)[:, cols] + patch(p, last)
            r = ranks(s, cases, target)
            hit = (r < 10) & (target > 0)
            ndcg = torch.where(hit, 1 / torch.log2(r.float() + 2), torch.zeros(()))
            results[name][group] = (hit.float().mean().item(), ndcg.mean().item())
    base = results["as is"]["warm"][1]
    print(f"| patch | new-item HR@10 | new-item NDCG@10 | warm NDCG@10 | warm NDCG@10 cost |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['new'][0]:.4f} | {r['new'][1]:.4f} | {r['warm'][1]:.4f} | {1 - r['warm'][1] / base:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
