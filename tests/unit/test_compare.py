"""`bearrec compare` on hand-made run directories: labels, mean +- std, Imp.%, paired bootstrap."""

import json
import math

import pytest
import yaml

from bearrec.cli import main
from bearrec.config import Config, to_dict
from bearrec.report import compare, method_label, paired_bootstrap, to_csv, to_markdown


def make_run(root, name, loss, seed, ranks, dataset="office", form="reference"):
    run = root / name
    (run / "eval-test").mkdir(parents=True)
    cfg = to_dict(Config())
    cfg["loss"]["name"], cfg["loss"]["bear"]["form"], cfg["seed"], cfg["data"]["name"] = loss, form, seed, dataset
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    preds = [{"index": i, "rank": r} for i, r in enumerate(ranks)]
    (run / "eval-test" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    n = len(ranks)
    item = {f"HR@{k}": sum(r is not None and r < k for r in ranks) / n for k in (5, 10)}
    item.update({f"NDCG@{k}": sum(1 / math.log2(r + 2) for r in ranks if r is not None and r < k) / n for k in (5, 10)})
    (run / "eval-test" / "metrics.json").write_text(json.dumps({"item": item}))
    return run


def test_method_labels():
    cfg = to_dict(Config())
    assert method_label(cfg) == "bear"
    cfg["loss"]["bear"]["form"] = "violators"
    assert method_label(cfg) == "bear-violators"
    cfg["loss"]["name"] = "msl"
    assert method_label(cfg) == "msl"


def test_table_mean_std_and_improvement(tmp_path):
    # msl: two seeds; user ranks chosen so NDCG@10 is easy by hand: rank 0 -> 1, rank 2 -> 0.5, miss -> 0
    runs = [make_run(tmp_path, "msl0", "msl", 0, [0, None, None, None]),  # NDCG@10 0.25
            make_run(tmp_path, "msl1", "msl", 1, [2, None, None, None]),  # 0.125
            make_run(tmp_path, "bear0", "bear", 0, [0, 2, None, None]),  # 0.375
            make_run(tmp_path, "bear1", "bear", 1, [0, 2, None, None])]  # 0.375
    result = compare(runs, bootstrap_samples=500)
    mean, std, n = result["cells"][("msl", "office", "NDCG@10")]
    assert (mean, n) == (pytest.approx(0.1875), 2) and std == pytest.approx(0.0883883, abs=1e-6)
    assert result["cells"][("bear", "office", "NDCG@10")][:2] == (pytest.approx(0.375), 0.0)
    best, imp = result["improvement"][("office", "NDCG@10")]
    assert best == "bear" and imp == pytest.approx(100 * (0.375 - 0.1875) / 0.1875)
    sig = result["significance"]["office"]
    # per-user NDCG@10 averaged over seeds: bear (1, .5, 0, 0), msl (.75, 0, 0, 0): differences (.25, .5, 0, 0)
    assert sig["best"] == "bear" and sig["mean"] == pytest.approx(0.1875) and sig["users"] == 4
    assert 0.0 <= sig["low"] <= sig["mean"] <= sig["high"] <= 0.5
    md = to_markdown(result)
    assert "| bear (2 seeds) |" in md and "0.1875 ± 0.0884" in md and "+100.00% (bear)" in md
    assert "paired bootstrap 95% CI" in md
    assert "msl,office,NDCG@10,0.187500,0.088388,2" in to_csv(result)


def test_bootstrap_of_a_constant_difference_is_exact():
    a = {u: 0.5 for u in range(10)}
    b = {u: 0.25 for u in range(10)}
    assert paired_bootstrap(a, b, samples=200) == {"mean": 0.25, "low": 0.25, "high": 0.25, "users": 10}
    assert paired_bootstrap(a, {}, samples=10) is None


def test_compare_cli_writes_md_and_csv(tmp_path, capsys):
    r1 = make_run(tmp_path, "a", "msl", 0, [0, None])
    r2 = make_run(tmp_path, "b", "sft", 0, [None, None])
    assert main(["compare", str(r1), str(r2), "--out", str(tmp_path / "table"), "--bootstrap", "100"]) == 0
    assert "| msl (1 seed) |" in capsys.readouterr().out
    assert (tmp_path / "table.md").exists() and (tmp_path / "table.csv").exists()
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: missing" in err and "finished run" in err


def test_other_evaluations_of_the_same_runs_get_their_own_rows(tmp_path, capsys):
    """--eval eval-test --eval eval-test-d3: one row per decoding; the bootstrap pairs them by user."""
    run = make_run(tmp_path, "msl0", "msl", 0, [0, None, 1, None])  # NDCG@10 (1 + 1/log2 3) / 4
    (run / "eval-test-d3").mkdir()
    d3 = make_run(tmp_path / "tmp", "msl0", "msl", 0, [None, None, 0, 0])  # NDCG@10 0.5
    for f in ("predictions.jsonl", "metrics.json"):
        (run / "eval-test-d3" / f).write_text((d3 / "eval-test" / f).read_text())
    assert main(["compare", str(run), "--eval", "eval-test", "--eval", "eval-test-d3", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "| msl (1 seed) |" in out and "| msl [d3] (1 seed) |" in out
    result = compare([run], bootstrap_samples=200, evaluations=("eval-test", "eval-test-d3"))
    assert result["cells"][("msl [d3]", "office", "NDCG@10")][0] == pytest.approx(0.5)
    sig = result["significance"]["office"]
    assert sig["best"] == "msl [d3]" and sig["mean"] == pytest.approx(0.5 - (1 + 1 / math.log2(3)) / 4)
    assert main(["compare", str(run), "--eval", "eval-test-ghost"]) == 2  # missing folder: a clear error
    assert "eval-test-ghost/metrics.json: missing" in capsys.readouterr().err
