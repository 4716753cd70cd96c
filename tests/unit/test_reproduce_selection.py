"""benchmarks/reproduce.py: lambda/xi candidates are compared on the seeds all of them finished."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def reproduce():
    return load_benchmark("reproduce")


@pytest.fixture(scope="module")
def reproduce_report():
    return load_benchmark("reproduce_report")


def _run(root: Path, name: str, seed: int, valid: float, test: float) -> Path:
    run = root / name / f"seed={seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"selection": {"best": {"epoch": 1, "valid_ndcg@10": valid}},
                                                  "test": {"item": {"NDCG@10": test}}}))
    return run


def test_candidates_compared_on_common_seeds(reproduce, tmp_path):
    # a: seeds 0, 1, 2 (valid 0.1, 0.5, 0.5); b: seed 0 only (valid 0.2). Over its own seeds a would win
    # (0.367 > 0.2); on the common seed 0, b wins (0.2 > 0.1).
    a = [_run(tmp_path, "bear-a", s, v, t) for s, v, t in [(0, 0.1, 0.01), (1, 0.5, 0.03), (2, 0.5, 0.05)]]
    b = [_run(tmp_path, "bear-b", 0, 0.2, 0.02)]
    got = reproduce.select_candidate({"bear-a": a, "bear-b": b})
    assert got == {"bear-a": {"seeds": 1, "valid_ndcg@10": 0.1, "test_ndcg@10": 0.01},
                   "bear-b": {"seeds": 1, "valid_ndcg@10": 0.2, "test_ndcg@10": 0.02}}


def test_candidates_without_a_common_seed_use_their_own(reproduce, tmp_path):
    a = [_run(tmp_path, "bear-a", s, v, 0.01) for s, v in [(0, 0.1), (1, 0.3)]]
    b = [_run(tmp_path, "bear-b", 2, 0.15, 0.02)]
    got = reproduce.select_candidate({"bear-a": a, "bear-b": b})
    assert got["bear-a"]["seeds"] == 2 and got["bear-a"]["valid_ndcg@10"] == pytest.approx(0.2)
    assert got["bear-b"] == {"seeds": 1, "valid_ndcg@10": 0.15, "test_ndcg@10": 0.02}


def test_choose_on_seed_runs_candidates_on_one_seed_then_the_chosen_one_elsewhere(reproduce, tmp_path):
    ns = reproduce.argparse.Namespace(datasets=["office"], methods=["msl", "bear"], bear_grid=[("0.25", "2.75"), ("4", "0.25")],
                          seeds=[0, 1, 2], choose_on_seed=0, pruning_seed=0, pruning_users="0", root=str(tmp_path),
                          backbone="tiny", overrides=[])
    outs = [str(out.relative_to(tmp_path)) for _, out in reproduce.plan(ns)]
    assert sorted(outs) == sorted(["office/msl/seed=0", "office/msl/seed=1", "office/msl/seed=2",
                                   "office/bear-lam0.25-xi2.75/seed=0", "office/bear-lam4-xi0.25/seed=0"])
    _run(tmp_path / "office", "bear-lam0.25-xi2.75", 0, 0.10, 0.01)
    _run(tmp_path / "office", "bear-lam4-xi0.25", 0, 0.12, 0.01)
    chosen = reproduce.chosen_plan(ns)
    assert [str(out.relative_to(tmp_path)) for _, out in chosen] == ["office/bear-lam4-xi0.25/seed=1",
                                                                     "office/bear-lam4-xi0.25/seed=2"]
    assert "loss.bear.lam=4" in chosen[0][0] and "seed=1" in chosen[0][0]


def test_report_pairs_every_method_with_msl_and_bear_and_adds_the_d3_row(reproduce, tmp_path, capsys):
    """Finished tiny runs (sft, msl, one bear candidate; 3 seeds): --methods d3 decodes each sft run
    with D3's rule into eval-test-d3 (once), and the report's table has its row, paired with msl and
    with bear like every other method."""
    from bearrec.cli import main
    from tests.conftest import write_authors
    from tests.integration.test_training import TINY

    data = write_authors(tmp_path / "Shop")
    root = tmp_path / "root"
    losses = {"sft": ["loss.name=sft", "decode.constrained_softmax=false"], "msl": ["loss.name=msl"],
              "bear-lam1-xi1": ["loss.name=bear", "loss.bear.lam=1", "loss.bear.xi=1", "loss.bear.num_beams=3"]}
    for name, overrides in losses.items():
        for seed in (0, 1, 2):
            assert main(["run", f"data.name={data}", "data.valid_fraction=0.25", *TINY, "train.epochs=1",
                         "analysis.pruning_users=0", "analysis.references=[]", "decode.num_beams=10", f"seed={seed}", *overrides,
                         f"output_dir={root / 'shop' / name / f'seed={seed}'}"]) == 0
    ns = reproduce.argparse.Namespace(datasets=["shop"], methods=["sft", "msl", "bear", "d3"], seeds=[0, 1, 2],
                                      root=str(root), bootstrap=200)
    items = reproduce.decode_plan(ns)
    assert [after for _, _, after in items] == [None] * 3  # finished runs: nothing to wait for
    for argv, _, _ in items:
        assert main(argv) == 0
    assert reproduce.decode_plan(ns) == []  # decoded once
    for seed in (0, 1, 2):
        m = json.loads((root / "shop" / "sft" / f"seed={seed}" / "eval-test-d3" / "metrics.json").read_text())
        assert (m["preset"], m["length_penalty"], m["constrained_softmax"]) == ("d3", 0.0, False)
    reproduce.report(ns)
    capsys.readouterr()
    text = (root / "summary.md").read_text()
    assert "| sft [d3] (3 seeds) |" in text
    for a, b in [("sft [d3]", "msl"), ("sft [d3]", "bear"), ("sft", "msl"), ("sft", "bear"), ("bear", "msl")]:
        assert f"{data}: NDCG@10 {a} - {b} = " in text, (a, b)
    # the same report from an archive of the root (no weights): the same summary, line for line
    assert main(["archive", str(root), str(tmp_path / "archive")]) == 0
    assert not list((tmp_path / "archive").rglob("*.safetensors"))
    reproduce.report(reproduce.argparse.Namespace(**{**vars(ns), "root": str(tmp_path / "archive")}))
    assert (tmp_path / "archive" / "summary.md").read_text() == text.replace(str(root), str(tmp_path / "archive"))
    # a report over another dataset (nothing finished there) keeps this one's section as it was
    reproduce.report(reproduce.argparse.Namespace(**{**vars(ns), "datasets": ["other"]}))
    assert (root / "summary.md").read_text() == text
    assert list(json.loads((root / "summary.json").read_text())) == ["shop"]


def test_a_report_keeps_the_other_datasets_sections_and_drops_a_reported_one_without_runs(reproduce_report, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}}))
    (tmp_path / "summary.md").write_text("# Reproduction summary\n\nRoot: `r`\n\n## a\n\nold a\n\n## b\n\nold b\n"
                                         "| ## b |\n\n## c\n\nold c\n")
    # this call reports b anew and c (no finished runs: no section); a is kept after b's new section
    new = ["# Reproduction summary", "", "Root: `r`", "", "## b", "", "new b", ""]
    summary, lines = reproduce_report._keep_other_datasets(tmp_path, ["b", "c"], {"b": {"x": 20}}, new)
    assert summary == {"b": {"x": 20}, "a": {"x": 1}}
    assert lines == ["# Reproduction summary", "", "Root: `r`", "", "## b", "", "new b", "", "## a", "", "old a", ""]
    # no earlier summary (or not one of ours): this call's alone
    (tmp_path / "summary.json").write_text("[]")
    assert reproduce_report._keep_other_datasets(tmp_path, ["b"], {"b": 1}, ["x"]) == ({"b": 1}, ["x"])


def test_an_sft_run_tested_on_a_subset_is_decoded_with_d3_on_the_same_users(reproduce, tmp_path):
    for seed, test_users in [(0, 24), (1, None)]:
        run = _run(tmp_path / "office", "sft", seed, 0.1, 0.01)
        (run / "config.yaml").write_text(f"train:\n  test_users: {'null' if test_users is None else test_users}\n")
    ns = reproduce.argparse.Namespace(datasets=["office"], methods=["sft", "d3"], seeds=[0, 1], root=str(tmp_path))
    calls = [argv for argv, _, _ in reproduce.decode_plan(ns)]
    limits = [argv[argv.index("--limit") + 1] if "--limit" in argv else None for argv in calls]
    assert [argv[argv.index("--model") + 1] for argv in calls] == [str(tmp_path / "office" / "sft" / f"seed={s}")
                                                                    for s in (0, 1)]
    assert limits == ["24", None] and all("--decoding" in argv for argv in calls)


def test_runs_of_this_call_are_decoded_the_other_way_after_they_finish(reproduce, tmp_path, monkeypatch):
    """--methods with the *-softmax rows: each sft, msl and bear-* run of the batch decodes its test
    users both ways itself (analysis.other_softmax, into the row's folder), so no `bearrec evaluate`
    is planned for it; a run already tested without it (here msl) gets one, with the softmax it does
    not use, on the users its config tests (train.test_users from the run's own config and overrides),
    waiting for that run, logging beside its folder, not inside it (`bearrec evaluate` replaces it)."""
    from bearrec.config import load_config
    from bearrec.evaluation import other_softmax_folder

    calls = []
    monkeypatch.setattr(reproduce, "run_parallel", lambda argvs, outs, jobs, after, logs, **kw: calls.append(
        (argvs, outs, after, logs)))
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    office = tmp_path / "office"
    runs = [office / m / "seed=0" for m in ("sft", "msl", "bear-lam1-xi1")]
    (runs[1] / "eval-test").mkdir(parents=True)
    (runs[1] / "eval-test" / "metrics.json").write_text("{}")
    assert reproduce.main(["--datasets", "office", "--methods", "sft,msl,bear,d3,sft-valid-softmax,msl-vocab-softmax,"
                           "bear-vocab-softmax", "--bear-grid", "1:1", "--seeds", "0", "--root", str(tmp_path),
                           "train.test_users=40"]) == 0
    ((argvs, outs, after, logs),) = calls  # no second call: the runs have not finished (faked), nothing is left
    assert outs == [*runs, runs[0] / "eval-test-d3", runs[1] / "eval-test-vocab-softmax"]  # d3 still after sft
    assert after == [None, None, None, runs[0], runs[1]]
    argvs, outs, logs = argvs[:3] + argvs[4:], outs[:3] + outs[4:], logs[:3] + logs[4:]
    assert all(reproduce.OTHER_SOFTMAX in argv for argv in argvs[:3])
    for argv, run in zip(argvs[:3], runs):  # each run's own decode writes the folder its row reads
        folder = {"sft": "eval-test-valid-softmax"}.get(run.parent.name, "eval-test-vocab-softmax")
        assert other_softmax_folder(load_config(argv[2], argv[3:]).decode) == folder
    assert argvs[3][argvs[3].index("--model") + 2:] == ["--no-constrained-softmax", "--limit", "40", "--out", str(outs[3])]
    assert logs[:3] == [r / "run.log" for r in runs] and logs[3] == runs[1] / "eval-test-vocab-softmax.log"
    calls.clear()
    assert reproduce.main(["--datasets", "office", "--methods", "sft,msl", "--seeds", "0", "--root", str(tmp_path)]) == 0
    assert not any(reproduce.OTHER_SOFTMAX in argv for argv in calls[0][0])  # only where a *-softmax row is asked


def test_archive_flag_archives_the_finished_runs_of_the_root(reproduce, tmp_path, monkeypatch, capsys):
    from tests.unit.test_archive import finished_run

    finished_run(tmp_path / "root" / "office" / "msl", "seed=0", "msl", 0, [0, None])
    (tmp_path / "root" / "office" / "sft" / "seed=0").mkdir(parents=True)
    (tmp_path / "root" / "office" / "sft" / "seed=0" / "config.yaml").write_text("seed: 0\n")  # cut off
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    assert reproduce.main(["--datasets", "office", "--root", str(tmp_path / "root"), "--report-only",
                           "--archive", str(tmp_path / "arch")]) == 0
    out = capsys.readouterr().out
    assert "archived 1 finished run(s)" in out and "not finished: " in out and "sft/seed=0" in out
    assert (tmp_path / "arch" / "office" / "msl" / "seed=0" / "eval-test" / "predictions.jsonl.gz").exists()


def test_each_run_is_archived_as_it_finishes(reproduce, tmp_path, monkeypatch, capsys):
    """--archive: run_parallel is handed a callback that archives each finished run at once (a decode's
    folder: the run holding it, archive replaced, now with the decode); an unfinished one is only
    warned about. Without --archive no callback."""
    from tests.unit.test_archive import finished_run

    root, arch = tmp_path / "root", tmp_path / "arch"
    run = finished_run(root / "office" / "sft", "seed=0", "sft", 0, [0, None])
    (root / "office" / "msl" / "seed=0").mkdir(parents=True)
    (root / "office" / "msl" / "seed=0" / "config.yaml").write_text("seed: 0\n")  # cut off
    archived = []

    def fake_run_parallel(argvs, outs, jobs, after, logs, on_finished=None):
        from bearrec.config import load_config
        from bearrec.rundir import config_hash

        archived.append(on_finished is not None)
        if on_finished is not None:  # the run as `bearrec run` leaves it: its config's hash in run.json
            digest = config_hash(load_config(argvs[0][2], argvs[0][3:]))
            (run / "run.json").write_text(json.dumps({"config_hash": digest}))
            on_finished(run)
            (run / "eval-test-d3").mkdir()
            (run / "eval-test-d3" / "metrics.json").write_text("{}")
            on_finished(run / "eval-test-d3")
            assert (arch / "office" / "sft" / "seed=0" / "eval-test-d3" / "metrics.json").exists()
            on_finished(root / "office" / "msl" / "seed=0")
            assert not (arch / "office" / "msl").exists()

    monkeypatch.setattr(reproduce, "run_parallel", fake_run_parallel)
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    argv = ["--datasets", "office", "--methods", "sft", "--seeds", "0", "--root", str(root)]
    assert reproduce.main(argv) == 0 and archived == [False]
    assert reproduce.main([*argv, "--archive", str(arch)]) == 0 and archived[1] is True
    assert (arch / "office" / "sft" / "seed=0" / "eval-test" / "predictions.jsonl.gz").exists()
    assert "not archived: " in capsys.readouterr().err
    assert reproduce.main([*argv, "--archive", str(arch)]) == 0 and len(archived) == 2  # sft: in the archive
    assert "in the archive already, not run again: 1" in capsys.readouterr().out
    outs = []
    monkeypatch.setattr(reproduce, "run_parallel", lambda argvs, o, *a, **k: outs.extend(o))
    assert reproduce.main([*argv, "--archive", str(arch), "train.epochs=2"]) == 0 and outs == [run]  # another config


def _archived_sft(reproduce, root: Path, arch: Path, methods: list[str]) -> Path:
    """The archive of the sft run (seed 0, Office) that a call with `methods` plans: its config's hash."""
    from bearrec.config import load_config
    from bearrec.rundir import config_hash
    from tests.unit.test_archive import finished_run

    ns = reproduce.argparse.Namespace(datasets=["office"], methods=methods, bear_grid=[], seeds=[0],
                                      choose_on_seed=None, pruning_seed=0, pruning_users="null", root=str(root),
                                      backbone="tiny", overrides=[])
    (argv, _), = reproduce.plan(ns)
    run = finished_run(arch / "office" / "sft", "seed=0", "sft", 0, [0, None])
    (run / "run.json").write_text(json.dumps({"config_hash": config_hash(load_config(argv[2], argv[3:]))}))
    (run / "archived.json").write_text("{}")
    return run


def test_a_fresh_session_with_every_run_archived_ends_cleanly(reproduce, tmp_path, monkeypatch):
    """The runs root is gone (a new session) and every run is in the archive: nothing runs, the report and
    the final archiving find nothing, and the call still ends with 0."""
    root, arch = tmp_path / "root", tmp_path / "arch"
    _archived_sft(reproduce, root, arch, ["sft"])
    monkeypatch.setattr(reproduce, "run_parallel", lambda *a, **k: pytest.fail("nothing to run"))
    assert reproduce.main(["--datasets", "office", "--methods", "sft", "--seeds", "0", "--root", str(root),
                           "--archive", str(arch)]) == 0


def test_an_archived_run_whose_other_softmax_decode_is_missing_is_decoded(reproduce, tmp_path, monkeypatch):
    """sft archived without its valid-softmax decode; a later call asks for that row: the run would write
    it in its own test decode, but it is not run again, so the decode is an item of its own (and the run
    is trained again for its weights)."""
    root, arch = tmp_path / "root", tmp_path / "arch"
    _archived_sft(reproduce, root, arch, ["sft", "sft-valid-softmax"])
    calls = []
    monkeypatch.setattr(reproduce, "run_parallel", lambda argvs, outs, *a, **k: calls.append(
        [str(o.relative_to(root)) for o in outs]))
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    reproduce.main(["--datasets", "office", "--methods", "sft,sft-valid-softmax", "--seeds", "0", "--root", str(root),
                    "--archive", str(arch)])
    assert calls == [["office/sft/seed=0", "office/sft/seed=0/eval-test-valid-softmax"]]


def test_a_run_from_sft_archived_under_another_root_is_the_same_run(reproduce, tmp_path, capsys):
    """sdpo's config names its sft run's model by path; archived from root A, it is still the same run
    when a later call plans it under root B (the sft run of B stands where A's stood); an archive whose
    sft was another run (seed 1's) is not."""
    from bearrec.archive import skip_archived
    from bearrec.config import load_config
    from bearrec.rundir import config_hash

    def planned(root: Path):
        ns = reproduce.argparse.Namespace(datasets=["office"], methods=["sft", "sdpo"], bear_grid=[], seeds=[0],
                                          choose_on_seed=None, pruning_seed=0, pruning_users="null", root=str(root),
                                          backbone="tiny", overrides=[])
        return reproduce.plan(ns, 2)[0]

    a, b, arch = tmp_path / "a", Path("runs") / "b", tmp_path / "arch"
    argv_a, out_a = planned(a)
    dest = arch / "office" / "sdpo" / "seed=0"
    dest.mkdir(parents=True)
    (dest / "metrics.json").write_text("{}")
    (dest / "archived.json").write_text(json.dumps({"archived_from": str(out_a)}))
    (dest / "run.json").write_text(json.dumps({"config_hash": config_hash(load_config(argv_a[2], argv_a[3:]))}))
    argv_b, out_b = planned(b)
    batch = [(["run"], b / "office" / "sft" / "seed=0", None), (argv_b, out_b, b / "office" / "sft" / "seed=0")]
    assert skip_archived(batch, b, arch) == batch[:1]  # sft (not archived here) is not needed by sdpo
    other = load_config(argv_a[2], [*argv_a[3:], f"model.name_or_path={a / 'office' / 'sft' / 'seed=1' / 'model'}"])
    (dest / "run.json").write_text(json.dumps({"config_hash": config_hash(other)}))
    assert skip_archived(batch, b, arch) == batch


def test_runs_in_the_archive_are_not_run_again_unless_a_run_needs_their_weights(tmp_path, capsys):
    """A later call (the runs' folders gone, their archives kept): archived runs and decodes are left
    out; sft is trained again when a run from it (sdpo) or a decode of it is still to come."""
    from bearrec.archive import skip_archived
    from tests.unit.test_archive import finished_run

    root, arch = tmp_path / "root", tmp_path / "arch"
    for name in ("sft", "msl"):
        run = finished_run(arch / "office" / name, "seed=0", name, 0, [0, None])
        (run / "archived.json").write_text("{}")
    (arch / "office" / "sft" / "seed=0" / "eval-test-d3").mkdir()
    (arch / "office" / "sft" / "seed=0" / "eval-test-d3" / "metrics.json").write_text("{}")
    sft, msl, sdpo, bear = (root / "office" / m / "seed=0" for m in ("sft", "msl", "sdpo", "bear-lam1-xi1"))
    batch = [(["run"], sft, None), (["run"], msl, None), (["run"], sdpo, sft),
             (["evaluate"], sft / "eval-test-d3", sft), (["evaluate"], msl / "eval-test-vocab-softmax", msl),
             (["run"], bear, None)]
    kept = [out for _, out, _ in skip_archived(batch, root, arch)]
    assert kept == [sft, msl, sdpo, msl / "eval-test-vocab-softmax", bear]  # msl trained again for its decode
    assert "not run again: 1 (" in capsys.readouterr().out  # the d3 decode (msl is needed)
    (arch / "office" / "sdpo" / "seed=0").mkdir(parents=True)
    (arch / "office" / "sdpo" / "seed=0" / "archived.json").write_text("{}")
    (arch / "office" / "sdpo" / "seed=0" / "metrics.json").write_text("{}")
    assert [out for _, out, _ in skip_archived(batch[:4], root, arch)] == []


def test_choose_on_seed_reads_the_candidates_archives_when_their_runs_are_gone(reproduce, tmp_path):
    ns = reproduce.argparse.Namespace(datasets=["office"], methods=["bear"], bear_grid=[("1", "1"), ("4", "0.25")],
                                      seeds=[1], choose_on_seed=0, pruning_seed=0, pruning_users="0",
                                      root=str(tmp_path / "root"), archive=str(tmp_path / "arch"), backbone="tiny",
                                      overrides=[])
    _run(tmp_path / "arch" / "office", "bear-lam1-xi1", 0, 0.3, 0.01)
    _run(tmp_path / "arch" / "office", "bear-lam4-xi0.25", 0, 0.2, 0.01)
    assert [str(out.relative_to(tmp_path)) for _, out in reproduce.chosen_plan(ns)] == [
        "root/office/bear-lam1-xi1/seed=1"]
    _run(tmp_path / "root" / "office", "bear-lam4-xi0.25", 0, 0.2, 0.01)  # one candidate trained again, the other not
    assert [str(out.relative_to(tmp_path)) for _, out in reproduce.chosen_plan(ns)] == [
        "root/office/bear-lam1-xi1/seed=1"]


def test_runs_from_sft_wait_for_their_sft_run_and_others_fill_the_slots(tmp_path, monkeypatch, capsys):
    """run_parallel's `after`: a run starts once the run it starts from has finished; meanwhile later
    runs take the free slot; a run whose start failed is not started."""
    from bearrec import sweep
    from bearrec.errors import BearrecError

    started = []

    class FakeProcess:  # finishes as soon as it is waited for; a folder named bad-* fails
        def __init__(self, cmd, **kwargs):
            self.out = Path(cmd[-1])
            self.returncode = 1 if self.out.name.startswith("bad") else 0
            started.append(self.out.name)

        def wait(self, timeout=None):
            return self.returncode

    monkeypatch.setattr(sweep.subprocess, "Popen", FakeProcess)
    a, c, b, d, e = (tmp_path / n for n in ("sft-a", "pref-c", "bad-sft-b", "pref-d", "other-e"))
    finished = []
    with pytest.raises(BearrecError, match="2 run"):
        sweep.run_parallel([["run", str(o)] for o in (a, c, b, d, e)], [a, c, b, d, e], jobs=2,
                           after=[None, a, None, b, None], on_finished=finished.append)
    assert sorted(finished) == sorted([a, c, e])  # the failed run and the one never started: not called
    # a and b fill the two slots (c waits for a); a finishes, c starts; b fails, d is never started, e is
    assert started == ["sft-a", "bad-sft-b", "pref-c", "other-e"]
    assert f"FAILED: {d} (not started: {b}, which it starts from, failed)" in capsys.readouterr().out
    with pytest.raises(BearrecError, match="runs wait for each other"):
        sweep.run_parallel([["run", str(a)], ["run", str(c)]], [a, c], jobs=2, after=[c, a])


def test_one_batch_holds_every_run_of_the_seed_with_the_sft_dependency(reproduce, tmp_path, monkeypatch):
    _run(tmp_path / "office", "bear-lam1-xi1", 0, 0.2, 0.1)  # the candidate chosen earlier, on seed 0
    calls = []
    monkeypatch.setattr(reproduce, "run_parallel",
                        lambda argvs, outs, jobs, after, logs, **kw: calls.append((outs, after)))
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    assert reproduce.main(["--datasets", "office", "--methods", "sft,msl,bear,sdpo", "--bear-grid", "1:1",
                           "--choose-on-seed", "0", "--seeds", "1", "--root", str(tmp_path)]) == 0
    ((outs, after),) = calls
    names = [str(o.relative_to(tmp_path / "office")) for o in outs]
    assert names == ["sft/seed=1", "msl/seed=1", "bear-lam1-xi1/seed=1", "sdpo/seed=1"]
    assert after == [None, None, None, tmp_path / "office" / "sft" / "seed=1"]


def test_a_batch_of_several_seeds_is_ordered_seed_by_seed_with_each_seeds_runs_from_sft(reproduce, tmp_path,
                                                                                         monkeypatch):
    """Several seeds in one call: each seed's runs from sft come right after that seed's own runs (so a
    free slot takes seed 1's sdpo before seed 2's sft), the pruning seed first."""
    calls = []
    monkeypatch.setattr(reproduce, "run_parallel",
                        lambda argvs, outs, jobs, after, logs, **kw: calls.append((outs, after)))
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    assert reproduce.main(["--datasets", "office", "--methods", "sft,msl,sdpo", "--seeds", "2,1",
                           "--pruning-seed", "1", "--root", str(tmp_path)]) == 0
    ((outs, after),) = calls
    assert [str(o.relative_to(tmp_path / "office")) for o in outs] == [
        "sft/seed=1", "msl/seed=1", "sdpo/seed=1", "sft/seed=2", "msl/seed=2", "sdpo/seed=2"]
    assert after == [None, None, outs[0], None, None, outs[3]]


def test_the_loss_by_decoder_grid_averages_each_softmax_over_its_seeds(reproduce_report, tmp_path):
    """A run counts when a *-softmax decode of its test users differs from its eval-test in the
    softmax only (read from their metrics): D3's decode, a decode of other users or with another
    setting, and one with the same softmax do not; both columns average the same seeds."""
    def evaluation(run: Path, folder: str, constrained: bool, ndcg: float, **other) -> None:
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / "metrics.json").write_text(json.dumps({"constrained_softmax": constrained, "num_users": 40,
                                                               "length_penalty": 1.0, **other,
                                                               "item": {"NDCG@10": ndcg}}))

    sft = [tmp_path / "sft" / f"seed={s}" for s in range(5)]
    msl = [tmp_path / "msl" / f"seed={s}" for s in (0, 1)]
    for run, own in zip(sft, (0.02, 0.04, 0.06, 0.08, 0.10)):
        evaluation(run, "eval-test", False, own)
        evaluation(run, "eval-test-d3", True, 0.5)  # not a softmax decode, whatever its metrics say
    evaluation(sft[0], "eval-test-valid-softmax", True, 0.01)
    evaluation(sft[1], "eval-test-valid-softmax", True, 0.03)
    evaluation(sft[2], "eval-test-valid-softmax", True, 0.9, num_users=16)  # other users
    evaluation(sft[3], "eval-test-valid-softmax", True, 0.9, length_penalty=0.0)  # another setting
    evaluation(sft[4], "eval-test-vocab-softmax", False, 0.9)  # the softmax eval-test already used
    for run, own in zip(msl, (0.03, 0.05)):
        evaluation(run, "eval-test", True, own)
    assert reproduce_report.softmax_grid({"msl": msl}) == []
    grid = reproduce_report.softmax_grid({"sft": sft, "msl": msl})
    assert grid[2] == ("| method | seeds | softmax over valid tokens | softmax over the vocabulary | "
                       "valid - vocabulary |")
    assert grid[4:] == ["| sft | 2 | 0.0200 | 0.0300 | -0.0100 |", ""]


def test_a_dataset_whose_candidates_finished_earlier_gets_its_chosen_runs_in_seed_order(reproduce, tmp_path,
                                                                                         monkeypatch):
    """--choose-on-seed 0 with seed 0 among --seeds: on office both candidates finished at seed 0 in an
    earlier call (one archived, one under the root), so office's chosen candidate runs in the first batch
    in its seeds' places; book's candidates are still to run, so its chosen one comes after that batch."""
    root, arch = tmp_path / "root", tmp_path / "arch"
    _run(arch / "office", "bear-lam1-xi1", 0, 0.3, 0.01)
    _run(root / "office", "bear-lam4-xi0.25", 0, 0.2, 0.01)
    calls = []

    def fake_run_parallel(argvs, outs, jobs, after, logs, **kw):
        calls.append([str(o.relative_to(root)) for o in outs])
        for out in outs:  # book's candidates finish: lam 4 / xi 0.25 wins there
            if out.parent.parent.name == "book" and out.parent.name.startswith("bear-") and out.name == "seed=0":
                shutil.rmtree(out, ignore_errors=True)
                _run(out.parent.parent, out.parent.name, 0, 0.5 if "lam4" in out.parent.name else 0.1, 0.01)

    monkeypatch.setattr(reproduce, "run_parallel", fake_run_parallel)
    monkeypatch.setattr(reproduce, "report", lambda args: None)
    monkeypatch.setattr(reproduce, "skip_archived", lambda runs, root, archive: runs)
    assert reproduce.main(["--datasets", "office,book", "--methods", "msl,bear", "--bear-grid", "1:1,4:0.25",
                           "--choose-on-seed", "0", "--seeds", "0,1", "--root", str(root),
                           "--archive", str(arch)]) == 0
    assert calls[:2] == [
        ["office/msl/seed=0", "office/bear-lam1-xi1/seed=0", "office/bear-lam4-xi0.25/seed=0",
         "book/msl/seed=0", "book/bear-lam1-xi1/seed=0", "book/bear-lam4-xi0.25/seed=0",
         "office/msl/seed=1", "book/msl/seed=1", "office/bear-lam1-xi1/seed=1"],
        ["book/bear-lam4-xi0.25/seed=1"]]
    # without the archive, office's lam 1 / xi 1 candidate is missing: both datasets wait for this call's candidates
    calls.clear()
    assert reproduce.main(["--datasets", "office", "--methods", "bear", "--bear-grid", "1:1,4:0.25",
                           "--choose-on-seed", "0", "--seeds", "0,1", "--root", str(root)]) == 0
    assert calls[:2] == [["office/bear-lam1-xi1/seed=0", "office/bear-lam4-xi0.25/seed=0"],
                         ["office/bear-lam4-xi0.25/seed=1"]]
