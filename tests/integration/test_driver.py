"""`bearrec run` end to end on a tiny model: report, skip of finished steps, another config refused."""

import json

import pytest
import yaml

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
    chose_last = metrics["selection"]["best"]["epoch"] == 2
    assert last["epoch"] == 2 and (out / "eval-test-last").exists() != chose_last
    assert (last["item"] == metrics["test"]["item"]) or not chose_last
    assert (out / "valid_curve.png").exists() and (out / "pruning-test" / "pruning.png").exists()
    # the default reference: popularity on the same 2 test users, in the report and the printed table
    assert metrics["references"]["rows"]["popularity"]["users"] == 2 and "## Beside reference points" in report
    assert "most popular training targets" in printed and not (out / "ref-zero_shot").exists()

    # the pruning step read the test evaluation's beams (same users, same decoding): a rerun of it
    # decodes nothing and gives the same result; a pruned target is one the test lists lack
    import bearrec.training as training
    from bearrec.config import load_config
    from bearrec.driver import _pruning
    from bearrec.evaluation import Recommender

    def fail(*a, **k):
        raise AssertionError("a finished step ran again")

    first = json.loads((out / "pruning-test" / "pruning.json").read_text())
    real = Recommender.recommend

    def no_test_decode(self, *a, **k):  # the search without length normalisation may run (undecided users)
        if self.decode.length_penalty != 0:
            raise AssertionError("the test split was decoded again")
        return real(self, *a, **k)

    monkeypatch.setattr(Recommender, "recommend", no_test_decode)
    _pruning(load_config(out / "config.yaml"), out, progress=False)
    assert json.loads((out / "pruning-test" / "pruning.json").read_text()) == first
    # cut off after its first user, the step resumes from the records it appended
    import bearrec.analysis as analysis
    from bearrec.driver import PRUNING_PARTIAL

    real_record, analysed = analysis._pruning_record, []

    def killed_after_one(*a, **k):
        if analysed:
            raise KeyboardInterrupt("killed")
        analysed.append(a[2])
        return real_record(*a, **k)

    monkeypatch.setattr(analysis, "_pruning_record", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        _pruning(load_config(out / "config.yaml"), out, progress=False)
    kept = [json.loads(line) for line in (out / PRUNING_PARTIAL).read_text().splitlines()]
    assert [u["index"] for u in kept] == analysed and len(first["users"]) == 2
    resumed = []
    monkeypatch.setattr(analysis, "_pruning_record", lambda *a, **k: resumed.append(a[2]) or real_record(*a, **k))
    _pruning(load_config(out / "config.yaml"), out, progress=False)
    assert json.loads((out / "pruning-test" / "pruning.json").read_text()) == first
    assert analysed[0] not in resumed and resumed and not (out / PRUNING_PARTIAL).exists()
    ranks = {p["index"]: p["rank"] for p in map(json.loads, (out / "eval-test" / "predictions.jsonl").open())}
    assert [u["pruned"] for u in first["users"]] == [ranks[u["index"]] is None for u in first["users"]]

    monkeypatch.setattr(training, "train", fail)
    assert main(argv) == 0  # everything done: only the report is rewritten
    capsys.readouterr()
    assert main([*argv, "loss.bear.lam=0.9"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err


def test_zero_shot_reference_is_the_model_before_its_first_step(tmp_path):
    """With a learning rate too small to move a float32 weight, training leaves the initial weights
    as they were: the trained model's test predictions must then equal the zero-shot reference's
    exactly (same initialisation from the run's seed, same decoding, same users)."""
    from bearrec.driver import run

    cfg = _tiny_cfg(tmp_path, "train.learning_rate=1e-30", "train.epochs=1", "model.tiny.num_layers=2",
                    "analysis.references=[popularity,zero_shot]")
    out = run(cfg, progress=False)
    read = lambda d: [json.loads(line) for line in (out / d / "predictions.jsonl").read_text().splitlines()]
    trained, zero = read("eval-test"), read("ref-zero_shot")
    assert [p["index"] for p in zero] == [p["index"] for p in trained] == [0, 1]
    assert [(p["titles"], p["scores"]) for p in zero] == [(p["titles"], p["scores"]) for p in trained]
    rows = json.loads((out / "metrics.json").read_text())["references"]["rows"]
    assert rows["zero_shot"]["model_minus"]["mean"] == 0.0 and set(rows) == {"model", "popularity", "zero_shot"}


def _tiny_cfg(tmp_path, *extra):
    from bearrec.config import load_config

    data = write_authors(tmp_path / "Shop") if not (tmp_path / "Shop").exists() else tmp_path / "Shop"
    return load_config(None, [f"data.name={data}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}",
                              *TINY, "train.epochs=2", "analysis.pruning_users=0", *extra])


class Killed(BaseException):
    """Stands in for kill -9 at a chosen moment (BaseException: nothing in bearrec catches it)."""


def _kill_at_checkpoint(monkeypatch, step: int, partial: bool = False):
    """Abort right after checkpoint-`step` is saved, or (partial) while it is being saved: its
    trainer_state.json, which Trainer writes last, is left cut off."""
    import bearrec.training as training

    original = training.BearTrainer._save_checkpoint

    def save(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == step:
            monkeypatch.setattr(training.BearTrainer, "_save_checkpoint", original)
            if partial:
                state = self.args.output_dir + f"/checkpoint-{step}/trainer_state.json"
                with open(state, "r+") as fh:
                    fh.truncate(20)
            raise Killed

    monkeypatch.setattr(training.BearTrainer, "_save_checkpoint", save)


def test_a_run_killed_after_a_checkpoint_resumes_from_it(tmp_path, monkeypatch):
    from bearrec.driver import run

    cfg = _tiny_cfg(tmp_path)
    _kill_at_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        run(cfg, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["done"] == []  # recorded before training
    run(cfg, progress=False)
    timing = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert timing["resumed"] and timing["epochs_this_process"] == 1
    assert [e["epoch"] for e in json.loads((tmp_path / "run" / "selection.json").read_text())["epochs"]] == [1, 2]


def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_previous_one(tmp_path, monkeypatch):
    from bearrec.driver import run
    from bearrec.callbacks import last_complete_checkpoint

    cfg = _tiny_cfg(tmp_path)
    _kill_at_checkpoint(monkeypatch, 4, partial=True)
    with pytest.raises(Killed):
        run(cfg, progress=False)
    assert last_complete_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-4").exists()  # the cut-off one is removed
    run(cfg, progress=False)  # before: "Can't find a valid checkpoint" on every retry
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["epochs_this_process"] == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["done"] == ["train"]


def test_another_config_never_resumes_a_killed_run(tmp_path, monkeypatch, capsys):
    """bear killed after its first checkpoint, then sft into the same directory: refused (it used to
    resume the bear checkpoint under the sft loss); --force starts over as sft."""
    cfg = _tiny_cfg(tmp_path, "loss.name=bear", "loss.bear.num_beams=2")
    _kill_at_checkpoint(monkeypatch, 2)
    from bearrec.driver import run

    with pytest.raises(Killed):
        run(cfg, progress=False)
    bear_hash = json.loads((tmp_path / "run" / "run.json").read_text())["config_hash"]
    (tmp_path / "run" / "notes.txt").write_text("mine")
    argv = ["run", f"data.name={tmp_path / 'Shop'}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}",
            *TINY, "train.epochs=2", "analysis.pruning_users=0", "loss.name=sft"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a run of another config" in err and bear_hash in err and "--force" in err
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"]["name"] == "sft"
    assert not json.loads((tmp_path / "run" / "train_metrics.json").read_text())["resumed"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # --force deletes only what bearrec wrote


def test_train_without_resume_into_a_finished_run_is_refused(tmp_path, capsys):
    argv = ["train", f"data.name={write_authors(tmp_path / 'Shop')}", "data.valid_fraction=0.25",
            f"output_dir={tmp_path / 'run'}", *TINY, "train.epochs=1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a run of this config; --resume" in capsys.readouterr().err
    (tmp_path / "run" / "eval-valid-epoch-7").mkdir()  # a stale record must not survive a fresh start
    assert main([*argv, "--force"]) == 0
    assert not (tmp_path / "run" / "eval-valid-epoch-7").exists()
    assert [e["epoch"] for e in json.loads((tmp_path / "run" / "selection.json").read_text())["epochs"]] == [1]


def test_a_locked_run_directory_is_refused_and_a_legacy_one_checked(tmp_path, capsys):
    from bearrec.config import save_config
    from bearrec.rundir import claim

    cfg = _tiny_cfg(tmp_path)
    argv = ["run", f"data.name={tmp_path / 'Shop'}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}",
            *TINY, "train.epochs=2", "analysis.pruning_users=0"]
    with claim(tmp_path / "other", cfg):
        import subprocess
        import sys

        # another process (the lock is per process: this one may re-enter its own claim)
        out = subprocess.run([sys.executable, "-m", "bearrec", *argv, f"output_dir={tmp_path / 'other'}"],
                             capture_output=True, text=True)
    assert out.returncode == 2 and "another bearrec process is working in it" in out.stderr
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_config(_tiny_cfg(tmp_path, "loss.name=msl"), legacy)  # a directory written before run.json existed
    assert main([*argv, f"output_dir={legacy}"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err


def test_a_crafted_checkpoint_file_is_refused_on_resume(tmp_path, monkeypatch, capsys):
    """A checkpoint file that would run code when unpickled: one line, nothing run, whatever
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says."""
    import torch

    from tests.unit.test_safe_loading import _Payload

    cfg = _tiny_cfg(tmp_path)
    _kill_at_checkpoint(monkeypatch, 2)
    from bearrec.driver import run

    with pytest.raises(Killed):
        run(cfg, progress=False)
    marker = tmp_path / "ran"
    torch.save({"state": _Payload(marker)}, tmp_path / "run" / "checkpoints" / "checkpoint-2" / "rng_state.pth")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    argv = ["run", f"data.name={tmp_path / 'Shop'}", "data.valid_fraction=0.25", f"output_dir={tmp_path / 'run'}",
            *TINY, "train.epochs=2", "analysis.pruning_users=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and "checkpoint-2: refused a file" in err and "Traceback" not in err


def test_a_run_decodes_its_test_users_with_the_other_softmax_too(tmp_path, capsys):
    """analysis.other_softmax: beside eval-test/ (its own softmax, unchanged), eval-test-vocab-softmax/
    holds what `bearrec evaluate --no-constrained-softmax` writes for the same model and users; it is
    not part of the experiment's identity (a finished run resumes with it); a preset that fixes the
    softmax refuses it before training."""
    from bearrec.driver import run
    from bearrec.errors import ConfigError
    from bearrec.rundir import config_hash

    cfg = _tiny_cfg(tmp_path, "train.epochs=1", "analysis.other_softmax=true")
    assert config_hash(cfg) == config_hash(_tiny_cfg(tmp_path, "train.epochs=1"))
    out = run(cfg, progress=False)
    read = lambda d: [json.loads(line) for line in (d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert main(["evaluate", "--model", str(out), "--split", "test", "--no-constrained-softmax",
                 "--out", str(tmp_path / "vocab")]) == 0
    both, alone = read(out / "eval-test-vocab-softmax"), read(tmp_path / "vocab")
    strip = lambda preds: [{k: v for k, v in p.items() if k != "scores"} for p in preds]  # noqa: E731
    assert strip(both) == strip(alone) and len(both) == 2
    assert [p["scores"] for p in both] == [pytest.approx(p["scores"], abs=1e-5) for p in alone]
    metrics = json.loads((out / "eval-test-vocab-softmax" / "metrics.json").read_text())
    assert metrics["constrained_softmax"] is False and metrics["item"] == json.loads(
        (tmp_path / "vocab" / "metrics.json").read_text())["item"]
    assert json.loads((out / "eval-test" / "metrics.json").read_text())["constrained_softmax"] is True
    assert not list(out.glob("*.partial.jsonl"))
    run(_tiny_cfg(tmp_path, "train.epochs=1"), progress=False)  # the same experiment: resumes, nothing refused
    igd = _tiny_cfg(tmp_path, "analysis.other_softmax=true", "decode.preset=igd", "decode.igd_alpha=0.2",
                    "decode.constrained_softmax=false", "decode.length_penalty=0", f"output_dir={tmp_path / 'igd'}")
    with pytest.raises(ConfigError, match="decode.preset igd fixes the softmax"):
        run(igd, progress=False)
    assert not (tmp_path / "igd").exists()
