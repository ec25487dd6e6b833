"""`stream-rec train`: fit the hybrid text + ID GRU on an event log and write a model directory.

Train the hybrid text + ID GRU on user event sequences (leave-one-out: each user's last event is held out
for testing, the one before is the validation target used for early stopping) and write MODEL_DIR
(weights.safetensors, text_vectors.safetensors, config.json, items.json, VERSION).
"""

from __future__ import annotations

import argparse

from ._common import add_command
from ._model_args import add_data_args, load_data

SUMMARY = "train the hybrid GRU recommender offline and write a model directory"


def register(subparsers: argparse._SubParsersAction) -> None:
    # defaults live with the model and training code (importing them imports torch: only when `train` runs)
    from ..model.gru import GRUConfig
    from ..model.train import TrainParams

    m = GRUConfig(n_items=0, text_dim=0)
    d = TrainParams()
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_data_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="model directory to write (created if missing)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=m.hidden, help="GRU hidden size = per-user state (float32: 4 bytes each)")
    g.add_argument("--emb-dim", type=int, default=m.emb_dim, help="item vector size (ID embedding and text projection)")
    g.add_argument("--dropout", type=float, default=m.dropout, help="dropout on the GRU inputs and on its output")
    g.add_argument("--id-dropout", type=float, default=m.id_dropout,
                   help="probability of hiding an item's ID embedding while training, so the text projection "
                        "learns to carry items alone (helps items unseen in training)")
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
    t.add_argument("--patience", type=int, default=d.patience, help="epochs without validation gain before stopping")
    t.add_argument("--time-budget-s", type=float, default=0.0, metavar="S",
                   help="wall-time budget: no epoch is started that would likely overrun it (0 = none)")
    t.add_argument("--seed", type=int, default=d.seed, help="random seed (weights, batch order, dropout)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from ..model.encoder import shared_encoder
    from ..model.train import TrainParams, train_recommender
    from ..settings import Settings

    split, item_texts, info = load_data(args)
    config = {"hidden": args.hidden, "emb_dim": args.emb_dim, "dropout": args.dropout, "use_text": not args.no_text,
              "use_ids": not args.no_ids, "use_time_gap": not args.no_time_gap, "id_dropout": args.id_dropout}
    if args.no_text and args.no_ids:
        raise SystemExit("error: --no-text and --no-ids leave the model without item representations")
    params = TrainParams(epochs=args.epochs, batch_size=args.batch_size, max_len=args.max_len, lr=args.lr,
                         weight_decay=args.weight_decay, patience=args.patience, seed=args.seed, device=args.device,
                         threads=args.threads, time_budget_s=args.time_budget_s)
    encoder = None if args.no_text else shared_encoder(Settings.from_env().cache_dir, args.device)
    started = time.perf_counter()
    rec, history = train_recommender(split, item_texts, config, params, encoder=encoder, progress=not args.quiet)
    rec.meta["data"] = info
    rec.meta["metrics"]["train_seconds_total"] = time.perf_counter() - started
    out = rec.save(args.out)
    summary = {"model": str(out), "version": rec.version, "best_epoch": history.best_epoch, "valid": history.best_valid,
               "train_seconds": round(history.train_seconds, 1), "state_bytes_per_user": rec.state_bytes}
    print(json.dumps(summary, indent=2))
    return 0
