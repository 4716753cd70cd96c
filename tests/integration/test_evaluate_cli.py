"""`bearrec evaluate` and `bearrec recommend` on a tiny saved model and a hand-written dataset."""

import json

import pytest

from bearrec.cli import main
from bearrec.config import DecodeConfig, PromptConfig
from bearrec.data.authors import load_authors_dir
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.decoding import beam_search
from bearrec.metrics import summarize
from bearrec.modeling import load_tokenizer
from tests.conftest import TITLES, write_tiny_run



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("eval"), {"num_beams": 3, "batch_size": 2, "ks": [1, 3, 10]})


def test_evaluate_writes_predictions_and_metrics(run_dir, capsys):
    assert main(["evaluate", "--model", str(run_dir), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "NDCG@3" in printed and "NDCG@10" not in printed  # K above num_beams is skipped
    preds = [json.loads(line) for line in (run_dir / "eval-test" / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    ds = load_authors_dir(run_dir.parent / "Shop", valid_fraction=0.0)
    assert [p["user_id"] for p in preds] == [e.user_id for e in ds.test]
    # the same ranking as calling the decoder directly
    tok = load_tokenizer(run_dir / "model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    direct = beam_search(model, enc.trie, [enc.prompt_ids(e.history) for e in ds.test], 3,
                         pad_token_id=tok.pad_token_id)
    for pred, ranked, example in zip(preds, direct, ds.test):
        assert pred["items"] == [list(enc.trie.items_at(n)) for n in ranked.nodes]
        assert pred["scores"] == pytest.approx(ranked.scores, abs=1e-5)
        assert len(pred["titles"]) == 3 and pred["target"] == example.target
        rank = next((i for i, items in enumerate(pred["items"]) if example.target in items), None)
        assert pred["rank"] == rank
    assert metrics["item"] == summarize([p["rank"] for p in preds], [1, 3])
    assert metrics["title"] == summarize([p["title_rank"] for p in preds], [1, 3])
    assert metrics["num_users"] == 2 and metrics["split"] == "test"


def test_evaluate_limit_is_a_seeded_subset(run_dir, tmp_path):
    out = tmp_path / "lim"
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--limit", "1", "--out", str(out)]) == 0
    first = (out / "predictions.jsonl").read_text()
    assert len(first.splitlines()) == 1
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--limit", "1", "--out", str(out)]) == 0
    assert (out / "predictions.jsonl").read_text() == first


def test_recommend_checks_the_history_before_loading_the_model(run_dir, capsys, monkeypatch):
    import bearrec.modeling

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the history was checked")

    monkeypatch.setattr(bearrec.modeling, "load_model", no_model)
    for history, k in (("1,99", 2), ("1", 5), ("1,x", 2)):
        assert main(["recommend", "--model", str(run_dir), "--history", history, "--k", str(k)]) == 2
        assert "error:" in capsys.readouterr().err


def test_recommend_json_and_bad_input(run_dir, capsys):
    assert main(["recommend", "--model", str(run_dir), "--history", "1,2", "--k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [0, 1] and all(r["title"] in TITLES.values() for r in rows)
    assert rows[0]["score"] >= rows[1]["score"]
    for history, k, fragment in (("1,99", 2, "unknown item id 99"), (",", 2, "--history is empty"),
                                 ("1,x", 2, "comma-separated item ids"), ("1", 5, "exceeds num_beams 3"),
                                 ("1", 0, "--k must be >= 1"), ("1", -2, "--k must be >= 1")):
        assert main(["recommend", "--model", str(run_dir), "--history", history, "--k", str(k)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err


def test_evaluate_bad_data_fails_before_loading_the_model(run_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(run_dir), "--data", str(tmp_path / "none")]) == 2
    assert "not a dataset name" in capsys.readouterr().err


def test_decode_config_defaults_match_the_paper():
    d = DecodeConfig()
    assert (d.num_beams, d.constrained_softmax, d.length_penalty) == (10, True, 1.0)


def test_two_process_evaluation_equals_one(run_dir, tmp_path, capsys):
    """torchrun with 2 CPU processes (gloo): users split, gathered, same files as one process, for
    both softmaxes (--other-softmax: one prefill per batch for both searches)."""
    import os
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    args = ["-m", "bearrec", "evaluate", "--model", str(run_dir), "--split", "train", "--other-softmax"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(one)], check=True, env=env, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              *args, "--out", str(two)]
    done = subprocess.run(launch, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # one retry: a launcher failure is not ours; a real bug fails twice
        done = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[:3000]
    assert "decoded by 2 process(es)" in done.stdout
    # users are batched differently in two processes: scores may differ by float rounding (the
    # batch's common prompt prefix and the padding change the order of sums), rankings may not
    assert done.stdout.count("decoded by 2 process(es)") == 2 and not list(tmp_path.glob("*.partial.jsonl"))
    for folder in ("", "-vocab-softmax"):
        pair = [d.with_name(d.name + folder) for d in (one, two)]
        rows = [[json.loads(line) for line in (d / "predictions.jsonl").read_text().splitlines()] for d in pair]
        assert [{k: v for k, v in r.items() if k != "scores"} for r in rows[1]] == \
            [{k: v for k, v in r.items() if k != "scores"} for r in rows[0]]
        assert all(b["scores"] == pytest.approx(a["scores"], abs=1e-5) for a, b in zip(*rows))
        assert (pair[1] / "metrics.json").read_text() == (pair[0] / "metrics.json").read_text()
        assert json.loads((pair[0] / "metrics.json").read_text())["constrained_softmax"] is (folder == "")
    # the second folder is what a plain decode with the other softmax writes
    assert main(["evaluate", "--model", str(run_dir), "--split", "train", "--no-constrained-softmax",
                 "--out", str(tmp_path / "vocab")]) == 0
    plain = [json.loads(line) for line in (tmp_path / "vocab" / "predictions.jsonl").read_text().splitlines()]
    assert [r["titles"] for r in plain] == [r["titles"] for r in rows[0]]
    assert main(["evaluate", "--model", str(run_dir), "--split", "train", "--other-softmax", "--decoding", "igd",
                 "--igd-alpha", "0.2", "--out", str(tmp_path / "igd")]) == 2  # a preset fixing the softmax
    assert "--other-softmax: decode.preset igd fixes the softmax" in capsys.readouterr().err
    assert not (tmp_path / "igd").exists()


def test_analyze_pruning_cli(run_dir, tmp_path, capsys):
    argv = ["analyze", "pruning", "--model", str(run_dir), "--model", str(run_dir), "--split", "test",
            "--num-beams", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("PR@5") == 2 and "pruning.json" in printed
    # --out holds each run's result under its label and the plot
    result = json.loads((tmp_path / run_dir.name / "pruning.json").read_text())
    assert json.loads((tmp_path / f"{run_dir.name}#2" / "pruning.json").read_text())["users"] == result["users"]
    assert result["num_users"] == 2 and result["num_beams"] == 2 and len(result["users"]) == 2
    assert result["rank_cap"] == 10 and result["ghost_threshold"] is None
    assert (tmp_path / "pruning.png").read_bytes()[:4] == b"\x89PNG"
    # K comes from the config's analysis.ks
    assert main([*argv[:4], "--split", "test", "--num-beams", "2", "analysis.ks=[1,2]"]) == 0
    printed = capsys.readouterr().out
    assert "PR@1" in printed and "PR@2" in printed and "PR@5" not in printed
    assert json.loads((run_dir / "pruning-test" / "pruning.json").read_text())["rank_cap"] == 2
    assert main([*argv[:4], "--split", "test", "--num-beams", "2", "--exact-ranks"]) == 0
    exact = json.loads((run_dir / "pruning-test" / "pruning.json").read_text())
    assert exact["rank_cap"] is None
    assert [min(u["overall_rank"], 10) for u in exact["users"]] == [u["overall_rank"] for u in result["users"]]


def test_run_labels_tell_runs_apart():
    from bearrec.cli import run_labels

    assert run_labels(["runs/office/msl/seed=0", "runs/office/bear/seed=0"]) == ["msl/seed=0", "bear/seed=0"]
    assert run_labels(["runs/a", "runs/b"]) == ["a", "b"]
    assert run_labels(["runs/a", "runs/a"]) == ["a", "a#2"]
    assert run_labels(["smollm2-135m"]) == ["smollm2-135m"]


def test_d3_decoding_preset_and_ghost_threshold(run_dir, capsys):
    """--decoding d3 is length penalty 0 (sum of log-probs) and goes to its own folder; the scores
    are the direct decoder's with length_penalty=0; a contradicting --length-penalty is an error."""
    assert main(["evaluate", "--model", str(run_dir), "--decoding", "d3"]) == 0
    metrics = json.loads((run_dir / "eval-test-d3" / "metrics.json").read_text())
    assert metrics["length_penalty"] == 0.0
    preds = [json.loads(line) for line in (run_dir / "eval-test-d3" / "predictions.jsonl").read_text().splitlines()]
    tok = load_tokenizer(run_dir / "model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    ds = load_authors_dir(run_dir.parent / "Shop", valid_fraction=0.0)
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    direct = beam_search(model, enc.trie, [enc.prompt_ids(e.history) for e in ds.test], 3, length_penalty=0.0,
                         pad_token_id=tok.pad_token_id)
    assert [p["scores"] for p in preds] == [pytest.approx(r.scores, abs=1e-5) for r in direct]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run_dir), "--decoding", "d3", "--length-penalty", "1"]) == 2
    assert "decode.preset d3 means decode.length_penalty=0.0, not 1.0" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run_dir), "--ghost-threshold", "1.5"]) == 2
    assert "ghost_threshold must be in (0, 1]" in capsys.readouterr().err
    # other decode flags never overwrite the run's own eval-test: each names its folder
    before = (run_dir / "eval-test" / "metrics.json").read_text() if (run_dir / "eval-test").exists() else None
    assert main(["evaluate", "--model", str(run_dir), "--ghost-threshold", "0.99", "--num-beams", "2"]) == 0
    metrics = json.loads((run_dir / "eval-test-ghost0.99-b2" / "metrics.json").read_text())
    assert metrics["ghost_threshold"] == 0.99 and metrics["num_beams"] == 2
    after = (run_dir / "eval-test" / "metrics.json").read_text() if (run_dir / "eval-test").exists() else None
    assert before == after


def test_igd_decoding_preset_reads_the_runs_training_targets(run_dir, capsys):
    """--decoding igd --igd-alpha A: IGD's rule with weights counted from the run's training rows,
    full softmax, length penalty 0, into its own folder; the scores are the direct decoder's with
    those weights. Without --igd-alpha it is an error naming the setting."""
    from bearrec.evaluation import training_rows
    from bearrec.popularity import TargetCounts
    from transformers import AutoModelForCausalLM

    assert main(["evaluate", "--model", str(run_dir), "--decoding", "igd", "--igd-alpha", "0.3"]) == 0
    folder = run_dir / "eval-test-igd-a0.3"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["igd_alpha"], metrics["preset"], metrics["length_penalty"], metrics["constrained_softmax"]) == \
        (0.3, "igd", 0.0, False)
    preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    tok = load_tokenizer(run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    ds = load_authors_dir(run_dir.parent / "Shop", valid_fraction=0.0)
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "Shop"), ds.catalogue)
    weights = TargetCounts(enc.trie, [r.target for r in training_rows(ds, None)]).decoding_weights(0.3)
    assert float(weights.min()) < 1.0  # some token's gain differs from its siblings': the rule does something
    direct = beam_search(model, enc.trie, [enc.prompt_ids(e.history) for e in ds.test], 3, length_penalty=0.0,
                         constrained_softmax=False, token_weights=weights, pad_token_id=tok.pad_token_id)
    assert [p["scores"] for p in preds] == [pytest.approx(r.scores, abs=1e-5) for r in direct]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run_dir), "--decoding", "igd"]) == 2
    assert "decode.preset igd needs decode.igd_alpha" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run_dir), "--igd-alpha", "-0.1"]) == 2
    assert "decode.igd_alpha must be >= 0" in capsys.readouterr().err


