"""Result files: a pair written together, readable modes."""

import json
import os
import stat

import pytest

import bearrec.evaluation as evaluation
from bearrec.atomic import atomic_write_text
from bearrec.evaluation import write_outputs


def test_a_failure_between_predictions_and_metrics_keeps_the_old_pair(tmp_path, monkeypatch):
    out = tmp_path / "eval-test"
    write_outputs(out, [{"index": 0, "rank": 1}], {"item": {"HR@1": 0.0}})
    real = json.dumps

    def fail_on_metrics(obj, *args, **kwargs):  # the predictions are already serialised at this point
        if isinstance(obj, dict) and "item" in obj:
            raise KeyboardInterrupt("killed between the two files")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(evaluation.json, "dumps", fail_on_metrics)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(out, [{"index": 0, "rank": 0}], {"item": {"HR@1": 1.0}})
    monkeypatch.setattr(evaluation.json, "dumps", real)
    assert json.loads((out / "predictions.jsonl").read_text()) == {"index": 0, "rank": 1}
    assert json.loads((out / "metrics.json").read_text()) == {"item": {"HR@1": 0.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["eval-test"]  # no temporary folder left behind


def test_result_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        write_outputs(tmp_path / "eval", [], {"item": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "eval").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "eval" / "metrics.json").stat().st_mode) == 0o644


def test_an_output_folder_holding_other_files_is_refused(tmp_path):
    from bearrec.errors import BearrecError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model").mkdir()
    with pytest.raises(BearrecError, match="holds 'model', which is not an evaluation output"):
        write_outputs(tmp_path / "run", [], {"item": {}})
    assert (tmp_path / "run" / "model").is_dir()
