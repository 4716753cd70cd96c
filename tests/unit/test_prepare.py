import gzip
import json

import pytest

from bearrec.config import PrepareConfig
from bearrec.data.authors import load_authors_dir
from bearrec.data.catalogue import Example
from bearrec.data.prepare import chronological_split, clean_title, k_core, prepare, prepare_to_dir, sliding_windows
from bearrec.data.raw import RawData, read_raw
from bearrec.errors import DataError


@pytest.mark.parametrize("raw, clean", [
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ('The "Best" Pen', "The Best Pen"),
    ("  a \t b\n c  ", "a b c"),
    ("&quot;Quoted&quot; &#39;x&#39;", "Quoted 'x'"),
    ("   ", ""),
])
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


def test_k_core_is_iterative():
    # k=2. Item c has 2 interactions, but one is by user u3 who has a single interaction and is
    # dropped first; c then falls to 1 and goes too, which takes u2 down to 1 interaction.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 4), ("u3", "c", 5),
            ("u4", "a", 6), ("u4", "b", 7)]
    assert k_core(rows, 2) == [("u1", "a", 1), ("u1", "b", 2), ("u4", "a", 6), ("u4", "b", 7)]
    assert k_core(rows, 1) == rows
    assert k_core(rows, 3) == []


def test_sliding_windows_by_hand():
    seq = [(10, 1), (11, 2), (12, 3), (13, 4), (14, 5)]
    assert sliding_windows(seq, "u", max_history=2, min_history=1) == [
        Example("u", (10,), 11, 2), Example("u", (10, 11), 12, 3),
        Example("u", (11, 12), 13, 4), Example("u", (12, 13), 14, 5)]
    assert sliding_windows(seq, "u", max_history=10, min_history=3) == [
        Example("u", (10, 11, 12), 13, 4), Example("u", (10, 11, 12, 13), 14, 5)]


