"""`bearrec sweep`: a grid of `bearrec run`s (each resumable; sequential, or `--jobs N` runs at a time
in child processes), the combination chosen on validation NDCG, and one plot per swept parameter
(paper Fig. 8 style).

A `seed` key in the grid is treated as repetitions, not a parameter: each combination of the other
keys is scored by its validation NDCG averaged over the seeds, and the plots show those means.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bearrec.atomic import atomic_write_text
from bearrec.config import Config, LossConfig, load_config
from bearrec.errors import BearrecError, ConfigError


LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """`bear.lam=0.1,0.25` -> {"loss.bear.lam": ["0.1", "0.25"]}; keys may omit the `loss.` prefix."""
    grid = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        key, values = spec.split("=", 1)
        key = key.strip()
        if key.split(".")[0] in LOSS_KEYS:  # tau, name, and the sub-sections: bear., pref., cft., d2lr., igd.
            key = f"loss.{key}"
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
        if not grid[key]:
            raise ConfigError(f"--grid {spec!r}: no values")
    return grid


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _name(combo: dict[str, str]) -> str:
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in combo.items())


def sweep(config_path: str | None, grid_specs: list[str], overrides: list[str] = (), jobs: int = 1) -> dict:
    from bearrec.training import check_config

    grid = parse_grid(grid_specs)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    base: Config = load_config(config_path, list(overrides))
    runs = []
    for combo in combinations(grid):
        out = Path(base.output_dir) / _name(combo)
        run_overrides = [*overrides, *(f"{k}={v}" for k, v in combo.items()), f"output_dir={out}"]
        runs.append((combo, load_config(config_path, run_overrides), run_overrides))
    for _, cfg, _ in runs:  # every combination must be a valid config before the first one trains
        check_config(cfg)
    if jobs == 1:
        from bearrec.driver import run

        for _, cfg, _ in runs:
            run(cfg)
    else:
        config = ["--config", config_path] if config_path else []
        run_parallel([["run", *config, *o] for _, _, o in runs], [Path(c.output_dir) for _, c, _ in runs], jobs)
    rows = [_row(combo, cfg) for combo, cfg, _ in runs]
    groups = _by_setting(rows)
    chosen = max((g for g in groups if g["valid_ndcg"] is not None), key=lambda g: g["valid_ndcg"], default=None)
    result = {"grid": grid, "runs": rows, "settings": groups, "chosen_on_validation": chosen}
    root = Path(base.output_dir)
    atomic_write_text(root / "sweep.json", json.dumps(result, indent=2) + "\n")
    for key in grid:
        if key != "seed":
            plot_parameter(groups, key, root / f"sweep-{key.rsplit('.', 1)[-1]}.png")
    return result


def run_parallel(commands: list[list[str]], outs: list[Path], jobs: int, after: list[Path | None] | None = None,
                 logs: list[Path] | None = None, on_finished: Callable[[Path], None] | None = None) -> None:
    """`bearrec COMMAND...` in child processes, `jobs` at a time, each logging to OUT/run.log; CPU
    threads are split between them (OMP_NUM_THREADS, when set, is each child's count instead: several
    sweeps can share a machine). A failed run does not stop the others; this fails at the end.
    `after[i]`: the output folder of another run of this call that run i starts from (a preference
    run's sft): run i waits until that one has finished, while later runs fill the free slots; if it
    failed, run i is not started and counts as failed. A folder outside this call is not waited for.
    `logs[i]`: where run i logs instead (a command that replaces its output folder as a whole).
    `on_finished(out)`: called as each run finishes without error, before the next one is waited for."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    log_of = dict(zip(outs, logs or [out / "run.log" for out in outs]))
    pending = list(zip(commands, outs, after or [None] * len(commands)))
    active, failed = [], []

    def waiting(dep: Path | None) -> bool:
        return dep is not None and (any(dep == o for _, o, _ in pending) or any(dep == o for _, o, _ in active))

    while pending or active:
        while len(active) < jobs:
            ready = next((i for i, (_, _, dep) in enumerate(pending) if not waiting(dep)), None)
            if ready is None:
                break
            argv, out, dep = pending.pop(ready)
            if dep in failed:
                print(f"FAILED: {out} (not started: {dep}, which it starts from, failed)", flush=True)
                failed.append(out)
                continue
            log_of[out].parent.mkdir(parents=True, exist_ok=True)
            log = open(log_of[out], "ab")
            cmd = [sys.executable, "-m", "bearrec", *argv]
            active.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out, log))
        if not active:  # only runs that wait for each other: cannot happen for runs of distinct folders
            raise BearrecError("runs wait for each other: " + ", ".join(str(o) for _, o, _ in pending))
        proc, out, log = active[0]
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            active.append(active.pop(0))  # look at the next one
            continue
        active.pop(0)
        log.close()
        print(f"{'finished' if proc.returncode == 0 else 'FAILED'}: {out} (log: {log_of[out]})", flush=True)
        if proc.returncode != 0:
            failed.append(out)
        elif on_finished is not None:
            on_finished(out)
    if failed:
        raise BearrecError(f"{len(failed)} run(s) failed; see their logs: " + ", ".join(
            str(log_of[o]) if log_of[o].exists() else f"{o} (not started)" for o in failed))


