"""Every setting of bearrec, declared once: its section, type, default, help and bounds.

A bound declared here (`setting(..., min=1)`) is checked when the section is built, so a bad value
fails the same way from YAML, from a `a.b=c` override, from a CLI flag (the flags are made from
these declarations, `bearrec.cli`) and from code, before any data or model is loaded. Checks that
involve several settings are a section's `check_more`. `check(cfg)` re-checks a config changed in
place.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from bearrec.errors import ConfigError


def setting(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, help: str = "", min=None, above=None,
            max=None, each_min=None):
    """A dataclass field with its help text and bounds (`min`: >=, `above`: >, `max`: <=, `each_min`:
    every element of a list >=); None values of Optional settings are not bounded."""
    meta = {k: v for k, v in (("help", help), ("min", min), ("above", above), ("max", max), ("each_min", each_min))
            if v not in (None, "")}
    return field(default=default, default_factory=factory, metadata=meta)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


class Section:
    PATH: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def where(self, name: str) -> str:
        return f"{self.PATH}.{name}" if self.PATH else name

    def check(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or isinstance(value, Section):
                continue
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
            if choices and value not in choices:
                raise ConfigError(f"{self.where(f.name)}: {value!r} is not one of {list(choices)}")
            if "min" in meta and value < meta["min"]:
                raise ConfigError(f"{self.where(f.name)} must be >= {meta['min']:g}, got {value}")
            if "above" in meta and not value > meta["above"]:
                raise ConfigError(f"{self.where(f.name)} must be > {meta['above']:g}, got {value}")
            if "max" in meta and value > meta["max"]:
                low = f"[{meta['min']:g}" if "min" in meta else f"({meta['above']:g}" if "above" in meta else "(-inf"
                raise ConfigError(f"{self.where(f.name)} must be in {low}, {meta['max']:g}], got {value}")
            for v in value if "each_min" in meta else ():
                if v < meta["each_min"]:
                    raise ConfigError(f"{self.where(f.name)}: every value must be >= {meta['each_min']}, got {v}")
        self.check_more()

    def check_more(self) -> None:
        """Checks across this section's settings (subclasses)."""


def check(section: Section) -> None:
    """Re-check `section` and every section inside it (a config changed after it was built)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, Section):
            check(value)
    section.check()


@dataclass
class PrepareConfig(Section):
    """The paper's protocol for raw interaction sources (MovieLens, Amazon dumps, generic CSV)."""

    PATH: ClassVar[str] = "data.prepare"
    k_core: int = setting(5, min=1, help="iterative: every user and item keeps at least k interactions")
    max_history: int = setting(10, min=1, help="sliding window of max_history + 1 (history + target)")
    min_history: int = setting(4, min=1, help="the authors' released files start windows at 4 history items")
    split: list[float] = setting(factory=lambda: [0.8, 0.1, 0.1], help="chronological, by target time")

    def check_more(self) -> None:
        if self.min_history > self.max_history:
            raise ConfigError(f"data.prepare.min_history ({self.min_history}) must not exceed max_history "
                              f"({self.max_history})")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or not math.isclose(sum(self.split), 1.0):
            raise ConfigError(f"data.prepare.split must be three non-negative fractions summing to 1, got {self.split}")


@dataclass
class DataConfig(Section):
    PATH: ClassVar[str] = "data"
    name: str = setting("movielens-1m", help="dataset name (office, book, toy, clothing, movielens-1m, "
                                             "movielens-100k) or folder")
    data_dir: Optional[str] = setting(None, help="folder holding named Amazon datasets (else $BEARREC_DATA_DIR, "
                                                 "else the user cache)")
    train_file: str = "auto"  # auto: train_10000.csv when present (the paper's sample), else train.csv
    valid_fraction: float = 1 / 9  # validation size as a share of the training rows (when no valid.csv)
    # auto: held_out when training on a sample beside train.csv (the latest rows of train.csv outside the
    # sample, so all of the sample trains), else carve (the latest rows of the training file itself)
    validation: Literal["auto", "held_out", "carve"] = "auto"
    on_empty_title: Literal["error", "drop"] = "error"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


@dataclass
class PromptConfig(Section):
    PATH: ClassVar[str] = "prompt"
    template: Literal["alpaca", "compact"] = "alpaca"
    domain: Optional[str] = None  # phrase preset (office, book, movie, ...); None: from the dataset name
    instruction: Optional[str] = None  # overrides the preset's instruction
    history_prefix: Optional[str] = None  # overrides the preset's history phrase
    max_history_items: Optional[int] = setting(None, min=1, help="keep only the latest N history titles")
    max_title_words: Optional[int] = setting(None, min=1, help="cut history titles (compact prompts for small models)")
    max_title_tokens: Optional[int] = setting(256, min=1, help="a target title (EOS included) longer than this "
                                                                "is reported")
    # a title over max_title_tokens, or an example longer than the model's positions: warn (one line) or error
    on_too_long: Literal["warn", "error"] = "warn"


