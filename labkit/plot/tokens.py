"""Token-level pictures: coloured text, per-method bars, curves, and method-agreement matrices.

Attribution scores are signed. Red means the token pushes the score (e.g. the target's logit)
up, blue means it pushes it down, and the colour's strength is the score relative to the
largest ``|score|`` in the same row, so each row (method) uses its own scale. Scores that are
never negative (saliency, attention) are drawn in one colour.

Figures are :class:`labkit.plot.figure.LabFigure` objects: a cell that ends with one shows it
once, as a PNG.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from labkit.plot.figure import LabFigure

__all__ = [
    "agreement_matrix",
    "attribution_bars",
    "attribution_grid",
    "attribution_scatter",
    "plot_curves",
    "token_heatmap",
    "token_heatmaps",
]

Scores = torch.Tensor | np.ndarray | Sequence[float]

_POSITIVE, _NEGATIVE, _UNSIGNED = (214, 39, 40), (31, 119, 180), (230, 120, 0)


def _as_array(scores: Scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().float().numpy()
    return np.asarray(scores, dtype=float).reshape(-1)


def _check_lengths(tokens: Sequence[str], scores: np.ndarray, name: str = "scores") -> None:
    if len(tokens) != len(scores):
        raise ValueError(
            f"{len(tokens)} tokens but {len(scores)} {name}: give one score per token "
            "(did you drop or keep the anchor token in only one of them?)."
        )


def _show(token: str) -> str:
    """A token as visible HTML: spaces as middle dots, newlines as the return symbol."""
    return html.escape(token).replace(" ", "&middot;").replace("\n", "&#9166;") or "&empty;"


def _row_html(tokens: Sequence[str], scores: np.ndarray) -> str:
    scale = np.abs(scores).max() or 1.0
    signed = (scores < 0).any()
    spans = []
    for token, score in zip(tokens, scores, strict=True):
        colour = (_POSITIVE if score >= 0 else _NEGATIVE) if signed else _UNSIGNED
        alpha = round(float(abs(score) / scale), 2)
        spans.append(
            f'<span title="{score:+.3g}" style="background: rgba{(*colour, alpha)}; '
            f'padding: 1px 2px; margin: 0 1px; border-radius: 3px">{_show(token)}</span>'
        )
    return "".join(spans)


def token_heatmap(tokens: Sequence[str], scores: Scores, title: str | None = None):
    """The prompt as coloured text, one token per box; hover a token to see its score."""
    from IPython.display import HTML

    values = _as_array(scores)
    _check_lengths(tokens, values)
    head = f"<b>{html.escape(title)}</b><br>" if title else ""
    return HTML(
        f'<div style="font-family: monospace; line-height: 2">{head}'
        f"{_row_html(tokens, values)}</div>"
    )


def token_heatmaps(tokens: Sequence[str], rows: Mapping[str, Scores], title: str | None = None):
    """Several methods' scores for the same tokens, one coloured row per method."""
    from IPython.display import HTML

    body = []
    for name, scores in rows.items():
        values = _as_array(scores)
        _check_lengths(tokens, values, f"scores for {name!r}")
        body.append(
            f'<tr><td style="text-align: right; padding-right: 8px">{html.escape(name)}</td>'
            f'<td style="text-align: left">{_row_html(tokens, values)}</td></tr>'
        )
    head = f"<caption><b>{html.escape(title)}</b></caption>" if title else ""
    return HTML(
        f'<table style="font-family: monospace; line-height: 2">{head}{"".join(body)}</table>'
    )


