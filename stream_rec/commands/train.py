"""`stream-rec train`: fit the hybrid text + ID GRU on an event log and write a model directory.

Train the hybrid text + ID GRU on user event sequences (leave-one-out: each user's last event is held out
for testing, the one before is the validation target used for early stopping) and write MODEL_DIR
(weights.safetensors, text_vectors.safetensors, config.json, items.json, VERSION, and the learned state of a
user with no events, init_state.safetensors). The freshness policy for items new since training is chosen on
validation with a slice of the items' IDs hidden (their text kept) to simulate new ones, or declined where the
texts do not carry relevance; config.json keeps it and the worker, `recommend`, `replay` and `evaluate` apply it.
"""

from __future__ import annotations

import argparse
import logging

from ._common import add_command
from ._model_args import add_data_args, dataclass_defaults, load_data

SUMMARY = "train the hybrid GRU recommender offline and write a model directory"
log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    # defaults live with the model and training code, read from its source: importing it imports torch
    m = dataclass_defaults("model/gru.py", "GRUConfig")
    d = dataclass_defaults("model/train.py", "TrainParams")
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_data_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="model directory to write (created if missing)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=m.hidden, help="GRU hidden size (the state per user is hidden + 2 x "
                                                              "--recent numbers, stored as float16)")
    g.add_argument("--emb-dim", type=int, default=m.emb_dim, help="item vector size (ID embedding and text projection)")
    g.add_argument("--dropout", type=float, default=m.dropout, help="dropout on the GRU inputs and on its output")
    g.add_argument("--id-dropout", type=float, default=m.id_dropout,
                   help="probability of hiding an item's ID embedding while training, so the text projection "
                        "learns to carry items alone (helps items unseen in training)")
    g.add_argument("--recent", type=int, default=m.recent, help="items kept in the user's state for the direct "
                                                              "read-out from the recent items to the scores (0 = GRU only)")
    g.add_argument("--heads", type=int, default=m.heads, help="attention heads of the recent-items read-out")
    g.add_argument("--text-bias", action=argparse.BooleanOptionalAction, default=m.text_bias,
                   help="an item bias from the text vector too (what an item unseen in training is ranked with)")
    g.add_argument("--prior", action=argparse.BooleanOptionalAction, default=m.prior,
                   help="fuse a first-order transition prior (counts of item -> next item in the training events) "
                        "into the scores, weighed per user by a learned gate (needs --recent >= 1)")
    g.add_argument("--prior-neighbours", type=int, default=m.prior_neighbours,
                   help="text neighbours whose transitions an item with few of its own borrows (0 = none)")
    g.add_argument("--prior-recent", type=int, default=m.prior_recent,
                   help="the prior also counts what followed the earlier recent items (each one's this many most "
                        "frequent followers), mixed by attention: \"back to the series left two items ago\" (0 = off)")
    g.add_argument("--text-experts", type=int, default=m.text_experts,
                   help="experts of the mixture-of-experts text adaptor (UniSRec's); 0 = one linear projection")
    g.add_argument("--query-text", action=argparse.BooleanOptionalAction, default=m.query_text,
                   help="the last item's text vector in the read-out's attention query too")
    g.add_argument("--no-text", action="store_true", help="ID-only model: do not use the text encoder")
    g.add_argument("--no-ids", action="store_true", help="text-only model: no learned ID embeddings")
    g.add_argument("--no-time-gap", action="store_true", help="do not feed the time since the previous event")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (early stopping usually ends sooner)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="users per batch")
    t.add_argument("--max-len", type=int, default=d.max_len,
                   help="window length for truncated back-propagation (chosen on validation: 50 on ml-1m-half, "
                        "where it is also 40%% faster; 200 on the small MovieLens-100K)")
    t.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    t.add_argument("--patience", type=int, default=d.patience, help="epochs without validation gain before a plateau")
    t.add_argument("--lr-decays", type=int, default=d.lr_decays, help="on a plateau, go back to the best epoch and "
                                                                    "multiply the learning rate by --lr-decay, at most this "
                                                                    "many times; the next plateau stops training")
    t.add_argument("--lr-decay", type=float, default=d.lr_decay, help="learning-rate factor at a plateau")
    t.add_argument("--mask-seen", action=argparse.BooleanOptionalAction, default=d.mask_seen,
                   help="train as lists are served: the user's seen items leave the softmax, repeats are no targets")
    t.add_argument("--time-budget-s", type=float, default=0.0, metavar="S",
                   help="wall-time budget: no epoch is started that would likely overrun it (0 = none)")
    t.add_argument("--seed", type=int, default=d.seed, help="random seed (weights, batch order, dropout)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    add_serving_args(p, d)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_serving_args(p: argparse.ArgumentParser, d) -> None:
    """What training learns for serving beside the weights: new users' state, the freshness policy."""
    c = dataclass_defaults("recsys/freshchoice.py", "ChoiceParams")  # it imports torch: read from its source
    p.add_argument("--init-state-epochs", type=int, default=d.init_state_epochs,
                   help="epochs of the learned state of a user with no events (init_state.safetensors; "
                        "every weight frozen; 0 = a zero state)")
    f = p.add_argument_group("freshness policy (list slots for items new since training; recsys/freshchoice.py)")
    f.add_argument("--fresh-hide-share", type=float, default=c.hide_share,
                   help="share of the trained items whose IDs are hidden (text kept) to simulate new items on "
                        "validation (0 = choose no policy)")
    f.add_argument("--fresh-max-warm-cost", type=float, default=c.max_warm_cost,
                   help="most NDCG@10 the policy may cost the users whose next item is not new (validation)")
    f.add_argument("--fresh-min-new-hr", type=float, default=c.min_new_hr,
                   help="least HR@10 the policy must bring the users whose next item is new, else it is declined")
    f.add_argument("--fresh-min-hr-per-cost", type=float, default=c.min_hr_per_cost,
                   help="least new-item HR@10 per 1%% of warm NDCG@10 the policy costs, else it is declined")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from ..model.encoder import shared_encoder
    from ..model.evaluate import baseline_warnings, validation_baselines
    from ..model.train import TrainParams, train_recommender
    from ..settings import Settings

    split, item_texts, info = load_data(args)
    config = {"hidden": args.hidden, "emb_dim": args.emb_dim, "dropout": args.dropout, "use_text": not args.no_text,
              "use_ids": not args.no_ids, "use_time_gap": not args.no_time_gap, "id_dropout": args.id_dropout,
              "recent": args.recent, "heads": args.heads, "text_bias": args.text_bias, "prior": args.prior,
              "prior_neighbours": args.prior_neighbours, "prior_recent": args.prior_recent,
              "text_experts": args.text_experts, "query_text": args.query_text}
    if args.no_text and args.no_ids:
        raise SystemExit("error: --no-text and --no-ids leave the model without item representations")
    params = TrainParams(epochs=args.epochs, batch_size=args.batch_size, max_len=args.max_len, lr=args.lr,
                         weight_decay=args.weight_decay, patience=args.patience, lr_decays=args.lr_decays,
                         lr_decay=args.lr_decay, mask_seen=args.mask_seen, seed=args.seed, device=args.device,
                         threads=args.threads, time_budget_s=args.time_budget_s,
                         init_state_epochs=args.init_state_epochs)
    encoder = None if args.no_text else shared_encoder(Settings.from_env().cache_dir, args.device)
    started = time.perf_counter()
    taken = {item for seq in split.train.values() for item, _ in seq}
    untrained = [i for i in item_texts if i not in taken]  # new items: they join from their text when served
    if untrained:
        log.info("%d catalogue items have no training events: left out of the trained catalogue, they join it "
                 "from their text when served, as new items (the freshness policy applies to them)", len(untrained))
    rec, history = train_recommender(split, item_texts, config, params, encoder=encoder, exclude_items=untrained,
                                     progress=not args.quiet)
    rec.meta["data"] = info | {"items_without_training_events": len(untrained)}
    rec.meta["metrics"]["train_seconds_total"] = time.perf_counter() - started
    baselines = validation_baselines(split, rec.row_of)
    warnings = baseline_warnings(history.best_valid, baselines)
    rec.meta["metrics"]["valid_baselines"] = baselines
    rec.meta["warnings"] = warnings
    rec.meta["freshness"] = freshness = choose_policy(rec, split, args)
    out = rec.save(args.out)
    for line in warnings:
        log.warning("%s: check the data (enough events per user? time order?) and the training flags before "
                    "serving this model", line)
    summary = {"model": str(out), "version": rec.version, "best_epoch": history.best_epoch, "valid": history.best_valid,
               "valid_baselines": {name: m["ndcg@10"] for name, m in baselines.items()},
               "beats_baselines": not warnings, "warnings": warnings,
               "train_seconds": round(history.train_seconds, 1), "train_cpu_seconds": round(history.cpu_seconds, 1),
               "state_bytes_per_user": rec.state_bytes, "learned_initial_state": rec.initial_state is not None,
               "freshness": {k: v for k, v in freshness.items() if k != "validation"}}
    print(json.dumps(summary, indent=2))
    return 0


def choose_policy(rec, split, args: argparse.Namespace) -> dict:
    """The freshness policy of the model (recsys/freshchoice.py), logged with what it chose and why."""
    from ..recsys.freshchoice import ChoiceParams, FreshnessPolicy, choose_freshness, describe_policy

    params = ChoiceParams(hide_share=args.fresh_hide_share, max_warm_cost=args.fresh_max_warm_cost,
                          min_new_hr=args.fresh_min_new_hr, min_hr_per_cost=args.fresh_min_hr_per_cost,
                          seed=args.seed)
    if params.hide_share <= 0:
        return describe_policy(FreshnessPolicy(slots=0)) | {"why": "not chosen (--fresh-hide-share 0)"}
    entry = choose_freshness(rec, split, params)
    log.info("freshness policy: %s slot(s)%s -- %s", entry["slots"],
                f" by {entry['by']}" if entry["slots"] else "", entry["why"])
    return entry
