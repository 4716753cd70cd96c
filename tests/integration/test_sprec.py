"""SPRec (`bearrec.methods.sprec`): self-play iterations of an SFT and a DPO epoch from an SFT start,
each iteration's negatives decoded by its starting model, the iteration chosen on validation,
resumable stage by stage."""

import json
import math

import pytest
import torch

from bearrec.cli import main
from bearrec.config import load_config
from bearrec.errors import ConfigError
from bearrec.methods.sprec import row_sample, stage_config
from bearrec.training import train
from tests.conftest import write_authors
from tests.integration.test_training import TINY, _first_losses

TRAIN = [("u1", [1, 2, 3], 100), ("u2", [2, 3, 5], 300), ("u3", [5, 6, 1], 200), ("u4", [3, 5, 6, 2], 500),
         ("u1", [2, 3, 4], 400), ("u5", [6, 1, 2], 250), ("u6", [1, 5, 3], 600), ("u7", [4, 4, 6], 50),
         ("u8", [2, 6, 5], 350), ("u9", [1, 3, 5], 320), ("u10", [6, 2, 3], 330), ("u11", [5, 1, 6], 340)]
VALID = [("v1", [1, 2, 5], 900), ("v2", [3, 6, 2], 910), ("v3", [2, 5, 6], 920)]


def _data(tmp_path):
    return write_authors(tmp_path / "Shop", train=TRAIN, valid=VALID)


def _argv(data, out, *extra):
    return [f"data.name={data}", f"output_dir={out}", *TINY, *extra]


@pytest.fixture(scope="module")
def sprec_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sprec")
    data = _data(tmp)
    sft = train(load_config(None, _argv(data, tmp / "sft", "loss.name=sft", "train.epochs=2", "train.eval_test=false")))
    out = tmp / "sprec"
    argv = ["run", *_argv(data, out, "loss.name=sprec", f"model.name_or_path={sft / 'model'}",
                          "loss.sprec.iterations=2", "loss.sprec.rows_per_iteration=7", "train.learning_rate=1e-2",
                          "analysis.pruning_users=0", "analysis.other_softmax=true")]
    assert main(argv) == 0
    return data, sft, out, argv


def test_row_sample_is_seeded_per_iteration_and_takes_all_rows_when_short():
    a, b = row_sample(100, 10, seed=0, iteration=1), row_sample(100, 10, seed=0, iteration=2)
    assert a == sorted(a) and len(set(a)) == 10 and a != b
    assert a == row_sample(100, 10, seed=0, iteration=1) and a != row_sample(100, 10, seed=1, iteration=1)
    assert row_sample(5, 10, seed=0, iteration=1) == [0, 1, 2, 3, 4]


def test_stage_configs_are_one_epoch_sft_and_dpo_runs_of_the_parent(tmp_path):
    cfg = load_config(None, ["loss.name=sprec", "loss.sprec.beta=0.3", "train.epochs=7", "train.learning_rate=5e-5",
                             "model.name_or_path=/m"])
    sft = stage_config(cfg, "sft", "/start", tmp_path / "a")
    dpo = stage_config(cfg, "dpo", tmp_path / "a" / "model", tmp_path / "b")
    assert (sft.loss.name, dpo.loss.name, dpo.loss.pref.beta) == ("sft", "dpo", 0.3)
    assert (sft.train.epochs, sft.train.eval_test, sft.train.learning_rate) == (1, False, 5e-5)
    assert sft.model.name_or_path == "/start" and dpo.model.name_or_path == str(tmp_path / "a" / "model")
    assert dpo.output_dir == str(tmp_path / "b") and cfg.loss.name == "sprec"  # the parent is unchanged


def _greedy_items(model_dir, data, rows):
    """Constrained greedy (B = 1) item per row, one row at a time, with the model saved at `model_dir`."""
    from transformers import AutoModelForCausalLM

    from bearrec.config import PromptConfig
    from bearrec.data.authors import load_authors_dir
    from bearrec.data.encode import Encoder
    from bearrec.data.prompts import PromptTemplate
    from bearrec.decoding import beam_search
    from bearrec.modeling import load_tokenizer

    ds = load_authors_dir(data)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    out = []
    for i in rows:
        (ranked,) = beam_search(model, enc.trie, [enc.prompt_ids(ds.train[i].history)], 1, pad_token_id=tok.pad_token_id)
        out.append(enc.trie.items_at(ranked.nodes[0])[0])
    return out, ds


def test_each_iteration_decodes_its_negatives_with_its_starting_model(sprec_run):
    data, sft, out, _ = sprec_run
    for k, start in ((1, sft / "model"), (2, out / "iter-1" / "dpo" / "model")):
        record = json.loads((out / f"iter-{k}" / "negatives.json").read_text())
        assert record["start"] == str(start) and record["rows"] == row_sample(len(TRAIN), 7, 42, k)
        items, ds = _greedy_items(start, data, record["rows"])
        title = ds.catalogue.title
        assert [title(n) for n in record["negatives"]] == [title(n) for n in items]
        assert record["target_title_decoded"] == sum(title(n) == title(ds.train[i].target)
                                                     for n, i in zip(items, record["rows"]))


