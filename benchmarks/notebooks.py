"""Benchmark: run each solution notebook top to bottom and show where the time goes.

Each notebook runs in a fresh kernel (nbclient), from its own folder, offline, as nbval and a
student would run it. Printed per notebook: the total time, the kernel start-up, the 5 slowest
cells (with their first line) and the slowest check cell (a cell that calls
``checks.check_...``). The notebooks are not modified.

Goals (issue 16): each solution at most 60 s on 2 cores, each check cell at most 2 s; Run All on
a student lab (``--labs``, exercises unattempted) at most 15 s. Run:
    HF_HUB_OFFLINE=1 python benchmarks/notebooks.py [--labs] [--slowest 5] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def cell_seconds(cell: nbformat.NotebookNode) -> float | None:
    """Execution time of one cell from the timing nbclient records in its metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def first_line(source: str) -> str:
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    text = lines[0] if lines else "(empty)"
    return text if len(text) <= 70 else text[:67] + "..."


def run_notebook(path: Path, slowest: int, timeout: int) -> float:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1] if str(err).strip() else "a cell failed"
    total = time.perf_counter() - start
    timed = [
        (seconds, index, cell)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (seconds := cell_seconds(cell)) is not None
    ]
    in_cells = sum(seconds for seconds, _, _ in timed)
    print(f"\n{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(
        f"  total {total:.1f} s: cells {in_cells:.1f} s, kernel start and overhead "
        f"{total - in_cells:.1f} s ({len(timed)} code cells)"
    )
    if error:
        print(f"  STOPPED by an error: {error}")
    print(f"  {slowest} slowest cells:")
    for seconds, index, cell in sorted(timed, key=lambda t: -t[0])[:slowest]:
        print(f"    {seconds:6.2f} s  cell {index + 1:>3}  {first_line(cell.source)}")
    checks = [t for t in timed if "checks.check_" in t[2].source]  # cells that run a check
    if checks:
        seconds, index, cell = max(checks, key=lambda t: t[0])
        print(f"  slowest check cell: {seconds:.2f} s  cell {index + 1}  {first_line(cell.source)}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: solutions/*.ipynb")
    parser.add_argument("--labs", action="store_true", help="run the student labs instead")
    parser.add_argument("--slowest", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The kernels import labkit from this checkout, whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    folder = ROOT / ("labs" if args.labs else "solutions")
    paths = [p.resolve() for p in args.notebooks] or sorted(folder.glob("*.ipynb"))
    print(f"{len(paths)} notebook(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    totals = {path.name: run_notebook(path, args.slowest, args.timeout) for path in paths}
    print("\nTotals: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))


if __name__ == "__main__":
    main()
