"""Why a mixture of probabilities, not a log-linear sum: hand-made scorers on a world's validation events.

    python benchmarks/mixture_probe.py --dataset topics

Scores each user's validation event (the same cases as benchmarks/quality.py's "valid NDCG@10") with
Markov, the generator's oracle, and two scorers that know what the item texts tell (each item's topic)
besides the counts: ``a * C[last] / n_last + (1 - a) * topic-to-topic share x popularity inside the topic``
(a mixture) and ``log popularity + log topic share + beta * log1p(C[last, j])`` (the log-linear form of the
model's transition prior). Validation events only; the test events are never looked at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    import datasets
    import quality
    from stream_rec.model.evaluate import evaluate_scorer, markov_scorer
    from stream_rec.model.sequences import to_sequence

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="topics", choices=sorted(datasets.WORLDS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = datasets.load(args.dataset)
    row_of = quality.catalogue(ds.train_split)
    valid = quality.valid_cases(ds.train_split, row_of)
    train = [to_sequence(seq, row_of).rows for seq in ds.train_split.train.values()]
    n = len(row_of) + 1
    topic_names = sorted({it["attributes"]["topic"] for it in ds.world.items})
    topic = np.zeros(n, np.int64)
    for it in ds.world.items:
        if it["item_id"] in row_of:
            topic[row_of[it["item_id"]]] = topic_names.index(it["attributes"]["topic"])
    pop, shift = np.ones(n), np.ones((len(topic_names), len(topic_names)))
    rows: dict[int, dict[int, int]] = {}
    for r in train:
        np.add.at(pop, r, 1)
        np.add.at(shift, (topic[r[:-1]], topic[r[1:]]), 1)
        for i, j in zip(r[:-1].tolist(), r[1:].tolist()):
            rows.setdefault(i, {}).setdefault(j, 0)
            rows[i][j] += 1
    shift /= shift.sum(1, keepdims=True)
    inside = pop / np.bincount(topic, weights=pop)[topic]  # popularity share inside the item's topic

    def scorer(form: str, w: float):
        def score(cases):
            out = torch.zeros(len(cases), n)
            for b, c in enumerate(cases):
                last = int(c.rows[-1])
                row, smooth = rows.get(last, {}), shift[topic[last]][topic]
                total = sum(row.values()) or 1
                s = (1 - w) * smooth * inside if form == "mixture" else np.log(pop) + np.log(smooth)
                for j, v in row.items():
                    s[j] += w * v / total if form == "mixture" else w * np.log1p(v)
                out[b] = torch.from_numpy(s)
            return out
        return score

    print(f"{args.dataset}: {len(valid)} validation events, NDCG@10")
    print(f"Markov {evaluate_scorer(markov_scorer(train, n), valid)['ndcg@10']:.4f}")
    print(f"oracle {evaluate_scorer(datasets.oracle_scorer(ds, row_of), valid)['ndcg@10']:.4f}")
    for a in (0.2, 0.4, 0.6, 0.8):
        print(f"mixture, count row share a={a}: {evaluate_scorer(scorer('mixture', a), valid)['ndcg@10']:.4f}")
    for beta in (0.5, 1.0, 2.0):
        print(f"log-linear, beta={beta}: {evaluate_scorer(scorer('loglinear', beta), valid)['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
