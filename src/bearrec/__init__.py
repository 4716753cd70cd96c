"""bearrec: LLMs as sequential recommenders, with BEAR fine-tuning and trie-constrained beam search."""

__version__ = "0.1.0"
