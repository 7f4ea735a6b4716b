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
from matplotlib.collections import Collection, PathCollection, PolyCollection, QuadMesh
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
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


# ----- how a figure draws it ---------------------------------------------------------------------
def _round(values, digits: int = 4):
    """Numbers to ``digits`` significant digits, as nested lists (JSON-ready, NaN as None)."""
    array = np.asarray(values, dtype=float)
    rounded = [float(f"{v:.{digits}g}") if np.isfinite(v) else None for v in array.ravel()]
    return np.array(rounded, dtype=object).reshape(array.shape).tolist()


def _text_style(text) -> dict:
    return {
        "text": text.get_text(),
        "size": text.get_fontsize(),
        "rotation": text.get_rotation(),
        "ha": text.get_horizontalalignment(),
        "va": text.get_verticalalignment(),
        "colour": to_hex(text.get_color()),
    }


def _axis_spec(axis) -> dict:
    spec = {"scale": axis.get_scale()}
    base = getattr(axis.get_transform(), "base", None)
    if base is not None:
        spec["base"] = base
    if isinstance(axis.get_major_locator(), FixedLocator):  # ticks the plot chose
        spec["ticks"] = _round(axis.get_majorticklocs())
        spec["labels"] = [_text_style(t) for t in axis.get_ticklabels()]
    return spec


def _artist_spec(artist) -> dict:
    spec: dict = {"type": type(artist).__name__, "label": str(artist.get_label())}
    if isinstance(artist, Line2D):
        spec |= {
            "xy": _round(artist.get_xydata()),
            "colour": to_hex(artist.get_color()),
            "style": artist.get_linestyle(),
            "width": artist.get_linewidth(),
            "marker": str(artist.get_marker()),
            "marker size": artist.get_markersize(),
        }
    elif isinstance(artist, (QuadMesh, AxesImage)):
        spec |= {
            "values": _round(np.ma.getdata(artist.get_array())),
            "cmap": artist.get_cmap().name,
            "clim": _round(artist.get_clim()),
        }
    elif isinstance(artist, Collection):  # scatters and bands
        spec |= {
            "offsets": _round(artist.get_offsets()),
            "paths": [_round(p.vertices) for p in artist.get_paths()][:50],
            "sizes": _round(artist.get_sizes()) if hasattr(artist, "get_sizes") else None,
            "alpha": artist.get_alpha(),
            "colours": [to_hex(c, keep_alpha=True) for c in artist.get_facecolor()],
            "edges": [to_hex(c, keep_alpha=True) for c in artist.get_edgecolor()],
            "widths": _round(artist.get_linewidth()),
        }
    elif isinstance(artist, Rectangle):  # bars
        spec |= {
            "xy": _round(artist.get_xy()),
            "size": _round([artist.get_width(), artist.get_height()]),
            "colour": to_hex(artist.get_facecolor(), keep_alpha=True),
        }
    return spec


def figure_spec(fig: Figure) -> dict:
    """How the figure draws its data, as JSON-ready values: its size, and per axes where it
    sits, its texts (with size, rotation and alignment), scales, ticks, spines, legend, and
    every line, heatmap, scatter, band and bar with its colours, widths and markers.

    A snapshot of this catches a change to any of them (a flipped grid, a lost legend, another
    colour map, a smaller font); record a deliberate change again (see test_plot_snapshots).
    """
    suptitle = getattr(fig, "_suptitle", None)
    spec: dict = {
        "size": _round(fig.get_size_inches()),
        "suptitle": _text_style(suptitle) if suptitle is not None else None,
        "axes": [],
    }
    for ax in fig.axes:
        legend = ax.get_legend()
        shared = [fig.axes.index(o) for o in ax.get_shared_x_axes().get_siblings(ax)]
        spec["axes"].append(
            {
                "position": _round(ax.get_position().bounds, 2),
                "title": _text_style(ax.title),
                "xlabel": _text_style(ax.xaxis.label),
                "ylabel": _text_style(ax.yaxis.label),
                "x": _axis_spec(ax.xaxis),
                "y": _axis_spec(ax.yaxis),
                "y inverted": bool(ax.yaxis_inverted()),
                "aspect": str(ax.get_aspect()),
                "shares x with": sorted(shared),
                "spines": {name: s.get_visible() for name, s in ax.spines.items()},
                "legend": None
                if legend is None
                else {
                    "texts": [_text_style(t) for t in legend.get_texts()],
                    "frame": legend.get_frame_on(),
                },
                "artists": [
                    _artist_spec(a) for a in [*ax.collections, *ax.images, *ax.lines, *ax.patches]
                ],
                "texts": [_text_style(t) for t in ax.texts],
            }
        )
    return spec
