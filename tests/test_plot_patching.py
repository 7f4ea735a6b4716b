"""labkit.plot.patching: the pictures render as PNG and reject mismatched inputs."""

import numpy as np
import pytest
import torch
from support.figures import cell_under, clim, ticks, top_to_bottom

from labkit import plot
from labkit.plot.figure import LabFigure


def test_pair_grids_scatter_and_curve_render() -> None:
    estimate, exact = torch.randn(30, 12), torch.randn(30, 12)
    tokens = [f"t{i}" for i in range(12)]
    for fig in (
        plot.plot_patching_pair(estimate, exact, columns=tokens, title="x"),
        plot.plot_patching_grids({"a": exact, "b": estimate.numpy()}, columns=tokens),
        plot.plot_patching_grids({"heads": torch.randn(30, 9)}, xlabel="head"),
        plot.plot_patching_scatter(
            estimate,
            exact,
            labels={
                "early": torch.arange(30)[:, None].expand(30, 12) < 3,
                "late": torch.arange(30)[:, None].expand(30, 12) >= 3,
            },
        ),
        plot.plot_find_curve({"ours": torch.arange(100).clamp(max=10)}, k=10),
    ):
        assert isinstance(fig, LabFigure)
        assert fig._repr_png_()[:4] == b"\x89PNG"


def test_scatter_title_reports_pearson() -> None:
    x = torch.randn(50)
    fig = plot.plot_patching_scatter(2 * x + 1, x)
    assert "r = 1.00" in fig.axes[0].get_title()


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        plot.plot_patching_pair(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="column labels"):
        plot.plot_patching_pair(torch.zeros(3, 4), torch.zeros(3, 4), columns=["a"])
    with pytest.raises(ValueError, match="values"):
        plot.plot_patching_scatter(torch.zeros(3), torch.zeros(4))


# ----- the data behind each picture ------------------------------------------------------------
def _distinct(n_layers: int, n_cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.permutation(n_layers * n_cols).reshape(n_layers, n_cols) - n_layers) / 10


