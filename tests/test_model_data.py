"""Readers for event logs / catalogs (CSV, JSONL and MovieLens formats) and the leave-one-out split."""

import json

import pytest

from stream_rec.io.data import (DataError, catalog_text, detect_format, leave_one_out, movie_text, read_catalog,
                                read_event_records, read_events, read_items, sequences, write_events_csv)
from stream_rec_devtools.synthetic import make_world


def test_csv_events_ids_are_strings_and_ties_keep_file_order(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("user_id,item_id,timestamp,rating\n007,b,10,5\n007,a,5,1\n007,c,10,2\n8,a,2024-01-01T00:00:00Z,3\n")
    events = read_events(p)
    assert events[0].user_id == "007" and events[0].item_id == "b"
    seqs = sequences(events)
    assert [i for i, _ in seqs["007"]] == ["a", "b", "c"]  # b before c: same timestamp, file order
    assert seqs["8"][0][1] == 1704067200.0


def test_csv_errors_are_clear(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("user,item,ts\n1,2,3\n")
    with pytest.raises(DataError, match="missing"):
        read_events(p)
    p.write_text("user_id,item_id,timestamp\n1,2,yesterday\n")
    with pytest.raises(DataError, match="timestamp"):
        read_events(p)
    with pytest.raises(DataError, match="not found"):
        read_events(tmp_path / "nope.csv")


def test_movielens_formats(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t100\n1\t11\t3\t50\n2\t10\t4\t70\n")
    flags = ["0"] * 19
    flags[1] = flags[15] = "1"
    (d / "u.item").write_bytes(("10|Usual Suspects, The (1995)|01-Jan-1995||url|" + "|".join(flags) + "\n").encode("latin-1"))
    assert detect_format(d) == "ml-100k" and detect_format(d / "u.item", "items") == "ml-100k"
    seqs = sequences(read_events(d))
    assert [i for i, _ in seqs["1"]] == ["11", "10"]
    assert read_items(d) == {"10": "The Usual Suspects (1995). Genres: Action, Sci-Fi."}
    m = tmp_path / "ml-1m"
    m.mkdir()
    (m / "ratings.dat").write_text("1::1193::5::978300760\n")
    (m / "movies.dat").write_bytes("1::Am\xe9lie (2001)::Comedy|Romance\n".encode("latin-1"))
    assert read_events(m / "ratings.dat")[0].item_id == "1193"
    assert read_items(m) == {"1": "Amélie (2001). Genres: Comedy, Romance."}


def test_item_csv_text_columns(tmp_path):
    p = tmp_path / "i.csv"
    p.write_text("item_id,title,text,price\nx,Pasta,a cooking show,3\n")
    assert read_items(p) == {"x": "Pasta"}
    assert read_items(p, text_columns=["text"]) == {"x": "Pasta. text: a cooking show"}
    assert read_items(p, text_columns=["*"]) == {"x": "Pasta. text: a cooking show. price: 3"}
    with pytest.raises(DataError, match="not in header"):
        read_items(p, text_columns=["genre"])


def test_leave_one_out():
    seqs = {"u": [("a", 1), ("b", 2), ("c", 3), ("d", 4)], "short": [("a", 1), ("b", 2)]}
    split = leave_one_out(seqs)
    assert split.train["u"] == [("a", 1), ("b", 2)] and split.valid["u"] == ("c", 3) and split.test["u"] == ("d", 4)
    assert split.train["short"] == seqs["short"] and "short" not in split.test


def test_movie_text_without_genres():
    assert movie_text("Heat (1995)", ["(no genres listed)"]) == "Heat (1995)."


def test_jsonl_events_and_catalog_read_as_the_stack_writes_them(tmp_path):
    """The events topic's records and the catalog records (what `stream-rec produce` publishes) train
    like the same log as CSV; control events are skipped; epoch milliseconds become seconds."""
    world = make_world(n_users=5, events_per_user=(3, 5), seed=2)
    events = tmp_path / "events.jsonl"
    lines = [json.dumps(e) for e in world.events]
    lines.insert(2, json.dumps({"user_id": "u0000", "event_type": "delete_user", "timestamp": 1_700_000_000}))
    events.write_text("\n".join(lines) + "\n\n")
    write_events_csv(tmp_path / "events.csv", world.events)
    assert detect_format(events) == "jsonl"
    assert read_events(events) == read_events(tmp_path / "events.csv")
    assert [r["event_type"] for r in read_event_records(events)][2] == "delete_user"  # produce sends it as it is
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(it) + "\n" for it in world.items))
    texts = read_items(catalog)
    assert list(texts) == [it["item_id"] for it in world.items]
    assert texts[world.items[0]["item_id"]] == catalog_text(world.items[0])  # the text the worker encodes
    assert "genre: " in texts[world.items[0]["item_id"]]
    assert read_catalog(catalog) == world.items
    ms = tmp_path / "ms.jsonl"
    ms.write_text(json.dumps({"user_id": 1, "item_id": 2, "timestamp": 1_700_000_000_500}) + "\n")
    assert read_events(ms)[0] == read_events(ms, "jsonl")[0] and read_events(ms)[0].timestamp == 1_700_000_000.5
    ms.write_text('{"user_id": "a", "item_id": "b", "timestamp": 1}\nnot json\n')
    with pytest.raises(DataError, match="ms.jsonl:2: not JSON"):
        read_events(ms)
