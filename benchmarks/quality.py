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
sets): the main table scores the *warm* users (test item seen in training) over the trained catalogue,
which holds no new item (the GRUs are trained with the new items excluded, as ``stream-rec train`` would be
before they existed; ranking them too would cost the GRUs, not Markov or SASRec+, whose catalogue is the
training events' items).
Then the new items join the hybrid's catalogue from their text (``Recommender.add_catalog``) and the
"new items" table ranks over *all* items: the users whose test item is new, plain and with the
freshness policy (``stream_rec.recsys.freshness``; the model's own, which training chose on validation with
simulated new items, ``stream_rec.recsys.freshchoice``; ``--fresh-reference``: the policy with the most
new-item hits at a warm NDCG@10 cost <= 3% on the true new items' validation events), and the warm users'
NDCG@10 with the policy, against the main table's (its cost).
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
from newitems import new_item_tables, print_new_items  # noqa: E402  (benchmarks/newitems.py)
from stream_rec.settings import Settings  # noqa: E402

HISTORY_LEN = Settings().history_len  # the items a user's state keeps

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
    p.add_argument("--fresh-reference", action="store_true",
                   help="new-item table: the policy chosen on the true new items' validation events instead of "
                        "the model's own (chosen by training on simulated new items)")
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
    """Every model of the main table on one data set (same split, same run), then the new-item tables."""
    from stream_rec.model.evaluate import evaluate_scorer, test_cases
    from stream_rec.model.sequences import to_sequence

    ds = datasets.load(name, args.data_dir or None)
    split = ds.train_split
    warm = {u: ds.split.test[u] for u in ds.warm_users}
    print(f"\n== {name}: {json.dumps(ds.describe())}", flush=True)
    out = {"data": ds.describe(), "rows": {}}
    row_of = catalogue(split)
    cases = {"test": test_cases(ds.split.full, warm, row_of), "valid": valid_cases(split, row_of)}
    train_rows = [to_sequence(seq, row_of).rows for seq in split.train.values()]
    main_table = not name.endswith("-new")
    if main_table:
        out["rows"] |= baseline_rows(args.models, train_rows, len(row_of) + 1, cases)
    if main_table and "sasrec" in args.models:
        out["rows"]["SASRec+"] = sasrec_row(args, train_rows, len(row_of), cases)
    rec = None
    for label, extra, key in [("ID-only GRU", {"use_text": False}, "id-only"), ("hybrid GRU", {}, "hybrid")]:
        if key in args.models and (main_table or key == "hybrid"):
            out["rows"][label], rec = gru_row(ds, args, extra, encoder, warm)
            if args.save_models:
                rec.save(Path(args.save_models) / f"{name}-{key}")
    if ds.world is not None:
        out["rows"][ORACLE] = evaluate_scorer(datasets.oracle_scorer(ds, row_of), cases["test"])
    if ds.new_items and rec is not None and rec.model.config.use_text:
        out["new_items"] = new_item_tables(ds, rec, encoder, args)
        print(f"new items: {json.dumps(out['new_items'])}", flush=True)
    return out


def baseline_rows(models, train_rows, n_rows: int, cases: dict) -> dict:
    """Popularity and Markov fitted on the training events: test figures, and NDCG@10 on validation."""
    from stream_rec.model.evaluate import evaluate_scorer, markov_scorer, popularity_scorer

    rows = {}
    for label, key, make in [("popularity", "popularity", popularity_scorer), ("Markov", "markov", markov_scorer)]:
        if key in models:
            scorer = make(train_rows, n_rows)
            rows[label] = evaluate_scorer(scorer, cases["test"]) | {
                "valid_ndcg@10": round(evaluate_scorer(scorer, cases["valid"])["ndcg@10"], 4)}
    return rows


def sasrec_row(args, train_rows, n_items: int, cases: dict) -> dict:
    """SASRec+ with the GRUs' wall budget (``--set time_budget_s``; none by default) and patience 20."""
    from sasrec import SASRecParams, evaluate_sasrec, train_sasrec
    from stream_rec.model.train import TrainParams

    _, train_kw = overrides(args.set)
    budget = TrainParams(**train_kw).time_budget_s if args.sasrec_budget is None else args.sasrec_budget
    params = SASRecParams(**({"time_budget_s": budget}
                             | {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.sasrec_set)}))
    model, hist = train_sasrec(train_rows, cases["valid"], n_items, params)
    row = evaluate_sasrec(model, cases["test"], params.max_len) | timing(hist.train_seconds, hist.cpu_seconds, hist) | {
        "budget_s": budget, "patience": params.patience}
    print(f"SASRec+: {row}", flush=True)
    return row


def gru_row(ds, args, extra: dict, encoder, warm: dict):
    """One GRU (``stream-rec train``'s defaults, ``--set`` overrides, ``extra``) trained without the new items;
    its test figures from the serving path, and whether ``stream-rec train`` would warn about it."""
    from stream_rec.model.evaluate import baseline_warnings, evaluate_recommender, validation_baselines
    from stream_rec.model.train import TrainParams, train_recommender

    model_kw, train_kw = overrides(args.set)
    rec, hist = train_recommender(ds.train_split, ds.items, model_kw | extra,
                                  TrainParams(threads=args.threads, **train_kw), encoder=encoder,
                                  exclude_items=sorted(ds.new_items), progress=not args.quiet)
    if rec.model.config.use_text:  # the freshness policy `stream-rec train` chooses (recsys/freshchoice.py)
        from stream_rec.recsys.freshchoice import choose_freshness

        rec.meta["freshness"] = choose_freshness(rec, ds.train_split)
        print(f"freshness policy of the model: {json.dumps({k: v for k, v in rec.meta['freshness'].items() if k != 'validation'})}",
              flush=True)
    result = evaluate_recommender(rec, ds.split, users=set(warm), progress=not args.quiet, baselines=False)["gru"]
    warnings = baseline_warnings(hist.best_valid, validation_baselines(ds.train_split, rec.row_of))
    row = result | timing(hist.train_seconds, hist.cpu_seconds, hist) | {
        "state_bytes_float16": 2 * rec.hidden_size, "train_warnings": warnings}
    print(f"{'ID-only' if extra else 'hybrid'}: {row}", flush=True)
    return row, rec


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
        if r.get("train_warnings"):
            stop += " · train warns: " + "; ".join(w.split(" on validation")[0] for w in r["train_warnings"])
        print(f"| {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {ratio} | {t} | {ep} | {stop} "
              f"| {valid} |")
    states = {label: r["state_bytes_float16"] for label, r in res["rows"].items() if "state_bytes_float16" in r}
    if states:
        print("hidden vector per user (float16, as the state table stores it; the whole state with a full "
              f"{HISTORY_LEN}-item history adds {history_bytes()} bytes): "
              + ", ".join(f"{label} {b} bytes" for label, b in states.items()))
    if "new_items" in res:
        print_new_items(name, res["new_items"])


def history_bytes() -> int:
    """What the rest of an encoded state (header, a full history, its timestamps) adds to the hidden vector:
    the codec's own count (stream_rec/state.py), ids of any length."""
    import numpy as np

    from stream_rec.state import UserState, encode_state

    history = [(f"item-{n}", 1.7e9 + n) for n in range(HISTORY_LEN)]
    hidden = np.zeros(160, np.float32)
    return len(encode_state(UserState(hidden=hidden, history=history))) - 2 * len(hidden)


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
