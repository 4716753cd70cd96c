"""`bearrec compare` on hand-made run directories: labels, mean +- std, Imp.%, paired bootstrap."""

import json
import math

import pytest
import yaml

from bearrec.cli import main
from bearrec.config import Config, to_dict
from bearrec.errors import BearrecError
from bearrec.report import compare, load_run, method_label, run_settings, to_csv, to_markdown


def make_run(root, name, loss, seed, ranks, dataset="office", form="reference", user_ids=None, **settings):
    """`settings`: dotted config keys, e.g. **{"loss.bear.lam": 4.0}; `user_ids`: each row's user id
    in the predictions (None: not recorded, as in older archives)."""
    run = root / name
    (run / "eval-test").mkdir(parents=True)
    cfg = to_dict(Config())
    cfg["loss"]["name"], cfg["loss"]["bear"]["form"], cfg["seed"], cfg["data"]["name"] = loss, form, seed, dataset
    cfg["output_dir"] = str(run)
    for key, value in settings.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    preds = [{"index": i, "rank": r} if user_ids is None else {"index": i, "user_id": user_ids[i], "rank": r}
             for i, r in enumerate(ranks)]
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
    (sig,) = result["significance"]["office"]
    # two seeds: no interval, the per-seed paired differences: seed 0 (1, .5, 0, 0) - (1, 0, 0, 0) = .125,
    # seed 1 (1, .5, 0, 0) - (.5, 0, 0, 0) = .25
    assert (sig["a"], sig["b"]) == ("bear", "msl") and sig["mean"] == pytest.approx(0.1875) and sig["users"] == 4
    assert sig["low"] is None and sig["per_seed"] == {0: pytest.approx(0.125), 1: pytest.approx(0.25)}
    md = to_markdown(result)
    assert "| bear (2 seeds) |" in md and "0.1875 ± 0.0884" in md and "+100.00% (bear)" in md
    assert "fewer than 3 seeds per method" in md and "seed 0 +0.1250, seed 1 +0.2500" in md
    assert "msl,office,NDCG@10,0.187500,0.088388,2" in to_csv(result)


def test_one_seed_against_two_says_the_difference_is_of_unpaired_means(tmp_path):
    # cft has seed 0 only, msl seeds 0 and 1: the difference is mean(cft) - mean(msl) = .375 - .1875,
    # not the seed-0 paired difference (.375 - .25 = .125), and the line must say which it is
    runs = [make_run(tmp_path, "msl0", "msl", 0, [0, None, None, None]),  # 0.25
            make_run(tmp_path, "msl1", "msl", 1, [2, None, None, None]),  # 0.125
            make_run(tmp_path, "cft0", "cft", 0, [0, 2, None, None])]  # 0.375
    (sig,) = compare(runs, bootstrap_samples=200, pairs=[("cft", "msl")])["significance"]["office"]
    assert sig["mean"] == pytest.approx(0.1875) and sig["per_seed"] == {0: pytest.approx(0.125)}
    md = to_markdown(compare(runs, bootstrap_samples=200, pairs=[("cft", "msl")]))
    assert "cft - msl = +0.1875 (unpaired: means over 1 and 2 seeds); fewer than 3 seeds" in md
    assert "Per seed: seed 0 +0.1250." in md


def test_three_seeds_give_a_two_stage_interval_and_the_old_one_beside_it(tmp_path):
    ranks = {0: ([0, 2, None], [0, None, None]), 1: ([0, None, None], [None, None, None]),
             2: ([2, 2, None], [2, None, None])}
    runs = [make_run(tmp_path, f"{m}{s}", m, s, r[i]) for s, r in ranks.items() for i, m in enumerate(("bear", "msl"))]
    (sig,) = compare(runs, bootstrap_samples=300)["significance"]["office"]
    # per seed: (.5)/3, 1/3, (.5)/3
    assert sig["per_seed"] == {0: pytest.approx(0.5 / 3), 1: pytest.approx(1 / 3), 2: pytest.approx(0.5 / 3)}
    assert sig["seeds"] == 3 and sig["mean"] == pytest.approx(2 / 9) and sig["low"] <= sig["mean"] <= sig["high"]
    assert sig["users_only"]["mean"] == pytest.approx(2 / 9) and sig["users_only"]["low"] is not None
    md = to_markdown(compare(runs, bootstrap_samples=300))
    assert "95% CI [" in md and "two-stage bootstrap" in md and "Users-only bootstrap" in md


