"""`stream-rec finetune`: continue training a model on recent events and write a new model version.

Continue training MODEL on the events of --events-file (a replay file or an export of the events topic) and write a
new model directory the worker hot-reloads. Each user's last recent event is the validation target; the
unchanged model counts as epoch 0, so the result is never worse on it than the input model. See
stream_rec/learning/finetune.py.
"""

from __future__ import annotations

import argparse

from ._common import add_command, existing_path
from ._model_args import add_format_flag, add_model_flag, dataclass_defaults


SUMMARY = "fine-tune a model on recent events and write a new model version"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_model_flag(p, "model directory to start from (or a directory of them: newest)")
    p.add_argument("--events-file", metavar="FILE", required=True, type=existing_path,
                   help="recent events: JSONL events-topic records, CSV user_id,item_id,timestamp, or a MovieLens "
                        "file/dir")
    p.add_argument("--out", metavar="DIR", required=True, help="new model directory to write")
    p.add_argument("--items-file", metavar="FILE", type=existing_path,
                   help="item catalog (JSONL catalog records, CSV item_id,title or a MovieLens file): items of the "
                        "recent events that the model does not know are added from their text; without it their "
                        "events are skipped")
    p.add_argument("--history-file", metavar="FILE", type=existing_path,
                   help="older events of the same users; each user's last --context-events of them are put before "
                        "the recent ones so training starts from a realistic state")
    add_format_flag(p, "file format of the inputs")
    d = dataclass_defaults("learning/finetune.py", "FinetuneParams")
    trained_lr = dataclass_defaults("model/train.py", "TrainParams").lr
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs (the best one by validation is kept)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (training's default is {trained_lr:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="users per batch")
    p.add_argument("--context-events", type=int, default=d.context_events, metavar="N",
                   help="older events per user taken from --history-file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..learning.finetune import FinetuneParams, finetune_model_dir

    params = FinetuneParams(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            context_events=args.context_events, device=args.device, threads=args.threads)
    try:
        out, version, report = finetune_model_dir(args.model, args.events_file, args.out, args.items_file,
                                                  args.history_file, args.format, params, progress=not args.quiet)
    except ValueError as exc:  # DataError and ModelLoadError among them; also a model that cannot take the data
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({"model": str(out), "version": version, "best_epoch": report.best_epoch,
                      "users": report.users, "events": report.events, "added_items": report.added_items,
                      "epochs": report.epochs, "seconds": round(report.seconds, 1)}, indent=2, default=str))
    return 0
