"""Token ids for prompts and targets, exactly as the decoder will see them, and the trie built
from the same ids.

A target is `"title"` + EOS tokenised *in context*: after the template's response header
(`### Response:\\n`). Tokenising the header and the header+title and stripping the header's ids
gives the title's ids; if the header's ids are not a prefix (a merge across the boundary), the
title is reported by name, because training and decoding would then disagree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bearrec.data.catalogue import Catalogue, Example
from bearrec.data.prompts import PromptTemplate, quote
from bearrec.errors import BearrecError
from bearrec.trie import TitleTrie


class TokenizationError(BearrecError, ValueError):
    pass


def title_token_ids(tokenizer, titles: list[str], context: str) -> dict[str, list[int]]:
    """Token ids of each quoted title as it follows `context` (EOS not included)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    joint = tokenizer([context + quote(t) for t in titles], add_special_tokens=False)["input_ids"]
    out = {}
    for title, ids in zip(titles, joint):
        if ids[: len(ctx)] != ctx:
            raise TokenizationError(
                f"title {title!r} tokenises differently after the prompt ({context!r}): the boundary "
                "merges; choose a template whose response header ends with a newline")
        if len(ids) == len(ctx):
            raise TokenizationError(f"title {title!r} tokenises to no tokens")
        out[title] = ids[len(ctx):]
    return out


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise TokenizationError("the tokenizer has no EOS token; set tokenizer.eos_token")
    return int(tokenizer.eos_token_id)


@dataclass
class EncodedExample:
    prompt_ids: list[int]
    target_ids: list[int]  # title ids + EOS
    item_id: int

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.target_ids

    @property
    def labels(self) -> list[int]:
        return [-100] * len(self.prompt_ids) + self.target_ids


@dataclass
class LengthLimits:
    """What counts as too long, and what then happens (`prompt.max_title_tokens`, `prompt.on_too_long`,
    the model's `max_position_embeddings`): `warn` prints one line per kind, `error` refuses."""

    max_title_tokens: int | None = None  # target tokens of one title, EOS included
    max_positions: int | None = None  # prompt + target tokens of one example
    on_too_long: str = "warn"


class Encoder:
    """Holds the tokenizer, template, catalogue and the trie; encodes examples consistently."""

    def __init__(self, tokenizer, template: PromptTemplate, catalogue: Catalogue, limits: LengthLimits | None = None):
        self.tokenizer, self.template, self.catalogue = tokenizer, template, catalogue
        self.limits, self._warned = limits or LengthLimits(), set()
        self.eos_token_id = eos_id(tokenizer)
        titles = catalogue.unique_titles
        self.title_ids = title_token_ids(tokenizer, titles, template.response_context)
        self.longest_target = max((len(ids) + 1 for ids in self.title_ids.values()), default=0)
        cap = self.limits.max_title_tokens
        long = sorted(((len(ids) + 1, t) for t, ids in self.title_ids.items() if cap and len(ids) + 1 > cap),
                      reverse=True)
        if long:
            self._too_long("titles", f"{len(long)} title(s) longer than prompt.max_title_tokens={cap} tokens "
                                     f"(longest: {long[0][1][:60]!r}, {long[0][0]} tokens)")
        for title, ids in self.title_ids.items():
            if self.eos_token_id in ids:
                raise TokenizationError(f"title {title!r} contains the EOS token {tokenizer.eos_token!r}")
        self.trie = TitleTrie.from_title_ids(self.title_ids, catalogue.items_by_title, self.eos_token_id)
        paths = [[*self.title_ids[t], self.eos_token_id] for t in titles]
        missing = [t for t, ok in zip(titles, self.trie.contains_all(paths).tolist()) if not ok]
        if missing:  # an invariant: targets and the trie come from the same ids
            raise TokenizationError(f"target ids of title {missing[0]!r} are not a path of the trie")

    def target_ids(self, item_id: int) -> list[int]:
        return [*self.title_ids[self.catalogue.title(item_id)], self.eos_token_id]

    def prompt_text(self, history: tuple[int, ...] | list[int]) -> str:
        return self.template.render([self.catalogue.title(i) for i in history])

    def _too_long(self, kind: str, message: str) -> None:
        if self.limits.on_too_long == "error":
            raise TokenizationError(f"{message}; shorten the prompt (prompt.max_history_items, "
                                    f"prompt.max_title_words) or set prompt.on_too_long=warn")
        if kind not in self._warned:
            self._warned.add(kind)
            print(f"warning: {message}", file=sys.stderr)

    def prompt_ids(self, history: tuple[int, ...] | list[int]) -> list[int]:
        ids = self.tokenizer(self.prompt_text(history))["input_ids"]
        limit = self.limits.max_positions
        if limit and len(ids) + self.longest_target > limit:  # decoding may extend it by the longest title
            self._too_long("prompt", f"a prompt of {len(ids)} tokens (history {list(history)[:5]}) plus the longest "
                                     f"title ({self.longest_target} tokens) exceeds the model's {limit} positions")
        return ids

    def plain_prompt_ids(self) -> list[int]:
        """The history-free prompt's ids (`PromptTemplate.render_without_history`), tokenised as prompts are."""
        return self.tokenizer(self.template.render_without_history())["input_ids"]

    def encode(self, example: Example) -> EncodedExample:
        return EncodedExample(self.prompt_ids(example.history), self.target_ids(example.target), example.target)

    def encode_all(self, examples: list[Example]) -> list[EncodedExample]:
        prompts = [self.prompt_text(e.history) for e in examples]
        ids = self.tokenizer(prompts)["input_ids"] if prompts else []
        out = [EncodedExample(p, self.target_ids(e.target), e.target) for p, e in zip(ids, examples)]
        limit = self.limits.max_positions
        over = [(len(x.input_ids), e.user_id) for x, e in zip(out, examples) if limit and len(x.input_ids) > limit]
        if over:
            self._too_long("example", f"{len(over)} of {len(out)} examples are longer than the model's {limit} "
                                      f"positions (first: user {over[0][1]}, {over[0][0]} tokens)")
        return out


def build_encoder(prompt_cfg, dataset, tokenizer, model=None) -> Encoder:
    """The encoder of a run: its prompt settings, the dataset's catalogue, and length limits from
    `prompt_cfg` and the model's `max_position_embeddings` (when it has one)."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limits = LengthLimits(prompt_cfg.max_title_tokens, positions, prompt_cfg.on_too_long)
    return Encoder(tokenizer, PromptTemplate.from_config(prompt_cfg, dataset.name), dataset.catalogue, limits)
