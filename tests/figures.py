"""Reading the data back out of a matplotlib figure, for tests.

A test of a plot should check what the picture says, not its pixels: which number is drawn in
the cell under a given pair of tick labels, where the first row is, what the colour scale spans.
:func:`cell_under` answers "what value is drawn at the tick labelled ``x`` and the tick labelled
``y``", the same for ``pcolormesh`` (QuadMesh) and ``imshow`` (AxesImage), whatever the
orientation or transposition inside the plotting code.

:func:`figure_data` flattens every number and label a figure draws into named arrays; the
solution-notebook test stores them per figure and compares later runs against them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FixedLocator


def ticks(ax: Axes, axis: str) -> dict[str, float]:
    """Tick label -> its data coordinate, for the labelled ticks of ``axis`` ("x" or "y")."""
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    index = 0 if axis == "x" else 1
    return {t.get_text(): float(t.get_position()[index]) for t in labels if t.get_text()}


def _heatmap(ax: Axes) -> QuadMesh | AxesImage:
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    found = meshes + list(ax.images)
    assert len(found) == 1, f"expected one heatmap on the axes, found {len(found)}"
    return found[0]


def value_at(ax: Axes, x: float, y: float) -> float:
    """The value of the heatmap cell that contains the data point (x, y)."""
    heatmap = _heatmap(ax)
    values = np.ma.getdata(heatmap.get_array())
    if isinstance(heatmap, QuadMesh):
        corners = heatmap.get_coordinates()  # (rows + 1, cols + 1, 2)
        xs, ys = corners[0, :, 0], corners[:, 0, 1]
    else:
        left, right, bottom, top = heatmap.get_extent()
        rows, cols = values.shape[:2]
        xs = np.linspace(left, right, cols + 1)
        ys = np.linspace(top, bottom, rows + 1) if heatmap.origin == "upper" else None
        if ys is None:
            ys = np.linspace(bottom, top, rows + 1)
    col = _bin(xs, x)
    row = _bin(ys, y)
    return float(values[row, col])


def _bin(edges: np.ndarray, value: float) -> int:
    low, high = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    inside = np.nonzero((low <= value) & (value < high))[0]
    assert len(inside) == 1, f"{value} is in {len(inside)} cells of {edges}"
    return int(inside[0])


def cell_under(ax: Axes, x_label: str, y_label: str, labelled: Axes | None = None) -> float:
    """The value drawn where the tick labelled ``x_label`` meets the tick labelled ``y_label``.

    ``labelled``: the axes that carries the y labels when ``ax`` shares its y axis with it.
    """
    return value_at(ax, ticks(ax, "x")[x_label], ticks(labelled or ax, "y")[y_label])


def clim(ax: Axes) -> tuple[float, float]:
    low, high = _heatmap(ax).get_clim()
    return float(low), float(high)


def top_to_bottom(ax: Axes, labels: list[str]) -> bool:
    """Whether the y ticks ``labels`` are drawn in this order from the top of the axes down."""
    where = ticks(ax, "y")
    heights = [ax.transData.transform((0, where[label]))[1] for label in labels]
    return all(a > b for a, b in zip(heights, heights[1:], strict=False))


# ----- everything a figure draws -------------------------------------------------------------
def figure_data(fig: Figure) -> dict[str, np.ndarray]:
    """Every number and label the figure draws, as named arrays (strings as unicode arrays).

    Per axes: its title and axis labels, the tick labels the plot chose (not automatic number
    ticks, which move with the data's range), heatmap arrays and colour limits, line data,
    scatter offsets, shaded bands, bar heights and the texts written into it.
    """
    data: dict[str, np.ndarray] = {}
    for a, ax in enumerate(fig.axes):
        key = f"axes{a}"
        data[f"{key}/labels"] = np.array([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()])
        for axis, name in ((ax.xaxis, "xticks"), (ax.yaxis, "yticks")):
            if isinstance(axis.get_major_locator(), FixedLocator):  # labels the plot chose
                data[f"{key}/{name}"] = np.array([t.get_text() for t in axis.get_ticklabels()])
        heatmaps = [c for c in ax.collections if isinstance(c, QuadMesh)] + list(ax.images)
        for i, heatmap in enumerate(heatmaps):
            data[f"{key}/heatmap{i}"] = np.ma.getdata(heatmap.get_array()).astype(float)
            data[f"{key}/heatmap{i}/clim"] = np.array(heatmap.get_clim(), dtype=float)
        for i, line in enumerate(ax.lines):
            data[f"{key}/line{i}"] = np.asarray(line.get_xydata(), dtype=float)
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        for i, scatter in enumerate(scatters):
            data[f"{key}/scatter{i}"] = np.asarray(scatter.get_offsets(), dtype=float)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        for i, band in enumerate(bands):
            data[f"{key}/band{i}"] = np.concatenate([p.vertices for p in band.get_paths()])
        if ax.patches:
            data[f"{key}/bars"] = np.array([p.get_height() for p in ax.patches], dtype=float)
        if ax.texts:
            data[f"{key}/texts"] = np.array([t.get_text() for t in ax.texts])
    return data


def compare_figure_data(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float = 1e-3
) -> list[str]:
    """What differs between two :func:`figure_data` results (empty if they agree).

    Numbers agree within ``rtol`` of the array's largest magnitude (3 significant digits of
    the biggest value, as nbval compares printed numbers); labels must be equal.
    """
    problems = []
    for name in sorted(set(got) | set(expected)):
        if name not in got or name not in expected:
            problems.append(f"{name}: only in {'the new run' if name in got else 'the reference'}")
            continue
        new, old = got[name], expected[name]
        if new.shape != old.shape:
            problems.append(f"{name}: shape {new.shape}, expected {old.shape}")
        elif old.dtype.kind in "US":
            if not np.array_equal(new, old):
                problems.append(f"{name}: {new.tolist()!r}, expected {old.tolist()!r}")
        else:
            finite = np.isfinite(old)
            scale = np.abs(old[finite]).max() if finite.any() else 0.0
            same_nan = np.array_equal(np.isfinite(new), finite)
            close = np.allclose(new[finite], old[finite], rtol=rtol, atol=rtol * scale)
            if not (same_nan and close):
                worst = np.abs(new[finite] - old[finite]).max() if same_nan else float("nan")
                problems.append(f"{name}: differs by up to {worst:.3g} (scale {scale:.3g})")
    return problems


# ----- the figures a notebook shows ------------------------------------------------------------
STARTUP = """\
# Written by tests/test_notebooks.py: record the data of every figure the notebook shows.
import sys

