"""Flags and loading shared by the model commands (`train`, `evaluate`, `recommend`, `finetune`,
`interests`); not a sub-command."""

from __future__ import annotations

import argparse


def add_data_args(p: argparse.ArgumentParser, events_help: str | None = None, items_required: bool = True) -> None:
    p.add_argument("--events", required=True,
                   help=events_help or "events: CSV with user_id,item_id,timestamp (extra columns ignored), JSONL "
                                       "events-topic records, MovieLens u.data / ratings.dat, or a MovieLens directory")
    p.add_argument("--items", required=items_required,
                   help="items: CSV with item_id,title (+ columns named in --text-columns), JSONL catalog records, or "
                        "MovieLens u.item / movies.dat, or a MovieLens directory")
    add_format_flag(p, "file format; auto = by file name (u.data/u.item -> ml-100k, ratings.dat/movies.dat -> ml-1m, "
                       "*.jsonl -> jsonl, anything else -> csv)")
    p.add_argument("--text-columns", default="",
                   help="comma-separated extra item CSV columns appended to the title as item text ('*' = all)")


def add_model_flag(p: argparse.ArgumentParser, help: str = "model directory written by `stream-rec train`") -> None:
    p.add_argument("--model", required=True, help=help)


def add_format_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--format`` of the input files (the formats of stream_rec.io.data)."""
    from ..io.data import FORMATS

    p.add_argument("--format", default="auto", choices=list(FORMATS), help=help)


def read_item_texts(args: argparse.Namespace) -> dict[str, str]:
    from ..io.data import read_items

    if not args.items:
        return {}
    cols = [c.strip() for c in args.text_columns.split(",") if c.strip()] or None
    return read_items(args.items, args.format, cols)


def load_data(args: argparse.Namespace):
    """(leave-one-out split, item texts, a small description of the data) from the flags."""
    from ..io.data import DataError, leave_one_out, read_events, sequences

    try:
        events = read_events(args.events, args.format)
        item_texts = read_item_texts(args)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not events:
        raise SystemExit(f"error: no events in {args.events}")
    split = leave_one_out(sequences(events))
    info = {"events_file": str(args.events), "items_file": str(args.items), "events": len(events),
            "users": len(split.full), "items_in_catalog": len(item_texts)}
    return split, item_texts, info
