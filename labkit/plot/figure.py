"""The figure class every labkit plot returns.

Plots are ``matplotlib.figure.Figure`` objects that are not registered with pyplot: a cell that
ends with one shows it once (as a PNG, with or without ``%matplotlib inline``), and figures do
not pile up in memory the way ``plt.figure()`` ones do inside loops and widgets.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["LabFigure"]


class LabFigure(Figure):
    """A matplotlib figure that Jupyter shows as a PNG image."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()
