"""Lab 01's answer key: the references that are not the solution's own functions, and the
catalogue of plausible mistakes with the hint that names each one, split by the notebook's
parts (``labkit.checks.lab01`` asks for them by name)."""

from labkit.grading.answer_keys.lab01 import (  # noqa: F401 -- each part adds to KEY
    part1_gradients,
    part2_integrated_gradients,
    part3_attention,
    part4_perturbation,
    part5_contrastive,
    part6_validation,
)
from labkit.grading.answer_keys.lab01.key import KEY

__all__ = ["KEY"]
