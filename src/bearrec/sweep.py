"""`bearrec sweep`: a grid of `bearrec run`s (sequential, each resumable), the combination chosen on
validation NDCG, and one plot per swept parameter (paper Fig. 8 style)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from bearrec.atomic import atomic_write_text
from bearrec.config import Config, load_config
from bearrec.errors import ConfigError


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """`bear.lam=0.1,0.25` -> {"loss.bear.lam": ["0.1", "0.25"]}; keys may omit the `loss.` prefix."""
    grid = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        key, values = spec.split("=", 1)
        key = key.strip()
        if key.startswith("bear.") or key in ("tau", "name"):
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


def sweep(config_path: str | None, grid_specs: list[str], overrides: list[str] = ()) -> dict:
    from bearrec.driver import run
    from bearrec.training import check_config

    grid = parse_grid(grid_specs)
    base: Config = load_config(config_path, list(overrides))
    runs = []
    for combo in combinations(grid):
        out = Path(base.output_dir) / _name(combo)
        cfg = load_config(config_path, [*overrides, *(f"{k}={v}" for k, v in combo.items()), f"output_dir={out}"])
        runs.append((combo, cfg, out))
    for _, cfg, _ in runs:  # every combination must be a valid config before the first one trains
        check_config(cfg)
    rows = []
    for combo, cfg, out in runs:
        run(cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        best = (metrics.get("selection") or {}).get("best") or {}
        valid = next((v for k, v in best.items() if k.startswith("valid_ndcg")), None)
        test = (metrics.get("test") or {}).get("item", {})
        k = min(cfg.train.selection_k, cfg.decode.num_beams)
        rows.append({"params": combo, "run": str(out), "valid_ndcg": valid, "test_ndcg": test.get(f"NDCG@{k}"),
                     "k": k})
    scored = [r for r in rows if r["valid_ndcg"] is not None]
    result = {"grid": grid, "runs": rows, "chosen_on_validation": max(scored, key=lambda r: r["valid_ndcg"])
              if scored else None}
    root = Path(base.output_dir)
    atomic_write_text(root / "sweep.json", json.dumps(result, indent=2) + "\n")
    for key in grid:
        plot_parameter(rows, key, root / f"sweep-{key.rsplit('.', 1)[-1]}.png")
    return result


def plot_parameter(rows: list[dict], key: str, path: Path) -> None:
    """Validation (solid) and test (dashed) NDCG against one parameter, a line per setting of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    others = sorted({tuple((k, v) for k, v in r["params"].items() if k != key) for r in rows})
    for j, rest in enumerate(others):
        line = sorted((float(r["params"][key]), r) for r in rows
                      if tuple((k, v) for k, v in r["params"].items() if k != key) == rest)
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in rest) or "all"
        color = f"C{j % 10}"
        xs = [x for x, _ in line]
        ax.plot(xs, [r["valid_ndcg"] or 0 for _, r in line], "-o", color=color, label=f"valid {label}")
        ax.plot(xs, [r["test_ndcg"] or 0 for _, r in line], "--s", color=color, label=f"test {label}")
    k = rows[0]["k"] if rows else 10
    ax.set_xlabel(key.rsplit(".", 1)[-1])
    ax.set_ylabel(f"NDCG@{k}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
