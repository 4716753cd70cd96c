"""Recommendations for histories, and evaluation of a split: predictions.jsonl + metrics.json.

Under `accelerate launch`, users are split across processes and gathered on the main process,
which writes the same files (and the same metrics) as a single process.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bearrec.atomic import atomic_directory
from bearrec.config import PRESETS, DecodeConfig
from bearrec.data.catalogue import Example
from bearrec.data.encode import Encoder
from bearrec.decoding import beam_search_softmaxes
from bearrec.errors import BearrecError, ConfigError
from bearrec.metrics import item_rank, summarize, title_rank


@dataclass
class Recommendation:
    titles: list[str]
    items: list[tuple[int, ...]]  # item ids per rank (several where titles are duplicated)
    scores: list[float]


class Recommender:
    def __init__(self, model, encoder: Encoder, decode: DecodeConfig, train_targets: list[int] | None = None):
        """`train_targets`: the target item of every training row, which IGD's decoding rule
        (`decode.igd_alpha`) reads; `for_run` passes the run's own."""
        self.token_weights = None
        if decode.igd_alpha is not None:
            if train_targets is None:
                raise BearrecError("decode.igd_alpha (IGD's decoding rule) needs the training targets its "
                                   "information gain is counted from")
            from bearrec.popularity import TargetCounts

            self.token_weights = TargetCounts(encoder.trie, train_targets).decoding_weights(decode.igd_alpha)
        device = distributed_state().device  # this process's GPU when there is one, else the CPU
        if next(model.parameters()).device != device:
            model = model.to(device)
        self.model, self.encoder, self.decode = model.eval(), encoder, decode
        self.pad_token_id = encoder.tokenizer.pad_token_id or 0
        self._titles = {node: encoder.catalogue.title(items[0]) for node, items in encoder.trie.terminal_items.items()}
        self._node_of = {item: node for node, items in encoder.trie.terminal_items.items() for item in items}

    @classmethod
    def for_run(cls, model, encoder: Encoder, cfg, dataset) -> "Recommender":
        """The recommender of a run's config: its decode settings, and (for IGD's decoding rule)
        the targets of the rows it trains on."""
        targets = None
        if cfg.decode.igd_alpha is not None:
            targets = [r.target for r in training_rows(dataset, cfg.train.max_train_examples)]
        return cls(model, encoder, cfg.decode, targets)

    def autocast(self):
        if self.decode.autocast == "bfloat16":
            return torch.autocast("cuda" if next(self.model.parameters()).is_cuda else "cpu", dtype=torch.bfloat16)
        return nullcontext()

    def recommend(self, histories: list[tuple[int, ...]], progress: bool = False,
                  on_batch: Callable[[list[int], list[Recommendation]], None] | None = None) -> list[Recommendation]:
        """Top-B titles per history; `on_batch(positions, recommendations)` after each decoded batch."""
        each = None if on_batch is None else (lambda positions, recs: on_batch(positions, recs[0]))
        return self.recommend_each(histories, (self.decode.constrained_softmax,), progress, each)[0]

    def recommend_each(self, histories: list[tuple[int, ...]], softmaxes: tuple[bool, ...], progress: bool = False,
                       on_batch: Callable[[list[int], list[list[Recommendation]]], None] | None = None
                       ) -> list[list[Recommendation]]:
        """`recommend` under each softmax of `softmaxes` (`decode.constrained_softmax` values), a batch's
        prompts prefilled once for all (`bearrec.decoding.beam_search_softmaxes`): a list per softmax;
        `on_batch(positions, [recommendations per softmax])` after each decoded batch."""
        prompts = [self.encoder.prompt_ids(h) for h in histories]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
        out: list[list[Recommendation | None]] = [[None] * len(prompts) for _ in softmaxes]
        bs = self.decode.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        with self.autocast():
            for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress):
                ranked_each = beam_search_softmaxes(
                    self.model, self.encoder.trie, [prompts[i] for i in batch], self.decode.num_beams, softmaxes,
                    length_penalty=self.decode.length_penalty, pad_token_id=self.pad_token_id,
                    ghost_threshold=self.decode.ghost_threshold, token_weights=self.token_weights,
                    excluded=self.excluded([histories[i] for i in batch]))
                for recs, ranked in zip(out, ranked_each):
                    for i, r in zip(batch, ranked):
                        recs[i] = Recommendation([self._titles[n] for n in r.nodes],
                                                 [self.encoder.trie.items_at(n) for n in r.nodes], r.scores)
                if on_batch is not None:
                    on_batch(batch, [[recs[i] for i in batch] for recs in out])
        return out

    def excluded(self, histories: list[tuple[int, ...]]) -> list[list[int]] | None:
        """Per history, the trie nodes of its items' titles, which `decode.exclude_history` never
        returns (an item sharing such a title goes with it); None when it is off."""
        if not self.decode.exclude_history:
            return None
        return [sorted({self._node_of[i] for i in h if i in self._node_of}) for h in histories]


