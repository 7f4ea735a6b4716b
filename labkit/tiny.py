"""Tiny randomly initialised models of every supported family, built in code (no downloads).

They compute nonsense, fast: tests use them to check mechanics (hooks, shapes, invariants) on
GPT-2, Llama, Qwen2 and GPT-NeoX without fetching a single weight. Their tokenizer is byte-level
with no merges, so every byte is one token.
"""

from __future__ import annotations

import torch

from labkit.models import LabModel

TINY_FAMILIES = ("llama", "qwen2", "gpt2", "gpt_neox")
_N_LAYERS, _N_HEADS, _D_MODEL, _D_MLP, _MAX_POS = 3, 4, 32, 64, 128


def tiny_tokenizer():
    """A byte-level tokenizer: 3 special tokens, then the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def _tiny_config(family: str, vocab_size: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # match tiny_tokenizer()
    llama_like = dict(
        **ids,
        vocab_size=vocab_size,
        hidden_size=_D_MODEL,
        intermediate_size=_D_MLP,
        num_hidden_layers=_N_LAYERS,
        num_attention_heads=_N_HEADS,
        num_key_value_heads=_N_HEADS // 2,  # grouped-query attention, as in SmolLM2
        max_position_embeddings=_MAX_POS,
        tie_word_embeddings=True,
    )
    configs = {
        "llama": lambda: LlamaConfig(**llama_like),
        "qwen2": lambda: Qwen2Config(**llama_like),
        "gpt2": lambda: GPT2Config(
            **ids,
            vocab_size=vocab_size,
            n_embd=_D_MODEL,
            n_layer=_N_LAYERS,
            n_head=_N_HEADS,
            n_positions=_MAX_POS,
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            **ids,
            vocab_size=vocab_size,
            hidden_size=_D_MODEL,
            intermediate_size=_D_MLP,
            num_hidden_layers=_N_LAYERS,
            num_attention_heads=_N_HEADS,
            max_position_embeddings=_MAX_POS,
            rotary_pct=0.5,
        ),
    }
    if family not in configs:
        raise ValueError(f"No tiny model for '{family}'. Choose from {', '.join(TINY_FAMILIES)}.")
    return configs[family]()


def tiny_model(family: str = "llama", seed: int = 0) -> LabModel:
    """A 3-layer, 4-head, d_model=32 model of ``family`` with seeded random weights."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _tiny_config(family, vocab_size=len(tokenizer))
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.requires_grad_(False)
    return LabModel(model, tokenizer, name=f"tiny-{family}")