def test_different_settings_are_different_rows_and_never_merged(tmp_path, capsys):
    """bear lam 0.25 and lam 4 with the same seed are two rows (not 'bear (2 seeds)')."""
    a = make_run(tmp_path, "a", "bear", 0, [0, None], **{"loss.bear.lam": 0.25})
    b = make_run(tmp_path, "b", "bear", 0, [None, 1], **{"loss.bear.lam": 4.0})
    c = make_run(tmp_path, "c", "msl", 0, [None, None], **{"loss.bear.lam": 4.0})  # msl does not read loss.bear
    result = compare([a, b, c], bootstrap_samples=50)
    assert result["methods"] == ["bear (lam=0.25)", "bear (lam=4)", "msl"]
    md = to_markdown(result)
    assert "| bear (lam=0.25) (1 seed) |" in md and "| bear (lam=4) (1 seed) |" in md and "(2 seeds)" not in md
    # decoding settings too, and a key named by the shortest suffix that is unique
    d = make_run(tmp_path, "d", "msl", 0, [0, 0], **{"decode.constrained_softmax": False})
    assert "msl (constrained_softmax=false)" in compare([c, d], bootstrap_samples=50)["methods"]
    e = make_run(tmp_path, "e", "bear", 0, [0, 0], **{"loss.bear.num_beams": 5, "loss.bear.lam": 4.0})
    assert "bear (bear.num_beams=5)" in compare([b, e], bootstrap_samples=50)["methods"]
    # the same label and seed twice: an error naming both directories
    twin = make_run(tmp_path, "twin", "bear", 0, [0, 0], **{"loss.bear.lam": 4.0})
    assert main(["compare", str(b), str(twin)]) == 2
    err = capsys.readouterr().err
    assert str(b) in err and str(twin) in err and "seed 0" in err


def test_a_preference_run_is_labelled_without_its_seeds_start_model(tmp_path):
    runs = [make_run(tmp_path, f"dpo{s}", "dpo", s, [0, None], **{"model.name_or_path": f"runs/x/sft/seed={s}/model"})
            for s in (0, 1)]
    assert compare(runs, bootstrap_samples=50)["methods"] == ["dpo"]
    assert run_settings(yaml.safe_load((runs[1] / "config.yaml").read_text()))["model.name_or_path"] == \
        "runs/x/sft/seed=*/model"


