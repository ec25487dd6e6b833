"""Recommendation quality: popularity, Markov, SASRec+, ID-only GRU and the hybrid, same split, same run.

    python benchmarks/quality.py --data-dir PATH                     # every data set (PATH holds ml-100k/, ml-1m-half/)
    python benchmarks/quality.py --data-dir PATH --datasets ml-100k series --out runs/quality.json

Data sets (benchmarks/datasets.py): MovieLens-100K, ml-1m-half, and the synthetic worlds ``series``
(strong order), ``topics`` (weak order, topic-driven), ``cold`` (a quarter of the items new) and
``noise`` (uninformative item texts); ``ml-100k-new`` / ``ml-1m-half-new`` are MovieLens with 10% of
the items held out of training.

Protocol, identical for every model: leave-one-out by time (each user's last event = test, the one
before = validation, used for early stopping only), full ranking over every item of the trained
catalogue, seen items masked, HR@10 / NDCG@10 / MRR@10. The GRUs are what ``stream-rec train`` gives
with no flags (``GRUConfig`` / ``TrainParams`` defaults; ``--set`` overrides them for experiments) and
their figures come from the serving path (``Recommender.step`` one event at a time, then
``score_rows``). Baselines are fitted on the same training events. On the worlds, ``oracle`` ranks by
the generator's own next-item probabilities: the ceiling.

New items (items absent from training: the worlds' ``new_items``, 10% of MovieLens items in the ``-new``
sets): the main table scores the *warm* users (test item seen in training) over the trained catalogue.
Then the new items join the hybrid's catalogue from their text (``Recommender.add_catalog``) and the
"new items" table ranks over *all* items: the users whose test item is new, plain and with the
freshness policy (``stream_rec.recsys.freshness``; the policy with the most new-item hits at a warm
NDCG@10 cost <= 3%, chosen on the validation events), and the warm users' NDCG@10 with the policy,
against the main table's (its cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402  (benchmarks/datasets.py)

DEFAULT_DATASETS = ["ml-100k", "ml-1m-half", "series", "topics", "cold", "noise", "ml-100k-new", "ml-1m-half-new"]
MODELS = ["popularity", "markov", "sasrec", "id-only", "hybrid"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="directory holding ml-100k/ and ml-1m-half/ (not needed for worlds)")
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=datasets.NAMES, metavar="NAME",
                   help=f"data sets ({', '.join(datasets.NAMES)})")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="models of the main table")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--sasrec-budget", type=float, default=None,
                   help="SASRec+ wall-time budget in seconds (default: the GRUs' time_budget_s, the same for every "
                        "learned model; 0 = none, its patience ends it)")
    p.add_argument("--sasrec-set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="override a SASRecParams default (benchmarks/sasrec.py), e.g. patience=20")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="override a GRUConfig / TrainParams default of both GRUs (experiments only)")
    p.add_argument("--fresh-slots", type=int, default=None,
                   help="fix the freshness policy of the new-item table (default: chosen on validation)")
    p.add_argument("--fresh-by", choices=["model", "content"], default=None, help="with --fresh-slots")
    p.add_argument("--fresh-min-ratio", type=float, default=None, help="with --fresh-slots --fresh-by model")
    p.add_argument("--fresh-min-similarity", type=float, default=None, help="with --fresh-slots --fresh-by content")
    p.add_argument("--out", default="", help="write all results as JSON here")
    p.add_argument("--save-models", default="", help="save the trained GRUs under this directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tables-from", nargs="+", default=[], metavar="JSON",
                   help="print the tables of earlier --out files (runs of parts of the data sets) and exit")
    return p.parse_args(argv)


def overrides(pairs: list[str]) -> tuple[dict, dict]:
    """``--set`` pairs split into GRUConfig and TrainParams keyword arguments (values parsed as JSON)."""
    from dataclasses import fields

    from stream_rec.model.gru import GRUConfig
    from stream_rec.model.train import TrainParams

    model_fields, train_fields = {f.name for f in fields(GRUConfig)}, {f.name for f in fields(TrainParams)}
    model, train = {}, {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if name in model_fields:
            model[name] = value
        elif name in train_fields:
            train[name] = value
        else:
            raise SystemExit(f"--set: unknown setting {name!r}")
    return model, train


def catalogue(split) -> dict[str, int]:
    """Row of every item that occurs in the training sequences (the catalogue SASRec+ and the baselines know)."""
    ids = sorted({i for seq in split.train.values() for i, _ in seq})
    return {item: row for row, item in enumerate(ids, start=1)}


def valid_cases(split, row_of):
    from stream_rec.model.evaluate import EvalCase
    from stream_rec.model.sequences import to_sequence

    return [EvalCase(u, to_sequence(split.train[u], row_of).rows, None, row_of.get(split.valid[u][0], 0))
            for u in split.valid]


STILL_IMPROVING = 2  # a run stopped by its budget whose best epoch is among its last this-many + 1 epochs


def timing(seconds: float, cpu: float, history=None) -> dict:
    """Training time, epochs, best epoch and what stopped it; ``still_improving`` when the budget stopped a
    run whose best validation came in its last epochs (the model would likely have gained more time)."""
    out = {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu, 1)}
    if history is not None:
        run = len(history.epochs)
        out |= {"best_epoch": history.best_epoch, "epochs_run": run, "stopped": history.stopped,
                "still_improving": history.stopped == "budget" and history.best_epoch >= run - STILL_IMPROVING,
                "valid_ndcg@10": round(history.best_valid.get("ndcg@10", float("nan")), 4)}
    return out


def run_dataset(name: str, args, encoder) -> dict:
    import numpy as np

    from sasrec import SASRecParams, evaluate_sasrec, train_sasrec
    from stream_rec.model.evaluate import evaluate_recommender, evaluate_scorer, markov_scorer, popularity_scorer
    from stream_rec.model.evaluate import test_cases
    from stream_rec.model.sequences import to_sequence
    from stream_rec.model.train import TrainParams, train_recommender

    ds = datasets.load(name, args.data_dir or None)
    split = ds.train_split
    warm = {u: ds.split.test[u] for u in ds.warm_users}
    print(f"\n== {name}: {json.dumps(ds.describe())}", flush=True)
    out = {"data": ds.describe(), "rows": {}}
    model_kw, train_kw = overrides(args.set)
    progress = not args.quiet
    row_of = catalogue(split)
    cases = test_cases(ds.split.full, warm, row_of)
    train_rows = [to_sequence(seq, row_of).rows for seq in split.train.values()]
    n_rows = len(row_of) + 1
    main_table = not name.endswith("-new")
    if main_table and "popularity" in args.models:
        out["rows"]["popularity"] = evaluate_scorer(popularity_scorer(train_rows, n_rows), cases)
    if main_table and "markov" in args.models:
        out["rows"]["Markov"] = evaluate_scorer(markov_scorer(train_rows, n_rows), cases)
    if main_table and "sasrec" in args.models:
        budget = TrainParams(**train_kw).time_budget_s if args.sasrec_budget is None else args.sasrec_budget
        params = SASRecParams(**({"time_budget_s": budget}
                                 | {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.sasrec_set)}))
        model, hist = train_sasrec(train_rows, valid_cases(split, row_of), len(row_of), params)
        out["rows"]["SASRec+"] = evaluate_sasrec(model, cases, params.max_len) | timing(
            hist.train_seconds, hist.cpu_seconds, hist)
        print(f"SASRec+: {out['rows']['SASRec+']}", flush=True)
    variants = [("ID-only GRU", {"use_text": False}, "id-only"), ("hybrid GRU", {}, "hybrid")]
    rec = None
    for label, extra, key in variants:
        if key not in args.models or (not main_table and key != "hybrid"):
            continue
        rec, hist = train_recommender(split, ds.items, model_kw | extra, TrainParams(threads=args.threads, **train_kw),
                                      encoder=encoder, exclude_items=sorted(ds.untrained_items), progress=progress)
        result = evaluate_recommender(rec, ds.split, users=set(warm), progress=progress, baselines=False)["gru"]
        out["rows"][label] = result | timing(hist.train_seconds, hist.cpu_seconds, hist) | {
            "state_bytes_float16": 2 * rec.hidden_size}
        print(f"{label}: {out['rows'][label]}", flush=True)
        if args.save_models:
            rec.save(Path(args.save_models) / f"{name}-{key}")
    if ds.world is not None:
        out["rows"][ORACLE] = evaluate_scorer(datasets.oracle_scorer(ds, row_of), cases)
    if ds.new_items and rec is not None and rec.model.config.use_text:
        out["new_items"] = new_item_tables(ds, rec, encoder, args)
        print(f"new items: {json.dumps(out['new_items'])}", flush=True)
    return out


def policy_grid():
    """The freshness policies scored on validation: ranked by the model (bar: probability ratio to the
    displaced item) and by content (bar: text cosine to the user's recent items)."""
    from stream_rec.recsys.freshness import FreshnessPolicy

    return ([FreshnessPolicy(slots=n, by="model", min_ratio=r) for n in (1, 2, 3) for r in (0.0, 0.01, 0.1, 1.0)]
            + [FreshnessPolicy(slots=n, by="content", min_similarity=c) for n in (1, 2, 3)
               for c in (-1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)])


MAX_WARM_COST = 0.03  # the bound on the policy's warm NDCG@10 cost


def describe_policy(p) -> dict:
    bar = {"min_ratio": p.min_ratio} if p.by == "model" else {"min_similarity": p.min_similarity}
    return {"slots": p.slots, "by": p.by} | bar


def new_item_tables(ds, rec, encoder, args) -> dict:
    """The hybrid after the new items joined its catalogue: new-item users and warm users, ranked over all
    items, plain and with the freshness policy. The policy grid is scored on the validation targets (each
    user's second-to-last event); the policy with the most new-item hits at a warm NDCG@10 cost of at
    most 3% on validation is the one the test table uses (``--fresh-slots`` and ``--fresh-min-*`` fix one
    instead)."""
    import numpy as np

    from stream_rec.model.evaluate import content_scorer, evaluate_scorer, recommender_scorer, test_cases
    from stream_rec.recsys.freshness import FreshnessPolicy

    full, new = ds.split.full, ds.new_items
    groups = {"test": ds.split.test, "valid": ds.split.valid}

    def cases(which, want_new):
        targets = {u: t for u, t in groups[which].items() if (t[0] in new) == want_new}
        return test_cases(full, targets, rec.row_of)

    scorer = recommender_scorer(rec)
    before = {w: evaluate_scorer(scorer, cases(w, False)) for w in groups}  # trained catalogue only
    rec.add_catalog({i: ds.items.get(i, "") for i in sorted(new)}, lambda: encoder)
    fresh = np.zeros(rec.n_items + 1, dtype=bool)
    fresh[rec.rows_for(sorted(new))] = True
    scorer = recommender_scorer(rec)
    text = rec.model.text_vectors.cpu()
    new_cases = {w: cases(w, True) for w in groups}
    warm_cases = {w: cases(w, False) for w in groups}

    grid = []  # validation: new-item HR@10 and warm NDCG@10 cost of each policy
    if new_cases["valid"] and warm_cases["valid"]:
        scored = {k: [(part, scorer(part)) for part in batches((new_cases if k == "new" else warm_cases)["valid"])]
                  for k in ("new", "warm")}
        for policy in policy_grid():
            n = policy_metrics(scored["new"], fresh, policy, text=text)
            w = policy_metrics(scored["warm"], fresh, policy, text=text)
            grid.append(describe_policy(policy) | {
                "new_hr@10": round(n["hr@10"], 4), "warm_cost": round(1 - w["ndcg@10"] / before["valid"]["ndcg@10"], 4),
                "policy": policy})
    if args.fresh_slots is not None:
        d = FreshnessPolicy()
        chosen = FreshnessPolicy(slots=args.fresh_slots, by=args.fresh_by or d.by,
                                 min_ratio=d.min_ratio if args.fresh_min_ratio is None else args.fresh_min_ratio,
                                 min_similarity=d.min_similarity if args.fresh_min_similarity is None
                                 else args.fresh_min_similarity)
        how = "given"
    else:
        allowed = [g for g in grid if g["warm_cost"] <= MAX_WARM_COST] or [{"policy": FreshnessPolicy(slots=0)}]
        chosen = max(allowed, key=lambda g: (g.get("new_hr@10", 0.0), -g.get("warm_cost", 0.0)))["policy"]
        how = "chosen on validation"
    label = f"hybrid + freshness policy ({how})"
    table = {
        "policy": describe_policy(chosen) | {"how": how},
        "validation grid": [{k: v for k, v in g.items() if k != "policy"} for g in grid],
        "new-item users": {
            "hybrid, plain ranking": evaluate_scorer(scorer, new_cases["test"]),
            label: evaluate_policy(scorer, new_cases["test"], fresh, chosen, text),
            "content-only cosine": evaluate_scorer(content_scorer(text.numpy()), new_cases["test"])},
        "warm users": {
            "hybrid, trained catalogue only": before["test"],
            "hybrid, plain ranking": evaluate_scorer(scorer, warm_cases["test"]),
            label: evaluate_policy(scorer, warm_cases["test"], fresh, chosen, text)},
    }
    base = before["test"]["ndcg@10"]
    table["warm NDCG@10 cost of the policy"] = round(1 - table["warm users"][label]["ndcg@10"] / base, 4) if base else None
    return table


def batches(cases, size: int = 512):
    return [cases[s:s + size] for s in range(0, len(cases), size)]


def evaluate_policy(scorer, cases, fresh, policy, text, k: int = 10) -> dict:
    """HR/NDCG/MRR@k of the lists ``fresh_topk`` makes (the target's position in the final list)."""
    return policy_metrics([(part, scorer(part)) for part in batches(cases)], fresh, policy, k, text)


def policy_metrics(scored, fresh, policy, k: int = 10, text=None) -> dict:
    """``scored``: [(cases, scores [B, N+1])] -> metrics of the policy's lists (a seen target is a miss).
    ``text``: the item text vectors [N+1, T] (a content policy's relevance)."""
    import math

    from stream_rec.recsys.freshness import content_relevance, fresh_topk

    sums = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    inserted, n = 0, 0
    for part, scores in scored:
        histories = [c.rows.tolist() for c in part]
        relevance = (content_relevance(text, histories, fresh, policy.profile_items)
                     if policy.by == "content" and policy.slots else None)
        result = fresh_topk(scores, k, histories, fresh, policy, relevance)
        inserted += sum(result.inserted)
        n += len(part)
        for c, rows in zip(part, result.rows):
            if c.target in rows and c.target not in set(c.rows.tolist()):
                rank = rows.index(c.target)
                sums["hr"] += 1.0
                sums["ndcg"] += 1.0 / math.log2(rank + 2)
                sums["mrr"] += 1.0 / (rank + 1)
    n = max(n, 1)
    return {f"{key}@{k}": v / n for key, v in sums.items()} | {"users": n, "fresh_slots_used_per_list": inserted / n}


ORACLE = "oracle (the world's own probabilities)"


def print_dataset_table(name: str, res: dict) -> None:
    """One data set's table: every model, HR/NDCG/MRR@10 on the test events, training time, validation."""
    d = res["data"]
    print(f"\n### {name}: {d['users']} users, {d['items']} items, {d['events']} events"
          + (f"; {d['new_items']} new items ({d['new_item_users']} new-item users, not in this table)"
             if d.get("new_items") else ""))
    print("| model | HR@10 | NDCG@10 | MRR@10 | NDCG@10 / Markov | train wall / CPU s | epochs (best) | stopped by "
          "| valid NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    markov = res["rows"].get("Markov", {}).get("ndcg@10")
    for label, r in res["rows"].items():
        t = f"{r['train_seconds']:.0f} / {r['train_cpu_seconds']:.0f}" if "train_seconds" in r else "-"
        ep = f"{r['epochs_run']} ({r['best_epoch']})" if "epochs_run" in r else "-"
        ratio = f"{r['ndcg@10'] / markov:.3f}" if markov else "-"
        valid = f"{r['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in r else "-"
        stop = r.get("stopped", "-") + (" **(still improving)**" if r.get("still_improving") else "")
        print(f"| {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {ratio} | {t} | {ep} | {stop} "
              f"| {valid} |")
    states = {label: r["state_bytes_float16"] for label, r in res["rows"].items() if "state_bytes_float16" in r}
    if states:
        print("state per user (float16, as the state table stores it): "
              + ", ".join(f"{label} {b} bytes" for label, b in states.items()))
    if "new_items" in res:
        print_new_items(name, res["new_items"])


def print_new_items(name: str, t: dict) -> None:
    print(f"\n#### {name}: new items ranked among all items (the new items joined the catalogue from their text)")
    print("| users | scorer | HR@10 | NDCG@10 | fresh slots used / list |")
    print("|---|---|---|---|---|")
    for group in ("new-item users", "warm users"):
        for label, r in t[group].items():
            used = r.get("fresh_slots_used_per_list")
            print(f"| {group} ({r['users']}) | {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                  f"{'-' if used is None else f'{used:.2f}'} |")
    cost = t["warm NDCG@10 cost of the policy"]
    print(f"warm NDCG@10 cost of the policy {t['policy']}: {'-' if cost is None else f'{cost:.2%}'}")


def print_tables(all_results: dict) -> None:
    """Every data set's table, then the hybrid's ratios (the issue's targets) in one table."""
    for name, res in all_results.items():
        print_dataset_table(name, res)
    print("\n### Ratios of the hybrid's NDCG@10 (test events)")
    print("| data set | hybrid NDCG@10 | / SASRec+ | / Markov | / ID-only GRU | / oracle |")
    print("|---|---|---|---|---|---|")
    for name, res in all_results.items():
        rows = res["rows"]
        if "hybrid GRU" not in rows:
            continue
        h = rows["hybrid GRU"]["ndcg@10"]

        def ratio(label):
            r = rows.get(label)
            return f"{h / r['ndcg@10']:.3f}" if r and r["ndcg@10"] else "-"

        print(f"| {name} | {h:.4f} | {ratio('SASRec+')} | {ratio('Markov')} | {ratio('ID-only GRU')} | {ratio(ORACLE)} |")


def main(argv=None) -> int:
    import torch

    from stream_rec.model.encoder import shared_encoder
    from stream_rec.settings import Settings

    args = parse_args(argv)
    if args.tables_from:
        merged = {}
        for path in args.tables_from:
            merged |= json.loads(Path(path).read_text())
        print_tables(merged)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # one line per epoch
    torch.set_num_threads(args.threads)
    print("settings:", json.dumps(vars(args)), flush=True)
    encoder = shared_encoder(Settings.from_env().cache_dir, "cpu")
    all_results = {}
    for name in args.datasets:
        all_results[name] = run_dataset(name, args, encoder)
        if args.out:
            Path(args.out).write_text(json.dumps(all_results, indent=2))
        print_dataset_table(name, all_results[name])
        sys.stdout.flush()
    print_tables(all_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