def test_chronological_split_by_target_time():
    rows = [Example(str(i), (1,), 2, ts) for i, ts in enumerate([9, 1, 5, 3, 7, 2, 8, 4, 6, 10])]
    parts = chronological_split(rows, [0.8, 0.1, 0.1])
    assert [e.timestamp for e in parts["train"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.timestamp for e in parts["valid"]] == [9] and [e.timestamp for e in parts["test"]] == [10]
    with pytest.raises(ValueError):
        chronological_split(rows, [0.5, 0.5])


def _raw():
    # Users a, b, c with 4 interactions each; item "z" has no title; "w" appears once (k=2 drops it).
    inter = [("a", "p", 1), ("a", "q", 2), ("a", "r", 3), ("a", "z", 4), ("a", "s", 5),
             ("b", "q", 6), ("b", "p", 7), ("b", "s", 8), ("b", "r", 9),
             ("c", "r", 10), ("c", "s", 11), ("c", "w", 12), ("c", "p", 13), ("c", "q", 14)]
    titles = {"p": "P &amp; Co", "q": 'The "Q"', "r": "R", "s": "S", "z": "   ", "w": "W"}
    return RawData("test", inter, titles)


def test_prepare_protocol_end_to_end():
    catalogue, splits, extra = prepare(_raw(), PrepareConfig(k_core=2, max_history=2, min_history=1,
                                                             split=[0.6, 0.2, 0.2]))
    assert catalogue.titles == {1: "P & Co", 2: "The Q", 3: "R", 4: "S"}  # ids by sorted raw id
    assert extra["item_map"] == {"p": 1, "q": 2, "r": 3, "s": 4}
    # windows (user, history, target, t): a: p q r s (t 1,2,3,5); b: q p s r (6..9); c: r s p q (10,11,13,14)
    expected = [Example("a", (1,), 2, 2), Example("a", (1, 2), 3, 3), Example("a", (2, 3), 4, 5),
                Example("b", (2,), 1, 7), Example("b", (2, 1), 4, 8), Example("b", (1, 4), 3, 9),
                Example("c", (3,), 4, 11), Example("c", (3, 4), 1, 13), Example("c", (4, 1), 2, 14)]
    assert splits["train"] + splits["valid"] + splits["test"] == expected
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [5, 1, 3]
    stats = extra["stats"]
    assert stats["dropped_items_without_title"] == 1 and stats["dropped_interactions_without_title"] == 1
    assert stats["interactions_after_k_core"] == 12 and stats["windows"] == 9


def test_prepare_to_dir_writes_the_authors_format(tmp_path):
    settings = PrepareConfig(k_core=2, max_history=2, min_history=1, split=[0.6, 0.2, 0.2])
    stats = prepare_to_dir(_raw(), settings, tmp_path / "out")
    ds = load_authors_dir(tmp_path / "out")
    assert ds.info["valid_source"] == "valid.csv"
    assert len(ds.train) + len(ds.valid) + len(ds.test) == stats["windows"] == 9
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["windows"] == 9


@pytest.mark.parametrize("settings, fragment", [
    (dict(k_core=0), "data.prepare.k_core must be >= 1"),
    (dict(min_history=5, max_history=3), r"data.prepare.min_history \(5\) must not exceed max_history \(3\)"),
    (dict(split=[0.5, 0.5, 0.5]), "data.prepare.split must be three non-negative fractions summing to 1"),
])
def test_bad_prepare_settings_fail_where_they_are_declared(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        PrepareConfig(**settings)


def test_prepare_rejects_a_core_that_leaves_too_little():
    with pytest.raises(ValueError):
        prepare(_raw(), PrepareConfig(k_core=4))


# ---- raw readers ------------------------------------------------------------------------
def _gz_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def test_amazon_2014_reviews_and_python_literal_meta(tmp_path):
    _gz_lines(tmp_path / "reviews_Office_5.json.gz", [
        json.dumps({"reviewerID": "A1", "asin": "B01", "unixReviewTime": 100, "overall": 5.0}),
        json.dumps({"reviewerID": "A2", "asin": "B02", "unixReviewTime": 50})])
    _gz_lines(tmp_path / "meta_Office.json.gz", [
        str({"asin": "B01", "title": "Pen &amp; Ink", "price": 3.5}), str({"asin": "B02", "categories": [["x"]]})])
    raw = read_raw(tmp_path)
    assert raw.source == "amazon2014:Office" and raw.info["amazon_format"] == "2014"
    assert raw.interactions == [("A1", "B01", 100.0), ("A2", "B02", 50.0)]
    assert raw.titles == {"B01": "Pen &amp; Ink", "B02": ""}  # no title: dropped by the protocol


def test_amazon_2018_json_meta(tmp_path):
    _gz_lines(tmp_path / "Office_Products_5.json.gz", [
        json.dumps({"reviewerID": "A1", "asin": "B01", "unixReviewTime": 100, "verified": True})])
    _gz_lines(tmp_path / "meta_Office_Products.json.gz", [json.dumps({"asin": "B01", "title": "Pen"})])
    raw = read_raw(tmp_path)
    assert raw.source == "amazon2018:Office_Products" and raw.titles == {"B01": "Pen"}


@pytest.mark.parametrize("review, meta, row, fragment", [
    ('{"reviewerID": "A1", "asin": "B01"}', str({"asin": "B01", "title": "P"}), 1, "unixReviewTime"),
    ('{"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1}\n{"reviewerID": "A2", "as', str({"asin": "B01"}), 2,
     "neither JSON nor a Python literal"),
    ('{"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1}', '{"title": "P"}', 1, "asin"),
])
def test_amazon_bad_lines(tmp_path, review, meta, row, fragment):
    _gz_lines(tmp_path / "reviews_X_5.json.gz", review.split("\n"))
    _gz_lines(tmp_path / "meta_X.json.gz", [meta])
    with pytest.raises(DataError) as exc:
        read_raw(tmp_path)
    assert exc.value.row == row and fragment in str(exc.value)


def test_amazon_missing_meta(tmp_path):
    _gz_lines(tmp_path / "reviews_X_5.json.gz", ['{"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1}'])
    with pytest.raises(DataError, match="meta_X.json.gz not found"):
        read_raw(tmp_path)


def test_generic_csv_pair(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\ni1,Pen\ni2,Pad\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,5\nu1,i2,6.5\n")
    raw = read_raw(tmp_path)
    assert raw.interactions == [("u1", "i1", 5.0), ("u1", "i2", 6.5)] and raw.titles == {"i1": "Pen", "i2": "Pad"}


@pytest.mark.parametrize("items, inter, name, row, fragment", [
    ("item_id,title\ni1,Pen\ni1,Pad\n", "user_id,item_id,timestamp\n", "items.csv", 3, "duplicate item id"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i9,5\n", "interactions.csv", 2, "unknown item id"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i1\n", "interactions.csv", 2, "expected 3 fields"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i1,noon\n", "interactions.csv", 2, "not a number"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i1,nan\nu1,i1,5\n", "interactions.csv", 2,
     "'nan' is not a finite number"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i1,5\nu1,i1,inf\n", "interactions.csv", 3,
     "not a finite number"),
    ("item_id,title\ni1,Pen\n", "user_id,item_id,timestamp\nu1,i1,5\nu1,i1,\"" + "x" * 200_000 + "\"\n",
     "interactions.csv", 3, "malformed CSV: field larger than field limit"),
    ("item_id,name\ni1,Pen\n", "user_id,item_id,timestamp\n", "items.csv", 1, "missing column(s) title"),
])
def test_generic_bad_input(tmp_path, items, inter, name, row, fragment):
    (tmp_path / "items.csv").write_text(items)
    (tmp_path / "interactions.csv").write_text(inter)
    with pytest.raises(DataError) as exc:
        read_raw(tmp_path)
    assert exc.value.path.endswith(name) and exc.value.row == row and fragment in str(exc.value)


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "mini.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                         "1\tToy Story (1995)\t5\t978300760\n2\tHeat (1995)\t3\t978300761\n")
    raw = read_raw(tmp_path)
    assert raw.interactions == [("1", "Toy Story (1995)", 978300760.0), ("2", "Heat (1995)", 978300761.0)]
    assert raw.titles["Heat (1995)"] == "Heat (1995)"
    (tmp_path / "mini.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\tHeat\n")
    with pytest.raises(DataError, match="row 2: expected 3 tab-separated fields"):
        read_raw(tmp_path)


def test_prepare_never_deletes_what_it_did_not_write(tmp_path):
    settings = PrepareConfig(k_core=2, max_history=2, min_history=1, split=[0.6, 0.2, 0.2])
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds 'notes.txt', which bearrec did not write"):
        prepare_to_dir(_raw(), settings, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        prepare_to_dir(_raw(), settings, tmp_path / "file")
    prepare_to_dir(_raw(), settings, tmp_path / "again")
    prepare_to_dir(_raw(), settings, tmp_path / "again")  # its own earlier output is replaced
    assert json.loads((tmp_path / "again" / "prepare.json").read_text())["windows"] == 9
