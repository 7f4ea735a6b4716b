"""Student-facing checks, one package per lab (``labkit.checks.lab01`` ...).

Call a check right after an exercise with your function: ``check_saliency(saliency)``. It shows
one line when your function behaves correctly, or what it tested, expected and got.

Modules: ``core`` (the Checker and the one registry of a lab's exercises), ``results`` (what a
check found), ``guards`` (time limits and side-effect checks around each call), ``answers``
(the expected values: recorded for the notebook's own problems), ``kit`` (the problems every
lab's checks are built from: tiny models of every family, generators, token ids).
"""

from labkit.checks.core import CheckResult, Lab, Results, skip_if_unattempted

__all__ = ["CheckResult", "Lab", "Results", "skip_if_unattempted"]