sys.path.insert(0, {tests!r})
import figures

figures.record_shown_figures({folder!r})
"""


def record_shown_figures(folder: str) -> None:
    """From now on, each LabFigure that is shown (rendered as a PNG) also saves its
    :func:`figure_data` as ``folder/figure<n>.npz``, numbered in the order they are shown."""
    from pathlib import Path

    from labkit.plot.figure import LabFigure

    render = LabFigure._repr_png_
    shown = [0]

    def record_then_render(fig: LabFigure) -> bytes:
        shown[0] += 1
        np.savez(Path(folder) / f"figure{shown[0]:03d}.npz", **figure_data(fig))
        return render(fig)

    LabFigure._repr_png_ = record_then_render


def ipython_dir_recording_figures(root, folder) -> str:
    """An IPYTHONDIR whose startup file makes kernels record their figures into ``folder``."""
    from pathlib import Path

    startup = Path(root) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    tests = str(Path(__file__).resolve().parent)
    (startup / "00-record-figures.py").write_text(
        STARTUP.format(tests=tests, folder=str(folder)), encoding="utf-8"
    )
    return str(root)


def load_recorded(folder) -> dict[str, np.ndarray]:
    """Every figure recorded in ``folder``, flattened to ``figure<n>/<name>`` keys."""
    from pathlib import Path

    data = {}
    for path in sorted(Path(folder).glob("figure*.npz")):
        with np.load(path) as arrays:
            data.update({f"{path.stem}/{name}": arrays[name] for name in arrays.files})
    return data
