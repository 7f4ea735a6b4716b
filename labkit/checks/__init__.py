"""Student-facing checks, one module per lab (``labkit.checks.lab01`` ...).

Call a check right after an exercise with your function: ``check_saliency(saliency)``. It shows
one line when your function behaves correctly, or what it tested, expected and got.

Modules: ``core`` (the Checker and the ``check`` decorator), ``results`` (what a check found),
``guards`` (time limits and side-effect checks around each call), ``transport`` (running the
student's code here, or recorded in a sandbox for the grader).
"""

from labkit.checks.core import CheckResult, Results, check, skip_if_unattempted

__all__ = ["CheckResult", "Results", "check", "skip_if_unattempted"]
