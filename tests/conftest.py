"""Shared fixtures: hand-written datasets in the authors' format and tiny tokenizers/models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")

TITLES = {1: "Red Pen", 2: "Blue Pen", 3: "Stapler", 4: "Red Pen", 5: "Paper Clips", 6: "Red Pen Refill"}


def write_authors(folder: Path, titles=TITLES, train=None, test=None, valid=None) -> Path:
    """A small dataset in the authors' format. Rows are (user, [ids...], timestamp)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id2name4Rec.json").write_text(json.dumps({str(k): v for k, v in titles.items()}))
    train = train if train is not None else [
        ("u1", [1, 2, 3], 100), ("u2", [2, 3, 5], 300), ("u3", [5, 6, 1], 200),
        ("u4", [3, 5, 6, 2], 500), ("u1", [2, 3, 4], 400), ("u5", [6, 1, 2], 250),
        ("u6", [1, 5, 3], 600), ("u7", [4, 4, 6], 50), ("u8", [2, 6, 5], 350)]
    test = test if test is not None else [("u1", [3, 4, 6], 700), ("u9", [5, 2, 1], 800)]
    for name, rows in (("train.csv", train), ("test.csv", test), ("valid.csv", valid)):
        if rows is None:
            continue
        lines = ["user_id,item_ids,timestamp"] + [f'{u},"{json.dumps(ids)}",{ts}' for u, ids, ts in rows]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def authors_dir(tmp_path) -> Path:
    return write_authors(tmp_path / "Tiny")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's cache; the prepared-data/model cache is shared per session."""
    if not os.environ.get("BEARREC_CACHE_DIR"):
        monkeypatch.setenv("BEARREC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are not a package)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:  # as when the script runs: its siblings importable (reproduce_report)
        sys.path.insert(0, str(folder))
    script = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_shared_data(name: str):
    return pytest.mark.skipif(not (SHARED_DATA / name).is_dir(), reason=f"{SHARED_DATA / name} not present")


@pytest.fixture(scope="session")
def title_tokenizer():
    """A byte-level BPE tokenizer trained on a few titles and prompt phrases."""
    from bearrec.data.prompts import DOMAINS
    from bearrec.modeling import train_bpe_tokenizer

    texts = [*TITLES.values(), *[a + b for a, b in DOMAINS.values()], "### Response:\n", "History: Next:\n"]
    return train_bpe_tokenizer(texts * 5, vocab_size=400)


def write_tiny_run(root: Path, decode: dict) -> Path:
    """An untrained tiny model saved as a run directory (`model/` + config.yaml) over `write_authors`."""
    import yaml

    from bearrec.config import TinyModelConfig
    from bearrec.modeling import build_tiny, save_pretrained

    data = write_authors(root / "Shop")
    tiny = TinyModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model, tok = build_tiny(tiny, list(TITLES.values()) * 3 + ['History: "a"\nNext:\n'], seed=0)
    run = root / "run"
    save_pretrained(model, tok, run / "model")
    cfg = {"seed": 3, "data": {"name": str(data), "valid_fraction": 0.0}, "prompt": {"template": "compact"},
           "decode": decode}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run