def test_each_iteration_trains_an_sft_then_a_dpo_epoch_on_its_rows(sprec_run):
    _, sft, out, _ = sprec_run
    for k in (1, 2):
        stages = {s: load_config(out / f"iter-{k}" / s / "config.yaml") for s in ("sft", "dpo")}
        assert (stages["sft"].loss.name, stages["dpo"].loss.name, stages["dpo"].loss.pref.beta) == ("sft", "dpo", 0.1)
        assert stages["dpo"].model.name_or_path == str(out / f"iter-{k}" / "sft" / "model")
        for s in ("sft", "dpo"):
            assert json.loads((out / f"iter-{k}" / s / "train_metrics.json").read_text())["num_train_examples"] == 7
        # DPO starts at its reference (the SFT stage's model): every margin is 0, the first loss log 2
        assert _first_losses(out / f"iter-{k}" / "dpo")[0] == pytest.approx(math.log(2), abs=1e-4)
        assert torch.load(out / f"iter-{k}" / "dpo" / "reference_logps.pt")["values"].shape == (7, 2)
        assert not (out / f"iter-{k}" / "sft" / "selection.json").exists()  # only the DPO stage validates
    assert stages["sft"].model.name_or_path == str(out / "iter-1" / "dpo" / "model")


def test_the_iteration_is_chosen_on_validation_and_exported(sprec_run):
    from bearrec.selection import choose_epoch, user_scores

    _, _, out, _ = sprec_run
    sel = json.loads((out / "selection.json").read_text())
    assert sel["unit"] == "iteration" and [e["iteration"] for e in sel["epochs"]] == [1, 2]
    scores = {k: user_scores([json.loads(x) for x in (out / f"iter-{k}" / "dpo" / "eval-valid-epoch-1" /
                                                      "predictions.jsonl").read_text().splitlines()], 3)
              for k in (1, 2)}
    chosen = choose_epoch(scores, "later_within_se")["epoch"]
    assert sel["best"]["epoch"] == chosen
    for name in ("model.safetensors", "config.json"):
        assert (out / "model" / name).read_bytes() == (out / f"iter-{chosen}" / "dpo" / "model" / name).read_bytes()
    test = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert test["selected"]["iteration"] == chosen and test["num_users"] == 2
    other = json.loads((out / "eval-test-vocab-softmax" / "metrics.json").read_text())  # analysis.other_softmax
    assert other["selected"] == test["selected"] and (other["constrained_softmax"], test["constrained_softmax"]) == (
        False, True) and not list(out.glob("*.partial.jsonl"))
    report = (out / "report.md").read_text()
    assert f"## Validation (iteration chosen: {chosen})" in report and "s per iteration of 2" in report
    assert "epoch" not in report.split("## Validation")[1].split("## Training")[0]
    assert "`sprec` (SPRec self-play: 2 iterations of 7 rows" in report


def test_a_stopped_run_resumes_at_its_first_unfinished_stage(sprec_run, capsys):
    _, _, out, argv = sprec_run
    kept = {p: p.stat().st_mtime_ns for p in (out / "iter-1").rglob("*") if p.is_file()}
    import shutil

    shutil.rmtree(out / "iter-2" / "dpo")  # stopped during iteration 2's DPO epoch
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**state, "done": []}))
    before = (out / "selection.json").read_text()
    assert main(argv) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in (out / "iter-1").rglob("*") if p.is_file()} == kept
    assert (out / "iter-2" / "dpo" / "model").is_dir()
    assert json.loads((out / "selection.json").read_text())["epochs"] == json.loads(before)["epochs"]


@pytest.mark.parametrize("override, message", [
    ("loss.sprec.iterations=0", "loss.sprec.iterations must be"),
    ("loss.sprec.rows_per_iteration=0", "loss.sprec.rows_per_iteration must be"),
    ("loss.sprec.beta=0", "loss.sprec.beta must be"),
    ("loss.sprec.rounds=2", "unknown key 'loss.sprec.rounds'")])
def test_bad_sprec_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["loss.name=sprec", override])


def test_sprec_needs_an_sft_start_and_validation_rows(tmp_path, capsys):
    data = _data(tmp_path)
    assert main(["train", *_argv(data, tmp_path / "a", "loss.name=sprec")]) != 0
    assert "loss.name=sprec starts from an SFT run" in capsys.readouterr().err
    plain = write_authors(tmp_path / "NoValid")
    assert main(["train", *_argv(plain, tmp_path / "b", "loss.name=sprec", "model.name_or_path=/somewhere",
                                 "data.valid_fraction=0")]) != 0
    assert "chooses its iteration on validation" in capsys.readouterr().err
