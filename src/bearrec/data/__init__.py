"""Datasets: readers, the paper's protocol, prompts and encoding."""

from bearrec.data.catalogue import Catalogue, Dataset, Example
from bearrec.data.registry import load_dataset

__all__ = ["Catalogue", "Dataset", "Example", "load_dataset"]