def test_pairs_are_reported_and_unknown_rows_refused(tmp_path, capsys):
    runs = [make_run(tmp_path, "s", "sft", 0, [None, None]), make_run(tmp_path, "m", "msl", 0, [0, None]),
            make_run(tmp_path, "b", "bear", 0, [1, None])]
    assert main(["compare", *map(str, runs), "--pair", "bear - sft", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "NDCG@10 msl - bear = +0.1845" in out and "NDCG@10 bear - sft = +0.3155" in out
    assert main(["compare", *map(str, runs), "--pair", "bear - msl", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out  # the pair asked for replaces best - other (the same two, reversed)
    assert "NDCG@10 bear - msl = -0.1845" in out and "msl - bear" not in out
    assert main(["compare", *map(str, runs), "--pair", "bear - dpo"]) == 2
    assert "no row 'dpo'" in capsys.readouterr().err
    assert main(["compare", *map(str, runs), "--pair", "bear"]) == 2


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
    (sig,) = result["significance"]["office"]
    assert sig["a"] == "msl [d3]" and sig["mean"] == pytest.approx(0.5 - (1 + 1 / math.log2(3)) / 4)
    assert main(["compare", str(run), "--eval", "eval-test-ghost"]) == 2  # missing folder: a clear error
    assert "eval-test-ghost/metrics.json: missing" in capsys.readouterr().err


def _add_reference(run, folder, ranks, **metrics):
    (run / folder).mkdir()
    (run / folder / "predictions.jsonl").write_text("".join(json.dumps({"index": i, "rank": r}) + "\n"
                                                            for i, r in enumerate(ranks)))
    n = len(ranks)
    hits = sum(r is not None and r < 10 for r in ranks)
    (run / folder / "metrics.json").write_text(json.dumps({"item": {"HR@10": hits / n, "NDCG@10": 0.0}, **metrics}))


def test_a_popularity_reference_that_skips_the_history_is_its_own_row(tmp_path):
    """A run decoding with exclude_history has a popularity reference that skips each user's history
    titles: it is not the other runs' popularity, so it gets its own row instead of a disagreement."""
    plain = make_run(tmp_path, "msl0", "msl", 0, [0, 3, None, 1])
    _add_reference(plain, "ref-popularity", [None, 5, 2, None])
    skipping = make_run(tmp_path, "sft0", "sft", 0, [1, None, None, 1])
    _add_reference(skipping, "ref-popularity", [None, 4, 2, 7], exclude_history=True,
                   reference={"name": "popularity", "history_excluded": True})
    rows = [r for r in compare([plain, skipping], bootstrap_samples=50, references=True)["runs"]
            if r["method"].startswith("popularity")]
    assert sorted((r["method"], r["dir"]) for r in rows) == [("popularity", str(plain)),
                                                             ("popularity (history excluded)", str(skipping))]
    # one written before the reference skipped the history (its decode setting recorded, not applied)
    stale = make_run(tmp_path, "bear0", "bear", 0, [0, 0, 0, 0])
    _add_reference(stale, "ref-popularity", [None, 5, 2, None], exclude_history=True,
                   reference={"name": "popularity"})
    with pytest.raises(BearrecError, match="made before the popularity reference skipped the history"):
        compare([stale], bootstrap_samples=50, references=True)


def test_reference_rows_come_once_per_dataset_and_seed_and_must_agree(tmp_path):
    """popularity does not depend on the seed: two seeds' copies make one row of one entry; the
    untrained model does: one entry per seed; copies that disagree are an error naming both runs."""
    runs = [make_run(tmp_path, f"bear{s}", "bear", s, [0, 3, None, 1]) for s in (0, 1)]
    msl = make_run(tmp_path, "msl0", "msl", 0, [2, None, None, 1])
    for run in (*runs, msl):
        _add_reference(run, "ref-popularity", [None, None, 5, None])
    for run, ranks in ((runs[0], [None, 1, None, None]), (runs[1], [None, None, None, None]),
                       (msl, [None, 1, None, None])):
        _add_reference(run, "ref-zero_shot", ranks)
    assert {r["method"] for r in compare([*runs, msl])["runs"]} == {"bear", "msl"}  # only when asked
    result = compare([*runs, msl], bootstrap_samples=200, references=True, pairs=[("bear", "popularity")])
    rows = {}
    for r in result["runs"]:
        rows.setdefault(r["method"], []).append(r["seed"])
    assert rows == {"bear": [0, 1], "msl": [0], "popularity": [0], "zero-shot (untrained model)": [0, 1]}
    assert result["cells"][("popularity", "office", "HR@10")] == (0.25, None, 1)
    assert any(s["a"] == "bear" and s["b"] == "popularity" for s in result["significance"]["office"])
    _add_reference(msl, "ref-other", [0])  # ignored: not a reference folder
    (msl / "ref-popularity" / "predictions.jsonl").write_text(json.dumps({"index": 0, "rank": 0}) + "\n")
    with pytest.raises(Exception, match="ref-popularity/ differ on office"):
        compare([*runs, msl], references=True)


def test_a_run_that_decodes_with_igds_rule_says_so_in_its_label(tmp_path, capsys):
    """IGD as a whole is IGD-Tuning plus IGD's decoding rule: a run whose own config decodes with the
    rule gets `[igd-a<alpha>]`, so it is never mistaken for the tuning-only row."""
    from bearrec.report import load_run

    plain = make_run(tmp_path, "igd-plain", "igd", 0, [0, None])
    whole = make_run(tmp_path, "igd-whole", "igd", 0, [1, None], **{"decode.igd_alpha": 0.2, "decode.preset": "igd",
                                                                      "decode.length_penalty": 0.0,
                                                                      "decode.constrained_softmax": False})
    assert load_run(plain)["method"] == "igd-tuning"
    assert load_run(whole)["method"] == "igd-tuning [igd-a0.2]"
    assert main(["compare", str(plain), str(whole)]) == 0
    out = capsys.readouterr().out
    assert "| igd-tuning (1 seed) |" in out and "| igd-tuning [igd-a0.2] (1 seed) |" in out


def test_a_run_from_before_a_setting_existed_is_the_same_row(tmp_path):
    """A config.yaml written before decode.igd_alpha / decode.preset / loss.rosepo existed lacks
    them; their defaults are the old behaviour, so the run is labelled like today's runs (no
    `igd_alpha=unset` against `igd_alpha=None`), and an evaluation in another folder reports the
    decode settings that evaluation used."""
    from bearrec.report import load_run

    old = make_run(tmp_path, "old", "msl", 0, [0, None])
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["decode"]["igd_alpha"], cfg["decode"]["preset"], cfg["loss"]["rosepo"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    new = make_run(tmp_path, "new", "msl", 1, [1, None])
    assert load_run(old)["settings"] == load_run(new)["settings"]
    result = compare([str(old), str(new)])
    assert {m for (m, _, _) in result["cells"]} == {"msl"}
    (new / "eval-test-x").mkdir()
    (new / "eval-test-x" / "metrics.json").write_text(json.dumps(
        {"item": {"NDCG@10": 0.1}, "length_penalty": 0.0, "igd_alpha": 0.2, "preset": "igd"}))
    settings = load_run(new, "eval-test-x")["settings"]
    assert (settings["decode.length_penalty"], settings["decode.igd_alpha"]) == ("0.0", "0.2")
    assert "decode.preset" not in settings  # its effect is in the recorded values
    # an older folder of the same decoding (no preset / igd_alpha recorded) stays one row with a new one
    for run, record in ((old, {"length_penalty": 0.0}), (new, {"length_penalty": 0.0, "igd_alpha": None,
                                                               "preset": "d3"})):
        (run / "eval-test-d3").mkdir()
        (run / "eval-test-d3" / "metrics.json").write_text(json.dumps({"item": {"NDCG@10": 0.1}, **record}))
    result = compare([str(old), str(new)], evaluations=("eval-test-d3",))
    assert {m for (m, _, _) in result["cells"]} == {"msl [d3]"}


def test_load_run_without_ranks_labels_the_same_and_skips_the_predictions(tmp_path):
    run = make_run(tmp_path, "msl0", "msl", 0, [0, None, 2])
    full, light = load_run(run), load_run(run, with_ranks=False)
    assert full["ranks"] == {0: 0, 1: None, 2: 2} and light["ranks"] == {}
    per_row = ("ranks", "user_ids")
    assert {k: v for k, v in full.items() if k not in per_row} == {k: v for k, v in light.items() if k not in per_row}


def test_a_decode_excluding_the_history_is_its_own_row_and_says_so(tmp_path):
    """An evaluation whose metrics record exclude_history (written only when on) gets the row of its
    folder and the setting; the run's own evaluation, like every run before the setting, shows none."""
    run = make_run(tmp_path, "sft0", "sft", 0, [None, 1, 0, None])
    (run / "eval-test-nohistory").mkdir()
    other = make_run(tmp_path / "tmp", "sft0", "sft", 0, [0, 0, 0, None])
    for name in ("predictions.jsonl", "metrics.json"):
        (run / "eval-test-nohistory" / name).write_text((other / "eval-test" / name).read_text())
    metrics = json.loads((run / "eval-test-nohistory" / "metrics.json").read_text())
    (run / "eval-test-nohistory" / "metrics.json").write_text(json.dumps({**metrics, "exclude_history": True}))
    result = compare([run], bootstrap_samples=50, evaluations=("eval-test", "eval-test-nohistory"))
    assert "exclude_history=true" in result["settings"]["sft [nohistory]"]["office"]
    assert "exclude_history" not in result["settings"]["sft"]["office"]


def test_rows_of_one_user_id_are_drawn_together(tmp_path):
    """Rows 0-2 are one user's sliding windows, rows 3-4 another's: the intervals draw the two user ids,
    as `bearrec.stats` does when given the rows' ids; without recorded ids the rows are drawn one by one."""
    from bearrec.report import per_user_ndcg
    from bearrec.stats import hierarchical_bootstrap, user_bootstrap

    ranks = {0: ([0, 2, None, 1, 0], [0, None, None, 5, 0]), 1: ([0, None, None, 0, 3], [None, None, None, 0, 0]),
             2: ([2, 2, None, None, 1], [2, None, None, 1, 1])}
    ids = ["u7", "u7", "u7", "u9", "u9"]
    runs = [make_run(tmp_path, f"{m}{s}", m, s, r[i], user_ids=ids)
            for s, r in ranks.items() for i, m in enumerate(("bear", "msl"))]
    (sig,) = compare(runs, bootstrap_samples=300)["significance"]["office"]
    a = per_user_ndcg([load_run(r) for r in runs[0::2]])
    b = per_user_ndcg([load_run(r) for r in runs[1::2]])
    want = hierarchical_bootstrap(a, b, samples=300, clusters=dict(enumerate(ids)))
    assert (sig["low"], sig["high"], sig["clusters"]) == (want["low"], want["high"], 2)
    assert "by user id (2 ids)" in sig["method"]
    mean_a = {u: sum(a[s][u] for s in a) / 3 for u in range(5)}
    mean_b = {u: sum(b[s][u] for s in b) / 3 for u in range(5)}
    old = user_bootstrap(mean_a, mean_b, samples=300, clusters=dict(enumerate(ids)))
    assert (sig["users_only"]["low"], sig["users_only"]["high"]) == (old["low"], old["high"])
    assert "2 user ids drawn" in to_markdown(compare(runs, bootstrap_samples=300))
    # a run that did not record them (an older archive): every row drawn alone, and the report says so
    plain = make_run(tmp_path / "old", "msl0", "msl", 0, ranks[0][1])
    (sig,) = compare([*runs[:1], plain, *runs[2:]], bootstrap_samples=300)["significance"]["office"]
    assert "clusters" not in sig and "rows drawn one by one (user ids not recorded)" in sig["method"]
    # with fewer than 3 seeds only the users-only interval is printed: it says how it drew too
    few = compare([runs[0], plain], bootstrap_samples=100, pairs=[("bear", "msl")])
    assert "rows drawn one by one: user ids not recorded" in to_markdown(few)
    few = compare(runs[:2], bootstrap_samples=100, pairs=[("bear", "msl")])
    assert "2 user ids drawn" in to_markdown(few)


def test_runs_that_give_a_row_two_user_ids_are_refused_by_name(tmp_path):
    a = make_run(tmp_path, "bear0", "bear", 0, [0, 1], user_ids=["u1", "u2"])
    b = make_run(tmp_path, "msl0", "msl", 0, [1, 0], user_ids=["u1", "u3"])
    with pytest.raises(BearrecError, match="test row 1 is user 'u[23]' in one and 'u[23]' in the other") as e:
        compare([a, b], bootstrap_samples=50)
    assert str(a) in str(e.value) and str(b) in str(e.value)