def test_another_decoding_preset_resets_what_the_runs_preset_set(tmp_path, capsys):
    """A run decoded with IGD's rule (preset igd: alpha, no length normalisation): `--decoding hf`
    decodes it without IGD's weights and with HF's length penalty 1, `--decoding d3` with length
    penalty 0 and no weights; the run's own softmax (full, here) stays; a flag still wins."""
    run = write_tiny_run(tmp_path, {"num_beams": 3, "batch_size": 2, "preset": "igd", "igd_alpha": 0.3,
                                    "constrained_softmax": False, "length_penalty": 0.0})
    expected = {"hf": (None, 1.0, "hf"), "d3": (None, 0.0, "d3"), "igd": (0.3, 0.0, "igd")}
    for decoding, (alpha, lp, preset) in expected.items():
        assert main(["evaluate", "--model", str(run), "--decoding", decoding, "--out", str(tmp_path / decoding)]) == 0
        m = json.loads((tmp_path / decoding / "metrics.json").read_text())
        assert (m["igd_alpha"], m["length_penalty"], m["preset"], m["constrained_softmax"]) == (alpha, lp, preset, False)
    assert main(["evaluate", "--model", str(run), "--decoding", "hf", "--length-penalty", "0.5",
                 "--out", str(tmp_path / "flag")]) == 0
    assert json.loads((tmp_path / "flag" / "metrics.json").read_text())["length_penalty"] == 0.5
    hf = [json.loads(x)["scores"] for x in (tmp_path / "hf" / "predictions.jsonl").read_text().splitlines()]
    igd = [json.loads(x)["scores"] for x in (tmp_path / "igd" / "predictions.jsonl").read_text().splitlines()]
    assert hf != igd
    capsys.readouterr()


