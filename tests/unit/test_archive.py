"""`bearrec archive`: a run's results without its weights, read by compare exactly like the run."""

import gzip
import json
import shutil

import pytest

from bearrec.archive import archive_run, archive_tree
from bearrec.cli import main
from bearrec.errors import BearrecError
from bearrec.report import compare, load_run, to_markdown
from bearrec.runs import load_run as load_model_run
from tests.unit.test_compare import make_run


def finished_run(root, name, loss, seed, ranks):
    """make_run's run with what `bearrec run` also leaves: weights, checkpoints, validation decodes,
    predictions with titles, a plot, a log, and the run's summary metrics.json."""
    run = make_run(root, name, loss, seed, ranks)
    preds = [{"index": i, "user_id": f"u{i // 2}", "rank": r, "items": [[7, 8]], "target_title": "a long title " * 5}
             for i, r in enumerate(ranks)]
    (run / "eval-test" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (run / "metrics.json").write_text(json.dumps({"test": {"item": {"NDCG@10": 0.5}}}))
    (run / "run.json").write_text("{}")
    for folder, size in (("model", 5000), ("checkpoints/step-1", 3000)):
        (run / folder).mkdir(parents=True)
        (run / folder / "model.safetensors").write_bytes(b"w" * size)
        (run / folder / "config.json").write_text("{}")  # a json file, but below model/: left out
    (run / "reference_logps.pt").write_bytes(b"p" * 700)
    (run / "valid_curve.png").write_bytes(b"i" * 300)
    (run / "run.log").write_text("log\n")
    (run / "eval-valid-epoch-1").mkdir()
    (run / "eval-valid-epoch-1" / "predictions.jsonl").write_text('{"index": 0, "rank": 1}\n')
    (run / "eval-valid-epoch-1" / "metrics.json").write_text('{"item": {}}')
    (run / ".eval-test.tmp").mkdir()  # a killed write's temporary folder
    (run / "pruning-test").mkdir()
    (run / "pruning-test" / "pruning.json").write_text(json.dumps({"PR@10": {"rate": 0.5}, "users": [{"i": 0}] * 50}))
    (run / ".eval-test.tmp" / "metrics.json").write_text("{}")
    return run


def test_an_archive_keeps_results_and_ranks_and_leaves_weights_out(tmp_path):
    run = finished_run(tmp_path / "runs", "bear0", "bear", 0, [0, None, 3])
    info = archive_run(run, tmp_path / "arch")
    files = sorted(str(p.relative_to(tmp_path / "arch")) for p in (tmp_path / "arch").rglob("*") if p.is_file())
    assert files == ["archived.json", "config.yaml", "eval-test/metrics.json", "eval-test/predictions.jsonl.gz",
                     "eval-valid-epoch-1/metrics.json", "metrics.json",
                     "pruning-test/pruning.json", "run.json"]
    ranks = gzip.decompress((tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").read_bytes()).decode()
    assert ranks == ('{"index": 0, "rank": 0, "user_id": "u0"}\n{"index": 1, "rank": null, "user_id": "u0"}\n'
                     '{"index": 2, "rank": 3, "user_id": "u1"}\n')  # the user id: the bootstrap draws rows by it
    # the aggregates of the pruning analysis stay, its per-user list does not
    assert json.loads((tmp_path / "arch" / "pruning-test" / "pruning.json").read_text()) == {"PR@10": {"rate": 0.5}}
    pruning_cut = (run / "pruning-test" / "pruning.json").stat().st_size - len(
        (tmp_path / "arch" / "pruning-test" / "pruning.json").read_bytes())
    # left out: 5000 + 3000 weights, 2 + 2 bytes of their config.json, 700 (.pt), 300 (png), 4 (log), the
    # temporary folder's metrics (2 bytes), the epoch's validation predictions (24) and what the pruning list took
    assert info["left_out_bytes"] == 5000 + 3000 + 2 + 2 + 700 + 300 + 4 + 2 + 24 + pruning_cut and pruning_cut > 0
    assert json.loads((tmp_path / "arch" / "archived.json").read_text())["archived_from"] == str(run.resolve())
    # no timestamp in the gzip header (bytes 4-7), so re-archiving an unchanged run changes nothing in git
    first = (tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").read_bytes()
    assert first[4:8] == bytes(4)
    archive_run(run, tmp_path / "arch")
    assert (tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").read_bytes() == first


def test_compare_over_archives_equals_compare_over_the_runs(tmp_path):
    ranks = {"msl": [[0, None, None, 4], [2, None, 1, None], [None, 0, None, None]],
             "bear": [[0, 2, None, None], [1, None, None, 9], [0, 0, None, 5]]}
    runs = [finished_run(tmp_path / "runs", f"{m}{s}", m, s, r) for m, rs in ranks.items() for s, r in enumerate(rs)]
    done, skipped = archive_tree(tmp_path / "runs", tmp_path / "arch")
    assert sorted(done) == sorted(runs) and skipped == []
    archived = [tmp_path / "arch" / r.name for r in runs]
    assert [load_run(a)["ranks"] for a in archived] == [load_run(r)["ranks"] for r in runs]
    assert [load_run(a)["user_ids"] for a in archived] == [load_run(r)["user_ids"] for r in runs]
    assert load_run(archived[0])["user_ids"] == {0: "u0", 1: "u0", 2: "u1", 3: "u1"}
    assert to_markdown(compare(archived, bootstrap_samples=300)) == to_markdown(compare(runs, bootstrap_samples=300))


def test_a_folder_keeps_relative_paths_skips_unfinished_runs_and_nested_stages(tmp_path, capsys):
    finished_run(tmp_path / "runs" / "office" / "sft", "seed=0", "sft", 0, [0, None])
    unfinished = tmp_path / "runs" / "office" / "msl" / "seed=0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 0\n")
    sprec = finished_run(tmp_path / "runs" / "office" / "sprec", "seed=0", "sprec", 0, [1, None])
    (sprec / "iter-1" / "sft").mkdir(parents=True)  # an iteration's stage: a config of its own, no run of its own
    (sprec / "iter-1" / "sft" / "config.yaml").write_text("seed: 0\n")
    (sprec / "iter-1" / "sft" / "train_metrics.json").write_text("{}")
    assert main(["archive", str(tmp_path / "runs"), str(tmp_path / "arch")]) == 0
    out = capsys.readouterr()
    assert "archived 2 run(s)" in out.out and f"skipped {unfinished}: not finished" in out.err
    assert (tmp_path / "arch" / "office" / "sft" / "seed=0" / "eval-test" / "predictions.jsonl.gz").exists()
    assert (tmp_path / "arch" / "office" / "sprec" / "seed=0" / "iter-1" / "sft" / "train_metrics.json").exists()
    assert not (tmp_path / "arch" / "office" / "sprec" / "seed=0" / "iter-1" / "sft" / "archived.json").exists()
    assert not (tmp_path / "arch" / "office" / "msl").exists()


def test_bad_sources_are_refused_by_name(tmp_path, capsys):
    run = finished_run(tmp_path / "runs", "msl0", "msl", 0, [0])
    with pytest.raises(BearrecError, match="no such folder"):
        archive_tree(tmp_path / "nowhere", tmp_path / "arch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BearrecError, match="no run directories"):
        archive_tree(tmp_path / "empty", tmp_path / "arch")
    with pytest.raises(BearrecError, match="inside the run"):
        archive_run(run, run / "archive")
    (run / "metrics.json").unlink()
    with pytest.raises(BearrecError, match="not a finished run"):
        archive_run(run, tmp_path / "arch")
    (run / "metrics.json").write_text("{}")
    archive_run(run, tmp_path / "arch")
    good = (tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").read_bytes()
    (run / "eval-test" / "predictions.jsonl").write_text('{"index": 0, "rank": 0}\n{"index": 1}\n')
    with pytest.raises(BearrecError, match=r"predictions.jsonl, line 2: not a prediction with 'index' and 'rank'"):
        archive_run(run, tmp_path / "arch")
    # a failed archive leaves the earlier one as it was, and no temporary folder
    assert (tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch", "empty", "runs"]
    (run / "eval-test" / "predictions.jsonl").write_text('{"index": 0, "rank": 0}\n')
    (run / "config.yaml").rename(run / "config.bak")
    with pytest.raises(BearrecError, match=r"not a finished run \(no config.yaml\)"):
        archive_run(run, tmp_path / "arch")
    (run / "config.bak").rename(run / "config.yaml")
    with pytest.raises(BearrecError, match="already an archive"):
        archive_tree(tmp_path / "arch", tmp_path / "arch2")
    archive_run(run, tmp_path / "archives" / "msl0")
    with pytest.raises(BearrecError, match=r"no run directories .* \(only archives: 1\)"):
        archive_tree(tmp_path / "archives", tmp_path / "arch2")
    (tmp_path / "arch" / "eval-test" / "predictions.jsonl.gz").write_bytes(b"version https://git-lfs")
    with pytest.raises(BearrecError, match=r"predictions.jsonl.gz: not a readable gzip"):
        load_run(tmp_path / "arch")


def test_a_destination_that_is_not_an_archive_is_never_replaced(tmp_path):
    """An archive replaces its destination whole: never a run, a folder holding the run, or other files."""
    a = finished_run(tmp_path / "runs", "seed=0", "msl", 0, [0])
    b = finished_run(tmp_path / "runs", "seed=1", "msl", 1, [1])
    for dest, why in [(b, "is not an archive"), (tmp_path / "runs", "holds the run"), (a / "x", "inside the run")]:
        with pytest.raises(BearrecError, match=why):
            archive_run(a, dest)
    assert (b / "model" / "model.safetensors").exists() and (a / "model" / "model.safetensors").exists()
    (tmp_path / "empty").mkdir()
    archive_run(a, tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "archived.json").exists()


def test_symlinked_folders_are_followed(tmp_path):
    finished_run(tmp_path / "elsewhere", "seed=0", "msl", 0, [0, None])
    (tmp_path / "root" / "office").mkdir(parents=True)
    (tmp_path / "root" / "office" / "msl").symlink_to(tmp_path / "elsewhere")
    done, _ = archive_tree(tmp_path / "root", tmp_path / "arch")
    assert len(done) == 1 and load_run(tmp_path / "arch" / "office" / "msl" / "seed=0")["ranks"] == {0: 0, 1: None}


def test_an_archive_is_not_a_model(tmp_path, capsys):
    run = finished_run(tmp_path / "runs", "msl0", "msl", 0, [0])
    archive_run(run, tmp_path / "arch")
    with pytest.raises(BearrecError, match=r"an archived run .*use the run it came from"):
        load_model_run(tmp_path / "arch")
    with pytest.raises(BearrecError, match="already an archive"):
        archive_run(tmp_path / "arch", tmp_path / "arch2")
    assert main(["evaluate", "--model", str(tmp_path / "arch")]) == 2
    assert "an archived run" in capsys.readouterr().err
    # bearrec run into an archive would rewrite its metrics: refused before anything is written
    before = {p: p.read_bytes() for p in (tmp_path / "arch").rglob("*") if p.is_file()}
    assert main(["run", "--config", str(tmp_path / "arch" / "config.yaml"), f"output_dir={tmp_path / 'arch'}"]) == 2
    assert "an archived run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "arch").rglob("*") if p.is_file()} == before


def test_an_archive_of_the_same_run_keeps_the_decodes_the_run_no_longer_has(tmp_path, capsys):
    """A run trained again for its weights (same config hash) lacks the decode folders of its first
    training: the new archive replaces the old one but keeps those, and says so; an archive of another
    run (another hash) is replaced whole; the folder tree form (archive_tree) does the same."""
    run = finished_run(tmp_path / "runs" / "sft", "seed=0", "sft", 0, [0, None])
    (run / "run.json").write_text('{"config_hash": "abc"}')
    (run / "eval-test-d3").mkdir()
    (run / "eval-test-d3" / "metrics.json").write_text('{"d3": 1}')
    dest = tmp_path / "arch" / "sft" / "seed=0"
    assert "kept_from_earlier_archive" not in archive_run(run, dest)
    shutil.rmtree(run / "eval-test-d3")
    (run / "metrics.json").write_text('{"test": {"item": {"NDCG@10": 0.25}}}')
    assert archive_run(run, dest)["kept_from_earlier_archive"] == ["eval-test-d3"]
    assert json.loads((dest / "eval-test-d3" / "metrics.json").read_text()) == {"d3": 1}
    assert json.loads((dest / "metrics.json").read_text())["test"]["item"]["NDCG@10"] == 0.25
    assert json.loads((dest / "archived.json").read_text())["kept_from_earlier_archive"] == ["eval-test-d3"]
    assert "ranks its test users otherwise" not in capsys.readouterr().err  # the same ranks: the same model
    (run / "eval-test" / "predictions.jsonl").write_text('{"index": 0, "rank": 3}\n{"index": 1, "rank": 0}\n')
    archive_tree(tmp_path / "runs", tmp_path / "arch")
    assert (dest / "eval-test-d3" / "metrics.json").exists()
    assert "ranks its test users otherwise than its archive" in capsys.readouterr().err
    assert sorted(p.name for p in dest.parent.iterdir()) == ["seed=0"]  # no temporary folder left
    (run / "run.json").write_text('{"config_hash": "other"}')
    assert "kept_from_earlier_archive" not in archive_run(run, dest)
    assert not (dest / "eval-test-d3").exists()