def distributed_state():
    """accelerate's process state; on a machine without CUDA, several processes (torchrun) use gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


SUBSET_SEED = 0  # every subset (train sample, validation and test users) is the same for all runs and seeds


def seeded_subset(n: int, limit: int | None, seed: int = SUBSET_SEED) -> list[int]:
    """Sorted indices of a fixed random subset of `limit` out of `n` (all when limit is None).
    The default seed is shared by every run, so runs can be compared user by user."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    return sorted(random.Random(seed).sample(range(n), limit))


def training_rows(dataset, max_train_examples: int | None) -> list[Example]:
    """The rows a run trains on: all of the train split, or its seeded subsample."""
    return [dataset.train[i] for i in seeded_subset(len(dataset.train), max_train_examples)]


def prediction_record(example: Example, index: int, rec: Recommendation, catalogue) -> dict:
    target_title = catalogue.title(example.target)
    return {"index": index, "user_id": example.user_id, "history": list(example.history), "target": example.target,
            "target_title": target_title, "rank": item_rank(rec.items, example.target),
            "title_rank": title_rank(rec.titles, target_title),
            "items": [list(i) for i in rec.items], "titles": rec.titles, "scores": rec.scores}


def evaluate(recommender: Recommender, examples: list[Example], indices: list[int] | None = None,
             progress: bool = True, partial: str | Path | None = None, model: str = "") -> tuple[list[dict], dict]:
    """Decode `examples[indices]` (all by default); returns (predictions, metrics) on every process.
    `partial` (one process only): a file the records of each decoded batch are appended to, after a
    first line naming `model`, the decoding and the users; users whose records it already holds
    under the same first line (an evaluation cut off earlier) are not decoded again (the rest are
    batched anew: their scores equal an uninterrupted decode's to rounding); another first line and
    the file starts over. The caller deletes it once the outputs are written."""
    return evaluate_each(recommender, examples, indices, (recommender.decode.constrained_softmax,), progress,
                         [partial], model)[0]


