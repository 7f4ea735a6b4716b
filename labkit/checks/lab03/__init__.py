"""Checks for lab 03 (attribution patching): one ``check_<exercise>(your_function)`` per
exercise, in notebook order.

Each check runs your function on tiny random transformers of several families (weights scaled
up and norm weights far from 1, so that every shortcut gives another answer), with sizes,
batches, sites and arguments that the exercise leaves free, and compares with the answers
``labkit build`` recorded from the reference solution. Where the method has an exact property
(the metric is 1 on the clean run and 0 on the corrupted one; attribution patching is exact on
a model that is linear in its activations; integrated patching adds up to the total effect),
the check tests it too. Loops, batches, float64, labkit hooks and nnsight are all accepted.

The metric the checks pass to your functions from exercise 3.2 on is a
:class:`~labkit.checks.lab03.problems.LinearMetric`: a function of the last position's logits,
(batch, vocab) -> (), like your normalised metric.
"""

from labkit.checks.core import Results, skip_if_unattempted
from labkit.checks.lab03.lab import LAB

# The checks register themselves with LAB; __all__ follows from the registry.
from labkit.checks.lab03.part1_metric import check_normalised_metric  # noqa: F401
from labkit.checks.lab03.part2_exact_patching import check_patch_grid, check_patch_heads  # noqa: F401
from labkit.checks.lab03.part3_attribution_patching import (  # noqa: F401
    check_activations_and_grads,
    check_attribution_patching,
    check_head_attribution,
)
from labkit.checks.lab03.part4_validation import (  # noqa: F401
    check_agreement,
    check_patches_to_find_top_k,
)
from labkit.checks.lab03.part5_failures import check_qk_fix  # noqa: F401
from labkit.checks.lab03.part6_integrated import check_integrated_patching  # noqa: F401
from labkit.checks.lab03.part7_direct_effects import (  # noqa: F401
    check_direct_logit_attribution,
    check_logit_lens,
)
from labkit.checks.lab03.part8_path_patching import check_path_patching  # noqa: F401
from labkit.checks.lab03.part9_edges import check_edge_attribution_patching  # noqa: F401
from labkit.checks.lab03.part10_directions import check_patch_head_set  # noqa: F401
from labkit.checks.lab03.part11_faithfulness import check_circuit_faithfulness  # noqa: F401
from labkit.checks.lab03.problems import SITES

EXERCISES = LAB.exercises

__all__ = [
    *LAB.check_names(),
    "EXERCISES",
    "LAB",
    "SITES",
    "Results",
    "skip_if_unattempted",
]
