"""Run directory identity without training: hashes, legacy folders, --force, checkpoints."""

import json

import pytest
import yaml

from bearrec.config import Config, identity, to_dict
from bearrec.rundir import RunDirectoryError, claim, clear_results, config_hash, mark
from bearrec.callbacks import last_complete_checkpoint


def test_the_hash_ignores_what_measures_nothing_and_resolves_auto():
    a, b = Config(), Config()
    b.decode.batch_size, b.train.logging_steps, b.prompt.max_title_tokens, b.output_dir = 1, 99, 7, "elsewhere"
    assert config_hash(a) == config_hash(b)
    b.loss.bear.short_sets = "min_valid"  # what auto means for bear/reference
    assert config_hash(a) == config_hash(b)
    b.loss.bear.short_sets = "trivial"
    assert config_hash(a) != config_hash(b)


def test_a_legacy_folder_is_judged_by_what_it_ran(tmp_path):
    """A config.yaml without loss.bear.short_sets was trained with the old (trivial) reading: not
    this config, and the refusal says what differs."""
    old = to_dict(Config())
    del old["loss"]["bear"]["short_sets"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(RunDirectoryError, match="loss.bear.short_sets 'trivial' -> 'min_valid'"):
        with claim(tmp_path / "run", Config()):
            pass
    old["loss"]["bear"]["short_sets"] = "min_valid"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    with claim(tmp_path / "run", Config()) as state:  # the same run: adopted
        assert state["config_hash"] == config_hash(Config())


def test_a_run_hashed_by_an_older_bearrec_keeps_its_finished_steps(tmp_path):
    """run.json's hash was computed before a setting existed (decode.preset here): its config.yaml,
    read today, is this config, so the run is adopted with its finished steps and the hash
    rewritten; a config.yaml that differs is still refused."""
    old = to_dict(Config())
    del old["decode"]["preset"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "run.json").write_text(json.dumps({"config_hash": "0123456789ab", "done": ["pruning", "train"]}))
    with claim(run, Config()) as state:
        assert state == {"config_hash": config_hash(Config()), "done": ["pruning", "train"]}
    assert json.loads((run / "run.json").read_text())["config_hash"] == config_hash(Config())
    other = Config()
    other.loss.bear.lam = 0.5
    (run / "run.json").write_text(json.dumps({"config_hash": "0123456789ab", "done": ["train"]}))
    with pytest.raises(RunDirectoryError, match="holds a run of another config"):
        with claim(run, other):
            pass


def test_force_recovers_a_corrupt_run_record(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match="not valid JSON"):
        with claim(tmp_path / "run", Config()):
            pass
    with claim(tmp_path / "run", Config(), force=True) as state:
        assert state == {"config_hash": config_hash(Config()), "done": []}


def test_clear_results_keeps_identity_and_forgets_finished_steps(tmp_path):
    run = tmp_path / "run"
    with claim(run, Config()):
        mark(run, "train")
        mark(run, "pruning")
        for name in ("model", "eval-test", "pruning-test", "pruning-valid", ".model.abc"):
            (run / name).mkdir()
        for name in ("metrics.json", "report.md", "reference_logps.pt", "config.yaml", "notes.txt"):
            (run / name).write_text("x")
        clear_results(run)
    assert sorted(p.name for p in run.iterdir()) == [".bearrec.lock", "config.yaml", "notes.txt",
                                                    "reference_logps.pt", "run.json"]
    assert json.loads((run / "run.json").read_text())["done"] == []


def test_a_checkpoint_is_complete_once_trainer_state_is_written_whatever_the_weights(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, files in ((2, {"trainer_state.json": "{}", "pytorch_model_fsdp_0": None}),
                        (4, {"trainer_state.json": '{"cut'}), (6, {"model.safetensors": "x"})):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        for name, text in files.items():
            path = ckpts / f"checkpoint-{step}" / name
            path.mkdir() if text is None else path.write_text(text)
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-2"  # FSDP shards, no safetensors: complete
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]  # only the newer, cut-off ones go


def test_settings_a_method_does_not_read_are_not_part_of_its_identity():
    a, b = Config(), Config()
    a.loss.name = b.loss.name = "msl"
    b.loss.bear.lam, b.loss.bear.short_sets, b.loss.pref.beta = 9.0, "trivial", 3.0
    assert config_hash(a) == config_hash(b)
    b.loss.tau = 2.0  # msl reads tau
    assert config_hash(a) != config_hash(b)


@pytest.mark.parametrize("name", ["sft", "msl", "bear", "beam_sim", "dpo", "sdpo", "sdpo_bear", "sasrec"])
def test_the_baselines_sections_leave_the_other_methods_hashes_alone(name):
    """A config.yaml written before loss.cft / d2lr / igd existed is the same experiment today, and
    their settings are not part of another method's identity."""
    cfg = Config()
    cfg.loss.name = name
    before = to_dict(cfg)
    for section in ("cft", "d2lr", "igd"):
        del before["loss"][section]
    assert identity(before) == identity(to_dict(cfg))
    changed = Config()
    changed.loss.name = name
    changed.loss.cft.alpha, changed.loss.d2lr.beta, changed.loss.igd.beta = 0.5, 0.3, 0.9
    assert config_hash(changed) == config_hash(cfg)


def test_a_baseline_reads_only_its_own_section():
    a, b = Config(), Config()
    a.loss.name = b.loss.name = "cft"
    b.loss.bear.lam, b.loss.tau, b.loss.igd.beta = 9.0, 2.0, 0.9
    assert config_hash(a) == config_hash(b)
    b.loss.cft.alpha = 0.025
    assert config_hash(a) != config_hash(b)
