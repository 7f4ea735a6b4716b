"""Lab 03's explorer: choose a task, a site and a prompt pair; see attribution patching next to
exact patching, and the scatter of one against the other.

The explorer computes nothing itself: it calls the functions you wrote in the lab,

* ``normalised_metric(lm, clean_tokens, corrupted_tokens, target_ids, foil_ids)``,
* ``attribution_patching(lm, clean, corrupted, metric, site)`` and
  ``head_attribution(lm, clean, corrupted, metric)`` for the estimate,
* ``patch_grid(lm, clean, corrupted, metric, site)`` and ``patch_heads(...)`` for exact
  patching, unless the lab's saved results (``exact``) already hold the answer,

so what you see is your own implementation at work. It looks them up again at every redraw:
finish an exercise after building the explorer, and the explorer uses it.

>>> PatchingExplorer(lm, functions, exact=saved["tasks"])  # in a notebook: controls + pictures
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping

import torch

import labkit.checks.lab03  # noqa: F401 -- fills the exercise registry the messages read
from labkit.data import PATCHING_TASKS, patching_pairs
from labkit.models import LabModel
from labkit.widgets.display import (
    Cache,
    NotebookWatch,
    current,
    error_html,
    exercise_on_traceback,
    explorer_bundle,
    failure_message,
    forward_passes,
    picture_layout,
    row_layout,
    unfinished_message,
)

__all__ = ["PatchingExplorer", "SITE_CHOICES"]

SITE_CHOICES = ("resid_pre", "attn_out", "mlp_out", "heads")
ALL_PAIRS = "all pairs (one batch)"


class PatchingExplorer:
    """Dropdowns for task, site and pair above two pictures that follow them.

    ``functions`` maps the exercise names above to your functions. ``exact`` holds saved exact
    results per task (``{task: {"pairs": [...], "exact": {site: grid}}}``), used when the pair
    is the saved batch; other pairs are patched exactly with your functions (a few seconds).
    ``pairs`` replaces the lab's prompt pairs (``{task: [{"id", "clean", "corrupted", "target",
    "foil"}]}``), e.g. your own. What was computed is kept until the next notebook cell runs.
    """

    def __init__(
        self,
        lm: LabModel,
        functions: Mapping[str, Callable],
        exact: Mapping[str, Mapping] | None = None,
        task: str = "ioi",
        site: str = "resid_pre",
        pairs: Mapping[str, list[dict]] | None = None,
    ) -> None:
        import ipywidgets as widgets

        self.lm, self.functions, self.exact = lm, dict(functions), dict(exact or {})
        self.pairs = dict(pairs) if pairs else {t: patching_pairs(t) for t in PATCHING_TASKS}
        self.task = widgets.Dropdown(options=list(self.pairs), value=task, description="task")
        self.site = widgets.Dropdown(options=list(SITE_CHOICES), value=site, description="site")
        self.pair = widgets.Dropdown(
            description="pair", layout=widgets.Layout(width="100%", max_width="420px")
        )
        self.status = widgets.HTML()
        self.heatmaps = widgets.Image(format="png", layout=picture_layout("none"))
        self.scatter = widgets.Image(format="png", layout=picture_layout("none"))
        self.estimate: torch.Tensor | None = None
        self.exact_grid: torch.Tensor | None = None
        self._quiet = False
        self._results = Cache(32)  # everything a picture depends on -> (estimate, exact, s)
        self._passes: dict[tuple, int] = {}  # forward passes the last computation took
        self._set_pairs()
        self.task.observe(lambda change: (self._set_pairs(), self.update()), names="value")
        self.site.observe(lambda change: self.update(), names="value")
        self.pair.observe(lambda change: self._quiet or self.update(), names="value")
        pictures = widgets.HBox(
            [self.heatmaps, self.scatter],
            layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start", width="100%"),
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.task, self.site, self.pair], layout=row_layout()),
                self.status,
                pictures,
            ],
            layout=widgets.Layout(width="100%"),
        )
        self.widget.add_class("labkit-explorer")  # names the browser tests find it by
        self.widget.add_class("labkit-patching-explorer")
        self.status.add_class("labkit-status")
        pictures.add_class("labkit-picture")
        self._watch = NotebookWatch(self)
        self.update()
        self._first_png = bytes(self.heatmaps.value) if self.estimate is not None else b""

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus its first heatmaps as a PNG for viewers without a kernel."""
        return explorer_bundle(
            self.widget,
            {"image/png": self._first_png},
            "PatchingExplorer (run the notebook to use its controls)",
        )

    def clear_caches(self) -> None:
        """Forget computed pictures (a notebook cell ran: any function may have changed)."""
        self._results.clear()

    def _set_pairs(self) -> None:
        pairs = self.pairs[self.task.value]
        options = [ALL_PAIRS] if len(pairs) > 1 else []
        options += [p["id"] for p in pairs]
        self._quiet = True  # one redraw per change of task, not one per dropdown update
        try:
            self.pair.options = options  # also selects the first option
            self.pair.value = options[0]
        finally:
            self._quiet = False

    def _show_progress(self, expected: int | None) -> Callable[[int, float], None]:
        def show(passes: int, seconds: float) -> None:
            of = f" of about {expected}" if expected else ""
            self.status.value = f"<i>computing… forward pass {passes}{of}, {seconds:.0f} s</i>"

        return show

    def _message(self, text: str) -> None:
        self.status.value = error_html(text)
        self.heatmaps.layout.display = self.scatter.layout.display = "none"

    def _selected(self) -> list[dict]:
        pairs = self.pairs[self.task.value]
        if self.pair.value == ALL_PAIRS:
            saved = self.exact.get(self.task.value, {}).get("pairs")
            return [p for p in pairs if saved is None or p["id"] in saved]
        return [p for p in pairs if p["id"] == self.pair.value]

    def _saved_exact(self, pairs: list[dict], site: str) -> torch.Tensor | None:
        saved = self.exact.get(self.task.value)
        if not saved or [p["id"] for p in pairs] != list(saved.get("pairs", [])):
            return None
        grid = saved.get("exact", {}).get(site)
        return None if grid is None else torch.tensor(grid)

    def update(self) -> None:
        """Compute the estimate (and exact patching if not saved) and redraw both pictures."""
        from labkit.plot.patching import plot_patching_pair, plot_patching_scatter

        lm, site = self.lm, self.site.value
        self._watch.wait_for(None)
        self.status.value = "<i>computing…</i>"
        pairs = self._selected()
        if not pairs:
            self._message("No pair selected.")
            return
        try:
            clean = torch.cat([lm.to_tokens(p["clean"], prepend_anchor=True) for p in pairs])
            corrupted = torch.cat(
                [lm.to_tokens(p["corrupted"], prepend_anchor=True) for p in pairs]
            )
            targets = [lm.token_id(p["target"]) for p in pairs]
            foils = [lm.token_id(p["foil"]) for p in pairs]
        except (ValueError, RuntimeError) as err:
            self._message(f"These prompts do not fit this model: {err}")
            return
        heads = site == "heads"
        names = ["normalised_metric", "head_attribution" if heads else "attribution_patching"]
        exact = self._saved_exact(pairs, site)
        if exact is None:
            names.append("patch_heads" if heads else "patch_grid")
        # the functions as the notebook defines them now (None: not given to the explorer)
        functions = {n: current(self.functions[n]) if n in self.functions else None for n in names}
        running = [names[0]]  # the function being called, for the messages
        try:
            key = (self.task.value, site, tuple(p["id"] for p in pairs), *functions.values())
            found = self._results.get(key)
            if found is None:
                shape = key[:3]  # the same task, site and pairs take as many passes again
                with forward_passes(lm, self._show_progress(self._passes.get(shape))) as passes:
                    found = self._compute(
                        functions, running, clean, corrupted, targets, foils, site, exact
                    )
                self._passes[shape] = passes[0]
                self._results.put(key, found)
        except NotImplementedError as err:
            function = exercise_on_traceback(err, fallback=running[0])
            self._message(unfinished_message(function))
            self._watch.wait_for(function)
            return
        except Exception as err:  # the student's code failed: say so, keep the widget alive
            function = exercise_on_traceback(err, fallback=running[0])
            self._message(failure_message(function, err))
            self._watch.wait_for(function)
            return
        self.estimate, self.exact_grid, seconds = found
        if self.estimate.shape != self.exact_grid.shape:
            self._message(
                f"The estimate has shape {tuple(self.estimate.shape)} but exact patching "
                f"{tuple(self.exact_grid.shape)}."
            )
            return
        columns = [str(h) for h in range(lm.n_heads)] if heads else lm.str_tokens(clean[0])
        name = f"{self.task.value}, {site}, {len(pairs)} pair{'s' * (len(pairs) > 1)}"
        self.heatmaps.value = _png(
            plot_patching_pair(
                self.estimate,
                self.exact_grid,
                columns=columns,
                xlabel="head" if heads else "position (first prompt's tokens)",
                title=name,
            )
        )
        self.scatter.value = _png(plot_patching_scatter(self.estimate, self.exact_grid, title=name))
        self.heatmaps.layout.display = self.scatter.layout.display = None
        r = torch.corrcoef(torch.stack([self.estimate.flatten(), self.exact_grid.flatten()]))
        self.status.value = (
            f"{name}: Pearson r = {float(r[0, 1]):.3f} over {self.estimate.numel()} "
            f"components; computed in {seconds:.1f} s"
        )

    def _compute(self, functions, running, clean, corrupted, targets, foils, site, exact):
        """(estimate, exact, seconds) with the student's ``functions`` (name -> function);
        ``running[0]`` names the one being called."""
        lm, start = self.lm, time.perf_counter()

        def call(name: str, *args):
            running[0] = name
            if functions[name] is None:
                raise NotImplementedError(name)
            return functions[name](lm, clean, corrupted, *args)

        metric = call("normalised_metric", targets, foils)
        if site == "heads":
            estimate = call("head_attribution", metric).sum(-1)
            if exact is None:
                exact = call("patch_heads", metric)
        else:
            estimate = call("attribution_patching", metric, site)
            if exact is None:
                exact = call("patch_grid", metric, site)
        return (
            torch.as_tensor(estimate).detach().cpu().double(),
            torch.as_tensor(exact).detach().cpu().double(),
            time.perf_counter() - start,
        )


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()
