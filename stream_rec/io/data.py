"""The one reader of event and item files, and the leave-one-out split.

Formats (``fmt``):

* ``csv`` -- events with a header ``user_id,item_id,timestamp`` (extra columns ignored); items with a
  header ``item_id,title`` where the other columns are appended to the item text when asked
  (``text_columns``). Ids are strings, always.
* ``jsonl`` -- what the stack itself carries: one ``events`` topic record per line (``user_id``,
  ``item_id``, ``timestamp``, ...; control events such as ``delete_user`` are skipped), or one
  ``catalog`` record per line (``item_id``, ``title``, ``text``, ``attributes``), whose item text is
  :func:`catalog_text`, the text the worker encodes for a live catalog record.
* ``ml-100k`` -- MovieLens 100K ``u.data`` (tab separated) and ``u.item`` (``|`` separated, latin-1,
  19 genre flags).
* ``ml-1m`` -- MovieLens 1M ``ratings.dat`` / ``movies.dat`` (``::`` separated, latin-1).

``detect_format`` picks the format from the file name (``u.data``/``u.item`` -> ml-100k,
``ratings.dat``/``movies.dat`` -> ml-1m, ``*.jsonl``/``*.ndjson`` -> jsonl, anything else -> csv); a
directory resolves to the MovieLens file inside it, so ``--events-file ../ml-100k --items-file ../ml-100k`` works.

Three views of the same files: :func:`read_events` / :func:`read_items` (typed, for training and
evaluation), :func:`read_catalog` (the catalog records a worker seeds its live catalog with) and
:func:`read_event_records` (raw event records for ``stream-rec produce``, left for the worker's
validation to judge).

Sequences are built with a *stable* sort on timestamp, so events with equal timestamps keep their file
order (MovieLens users rate in bursts within the same second; the file order is the only tie-breaker).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

FORMATS = ("auto", "csv", "jsonl", "ml-100k", "ml-1m")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CONTROL_EVENT_TYPES = frozenset({"delete_user"})  # events that carry no interaction (stream_rec.validation)

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
_EVENT_FILES = {"u.data": "ml-100k", "ratings.dat": "ml-1m"}
_ITEM_FILES = {"u.item": "ml-100k", "movies.dat": "ml-1m"}


class DataError(ValueError):
    """A data file is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class Interaction:
    """One user-item event of a log (training and evaluation data)."""

    user_id: str
    item_id: str
    timestamp: float


@dataclass(frozen=True)
class Split:
    """Leave-one-out split of per-user sequences (each a list of (item_id, timestamp)).

    ``train[u]`` = all but the last two events, ``valid[u]`` = the second-to-last event,
    ``test[u]`` = the last event. Users with fewer than 3 events are kept whole in ``train`` and have
    no validation/test target.
    """

    train: dict[str, list[tuple[str, float]]]
    valid: dict[str, tuple[str, float]]
    test: dict[str, tuple[str, float]]
    full: dict[str, list[tuple[str, float]]]


# --- format detection ----------------------------------------------------------------------------
def _resolve(path: str | Path, names: dict[str, str], fmt: str, kind: str) -> tuple[Path, str]:
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if path.is_dir():
        for name, name_fmt in names.items():
            if (path / name).is_file() and fmt in ("auto", name_fmt):
                return path / name, name_fmt
        raise DataError(f"{path} is a directory without a MovieLens {kind} file ({' or '.join(names)})")
    if not path.is_file():
        raise DataError(f"{kind} file not found: {path}")
    if fmt == "auto":
        fmt = names.get(path.name, "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "csv")
    return path, fmt


def detect_format(path: str | Path, kind: str = "events") -> str:
    """``csv``, ``jsonl``, ``ml-100k`` or ``ml-1m`` for an events or items path (file or MovieLens directory)."""
    return _resolve(path, _EVENT_FILES if kind == "events" else _ITEM_FILES, "auto", kind)[1]


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{line_no}: not JSON: {exc}") from exc


# --- events --------------------------------------------------------------------------------------
def read_events(path: str | Path, fmt: str = "auto") -> list[Interaction]:
    """All events of a file in file order."""
    path, fmt = _resolve(path, _EVENT_FILES, fmt, "events")
    if fmt == "ml-100k":
        return list(_split_lines(path, "\t", 4, "user\\titem\\trating\\ttimestamp"))
    if fmt == "ml-1m":
        return list(_split_lines(path, "::", 4, "UserID::MovieID::Rating::Timestamp"))
    if fmt == "jsonl":
        return list(_read_event_jsonl(path))
    return _read_event_csv(path)


def _split_lines(path: Path, sep: str, n_fields: int, layout: str) -> Iterable[Interaction]:
    with open(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) < n_fields:
                raise DataError(f"{path}:{line_no}: expected {layout}, got {line[:80]!r}")
            try:
                ts = float(parts[3])
            except ValueError:
                raise DataError(f"{path}:{line_no}: timestamp {parts[3]!r} is not a number") from None
            yield Interaction(parts[0], parts[1], ts)


def _read_event_jsonl(path: Path) -> Iterator[Interaction]:
    """``events`` topic records; timestamps in epoch seconds or milliseconds (as the worker reads them)
    or ISO-8601."""
    for line_no, rec in _jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(rec).__name__}")
        if rec.get("event_type") in CONTROL_EVENT_TYPES:
            continue
        user, item, ts = rec.get("user_id"), rec.get("item_id"), rec.get("timestamp")
        if user in (None, "") or item in (None, ""):
            raise DataError(f"{path}:{line_no}: empty user_id or item_id")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            ts = float(ts) / 1000.0 if ts > 1e11 else float(ts)
        else:
            ts = _parse_timestamp(ts if isinstance(ts, str) else None, path, line_no)
        yield Interaction(str(user), str(item), ts)


