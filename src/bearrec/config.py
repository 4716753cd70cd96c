"""Typed configuration: YAML files into dataclasses, `a.b=c` overrides, unknown keys rejected.

Every setting that changes a result lives here, so a run directory's `config.yaml` (written by
`save_config`) is enough to reproduce it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from bearrec.atomic import atomic_write_text
from bearrec.errors import ConfigError


@dataclass
class PrepareConfig:
    """The paper's protocol for raw interaction sources (MovieLens, Amazon dumps, generic CSV)."""

    k_core: int = 5  # iterative: every user and item keeps at least k interactions
    max_history: int = 10  # sliding window of max_history + 1 (history + target)
    min_history: int = 4  # the authors' released files start windows at 4 history items
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # chronological, by target time


@dataclass
class DataConfig:
    name: str = "movielens-1m"  # office|book|toy|clothing|movielens-1m|movielens-100k or a folder
    data_dir: Optional[str] = None  # where named Amazon datasets live (else $BEARREC_DATA_DIR, cache)
    train_file: str = "auto"  # auto: train_10000.csv when present (the paper's sample), else train.csv
    valid_fraction: float = 1 / 9  # validation size as a share of the training rows (when no valid.csv)
    # auto: held_out when training on a sample beside train.csv (the latest rows of train.csv outside the
    # sample, so all of the sample trains), else carve (the latest rows of the training file itself)
    validation: Literal["auto", "held_out", "carve"] = "auto"
    on_empty_title: Literal["error", "drop"] = "error"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


@dataclass
class PromptConfig:
    template: Literal["alpaca", "compact"] = "alpaca"
    domain: Optional[str] = None  # phrase preset (office, book, movie, ...); None: from the dataset name
    instruction: Optional[str] = None  # overrides the preset's instruction
    history_prefix: Optional[str] = None  # overrides the preset's history phrase
    max_history_items: Optional[int] = None  # keep only the latest N history titles
    max_title_words: Optional[int] = None  # cut history titles (compact prompts for small models)
    max_title_tokens: Optional[int] = 256  # a target title (EOS included) longer than this is reported
    # a title over max_title_tokens, or an example longer than the model's positions: warn (one line) or error
    on_too_long: Literal["warn", "error"] = "warn"


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TinyModelConfig:
    """A from-scratch model with a BPE tokenizer trained on the dataset's own text."""

    architecture: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = 4000
    hidden_size: int = 192
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m"  # hub id, local folder, "smollm2-135m" (packaged) or "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DecodeConfig:
    """Constrained beam search (METHOD.md section 5, DESIGN.md decisions 2-4)."""

    num_beams: int = 10  # B; B distinct catalogue items come back per user
    constrained_softmax: bool = True  # softmax over trie-valid tokens (MSL/BEAR) vs whole vocabulary (SFT)
    length_penalty: float = 1.0  # HF meaning: score = sum log-prob / length ** lp; D3 uses 0.0
    ghost_threshold: Optional[float] = None  # tokens of probability >= it are not counted in that length
    batch_size: int = 8  # users decoded together
    autocast: Literal["none", "bfloat16"] = "none"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # cut-offs above num_beams are skipped


@dataclass
class BearConfig:
    """BEAR's regulariser (METHOD.md sections 3-4). Defaults: the paper's Toy setting. `beam_sim`
    (Objective 3.1) reads base, num_beams (B), lam and xi from here too."""

    base: Literal["msl", "sft"] = "msl"  # the authors' code uses MSL inside BEAR
    num_beams: int = 10  # B in the loss (hard-coded 10 in the authors' code)
    lam: float = 0.25  # lambda in the convention of `form`
    xi: float = 2.75  # temperature of the smoothed indicator
    form: Literal["reference", "paper", "violators"] = "reference"
    # positions with fewer than B valid tokens: min_valid = the authors' released code (beta is the
    # smallest valid probability there); trivial = the paper's reading (condition met, beta = 0);
    # auto = min_valid for loss `bear` with form `reference` (the released loss), trivial for the other
    # forms and sdpo_bear (no released code; a token that cannot be pruned is not pushed)
    short_sets: Literal["auto", "min_valid", "trivial"] = "auto"


@dataclass
class PreferenceConfig:
    """dpo / sdpo / sdpo_bear (`bearrec.losses.preference`): start from an SFT checkpoint."""

    beta: float = 1.0  # DPO's beta
    num_negatives: int = 3  # N sampled negatives per example for sdpo / sdpo_bear (dpo uses 1)
    negatives_seed: int = 0  # uniform sampling over the catalogue, seeded per example


@dataclass
class LossConfig:
    name: str = "bear"  # sft | msl | bear | beam_sim | dpo | sdpo | sdpo_bear
    tau: float = 1.0  # MSL softmax temperature
    bear: BearConfig = field(default_factory=BearConfig)
    pref: PreferenceConfig = field(default_factory=PreferenceConfig)


