"""A trained model with what it needs to be used: `load_run`, the one way every command (evaluate,
recommend, serve, analyze, the driver's pruning step, benchmarks) turns a run directory or a model
path into a `Recommender`.

A run directory (it holds `config.yaml`) contributes its resolved config (data, prompt, decoding)
and its exported `model/`; any other value is a model path or id (a Hub id, a local folder,
`smollm2-135m`) read with `config` or the defaults. Overrides apply on top in both cases.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from bearrec.archive import MARKER, is_archive
from bearrec.config import Config, ModelConfig, load_config
from bearrec.errors import BearrecError


@dataclass
class LoadedRun:
    cfg: Config  # with model.name_or_path set to the weights that were loaded
    dataset: object  # bearrec.data.catalogue.Dataset
    recommender: object  # bearrec.evaluation.Recommender

    @property
    def encoder(self):
        return self.recommender.encoder

    @property
    def model(self):
        return self.recommender.model


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").exists()


def exported(path: str | Path, model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg` reading the weights saved at `path` (a run's `model/`: full weights, or base + LoRA
    adapter) as they are: no new adapters."""
    return dataclasses.replace(model_cfg, name_or_path=str(path),
                               lora=dataclasses.replace(model_cfg.lora, enabled=False))


def load_exported(path: str | Path, model_cfg: ModelConfig):
    """The weights saved at `path`, in `model_cfg`'s dtype (`exported`)."""
    from bearrec.modeling import load_model

    model, _ = load_model(exported(path, model_cfg))
    return model


def load_run(model: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
             check: Callable[[Config, object], object] | None = None) -> LoadedRun:
    """Config, dataset, encoder, model and recommender for a run directory or a model path/id.
    `check(cfg, dataset)` runs before any weights load, so bad input fails fast."""
    from bearrec.data import load_dataset
    from bearrec.data.encode import build_encoder
    from bearrec.evaluation import Recommender
    from bearrec.modeling import load_model

    run = Path(model)
    if is_archive(run):
        try:
            origin = json.loads((run / MARKER).read_text())["archived_from"]
        except (ValueError, KeyError, TypeError, OSError):
            origin = f"unknown: {run / MARKER} does not say"
        raise BearrecError(f"{run}: an archived run (its results without weights, `bearrec archive`); "
                           f"use the run it came from ({origin})")
    config_path = config or (run / "config.yaml" if is_run_dir(run) else None)
    cfg = load_config(config_path, list(overrides))
    weights = run / "model" if (run / "model").is_dir() else model
    dataset = load_dataset(cfg.data)  # data errors surface before the model is loaded
    if check is not None:
        check(cfg, dataset)
    cfg.model = exported(weights, cfg.model)
    loaded, tokenizer = load_model(cfg.model)
    encoder = build_encoder(cfg.prompt, dataset, tokenizer, loaded)
    return LoadedRun(cfg, dataset, Recommender.for_run(loaded, encoder, cfg, dataset))