def read_event_records(path: str | Path) -> Iterator[dict]:
    """Raw event records for publishing (``stream-rec produce --events-file``): JSONL as it is, or CSV with a
    header ``user_id,item_id[,event_type][,timestamp][,value]`` (``userId``/``movieId``/``rating`` also
    understood), numbers made numbers. Nothing is checked: the worker's validation decides what is bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.suffix.lower() != ".csv":
        yield from (rec for _, rec in _jsonl(path))
        return
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            ev = {"user_id": _pick(row, "user_id"), "item_id": _pick(row, "item_id"),
                  "event_type": _pick(row, "event_type") or ("rate" if _pick(row, "value") else "view")}
            if _pick(row, "timestamp") is not None:
                ev["timestamp"] = _number(_pick(row, "timestamp"))
            if _pick(row, "value") is not None:
                ev["value"] = _number(_pick(row, "value"))
            yield ev


COLUMN_ALIASES = {"user_id": ("user_id", "userId", "user"), "item_id": ("item_id", "itemId", "movieId", "item"),
                  "timestamp": ("timestamp", "ts", "time"), "value": ("value", "rating"),
                  "event_type": ("event_type", "type")}


def _pick(row: dict, field: str):
    for name in COLUMN_ALIASES[field]:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # left for the worker's validation to reject (wrong_type -> DLQ)


def _read_event_csv(path: Path) -> list[Interaction]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "item_id", "timestamp"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: events CSV needs columns user_id,item_id,timestamp; missing {sorted(missing)}"
                            f" (header: {reader.fieldnames})")
        out = []
        for line_no, row in enumerate(reader, start=2):
            user, item, ts = row["user_id"], row["item_id"], row["timestamp"]
            if not user or not item:
                raise DataError(f"{path}:{line_no}: empty user_id or item_id")
            out.append(Interaction(user, item, _parse_timestamp(ts, path, line_no)))
        return out


def _parse_timestamp(raw: str | None, path: Path, line_no: int) -> float:
    """Unix seconds, or an ISO-8601 date/time."""
    if raw is None or raw == "":
        raise DataError(f"{path}:{line_no}: empty timestamp")
    try:
        return float(raw)
    except ValueError:
        pass
    from datetime import datetime, timezone
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{path}:{line_no}: timestamp {raw!r} is neither unix seconds nor ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def sequences(events: Sequence[Interaction]) -> dict[str, list[tuple[str, float]]]:
    """Per-user ``[(item_id, timestamp), ...]`` in time order; ties keep file order (stable sort).
    Users appear in order of their first event in the file."""
    by_user: dict[str, list[tuple[str, float]]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append((e.item_id, e.timestamp))
    for seq in by_user.values():
        seq.sort(key=lambda it: it[1])  # list.sort is stable
    return by_user


def leave_one_out(seqs: dict[str, list[tuple[str, float]]]) -> Split:
    train, valid, test = {}, {}, {}
    for user, seq in seqs.items():
        if len(seq) >= 3:
            train[user], valid[user], test[user] = seq[:-2], seq[-2], seq[-1]
        else:
            train[user] = list(seq)
    return Split(train=train, valid=valid, test=test, full=seqs)


# --- items ---------------------------------------------------------------------------------------
def read_items(path: str | Path, fmt: str = "auto", text_columns: Sequence[str] | None = None) -> dict[str, str]:
    """``item_id -> item text`` in file order. The text is what the encoder reads: the title plus the
    attributes we have (MovieLens: title with its year, and the genres; CSV: the columns named in
    ``text_columns``, or every extra column when ``text_columns`` is ``["*"]``)."""
    path, fmt = _resolve(path, _ITEM_FILES, fmt, "items")
    if fmt == "ml-100k":
        return _read_ml100k_items(path)
    if fmt == "ml-1m":
        return _read_ml1m_items(path)
    if fmt == "jsonl":
        return {r["item_id"]: catalog_text(r) for r in read_catalog(path)}
    return _read_item_csv(path, text_columns)


def catalog_text(record: dict) -> str:
    """``Title. free text. key: value, key: value`` -- what the encoder reads for a catalog record (live
    in the worker, and in training from a catalog JSONL file, so both read an item alike)."""
    parts = [str(record.get("title") or "").strip(), str(record.get("text") or "").strip()]
    attrs = record.get("attributes")
    if isinstance(attrs, dict) and attrs:
        parts.append(", ".join(f"{k}: {v}" for k, v in attrs.items()))
    return ". ".join(p for p in parts if p)


def read_catalog(path: str | Path) -> list[dict]:
    """Catalog records from a JSONL file (one ``{item_id, title, text?, attributes?}`` per line) or a
    CSV file with an ``item_id`` column (the worker's ``--items-file``); item ids become strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [rec for _, rec in _jsonl(path)]
    bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not r.get("item_id")]
    if bad:
        raise DataError(f"{path}: records without item_id at lines {bad[:5]}")
    for r in rows:
        r["item_id"] = str(r["item_id"])
    return rows


