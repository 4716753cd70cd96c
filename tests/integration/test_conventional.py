"""SASRec through cornac (`loss.name: sasrec`): sessions, the ranking it returns, a `bearrec run`
on exactly the run's test users, and a compare row."""

import json
import sys

import numpy as np
import pytest

from bearrec.cli import main
from bearrec.sections import SasrecConfig
from bearrec.conventional import fit_sasrec, sessions_of, top_items
from bearrec.data.catalogue import Example
from tests.conftest import write_authors
from tests.integration.test_training import TINY

pytest.importorskip("cornac")  # requirements-conventional.txt (make setup installs it)


def test_each_training_row_is_one_session_in_order():
    rows = [Example("u1", (3, 1), 2, 10), Example("u2", (2,), 3, 20)]
    assert sessions_of(rows) == [("0", "3", 0), ("0", "1", 1), ("0", "2", 2), ("1", "2", 0), ("1", "3", 1)]


def test_top_items_are_the_highest_scores_among_seen_items_only():
    rows = [Example("u", (1, 2, 3), 4, 0), Example("v", (2, 3, 4), 5, 0), Example("w", (1, 3), 5, 0)]
    model = fit_sasrec(rows, SasrecConfig(embedding_dim=8, epochs=2, batch_size=4, n_sample=0), seed=0)
    items, scores = top_items(model, (1, 2, 99), k=3)  # 99: never seen, dropped from the input
    known = [model.train_set.iid_map[str(i)] for i in (1, 2)]
    all_scores = np.asarray(model.score(None, known), dtype=float)[:5]
    ids = [int(i) for i in model.train_set.item_ids]
    expected = sorted(range(5), key=lambda j: (-all_scores[j], j))[:3]  # a slow oracle of the same order
    assert items == [ids[j] for j in expected] and scores == [float(all_scores[j]) for j in expected]
    assert set(items) <= {1, 2, 3, 4, 5} and len(set(items)) == 3


def test_sasrec_run_on_the_same_test_users_and_a_compare_row(tmp_path, capsys):
    data = write_authors(tmp_path / "Shop")
    out = tmp_path / "sasrec"
    argv = ["run", f"data.name={data}", "data.valid_fraction=0.25", f"output_dir={out}", *TINY, "loss.name=sasrec",
            "loss.sasrec.epochs=2", "loss.sasrec.embedding_dim=8", "loss.sasrec.n_sample=0", "decode.num_beams=5"]
    assert main(argv) == 0
    preds = [json.loads(line) for line in (out / "eval-test" / "predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in preds] == [0, 1] and all(len(p["items"]) == 5 for p in preds)  # decode.num_beams
    for p in preds:  # the rank is where the target sits in the list it returned
        ranked = [i[0] for i in p["items"]]
        assert p["rank"] == (ranked.index(p["target"]) if p["target"] in ranked else None)
    assert json.loads((out / "run.json").read_text())["done"] == ["train"]
    assert "`sasrec` (cornac; d=8" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["compare", str(out)]) == 0
    assert "\n| sasrec (1 seed) |" in capsys.readouterr().out


def test_without_cornac_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cornac", None)  # import cornac raises ImportError
    data = write_authors(tmp_path / "Shop")
    argv = ["run", f"data.name={data}", f"output_dir={tmp_path / 'r'}", *TINY, "loss.name=sasrec"]
    assert main(argv) == 2
    assert "pip install -r requirements-conventional.txt" in capsys.readouterr().err


def test_a_conventional_run_refuses_the_other_softmax(tmp_path, capsys):
    data = write_authors(tmp_path / "Shop")
    argv = ["run", f"data.name={data}", f"output_dir={tmp_path / 'r'}", *TINY, "loss.name=sasrec",
            "analysis.other_softmax=true"]
    assert main(argv) == 2
    assert "analysis.other_softmax: loss.name=sasrec ranks items without a softmax" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
