"""Lab 03's registry: every check of ``03_attribution_patching.ipynb`` registers here."""

from labkit.checks.core import Lab

LAB = Lab("03", "03_attribution_patching.ipynb")
