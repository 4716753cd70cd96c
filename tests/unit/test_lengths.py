"""Too-long titles and prompts are reported (or refused), naming the title or the user."""

import re

import pytest

from bearrec.data.catalogue import Catalogue, Example
from bearrec.data.encode import Encoder, LengthLimits, TokenizationError
from bearrec.data.prompts import PromptTemplate


class WordTokenizer:
    """One token per word or newline (ids by first appearance); EOS id 0."""

    eos_token_id, eos_token = 0, "</s>"

    def __init__(self):
        self.vocab = {}

    def _ids(self, text):
        return [self.vocab.setdefault(w, len(self.vocab) + 1) for w in re.findall(r"\S+|\n", text)]

    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": self._ids(texts)}
        return {"input_ids": [self._ids(t) for t in texts]}


def encoder(limits, titles=None):
    titles = titles or {1: "Pen", 2: "Pad", 3: " ".join(["long"] * 30)}
    template = PromptTemplate(template="compact", instruction="Next?", history_prefix="Seen:")
    return Encoder(WordTokenizer(), template, Catalogue(titles), limits)


def test_a_long_title_warns_once_naming_it(capsys):
    encoder(LengthLimits(max_title_tokens=10))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "1 title(s) longer than prompt.max_title_tokens=10" in err
    assert "'long long" in err


def test_a_long_title_is_refused_in_error_mode():
    with pytest.raises(TokenizationError, match="max_title_tokens=10.*on_too_long=warn"):
        encoder(LengthLimits(max_title_tokens=10, on_too_long="error"))


def test_examples_longer_than_the_models_positions_name_the_user(capsys):
    enc = encoder(LengthLimits(max_positions=40))
    capsys.readouterr()
    examples = [Example("u1", (1,), 2, 0), Example("u2", (3, 3), 1, 0)]
    enc.encode_all(examples)
    err = capsys.readouterr().err
    assert "1 of 2 examples are longer than the model's 40 positions (first: user u2" in err
    with pytest.raises(TokenizationError, match="exceeds the model's 40 positions"):
        encoder(LengthLimits(max_positions=40, on_too_long="error")).prompt_ids((3, 3))
    assert encoder(LengthLimits(max_positions=40, on_too_long="error")).prompt_ids((1,))  # short: fine
