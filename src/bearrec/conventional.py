"""Conventional sequential recommenders as reference rows: SASRec (Kang and McAuley, ICDM 2018)
through cornac, trained on exactly the run's training rows and evaluated on exactly its test users
with bearrec's metrics, so `bearrec compare` puts it beside the LLM methods.

Each training row (history + target) is one cornac session; SASRec learns its standard objective,
the next item at every position of the session (the LLM methods learn the row's target only).
Items never seen in those rows have no embedding: they are never recommended, and a test target
among them is a miss (as it is for popularity). History items SASRec has not seen are dropped from
its input. `pip install -r requirements-conventional.txt` (cornac 3.x) provides it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bearrec.config import Config, save_config
from bearrec.errors import BearrecError


def _cornac():
    try:
        import cornac
    except ImportError:
        raise BearrecError("loss.name=sasrec needs cornac: pip install -r requirements-conventional.txt") from None
    return cornac


def sessions_of(rows) -> list[tuple[str, str, int]]:
    """cornac's SIT tuples (session, item, position) of training rows: row r's items in order."""
    return [(str(r), str(item), t) for r, row in enumerate(rows) for t, item in enumerate((*row.history, row.target))]


def fit_sasrec(rows, settings, seed: int):
    cornac = _cornac()
    from cornac.data import SequentialDataset
    from cornac.models import SASRec

    train = SequentialDataset.build(sessions_of(rows), fmt="SIT", seed=seed)
    model = SASRec(embedding_dim=settings.embedding_dim, num_blocks=settings.num_blocks, num_heads=settings.num_heads,
                   dropout=settings.dropout, max_len=settings.max_len, n_epochs=settings.epochs,
                   batch_size=settings.batch_size, learning_rate=settings.learning_rate, n_sample=settings.n_sample,
                   seed=seed, verbose=False)
    del cornac
    return model.fit(train)


def top_items(model, history: tuple[int, ...], k: int) -> tuple[list[int], list[float]]:
    """The `k` highest-scoring item ids for a history (ties: the smaller cornac index first)."""
    iid_map = model.train_set.iid_map
    known = [iid_map[str(i)] for i in history if str(i) in iid_map]
    scores = np.asarray(model.score(None, known), dtype=float)[: len(iid_map)]
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    ids = model.train_set.item_ids
    return [int(ids[j]) for j in order], [float(scores[j]) for j in order]


def train_sasrec(cfg: Config) -> None:
    """`bearrec run` for `loss.name: sasrec`: fit on the run's training rows, decode its test users,
    write `config.yaml`, `eval-test/` and `train_metrics.json` into `cfg.output_dir`."""
    import time

    from bearrec.data import load_dataset
    from bearrec.evaluation import Recommendation, metrics_of, prediction_record, seeded_subset, training_rows, write_outputs

    _cornac()
    run_dir = Path(cfg.output_dir)
    dataset = load_dataset(cfg.data)
    rows = training_rows(dataset, cfg.train.max_train_examples)
    save_config(cfg, run_dir)
    start = time.perf_counter()
    model = fit_sasrec(rows, cfg.loss.sasrec, cfg.seed)
    seconds = time.perf_counter() - start
    k, catalogue = cfg.decode.num_beams, dataset.catalogue
    preds = []
    for i in seeded_subset(len(dataset.test), cfg.train.test_users):
        items, scores = top_items(model, dataset.test[i].history, k)
        rec = Recommendation([catalogue.title(item) for item in items], [(item,) for item in items], scores)
        preds.append(prediction_record(dataset.test[i], i, rec, catalogue))
    metrics = metrics_of(preds, cfg.decode)
    metrics["reference"] = {"name": "sasrec", "library": f"cornac {_cornac().__version__}"}
    write_outputs(run_dir / "eval-test", preds, metrics)
    (run_dir / "train_metrics.json").write_text(json.dumps({
        "train_runtime_s": seconds, "seconds_per_epoch": seconds / cfg.loss.sasrec.epochs, "epochs_this_process":
        cfg.loss.sasrec.epochs, "resumed": False, "num_train_examples": len(rows), "global_steps": None,
        "train_loss": None}, indent=2) + "\n")
