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
    assert list(parse_grid(["cft.alpha=0.1", "d2lr.beta=0.1", "igd.beta=0.1", "pref.beta=1", "tau=1"])) == [
        "loss.cft.alpha", "loss.d2lr.beta", "loss.igd.beta", "loss.pref.beta", "loss.tau"]


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


def test_parallel_sweep_averages_seeds(tmp_path, capsys):
    """--jobs 2 runs child processes; a seed key is repetition: settings hold the seed means and the
    choice is made on them; a categorical parameter (loss name) still gets its plot."""
    data = write_authors(tmp_path / "Shop")
    root = tmp_path / "sw"
    argv = ["sweep", "--grid", "name=sft,msl", "--grid", "seed=0,1", "--jobs", "2", f"data.name={data}",
            "data.valid_fraction=0.25", f"output_dir={root}", *TINY, "train.epochs=1", "analysis.pruning_users=0"]
    assert main(argv) == 0
    result = json.loads((root / "sweep.json").read_text())
    assert len(result["runs"]) == 4 and all((root / r["run"].rsplit("/", 1)[-1] / "run.log").exists()
                                            for r in result["runs"])
    settings = {s["params"]["loss.name"]: s for s in result["settings"]}
    assert set(settings) == {"sft", "msl"} and all(s["seeds"] == 2 for s in settings.values())
    for name, s in settings.items():
        valids = [r["valid_ndcg"] for r in result["runs"] if r["params"]["loss.name"] == name]
        assert s["valid_ndcg"] == pytest.approx(sum(valids) / 2)
    assert result["chosen_on_validation"]["valid_ndcg"] == max(s["valid_ndcg"] for s in settings.values())
    assert (root / "sweep-name.png").exists() and not (root / "sweep-seed.png").exists()
    assert "mean of 2 seeds" in capsys.readouterr().out


def test_failed_child_run_is_reported(tmp_path, capsys):
    data = write_authors(tmp_path / "Shop")
    root = tmp_path / "sw"
    (root / "seed=1").mkdir(parents=True)
    (root / "seed=1" / "run.json").write_text('{"config_hash": "another", "done": []}')  # refused by bearrec run
    argv = ["sweep", "--grid", "seed=0,1", "--jobs", "2", f"data.name={data}", "data.valid_fraction=0.25",
            f"output_dir={root}", *TINY, "train.epochs=1", "analysis.pruning_users=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "seed=1" in err
    assert "another config" in (root / "seed=1" / "run.log").read_text()
    assert (root / "seed=0" / "metrics.json").exists()  # the other run finished


@pytest.mark.parametrize("given, jobs, expected", [(None, 2, "cpu/2"), ("1", 2, "1"), ("3", 1, "3")])
def test_child_runs_get_the_threads_the_user_set_or_a_share_of_the_cpus(tmp_path, monkeypatch, given, jobs, expected):
    import os
    import subprocess

    from bearrec import sweep

    seen = []

    class Done:
        returncode = 0

        def __init__(self, cmd, env, **kwargs):
            seen.append(env["OMP_NUM_THREADS"])

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Done)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    sweep.run_parallel([["run"], ["run"]], [tmp_path / "a", tmp_path / "b"], jobs)
    assert seen == [str(8 // jobs) if expected == "cpu/2" else expected] * 2
