"""How an explorer shows itself: the live widget, and a static copy of its first view.

A notebook cell that ends with an explorer stores one output with three representations:

* ``application/vnd.jupyter.widget-view+json``: the live controls (JupyterLab, Colab, VS Code);
* a picture of what the explorer drew first (``image/png`` or ``text/html``), which viewers
  without a kernel or without the widget's saved state (GitHub, nbconvert, nbviewer) show
  instead;
* ``text/plain``: one line naming the explorer, for terminals.

The first view is the one computed when the cell ran, so a saved notebook shows the picture its
author saw.
"""

from __future__ import annotations

import base64

__all__ = ["ERROR_COLOUR", "explorer_bundle", "format_probability"]

# JupyterLab's own error colour (follows the light/dark theme); a red readable on white elsewhere.
ERROR_COLOUR = "var(--jp-error-color1, #c62828)"


def explorer_bundle(widget, first_view: dict[str, bytes | str], text: str) -> dict:
    """A display bundle: ``widget``'s live view, ``first_view`` (mime type -> data), ``text``.

    Works with ipywidgets 7 and 8 (both speak version 2 of the widget view format).
    """
    bundle: dict = {
        "text/plain": text,
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2,
            "version_minor": 0,
            "model_id": widget.model_id,
        },
    }
    for mime, data in first_view.items():
        if data:  # an explorer whose first view is an error message has no picture
            binary = isinstance(data, (bytes, bytearray, memoryview))  # widgets keep memoryviews
            bundle[mime] = base64.b64encode(bytes(data)).decode() if binary else data
    return bundle


def format_probability(p: float) -> str:
    """A probability with the digits that matter: 0.749, 0.012, 4.1e-04, 0."""
    if p == 0:
        return "0"
    if p >= 0.01:
        return f"{p:.3f}"
    return f"{p:.1e}"
