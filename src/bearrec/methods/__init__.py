"""The fine-tuning methods, one module each, found here by name.

A method module defines `METHODS`, a tuple of `Method`s: its name, how it computes the (numerator,
denominator) of its loss from a `Batch`, which extra batch inputs it needs (`needs`: "thresholds" from
a no-gradient decode of the batch, "preference" groups with cached reference log-probs,
"plain_prompt" logits after the history-free prompt, "target_counts" of the run's training targets
on the trie with each response token's trie node; `bearrec.needs`), which
`loss.*` config sections it reads, its own setting checks, and how a run of it is labelled and
described. A method that is not one loss says how it trains instead: `train` (a conventional
reference, no LLM) or `stages` (sprec: several sft and dpo runs of its own). Training, the driver, reports, sweeps and the CLI ask this registry; nothing else branches
on a method's name. Adding a method: a module here (with `METHODS`), its tests, its README entry.
The loss arithmetic itself stays in `bearrec.losses` (pure functions of tensors).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import torch

from bearrec.losses.base import ratio

NEEDS = ("thresholds", "preference", "plain_prompt", "target_counts")


@dataclass
class Batch:
    """What a method's loss sees of one collated batch."""

    logits: torch.Tensor  # (response tokens, vocabulary)
    targets: torch.Tensor  # (response tokens,)
    allowed: object  # bearrec.losses.Allowed: the trie-valid next tokens of each response position
    cfg: object  # LossConfig
    rows: torch.Tensor  # each response token's sequence in the batch
    lengths: list[int] = field(default_factory=list)  # response tokens per sequence
    thresholds: torch.Tensor | None = None  # needs "thresholds": the B-th beam's prefix log-prob per token
    reference: torch.Tensor | None = None  # needs "preference": (examples, 1 + negatives) reference log-probs
    plain_logits: torch.Tensor | None = None  # needs "plain_prompt": the same positions after the history-free prompt
    nodes: torch.Tensor | None = None  # needs "target_counts": each response token's trie node (before the token)
    counts: object = None  # needs "target_counts": bearrec.popularity.TargetCounts of the run's training targets


def _no_check(cfg) -> None:
    return None


@dataclass(frozen=True)
class Method:
    name: str
    parts: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]  # (numerator, detached denominator)
    summary: str  # one line for `--help` and error messages
    sections: tuple[str, ...] = ()  # the `loss.*` settings it reads: "tau", "bear", "pref", "cft", ...
    needs: tuple[str, ...] = ()  # extra batch inputs (NEEDS)
    check: Callable[[object], None] = _no_check  # raises ValueError naming the setting
    label: Callable[[dict], str] | None = None  # the `loss` section of a config dict -> row label; default: name
    describe: Callable[[dict], str] | None = None  # the same -> report.md's loss line; default: name
    num_negatives: Callable[[object], int] | None = None  # preference methods: negatives per example
    # preference methods that choose their negatives (default: uniform samples, `sample_negatives`):
    # (config, starting model, encoder, training rows) -> item ids per example
    negatives: Callable[[object, object, object, list], list[list[int]]] | None = None
    short_sets_auto: Callable[[str], str] = lambda form: "trivial"  # `loss.bear.short_sets: auto` by form
    # not a fine-tuning loss (a conventional reference): trains itself into a run directory, cfg -> None
    train: Callable[[object], None] | None = None
    # trained in stages rather than by one loss (sprec): (cfg, resume=, force=) -> run directory, in place
    # of `bearrec.training.train`; the run then goes on as any LLM run (pruning, references, report)
    stages: Callable[..., object] | None = None
    from_sft: bool = False  # starts from an SFT run's model (besides the "preference" methods)

    def row_label(self, loss: dict) -> str:
        return self.label(loss) if self.label else self.name

    def description(self, loss: dict) -> str:
        return self.describe(loss) if self.describe else f"`{self.name}`"


def _discover() -> dict[str, Method]:
    import dataclasses

    from bearrec.sections import LossConfig

    SECTIONS = [f.name for f in dataclasses.fields(LossConfig) if f.name != "name"]  # noqa: N806
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for method in getattr(module, "METHODS", ()):
            if method.name in found:
                raise RuntimeError(f"method {method.name!r} is defined twice ({module.__name__})")
            unknown = [n for n in method.needs if n not in NEEDS]
            if unknown:
                raise RuntimeError(f"method {method.name!r}: unknown need {unknown[0]!r}")
            unknown = [s for s in method.sections if s not in SECTIONS]
            if unknown:
                raise RuntimeError(f"method {method.name!r}: unknown loss section {unknown[0]!r}")
            found[method.name] = method
    return found


REGISTRY: dict[str, Method] = _discover()
NAMES = tuple(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"loss.name {name!r} unknown; choose one of {', '.join(NAMES)}")
    return REGISTRY[name]


def validate(cfg) -> None:
    """The method named by a `loss` section exists and accepts its settings (the bounds of each
    setting are declared in `bearrec.sections`); called when the section is built."""
    get(cfg.name).check(cfg)


def loss(logits, targets, allowed, cfg) -> torch.Tensor:
    """The loss of `cfg.name` on one batch of single sequences (methods that need no extra inputs)."""
    method = get(cfg.name)
    if method.needs:
        raise ValueError(f"{cfg.name} needs {', '.join(method.needs)}: build a Batch with them")
    rows = torch.zeros(len(targets), dtype=torch.long, device=targets.device)
    return ratio(*method.parts(Batch(logits, targets, allowed, cfg, rows, [len(targets)])))
