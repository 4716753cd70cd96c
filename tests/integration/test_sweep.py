"""`bearrec sweep` on a tiny model: runs the grid, chooses on validation, plots, resumes."""

import json

import pytest

from bearrec.cli import main
from bearrec.errors import ConfigError
from bearrec.sweep import combinations, parse_grid
from tests.conftest import write_authors
from tests.integration.test_training import TINY


def test_grid_parsing():
    grid = parse_grid(["bear.lam=0.1,0.5", "loss.bear.xi=1", "train.epochs=1,2"])
    assert grid == {"loss.bear.lam": ["0.1", "0.5"], "loss.bear.xi": ["1"], "train.epochs": ["1", "2"]}
    assert len(combinations(grid)) == 4 and combinations(grid)[1] == {
        "loss.bear.lam": "0.1", "loss.bear.xi": "1", "train.epochs": "2"}
    with pytest.raises(ConfigError):
        parse_grid(["bear.lam"])


def test_sweep_end_to_end(tmp_path, capsys, monkeypatch):
    data = write_authors(tmp_path / "Shop")
    argv = ["sweep", "--grid", "bear.lam=0.1,2", f"data.name={data}", "data.valid_fraction=0.25",
            f"output_dir={tmp_path / 'sw'}", *TINY, "train.epochs=1", "analysis.pruning_users=0",
            "loss.bear.num_beams=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "chosen on validation" in out
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["params"] for r in result["runs"]] == [{"loss.bear.lam": "0.1"}, {"loss.bear.lam": "2"}]
    assert result["chosen_on_validation"]["valid_ndcg"] == max(r["valid_ndcg"] for r in result["runs"])
    assert (tmp_path / "sw" / "lam=2" / "report.md").exists() and (tmp_path / "sw" / "sweep-lam.png").exists()
    import yaml

    assert yaml.safe_load((tmp_path / "sw" / "lam=2" / "config.yaml").read_text())["loss"]["bear"]["lam"] == 2.0

    import bearrec.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-trained")))
    assert main(argv) == 0  # finished runs are skipped


def test_bad_grid_value_fails_before_training(tmp_path, capsys):
    data = write_authors(tmp_path / "Shop")
    argv = ["sweep", "--grid", "bear.xi=1,0", f"data.name={data}", f"output_dir={tmp_path / 'sw'}", *TINY]
    assert main(argv) == 2
    assert "xi must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()