@dataclass
class LoraConfig(Section):
    PATH: ClassVar[str] = "model.lora"
    enabled: bool = True
    r: int = setting(8, min=1)
    alpha: int = setting(16, min=1)
    dropout: float = setting(0.05, min=0.0)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TinyModelConfig(Section):
    """A from-scratch model with a BPE tokenizer trained on the dataset's own text."""

    PATH: ClassVar[str] = "model.tiny"
    architecture: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = setting(4000, min=1)
    hidden_size: int = setting(192, min=1)
    num_layers: int = setting(2, min=1)
    num_heads: int = setting(4, min=1)
    intermediate_size: int = setting(512, min=1)


@dataclass
class ModelConfig(Section):
    PATH: ClassVar[str] = "model"
    name_or_path: str = "smollm2-135m"  # hub id, local folder, "smollm2-135m" (packaged) or "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


# decode.preset: named decoding recipes, each the values it implies (set when the preset is chosen and
# the key is not given; a given value that contradicts it is an error)
# hf: Hugging Face's beam-search scoring with the configured length penalty; d3 (Bao et al. 2024): no
# length normalisation; igd (Lin et al. 2025): IG-scaled token scores (decode.igd_alpha, required) over
# the whole vocabulary's softmax, no length normalisation, as in the IGD authors' scripts
PRESETS = {"hf": {}, "d3": {"length_penalty": 0.0}, "igd": {"length_penalty": 0.0, "constrained_softmax": False}}


@dataclass
class DecodeConfig(Section):
    """Constrained beam search (METHOD.md section 5, DESIGN.md decisions 2-4)."""

    PATH: ClassVar[str] = "decode"
    num_beams: int = setting(10, min=1, help="beam width B; B distinct catalogue items come back per user")
    constrained_softmax: bool = setting(True, help="softmax over trie-valid tokens (MSL/BEAR) or over the whole "
                                                   "vocabulary (SFT)")
    length_penalty: float = setting(1.0, help="HF meaning: score = sum log-prob / length ** lp; D3 uses 0")
    ghost_threshold: Optional[float] = setting(
        None, above=0.0, max=1.0,
        help="tokens of probability >= this do not count in the normalising length (D3's ghost tokens)")
    batch_size: int = setting(8, min=1, help="users decoded together")
    autocast: Literal["none", "bfloat16"] = "none"
    ks: list[int] = setting(factory=lambda: [1, 5, 10, 20], each_min=1, help="cut-offs; above num_beams skipped")
    igd_alpha: Optional[float] = setting(
        None, min=0.0, max=1.0,
        help="IGD's decoding rule: each token's log-prob times 1 - alpha * its information gain normalised among "
             "its trie siblings, from the run's training targets (Lin et al. 2025; their grid 0-0.4)")
    exclude_history: bool = setting(
        False, help="never return the titles of the user's history items (not the paper's protocol; the pruning "
                    "analysis then needs analysis.pruning_users=0)")
    preset: Literal["hf", "d3", "igd"] = setting(
        "hf", help="a named recipe: hf = the length penalty as set; d3 = no length normalisation (Bao et al. 2024); "
                   "igd = IGD's decoding (decode.igd_alpha), full softmax, no length normalisation")

    def check_more(self) -> None:
        if self.preset == "igd" and self.igd_alpha is None:
            raise ConfigError("decode.preset igd needs decode.igd_alpha (the IGD authors searched 0-0.4)")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) != value:
                raise ConfigError(f"decode.preset {self.preset} means decode.{key}={value}, not {getattr(self, key)}")


@dataclass
class BearConfig(Section):
    """BEAR's regulariser (METHOD.md sections 3-4). Defaults: the paper's Toy setting. `beam_sim`
    (Objective 3.1) reads base, num_beams (B), lam and xi from here too."""

    PATH: ClassVar[str] = "loss.bear"
    base: Literal["msl", "sft"] = "msl"  # the authors' code uses MSL inside BEAR
    num_beams: int = setting(10, min=1, help="B in the loss (hard-coded 10 in the authors' code)")
    lam: float = setting(0.25, min=0.0, help="lambda in the convention of `form`")
    xi: float = setting(2.75, above=0.0, help="temperature of the smoothed indicator")
    form: Literal["reference", "paper", "violators"] = "reference"
    # positions with fewer than B valid tokens: min_valid = the authors' released code (beta is the
    # smallest valid probability there); trivial = the paper's reading (condition met, beta = 0);
    # auto = min_valid for loss `bear` with form `reference` (the released loss), trivial for the other
    # forms and sdpo_bear (no released code; a token that cannot be pruned is not pushed)
    short_sets: Literal["auto", "min_valid", "trivial"] = "auto"


