"""Student-facing checks, one module per lab (``labkit.checks.lab01`` ...).

Call a check right after an exercise with your function: ``check_saliency(saliency)``.
"""

from labkit.checks.core import CheckResult, check, skip_if_unattempted

__all__ = ["CheckResult", "check", "skip_if_unattempted"]
