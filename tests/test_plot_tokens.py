"""labkit.plot.tokens: coloured text, bars, curves and agreement matrices."""

import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from support.figures import cell_under, clim, ticks, top_to_bottom

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


# ----- the data behind each picture ------------------------------------------------------------
def _spans(html: str) -> list[tuple[str, str, float]]:
    """(token text, title score, alpha) for each coloured span, in order."""
    pattern = (
        r'<span title="([^"]+)" style="background: rgba\((\d+), (\d+), (\d+), ([\d.]+)\);'
        r"[^>]*>(.*?)</span>"
    )
    return [(m[5], m[0], float(m[4])) for m in re.findall(pattern, html)]


def test_heatmap_spans_follow_the_tokens_in_order_with_their_scores() -> None:
    scores = [0.5, -2.0, 1.0, 0.0, 0.25]
    spans = _spans(plot.token_heatmap(TOKENS, torch.tensor(scores)).data)
    assert [s[0] for s in spans] == [
        "The",
        "&middot;capital",
        "&middot;of",
        "&middot;France",
        "&middot;is",
    ]
    assert [s[1] for s in spans] == ["+0.5", "-2", "+1", "+0", "+0.25"]
    assert [s[2] for s in spans] == [0.25, 1.0, 0.5, 0.0, 0.12]  # |score| / largest |score|
    html = plot.token_heatmap(TOKENS, scores).data
    assert html.count("rgba(214, 39, 40") == 4 and html.count("rgba(31, 119, 180") == 1
    assert "<b>" not in html  # no title
    assert _spans(plot.token_heatmap(["a", ""], [1.0, 1.0]).data)[1][0] == "&empty;"


def test_heatmaps_rows_follow_the_methods() -> None:
    rows = {"saliency": [1.0, 2.0], "IG <exact>": np.array([-1.0, 0.5])}
    html = plot.token_heatmaps(["a", "b"], rows).data
    names = re.findall(r'<td style="text-align: right; padding-right: 8px">(.*?)</td>', html)
    assert names == ["saliency", "IG &lt;exact&gt;"]
    first, second = html.split("<tr>")[1:]
    assert [s[1] for s in _spans(first)] == ["+1", "+2"] and "rgba(230, 120, 0" in first
    assert [s[1] for s in _spans(second)] == ["-1", "+0.5"]
    assert "<caption>" not in html
    with pytest.raises(ValueError, match="'IG'"):
        plot.token_heatmaps(["a", "b"], {"IG": [1.0]})


def test_bars_one_bar_per_token_normalised_per_method_and_coloured_by_sign() -> None:
    rows = {"saliency": torch.tensor([1.0, 4.0, 2.0]), "IG": np.array([-3.0, 1.5, 0.0])}
    fig = plot.attribution_bars(["a", "b\nc", "d"], rows, title="T")
    assert fig.get_suptitle() == "T"
    top, bottom = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["saliency", "IG"]
    assert [p.get_height() for p in top.patches] == [0.25, 1.0, 0.5]
    assert [p.get_height() for p in bottom.patches] == [-1.0, 0.5, 0.0]
    assert [p.get_x() + p.get_width() / 2 for p in bottom.patches] == pytest.approx([0, 1, 2])
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["a", "b\\nc", "d"]
    red, blue = np.array([214, 39, 40]) / 255, np.array([31, 119, 180]) / 255
    np.testing.assert_allclose([p.get_facecolor()[:3] for p in bottom.patches], [blue, red, red])
    raw = plot.attribution_bars(["a", "b", "c"], rows, normalize=False)
    assert [p.get_height() for p in raw.axes[1].patches] == [-3.0, 1.5, 0.0]
    zeros = plot.attribution_bars(["a", "b", "c"], {"z": [0.0, 0.0, 0.0]})
    assert [p.get_height() for p in zeros.axes[0].patches] == [0.0, 0.0, 0.0]


def test_curves_draw_each_curve_and_the_mean_and_spread_of_samples() -> None:
    samples = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]])
    fig = plot.plot_curves(
        {"ours": [0.0, 1.0, 4.0], "random": samples},
        x=torch.tensor([1.0, 2.0, 4.0]),
        xlabel="k",
        ylabel="logit",
        title="T",
    )
    ax = fig.axes[0]
    ours, random = ax.lines
    np.testing.assert_array_equal(ours.get_xydata(), [[1, 0], [2, 1], [4, 4]])
    np.testing.assert_array_equal(random.get_xydata(), [[1, 2], [2, 2], [4, 4]])  # the mean
    assert random.get_label() == "random (mean ± std)" and ours.get_label() == "ours"
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == 1.0 and band[:, 1].max() == 5.0  # mean ± std: 2 ± 1, 4 ± 1
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("k", "logit", "T")
    assert ax.get_xscale() == "linear"
    plain = plot.plot_curves({"f": [3.0, 1.0]}).axes[0]
    np.testing.assert_array_equal(plain.lines[0].get_xydata(), [[0, 3], [1, 1]])
    assert (plain.get_xlabel(), plain.get_ylabel()) == ("tokens replaced", "target logit")
    assert plot.plot_curves({"f": [1.0, 2.0]}, logx=True).axes[0].get_xscale() == "log"


def test_agreement_matrix_cells_under_their_method_names() -> None:
    names = ["saliency", "IG", "rollout"]
    matrix = torch.tensor([[1.0, 0.5, -0.25], [0.5, 1.0, 0.1], [-0.25, 0.75, 1.0]])
    fig = plot.agreement_matrix(matrix, names, title="T")
    ax = fig.axes[0]
    assert top_to_bottom(ax, names)
    for i, row in enumerate(names):
        for j, column in enumerate(names):
            assert cell_under(ax, column, row) == pytest.approx(matrix[i, j].item())
    assert clim(ax) == (-1.0, 1.0)
    written = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((1, 2), "0.75") in written and ((2, 0), "-0.25") in written
    assert ax.get_title() == "T" and fig.axes[1].get_ylabel() == "Spearman rank correlation"


@pytest.mark.parametrize("n_rows", [4, 30])
def test_attribution_grid_cells_under_their_token_and_row(n_rows: int) -> None:
    grid = np.random.default_rng(0).permutation(n_rows * 5).reshape(n_rows, 5) - 40.0
    rows = [f"L{i}" for i in range(n_rows)]
    fig = plot.attribution_grid(grid, TOKENS, rows=rows, ylabel="step", xlabel="token")
    ax = fig.axes[0]
    shown = [rows[i] for i in range(0, n_rows, max(1, n_rows // 15))]
    assert list(ticks(ax, "y")) == shown
    assert top_to_bottom(ax, shown)
    assert list(ticks(ax, "x")) == TOKENS
    for row in shown:
        for j, token in enumerate(TOKENS):
            assert cell_under(ax, token, row) == grid[rows.index(row), j]
    limit = np.abs(grid).max()
    assert clim(ax) == (-limit, limit)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("token", "step")
    default = plot.attribution_grid(torch.zeros(2, 5), TOKENS).axes[0]
    assert list(ticks(default, "y")) == ["0", "1"] and clim(default) == (-1.0, 1.0)
    assert (default.get_xlabel(), default.get_ylabel()) == ("", "layer")


def test_attribution_scatter_points_per_group() -> None:
    fig = plot.attribution_scatter(
        {"IG": (torch.tensor([1.0, 2.0]), [3.0, 4.0])}, "occlusion", "IG", title="T"
    )
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[1, 3], [2, 4]])
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("occlusion", "IG", "T")
    assert ax.get_legend() is None  # one group needs no legend
