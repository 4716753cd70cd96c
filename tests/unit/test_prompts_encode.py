import pytest

from bearrec.config import PromptConfig
from bearrec.data.authors import load_authors_dir
from bearrec.data.encode import Encoder, TokenizationError, title_token_ids
from bearrec.data.prompts import PromptTemplate, domain_for
from bearrec.modeling import train_bpe_tokenizer

ALPACA_OFFICE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "### Instruction:\nGiven a list of office products the user has used before, please recommend a new office "
    "product that the user likes to the user.\n\n"
    '### Input:\nThe user has used the following office products before: "Red Pen", "Stapler"\n \n\n'
    "### Response:\n")


def test_alpaca_prompt_is_the_authors_text():
    tpl = PromptTemplate.from_config(PromptConfig(), "office")
    assert tpl.render(["Red Pen", "Stapler"]) == ALPACA_OFFICE
    assert tpl.response_context == "### Response:\n"


def test_history_free_prompt_is_alpacas_no_input_template():
    """CFT's counterfactual prompt: the same instruction, no history, the same response header."""
    tpl = PromptTemplate.from_config(PromptConfig(), "office")
    assert tpl.render_without_history() == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request. \n\n### Instruction:\nGiven a list of office products the user has used before, please recommend "
        "a new office product that the user likes to the user.\n\n### Response:\n")
    compact = PromptTemplate.from_config(PromptConfig(template="compact"), "office")
    assert compact.render_without_history() == "Next:\n" and compact.render(["X"]).endswith("Next:\n")


def test_compact_prompt_and_history_limits():
    cfg = PromptConfig(template="compact", max_history_items=2, max_title_words=2)
    tpl = PromptTemplate.from_config(cfg, "anything")
    assert tpl.render(["A b c", "Red Pen Refill Pack", "Stapler"]) == 'History: "Red Pen", "Stapler"\nNext:\n'


@pytest.mark.parametrize("name, domain", [("office", "office"), ("Book", "book"), ("movielens-1m", "movie"),
                                          ("ml-100k", "movie"), ("/data/Toy", "toy"), ("mystuff", "item")])
def test_domain_from_dataset_name(name, domain):
    assert domain_for(name) == domain


def test_overrides_and_bad_prompt_settings():
    tpl = PromptTemplate.from_config(PromptConfig(instruction="Pick one.", history_prefix="Seen: "), "book")
    assert "### Instruction:\nPick one.\n" in tpl.render(["X"]) and 'Seen: "X"' in tpl.render(["X"])
    with pytest.raises(ValueError, match="prompt.domain 'cars' unknown"):
        PromptTemplate.from_config(PromptConfig(domain="cars"), "x")
    with pytest.raises(ValueError, match="max_history_items must be >= 1"):
        PromptTemplate.from_config(PromptConfig(max_history_items=0), "x")


@pytest.mark.parametrize("template", ["alpaca", "compact"])
def test_targets_are_tokenised_as_in_context_and_are_trie_paths(authors_dir, title_tokenizer, template):
    tok = title_tokenizer
    ds = load_authors_dir(authors_dir)
    tpl = PromptTemplate.from_config(PromptConfig(template=template), "office")
    enc = Encoder(tok, tpl, ds.catalogue)
    for example in ds.train + ds.test:
        e = enc.encode(example)
        full = tok(enc.prompt_text(example.history) + f'"{ds.catalogue.title(example.target)}"')["input_ids"]
        assert e.input_ids == full + [tok.eos_token_id]  # same ids as tokenising the whole text
        assert e.labels == [-100] * len(e.prompt_ids) + e.target_ids
        assert enc.trie.contains(e.target_ids)
        assert example.target in enc.trie.items_at(enc.trie.node_of(e.target_ids))
    assert [e.input_ids for e in enc.encode_all(ds.test)] == [enc.encode(x).input_ids for x in ds.test]
    # duplicate titles ("Red Pen": items 1 and 4) share one terminal
    assert enc.trie.items_at(enc.trie.node_of(enc.target_ids(1))) == (1, 4)
    assert len(enc.trie) == len(ds.catalogue.unique_titles) == 5


def test_boundary_merge_is_an_error_naming_the_title():
    # Byte-level BPE keeps a space with the punctuation after it: after "Next: " the quote is merged
    # with the space, so the context's own ids are not a prefix of context + title.
    tok = train_bpe_tokenizer(['Next: "ab"'] * 50, vocab_size=300)
    with pytest.raises(TokenizationError, match="title 'ab' tokenises differently after the prompt"):
        title_token_ids(tok, ["ab"], "Next: ")
    assert title_token_ids(tok, ["ab"], "Next:\n") == {"ab": tok('"ab"', add_special_tokens=False)["input_ids"]}
