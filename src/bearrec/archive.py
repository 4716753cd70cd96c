"""`bearrec archive`: a finished run's results without its weights, small enough to keep in git.

A run directory of the tiny model holds tens of MB (weights, checkpoints, cached reference
log-probs); its results are a few KB: the config, the metrics, and the rank of each user's target,
which is all that `bearrec compare` and `benchmarks/reproduce.py --report-only` read. An archive
keeps the run's layout with

- every `.json`, `.yaml` and `.md` file of the run and of its sub-folders, except below `model/` and
  `checkpoints/` (weights and optimiser state) and in the temporary folders of a killed write;
  `pruning.json` without its per-user list (`users`: the aggregates PR@K and violation shares stay);
- every `predictions.jsonl` (test, reference and `bearrec evaluate` decodes) cut to `{"index",
  "rank", "user_id"}` per user and gzipped (`predictions.jsonl.gz`, which `bearrec.report.load_run` reads like
  the full file), except those of training's per-epoch validation (`eval-valid-epoch-N/`: their
  metrics.json stays; the epoch choice is recorded in the run's metrics);
- `archived.json`: where it came from (absolute path), and how many bytes were left out.

Nothing else (weights, `.pt` caches, plots, logs). The ranks are the ranks as decoded, so a table
built from archives equals the table built from the runs. An archive is not a model: commands that
load weights, and `bearrec run`, refuse it by name. Archiving a folder archives every finished run
below it (`config.yaml` and `metrics.json` present; symlinked folders followed), keeping the
relative paths; an unfinished run is skipped and named. A destination is replaced only when it is
an earlier archive (or empty): never a run or another folder. An earlier archive of the same run
(same config hash in run.json) passes on the folders the run no longer has: a run trained again
only for its weights keeps the decodes archived from its first training.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

from bearrec.atomic import atomic_directory, atomic_write_text
from bearrec.errors import BearrecError

MARKER = "archived.json"
KEPT_SUFFIXES = (".json", ".yaml", ".md")
SKIPPED_DIRS = ("model", "checkpoints")
FINISHED = ("config.yaml", "metrics.json")  # what a finished run holds
PER_USER_KEYS = {"pruning.json": "users"}  # file -> per-user key left out of the archive
EPOCH_DECODES = "eval-valid-epoch-"  # the epoch choice's decodes: metrics.json kept, predictions not


def is_archive(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def is_finished(run_dir: Path) -> bool:
    return all((run_dir / name).exists() for name in FINISHED)


def _skipped_folder(parts: tuple[str, ...]) -> bool:
    """A folder path (parts) below weights (model/, checkpoints/) or a hidden/temporary folder."""
    return any(p in SKIPPED_DIRS or p.startswith(".") for p in parts)


def slim_predictions(path: Path) -> bytes:
    """predictions.jsonl as gzipped `{"index", "rank", "user_id"}` lines (gzip mtime 0: the same input gives
    the same bytes, so re-archiving an unchanged run changes nothing in git)."""
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            p = json.loads(line)
            kept = {"index": p["index"], "rank": p["rank"]}
            if "user_id" in p:  # the bootstrap draws rows of one user id together (`bearrec.stats`)
                kept["user_id"] = p["user_id"]
            lines.append(json.dumps(kept) + "\n")
        except (ValueError, KeyError, TypeError) as e:
            raise BearrecError(f"{path}, line {n}: not a prediction with 'index' and 'rank' ({e})") from None
    return gzip.compress("".join(lines).encode(), mtime=0)


def _without_per_user(path: Path, key: str) -> bytes:
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise BearrecError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict):
        data.pop(key, None)
    return (json.dumps(data, indent=2) + "\n").encode()


def _walk(root: Path):
    """(folder, file names) below `root`, symlinked folders followed, each real folder once."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield Path(folder), sorted(files)


def _kept(rel: Path) -> str | None:
    """What to do with a file of the run: 'copy', 'slim' (predictions), 'strip' (per-user key
    removed) or None (left out)."""
    parts = rel.parts
    if _skipped_folder(parts[:-1]) or parts[-1].startswith("."):
        return None
    if parts[-1] == "predictions.jsonl":  # training's per-epoch validation decodes: their metrics only
        return None if len(parts) > 1 and parts[-2].startswith(EPOCH_DECODES) else "slim"
    if parts[-1] in PER_USER_KEYS:
        return "strip"
    return "copy" if rel.suffix in KEPT_SUFFIXES else None


