import json

import pytest

from bearrec.data.authors import carve_validation, load_authors_dir, read_examples, read_titles, write_authors_dir
from bearrec.data.catalogue import Example
from bearrec.errors import DataError
from tests.conftest import write_authors


def test_reads_examples_and_catalogue(authors_dir):
    ds = load_authors_dir(authors_dir, valid_fraction=0)
    assert ds.name == "Tiny"
    assert ds.train[0] == Example("u1", (1, 2), 3, 100)
    assert ds.train[3] == Example("u4", (3, 5, 6), 2, 500)
    assert ds.test == [Example("u1", (3, 4), 6, 700), Example("u9", (5, 2), 1, 800)]
    assert ds.catalogue.duplicate_titles == {"Red Pen": [1, 4]}
    assert ds.catalogue.unique_titles == ["Red Pen", "Blue Pen", "Stapler", "Paper Clips", "Red Pen Refill"]
    assert ds.valid == [] and ds.info["train_file"] == "train.csv"


def test_carves_latest_ninth_of_train_as_validation(authors_dir):
    ds = load_authors_dir(authors_dir)  # 9 train rows, 1/9 -> the single latest row (timestamp 600)
    assert [e.timestamp for e in ds.valid] == [600]
    assert [e.timestamp for e in ds.train] == [100, 300, 200, 500, 400, 250, 50, 350]  # file order kept
    assert ds.info["valid_source"].startswith("carved")


def test_carve_is_chronological_with_stable_ties():
    rows = [Example(str(i), (1,), 2, ts) for i, ts in enumerate([5, 9, 9, 1, 9, 3])]
    train, valid = carve_validation(rows, 0.5)
    assert [e.user_id for e in valid] == ["1", "2", "4"]  # the three latest; ties keep file order
    assert [e.user_id for e in train] == ["0", "3", "5"]
    with pytest.raises(ValueError):
        carve_validation(rows, 1.0)


def _sample_beside_full(folder, sample_rows):
    full = folder / "train.csv"
    lines = full.read_text().splitlines()
    (folder / "train_10000.csv").write_text("\n".join([lines[0], *(lines[1 + i] for i in sample_rows)]) + "\n")
    return folder


def test_validation_is_held_out_of_train_csv_when_training_on_a_sample(tmp_path):
    # train.csv timestamps: 100 300 200 500 400 250 600 50 350; the sample takes rows 0..5 (6 rows)
    folder = _sample_beside_full(write_authors(tmp_path / "D"), range(6))
    ds = load_authors_dir(folder, valid_fraction=1 / 3)  # round(6 / 3) = 2 latest rows outside the sample
    assert [e.timestamp for e in ds.train] == [100, 300, 200, 500, 400, 250]  # the whole sample trains
    assert [e.timestamp for e in ds.valid] == [600, 350]  # rest: 600, 50, 350 -> the two latest, file order
    assert ds.info["valid_source"].startswith("held out: the chronologically latest 2 rows of train.csv")
    carved = load_authors_dir(folder, valid_fraction=1 / 3, validation="carve")
    assert [e.timestamp for e in carved.valid] == [500, 400] and len(carved.train) == 4
    big = load_authors_dir(folder, valid_fraction=0.9)  # more than the rest holds: all 3 of them
    assert sorted(e.timestamp for e in big.valid) == [50, 350, 600]


def test_held_out_validation_needs_train_csv(tmp_path):
    folder = write_authors(tmp_path / "D")
    (folder / "train.csv").rename(folder / "train_10000.csv")
    with pytest.raises(DataError, match="validation=held_out needs train.csv beside a training sample"):
        load_authors_dir(folder, validation="held_out")
    with pytest.raises(DataError, match="training on train.csv"):
        load_authors_dir(write_authors(tmp_path / "E"), train_file="train.csv", validation="held_out")
    assert load_authors_dir(folder).info["valid_source"].startswith("carved")  # auto falls back
    with pytest.raises(ValueError, match="auto, held_out or carve"):
        load_authors_dir(folder, validation="latest")


