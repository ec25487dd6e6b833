"""`stream-rec interests`: a user's recent taste as a few readable labels (genres / keywords).

Rank interest labels by how much closer they are to the mean text vector of the user's recent items than to
the catalog's (see stream_rec/recsys/interests.py). Without --labels, the labels are the genres found in the
model's item texts ('Genres: ...'), each the centroid of its items.
"""

from __future__ import annotations

import argparse

from ._common import add_command, existing_path
from ._model_args import add_format_flag, add_model_flag


SUMMARY = "summarise a user's recent history as a few readable interests"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, __name__, SUMMARY, __doc__)
    add_model_flag(p, "model directory (or a directory of them: newest)")
    p.add_argument("--events-file", metavar="FILE", required=True, type=existing_path,
                   help="events holding the user's history (JSONL, CSV or a MovieLens file/dir)")
    p.add_argument("--user", required=True, help="user id to describe")
    add_format_flag(p, "events file format")
    p.add_argument("--labels", default="", help="comma-separated keywords to choose from, encoded by the text "
                                                "encoder (default: the catalog's genres)")
    p.add_argument("--recent", type=int, default=20, metavar="N", help="how many of the user's latest events to use")
    p.add_argument("--half-life", type=float, default=10.0, metavar="N",
                   help="recency weighting: weight halves every N events back")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="how many interests to print")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from ..io.data import read_events, sequences
    from ..model.encoder import shared_encoder
    from ..model.recommender import Recommender
    from ..recsys.interests import InterestProfiler, labels_from_texts

    rec = Recommender.load(args.model, device="cpu")  # ModelLoadError / DataError: one line (stream_rec/cli.py)
    seqs = sequences(read_events(args.events_file, args.format))
    if args.user not in seqs:
        raise SystemExit(f"error: user {args.user!r} has no events in {args.events_file}")
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if not labels and not labels_from_texts(rec.item_texts):
        raise SystemExit("error: the model's item texts carry no 'Genres: ...' list; give --labels a,b,c")
    history = [r for r in rec.rows_for([i for i, _ in seqs[args.user]]) if r][-args.recent:]
    if not history:
        raise SystemExit(f"error: none of user {args.user!r}'s items are known to the model")
    text_vectors = rec.model.text_vectors.cpu().numpy()
    if labels:  # keywords: encoded as words
        profiler = InterestProfiler.from_encoder(shared_encoder(), labels, text_vectors, args.half_life)
    else:  # genres of the catalog: centroids of their items
        profiler = InterestProfiler.from_genres(rec.item_texts, text_vectors, args.half_life)
    interests = profiler.summarise(np.array([history]), top=args.top_k)[0]
    recent_titles = [rec.item_texts[r - 1] or rec.item_ids[r - 1] for r in history[-5:]]
    if args.json:
        print(json.dumps({"user": args.user, "interests": [{"label": lb, "lift": s} for lb, s in interests],
                          "recent": recent_titles}, indent=2))
    else:
        print(f"user {args.user}: " + (", ".join(f"{lb} (+{s:.3f})" for lb, s in interests) or "no distinct interests"))
        for t in recent_titles:
            print(f"  recently: {t}")
    return 0
