"""Lab 02's explorer: choose a prompt, its subject, a target, a site, a window and a noise level;
the ROME-style restoration grid is recomputed and redrawn.

The explorer computes nothing itself: it calls the two functions you wrote in the lab,

* ``corrupt_subject(lm, tokens, subject_positions, n_samples, noise_scale, seed)`` and
* ``restoration_grid(lm, tokens, corrupted_embeds, target_id, site, window)``,

so what you see is your own implementation at work.

>>> TracingExplorer(lm, restoration_grid, corrupt_subject)  # in a notebook: controls + grid
"""

from __future__ import annotations

import html
import io
import time
import warnings
from collections.abc import Callable

import torch

from labkit.hooks import span_positions
from labkit.models import LabModel
from labkit.widgets.display import ERROR_COLOUR, explorer_bundle, format_probability

__all__ = ["TracingExplorer"]

GridFn = Callable[..., torch.Tensor]
CorruptFn = Callable[..., torch.Tensor]


class TracingExplorer:
    """Controls above a restoration grid that follows them.

    Changing the site, window, noise level or number of samples redraws at once; after editing
    the prompt, subject or target, press Enter in the box or click "trace". Each redraw runs one
    grid, a few seconds on a laptop CPU for a short prompt. The window applies to MLP and
    attention restoration; for the residual stream it is switched off.

    In a saved notebook the explorer shows its first grid as a PNG, so a notebook viewer without
    a running kernel still shows a picture.
    """

    def __init__(
        self,
        lm: LabModel,
        restoration_grid: GridFn,
        corrupt_subject: CorruptFn,
        prompt: str = "The capital of France is",
        subject: str = " France",
        target: str = " Paris",
        site: str = "resid",
        window: int = 10,
        noise_scale: float = 3.0,
        n_samples: int = 3,
        seed: int = 0,
    ) -> None:
        import ipywidgets as widgets

        self.lm, self.seed = lm, seed
        self.restoration_grid, self.corrupt_subject = restoration_grid, corrupt_subject
        label = {"description_width": "110px"}  # room for "noise (x std)"
        self.prompt = widgets.Text(
            value=prompt, description="prompt", style=label, layout=widgets.Layout(width="480px")
        )
        self.subject = widgets.Text(value=subject, description="subject", style=label)
        self.target = widgets.Text(value=target, description="target", style=label)
        self.site = widgets.ToggleButtons(
            options=["resid", "mlp", "attn"], value=site, description="site", style=label
        )
        # continuous_update=False: one grid when the slider is released, not one per step.
        self.window = widgets.IntSlider(
            value=window,
            min=1,
            max=20,
            description="window",
            style=label,
            continuous_update=False,
        )
        self.noise = widgets.FloatSlider(
            value=noise_scale,
            min=0.0,
            max=10.0,
            step=0.5,
            description="noise (x std)",
            style=label,
            continuous_update=False,
        )
        self.samples = widgets.IntSlider(
            value=n_samples,
            min=1,
            max=10,
            description="samples",
            style=label,
            continuous_update=False,
        )
        self.button = widgets.Button(description="trace", button_style="primary", icon="play")
        self.hint = widgets.HTML("<small>Enter in a box, or the button, traces again.</small>")
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.grid: torch.Tensor | None = None
        self.figure = None
        self.seconds: float | None = None
        self.png = b""  # the grid on show, as PNG bytes
        self._first_png = b""
        self._last_result = ""  # the status line of the grid on show

        self.button.on_click(lambda button: self.update())
        for box in (self.prompt, self.subject, self.target):
            with warnings.catch_warnings():  # ipywidgets 8 prefers observe(); Enter needs this
                warnings.simplefilter("ignore", DeprecationWarning)
                box.on_submit(lambda box: self.update())
            box.observe(self._on_edit, names="value")
        self.site.observe(self._on_site, names="value")
        self.window.observe(self._on_window, names="value")
        for control in (self.noise, self.samples):
            control.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.prompt, self.button, self.hint]),
                widgets.HBox([self.subject, self.target]),
                widgets.HBox([self.site, self.window]),
                widgets.HBox([self.noise, self.samples]),
                self.status,
                self.image,
            ]
        )
        self.widget.add_class("labkit-explorer")
        self.widget.add_class("labkit-tracing-explorer")
        self.status.add_class("labkit-status")
        self.image.add_class("labkit-picture")
        self.window.disabled = site == "resid"
        self.update()
        self._first_png = self.png if self.grid is not None else b""

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus its first grid as a PNG and a line of text for static viewers."""
        return explorer_bundle(
            self.widget,
            {"image/png": self._first_png},
            "TracingExplorer (run the notebook to use its controls)",
        )

    # ----- events ------------------------------------------------------------------------------
    def _on_edit(self, change) -> None:
        """Typing in a box: mark the grid as out of date; Enter or the button traces."""
        if self.grid is not None:
            self.status.value = (
                "<i>edited: press Enter or click trace to redraw for the new text.</i> "
                + self._last_result
            )

    def _on_site(self, change) -> None:
        self.window.disabled = change["new"] == "resid"  # one layer at a time in the stream
        self.update()

    def _on_window(self, change) -> None:
        if self.site.value != "resid":  # the residual stream ignores the window
            self.update()

    # ----- drawing -----------------------------------------------------------------------------
    def _message(self, text: str) -> None:
        """Show a problem instead of the picture (an old grid would answer another question)."""
        self.status.value = f'<span style="color: {ERROR_COLOUR}">{html.escape(text)}</span>'
        self.image.layout.display = "none"

    def _check_target(self, tokens: torch.Tensor, target: str, target_id: int) -> str | None:
        """A problem with a target typed without its leading space, or None."""
        if target.startswith((" ", "\n")) or self.prompt.value[-1:].isspace():
            return None
        try:
            spaced_id = self.lm.token_id(" " + target)
        except ValueError:
            return None
        probs = self.lm.next_token_probs(tokens)
        p_spaced, p_target = float(probs[spaced_id]), float(probs[target_id])
        if p_spaced <= p_target:
            return None
        return (
            f"The target {target!r} has no leading space. After a word the model writes the next "
            f"word with its space: p({' ' + target!r}) = {format_probability(p_spaced)}, "
            f"p({target!r}) = {format_probability(p_target)}. Type {' ' + target!r} "
            "(with the space) in the target box."
        )

    def update(self) -> None:
        """Corrupt the subject, compute the grid with the student's functions, redraw."""
        button = self.button
        button.disabled, button.description, button.icon = True, "tracing…", "hourglass-half"
        self.status.value = "<i>tracing… (one grid takes a few seconds)</i>"
        try:
            self._update()
        finally:
            button.disabled, button.description, button.icon = False, "trace", "play"

    def _update(self) -> None:
        from labkit.plot.grids import plot_restoration_grid

        lm, site = self.lm, self.site.value
        try:
            tokens = lm.to_tokens(self.prompt.value, prepend_anchor=True)
            subject = span_positions(lm, tokens, self.subject.value)
            target_id = lm.token_id(self.target.value)
        except (ValueError, TypeError) as err:
            self._message(str(err))
            return
        problem = self._check_target(tokens, self.target.value, target_id)
        if problem:
            self._message(problem)
            return
        window = self.window.value if site != "resid" else 1
        start = time.perf_counter()
        try:
            corrupted = self.corrupt_subject(
                lm, tokens, subject, self.samples.value, self.noise.value, self.seed
            )
            grid = self.restoration_grid(lm, tokens, corrupted, target_id, site, window)
        except NotImplementedError:
            self._message(
                "The explorer runs your own corrupt_subject and restoration_grid: finish "
                "exercises 2.3 and 2.4 above, then run this cell again."
            )
            return
        except Exception as err:  # the student's code failed: say so, keep the widget alive
            self._message(f"Your function raised {type(err).__name__}: {err}")
            return
        self.seconds = time.perf_counter() - start
        with torch.no_grad():
            clean = lm.model(tokens).logits[0, -1].softmax(-1)[target_id].item()
            low = lm.model(inputs_embeds=corrupted).logits[:, -1].softmax(-1)[:, target_id]
        corrupted_prob = low.mean().item()
        self.grid = torch.as_tensor(grid).detach().cpu()
        self.figure = plot_restoration_grid(
            self.grid,
            lm.str_tokens(tokens),
            site=site,
            subject=subject,
            target=self.target.value,
            window=window,
            corrupted_prob=corrupted_prob,
            clean_prob=clean,
        )
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        self.png = buffer.getvalue()
        self.image.value = self.png
        self.image.layout.display = None
        self._last_result = (
            f"p({html.escape(repr(self.target.value))}): clean {format_probability(clean)}, "
            f"corrupted {format_probability(corrupted_prob)} ({self.samples.value} noise "
            f"samples); grid in {self.seconds:.1f} s"
        )
        self.status.value = self._last_result
