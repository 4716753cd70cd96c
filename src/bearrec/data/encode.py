"""Token ids for prompts and targets, exactly as the decoder will see them, and the trie built
from the same ids.

A target is `"title"` + EOS tokenised *in context*: after the template's response header
(`### Response:\\n`). Tokenising the header and the header+title and stripping the header's ids
gives the title's ids; if the header's ids are not a prefix (a merge across the boundary), the
title is reported by name, because training and decoding would then disagree.
"""

from __future__ import annotations

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


class Encoder:
    """Holds the tokenizer, template, catalogue and the trie; encodes examples consistently."""

    def __init__(self, tokenizer, template: PromptTemplate, catalogue: Catalogue):
        self.tokenizer, self.template, self.catalogue = tokenizer, template, catalogue
        self.eos_token_id = eos_id(tokenizer)
        titles = catalogue.unique_titles
        self.title_ids = title_token_ids(tokenizer, titles, template.response_context)
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

    def prompt_ids(self, history: tuple[int, ...] | list[int]) -> list[int]:
        return self.tokenizer(self.prompt_text(history))["input_ids"]

    def encode(self, example: Example) -> EncodedExample:
        return EncodedExample(self.prompt_ids(example.history), self.target_ids(example.target), example.target)

    def encode_all(self, examples: list[Example]) -> list[EncodedExample]:
        prompts = [self.prompt_text(e.history) for e in examples]
        ids = self.tokenizer(prompts)["input_ids"] if prompts else []
        return [EncodedExample(p, self.target_ids(e.target), e.target) for p, e in zip(ids, examples)]
