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
INIT_STD = 0.02  # transformers' initializer_range


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


def _tiny_config(
    family: str,
    vocab_size: int,
    n_layers: int = _N_LAYERS,
    n_heads: int = _N_HEADS,
    n_kv_heads: int | None = None,
    d_model: int = _D_MODEL,
    d_mlp: int = _D_MLP,
):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # match tiny_tokenizer()
    # Every value that decides a forward pass is set here, not left to a version's defaults.
    llama_like = dict(
        **ids,
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or max(1, n_heads // 2),  # grouped-query, as SmolLM2
        max_position_embeddings=_MAX_POS,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
    )
    configs = {
        "llama": lambda: LlamaConfig(**llama_like, mlp_bias=False),
        "qwen2": lambda: Qwen2Config(**{**llama_like, "attention_bias": None}),
        "gpt2": lambda: GPT2Config(
            **ids,
            vocab_size=vocab_size,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_positions=_MAX_POS,
            n_inner=d_mlp,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            **ids,
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            max_position_embeddings=_MAX_POS,
            rotary_pct=0.5,
            rotary_emb_base=10000,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ),
    }
    if family not in configs:
        raise ValueError(f"No tiny model for '{family}'. Choose from {', '.join(TINY_FAMILIES)}.")
    config = configs[family]()
    if family == "qwen2":
        config.attention_bias = True  # Qwen2 has biases on q, k and v (older configs lack the key)
    return config


def tiny_model(
    family: str = "llama",
    seed: int = 0,
    *,
    n_layers: int = _N_LAYERS,
    n_heads: int = _N_HEADS,
    n_kv_heads: int | None = None,
    d_model: int = _D_MODEL,
    d_mlp: int = _D_MLP,
) -> LabModel:
    """A small model of ``family`` (3 layers, 4 heads, d_model=32 unless told otherwise) with
    seeded random weights.

    The weights are drawn here, parameter by parameter in name order, from a generator seeded
    with ``seed`` (norm weights 1, everything else N(0, 0.02)): the same model on every version of
    transformers, and the caller's random state is left as it was.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _tiny_config(family, len(tokenizer), n_layers, n_heads, n_kv_heads, d_model, d_mlp)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    draws = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(INIT_STD * torch.randn(param.shape, generator=draws))
            elif _is_norm(name) and name.endswith("weight"):
                param.fill_(1.0)
            else:  # biases: small, so that every family computes something of its own
                param.copy_(INIT_STD * torch.randn(param.shape, generator=draws))
    model.requires_grad_(False)
    return LabModel(model, tokenizer, name=f"tiny-{family}")


def _is_norm(name: str) -> bool:
    return "norm" in name or ".ln_" in name or name.startswith("ln_") or "layernorm" in name
