"""Readers for event logs / catalogs (CSV and MovieLens formats) and the leave-one-out split."""

import pytest

from stream_rec.data import (DataError, detect_format, leave_one_out, movie_text, read_events, read_items,
                             sequences)


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
