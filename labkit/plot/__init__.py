"""Plots the labs share: coloured-token heatmaps, bar charts and curves (``tokens``),
ROME-style restoration grids (``grids``), and attribution vs exact patching (``patching``).
One function per kind of picture."""

from labkit.plot.grids import *  # noqa: F401,F403
from labkit.plot.patching import *  # noqa: F401,F403
from labkit.plot.tokens import *  # noqa: F401,F403
