"""Lab 02's explorer: choose a prompt, its subject, a target, a site, a window and a noise level;
the ROME-style restoration grid is recomputed and redrawn.

The explorer computes nothing itself: it calls the two functions you wrote in the lab,

* ``corrupt_subject(lm, tokens, subject_positions, n_samples, noise_scale, seed)`` and
* ``restoration_grid(lm, tokens, corrupted_embeds, target_id, site, window)``,

so what you see is your own implementation at work. It looks them up again at every redraw:
finish an exercise after building the explorer, and the explorer uses it.

>>> TracingExplorer(lm, restoration_grid, corrupt_subject)  # in a notebook: controls + grid
"""

from __future__ import annotations

import html
import io
import time
import warnings
from collections.abc import Callable

import torch

import labkit.checks.lab02  # noqa: F401 -- fills the exercise registry the messages read
from labkit.hooks import span_positions
from labkit.models import LabModel
from labkit.widgets.display import (
    Cache,
    NotebookWatch,
    current,
    error_html,
    exercise_on_traceback,
    explorer_bundle,
    failure_message,
    format_probability,
    forward_passes,
    missing_space,
    picture_layout,
    row_layout,
    unfinished_message,
)

__all__ = ["TracingExplorer"]

GridFn = Callable[..., torch.Tensor]
CorruptFn = Callable[..., torch.Tensor]