@dataclass
class PreferenceConfig(Section):
    """dpo / sdpo / sdpo_bear (`bearrec.losses.preference`): start from an SFT checkpoint."""

    PATH: ClassVar[str] = "loss.pref"
    beta: float = setting(1.0, above=0.0, help="DPO's beta")
    num_negatives: int = setting(3, min=1, help="N sampled negatives per example for sdpo / sdpo_bear (dpo uses 1)")
    negatives_seed: int = 0  # uniform sampling over the catalogue, seeded per example


@dataclass
class SasrecConfig(Section):
    """`loss.name: sasrec` (`bearrec.conventional`): SASRec through cornac, a conventional reference
    trained on the run's training rows. Defaults: cornac's, except embedding_dim 64 and max_len 10
    (our histories hold at most 10 items); not tuned."""

    PATH: ClassVar[str] = "loss.sasrec"
    embedding_dim: int = setting(64, min=1)
    num_blocks: int = setting(2, min=1)
    num_heads: int = setting(1, min=1)
    dropout: float = setting(0.2, min=0.0)
    max_len: int = setting(10, min=1, help="history items the encoder reads")
    epochs: int = setting(10, min=1, help="fixed (cornac's default), not chosen on validation")
    batch_size: int = setting(128, min=1)
    learning_rate: float = setting(1e-3, above=0.0)
    n_sample: int = setting(2048, min=0, help="sampled negatives per batch for the cross-entropy")


@dataclass
class CftConfig(Section):
    """cft (`bearrec.losses.baselines`): causality-enhanced fine-tuning (Zhang et al., arXiv 2410.22809)."""

    PATH: ClassVar[str] = "loss.cft"
    alpha: float = setting(0.1, min=0.0, help="weight of the counterfactual term CE(z_h - z_0) (authors' code 0.1; "
                                              "the IGD authors' re-implementation 0.025)")
    beta: float = setting(0.25, min=0.0, max=1.0,
                          help="weight of the last response token; weights fall linearly from 1 "
                               "(authors' code 0.25; the IGD authors' re-implementation 0.1)")


@dataclass
class D2lrConfig(Section):
    """d2lr (reconstructed; `bearrec.losses.baselines`): inverse-propensity weights from the training
    targets' counts (Lu et al., SIGIR 2025; no public code)."""

    PATH: ClassVar[str] = "loss.d2lr"
    beta: float = setting(0.1, min=0.0, help="exponent T of the item-level weight (N / n_y) ** T (grid 0.05-0.4; "
                                             "0 = sft)")
    alpha: float = setting(0.0, min=0.0, max=1.0,
                           help="share of the token-level weight from trie prefix counts "
                                "(unverified reading of the 'dual' part; 0 = item-level only)")


@dataclass
class IgdConfig(Section):
    """igd (`bearrec.losses.baselines`): IGD-Tuning, the training half of IGD (Lin et al., NeurIPS 2025)."""

    PATH: ClassVar[str] = "loss.igd"
    beta: float = setting(0.2, min=0.0, help="CE weight of tokens with zero information gain (authors: Toys 0.5, "
                                             "Books 0.1, CDs 0.1, Games 0.2; 1 = sft)")


ROSEPO_NEGATIVES = ("self", "popular")


@dataclass
class RoseConfig(Section):
    """rosepo (reconstructed; `bearrec.losses.preference`): smoothed DPO with harm- and
    helpfulness-aimed negatives (Liao et al., arXiv 2410.12519; no public code). From an SFT start,
    with loss.pref.beta."""

    PATH: ClassVar[str] = "loss.rosepo"
    smoothing: float = setting(0.1, min=0.0, max=0.5,
                               help="eps, the weight of the reversed preference: -(1-eps) log s(beta h) - eps log "
                                    "s(-beta h) (0: DPO; one constant for every user: no preference oracle here)")
    negatives: list[str] = setting(
        factory=lambda: list(ROSEPO_NEGATIVES),
        help="one negative per strategy: self = the starting model's best-scoring title other than the target's "
             "(constrained beam search, B = 2); popular = a trained-on title drawn by its training-target count")
    negatives_seed: int = 0  # the popular draw, seeded per example

    def check_more(self) -> None:
        bad = [n for n in self.negatives if n not in ROSEPO_NEGATIVES]
        if bad or not self.negatives or len(set(self.negatives)) != len(self.negatives):
            raise ConfigError(f"loss.rosepo.negatives must be distinct strategies among {', '.join(ROSEPO_NEGATIVES)}, "
                              f"got {self.negatives}")


