"""`bearrec run` end to end on a tiny model: report, skip of finished steps, another config refused."""

import json

from bearrec.cli import main
from tests.conftest import write_authors
from tests.integration.test_training import TINY


def test_run_end_to_end_then_skips_finished_steps(tmp_path, capsys, monkeypatch):
    data = write_authors(tmp_path / "Shop")
    out = tmp_path / "run"
    argv = ["run", f"data.name={data}", "data.valid_fraction=0.25", f"output_dir={out}", *TINY, "train.epochs=2",
            "loss.name=bear", "loss.bear.num_beams=2", "analysis.pruning_users=2", "analysis.ks=[1,3]", "decode.ks=[1,3]"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "NDCG@3" in printed and "report.md" in printed
    state = json.loads((out / "run.json").read_text())
    assert state["done"] == ["pruning", "train"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_users"] == 2 and metrics["selection"]["best"]["epoch"] in (1, 2)
    assert metrics["pruning"]["num_users"] == 2 and set(metrics["pruning"]) >= {"PR@1", "PR@3"}
    assert metrics["training"]["num_train_examples"] == 7  # 9 rows, 2 carved for validation and metrics["training"]["seconds_per_epoch"] > 0
    report = (out / "report.md").read_text()
    assert "## Test (2 users" in report and "## Validation (epoch chosen:" in report and "## Pruning" in report
    assert "Rule `later_within_se`: epoch" in report and "validate on more users" in report
    last = metrics["test_last_epoch"]
    assert last["epoch"] == 2 and (last["item"] == metrics["test"]["item"]) == (metrics["selection"]["best"]["epoch"] == 2)
    assert (out / "valid_curve.png").exists() and (out / "pruning-test" / "pruning.png").exists()

    import bearrec.training as training

    def fail(*a, **k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(training, "train", fail)
    assert main(argv) == 0  # everything done: only the report is rewritten
    capsys.readouterr()
    assert main([*argv, "loss.bear.lam=0.9"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err


def test_run_resumes_a_crashed_training(tmp_path, monkeypatch):
    """Checkpoints without a finished train step: the driver asks the trainer to resume."""
    import pytest

    import bearrec.training as training
    from bearrec.config import load_config
    from bearrec.driver import run

    data = write_authors(tmp_path / "Shop")
    cfg = load_config(None, [f"data.name={data}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}",
                             *TINY, "train.epochs=2", "analysis.pruning_users=0"])
    calls = []

    class Stop(Exception):
        pass

    def spy(cfg, resume=False):
        calls.append(resume)
        raise Stop

    monkeypatch.setattr(training, "train", spy)
    with pytest.raises(Stop):
        run(cfg, progress=False)
    (tmp_path / "run" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(Stop):
        run(cfg, progress=False)
    assert calls == [False, True]
    assert not (tmp_path / "run" / "run.json").exists()  # the train step was never marked done
