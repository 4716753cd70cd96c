import pytest
import yaml

from bearrec.config import Config, DataConfig, apply_override, load_config, save_config
from bearrec.errors import ConfigError


def test_defaults_without_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.prepare.split == [0.8, 0.1, 0.1]


def test_yaml_into_typed_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\ndata:\n  name: office\n  valid_fraction: 0\n  prepare: {k_core: 10}\n"
                    "model:\n  lora: {r: 4, target_modules: [q_proj]}\n")
    cfg = load_config(path)
    assert cfg.seed == 7 and cfg.data.name == "office"
    assert cfg.data.valid_fraction == 0.0 and isinstance(cfg.data.valid_fraction, float)  # int accepted for float
    assert cfg.data.prepare.k_core == 10 and cfg.data.prepare.max_history == 10
    assert cfg.model.lora.r == 4 and cfg.model.lora.target_modules == ["q_proj"]


@pytest.mark.parametrize("text, fragment", [
    ("colour: red\n", "unknown key 'colour'; valid keys here: seed, output_dir, data, prompt, model, decode, loss, train, analysis"),
    ("data:\n  nmae: office\n", "unknown key 'data.nmae'; valid keys here: name, data_dir"),
    ("data:\n  prepare: {kcore: 3}\n", "unknown key 'data.prepare.kcore'"),
    ("seed: '7'\n", "seed: expected int, got '7'"),
    ("seed: true\n", "seed: expected int, got True"),
    ("data:\n  on_empty_title: skip\n", "data.on_empty_title: 'skip' is not one of ['error', 'drop']"),
    ("model:\n  lora: {target_modules: q_proj}\n", "model.lora.target_modules: expected a list"),
    ("data: office\n", "data: expected a mapping of DataConfig fields"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("data: [\n", "invalid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["data.name=01", "data.prepare.k_core=3", "data.valid_fraction=0.2",
                             "model.lora.target_modules=[q_proj,k_proj]", "prompt.max_history_items=5",
                             "data.data_dir=null"])
    assert cfg.data.name == "01"  # strings stay verbatim
    assert cfg.data.prepare.k_core == 3 and cfg.data.valid_fraction == 0.2
    assert cfg.model.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.prompt.max_history_items == 5 and cfg.data.data_dir is None
    assert load_config(None, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4  # YAML 1.1 reads a str


def test_override_wins_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: office, prepare: {k_core: 10}}\n")
    cfg = load_config(path, ["data.prepare.k_core=2"])
    assert cfg.data.name == "office" and cfg.data.prepare.k_core == 2


@pytest.mark.parametrize("override, fragment", [
    ("data.prepare.k_core=three", "data.prepare.k_core: expected int, got 'three'"),
    ("data.nope=1", "unknown key 'data.nope'"),
    ("seed.x=1", "'seed' is not a section"),
    ("seed", "expected KEY=VALUE"),
    ("model.dtype=float64", "'float64' is not one of"),
    ("loss.bear.xi=nan", "loss.bear.xi: expected a finite number, got nan"),
    ("loss.bear.lam=.nan", "loss.bear.lam: expected a finite number"),
    ("train.learning_rate=inf", "train.learning_rate: expected a finite number"),
    ("decode.length_penalty=-.inf", "decode.length_penalty: expected a finite number"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError) as exc:
        apply_override({}, override)
    assert fragment in str(exc.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["data.name=book", "data.on_empty_title=drop", "model.lora.enabled=false"])
    path = save_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    assert yaml.safe_load(path.read_text())["data"]["on_empty_title"] == "drop"
    assert load_config(path) == cfg
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary file left behind


def test_data_config_alone():
    from bearrec.config import from_dict

    assert from_dict({"name": "office"}, DataConfig).name == "office"


def test_shipped_configs_load():
    from pathlib import Path

    from bearrec.methods import validate

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        validate(load_config(path).loss)  # loss settings checked as `bearrec run` does before training


def test_non_finite_numbers_in_a_file_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  bear: {xi: .nan}\n")
    with pytest.raises(ConfigError, match="loss.bear.xi: expected a finite number"):
        load_config(path)


def test_cli_flags_are_made_from_the_declarations(capsys):
    """A flag's help shows the declared default (not a copy of it), its choices are the declared
    ones, and a bad value given by flag fails with the declared bound before anything loads."""
    from bearrec.cli import build_parser, main
    from bearrec.config import DecodeConfig

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(decode.batch_size; default: the config's value, else {DecodeConfig().batch_size})" in text
    assert "--decoding {hf,d3,igd}" in text and "--constrained-softmax, --no-constrained-softmax" in text
    args = parser.parse_args(["evaluate", "--model", "m", "--num-beams", "3", "--no-constrained-softmax"])
    from bearrec.flags import overrides_of

    assert overrides_of(args) == ["decode.num_beams=3", "decode.constrained_softmax=false"]
    assert main(["evaluate", "--model", "/nonexistent", "--num-beams", "0"]) == 2
    assert "decode.num_beams must be >= 1, got 0" in capsys.readouterr().err


def test_save_steps_is_a_positive_count_and_not_part_of_a_runs_identity():
    from bearrec.config import identity, to_dict

    with pytest.raises(ConfigError, match="train.save_steps must be >= 1, got 0"):
        load_config(None, ["train.save_steps=0"])
    a, b = load_config(None, []), load_config(None, ["train.save_steps=50"])
    assert b.train.save_steps == 50 and identity(to_dict(a)) == identity(to_dict(b))  # where it saves, not what


def test_a_run_excluding_the_history_must_skip_the_pruning_analysis():
    from bearrec.training import check_config

    cfg = load_config(None, ["decode.exclude_history=true", "model.lora.enabled=false"])
    with pytest.raises(ConfigError, match="analysis.pruning_users=0"):
        check_config(cfg)
    check_config(load_config(None, ["decode.exclude_history=true", "analysis.pruning_users=0",
                                    "model.lora.enabled=false"]))
