"""The model adapter: one vocabulary for the parts of every model family.

Every lab talks about "the residual stream after layer 5" or "head 3's output". Where those live
differs between GPT-2 (``transformer.h[5]``), Llama-family models (``model.layers[5]``) and
GPT-NeoX (``gpt_neox.layers[5]``). :class:`LabModel` hides that behind one vocabulary:
``blocks``, ``attn(layer)``, ``mlp(layer)``, ``attn_out_proj(layer)``, ``final_norm``,
``unembed``, and the sizes ``n_layers``, ``n_heads``, ``d_model`` and ``d_head``.

:data:`FAMILIES` is the whole difference between families: for each one, a :class:`FamilySpec`
of attribute paths to those parts. A model of a family not in the table is refused with
:class:`ModelUnavailableError`. Getting a model to wrap is :mod:`labkit.models.loading`'s job.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here; the message says what to do instead."""


@dataclass(frozen=True)
class FamilySpec:
    """Where one model family keeps its parts, as attribute paths (a small table, no branches).

    The embedding and unembedding need no entry: every transformers model finds them itself
    (``get_input_embeddings`` / ``get_output_embeddings``).
    """

    blocks: str  # on the model: the list of transformer blocks
    final_norm: str  # on the model: the norm before the unembedding
    attn: str  # on a block: the attention module
    mlp: str  # on a block: the MLP module
    attn_out_proj: str  # on a block: the attention output projection (its input = head outputs)


_LLAMA_LIKE = FamilySpec(
    blocks="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    mlp="mlp",
    attn_out_proj="self_attn.o_proj",
)

FAMILIES: dict[str, FamilySpec] = {
    "llama": _LLAMA_LIKE,  # Llama, SmolLM2
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": FamilySpec(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        attn="attn",
        mlp="mlp",
        attn_out_proj="attn.c_proj",
    ),
    "gpt_neox": FamilySpec(  # Pythia
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        mlp="mlp",
        attn_out_proj="attention.dense",
    ),
}