@pytest.mark.parametrize("n_layers", [4, 30])
def test_pair_cells_sit_under_their_column_and_layer_on_one_scale(n_layers: int) -> None:
    columns = ["<s>", " John", "\n", " Mary"]
    estimate, exact = _distinct(n_layers, 4), 3 * _distinct(n_layers, 4, seed=1)
    fig = plot.plot_patching_pair(estimate, torch.tensor(exact), columns=columns, xlabel="token")
    left, right, bar = fig.axes
    assert [left.get_title(), right.get_title()] == ["attribution patching", "exact patching"]
    shown = ["<s>", " John", "\\n", " Mary"]
    step = max(1, n_layers // 10)
    assert list(ticks(left, "y")) == [str(x) for x in range(0, n_layers, step)]
    assert top_to_bottom(left, ["0", str(step)])  # layer 0 at the top
    for ax, values in ((left, estimate), (right, exact)):
        assert list(ticks(ax, "x")) == shown and ax.get_xlabel() == "token"
        for layer in ticks(left, "y"):
            for j, column in enumerate(shown):
                assert cell_under(ax, column, layer, left) == pytest.approx(values[int(layer), j])
        limit = max(np.abs(estimate).max(), np.abs(exact).max())
        assert clim(ax) == pytest.approx((-limit, limit))  # one symmetric scale for both
    assert bar.get_ylabel() == "change in the normalised metric"
    assert fig.get_suptitle() == ""
    fig = plot.plot_patching_pair(estimate, exact, names=("a", "b"), title="T")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"] and fig.get_suptitle() == "T"
    assert list(ticks(fig.axes[0], "x")) == ["0", "1", "2", "3"]  # no labels: column numbers


def test_pair_of_zero_grids_still_has_a_colour_range() -> None:
    fig = plot.plot_patching_pair(np.zeros((2, 2)), np.zeros((2, 2)))
    assert clim(fig.axes[0]) == (-1e-9, 1e-9)


def test_grids_each_on_its_own_symmetric_scale() -> None:
    grids = {"resid": _distinct(12, 3), "heads": 5 * _distinct(12, 3, seed=2)}
    fig = plot.plot_patching_grids(grids, columns=["a", "b\nc", "d"], title="T")
    assert fig.get_suptitle() == "T"
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["resid", "heads"]
    for ax, values in zip(panels, grids.values(), strict=True):
        limit = np.abs(values).max()
        assert clim(ax) == pytest.approx((-limit, limit))
        assert list(ticks(ax, "x")) == ["a", "b\\nc", "d"]
        for layer in ticks(panels[0], "y"):
            for j, column in enumerate(["a", "b\\nc", "d"]):
                got = cell_under(ax, column, layer, panels[0])
                assert got == pytest.approx(values[int(layer), j])
    assert list(ticks(panels[0], "y")) == [str(x) for x in range(0, 12)]
    assert panels[0].get_ylabel() == "layer" and panels[0].get_xlabel() == "position"
    # column labels of another length do not fit: the columns are numbered instead
    fig = plot.plot_patching_grids({"heads": _distinct(3, 4)}, columns=["a"], xlabel="head")
    assert list(ticks(fig.axes[0], "x")) == ["0", "1", "2", "3"]
    assert fig.axes[0].get_xlabel() == "head"
    with pytest.raises(ValueError, match="2-d"):
        plot.plot_patching_grids({"a": torch.zeros(3)})
    with pytest.raises(ValueError, match="2-d"):
        plot.plot_patching_grids({})


def test_scatter_puts_exact_on_x_and_the_estimate_on_y_per_group() -> None:
    exact = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    estimate = torch.tensor([[0.5, 1.5], [-1.0, 4.0]])
    early = torch.tensor([[True, True], [False, False]])
    fig = plot.plot_patching_scatter(
        estimate, exact, labels={"layer 0": early, "later": ~early}, title="IOI"
    )
    ax = fig.axes[0]
    first, second = [c.get_offsets() for c in ax.collections]
    np.testing.assert_array_equal(first, [[0.0, 0.5], [1.0, 1.5]])
    np.testing.assert_array_equal(second, [[2.0, -1.0], [3.0, 4.0]])
    (diagonal,) = ax.lines
    np.testing.assert_array_equal(diagonal.get_xydata(), [[-1.0, -1.0], [4.0, 4.0]])
    r = np.corrcoef(exact.ravel(), estimate.ravel())[0, 1]
    assert ax.get_title() == f"IOI  (Pearson r = {r:.2f})"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["layer 0", "later", "y = x"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("exact patching", "attribution patching")


def test_scatter_without_groups_or_spread() -> None:
    fig = plot.plot_patching_scatter(np.array([1.0, 2.0]), np.array([3.0, 3.0]), xlabel="x")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[3.0, 1.0], [3.0, 2.0]])
    assert ax.get_title() == "(Pearson r = nan)" and ax.get_xlabel() == "x"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y = x"]
    assert "nan" in plot.plot_patching_scatter([1.0], [2.0]).axes[0].get_title()


def test_find_curve_counts_from_one_patch() -> None:
    fig = plot.plot_find_curve({"estimate": [1, 1, 2], "random": torch.tensor([0, 1, 1])}, k=2)
    ax = fig.axes[0]
    estimate, random, top_k = ax.lines
    np.testing.assert_array_equal(estimate.get_xydata(), [[1, 1], [2, 1], [3, 2]])
    np.testing.assert_array_equal(random.get_xydata(), [[1, 0], [2, 1], [3, 1]])
    assert set(top_k.get_ydata()) == {2}
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("exact patches made", "exact top-2 found")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["estimate", "random"]


@pytest.mark.parametrize("n_panels", [1, 2, 3])
def test_layer_zero_is_at_the_top_whatever_the_number_of_panels(n_panels: int) -> None:
    """The panels share their y axis: inverting it once per panel flipped every other count."""
    grids = {f"g{i}": _distinct(5, 2, seed=i) for i in range(n_panels)}
    ax = plot.plot_patching_grids(grids).axes[0]
    assert top_to_bottom(ax, ["0", "1", "2", "3", "4"])
    assert top_to_bottom(plot.plot_patching_pair(grids["g0"], grids["g0"]).axes[0], ["0", "4"])
