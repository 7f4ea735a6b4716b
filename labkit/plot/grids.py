"""Grid pictures: ROME-style restoration heatmaps over (token, layer), and per-layer curves.

A restoration grid holds, for every layer and token position, the probability of the target
after restoring the clean activation there in the corrupted run. The pictures follow the ROME
paper (Meng et al., 2022): one row per token with the corrupted subject tokens starred, one
column per layer, purple for the residual stream, green for MLP outputs and red for attention
outputs, and a colour scale that starts at the corrupted run's probability.

Figures are :class:`labkit.plot.figure.LabFigure` objects: a cell that ends with one shows it
once, as a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from labkit.plot.figure import LabFigure

__all__ = ["SITE_COLOURS", "plot_indirect_effects", "plot_layer_curves", "plot_restoration_grid"]

SITE_COLOURS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
_SITE_NAMES = {"resid": "residual stream", "mlp": "MLP output", "attn": "attention output"}


def _as_grid(grid: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().float().numpy()
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"Expected a 2-d grid (n_layers, pos), got shape {grid.shape}.")
    return grid


def _token_label(token: str, starred: bool) -> str:
    token = token.replace("\n", "\\n")
    return f"{token}*" if starred else token


def plot_restoration_grid(
    grid: torch.Tensor | np.ndarray,
    tokens: Sequence[str],
    *,
    site: str = "resid",
    subject: Sequence[int] = (),
    target: str | None = None,
    window: int | None = None,
    corrupted_prob: float | None = None,
    clean_prob: float | None = None,
    title: str | None = None,
) -> Figure:
    """Draw a restoration grid (n_layers, pos) as ROME does: tokens down, layers across.

    ``subject`` lists the corrupted positions (starred); ``corrupted_prob`` sets the bottom of
    the colour scale (restoring nothing gives it) and ``clean_prob`` is noted in the colour
    bar's label. ``site`` is "resid", "mlp" or "attn" and picks the colours.
    """
    if site not in SITE_COLOURS:
        raise ValueError(f"Unknown site {site!r}: use one of {', '.join(SITE_COLOURS)}.")
    values = _as_grid(grid)
    n_layers, n_pos = values.shape
    if len(tokens) != n_pos:
        raise ValueError(
            f"The grid has {n_pos} positions but {len(tokens)} tokens were given: pass the "
            "tokens of the same prompt (with the anchor token if the grid has it)."
        )
    fig = LabFigure(figsize=(min(3 + 0.22 * n_layers, 10), 0.9 + 0.32 * n_pos))
    ax = fig.add_subplot()
    low = values.min() if corrupted_prob is None else min(corrupted_prob, values.min())
    image = ax.pcolormesh(
        values.T, cmap=SITE_COLOURS[site], vmin=low, vmax=max(values.max(), low + 1e-6)
    )
    ax.invert_yaxis()
    ax.set_yticks(np.arange(n_pos) + 0.5)
    ax.set_yticklabels([_token_label(t, i in set(subject)) for i, t in enumerate(tokens)])
    step = max(1, n_layers // 10)
    ax.set_xticks(np.arange(0, n_layers, step) + 0.5)
    ax.set_xticklabels([str(layer) for layer in range(0, n_layers, step)])
    what = _SITE_NAMES[site]
    if window and window > 1 and site != "resid":
        what += f"s (window of {window} layers)"
    ax.set_xlabel(f"layer of the restored {what}")
    ax.set_title(title or f"Restoring the clean {what} in the corrupted run", fontsize=10)
    label = f"p({target!r})" if target else "p(target)"
    if clean_prob is not None:
        label += f"  (clean run: {clean_prob:.2f})"
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig


def plot_indirect_effects(
    effects: torch.Tensor | np.ndarray,
    roles: Sequence[str],
    *,
    site: str = "resid",
    title: str | None = None,
) -> Figure:
    """Average indirect effects (n_layers, n_roles) as a heatmap: roles down, layers across."""
    values = _as_grid(effects)
    n_layers, n_roles = values.shape
    if len(roles) != n_roles:
        raise ValueError(f"{n_roles} columns of effects but {len(roles)} role names.")
    fig = LabFigure(figsize=(min(3 + 0.22 * n_layers, 10), 0.9 + 0.4 * n_roles))
    ax = fig.add_subplot()
    image = ax.pcolormesh(values.T, cmap=SITE_COLOURS.get(site, "Purples"))
    ax.invert_yaxis()
    ax.set_yticks(np.arange(n_roles) + 0.5)
    ax.set_yticklabels(list(roles))
    step = max(1, n_layers // 10)
    ax.set_xticks(np.arange(0, n_layers, step) + 0.5)
    ax.set_xticklabels([str(layer) for layer in range(0, n_layers, step)])
    ax.set_xlabel("layer")
    ax.set_title(title or f"Average indirect effect of the {_SITE_NAMES[site]}", fontsize=10)
    fig.colorbar(image, ax=ax, label="AIE (change in p(target))")
    fig.tight_layout()
    return fig


def plot_layer_curves(
    curves: Mapping[str, torch.Tensor | Sequence[float]],
    *,
    baselines: Mapping[str, float] | None = None,
    ylabel: str = "p(target)",
    title: str = "",
) -> Figure:
    """One line per named curve over layers, with dashed horizontal baselines."""
    fig = LabFigure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    for name, values in curves.items():
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().float().numpy()
        ax.plot(np.arange(len(values)), np.asarray(values, dtype=float), marker=".", label=name)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
