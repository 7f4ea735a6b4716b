"""Checks for lab 01 (input attribution): one ``check_<exercise>(your_function)`` per exercise.

Each check calls your function on problems built to tell the method apart from its shortcuts:
smooth, non-additive functions of the embeddings; nonlinear, position-aware token scorers with
interactions; attention patterns whose heads differ and whose rows need not sum to one; and
tiny transformers of several families (``labkit.checks.kit``), with sizes from 1 to past 9
positions and layers. Every function is called several times, in an unsorted order, with a
repeat at the end, and its answers are compared with the recorded answers of the solution, and
with properties of the method itself. A hint names the mistake when your answer matches a
known one.

The parts of the lab, in notebook order: ``part1_gradients`` (1.1-1.3),
``part2_integrated_gradients`` (1.4-1.6), ``part3_attention`` (1.7-1.9),
``part4_perturbation`` (1.10-1.11), ``part5_contrastive`` (1.12), ``part6_validation``
(1.13-1.16). The problems they are built from are in ``problems``.
"""

from labkit.checks.core import Results, skip_if_unattempted
from labkit.checks.lab01 import (  # noqa: F401 -- importing a part registers its exercises
    part1_gradients,
    part2_integrated_gradients,
    part3_attention,
    part4_perturbation,
    part5_contrastive,
    part6_validation,
)
from labkit.checks.lab01.lab import LAB

EXERCISES = LAB.exercises
globals().update({check.__name__: check for check in EXERCISES.values()})  # check_saliency...

__all__ = [
    *LAB.check_names(),
    "EXERCISES",
    "LAB",
    "Results",
    "skip_if_unattempted",
]
