"""Every labkit plot, drawn from fixed inputs, against a recorded snapshot of how it draws them.

The other plot tests check what a picture means (which number sits under which label, where
the scale starts). This one pins everything else a student sees: figure and font sizes, colour
maps and colour limits, line styles and markers, tick rotation and alignment, hidden spines,
legends, the HTML of the coloured text, and the words of every error message. Each case draws
one figure; :func:`figures.figure_spec` turns it into JSON that is compared with
``tests/data/plot_snapshots.json``.

After a deliberate change to a plot, record the snapshots again and review the diff:
    LABKIT_RECORD_FIGURES=1 pytest tests/test_plot_snapshots.py
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.figures import figure_spec
from support.snapshots import stored_snapshots

from labkit import plot

SNAPSHOTS = Path(__file__).parent / "data" / "plot_snapshots.json"
RECORD = os.environ.get("LABKIT_RECORD_FIGURES") == "1"

TOKENS = ["<|im_start|>", "Why", " do", " cats\n", "", "<b>", " sleep"]  # odd ones on purpose
WAVE = np.sin(np.arange(35.0) * 1.3) * np.linspace(0.2, 2.0, 35)  # signed, uneven, fixed


def wave(*shape: int, shift: float = 0.0) -> np.ndarray:
    """Fixed signed numbers of the given shape (no random generator: the same everywhere)."""
    n = math.prod(shape)
    return np.sin(np.arange(n) * 0.7 + shift).reshape(shape) * np.linspace(0.1, 1.5, n).reshape(
        shape
    )


# name -> a function that draws the case (a figure, or HTML for the coloured text)
CASES: dict[str, Callable[[], object]] = {
    # labkit.plot.tokens
    "token_heatmap signed, titled": lambda: plot.token_heatmap(
        TOKENS, torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25, -0.125, 1.0]), "A <title>"
    ),
    "token_heatmap zero and positive": lambda: plot.token_heatmap(TOKENS[:4], [0.0, 1.0, 2.0, 4.0]),
    "token_heatmap all zero": lambda: plot.token_heatmap(TOKENS[:3], np.zeros(3)),
    "token_heatmaps titled": lambda: plot.token_heatmaps(
        TOKENS, {"saliency": np.arange(7.0), "IG <x>": WAVE[:7]}, "Two & more"
    ),
    "token_heatmaps untitled": lambda: plot.token_heatmaps(TOKENS[:2], {"a": [1.0, -1.0]}),
    "attribution_bars two rows": lambda: plot.attribution_bars(
        TOKENS, {"saliency": np.abs(WAVE[:7]), "IG": torch.tensor(WAVE[7:14])}, "Bars"
    ),
    "attribution_bars many tokens, raw": lambda: plot.attribution_bars(
        [f"t{i}" for i in range(14)], {"x": WAVE[:14] * 3}, normalize=False
    ),
    "attribution_bars one row of a batch": lambda: plot.attribution_bars(
        TOKENS[:3], {"IG": torch.tensor([[0.5, -1.0, 0.25]])}
    ),
    "attribution_bars all zero": lambda: plot.attribution_bars(TOKENS[:3], {"zero": [0, 0, 0]}),
    "plot_curves mean and band": lambda: plot.plot_curves(
        {"IG": WAVE[:6], "random": torch.tensor(wave(4, 6))}, title="Deletion"
    ),
    "plot_curves log x": lambda: plot.plot_curves(
        {"gap": [1.0, 0.5, 0.2, 0.05]},
        "steps",
        "gap",
        x=[1, 10, 100, 1000],
        logx=True,
        logbase=10,
    ),
    "agreement_matrix": lambda: plot.agreement_matrix(
        np.array([[1.0, 0.5, -0.25], [0.5, 1.0, 0.125], [-0.25, 0.125, 1.0]]),
        ["saliency", "IG", "attention"],
        "Agreement",
    ),
    "agreement_matrix untitled": lambda: plot.agreement_matrix(
        [[1.0, -1.0], [-1.0, 1.0]], ["a", "b"]
    ),
    "agreement_matrix weak": lambda: plot.agreement_matrix(
        torch.tensor([[0.5, 0.25], [0.25, 0.5]]), ["a", "b"]
    ),
    "attribution_grid tensor": lambda: plot.attribution_grid(
        torch.tensor(wave(4, 7)), TOKENS, title="Layers", xlabel="token"
    ),
    "attribution_grid many rows": lambda: plot.attribution_grid(
        wave(32, 3), ["a", "b\n", "c"], rows=[f"L{i}" for i in range(32)], ylabel="step"
    ),
    "attribution_grid needing grad": lambda: plot.attribution_grid(
        torch.tensor(wave(2, 3), requires_grad=True) * 2, ["a", "b", "c"]
    ),
    "attribution_grid zero with nan": lambda: plot.attribution_grid(
        np.array([[0.0, np.nan], [0.0, 0.0]]), ["a", "b"]
    ),
    "attribution_scatter two groups": lambda: plot.attribution_scatter(
        {"IG": (WAVE[:5], WAVE[5:10]), "saliency": (torch.tensor(WAVE[10:15]), WAVE[15:20])},
        "occlusion",
        "method",
        "Scatter",
    ),
    "attribution_scatter one group": lambda: plot.attribution_scatter(
        {"IG": ([1.0, 2.0], [2.0, 1.0])}, "x", "y"
    ),
    # labkit.plot.grids
    "plot_restoration_grid resid": lambda: plot.plot_restoration_grid(
        torch.tensor(np.abs(wave(12, 7))),
        TOKENS,
        subject=[1, 3],
        target=" current",
        corrupted_prob=0.05,
        clean_prob=0.6,
    ),
    "plot_restoration_grid mlp window": lambda: plot.plot_restoration_grid(
        np.abs(wave(30, 3)),
        ["a", "b", "c"],
        site="mlp",
        window=10,
        title="MLP",
    ),
    "plot_restoration_grid attn, flat": lambda: plot.plot_restoration_grid(
        np.full((3, 2), 0.25), ["a", "b"], site="attn", window=1, corrupted_prob=0.5
    ),
    "plot_indirect_effects": lambda: plot.plot_indirect_effects(
        wave(25, 3), ["subject", "after", "last"], site="mlp"
    ),
    "plot_indirect_effects titled": lambda: plot.plot_indirect_effects(
        torch.tensor(wave(4, 2)), ["a", "b"], title="AIE"
    ),
    "plot_layer_curves": lambda: plot.plot_layer_curves(
        {"restored": torch.tensor(np.abs(WAVE[:8])), "other": list(np.abs(WAVE[8:16]))},
        baselines={"clean": 0.9, "corrupted": 0.1},
    ),
    "plot_layer_curves labelled": lambda: plot.plot_layer_curves(
        {"a": [0.0, 1.0]}, ylabel="logit", title="Curves"
    ),
    # labkit.plot.patching
    "plot_patching_pair columns": lambda: plot.plot_patching_pair(
        torch.tensor(wave(24, 4)),
        wave(24, 4, shift=1.0),
        columns=["a", "b\n", "c", "d"],
        title="Pair",
        xlabel="token",
    ),
    "plot_patching_pair heads": lambda: plot.plot_patching_pair(
        wave(3, 9), wave(3, 9) * 2, names=("estimate", "exact")
    ),
    "plot_patching_scatter groups": lambda: plot.plot_patching_scatter(
        torch.tensor(wave(3, 4)),
        wave(3, 4, shift=0.5),
        labels={
            "layer 0": np.arange(12).reshape(3, 4) < 4,
            "later": np.arange(12).reshape(3, 4) >= 4,
        },
        title="IOI",
    ),
    "plot_patching_scatter flat": lambda: plot.plot_patching_scatter(
        [1.0, 1.0, 1.0], [0.0, 1.0, 2.0], xlabel="x", ylabel="y"
    ),
    "plot_find_curve": lambda: plot.plot_find_curve(
        {"estimate": [1, 2, 2, 3], "random": torch.tensor([0.0, 0.5, 1.0, 1.5])},
        k=3,
        title="Find",
    ),
    "plot_find_curve untitled": lambda: plot.plot_find_curve({"estimate": [0, 1]}, k=1),
    "plot_patching_grids labelled": lambda: plot.plot_patching_grids(
        {"resid": wave(12, 3), "mlp": torch.tensor(wave(12, 3, shift=2.0))},
        columns=["a", "b\n", "c"],
        title="Grids",
    ),
    "plot_patching_grids other columns": lambda: plot.plot_patching_grids(
        {"heads": wave(2, 4)}, columns=["too", "few"], xlabel="head"
    ),
}

# name -> a call that must fail, and the message it must fail with (recorded)
ERRORS: dict[str, Callable[[], object]] = {
    "token_heatmap lengths": lambda: plot.token_heatmap(TOKENS, [1.0]),
    "token_heatmaps lengths": lambda: plot.token_heatmaps(TOKENS, {"m": [1.0]}),
    "attribution_bars empty": lambda: plot.attribution_bars(TOKENS, {}),
    "attribution_bars lengths": lambda: plot.attribution_bars(TOKENS, {"m": [1.0]}),
    "attribution_grid shape": lambda: plot.attribution_grid(np.zeros((2, 3)), TOKENS),
    "attribution_scatter lengths": lambda: plot.attribution_scatter(
        {"m": ([1.0], [1.0, 2.0])}, "x", "y"
    ),
    "plot_restoration_grid site": lambda: plot.plot_restoration_grid(
        np.zeros((2, 2)), ["a", "b"], site="resid_post"
    ),
    "plot_restoration_grid tokens": lambda: plot.plot_restoration_grid(np.zeros((2, 2)), ["a"]),
    "plot_restoration_grid 3-d": lambda: plot.plot_restoration_grid(np.zeros((2, 2, 2)), ["a"]),
    "plot_indirect_effects roles": lambda: plot.plot_indirect_effects(np.zeros((2, 3)), ["a"]),
    "plot_patching_pair shapes": lambda: plot.plot_patching_pair(np.zeros((2, 3)), np.zeros(6)),
    "plot_patching_pair columns": lambda: plot.plot_patching_pair(
        np.zeros((2, 3)), np.zeros((2, 3)), columns=["a"]
    ),
    "plot_patching_scatter sizes": lambda: plot.plot_patching_scatter(np.zeros(2), np.zeros(3)),
    "plot_patching_grids empty": lambda: plot.plot_patching_grids({}),
    "plot_patching_grids 1-d": lambda: plot.plot_patching_grids({"a": np.zeros(3)}),
}


def draw(name: str) -> object:
    """A case's snapshot: the figure's spec, or the HTML string."""
    shown = CASES[name]()
    return shown.data if hasattr(shown, "data") else figure_spec(shown)


def error_message(name: str) -> str:
    with pytest.raises(ValueError) as raised:
        ERRORS[name]()
    return str(raised.value)


def differences(got, expected, where: str = "") -> list[str]:
    """Where two snapshots differ: numbers within 0.1% (axes positions within 0.011, as their
    layout rounds), everything else exactly."""
    if isinstance(expected, dict) and isinstance(got, dict):
        keys = sorted(set(got) | set(expected))
        return [d for k in keys for d in differences(got.get(k), expected.get(k), f"{where}/{k}")]
    if isinstance(expected, list) and isinstance(got, list):
        if len(got) != len(expected):
            return [f"{where}: {len(got)} items, expected {len(expected)}"]
        return [
            d
            for i, (g, e) in enumerate(zip(got, expected, strict=True))
            for d in differences(g, e, f"{where}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(got, numbers)
        and isinstance(expected, numbers)
        and not isinstance(got, bool)
        and not isinstance(expected, bool)
    ):
        tolerance = 0.011 if "/position" in where else 1e-9
        if math.isclose(got, expected, rel_tol=1e-3, abs_tol=tolerance):
            return []
    elif type(got) is type(expected) and got == expected:  # True is not 1 here
        return []
    return [f"{where}: {got!r}, expected {expected!r}"]


@pytest.fixture(scope="module")
def snapshots():
    yield from stored_snapshots(SNAPSHOTS, RECORD)


@pytest.mark.parametrize("name", CASES)
def test_plot_draws_as_recorded(name: str, snapshots: dict) -> None:
    got = json.loads(json.dumps(draw(name)))  # tuples as lists, as stored
    if RECORD:
        snapshots.setdefault("figures", {})[name] = got
    assert name in snapshots.get("figures", {}), f"no snapshot for {name!r}: record it"
    problems = differences(got, snapshots["figures"][name])
    assert not problems, f"{name} is drawn differently:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("name", ERRORS)
def test_plot_error_message_as_recorded(name: str, snapshots: dict) -> None:
    message = error_message(name)
    if RECORD:
        snapshots.setdefault("errors", {})[name] = message
    assert message == snapshots.get("errors", {}).get(name), message


def test_the_snapshots_hold_every_case_and_no_other(snapshots: dict) -> None:
    stored = snapshots
    assert sorted(stored.get("figures", {})) == sorted(CASES)
    assert sorted(stored.get("errors", {})) == sorted(ERRORS)


def test_the_comparison_catches_what_it_must() -> None:
    spec = {"size": [6.0, 4.2], "axes": [{"position": [0.1], "alpha": 0.75, "cmap": "RdBu_r"}]}
    same = json.loads(json.dumps(spec))
    assert differences(same, spec) == []
    same["axes"][0]["position"] = [0.105]  # layout noise
    assert differences(same, spec) == []
    for path, value in [("size", [6.0, 4.3]), ("alpha", None), ("alpha", 0.7), ("cmap", "RdBu")]:
        changed = json.loads(json.dumps(spec))
        if path == "size":
            changed["size"] = value
        else:
            changed["axes"][0][path] = value
        assert differences(changed, spec), (path, value)
    assert differences({"a": [1, 2]}, {"a": [1]}) and differences({"a": True}, {"a": 1})


def test_a_flat_scatter_reports_no_correlation_without_a_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value" warning would reach students
        fig = plot.plot_patching_scatter([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])
        one = plot.plot_patching_scatter([1.0], [2.0])
    assert fig.axes[0].get_title() == one.axes[0].get_title() == "(Pearson r = nan)"