def _row(combo: dict[str, str], cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    best = (metrics.get("selection") or {}).get("best") or {}
    valid = next((v for k, v in best.items() if k.startswith("valid_ndcg")), None)
    test = (metrics.get("test") or {}).get("item", {})
    k = min(cfg.train.selection_k, cfg.decode.num_beams)
    return {"params": combo, "run": str(out), "valid_ndcg": valid, "test_ndcg": test.get(f"NDCG@{k}"), "k": k}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _by_setting(rows: list[dict]) -> list[dict]:
    """Rows grouped by their parameters other than `seed`, with validation/test NDCG averaged."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple((k, v) for k, v in r["params"].items() if k != "seed"), []).append(r)
    return [{"params": dict(key), "seeds": len(members), "valid_ndcg": _mean([m["valid_ndcg"] for m in members]),
             "test_ndcg": _mean([m["test_ndcg"] for m in members]), "k": members[0]["k"],
             "runs": [m["run"] for m in members]} for key, members in groups.items()]


def _position(values: list[str]) -> tuple[dict[str, float], bool]:
    """Numeric values are plotted at their value; otherwise (e.g. loss names) at 0, 1, 2, ... (categorical)."""
    try:
        return {v: float(v) for v in values}, False
    except ValueError:
        return {v: float(i) for i, v in enumerate(dict.fromkeys(values))}, True


def plot_parameter(groups: list[dict], key: str, path: Path) -> None:
    """Validation (solid) and test (dashed) NDCG against one parameter, a line per setting of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x, categorical = _position([g["params"][key] for g in groups])
    others = list(dict.fromkeys(tuple((k, v) for k, v in g["params"].items() if k != key) for g in groups))
    for j, rest in enumerate(others):
        line = sorted(((x[g["params"][key]], g) for g in groups
                       if tuple((k, v) for k, v in g["params"].items() if k != key) == rest), key=lambda t: t[0])
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in rest) or "all"
        color = f"C{j % 10}"
        xs = [p for p, _ in line]
        ax.plot(xs, [g["valid_ndcg"] or 0 for _, g in line], "-o", color=color, label=f"valid {label}")
        ax.plot(xs, [g["test_ndcg"] or 0 for _, g in line], "--s", color=color, label=f"test {label}")
    if categorical:
        ax.set_xticks(list(x.values()), list(x))
    k = groups[0]["k"] if groups else 10
    seeds = max((g["seeds"] for g in groups), default=1)
    ax.set_xlabel(key.rsplit(".", 1)[-1])
    ax.set_ylabel(f"NDCG@{k}" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
