"""labkit.plot.grids: ROME-style grids draw with the right axes and reject mismatched input."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

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
