"""Flags and loading shared by the model commands (`train`, `evaluate`, `recommend`, `finetune`,
`interests`); not a sub-command."""

from __future__ import annotations

import argparse
import ast
import types
from pathlib import Path

from ._common import existing_path


EVENTS_HELP = ("events: JSONL events-topic records (what `stream-rec produce` publishes), CSV with "
               "user_id,item_id,timestamp (extra columns ignored), MovieLens u.data / ratings.dat, or a MovieLens "
               "directory")
ITEMS_HELP = ("items: JSONL catalog records (what the `catalog` topic carries), CSV with item_id,title (+ columns "
              "named in --text-columns), MovieLens u.item / movies.dat, or a MovieLens directory")


def add_data_args(p: argparse.ArgumentParser, items_required: bool = True) -> None:
    p.add_argument("--events-file", metavar="FILE", required=True, type=existing_path, help=EVENTS_HELP)
    p.add_argument("--items-file", metavar="FILE", required=items_required, type=existing_path, help=ITEMS_HELP)
    add_format_flag(p, "file format; auto = by file name (u.data/u.item -> ml-100k, ratings.dat/movies.dat -> ml-1m, "
                       "*.jsonl -> jsonl, anything else -> csv)")
    p.add_argument("--text-columns", default="",
                   help="comma-separated extra item CSV columns appended to the title as item text ('*' = all)")


def add_model_flag(p: argparse.ArgumentParser, help: str = "model directory written by `stream-rec train`") -> None:
    p.add_argument("--model", metavar="DIR", required=True, help=help)


def add_format_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--format`` of the input files (the formats of stream_rec.io.data)."""
    from ..io.data import FORMATS

    p.add_argument("--format", default="auto", choices=list(FORMATS), help=help)


def read_item_texts(args: argparse.Namespace) -> dict[str, str]:
    from ..io.data import read_items

    if not args.items_file:
        return {}
    cols = [c.strip() for c in args.text_columns.split(",") if c.strip()] or None
    return read_items(args.items_file, args.format, cols)


def load_data(args: argparse.Namespace):
    """(leave-one-out split, item texts, a small description of the data) from the flags."""
    from ..io.data import DataError, leave_one_out, read_events, sequences

    events = read_events(args.events_file, args.format)
    item_texts = read_item_texts(args)
    if not events:
        raise DataError(f"no events in {args.events_file}")
    split = leave_one_out(sequences(events))
    info = {"events_file": str(args.events_file), "items_file": str(args.items_file), "events": len(events),
            "users": len(split.full), "items_in_catalog": len(item_texts)}
    return split, item_texts, info


def dataclass_defaults(module_path: str, class_name: str) -> types.SimpleNamespace:
    """The defaults of a dataclass of ``stream_rec/<module_path>`` written as literals, read from its source:
    the model's and training's parameters (``GRUConfig``, ``TrainParams``, ``FinetuneParams``) live in
    modules that import torch, seconds that ``--help`` must not wait for. tests/test_cli.py checks them
    against the imported classes."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / module_path).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    defaults = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            try:
                defaults[stmt.target.id] = ast.literal_eval(stmt.value)
            except ValueError:  # not a literal (a field(...)): not a flag's default
                continue
    return types.SimpleNamespace(**defaults)