def test_valid_csv_is_used_when_present(tmp_path):
    folder = write_authors(tmp_path / "D", valid=[("u3", [1, 2, 5], 650)])
    ds = load_authors_dir(folder)
    assert ds.valid == [Example("u3", (1, 2), 5, 650)] and len(ds.train) == 9
    assert ds.info["valid_source"] == "valid.csv"


def test_train_file_auto_prefers_the_papers_sample(authors_dir):
    (authors_dir / "train_10000.csv").write_text('user_id,item_ids,timestamp\nu1,"[1, 2]",5\n')
    assert load_authors_dir(authors_dir, valid_fraction=0).train == [Example("u1", (1,), 2, 5)]
    assert len(load_authors_dir(authors_dir, train_file="train.csv", valid_fraction=0).train) == 9


def _error(path, *args):
    with pytest.raises(DataError) as exc:
        read_examples(path, *args)
    return exc.value


KNOWN = set(range(1, 7))


@pytest.mark.parametrize("body, row, field, fragment", [
    ('u1,"[1, 2]",5\nu2,"[1, 2]"\n', 3, None, "expected 3 fields, got 2"),
    ('u1,"[1, 2",5\n', 2, "item_ids", "cannot parse"),
    ('u1,"[1, 2]",5\nu2,"[1, 77]",6\n', 3, "item_ids", "unknown item id 77"),
    ('u1,"[1, \'a\']",5\n', 2, "item_ids", "list of integer item ids"),
    ('u1,"[true, 2]",5\n', 2, "item_ids", "list of integer item ids"),  # a bool is not an item id
    ('u1,"[1, 2.0]",5\n', 2, "item_ids", "list of integer item ids"),
    ('u1,"[5, 1, 99, 77]",5\n', 2, "item_ids", "unknown item id 99"),  # the first unknown one is named
    ('u1,"[3]",5\n', 2, "item_ids", "at least one history item"),
    ('u1,"[1, 2]",yesterday\n', 2, "timestamp", "not a number"),
    (',"[1, 2]",5\n', 2, "user_id", "empty user id"),
    ('u1,"[1, 2]",nan\n', 2, "timestamp", "not a number"),
    ('u1,"' + "[" * 50_000 + "1" + "]" * 50_000 + '",5\n', 2, "item_ids", "cannot parse"),  # RecursionError
    ('u1,"[1, 2]",5\nu2,"[1, ' + "2, " * 60_000 + '3]",6\n', 3, None, "malformed CSV: field larger"),
])
def test_bad_rows_name_file_row_field(tmp_path, body, row, field, fragment):
    path = tmp_path / "train.csv"
    path.write_text("user_id,item_ids,timestamp\n" + body)
    err = _error(path, KNOWN)
    assert (err.path, err.row, err.field) == (str(path), row, field)
    assert fragment in str(err) and str(path) in str(err) and f"row {row}" in str(err)


