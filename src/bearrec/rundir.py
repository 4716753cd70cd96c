"""A run directory belongs to one config and one process at a time.

`claim(run_dir, cfg, force)` is entered before anything is written into the directory: it takes an
exclusive lock (`.bearrec.lock`, `fcntl.flock`: released by the kernel however the process ends,
kill -9 included) and records the config hash in `run.json` before the first step writes anything.
A directory recorded for another config (or, for directories from before `run.json` existed, whose
`config.yaml` is another config) is refused with one line naming both hashes; `force=True`
removes what bearrec wrote there (never other files) and starts over. `run.json` also holds the
steps `bearrec run` finished (`done`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from bearrec.archive import is_archive
from bearrec.atomic import atomic_write_text
from bearrec.config import Config, flatten, from_dict, identity, resolved, to_dict
from bearrec.errors import BearrecError

LOCK = ".bearrec.lock"
# what bearrec writes into a run directory (`--force` removes these and nothing else)
OWNED = ("run.json", "config.yaml", "checkpoints", "model", "selection.json", "train_metrics.json", "metrics.json",
         "report.md", "valid_curve.png", "reference_logps.pt")
# iter-N: sprec's iterations; the dotted ones: temporary folders of a killed write
OWNED_PREFIXES = ("eval-", "pruning-", ".model.", ".eval-", "iter-")
_held: dict[Path, int] = {}  # run directories this process holds -> nesting depth


class RunDirectoryError(BearrecError):
    pass


def config_hash(cfg: Config) -> str:
    """Hash of what the run measures (`bearrec.config.identity`: paths, logging and warning-only
    settings left out, `auto` settings resolved)."""
    return hashlib.sha1(json.dumps(identity(to_dict(cfg)), sort_keys=True).encode()).hexdigest()[:12]


def _stored_config(run_dir: Path) -> Config | None:
    """The run's config.yaml as that run behaved (keys an older bearrec did not write get the
    values it used), or None when there is none or it cannot be read."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        return from_dict(resolved(yaml.safe_load(path.read_text()) or {}), source=str(path))
    except (BearrecError, yaml.YAMLError, OSError):
        return None


def _differences(old: Config | None, new: Config, most: int = 4) -> str:
    if old is None:
        return ""
    a, b = flatten(identity(to_dict(old))), flatten(identity(to_dict(new)))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:most])
    return f"; it differs in {shown}{' ...' if len(keys) > most else ''}" if keys else ""


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # other ranks of `accelerate launch` share the main one's claim


def _owned(path: Path) -> bool:
    return path.name in OWNED or path.name.startswith(OWNED_PREFIXES)


def read_state(run_dir: Path) -> dict | None:
    path = run_dir / "run.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:
        raise RunDirectoryError(f"{path}: not valid JSON; remove it or rerun with --force") from None
    if not isinstance(state, dict) or not isinstance(state.get("done", []), list):
        raise RunDirectoryError(f"{path}: not a bearrec run record; remove it or rerun with --force")
    return state


def _recorded_hash(run_dir: Path) -> str | None:
    state = read_state(run_dir)
    if state is not None:
        return state.get("config_hash")
    if (run_dir / "config.yaml").exists():  # a directory from before run.json was written first
        stored = _stored_config(run_dir)
        return config_hash(stored) if stored is not None else "unreadable"
    return None


def clear(run_dir: Path) -> None:
    """Remove what bearrec wrote into `run_dir`; anything else stays."""
    for path in run_dir.iterdir():
        if _owned(path):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def clear_results(run_dir: Path) -> None:
    """Before training from step 0: remove every result of an earlier attempt (epoch records, exported
    model, test and pruning outputs, report) and forget its finished steps; keep the identity
    (`run.json`'s hash, `config.yaml`) and caches keyed by content (`reference_logps.pt`)."""
    for path in run_dir.iterdir():
        if _owned(path) and path.name not in ("run.json", "config.yaml", "reference_logps.pt"):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    state = read_state(run_dir)
    if state is not None and state.get("done"):
        state["done"] = []
        atomic_write_text(run_dir / "run.json", json.dumps(state, indent=2) + "\n")


def has_results(run_dir: Path) -> bool:
    return any(_owned(p) and p.name not in ("run.json", "config.yaml") for p in run_dir.iterdir())


def mark(run_dir: Path, step: str) -> None:
    state = read_state(run_dir) or {"done": []}
    state["done"] = sorted(set(state.get("done", [])) | {step})
    atomic_write_text(run_dir / "run.json", json.dumps(state, indent=2) + "\n")


def _same_run_older_identity(run_dir: Path, digest: str) -> bool:
    """True when the run's own config.yaml, read by this bearrec, is this config: run.json's hash
    was computed by an older bearrec whose identity lacked settings added since (with their default,
    or their LEGACY value, they are the same experiment)."""
    stored = _stored_config(run_dir)
    return stored is not None and config_hash(stored) == digest


def same_experiment(run_dir: str | Path, cfg: Config) -> bool:
    """Whether `run_dir` (a run, or its archive) holds the experiment `cfg` describes: run.json's hash,
    or its config.yaml as this bearrec reads it (a run recorded by an older bearrec)."""
    digest = config_hash(cfg)
    try:
        return _recorded_hash(Path(run_dir)) == digest or _same_run_older_identity(Path(run_dir), digest)
    except RunDirectoryError:
        return False


@contextmanager
def claim(run_dir: str | Path, cfg: Config, force: bool = False):
    """Lock `run_dir` for this process and make sure it belongs to `cfg`; yields run.json's state."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:  # `bearrec run` holds it while `train` runs inside
        _held[run_dir] += 1
        try:
            yield read_state(run_dir)
        finally:
            _held[run_dir] -= 1
        return
    if not _is_main_process():
        yield read_state(run_dir)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: is a file; choose another output_dir")
    if is_archive(run_dir):
        raise RunDirectoryError(f"{run_dir}: an archived run (results without weights, `bearrec archive`); "
                                f"choose another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirectoryError(f"{run_dir}: another bearrec process is working in it; wait for it or choose "
                                f"another output_dir") from None
    _held[run_dir] = 1
    try:
        digest = config_hash(cfg)
        try:
            recorded = _recorded_hash(run_dir)
        except RunDirectoryError:
            if not force:
                raise
            recorded = "unreadable"
        if recorded is not None and recorded != digest and _same_run_older_identity(run_dir, digest):
            state = read_state(run_dir)  # keep its finished steps; record the hash as this bearrec computes it
            atomic_write_text(run_dir / "run.json", json.dumps({**state, "config_hash": digest}, indent=2) + "\n")
            recorded = digest
        if recorded is not None and recorded != digest:
            if not force:
                raise RunDirectoryError(
                    f"{run_dir} holds a run of another config (hash {recorded}, this one {digest})"
                    f"{_differences(_stored_config(run_dir), cfg)}; choose another output_dir, or --force to "
                    f"delete that run and start over")
            clear(run_dir)
        elif recorded is None and has_results(run_dir) and not force:
            raise RunDirectoryError(f"{run_dir} holds results of an unknown config (no run.json, no config.yaml); "
                                    f"choose another output_dir, or --force to delete them")
        elif force:
            clear(run_dir)
        state = read_state(run_dir)
        if state is None or state.get("config_hash") != digest:
            state = {"config_hash": digest, "done": []}
            atomic_write_text(run_dir / "run.json", json.dumps(state, indent=2) + "\n")
        yield state
    finally:
        del _held[run_dir]
        os.close(fd)  # releases the lock
