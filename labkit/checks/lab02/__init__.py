"""Checks for lab 02: activation patching and ROME-style causal tracing.

Call a check right after its exercise with your function, e.g.
``checks.check_patch_position(patch_position)``. Each check runs your function on tiny random
models of several families (``labkit.tiny``) made into sharp test problems: weights scaled up,
so that predictions are confident and depend on every token, and norm weights that are not 1,
so that a missing final norm shows. It varies everything the exercise leaves free (sizes past
9 layers and tokens, repeated tokens, subjects anywhere, every argument), calls your function
more than once and in no order, and tests what the method implies besides comparing with the
expected values (recorded from the course's solution by ``labkit build``). Where your answer
matches a known mistake, the hint names it.

Loops, batches, ``labkit.hooks``, nnsight and float64 are all accepted.

The parts, in notebook order: :mod:`.part1_patching` (2.1-2.3), :mod:`.part2_causal_tracing`
(2.4-2.6), :mod:`.part3_indirect_effect` (2.7-2.8); their problems: :mod:`.problems`.
"""

from labkit.checks.core import Results, skip_if_unattempted
from labkit.checks.lab02 import (  # noqa: F401 -- importing a part registers its exercises
    part1_patching,
    part2_causal_tracing,
    part3_indirect_effect,
)
from labkit.checks.lab02.lab import LAB
from labkit.checks.lab02.part3_indirect_effect import ROLES

EXERCISES = LAB.exercises  # the notebook's function name -> its check, in exercise order
globals().update({check.__name__: check for check in EXERCISES.values()})  # check_recovery...

__all__ = [*LAB.check_names(), "EXERCISES", "LAB", "ROLES", "Results", "skip_if_unattempted"]
