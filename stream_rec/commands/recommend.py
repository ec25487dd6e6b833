"""`stream-rec recommend`: top-k lists for every user of an event file, through the serving path.

For every user in --events-file, step the incremental model through their events in timestamp order (exactly what
the stream does) and write one JSON line {"user_id": ..., "items": [...]} with the top-k items, seen items
excluded. Items of --items-file that the model was not trained on are encoded and become recommendable through
their text vectors, and get list slots by the model's freshness policy (the one `stream-rec train` chose; the
STREAM_REC_FRESH_* settings override it, as in the worker).
"""

from __future__ import annotations

import argparse

from ._common import add_command
from ._model_args import add_data_args, add_model_flag


SUMMARY = "write top-k recommendations (JSON lines) for every user of an event file"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_model_flag(p)
    add_data_args(p, items_required=False)
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="items per user")
    p.add_argument("--out", metavar="FILE", default="-", help="JSON-lines output file ('-' = stdout)")
    p.add_argument("--scores", action="store_true", help="also write the scores (\"scores\": [...])")
    p.add_argument("--batch-size", type=int, default=1024, help="users stepped together")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tqdm import tqdm

    from ..io.data import read_events, sequences
    from ..model.encoder import shared_encoder
    from ..model.evaluate import step_histories
    from ..model.recommender import Recommender
    from ..model.sequences import to_sequence
    from ..settings import Settings
    from ._model_args import read_item_texts

    if args.top_k < 1:
        raise SystemExit("error: --top-k must be at least 1")
    rec = Recommender.load(args.model, device=args.device)  # ModelLoadError / DataError: one line (cli.py)
    item_texts = read_item_texts(args)
    seqs = sequences(read_events(args.events_file, args.format))
    rec.add_catalog(item_texts, lambda: shared_encoder(Settings.from_env().cache_dir, args.device))
    policy = serving_policy(rec)
    users = list(seqs)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    try:
        for s in tqdm(range(0, len(users), args.batch_size), desc="recommending", unit="batch", disable=args.quiet):
            batch = users[s:s + args.batch_size]
            histories = [to_sequence(seqs[u], rec.row_of) for u in batch]
            states = step_histories(rec, [h.rows for h in histories], [h.gaps for h in histories])
            lists = ranked(rec, batch, states, [h.rows.tolist() for h in histories], args.top_k, policy)
            for user, recs in zip(batch, lists):
                line = {"user_id": user, "items": [i for i, _ in recs]}
                if args.scores:
                    line["scores"] = [round(v, 5) for _, v in recs]
                out.write(json.dumps(line) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def serving_policy(rec):
    """The freshness policy the worker would apply to ``rec``: the settings' (STREAM_REC_FRESH_SLOTS >= 0)
    or the model's own."""
    from ..pipeline import PipelineConfig
    from ..recsys.freshness import model_policy
    from ..settings import Settings

    override = PipelineConfig.from_settings(Settings.from_env()).freshness
    return override if override is not None else model_policy(rec)


def ranked(rec, users, states, seen, k: int, policy):
    """Top-k (item_id, score) lists as the worker ranks them: plain, or with the freshness policy when
    items younger than its ``max_age_s`` are in the catalogue (items added from their text)."""
    from ..recsys.ranking import RankBatch, fresh_lists

    ages = rec.item_ages()
    if policy.slots > 0 and bool((ages[1:] < policy.max_age_s).any()):
        return fresh_lists(RankBatch(rec, users, list(states), seen, k), policy, ages)[0]
    return rec.topk(states, k, seen)