def _check_destination(run_dir: Path, dest: Path) -> None:
    run, out = run_dir.resolve(), dest.resolve()
    if out == run or run in out.parents:
        raise BearrecError(f"{dest}: inside the run {run_dir}; archive it elsewhere")
    if out in run.parents:
        raise BearrecError(f"{dest}: holds the run {run_dir}, and an archive replaces its destination; "
                           "archive it elsewhere")
    if dest.exists() and not is_archive(dest) and (not dest.is_dir() or any(dest.iterdir())):
        raise BearrecError(f"{dest}: exists and is not an archive (no {MARKER}); an archive replaces its "
                           "destination whole, so give a new or empty folder")


def archive_run(run_dir: str | Path, dest: str | Path) -> dict:
    """Archive one finished run into `dest` (an earlier archive there is replaced). Returns
    archived.json's content."""
    run_dir, dest = Path(run_dir), Path(dest)
    if is_archive(run_dir):
        raise BearrecError(f"{run_dir}: already an archive (it holds {MARKER})")
    missing = [name for name in FINISHED if not (run_dir / name).exists()]
    if missing:
        raise BearrecError(f"{run_dir}: not a finished run (no {' and no '.join(missing)}); archive it once "
                           "`bearrec run` has finished")
    _check_destination(run_dir, dest)
    kept, dropped = 0, 0
    with atomic_directory(dest) as tmp:
        for folder, files in _walk(run_dir):
            for name in files:
                path = folder / name
                rel = path.relative_to(run_dir)
                action = _kept(rel)
                if action is None:
                    dropped += path.stat().st_size
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                if action == "slim":
                    data, out = slim_predictions(path), out.with_name(out.name + ".gz")
                elif action == "strip":
                    data = _without_per_user(path, PER_USER_KEYS[name])
                else:
                    data = path.read_bytes()
                out.write_bytes(data)
                kept += len(data)
                dropped += max(0, path.stat().st_size - len(data)) if action == "strip" else 0
        info = {"archived_from": str(run_dir.resolve()), "kept_bytes": kept, "left_out_bytes": dropped}
        earlier = _earlier_decodes(run_dir, dest, tmp)
        if earlier:
            info["kept_from_earlier_archive"] = earlier
        atomic_write_text(tmp / MARKER, json.dumps(info, indent=1) + "\n")
    return info


def _earlier_decodes(run_dir: Path, dest: Path, new: Path) -> list[str]:
    """The folders of an earlier archive of the same run (same config hash) that the new archive `new`
    lacks, copied into it: a run trained again for its weights (the folder was laid anew, the same seed
    gives the same run) keeps the decodes archived before (`bearrec evaluate` folders). Their names."""
    if not is_archive(dest) or _config_hash(dest) is None or _config_hash(dest) != _config_hash(run_dir):
        return []
    test = Path("eval-test") / "predictions.jsonl.gz"
    if (dest / test).exists() and (new / test).exists() and (dest / test).read_bytes() != (new / test).read_bytes():
        print(f"warning: {run_dir} trained again ranks its test users otherwise than its archive {dest}: the "
              f"folders kept from that archive are of the earlier weights", file=sys.stderr, flush=True)
    kept = []
    for folder in sorted(p for p in dest.iterdir() if p.is_dir() and not (new / p.name).exists()):
        shutil.copytree(folder, new / folder.name)
        kept.append(folder.name)
    return kept