def movie_text(title: str, genres: Sequence[str]) -> str:
    """``Toy Story (1995). Genres: Animation, Children's, Comedy.`` -- the year stays in the title."""
    title = title.strip()
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|El|Das|Der|Die)( \(\d{4}\))$", title)
    if m:  # "Usual Suspects, The (1995)" -> "The Usual Suspects (1995)"
        title = f"{m.group(2)} {m.group(1)}{m.group(3)}"
    genres = [g for g in genres if g and g != "unknown" and g != "(no genres listed)"]
    return f"{title}. Genres: {', '.join(genres)}." if genres else f"{title}."


def _read_ml100k_items(path: Path) -> dict[str, str]:
    out = {}
    with open(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").split("|")
            if len(parts) < 5 + len(ML100K_GENRES):
                if line.strip():
                    raise DataError(f"{path}:{line_no}: not a u.item line (id|title|date|video date|url|19 flags)")
                continue
            flags = parts[5:5 + len(ML100K_GENRES)]
            out[parts[0]] = movie_text(parts[1], [g for g, f_ in zip(ML100K_GENRES, flags) if f_ == "1"])
    return out


def _read_ml1m_items(path: Path) -> dict[str, str]:
    out = {}
    with open(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").split("::")
            if len(parts) < 3:
                if line.strip():
                    raise DataError(f"{path}:{line_no}: not a movies.dat line (MovieID::Title::Genres)")
                continue
            out[parts[0]] = movie_text(parts[1], parts[2].split("|"))
    return out


def _read_item_csv(path: Path, text_columns: Sequence[str] | None) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "item_id" not in header or "title" not in header:
            raise DataError(f"{path}: items CSV needs columns item_id,title (header: {header})")
        extra = [c for c in header if c not in ("item_id", "title")]
        if text_columns == ["*"]:
            text_columns = extra
        unknown = set(text_columns or []) - set(header)
        if unknown:
            raise DataError(f"{path}: text column(s) {sorted(unknown)} not in header {header}")
        out = {}
        for line_no, row in enumerate(reader, start=2):
            if not row["item_id"]:
                raise DataError(f"{path}:{line_no}: empty item_id")
            parts = [(row.get("title") or "").strip()]
            parts += [f"{c}: {row[c].strip()}" for c in (text_columns or []) if (row.get(c) or "").strip()]
            out[row["item_id"]] = ". ".join(p for p in parts if p)
        return out


def write_events_csv(path: str | Path, events: Iterable[dict | Interaction]) -> None:
    """Events as ``user_id,item_id,timestamp`` CSV (used by tests and the demo)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for e in events:
            if isinstance(e, Interaction):
                w.writerow([e.user_id, e.item_id, e.timestamp])
            else:
                w.writerow([e["user_id"], e["item_id"], e["timestamp"]])


def write_items_csv(path: str | Path, items: Iterable[dict]) -> None:
    """Catalog records as ``item_id,title,text`` CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "text"])
        for it in items:
            w.writerow([it["item_id"], it.get("title", ""), it.get("text", "")])