def test_a_run_tested_on_a_subset_warns_when_decoded_on_the_whole_split(tmp_path, capsys):
    import yaml

    run = write_tiny_run(tmp_path, {"num_beams": 3, "batch_size": 2, "ks": [1, 3]})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"] = {"test_users": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "--model", str(run), "--split", "test", "--out", str(tmp_path / "all")]) == 0
    err = capsys.readouterr().err
    assert "was tested on 1 seeded test users (train.test_users)" in err and "--limit 1 decodes the same users" in err
    assert len((tmp_path / "all" / "predictions.jsonl").read_text().splitlines()) == 2  # still the whole split
    assert main(["evaluate", "--model", str(run), "--split", "test", "--limit", "1", "--out", str(tmp_path / "one")]) == 0
    assert main(["analyze", "pruning", "--model", str(run), "--split", "test", "--limit", "1",
                 "--out", str(tmp_path / "pr")]) == 0
    assert "seeded test users" not in capsys.readouterr().err
    assert main(["analyze", "pruning", "--model", str(run), "--split", "test", "--out", str(tmp_path / "pr2")]) == 0
    assert "--limit 1 decodes the same users" in capsys.readouterr().err


def test_evaluate_excluding_the_history_never_returns_its_titles(run_dir, tmp_path):
    """--exclude-history: no returned title is one of the user's history titles (where the plain
    decode returns some), the metrics say so, the output folder is named for it, and the pruning
    analysis, which ranks every title, refuses it."""
    from bearrec.analysis import analyze
    from bearrec.errors import BearrecError
    from bearrec.runs import load_run

    plain = tmp_path / "plain"
    assert main(["evaluate", "--model", str(run_dir), "--split", "train", "--num-beams", "5", "--out", str(plain)]) == 0
    assert main(["evaluate", "--model", str(run_dir), "--split", "train", "--num-beams", "5", "--exclude-history"]) == 0
    out = run_dir / "eval-train-b5-nohistory"
    ds = load_authors_dir(run_dir.parent / "Shop", valid_fraction=0.0)
    titles_of = lambda h: {TITLES[i] for i in h}  # noqa: E731
    for folder, excluded in ((plain, False), (out, True)):
        preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        shared = [set(p["titles"]) & titles_of(e.history) for p, e in zip(preds, ds.train)]
        assert (not any(shared)) if excluded else any(shared)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics.get("exclude_history", False) is excluded
    loaded = load_run(run_dir, overrides=["decode.exclude_history=true"])
    with pytest.raises(BearrecError, match="ranks every title"):
        analyze(loaded.recommender, ds.test, [0], progress=False)