def _get(obj: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


class LabModel:
    """A causal language model plus its tokenizer, with family-independent names for its parts.

    ``lm.model`` is the plain transformers model and ``lm.tokenizer`` its tokenizer; everything
    else is a convenience that reads the same for GPT-2, Llama-family and GPT-NeoX models.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        family = model.config.model_type
        if family not in FAMILIES:
            raise ModelUnavailableError(
                f"labkit does not know where '{family}' models keep their layers. Supported "
                f"families: {', '.join(sorted(FAMILIES))}. Use one of those, or the default "
                "model: load_model()."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.family = family
        self.spec = FAMILIES[family]
        cfg = model.config
        self.n_layers: int = cfg.num_hidden_layers
        self.n_heads: int = cfg.num_attention_heads
        self.d_model: int = cfg.hidden_size
        self.d_head: int = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size: int = cfg.vocab_size
        # The longest prompt the model was trained on (None if the config does not say).
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None) or getattr(
            cfg, "n_positions", None
        )

    def __repr__(self) -> str:
        return (
            f"LabModel({self.name!r}, family={self.family}, n_layers={self.n_layers}, "
            f"n_heads={self.n_heads}, d_model={self.d_model}, d_head={self.d_head}, "
            f"device={self.device})"
        )

    # ----- parts -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order; ``blocks[i]`` maps resid_pre[i] to resid_post[i]."""
        return _get(self.model, self.spec.blocks)

    @property
    def embed(self) -> nn.Embedding:
        """The token embedding: token ids (batch, pos) -> vectors (batch, pos, d_model)."""
        return self.model.get_input_embeddings()

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.model, self.spec.final_norm)

    @property
    def unembed(self) -> nn.Linear:
        """The unembedding: final residual (batch, pos, d_model) -> logits (batch, pos, vocab)."""
        return self.model.get_output_embeddings()

    def block(self, layer: int) -> nn.Module:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(
                f"layer {layer} does not exist: this model has layers 0..{self.n_layers - 1}."
            )
        return self.blocks[layer]

    def attn(self, layer: int) -> nn.Module:
        return _get(self.block(layer), self.spec.attn)

    def mlp(self, layer: int) -> nn.Module:
        return _get(self.block(layer), self.spec.mlp)

    def attn_out_proj(self, layer: int) -> nn.Module:
        """The attention output projection W_O; its input is the heads' outputs side by side."""
        return _get(self.block(layer), self.spec.attn_out_proj)

    # ----- tokens ------------------------------------------------------------------------------
    @property
    def anchor_token_id(self) -> int:
        """A beginning-of-sequence token to prepend (attention sink); ``<|im_start|>`` here."""
        tok = self.tokenizer
        token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if token_id is None:
            raise ValueError(f"{self.name}'s tokenizer has neither a BOS nor an EOS token.")
        return token_id

    def to_tokens(self, text: str, prepend_anchor: bool = False) -> torch.Tensor:
        """Token ids of ``text``, shape (1, pos), on the model's device."""
        if not isinstance(text, str):
            raise TypeError(f"to_tokens takes a string, got {type(text).__name__}.")
        if not text:
            raise ValueError("The prompt is empty: give at least one word.")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if prepend_anchor:
            ids = [self.anchor_token_id, *ids]
        self.check_length(len(ids))
        return torch.tensor([ids], device=self.device)

    def check_length(self, n_tokens: int) -> None:
        """Warn when a prompt is longer than the context the model was trained on."""
        if self.max_positions is not None and n_tokens > self.max_positions:
            warnings.warn(
                f"The prompt has {n_tokens} tokens, more than the {self.max_positions} this model "
                "was trained on: predictions past that point are unreliable (or fail). Shorten "
                "the prompt.",
                stacklevel=3,
            )

    def str_tokens(self, text: str | torch.Tensor, prepend_anchor: bool = False) -> list[str]:
        """The tokens as readable strings, e.g. ``['The', ' capital', ' of', ...]``."""
        ids = self.to_tokens(text, prepend_anchor) if isinstance(text, str) else text
        return [self.tokenizer.decode([i]) for i in ids.reshape(-1).tolist()]

    def token_id(self, target: str) -> int:
        """The id of ``target``, which must be exactly one token (mind the leading space)."""
        if not isinstance(target, str) or not target:
            raise ValueError("The target must be a non-empty string such as ' Paris'.")
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            hint = ""
            if not target.startswith(" "):
                spaced = self.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
                if len(spaced) == 1:
                    hint = f" With a leading space, {' ' + target!r} is one token."
            raise ValueError(
                f"The target {target!r} is {len(ids)} tokens {pieces}, but a next-token target "
                f"must be a single token. Pick a word that is one token.{hint}"
            )
        return ids[0]

    # ----- running -----------------------------------------------------------------------------
    def logits(self, tokens: str | torch.Tensor) -> torch.Tensor:
        """Logits (batch, pos, vocab) for a prompt or token ids (batch, pos), without gradients."""
        if isinstance(tokens, str):
            ids = self.to_tokens(tokens)
        else:
            if tokens.dim() != 2:
                raise ValueError(
                    f"logits takes token ids of shape (batch, pos), got {tuple(tokens.shape)}. "
                    "For one prompt use lm.to_tokens(text), or ids[None] to add the batch axis."
                )
            ids = tokens.to(self.device)
            self.check_length(ids.shape[-1])
        with torch.no_grad():
            return self.model(input_ids=ids).logits

    def next_token_probs(self, tokens: str | torch.Tensor) -> torch.Tensor:
        """Probabilities (vocab,) of the next token after the prompt (first batch row)."""
        return self.logits(tokens)[0, -1].softmax(-1)

    def top_tokens(self, tokens: str | torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens with their probabilities."""
        probs, ids = self.next_token_probs(tokens).topk(k)
        return [
            (self.tokenizer.decode([i]), p)
            for i, p in zip(ids.tolist(), probs.tolist(), strict=True)
        ]