@dataclass
class TrainConfig:
    """Fine-tuning on Hugging Face Trainer. Defaults follow the paper where it says (METHOD.md 6)."""

    epochs: int = 10
    batch_size: int = 16  # per process; the global batch is batch_size * grad_accum * processes
    grad_accum: int = 8
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False  # autocast
    max_train_examples: Optional[int] = None  # a seeded subsample of the train split
    valid_users: Optional[int] = 200  # seeded validation subset decoded after each epoch; null: all
    selection_k: int = 10  # epochs are compared by validation NDCG@selection_k
    # later_within_se: the latest epoch within one paired standard error of the best (bearrec.selection);
    # max: the best validation NDCG, earliest on ties (the old rule)
    selection_rule: Literal["later_within_se", "max"] = "later_within_se"
    min_valid_hits: int = 50  # a choice resting on fewer validation hits at K is flagged (size valid_users by it)
    eval_test: bool = True  # decode the test split with the chosen checkpoint at the end
    test_users: Optional[int] = None  # a seeded subset of the test split; null: all users
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # logs in RUN/checkpoints/runs/


@dataclass
class AnalysisConfig:
    pruning_users: Optional[int] = 200  # seeded test users for `bearrec run`'s pruning analysis; 0: skip
    ks: list[int] = field(default_factory=lambda: [5, 10])  # PR@K cut-offs
    # read the model against these on its test users (bearrec.references): popularity costs nothing,
    # zero_shot one more test decode
    references: list[Literal["popularity", "zero_shot"]] = field(default_factory=lambda: ["popularity"])


@dataclass
class Config:
    seed: int = 42
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


# What a config written before a key existed ran with (a missing key is not today's default).
LEGACY = {"loss.bear.short_sets": "trivial", "train.selection_rule": "max"}
# Keys that change nothing a run measures (paths, logging, warnings): not part of its identity.
NOT_MEASURED = ("output_dir", "data.data_dir", "decode.batch_size", "train.report_to", "train.logging_steps",
                "train.min_valid_hits", "prompt.max_title_tokens", "prompt.on_too_long", "analysis.references")


def effective_short_sets(loss_name: str, form: str, short_sets: str) -> str:
    """`loss.bear.short_sets` as the loss applies it (`auto` resolved)."""
    if short_sets != "auto":
        return short_sets
    from bearrec.methods import REGISTRY  # each method says what auto means for it

    method = REGISTRY.get(loss_name)
    return method.short_sets_auto(form) if method else "trivial"


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolved(data: dict) -> dict:
    """A config dict (e.g. a run's config.yaml) as the run behaved: keys it lacks that changed
    meaning get their LEGACY value, and `auto` settings are resolved."""
    import copy

    out = copy.deepcopy(data)
    for key, value in LEGACY.items():
        if _get(out, key) is None:
            _set(out, key, value)
    bear = _get(out, "loss.bear")
    if isinstance(bear, dict):
        bear["short_sets"] = effective_short_sets(_get(out, "loss.name") or "bear", bear.get("form", "reference"),
                                                  bear["short_sets"])
    return out


def identity(data: dict) -> dict:
    """`resolved(data)` without the NOT_MEASURED keys and the `loss` sections its method does not
    read (`bearrec.methods`): what makes two runs the same experiment."""
    from bearrec.methods import REGISTRY

    out = resolved(data)
    loss = out.get("loss") or {}
    method = REGISTRY.get(loss.get("name"))
    if method is not None:
        for section in ("tau", "bear", "pref"):
            if section not in method.sections:
                loss.pop(section, None)
    for key in NOT_MEASURED:
        *path, last = key.split(".")
        node = _get(out, ".".join(path)) if path else out
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict, cls: type = Config, *, source: str = "config") -> Any:
    try:
        return _build(cls, data or {}, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse_override_value(raw: str, hint: Any) -> Any:
    """Strings stay verbatim (`data.name=01` is the string '01'); everything else is YAML."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
    if hint is str or str in args:
        if type(None) in args and raw.strip() in ("null", "~"):
            return None
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # left to the type check, which names the key


def apply_override(data: dict, override: str, cls: type = Config) -> None:
    """Apply one `a.b=c` override to a raw config dict, checking the key path against `cls`."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. data.name=office")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node, tp = data, cls
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(tp)}
        if part not in names:
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override {override!r}: unknown key '{where}'; valid keys here: {', '.join(names)}")
        hint = typing.get_type_hints(tp)[part]
        if i == len(parts) - 1:
            value = _parse_override_value(raw, hint)
            _coerce(value, hint, key)  # type check now, with the override in the message
            node[part] = value
        else:
            if not dataclasses.is_dataclass(hint):
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[:i + 1])}' is not a section")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[:i + 1])}' is not a mapping")
            tp = hint


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = Config) -> Any:
    data: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override, cls)
    return from_dict(data, cls, source=source)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, run_dir: str | Path) -> Path:
    """Write the resolved config into a run directory as `config.yaml`."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
