"""Lab 02's answer key: the references that are not the solution's own functions, and the
catalogue of plausible mistakes with the hint that names each one, split by the notebook's
parts (``labkit.checks.lab02`` asks for them by name). A mistake that does not apply to its
inputs raises ``NotHere`` and is left out."""

from labkit.grading.answer_keys.lab02 import (  # noqa: F401 -- each part adds to KEY
    part1_patching,
    part2_causal_tracing,
    part3_indirect_effect,
)
from labkit.grading.answer_keys.lab02.key import KEY

__all__ = ["KEY"]
