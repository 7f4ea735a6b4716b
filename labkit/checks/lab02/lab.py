"""Lab 02's one registry: every ``@LAB.exercise`` of the parts adds its check here."""

from labkit.checks.core import Lab

LAB = Lab("02", "02_causal_tracing.ipynb")