def test_missing_column(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text('user_id,items,timestamp\nu1,"[1, 2]",5\n')
    err = _error(path, KNOWN)
    assert err.row == 1 and "missing column(s) item_ids" in str(err)


@pytest.mark.parametrize("content, fragment", [("", "empty file"), ("user_id,item_ids,timestamp\n", "no rows")])
def test_empty_files(tmp_path, content, fragment):
    path = tmp_path / "test.csv"
    path.write_text(content)
    assert fragment in str(_error(path, KNOWN))


def test_non_utf8_names_the_row(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b'user_id,item_ids,timestamp\nu1,"[1, 2]",5\nu\xff2,"[1, 2]",6\n')
    err = _error(path, KNOWN)
    assert err.row == 3 and "not UTF-8" in str(err)


def test_duplicate_item_ids_in_titles(tmp_path):
    path = tmp_path / "id2name4Rec.json"
    path.write_text('{\n"1": "A",\n"2": "B",\n"1": "C"\n}')
    with pytest.raises(DataError) as exc:
        read_titles(path)
    assert exc.value.row == 4 and exc.value.field == "item_id" and "duplicate item id '1'" in str(exc.value)


@pytest.mark.parametrize("content, fragment", [
    ('{"1": "A", "01": "B"}', "duplicate item id '01'"),
    ('{"x": "A"}', "not an integer"),
    ('{"1": 5}', "not a string"),
    ('["A"]', "expected a JSON object"),
    ('{"1": "A",', "invalid JSON"),
    ("", "empty file"),
])
def test_bad_titles_file(tmp_path, content, fragment):
    path = tmp_path / "id2name4Rec.json"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        read_titles(path)


def test_empty_title_is_an_error_naming_the_item(tmp_path):
    folder = write_authors(tmp_path / "E", titles={**{k: v for k, v in enumerate("ABCDEF", 1)}, 3: "  "})
    with pytest.raises(DataError) as exc:
        load_authors_dir(folder)
    assert "item 3 has an empty title" in str(exc.value) and exc.value.field == "title"
    assert "on_empty_title=drop" in str(exc.value)


def test_empty_title_drop_policy_is_reported(tmp_path):
    folder = write_authors(tmp_path / "E", titles={**{k: v for k, v in enumerate("ABCDEF", 1)}, 3: ""},
                           train=[("a", [1, 2, 3], 1), ("b", [3, 4], 2), ("c", [3, 3, 4], 3), ("d", [1, 2], 4)],
                           test=[("e", [3, 1, 2], 5)])
    ds = load_authors_dir(folder, on_empty_title="drop", valid_fraction=0)
    assert 3 not in ds.catalogue
    assert ds.train == [Example("d", (1,), 2, 4)]  # target 3 dropped; [3] and [3, 3] histories become empty
    assert ds.test == [Example("e", (1,), 2, 5)]
    assert ds.info["dropped_rows"] == 3 and ds.info["dropped_history_mentions"] == 4
    assert ds.info["dropped_empty_title_items"] == [3]


def test_write_then_read_round_trip(tmp_path, authors_dir):
    ds = load_authors_dir(authors_dir)
    out = write_authors_dir(tmp_path / "copy", ds.catalogue, {"train": ds.train, "valid": ds.valid, "test": ds.test})
    again = load_authors_dir(out)
    assert (again.train, again.valid, again.test) == (ds.train, ds.valid, ds.test)
    assert again.catalogue.titles == ds.catalogue.titles
    assert json.loads((out / "id2name4Rec.json").read_text())["4"] == "Red Pen"


def test_atomic_write_leaves_nothing_on_failure(tmp_path, authors_dir, monkeypatch):
    import bearrec.data.authors as authors

    ds = load_authors_dir(authors_dir)

    def boom(path, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(authors, "write_examples", boom)
    with pytest.raises(RuntimeError):
        write_authors_dir(tmp_path / "out", ds.catalogue, {"train": ds.train})
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_statistics_count_the_targets_trained_on_as_targets(tmp_path):
    # the training targets (each row's last id) are 3, 5, 1, 2, 4, 2, 3, 2, 5: never 6
    train = [("u1", [1, 2, 3], 100), ("u2", [2, 3, 5], 300), ("u3", [5, 6, 1], 200), ("u4", [3, 5, 6, 2], 500),
             ("u1", [2, 3, 4], 400), ("u5", [6, 1, 2], 250), ("u6", [1, 5, 3], 600), ("u7", [4, 4, 2], 50),
             ("u8", [2, 6, 5], 350)]
    valid = [("v1", [1, 2, 5], 900), ("v2", [3, 1, 2], 910), ("v3", [2, 5, 6], 920), ("v4", [1, 2, 4], 930)]
    test = [("w1", [3, 4, 6], 700), ("w2", [5, 2, 1], 800), ("w3", [1, 3, 6], 810)]
    ds = load_authors_dir(write_authors(tmp_path / "S", train=train, valid=valid, test=test))
    stats = ds.statistics()
    assert stats["valid_targets_seen_in_train"] == 0.75  # 5, 2, 4 trained on as targets; 6 is not
    assert stats["test_targets_seen_in_train"] == round(1 / 3, 4)  # only 1 of 6, 1, 6
