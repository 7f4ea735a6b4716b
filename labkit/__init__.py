"""labkit: the helper package behind the labs on *why* a language model predicts what it does.

Student-facing names (stable; notebooks depend on them):
    load_model, LabModel          labkit.models
    capture, patch, SITES         labkit.hooks
    tiny_model                    labkit.tiny (for tests and quick experiments)
"""

from labkit.hooks import SITES, ActivationCache, capture, hooked, patch
from labkit.models import DEFAULT_MODEL, LabModel, ModelUnavailableError, load_model
from labkit.tiny import tiny_model

__version__ = "0.1.0"

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