def _config_hash(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None


def archive_tree(source: str | Path, dest: str | Path) -> tuple[list[Path], list[Path]]:
    """Archive `source` (a run, or a folder of runs at any depth) into `dest`, keeping relative
    paths. Returns (archived run dirs, unfinished run dirs skipped)."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise BearrecError(f"{source}: no such folder")
    if (source / "config.yaml").exists():
        archive_run(source, dest)
        return [source], []
    runs, archives = [], 0
    for folder, files in _walk(source):
        if "config.yaml" not in files:
            continue
        if _skipped_folder(folder.relative_to(source).parts):
            continue
        if any((a / "config.yaml").exists() for a in folder.parents if source in a.parents):
            continue  # a folder inside a run (sprec's iter-N stages are kept by the run's own archive)
        if is_archive(folder):
            archives += 1
            continue
        runs.append(folder)
    if not runs:
        found = f" (only archives: {archives})" if archives else ""
        raise BearrecError(f"{source}: no run directories (folders with config.yaml) below it{found}")
    done, skipped = [], []
    for run in runs:
        if not is_finished(run):
            skipped.append(run)
            continue
        archive_run(run, dest / run.relative_to(source))
        done.append(run)
    return done, skipped


def archive_finished(root: str | Path, archive: str | Path, out: Path) -> None:
    """Archive the run `out` of `root` (or the run holding `out`, a decode's folder) into the same
    relative path of `archive`, as soon as it has finished (`sweep.run_parallel`'s `on_finished`), so
    that a call cut off (a session's end) loses only the runs still in flight. Failure is a warning."""
    run = out if (out / "config.yaml").exists() else out.parent
    try:
        archive_run(run, Path(archive) / run.relative_to(root))
    except (BearrecError, OSError, ValueError) as e:  # never stop run_parallel: its children are running
        print(f"warning: not archived: {e}", file=sys.stderr, flush=True)


def in_archive(root: str | Path, archive: str | Path, out: Path) -> bool:
    """Whether `out` (a run of `root`, or a decode's folder inside one) finished in an earlier call and
    is in `archive` (its folder under `root` may be gone: a session's work tree is laid anew)."""
    dest = Path(archive) / out.relative_to(root)
    return (dest / "metrics.json").exists() and any(is_archive(p) for p in (dest, dest.parent))


def _archived_config(argv: list[str], dest: Path, root: Path, out: Path) -> bool:
    """Whether the archive `dest` is of the run `argv` (["run", "--config", CONFIG, *overrides]) would
    train into `out` (`rundir.same_experiment`); a config that does not load is run, to fail there with
    its reason. A run that starts from a model of `root` (a run from sft) is compared as if `root` were
    the root its archive was made from: the same sft run under another folder is the same start."""
    from bearrec.config import load_config
    from bearrec.rundir import same_experiment

    if argv[1:2] != ["--config"]:
        return True  # no config to compare
    try:
        cfg = load_config(argv[2], argv[3:])
        start = Path(cfg.model.name_or_path)
        if start.is_relative_to(root):
            made_from = Path(json.loads((dest / MARKER).read_text())["archived_from"])
            earlier_root = made_from.parents[len(out.relative_to(root).parts) - 1]
            cfg = load_config(argv[2], [*argv[3:], f"model.name_or_path={earlier_root / start.relative_to(root)}"])
        return same_experiment(dest, cfg)
    except (BearrecError, OSError, ValueError, KeyError, IndexError):
        return False


def skip_archived(runs: list[tuple], root: str | Path, archive: str | Path) -> list[tuple]:
    """(argv, out, after) items of `sweep.run_parallel` less those already in `archive` (a run: of the
    same config), except a run that a kept item starts from or decodes (trained again for its weights:
    the same seed gives the same run)."""
    runs_of = {out: argv for argv, out, _ in runs if argv[0] == "run"}
    fresh = {out for out, argv in runs_of.items()
             if in_archive(root, archive, out)
             and _archived_config(argv, Path(archive) / out.relative_to(root), Path(root), out)}
    # a decode is done when its run's archive stays (a run of another config replaces it whole)
    done = [out in fresh if out in runs_of else
            in_archive(root, archive, out) and (after not in runs_of or after in fresh) for _, out, after in runs]
    needed = {after for (_, _, after), d in zip(runs, done) if not d and after is not None}
    skipped = [str(out) for (_, out, _), d in zip(runs, done) if d and out not in needed]
    if skipped:
        print(f"in the archive already, not run again: {len(skipped)} ({', '.join(skipped)})", flush=True)
    return [item for item, d in zip(runs, done) if not d or item[1] in needed]
