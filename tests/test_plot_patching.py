"""labkit.plot.patching: the pictures render as PNG and reject mismatched inputs."""

import pytest
import torch

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