def evaluate_each(recommender: Recommender, examples: list[Example], indices: list[int] | None,
                  softmaxes: tuple[bool, ...], progress: bool = True, partials: list | None = None,
                  model: str = "") -> list[tuple[list[dict], dict]]:
    """`evaluate` under each softmax of `softmaxes` (the recommender's decoding otherwise), every batch
    prefilled once for all (`Recommender.recommend_each`): (predictions, metrics) per softmax. `partials`:
    one file per softmax (as `evaluate`'s `partial`); a user is decoded again unless every file holds it."""
    from accelerate.utils import gather_object

    if partials is not None and len(partials) != len(softmaxes):
        raise ValueError(f"{len(partials)} partial files for {len(softmaxes)} softmaxes")
    indices = list(range(len(examples))) if indices is None else indices
    decodes = [dataclasses.replace(recommender.decode, constrained_softmax=s) for s in softmaxes]
    state = distributed_state()
    catalogue = recommender.encoder.catalogue

    def records(positions, recs) -> list[dict]:
        return [prediction_record(examples[i], i, r, catalogue) for i, r in zip(positions, recs)]

    def results(preds_each: list[list[dict]]) -> list[tuple[list[dict], dict]]:
        ordered = [sorted(preds, key=lambda p: p["index"]) for preds in preds_each]
        return [(preds, metrics_of(preds, decode)) for preds, decode in zip(ordered, decodes)]

    if partials is not None and all(p is not None for p in partials) and state.num_processes == 1:
        headers = [json.dumps({"partial_of": model, **{k: getattr(d, k) for k in DECODING_KEYS},
                               **recorded_exclusion(d), "users": len(indices), "first": indices[:1],
                               "last": indices[-1:]}) for d in decodes]
        done = [read_records(p, PREDICTION_KEYS, h) for p, h in zip(partials, headers)]
        todo = [i for i in indices if any(i not in d for d in done)]
        with ExitStack() as stack:
            outs = [stack.enter_context(Path(p).open("a" if d else "w", encoding="utf-8"))
                    for p, d in zip(partials, done)]
            for out, header, d in zip(outs, headers, done):
                if not d:
                    out.write(header + "\n")

            def append(positions: list[int], recs_each: list[list[Recommendation]]) -> None:
                for out, recs in zip(outs, recs_each):
                    append_records(out, records([todo[j] for j in positions], recs))

            recs_each = recommender.recommend_each([examples[i].history for i in todo], softmaxes, progress=progress,
                                                   on_batch=append)
        return results([list({**d, **{p["index"]: p for p in records(todo, recs)}}.values())
                        for d, recs in zip(done, recs_each)])
    with state.split_between_processes(indices) as mine:
        recs_each = recommender.recommend_each([examples[i].history for i in mine], softmaxes,
                                               progress=progress and state.is_main_process)
        preds_each = [records(mine, recs) for recs in recs_each]
    if state.num_processes > 1:
        preds_each = [gather_object(preds) for preds in preds_each]
    return results(preds_each)


def softmaxes_for(decode: DecodeConfig, other: bool, setting: str) -> tuple[bool, ...]:
    """The softmaxes (`constrained_softmax` values) to decode with: `decode`'s, then, with `other`, the
    other one; a preset that fixes the softmax refuses the other (ConfigError naming `setting`)."""
    if not other:
        return (decode.constrained_softmax,)
    if "constrained_softmax" in PRESETS[decode.preset]:
        raise ConfigError(f"{setting}: decode.preset {decode.preset} fixes the softmax; decode with another preset "
                          "to have both")
    return decode.constrained_softmax, not decode.constrained_softmax


def other_softmax_folder(decode: DecodeConfig, base: str = "eval-test") -> str:
    """Where the decode with the softmax `decode` does not use goes, beside the folder `base` of
    `decode`'s own (`analysis.other_softmax`, `bearrec evaluate --other-softmax`)."""
    return f"{base}-{'vocab' if decode.constrained_softmax else 'valid'}-softmax"


def test_decode(recommender: Recommender, cfg, examples: list[Example], indices: list[int], run_dir: Path,
                extra: dict) -> None:
    """A run's test decode: `eval-test/`, and with `analysis.other_softmax` the other softmax's folder
    (`other_softmax_folder`) from the same prefills; resumable from a partial file beside each; `extra`
    is added to every metrics.json (written by the main process)."""
    folders = ["eval-test", *([other_softmax_folder(cfg.decode)] if cfg.analysis.other_softmax else [])]
    partials = [run_dir / f"{f}.partial.jsonl" for f in folders]
    results = evaluate_each(recommender, examples, indices,
                            softmaxes_for(cfg.decode, cfg.analysis.other_softmax, "analysis.other_softmax"),
                            partials=partials)
    if distributed_state().is_main_process:
        for folder, partial, (preds, metrics) in zip(folders, partials, results):
            write_outputs(run_dir / folder, preds, {**metrics, **extra})
            partial.unlink(missing_ok=True)


