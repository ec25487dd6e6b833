"""Recommendation quality on MovieLens: popularity, Markov, ID-only GRU and hybrid GRU side by side.

    python benchmarks/quality.py --data-dir PATH   # PATH holds ml-100k/ and/or ml-1m-half/

The reported figures (settings chosen on the validation split with benchmarks/sweep.py):

    python benchmarks/quality.py --data-dir PATH --datasets ml-1m-half --threads 2 --time-budget 1140 --holdout 0
    python benchmarks/quality.py --data-dir PATH --datasets ml-100k --threads 2 --max-len 200 --holdout 0.1

Protocol (the same as `stream-rec evaluate`): leave-one-out by timestamp (each user's last event =
test, the one before = validation for early stopping), full ranking over the whole catalog, seen items
excluded, HR@10 / NDCG@10 / MRR@10. The GRU numbers come from the serving path (Recommender.step, one
event at a time). Baselines are fitted on the same training events as the GRU.

Cold items: ``--holdout`` of the items that occur in the events are removed from training (their
events are dropped from the training sequences and they are not in the trained catalog); they come
back at evaluation through ``Recommender.add_catalog`` (text vector only), and we compare the hybrid
GRU with a content-only cosine baseline on the users whose test item is one of them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASETS = {"ml-100k": "ml-100k", "ml-1m-half": "ml-1m-half"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="directory holding ml-100k/ and/or ml-1m-half/")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="which data sets")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs per GRU (early stopping on validation)")
    p.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    p.add_argument("--emb-dim", type=int, default=64, help="item vector size")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout on GRU inputs/outputs")
    p.add_argument("--id-dropout", type=float, default=0.0, help="hybrid only: probability of hiding an item's ID "
                                                                "embedding while training")
    p.add_argument("--cold-id-dropout", type=float, default=0.2,
                   help="--id-dropout of the model trained for the cold-item comparison")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="users per batch")
    p.add_argument("--max-len", type=int, default=50, help="BPTT window length")
    p.add_argument("--time-budget", type=float, default=1140.0, help="wall seconds per training run: no epoch is started "
                                                                   "that would likely overrun it (0 = none)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of items held out of training for the "
                                                              "cold-item comparison (0 = skip it)")
    p.add_argument("--skip-warm", action="store_true", help="only the cold-item comparison (no baselines table)")
    p.add_argument("--skip-id-only", action="store_true", help="do not train the ID-only GRU")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="", help="write all results as JSON here")
    p.add_argument("--save-models", default="", help="save the trained models under this directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def model_config(args) -> dict:
    return {"hidden": args.hidden, "emb_dim": args.emb_dim, "dropout": args.dropout}


def train_params(args):
    from stream_rec.model.train import TrainParams

    return TrainParams(epochs=args.epochs, batch_size=args.batch_size, max_len=args.max_len, lr=args.lr, seed=0,
                       device=args.device, threads=args.threads, time_budget_s=args.time_budget)


def run_dataset(name: str, args, encoder) -> dict:
    from stream_rec.io.data import leave_one_out, read_events, read_items, sequences
    from stream_rec.model.evaluate import content_scorer, evaluate_recommender, evaluate_scorer, test_cases
    from stream_rec.model.evaluate import markov_scorer, popularity_scorer
    from stream_rec.model.train import train_recommender

    import numpy as np

    path = Path(args.data_dir) / DATASETS[name]
    events, items = read_events(path), read_items(path)
    split = leave_one_out(sequences(events))
    print(f"\n== {name}: {len(events):,} events, {len(split.full):,} users, {len(items):,} catalog items", flush=True)
    out = {"data": {"events": len(events), "users": len(split.full), "items": len(items)}, "rows": {}}
    progress = not args.quiet

    variants = [] if args.skip_warm else [("hybrid GRU", {"use_text": True, "id_dropout": args.id_dropout})]
    if not args.skip_id_only and not args.skip_warm:
        variants.append(("ID-only GRU", {"use_text": False}))
    for label, extra in variants:
        t0 = time.perf_counter()
        rec, history = train_recommender(split, items, model_config(args) | extra, train_params(args),
                                         encoder=encoder, progress=progress)
        seconds = time.perf_counter() - t0
        results = evaluate_recommender(rec, split, progress=progress, baselines="popularity" not in out["rows"])
        if "popularity" in results:
            out["rows"]["popularity"] = results["popularity"]
            out["rows"]["Markov"] = results["markov"]
        out["rows"][label] = results["gru"] | {"train_seconds": round(seconds, 1),
                                               "train_cpu_seconds": round(history.cpu_seconds, 1), "best_epoch": history.best_epoch,
                                               "epochs_run": len(history.epochs), "state_bytes": rec.state_bytes,
                                               "valid_ndcg@10": history.best_valid.get("ndcg@10")}
        print(f"{label}: {out['rows'][label]}", flush=True)
        if args.save_models:
            rec.save(Path(args.save_models) / f"{name}-{label.split()[0].lower()}")

    if args.holdout > 0:
        rng = random.Random(0)
        occurring = sorted({i for seq in split.full.values() for i, _ in seq})
        held = set(rng.sample(occurring, max(1, int(args.holdout * len(occurring)))))
        cold_users = {u for u, (item, _) in split.test.items() if item in held}
        train_split = type(split)(train={u: [e for e in s if e[0] not in held] for u, s in split.train.items()},
                                  valid={u: v for u, v in split.valid.items() if v[0] not in held},
                                  test=split.test, full=split.full)
        t0 = time.perf_counter()
        rec, history = train_recommender(train_split, items, model_config(args) | {"use_text": True,
                                                                                 "id_dropout": args.cold_id_dropout},
                                         train_params(args), encoder=encoder, exclude_items=sorted(held),
                                         progress=progress)
        seconds = time.perf_counter() - t0
        rec.add_catalog({i: items.get(i, "") for i in sorted(held)}, lambda: encoder)
        cold = evaluate_recommender(rec, split, users=cold_users, progress=progress, baselines=False)["gru"]
        warm = evaluate_recommender(rec, split, users=set(split.test) - cold_users, progress=progress,
                                    baselines=False)["gru"]
        cases = test_cases(split.full, {u: split.test[u] for u in cold_users}, rec.row_of)
        content = evaluate_scorer(content_scorer(rec.model.text_vectors.cpu().numpy()), cases)
        train_rows = [np.array(rec.rows_for([i for i, _ in s]), dtype=np.int64) for s in train_split.train.values()]
        pop = evaluate_scorer(popularity_scorer(train_rows, rec.n_items + 1), cases)
        out["cold_items"] = {"held_out_items": len(held), "cold_test_users": len(cold_users),
                             "hybrid GRU (text vector only for held-out items)": cold,
                             "content-only cosine": content, "popularity (cannot rank held-out items)": pop,
                             "hybrid GRU on the other users": warm, "train_seconds": round(seconds, 1)}
        print(f"cold items: {json.dumps(out['cold_items'], indent=1)}", flush=True)
    return out


def print_table(name: str, res: dict) -> None:
    print(f"\n### {name} ({res['data']['events']:,} events, {res['data']['users']:,} users, "
          f"{res['data']['items']:,} items)")
    print("| model | HR@10 | NDCG@10 | MRR@10 | train time (wall / CPU) | epochs (best) | state bytes/user |")
    print("|---|---|---|---|---|---|---|")
    for label, r in res["rows"].items():
        t = f"{r['train_seconds']:.0f} s / {r.get('train_cpu_seconds', 0):.0f} s" if "train_seconds" in r else "-"
        ep = f"{r['epochs_run']} ({r['best_epoch']})" if "epochs_run" in r else "-"
        sb = str(r.get("state_bytes", "-"))
        print(f"| {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {t} | {ep} | {sb} |")
    cold = res.get("cold_items")
    if cold:
        print(f"\nCold items ({cold['held_out_items']} items held out of training, "
              f"{cold['cold_test_users']} users whose test item is one of them):")
        print("| model | HR@10 | NDCG@10 | MRR@10 |")
        print("|---|---|---|---|")
        for label, r in cold.items():
            if isinstance(r, dict):
                print(f"| {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} |")


def main(argv=None) -> int:
    import torch

    from stream_rec.model.encoder import shared_encoder
    from stream_rec.settings import Settings

    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # one line per epoch
    torch.set_num_threads(args.threads)
    print("settings:", json.dumps(vars(args)), flush=True)
    encoder = shared_encoder(Settings.from_env().cache_dir, args.device)
    all_results = {}
    for name in args.datasets:
        all_results[name] = run_dataset(name, args, encoder)
    for name, res in all_results.items():
        print_table(name, res)
    if args.out:
        Path(args.out).write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
