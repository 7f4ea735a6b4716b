"""labkit.plot.grids: ROME-style grids draw with the right axes and reject mismatched input."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from support.figures import cell_under, clim, ticks, top_to_bottom

from labkit.plot import grids
from labkit.plot.grids import plot_indirect_effects, plot_layer_curves, plot_restoration_grid

TOKENS = ["<s>", "The", " Eiffel", " Tower", " is", " in"]


def test_restoration_grid_draws_tokens_down_and_layers_across() -> None:
    grid = torch.rand(30, len(TOKENS))
    fig = plot_restoration_grid(
        grid,
        TOKENS,
        site="mlp",
        subject=[2, 3],
        target=" Paris",
        window=10,
        corrupted_prob=0.01,
        clean_prob=0.3,
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["<s>", "The", " Eiffel*", " Tower*", " is", " in"]
    assert "MLP" in ax.get_xlabel() and "window of 10" in ax.get_xlabel()
    assert "0.30" in fig.axes[1].get_ylabel()


@pytest.mark.parametrize("site", ["resid", "mlp", "attn"])
def test_each_site_has_its_own_colours(site: str) -> None:
    fig = plot_restoration_grid(np.zeros((3, 2)), ["a", "b"], site=site)
    assert fig.axes[0].collections[0].get_cmap().name == grids.SITE_COLOURS[site]


def test_mismatched_tokens_are_rejected() -> None:
    with pytest.raises(ValueError, match="positions"):
        plot_restoration_grid(torch.zeros(4, 5), TOKENS)
    with pytest.raises(ValueError, match="site"):
        plot_restoration_grid(torch.zeros(4, 6), TOKENS, site="heads")
    with pytest.raises(ValueError, match="2-d"):
        plot_restoration_grid(torch.zeros(6), TOKENS)


def test_indirect_effects_and_curves() -> None:
    fig = plot_indirect_effects(torch.rand(30, 4), ["a", "b", "c", "d"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="role names"):
        plot_indirect_effects(torch.rand(30, 4), ["a"])
    fig = plot_layer_curves({"x": torch.arange(5.0)}, baselines={"clean": 1.0}, title="t")
    assert len(fig.axes[0].lines) == 2


def test_all_names_are_exported() -> None:
    import labkit.plot

    for name in grids.__all__:
        assert hasattr(labkit.plot, name)


def test_figures_show_as_png_in_notebooks() -> None:
    fig = plot_restoration_grid(torch.rand(3, 2), ["a", "b"])
    assert fig._repr_png_()[:4] == b"\x89PNG"


# ----- the data behind each picture ------------------------------------------------------------
def _distinct_grid(n_layers: int, n_pos: int) -> np.ndarray:
    """Every cell a different value, none symmetric: a transposed or flipped drawing shows."""
    return np.random.default_rng(0).permutation(n_layers * n_pos).reshape(n_layers, n_pos) / 100


@pytest.mark.parametrize("n_layers", [3, 12, 30])
def test_restoration_grid_cells_sit_under_their_token_and_layer(n_layers: int) -> None:
    grid = _distinct_grid(n_layers, len(TOKENS))
    fig = plot_restoration_grid(grid, TOKENS, subject=[2, 3])
    ax = fig.axes[0]
    labels = ["<s>", "The", " Eiffel*", " Tower*", " is", " in"]
    assert top_to_bottom(ax, labels)  # the prompt reads downwards
    layers = ticks(ax, "x")
    step = max(1, n_layers // 10)
    assert list(layers) == [str(layer) for layer in range(0, n_layers, step)]
    for layer in layers:
        for position, label in enumerate(labels):
            assert cell_under(ax, layer, label) == grid[int(layer), position]
    assert clim(ax) == (grid.min(), grid.max())


def test_restoration_grid_colour_scale_starts_at_the_corrupted_run() -> None:
    grid = 0.2 + _distinct_grid(4, 2)
    ax = plot_restoration_grid(grid, ["a", "b"], corrupted_prob=0.05).axes[0]
    assert clim(ax) == (0.05, grid.max())
    # a corrupted probability above every cell does not hide the smallest cell
    ax = plot_restoration_grid(grid, ["a", "b"], corrupted_prob=0.9).axes[0]
    assert clim(ax) == (grid.min(), grid.max())
    # a flat grid still gets a (tiny) colour range instead of a division by zero
    low, high = clim(plot_restoration_grid(np.full((2, 2), 0.3), ["a", "b"]).axes[0])
    assert low == 0.3 and high == pytest.approx(0.3 + 1e-6)


def test_restoration_grid_titles_and_labels() -> None:
    fig = plot_restoration_grid(np.zeros((3, 2)), ["a\nb", "c"], site="attn", window=1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer of the restored attention output"  # no window of 1
    assert ax.get_title() == "Restoring the clean attention output in the corrupted run"
    assert list(ticks(ax, "y")) == ["a\\nb", "c"]
    assert fig.axes[1].get_ylabel() == "p(target)"
    fig = plot_restoration_grid(np.zeros((3, 2)), ["a", "b"], window=10, title="T", target=" x")
    assert fig.axes[0].get_xlabel() == "layer of the restored residual stream"  # resid: no window
    assert fig.axes[0].get_title() == "T"
    assert fig.axes[1].get_ylabel() == "p(' x')"
    fig = plot_restoration_grid(np.zeros((3, 2)), ["a", "b"], site="mlp", window=3, clean_prob=0.5)
    assert fig.axes[0].get_xlabel() == "layer of the restored MLP outputs (window of 3 layers)"
    assert fig.axes[1].get_ylabel() == "p(target)  (clean run: 0.50)"


@pytest.mark.parametrize("n_layers", [5, 30])
def test_indirect_effects_cells_sit_under_their_role_and_layer(n_layers: int) -> None:
    roles = ["first subject", "last subject", "further", "last"]
    effects = _distinct_grid(n_layers, len(roles)) - 1.0
    fig = plot_indirect_effects(torch.tensor(effects), roles, site="attn")
    ax = fig.axes[0]
    assert top_to_bottom(ax, roles)
    assert list(ticks(ax, "x")) == [str(x) for x in range(0, n_layers, max(1, n_layers // 10))]
    for layer in ticks(ax, "x"):
        for i, role in enumerate(roles):
            assert cell_under(ax, layer, role) == pytest.approx(effects[int(layer), i])
    assert clim(ax) == pytest.approx((effects.min(), effects.max()))
    assert ax.collections[0].get_cmap().name == "Reds"
    assert ax.get_title() == "Average indirect effect of the attention output"
    assert ax.get_xlabel() == "layer"
    assert fig.axes[1].get_ylabel() == "AIE (change in p(target))"
    assert plot_indirect_effects(effects, roles, title="T").axes[0].get_title() == "T"


def test_layer_curves_draw_each_curve_over_layers_and_the_baselines() -> None:
    curves = {"resid": torch.tensor([0.1, 0.5, 0.2]), "mlp": [0.3, 0.0, 0.4]}
    fig = plot_layer_curves(curves, baselines={"clean": 0.9, "corrupted": 0.05}, ylabel="p")
    ax = fig.axes[0]
    resid, mlp, clean, corrupted = ax.lines
    np.testing.assert_allclose(resid.get_xydata(), [[0, 0.1], [1, 0.5], [2, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(mlp.get_xydata(), [[0, 0.3], [1, 0.0], [2, 0.4]])
    assert set(clean.get_ydata()) == {0.9} and set(corrupted.get_ydata()) == {0.05}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "resid",
        "mlp",
        "clean",
        "corrupted",
    ]
    assert clean.get_color() == "C2" and corrupted.get_color() == "C3"  # not a curve's colour
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "p"