class TracingExplorer:
    """Controls above a restoration grid that follows them.

    Changing the site, window, noise level or number of samples redraws at once; after editing
    the prompt, subject or target, press Enter in the box or click "trace". Each redraw runs one
    grid, a few seconds on a laptop CPU for a short prompt; while it runs, a bar counts the
    model's forward passes. The window applies to MLP and attention restoration; for the
    residual stream it is switched off.

    What does not change is not computed again: the corrupted embeddings for one prompt,
    subject, noise level, number of samples and seed; the clean and corrupted probabilities;
    and every grid drawn since the last notebook cell ran (going back to a setting is instant).

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
            value=prompt,
            description="prompt",
            style=label,
            layout=widgets.Layout(width="100%", max_width="480px"),
        )
        self.subject = widgets.Text(value=subject, description="subject", style=label)
        self.target = widgets.Text(value=target, description="target", style=label)
        self.suggestion = widgets.Button(layout=widgets.Layout(display="none", width="auto"))
        self._suggested = ""  # the target the suggestion button puts in the box
        self.site = widgets.ToggleButtons(
            options=["resid", "mlp", "attn"],
            value=site,
            description="site",
            style={**label, "button_width": "64px"},
            # the label beside its buttons, as for the other controls (not above them)
            layout=widgets.Layout(width="auto", display="flex", align_items="center"),
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
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, layout=widgets.Layout(display="none", width="100%")
        )
        self.image = widgets.Image(format="png", layout=picture_layout())
        self.grid: torch.Tensor | None = None
        self.figure = None
        self.seconds: float | None = None
        self.png = b""  # the grid on show, as PNG bytes
        self._first_png = b""
        self._last_result = ""  # the status line of the grid on show
        self._corrupted = Cache(8)  # (corrupt_subject, prompt, subject, samples, noise, seed)
        self._probs = Cache(32)  # clean and corrupted p(target)
        self._grids = Cache(32)  # everything a grid depends on -> (grid, seconds)
        self._passes: dict[tuple, int] = {}  # forward passes a grid of this shape took

        self.button.on_click(lambda button: self.update())
        self.suggestion.on_click(lambda button: self._use_suggestion())
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
                widgets.HBox([self.prompt, self.button, self.hint], layout=row_layout()),
                widgets.HBox([self.subject, self.target, self.suggestion], layout=row_layout()),
                widgets.HBox([self.site, self.window], layout=row_layout()),
                widgets.HBox([self.noise, self.samples], layout=row_layout()),
                self.status,
                self.progress,
                self.image,
            ],
            layout=widgets.Layout(width="100%"),
        )
        self.widget.add_class("labkit-explorer")
        self.widget.add_class("labkit-tracing-explorer")
        self.status.add_class("labkit-status")
        self.suggestion.add_class("labkit-suggestion")
        self.progress.add_class("labkit-progress")
        self.image.add_class("labkit-picture")
        self.site.add_class("widget-inline-hbox")  # its label right-aligned like the others
        self.window.disabled = site == "resid"
        self._watch = NotebookWatch(self)
        self.update()
        self._first_png = self.png if self.grid is not None else b""

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus its first grid as a PNG and a line of text for static viewers."""
        return explorer_bundle(
            self.widget,
            {"image/png": self._first_png},
            "TracingExplorer (run the notebook to use its controls)",
        )

    def clear_caches(self) -> None:
        """Forget computed grids (a notebook cell ran: either function may have changed)."""
        for cache in (self._corrupted, self._probs, self._grids):
            cache.clear()

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

    def _use_suggestion(self) -> None:
        if self._suggested:
            self.target.value = self._suggested
        self.update()

    # ----- drawing -----------------------------------------------------------------------------
    def _message(self, text: str, suggestion: str | None = None) -> None:
        """Show a problem instead of the picture (an old grid would answer another question)."""
        self.status.value = error_html(text)
        self.image.layout.display = "none"
        self._suggested = suggestion or ""
        if suggestion:
            self.suggestion.description = f"use {suggestion!r}"
            self.suggestion.layout.display = None
        else:
            self.suggestion.layout.display = "none"

    def update(self) -> None:
        """Corrupt the subject, compute the grid with the student's functions, redraw."""
        button = self.button
        button.disabled, button.description, button.icon = True, "tracing…", "hourglass-half"
        self.status.value = "<i>tracing…</i>"
        try:
            self._update()
        finally:
            button.disabled, button.description, button.icon = False, "trace", "play"
            self.progress.layout.display = "none"

    def _corrupted_probability(self, key: tuple, corrupted: torch.Tensor, target_id: int) -> float:
        """p(target) after the corrupted embeddings, averaged over the noise samples."""
        key = ("corrupted", key, target_id)
        found = self._probs.get(key)
        if found is None:
            with torch.no_grad():
                logits = self.lm.model(inputs_embeds=corrupted).logits[:, -1]
            found = float(logits.softmax(-1)[:, target_id].mean())
            self._probs.put(key, found)
        return found

    def _show_progress(self, expected: int | None) -> Callable[[int, float], None]:
        """What shows the forward passes of a grid (``expected``: as many as last time)."""
        progress = self.progress
        progress.value, progress.max = 0, expected or 1
        progress.bar_style = "info" if expected else ""

        def show(passes: int, seconds: float) -> None:
            of = f" of about {expected}" if expected else ""
            self.status.value = f"<i>tracing… forward pass {passes}{of}, {seconds:.0f} s</i>"
            if expected:
                progress.value = min(passes, expected)
                progress.layout.display = None

        return show

    def _update(self) -> None:
        from labkit.plot.grids import plot_restoration_grid

        lm, site = self.lm, self.site.value
        self._watch.wait_for(None)
        try:
            tokens = lm.to_tokens(self.prompt.value, prepend_anchor=True)
            subject = span_positions(lm, tokens, self.subject.value)
        except (ValueError, TypeError) as err:
            self._message(str(err))
            return
        text = self.target.value
        spacing = missing_space(lm, self.prompt.value, text, self._clean_probs(tokens))
        if spacing is not None:
            self._message(spacing.message, suggestion=spacing.suggestion)
            return
        try:
            target_id = lm.token_id(text)
        except (ValueError, TypeError) as err:
            self._message(str(err))
            return
        window = self.window.value if site != "resid" else 1
        corrupt, grid_fn = current(self.corrupt_subject), current(self.restoration_grid)
        samples, noise = self.samples.value, self.noise.value
        noise_key = (corrupt, self.prompt.value, tuple(subject), samples, noise, self.seed)
        grid_key = (grid_fn, noise_key, target_id, site, window)
        shape = (grid_fn, tokens.shape[1], tuple(subject), site, window, samples)
        start = time.perf_counter()
        running = "corrupt_subject"  # the student's function being called, for the messages
        try:
            corrupted = self._corrupted.get(noise_key)
            if corrupted is None:
                corrupted = corrupt(lm, tokens, subject, samples, noise, self.seed)
                corrupted = _as_tensor(corrupted, "corrupt_subject")
                self._corrupted.put(noise_key, corrupted)
            found = self._grids.get(grid_key)
            if found is None:
                running = "restoration_grid"
                show = self._show_progress(self._passes.get(shape))
                with forward_passes(lm, show) as passes:
                    # copies: a function that writes into its inputs cannot spoil the cache
                    grid = grid_fn(lm, tokens.clone(), corrupted.clone(), target_id, site, window)
                self._passes[shape] = passes[0]
                grid = _as_tensor(grid, "restoration_grid").cpu()
                found = (grid, time.perf_counter() - start)
                self._grids.put(grid_key, found)
                when = f"grid in {found[1]:.1f} s"
            else:
                when = f"grid kept from before (computed in {found[1]:.1f} s)"
        except NotImplementedError as err:
            function = exercise_on_traceback(err, fallback=running)
            self._message(unfinished_message(function))
            self._watch.wait_for(function)
            return
        except Exception as err:  # the student's code failed: say so, keep the widget alive
            function = exercise_on_traceback(err, fallback=running)
            self._message(failure_message(function, err))
            self._watch.wait_for(function)
            return
        self.grid, self.seconds = found
        clean = float(self._clean_probs(tokens)[target_id])
        corrupted_prob = self._corrupted_probability(noise_key, corrupted, target_id)
        self.figure = plot_restoration_grid(
            self.grid,
            lm.str_tokens(tokens),
            site=site,
            subject=subject,
            target=text,
            window=window,
            corrupted_prob=corrupted_prob,
            clean_prob=clean,
        )
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        self.png = buffer.getvalue()
        self.image.value = self.png
        self.image.layout.display = None
        self.suggestion.layout.display = "none"
        self._last_result = (
            f"p({html.escape(repr(text))}): clean {format_probability(clean)}, "
            f"corrupted {format_probability(corrupted_prob)} ({samples} noise "
            f"samples); {when}"
        )
        self.status.value = self._last_result

    def _clean_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        key = ("clean probs", self.prompt.value)
        probs = self._probs.get(key)
        if probs is None:
            with torch.no_grad():
                probs = self.lm.next_token_probs(tokens).detach()
            self._probs.put(key, probs)
        return probs


def _as_tensor(value, function: str) -> torch.Tensor:
    """What the student's ``function`` returned, as a tensor without gradient."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"it returned {type(value).__name__}, not a tensor")
    return value.detach()
