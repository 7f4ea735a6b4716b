"""Loading a model for the labs: the embedded default, a local folder, or the Hugging Face Hub.

:func:`load_model` goes by the name it is given: an alias of the default model (offline; converted
once by :mod:`labkit.models.default`), an existing folder written by ``save_pretrained``, or a hub
id such as ``"gpt2"`` (needs a network connection the first time). A folder's or a hub model's
family is checked before its weights are read; every model comes back frozen, with eager
attention, as a :class:`~labkit.models.adapter.LabModel`. A model that cannot be loaded raises
:class:`~labkit.models.adapter.ModelUnavailableError`, whose message says what to do instead.

The default checkpoint has a fast path (:func:`_load_checkpoint_fast` and
:func:`_load_tokenizer_fast`): parameters are created empty and replaced by the safetensors
tensors. If it fails on intact files, transformers loads them its own (slower) way; on damaged
files the default is converted again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from labkit.models.adapter import FAMILIES, LabModel, ModelUnavailableError
from labkit.models.default import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_ALIASES,
    _say,
    cache_problem,
    prepare_default_model,
)


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
