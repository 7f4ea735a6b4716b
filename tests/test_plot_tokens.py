"""labkit.plot.tokens: coloured text, bars, curves and agreement matrices."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from labkit.plot import tokens as plot

TOKENS = ["The", " capital", " of", " France", " is"]


def test_heatmap_colours_sign_and_strength() -> None:
    html = plot.token_heatmap(TOKENS, torch.tensor([1.0, -0.5, 0.0, 2.0, 0.1]), "title").data
    assert html.count("<span") == len(TOKENS)
    assert "rgba(214, 39, 40, 1.0)" in html  # the largest positive score: full red
    assert "rgba(31, 119, 180, 0.25)" in html  # -0.5 of a maximum of 2: light blue
    assert "&middot;capital" in html and "<b>title</b>" in html


def test_heatmap_escapes_tokens_and_handles_all_zero() -> None:
    html = plot.token_heatmap(["<b>", "\n"], [0.0, 0.0]).data
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<b>title", "")
    assert "nan" not in html


def test_unsigned_scores_use_one_colour() -> None:
    html = plot.token_heatmap(TOKENS, np.array([0.1, 0.2, 0.3, 0.4, 0.5])).data
    assert "rgba(230, 120, 0" in html and "rgba(214, 39, 40" not in html


def test_heatmaps_one_row_per_method() -> None:
    rows = {"a": torch.rand(5), "b": torch.randn(5)}
    html = plot.token_heatmaps(TOKENS, rows, "t").data
    assert html.count("<tr>") == 2 and "<caption>" in html


def test_length_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one score per token"):
        plot.token_heatmap(TOKENS, torch.zeros(4))
    with pytest.raises(ValueError, match="'b'"):
        plot.attribution_bars(TOKENS, {"a": torch.zeros(5), "b": torch.zeros(6)})


def test_bars_one_axis_per_method() -> None:
    fig = plot.attribution_bars(TOKENS, {"a": torch.randn(5), "b": torch.randn(5)}, "t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert max(abs(h) for h in heights) == pytest.approx(1.0)  # normalised per method
    with pytest.raises(ValueError):
        plot.attribution_bars(TOKENS, {})


def test_curves_draw_a_band_for_samples() -> None:
    fig = plot.plot_curves(
        {"method": torch.arange(5.0), "random": torch.rand(10, 5)}, x=[1, 2, 4, 8, 16], logx=True
    )
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # one shaded band
    assert ax.get_xscale() == "log"


def test_agreement_matrix_writes_values() -> None:
    fig = plot.agreement_matrix(torch.eye(3), ["a", "b", "c"], "t")
    assert len(fig.axes[0].texts) == 9 and fig.axes[0].texts[0].get_text() == "1.00"


def test_figures_show_as_png_in_notebooks() -> None:
    """Jupyter shows a returned figure through _repr_png_, not as '<Figure size ...>' text."""
    figures = [
        plot.attribution_bars(TOKENS, {"a": torch.randn(5)}),
        plot.plot_curves({"method": torch.arange(5.0)}),
        plot.agreement_matrix(torch.eye(2), ["a", "b"]),
    ]
    for fig in figures:
        assert fig._repr_png_()[:4] == b"\x89PNG"


def test_log_axis_base_follows_the_text() -> None:
    """Alphas from 1e-5 to 1 are described in powers of ten: the ticks must be powers of ten."""
    alphas = torch.logspace(-5, 0, 11)
    fig = plot.plot_curves({"f": torch.arange(11.0)}, x=alphas, logx=True, logbase=10)
    assert fig.axes[0].xaxis.get_major_locator()._base == 10


def test_attribution_grid_one_column_per_token() -> None:
    fig = plot.attribution_grid(torch.randn(4, 5), TOKENS, rows=["l0", "l1", "l2", "l3"], title="t")
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (4, 5)
    low, high = image.get_clim()
    assert low == -high  # one scale centred at zero
    assert fig._repr_png_()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one column per token"):
        plot.attribution_grid(torch.randn(4, 6), TOKENS)


def test_attribution_scatter_one_group_per_method() -> None:
    fig = plot.attribution_scatter(
        {"a": (torch.randn(7), torch.randn(7)), "b": (np.arange(3.0), [1.0, 2.0, 3.0])}, "x", "y"
    )
    assert len(fig.axes[0].collections) == 2 and fig.axes[0].get_legend() is not None
    with pytest.raises(ValueError, match="'a'"):
        plot.attribution_scatter({"a": (torch.randn(3), torch.randn(4))}, "x", "y")