def attribution_bars(
    tokens: Sequence[str],
    rows: Mapping[str, Scores],
    title: str | None = None,
    normalize: bool = True,
) -> Figure:
    """One bar chart per method (stacked vertically), tokens on the x axis.

    With ``normalize`` each method is divided by its largest ``|score|``, so methods with
    different units (logits, probabilities, attention weights) share one y scale.
    """
    if not rows:
        raise ValueError("Give at least one method's scores, e.g. {'saliency': scores}.")
    fig = LabFigure(figsize=(max(6.0, 0.55 * len(tokens)), 1.6 * len(rows) + 0.8))
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(tokens))
    for ax, (name, scores) in zip(axes, rows.items(), strict=True):
        values = _as_array(scores)
        _check_lengths(tokens, values, f"scores for {name!r}")
        if normalize:
            values = values / (np.abs(values).max() or 1.0)
        colours = [np.array(_POSITIVE if v >= 0 else _NEGATIVE) / 255 for v in values]
        ax.bar(x, values, color=colours)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xticks(x, [t.replace("\n", "\\n") for t in tokens], rotation=45, ha="right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: Mapping[str, Scores],
    xlabel: str = "tokens replaced",
    ylabel: str = "target logit",
    title: str | None = None,
    x: Scores | None = None,
    logx: bool = False,
    logbase: int = 2,
) -> Figure:
    """Line plots on one axis. A 2-D entry (samples, points) is drawn as its mean with a band
    of one standard deviation: use it for the random-order baseline. ``logx`` draws x on a log
    scale with ticks at powers of ``logbase`` (2 for step counts, 10 for small alphas)."""
    fig = LabFigure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for name, values in curves.items():
        data = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        data = np.asarray(data, dtype=float)
        xs = np.arange(data.shape[-1]) if x is None else _as_array(x)
        if data.ndim == 2:
            mean, std = data.mean(0), data.std(0)
            (line,) = ax.plot(xs, mean, linestyle="--", label=f"{name} (mean ± std)")
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        else:
            ax.plot(xs, data, marker="o", markersize=3, label=name)
    if logx:
        ax.set_xscale("log", base=logbase)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def agreement_matrix(matrix: Scores, names: Sequence[str], title: str | None = None) -> Figure:
    """A square matrix of rank correlations between methods, with the values written in."""
    values = _as_array(matrix).reshape(len(names), len(names))
    fig = LabFigure(figsize=(1.0 * len(names) + 2, 0.8 * len(names) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="Spearman rank correlation")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def attribution_grid(
    grid: Scores,
    tokens: Sequence[str],
    rows: Sequence[str] | None = None,
    title: str | None = None,
    ylabel: str = "layer",
    xlabel: str = "",
) -> Figure:
    """A signed heatmap with one column per token and one row per layer (or generation step):
    red pushes the score up, blue down, on one colour scale centred at zero."""
    values = grid.detach().cpu().float().numpy() if isinstance(grid, torch.Tensor) else grid
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(tokens):
        raise ValueError(
            f"Expected a grid (rows, {len(tokens)} tokens), got shape {values.shape}: one column "
            "per token (did you drop the anchor from only one of them?)."
        )
    rows = list(rows) if rows is not None else [str(i) for i in range(values.shape[0])]
    fig = LabFigure(figsize=(max(5.0, 0.6 * len(tokens) + 2), max(2.5, 0.22 * len(rows) + 1.5)))
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(values))) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(
        range(len(tokens)), [t.replace("\n", "\\n") for t in tokens], rotation=45, ha="right"
    )
    step = max(1, len(rows) // 15)
    ax.set_yticks(range(0, len(rows), step), rows[::step])
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    fig.colorbar(image, ax=ax, label="attribution")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def attribution_scatter(
    points: Mapping[str, tuple[Scores, Scores]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> Figure:
    """One scatter per group (e.g. per method): x against y for every token, with a dashed
    diagonal through zero when both axes share units."""
    fig = LabFigure(figsize=(5.2, 4.2))
    ax = fig.subplots()
    for name, (xs, ys) in points.items():
        x, y = _as_array(xs), _as_array(ys)
        if len(x) != len(y):
            raise ValueError(f"{name!r}: {len(x)} x values but {len(y)} y values.")
        ax.scatter(x, y, s=18, alpha=0.75, label=name)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.axvline(0, color="grey", linewidth=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if len(points) > 1:
        ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
