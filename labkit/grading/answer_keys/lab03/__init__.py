"""Lab 03's answer key: the references that are not the solution's own functions, and the
catalogue of plausible mistakes, each with the hint that names it.

``sol`` is the solution notebook's namespace (``sol.patch_grid``...). The mistakes are short
wrong implementations, or the solution called the wrong way (noising is the solution with the
two runs swapped). They run only when an answer needs naming (and when ``labkit build``
records the notebook's own problems).
"""

from labkit.grading.answer_keys.lab03 import (  # noqa: F401 -- each part adds to KEY
    part1_metric,
    part2_exact_patching,
    part3_attribution_patching,
    part4_validation,
    part5_failures,
    part6_integrated,
    part7_direct_effects,
    part8_path_patching,
    part9_edges,
    part10_directions,
    part11_faithfulness,
)
from labkit.grading.answer_keys.lab03.key import KEY

__all__ = ["KEY"]
