"""labkit: the helper package behind the labs on *why* a language model predicts what it does.

Student-facing names (stable; notebooks depend on them):
    load_model, LabModel          labkit.models
    capture, patch, SITES         labkit.hooks
    tiny_model                    labkit.tiny (for tests and quick experiments)

``import labkit`` is instant: each name (and each submodule, ``labkit.plot``, ``labkit.hooks``,
...) is imported the first time it is used, so the first notebook cell pays only for what it
uses, and ``labkit doctor`` works even where torch is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "DEFAULT_MODEL": "labkit.models",
    "LabModel": "labkit.models",
    "ModelUnavailableError": "labkit.models",
    "load_model": "labkit.models",
    "SITES": "labkit.hooks",
    "ActivationCache": "labkit.hooks",
    "capture": "labkit.hooks",
    "hooked": "labkit.hooks",
    "patch": "labkit.hooks",
    "tiny_model": "labkit.tiny",
}
_SUBMODULES = (
    "build",
    "checks",
    "cli",
    "data",
    "doctor",
    "hooks",
    "metrics",
    "models",
    "plot",
    "tiny",
    "widgets",
)

__all__ = [
    "DEFAULT_MODEL",
    "SITES",
    "ActivationCache",
    "LabModel",
    "ModelUnavailableError",
    "capture",
    "hooked",
    "load_model",
    "patch",
    "tiny_model",
]

if TYPE_CHECKING:
    from labkit.hooks import SITES, ActivationCache, capture, hooked, patch
    from labkit.models import DEFAULT_MODEL, LabModel, ModelUnavailableError, load_model
    from labkit.tiny import tiny_model


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"labkit.{name}")
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