def metrics_of(preds: list[dict], decode: DecodeConfig) -> dict:
    ks = [k for k in decode.ks if k <= decode.num_beams]
    return {"num_users": len(preds), "num_beams": decode.num_beams,
            "constrained_softmax": decode.constrained_softmax, "length_penalty": decode.length_penalty,
            "ghost_threshold": decode.ghost_threshold, "igd_alpha": decode.igd_alpha, "preset": decode.preset,
            **recorded_exclusion(decode),
            "item": summarize([p["rank"] for p in preds], ks),
            "title": summarize([p["title_rank"] for p in preds], ks)}


def recorded_exclusion(decode: DecodeConfig) -> dict:
    """`exclude_history` as an evaluation records it: only when on, so the outputs and partial files
    of every decoding without it read as before the setting existed."""
    return {"exclude_history": True} if decode.exclude_history else {}


PREDICTION_KEYS = ("index", "rank", "title_rank", "items", "titles", "scores")


def read_records(path: str | Path, keys, header: str | None = None) -> dict[int, dict]:
    """{index: record} from a file of JSON lines appended as work finished (`append_records`; with
    `header`, only when the first line is it, else nothing). A line cut off by a killed process, or
    anything that is not a record holding `keys`, is skipped (that user is done again)."""
    out: dict[int, dict] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    if header is not None:
        if not lines or lines[0] != header:
            return out
        lines = lines[1:]
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and set(keys) <= set(record):
            out[record["index"]] = record
    return out


def append_records(out, records: list[dict]) -> None:
    """Append JSON lines to the open file `out` and flush them: a process killed later keeps them."""
    out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out.flush()


DECODING_KEYS = ("num_beams", "constrained_softmax", "length_penalty", "ghost_threshold", "igd_alpha", "preset")


def stored_recommendations(folder: str | Path, indices: list[int], decode: DecodeConfig) -> list[Recommendation] | None:
    """The recommendations an evaluation folder (`write_outputs`) holds for the users `indices`, in
    that order, when its metrics say it decoded as `decode` does (beams, softmax, length penalty,
    ghost threshold, IGD alpha, preset, history excluded); None when the folder is missing or
    unreadable, decoded otherwise, or lacks one of the users."""
    folder = Path(folder)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        if not isinstance(metrics, dict) or any(metrics.get(k, "missing") != getattr(decode, k) for k in DECODING_KEYS):
            return None
        if metrics.get("exclude_history", False) != decode.exclude_history:  # written only when on
            return None
        records = {p["index"]: p for p in map(json.loads, lines)}
        if any(i not in records for i in indices):
            return None
        return [Recommendation(list(records[i]["titles"]), [tuple(items) for items in records[i]["items"]],
                               list(records[i]["scores"])) for i in indices]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_outputs(out_dir: str | Path, preds: list[dict], metrics: dict) -> None:
    """`predictions.jsonl` and `metrics.json` replace the folder's old pair together (one folder
    rename), so a killed process never leaves new predictions beside old metrics. A folder holding
    anything else is refused (it would be replaced whole)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        other = sorted(p.name for p in out_dir.iterdir() if p.name not in ("predictions.jsonl", "metrics.json"))
        if other:
            raise BearrecError(f"{out_dir}: holds {other[0]!r}, which is not an evaluation output; choose another "
                               f"output folder (it would be replaced)")
    elif out_dir.exists():
        raise BearrecError(f"{out_dir}: is a file; choose another output folder")
    with atomic_directory(out_dir) as tmp:
        (tmp / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds),
                                               encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def format_table(metrics: dict) -> str:
    keys = list(metrics["item"])
    lines = ["level | " + " | ".join(keys), "---|" + "---|" * len(keys)]
    for level in ("item", "title"):
        lines.append(f"{level} | " + " | ".join(f"{metrics[level][k]:.4f}" for k in keys))
    return "\n".join(lines)
