"""`bearrec archive`: a finished run's results without its weights, small enough to keep in git.

A run directory of the tiny model holds tens of MB (weights, checkpoints, cached reference
log-probs, every validation decode); its results are a few KB: the config, the metrics, and the
rank of each test user's target, which is all that `bearrec compare` and `benchmarks/reproduce.py
--report-only` read. An archive keeps the run's layout with

- every `.json`, `.yaml` and `.md` file of the run and of its sub-folders, except below `model/` and
  `checkpoints/` (weights and optimiser state) and in the temporary folders of a killed write;
- each `predictions.jsonl` of a test decoding (`eval-test*/`) and of a reference row (`ref-*/`),
  cut to `{"index", "rank"}` per user and gzipped (`predictions.jsonl.gz`, which
  `bearrec.report.load_run` reads like the full file); validation decodes keep their metrics only;
- `archived.json`: where it came from, and how many bytes were left out.

Nothing else (weights, `.pt` caches, plots). The ranks are the ranks as decoded, so a table built from
archives equals the table built from the runs. An archive is not a model: commands that load weights
refuse it by name. Archiving a folder archives every finished run below it (`run.json` and
`metrics.json` present), keeping the relative paths; an unfinished run is skipped and named.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from bearrec.atomic import atomic_directory, atomic_write_text
from bearrec.errors import BearrecError

MARKER = "archived.json"
KEPT_SUFFIXES = (".json", ".yaml", ".md")
SKIPPED_DIRS = ("model", "checkpoints")
RANKED_PREFIXES = ("eval-test", "ref-")


def is_archive(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").exists() and (run_dir / "metrics.json").exists()


def slim_predictions(path: Path) -> bytes:
    """predictions.jsonl as gzipped `{"index", "rank"}` lines (no timestamp: the same input gives
    the same bytes, so re-archiving an unchanged run changes nothing in git)."""
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            p = json.loads(line)
            lines.append(json.dumps({"index": p["index"], "rank": p["rank"]}) + "\n")
        except (ValueError, KeyError, TypeError) as e:
            raise BearrecError(f"{path}, line {n}: not a prediction with 'index' and 'rank' ({e})") from None
    return gzip.compress("".join(lines).encode(), mtime=0)


def _kept(rel: Path) -> str | None:
    """What to do with a file of the run: 'copy', 'slim' (ranked predictions) or None (left out)."""
    parts = rel.parts
    if any(p in SKIPPED_DIRS or p.startswith(".") for p in parts[:-1]) or parts[-1].startswith("."):
        return None
    if parts[-1] == "predictions.jsonl":
        return "slim" if any(p.startswith(RANKED_PREFIXES) for p in parts[:-1]) else None
    return "copy" if rel.suffix in KEPT_SUFFIXES else None


def archive_run(run_dir: str | Path, dest: str | Path) -> dict:
    """Archive one finished run into `dest` (replaced whole if it exists). Returns archived.json's content."""
    run_dir, dest = Path(run_dir), Path(dest)
    if is_archive(run_dir):
        raise BearrecError(f"{run_dir}: already an archive (it holds {MARKER})")
    if not is_finished(run_dir):
        raise BearrecError(f"{run_dir}: not a finished run (no config.yaml and metrics.json); "
                           "archive it once `bearrec run` has finished")
    if dest.resolve() == run_dir.resolve() or run_dir.resolve() in dest.resolve().parents:
        raise BearrecError(f"{dest}: inside the run {run_dir}; archive it elsewhere")
    kept, dropped = 0, 0
    with atomic_directory(dest) as tmp:
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(run_dir)
            action = _kept(rel)
            if action is None:
                dropped += path.stat().st_size
                continue
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            data = slim_predictions(path) if action == "slim" else path.read_bytes()
            (out.with_name(out.name + ".gz") if action == "slim" else out).write_bytes(data)
            kept += len(data)
        info = {"archived_from": str(run_dir), "kept_bytes": kept, "left_out_bytes": dropped}
        atomic_write_text(tmp / MARKER, json.dumps(info, indent=1) + "\n")
    return info


def archive_tree(source: str | Path, dest: str | Path) -> tuple[list[Path], list[Path]]:
    """Archive `source` (a run, or a folder of runs at any depth) into `dest`, keeping relative
    paths. Returns (archived run dirs, unfinished run dirs skipped)."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise BearrecError(f"{source}: no such folder")
    if (source / "config.yaml").exists():
        archive_run(source, dest)
        return [source], []
    done, skipped = [], []
    for cfg in sorted(source.rglob("config.yaml")):
        run = cfg.parent
        rel = run.relative_to(source)
        if any(p in SKIPPED_DIRS or p.startswith(".") for p in rel.parts) or is_archive(run) \
                or any((a / "config.yaml").exists() for a in run.parents if source in a.parents):
            continue  # a folder inside a run (sprec's iter-N stages are kept by the run's own archive)
        if not is_finished(run):
            skipped.append(run)
            continue
        archive_run(run, dest / rel)
        done.append(run)
    if not done and not skipped:
        raise BearrecError(f"{source}: no run directories (folders with config.yaml) below it")
    return done, skipped
