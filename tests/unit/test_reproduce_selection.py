"""benchmarks/reproduce.py: lambda/xi candidates are compared on the seeds all of them finished."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
