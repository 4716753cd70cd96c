"""Prompt templates: a user's history rendered as text; the response is the quoted target title.

`alpaca` reproduces the BIGRec / MSL / BEAR prompt byte for byte (including the authors' trailing
"\\n " after the input). `compact` is a short prompt for small from-scratch models.
"""

from __future__ import annotations

from dataclasses import dataclass

from bearrec.config import PromptConfig

# (instruction, history phrase) per domain, as in the authors' code (MSL utils.get_prompt).
DOMAINS: dict[str, tuple[str, str]] = {
    "office": ("Given a list of office products the user has used before, please recommend a new office "
               "product that the user likes to the user.", "The user has used the following office products before: "),
    "book": ("Given a list of books the user has read before, please recommend a new book that the user likes "
             "to the user.", "The user has read the following books before: "),
    "toy": ("Given a list of toys the user has played before, please recommend a new toy that the user likes to "
            "the user.", "The user has played the following toys before: "),
    "clothing": ("Given a list of clothing the user has worn before, please recommend a new clothing that the "
                 "user likes to the user.", "The user has worn the following clothing before: "),
    "movie": ("Given a list of movies the user has watched before, please recommend a new movie that the user "
              "likes to the user.", "The user has watched the following movies before: "),
    "video_game": ("Given a list of video games the user has played before, please recommend a new video game "
                   "that the user likes to the user.", "The user has played the following video games before: "),
    "item": ("Given a list of items the user has interacted with before, please recommend a new item that the "
             "user likes to the user.", "The user has interacted with the following items before: "),
}

ALPACA_HEADER = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request. \n\n")
# Alpaca's "no input" header (CFT's history-free prompt), with BIGRec's space before the blank line as above
ALPACA_NO_INPUT_HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request. \n\n")
ALPACA_RESPONSE = "### Response:\n"
COMPACT_RESPONSE = "Next:\n"


def domain_for(dataset_name: str) -> str:
    name = dataset_name.lower()
    if name.startswith("movielens") or name.startswith("ml-"):
        return "movie"
    for domain in DOMAINS:
        if domain in name:
            return domain
    return "item"


def quote(title: str) -> str:
    return f'"{title}"'


@dataclass
class PromptTemplate:
    template: str
    instruction: str
    history_prefix: str
    max_history_items: int | None = None
    max_title_words: int | None = None

    @classmethod
    def from_config(cls, cfg: PromptConfig, dataset_name: str) -> "PromptTemplate":
        domain = cfg.domain or domain_for(dataset_name)
        if domain not in DOMAINS:
            raise ValueError(f"prompt.domain {domain!r} unknown; choose one of {', '.join(DOMAINS)}")
        instruction, history = DOMAINS[domain]
        return cls(cfg.template, cfg.instruction or instruction, cfg.history_prefix or history,
                   cfg.max_history_items, cfg.max_title_words)

    @property
    def response_context(self) -> str:
        """The text right before the response: titles are tokenised after it, as they follow the prompt."""
        return ALPACA_RESPONSE if self.template == "alpaca" else COMPACT_RESPONSE

    def render(self, history_titles: list[str]) -> str:
        """The prompt text; the model continues it with `"title"` and EOS."""
        titles = list(history_titles)
        if self.max_history_items is not None:
            titles = titles[-self.max_history_items:]
        if self.max_title_words is not None:
            titles = [" ".join(t.split()[: self.max_title_words]) for t in titles]
        joined = ", ".join(quote(t) for t in titles)
        if self.template == "alpaca":
            return (f"{ALPACA_HEADER}### Instruction:\n{self.instruction}\n\n"
                    f"### Input:\n{self.history_prefix}{joined}\n \n\n{ALPACA_RESPONSE}")
        return f"History: {joined}\n{COMPACT_RESPONSE}"

    def render_without_history(self) -> str:
        """The same request with no history block (CFT's counterfactual prompt): Alpaca's "no input"
        template, or the compact template without its history line. It ends with the same response
        header, so a title's ids are the same after it."""
        if self.template == "alpaca":
            return f"{ALPACA_NO_INPUT_HEADER}### Instruction:\n{self.instruction}\n\n{ALPACA_RESPONSE}"
        return COMPACT_RESPONSE
