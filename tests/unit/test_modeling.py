import pytest
import torch

from bearrec.config import LoraConfig, ModelConfig, TinyModelConfig
from bearrec.modeling import ModelError, apply_lora, build_tiny, load_model, load_tokenizer, save_pretrained

TINY = TinyModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
TEXTS = ["Red Pen", "Blue Pen", "Stapler", '### Response:\n"Red Pen"'] * 5


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_model_is_deterministic_and_sized_to_its_tokenizer(arch):
    cfg = TinyModelConfig(**{**TINY.__dict__, "architecture": arch})
    m1, tok = build_tiny(cfg, TEXTS, seed=3)
    m2, tok2 = build_tiny(cfg, TEXTS, seed=3)
    assert tok.get_vocab() == tok2.get_vocab()
    assert m1.config.vocab_size == len(tok) and m1.config.eos_token_id == tok.eos_token_id
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    ids = torch.tensor([tok("Red Pen")["input_ids"]])
    assert m1(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_saved_tiny_model_reloads_through_the_hub_code_path(tmp_path):
    model, tok = build_tiny(TINY, TEXTS, seed=0)
    save_pretrained(model, tok, tmp_path / "m")
    cfg = ModelConfig(name_or_path=str(tmp_path / "m"), lora=LoraConfig(enabled=False))
    loaded, tok2 = load_model(cfg)  # AutoModelForCausalLM.from_pretrained, as for Llama / Qwen ids
    assert (tmp_path / "m" / "bearrec_tokenizer").exists() and tok2.get_vocab() == tok.get_vocab()
    ids = torch.tensor([tok('"Stapler"')["input_ids"]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits)
    assert load_tokenizer(tmp_path / "m")('"Stapler"')["input_ids"] == ids[0].tolist()


def test_lora_trains_only_adapters():
    model, _ = build_tiny(TINY, TEXTS)
    peft_model = apply_lora(model, LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 4  # q and v, A and B, one layer


def test_lora_unknown_module_is_a_clear_error():
    model, _ = build_tiny(TINY, TEXTS)
    with pytest.raises(ModelError, match=r"target_modules: \['query'\] not found"):
        apply_lora(model, LoraConfig(target_modules=["query"]))


def test_load_model_tiny_with_dtype_and_lora():
    cfg = ModelConfig(name_or_path="tiny", dtype="bfloat16", tiny=TINY, lora=LoraConfig(r=2, alpha=4))
    model, tok = load_model(cfg, texts=TEXTS)
    assert next(model.parameters()).dtype == torch.bfloat16 and hasattr(model, "peft_config")
    with pytest.raises(ModelError, match="needs the dataset's texts"):
        load_model(cfg)


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "absent")))


def test_tiny_heads_must_divide_hidden():
    with pytest.raises(ModelError, match="divisible"):
        build_tiny(TinyModelConfig(hidden_size=30, num_heads=4, vocab_size=300), TEXTS)


def test_bf16_on_a_cpu_without_native_bf16_is_named_with_the_fix():
    from bearrec.training import slow_bf16_note

    assert slow_bf16_note(False, cuda=False, native=False) is None  # fp32 training: nothing to say
    assert slow_bf16_note(True, cuda=True, native=False) is None  # a GPU: autocast is native there
    assert slow_bf16_note(True, cuda=False, native=True) is None
    note = slow_bf16_note(True, cuda=False, native=False)
    assert "without native bf16" in note and "train.bf16=false" in note and "benchmarks/bf16_cpu.py" in note
