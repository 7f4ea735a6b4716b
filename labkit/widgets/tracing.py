"""Lab 02's explorer: choose a prompt, its subject, a target, a site, a window and a noise level;
the ROME-style restoration grid is recomputed and redrawn.

The explorer computes nothing itself: it calls the two functions you wrote in the lab,

* ``corrupt_subject(lm, tokens, subject_positions, n_samples, noise_scale, seed)`` and
* ``restoration_grid(lm, tokens, corrupted_embeds, target_id, site, window)``,

so what you see is your own implementation at work.

>>> TracingExplorer(lm, restoration_grid, corrupt_subject)  # in a notebook: controls + grid
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import torch

from labkit.hooks import span_positions
from labkit.models import LabModel

__all__ = ["TracingExplorer"]

GridFn = Callable[..., torch.Tensor]
CorruptFn = Callable[..., torch.Tensor]


class TracingExplorer:
    """Controls above a restoration grid that follows them.

    Changing the site, window, noise level or number of samples redraws at once; after editing
    the prompt, subject or target, press "trace". Each redraw runs one grid, a few seconds on a
    laptop CPU for a short prompt.
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
        wide = widgets.Layout(width="460px")
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=wide)
        self.subject = widgets.Text(value=subject, description="subject")
        self.target = widgets.Text(value=target, description="target")
        self.site = widgets.ToggleButtons(options=["resid", "mlp", "attn"], value=site)
        self.window = widgets.IntSlider(value=window, min=1, max=20, description="window")
        self.noise = widgets.FloatSlider(
            value=noise_scale, min=0.0, max=10.0, step=0.5, description="noise (x std)"
        )
        self.samples = widgets.IntSlider(value=n_samples, min=1, max=10, description="samples")
        self.button = widgets.Button(description="trace", button_style="primary")
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.grid: torch.Tensor | None = None
        self.figure = None
        self.button.on_click(lambda button: self.update())
        for control in (self.site, self.window, self.noise, self.samples):
            control.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.prompt, self.button]),
                widgets.HBox([self.subject, self.target]),
                widgets.HBox([self.site, self.window]),
                widgets.HBox([self.noise, self.samples]),
                self.status,
                self.image,
            ]
        )
        self.update()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _message(self, text: str) -> None:
        self.status.value = f"<span style='color:#b00'>{text}</span>"

    def update(self) -> None:
        """Corrupt the subject, compute the grid with the student's functions, redraw."""
        from labkit.plot.grids import plot_restoration_grid

        lm, site = self.lm, self.site.value
        try:
            tokens = lm.to_tokens(self.prompt.value, prepend_anchor=True)
            subject = span_positions(lm, tokens, self.subject.value)
            target_id = lm.token_id(self.target.value)
        except (ValueError, TypeError) as err:
            self._message(str(err))
            return
        window = self.window.value if site != "resid" else 1
        start = time.perf_counter()
        try:
            corrupted = self.corrupt_subject(
                lm, tokens, subject, self.samples.value, self.noise.value, self.seed
            )
            grid = self.restoration_grid(lm, tokens, corrupted, target_id, site, window)
        except NotImplementedError:
            self._message("Finish exercises 2.3 and 2.4 first: the explorer runs your code.")
            return
        except Exception as err:  # the student's code failed: say so, keep the widget alive
            self._message(f"Your function raised {type(err).__name__}: {err}")
            return
        seconds = time.perf_counter() - start
        with torch.no_grad():
            clean = lm.model(tokens).logits[0, -1].softmax(-1)[target_id].item()
            low = lm.model(inputs_embeds=corrupted).logits[:, -1].softmax(-1)[:, target_id]
        self.grid = torch.as_tensor(grid).detach().cpu()
        self.figure = plot_restoration_grid(
            self.grid,
            lm.str_tokens(tokens),
            site=site,
            subject=subject,
            target=self.target.value,
            window=window,
            corrupted_prob=low.mean().item(),
            clean_prob=clean,
        )
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.image.value = buffer.getvalue()
        self.status.value = (
            f"p(target): clean {clean:.3f}, corrupted {low.mean().item():.3f} "
            f"({self.samples.value} noise samples); grid in {seconds:.1f} s"
        )