@dataclass
class SprecConfig(Section):
    """sprec (`bearrec.methods.sprec`): SPRec's self-play iterations (Gao et al., WWW 2025) from an
    SFT start; each iteration samples rows, decodes their negatives with the iteration's starting
    model, then trains one SFT epoch and one DPO epoch at train.learning_rate (authors: 2e-5 both)."""

    PATH: ClassVar[str] = "loss.sprec"
    iterations: int = setting(5, min=1, help="self-play iterations (the authors' example: 5); the one with the best "
                                             "validation NDCG is kept (train.selection_rule)")
    rows_per_iteration: int = setting(2048, min=1, help="training rows sampled afresh each iteration (authors: 2,048; "
                                                        "all rows when fewer)")
    beta: float = setting(0.1, above=0.0, help="DPO's beta in the DPO step (authors: 0.1)")


@dataclass
class LossConfig(Section):
    PATH: ClassVar[str] = "loss"
    name: str = "bear"  # a method of bearrec.methods: sft | msl | bear | beam_sim | dpo | sdpo | sdpo_bear
    tau: float = setting(1.0, above=0.0, help="MSL softmax temperature")
    bear: BearConfig = field(default_factory=BearConfig)
    pref: PreferenceConfig = field(default_factory=PreferenceConfig)
    sasrec: SasrecConfig = field(default_factory=SasrecConfig)
    cft: CftConfig = field(default_factory=CftConfig)
    d2lr: D2lrConfig = field(default_factory=D2lrConfig)
    igd: IgdConfig = field(default_factory=IgdConfig)
    rosepo: RoseConfig = field(default_factory=RoseConfig)
    sprec: SprecConfig = field(default_factory=SprecConfig)

    def check_more(self) -> None:
        from bearrec import methods  # the registry names the methods and holds each one's own checks

        try:
            methods.validate(self)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class TrainConfig(Section):
    """Fine-tuning on Hugging Face Trainer. Defaults follow the paper where it says (METHOD.md 6)."""

    PATH: ClassVar[str] = "train"
    epochs: int = setting(10, min=1)
    batch_size: int = setting(16, min=1, help="per process; the global batch is batch_size * grad_accum * processes")
    grad_accum: int = setting(8, min=1)
    learning_rate: float = setting(1e-4, above=0.0)
    warmup_steps: int = setting(20, min=0)
    weight_decay: float = setting(0.0, min=0.0)
    max_grad_norm: float = setting(1.0, above=0.0)
    bf16: bool = False  # autocast
    max_train_examples: Optional[int] = setting(None, min=1, help="a seeded subsample of the train split")
    valid_users: Optional[int] = setting(200, min=1, help="seeded validation subset decoded after each epoch; "
                                                          "null: all")
    selection_k: int = setting(10, min=1, help="epochs are compared by validation NDCG@selection_k")
    # later_within_se: the latest epoch within one paired standard error of the best (bearrec.selection);
    # max: the best validation NDCG, earliest on ties (the old rule)
    selection_rule: Literal["later_within_se", "max"] = "later_within_se"
    min_valid_hits: int = setting(50, min=0, help="a choice resting on fewer validation hits at K is flagged")
    eval_test: bool = True  # decode the test split with the chosen checkpoint at the end
    test_users: Optional[int] = setting(None, min=1, help="a seeded subset of the test split; null: all users")
    logging_steps: int = setting(10, min=1)
    save_steps: Optional[int] = setting(None, min=1, help="also checkpoint every N optimiser steps inside an epoch, "
                                        "so that a killed run resumes there (long epochs); null: at epoch ends only")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # logs in RUN/checkpoints/runs/


@dataclass
class AnalysisConfig(Section):
    PATH: ClassVar[str] = "analysis"
    pruning_users: Optional[int] = setting(200, min=0, help="seeded test users for `bearrec run`'s pruning "
                                                            "analysis; 0: skip")
    ks: list[int] = setting(factory=lambda: [5, 10], each_min=1, help="PR@K cut-offs")
    # read the model against these on its test users (bearrec.references): popularity costs nothing,
    # zero_shot one more test decode
    references: list[Literal["popularity", "zero_shot"]] = field(default_factory=lambda: ["popularity"])
    other_softmax: bool = setting(
        False, help="the test users decoded with the other softmax too (over the vocabulary when the run's is over "
                    "the valid tokens, and the reverse), into eval-test-vocab-softmax/ or eval-test-valid-softmax/; "
                    "each batch is prefilled once for both")


@dataclass
class Config(Section):
    seed: int = 42
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
