"""`stream-rec evaluate`: leave-one-out test metrics of a trained model, with popularity and Markov beside it.

Leave-one-out evaluation: each user's last event is the test target, every earlier event is stepped through
the model's incremental serving path (Recommender.step), and the whole catalog is ranked with the user's
seen items excluded. Most-popular and first-order Markov baselines are fitted on the same training events
(all but each user's last two) and reported beside it. Items of --items-file the model was not trained on
join its catalogue from their text and get list slots by the model's freshness policy (or the
STREAM_REC_FRESH_* settings), as in the worker: "gru" is then ranked with it, "gru_plain" without. Prints JSON and writes a PNG of the training curve.
"""

from __future__ import annotations

import argparse

from ._common import add_command
from ._model_args import add_data_args, add_model_flag, load_data


SUMMARY = "HR@10 / NDCG@10 / MRR@10 of a model on a held-out last event per user"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_model_flag(p)
    add_data_args(p)
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="cut-off of the metrics")
    p.add_argument("--plot", metavar="FILE", default="", help="training-curve PNG path (default: training_curve.png "
                                                              "in the current directory)")
    p.add_argument("--out", metavar="FILE", default="", help="also write the metrics JSON to this file")
    p.add_argument("--no-baselines", action="store_true", help="only the model, no popularity / Markov")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..model.encoder import shared_encoder
    from ..model.evaluate import evaluate_recommender, training_curve_plot
    from ..model.recommender import Recommender
    from ..settings import Settings

    rec = Recommender.load(args.model, device=args.device)  # ModelLoadError: one line (stream_rec/cli.py)
    split, item_texts, info = load_data(args)
    added = rec.add_catalog(item_texts, lambda: shared_encoder(Settings.from_env().cache_dir, args.device))
    results = evaluate_recommender(rec, split, k=args.top_k, baselines=not args.no_baselines, progress=not args.quiet)
    fresh = with_freshness(rec, split, args.top_k)
    if fresh is not None:  # the lists the worker would send: the model's freshness policy over the added items
        results = {"gru": fresh["gru"], "gru_plain": results["gru"]} | results | {"freshness": fresh["policy"]}
    report = {"model": rec.version, "data": info, "items_added_from_text": len(added),
              "state_bytes_per_user": rec.state_bytes} | results
    plot = Path(args.plot or "training_curve.png")
    if rec.meta.get("history", {}).get("epochs"):
        training_curve_plot(rec.meta["history"], plot, title=f"{rec.version}")
        report["training_curve"] = str(plot)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def with_freshness(rec, split, k: int) -> dict | None:
    """``rec``'s test figures with the freshness policy the worker applies (``recommend.serving_policy``),
    or None when it would change no list (no slots, or no item young enough)."""
    from ..model.evaluate import recommender_scorer, test_cases
    from ..recsys.freshchoice import describe_policy, policy_metrics
    from ..recsys.freshness import fresh_rows
    from .recommend import serving_policy

    policy = serving_policy(rec)
    fresh = fresh_rows(rec.item_ages(), policy.max_age_s)
    if policy.slots <= 0 or not fresh.any():
        return None
    cases = test_cases(split.full, split.test, rec.row_of)
    score = recommender_scorer(rec)
    scored = [(part, score(part)) for part in (cases[s:s + 512] for s in range(0, len(cases), 512))]
    metrics = policy_metrics(scored, fresh, policy, k, rec.model.text_vectors.cpu())
    return {"gru": metrics, "policy": describe_policy(policy) | {"fresh_items": int(fresh.sum())}}
