"""Pictures for attribution patching (lab 03): an estimate next to exact patching.

* :func:`plot_patching_pair` -- two heatmaps side by side on one colour scale (attribution
  patching and exact patching), layers down and positions (or heads) across;
* :func:`plot_patching_scatter` -- estimate against exact, one point per component, with the
  line y = x (a perfect estimate lies on it) and the correlation in the title;
* :func:`plot_find_curve` -- how many of the exact top-k components are found after n exact
  patches made in the estimate's order, against a random order.

Figures are :class:`labkit.plot.figure.LabFigure` objects: a cell that ends with one shows it
once, as a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from labkit.plot.figure import LabFigure

__all__ = [
    "plot_find_curve",
    "plot_patching_grids",
    "plot_patching_pair",
    "plot_patching_scatter",
]


def _array(values: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def plot_patching_pair(
    estimate: torch.Tensor | np.ndarray,
    exact: torch.Tensor | np.ndarray,
    *,
    columns: Sequence[str] | None = None,
    xlabel: str = "position",
    title: str = "",
    names: tuple[str, str] = ("attribution patching", "exact patching"),
) -> Figure:
    """Two (n_layers, n_columns) heatmaps on one symmetric colour scale (red up, blue down).

    ``columns`` labels the columns (the prompt's tokens, or head numbers).
    """
    left, right = _array(estimate), _array(exact)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            f"Expected two grids of the same shape (n_layers, columns); got {left.shape} and "
            f"{right.shape}."
        )
    n_layers, n_cols = left.shape
    if columns is not None and len(columns) != n_cols:
        raise ValueError(f"{len(columns)} column labels for a grid with {n_cols} columns.")
    limit = max(np.abs(left).max(), np.abs(right).max(), 1e-9)
    fig = LabFigure(figsize=(min(2.5 + 0.55 * n_cols, 14), 0.9 + 0.13 * n_layers))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, values, name in zip(axes, (left, right), names, strict=True):
        image = ax.pcolormesh(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xticks(np.arange(n_cols) + 0.5)
        labels = [str(c).replace("\n", "\\n") for c in columns] if columns else range(n_cols)
        ax.set_xticklabels(labels, rotation=90 if columns else 0, fontsize=8)
    axes[0].invert_yaxis()  # layer 0 at the top; once: the panels share their y axis
    step = max(1, n_layers // 10)
    axes[0].set_yticks(np.arange(0, n_layers, step) + 0.5)
    axes[0].set_yticklabels([str(layer) for layer in range(0, n_layers, step)])
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label="change in the normalised metric")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_patching_scatter(
    estimate: torch.Tensor | np.ndarray,
    exact: torch.Tensor | np.ndarray,
    *,
    labels: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    title: str = "",
    xlabel: str = "exact patching",
    ylabel: str = "attribution patching",
) -> Figure:
    """Estimate (y) against exact (x), one point per component, with y = x dashed.

    ``labels`` optionally splits the points into named groups of the same shape as the data
    (boolean masks), drawn in different colours: e.g. {"layer 0": mask, "later": ~mask}.
    """
    y, x = _array(estimate).ravel(), _array(exact).ravel()
    if x.shape != y.shape:
        raise ValueError(f"estimate has {y.size} values but exact has {x.size}.")
    fig = LabFigure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    groups = {"": np.ones_like(x, dtype=bool)}
    if labels:
        groups = {name: _array(mask).ravel().astype(bool) for name, mask in labels.items()}
    for name, mask in groups.items():
        ax.scatter(x[mask], y[mask], s=10, alpha=0.7, label=name or None)
    low, high = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([low, high], [low, high], "--", color="grey", linewidth=1, label="y = x")
    r = np.corrcoef(x, y)[0, 1] if x.size > 1 and x.std() > 0 and y.std() > 0 else float("nan")
    ax.set_title(f"{title}{'  ' if title else ''}(Pearson r = {r:.2f})", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_find_curve(
    curves: Mapping[str, Sequence[float] | torch.Tensor | np.ndarray],
    *,
    k: int,
    title: str = "",
) -> Figure:
    """Found-so-far curves: entry n-1 of each curve is how many exact top-k are among the first
    n components patched in that order."""
    fig = LabFigure(figsize=(6, 3.4))
    ax = fig.add_subplot()
    for name, values in curves.items():
        values = _array(values)
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.axhline(k, linestyle=":", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("exact patches made")
    ax.set_ylabel(f"exact top-{k} found")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_patching_grids(
    grids: Mapping[str, torch.Tensor | np.ndarray],
    *,
    columns: Sequence[str] | None = None,
    xlabel: str = "position",
    title: str = "",
) -> Figure:
    """One heatmap per named (n_layers, n_columns) grid, side by side, each on its own
    symmetric colour scale (red: the metric goes up when patched, blue: down)."""
    arrays = {name: _array(grid) for name, grid in grids.items()}
    if not arrays or any(a.ndim != 2 for a in arrays.values()):
        raise ValueError("Give one or more 2-d grids (n_layers, columns).")
    n_layers, n_cols = next(iter(arrays.values())).shape
    width = min(1.5 + (0.45 * n_cols + 1.2) * len(arrays), 16)
    fig = LabFigure(figsize=(width, 0.9 + 0.13 * n_layers))
    axes = np.atleast_1d(fig.subplots(1, len(arrays), sharey=True))
    for ax, (name, values) in zip(axes, arrays.items(), strict=True):
        limit = max(np.abs(values).max(), 1e-9)
        image = ax.pcolormesh(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        cols = values.shape[1]
        ax.set_xticks(np.arange(cols) + 0.5)
        if columns is not None and len(columns) == cols:
            ax.set_xticklabels([c.replace("\n", "\\n") for c in columns], rotation=90, fontsize=8)
        else:
            ax.set_xticklabels([str(c) for c in range(cols)], fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05)
    axes[0].invert_yaxis()  # layer 0 at the top; once: the panels share their y axis
    step = max(1, n_layers // 10)
    axes[0].set_yticks(np.arange(0, n_layers, step) + 0.5)
    axes[0].set_yticklabels([str(layer) for layer in range(0, n_layers, step)])
    axes[0].set_ylabel("layer")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
