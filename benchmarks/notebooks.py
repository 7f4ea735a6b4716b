"""Benchmark: run each solution notebook top to bottom and show where the time goes.

Each notebook runs in a fresh kernel (nbclient), from its own folder, offline, as nbval and a
student would run it. Printed per notebook: the total time, the kernel start-up, the 5 slowest
cells (with their first line) and the slowest check cell (a cell that calls
``checks.check_...``). The notebooks are not modified.

With ``--model-time`` the kernel also measures how much of the run is the model's own work:
the time inside every top-level ``...ForCausalLM`` forward call and inside every backward pass
(``torch.autograd.grad`` and ``Tensor.backward``). That share is the floor no rewrite of the
surrounding Python can go below without running fewer passes.

To compare two versions of a notebook (before and after a change), name both and add
``--repeat N``: the notebooks run in turn, N rounds (A B A B ...), so that a change of load hits
both alike, and the summary gives each one's median time, model time and passes, and the ratios
to the first notebook named. For example:
    git show HEAD:solutions/01_attribution.ipynb > /tmp/old01.ipynb
    python benchmarks/notebooks.py --model-time --repeat 2 \\
        /tmp/old01.ipynb solutions/01_attribution.ipynb

Goals (issue 16): each solution at most 60 s on 2 cores, each check cell at most 2 s; Run All on
a student lab (``--labs``, exercises unattempted) at most 15 s. Run:
    HF_HUB_OFFLINE=1 python benchmarks/notebooks.py [--labs] [--model-time] [--slowest 5]
        [--repeat N] [NB ...]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
# A cell that runs a check calls it at the start of a line (``needs=checks.check_x`` in a claim
# only names one).
CHECK_CALL = re.compile(r"^\s*checks\.check_\w+\(", re.MULTILINE)


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


# Run before the notebook's first cell with --model-time: times the model's forward calls (the
# outermost ...ForCausalLM call only) and every backward pass, in the kernel itself: wall time,
# and the kernel process's CPU time (all its threads), which other jobs on the machine disturb
# much less.
MODEL_TIMER = """
import time as _bench_time, torch as _bench_torch
_bench = {"forward": 0.0, "forwards": 0, "backward": 0.0, "backwards": 0,
          "forward_cpu": 0.0, "backward_cpu": 0.0, "start": {}}

def _bench_now():
    return _bench_time.perf_counter(), _bench_time.process_time()

def _bench_pre(module, args):
    if type(module).__name__.endswith("ForCausalLM"):
        _bench["start"][id(module)] = _bench_now()

def _bench_post(module, args, output):
    start = _bench["start"].pop(id(module), None)
    if start is not None:
        wall, cpu = _bench_now()
        _bench["forward"] += wall - start[0]
        _bench["forward_cpu"] += cpu - start[1]
        _bench["forwards"] += 1

def _bench_timed(run):
    def timed(*args, **kwargs):
        start = _bench_now()
        try:
            return run(*args, **kwargs)
        finally:
            wall, cpu = _bench_now()
            _bench["backward"] += wall - start[0]
            _bench["backward_cpu"] += cpu - start[1]
            _bench["backwards"] += 1
    return timed

_bench_torch.nn.modules.module.register_module_forward_pre_hook(_bench_pre)
_bench_torch.nn.modules.module.register_module_forward_hook(_bench_post)
_bench_torch.autograd.grad = _bench_timed(_bench_torch.autograd.grad)
_bench_torch.Tensor.backward = _bench_timed(_bench_torch.Tensor.backward)
"""
MODEL_REPORT = """
print("@@model", *(_bench[key] for key in
                   ("forward", "forwards", "backward", "backwards", "forward_cpu", "backward_cpu")))
"""


def model_numbers(cell: nbformat.NotebookNode) -> tuple[float, int, float, int, float] | None:
    """(forward s, forward calls, backward s, backward passes, CPU s of both) from the report
    cell, if it ran."""
    text = "".join(out.get("text", "") for out in cell.get("outputs", []))
    fields = next(
        (line.split()[1:] for line in text.splitlines() if line.startswith("@@model")), None
    )
    if not fields:
        return None
    cpu = float(fields[4]) + float(fields[5])
    return float(fields[0]), int(fields[1]), float(fields[2]), int(fields[3]), cpu


def model_time(cell: nbformat.NotebookNode) -> str:
    """The --model-time report cell's output as one line."""
    numbers = model_numbers(cell)
    if numbers is None:
        return "  model time: not reported (the run stopped before the last cell)"
    forward, forwards, backward, backwards, cpu = numbers
    return (
        f"  model time: {forward + backward:.1f} s = {forward:.1f} s in {forwards} forward calls "
        f"+ {backward:.1f} s in {backwards} backward passes; CPU time {cpu:.1f} s"
    )


def run_notebook(
    path: Path, slowest: int, timeout: int, measure_model: bool = False
) -> tuple[float, tuple[float, int, float, int, float] | None]:
    """Run one notebook and print where its time went: (total seconds, model numbers or None)."""
    notebook = nbformat.read(path, as_version=4)
    if measure_model:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(MODEL_TIMER))
        notebook.cells.append(nbformat.v4.new_code_cell(MODEL_REPORT))
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
    if measure_model:
        print(model_time(notebook.cells[-1]))
        print("  (the first and last code cells above are the benchmark's timer and report)")
    print(f"  {slowest} slowest cells:")
    for seconds, index, cell in sorted(timed, key=lambda t: -t[0])[:slowest]:
        print(f"    {seconds:6.2f} s  cell {index + 1:>3}  {first_line(cell.source)}")
    checks = [t for t in timed if CHECK_CALL.search(t[2].source)]  # cells that run a check
    if checks:
        seconds, index, cell = max(checks, key=lambda t: t[0])
        print(f"  slowest check cell: {seconds:.2f} s  cell {index + 1}  {first_line(cell.source)}")
    return total, model_numbers(notebook.cells[-1]) if measure_model else None


def compare(paths: list[Path], runs: dict[Path, list[tuple]]) -> None:
    """Each notebook's median time, model time and passes, and the ratios to the first one: of the
    medians, and round by round (a round runs every notebook once, one after the other)."""
    first = paths[0]
    rounds = len(runs[first])
    model = {
        path: [n[0] + n[2] if n is not None else None for _, n in runs[path]] for path in paths
    }
    cpu = {path: [n[4] if n is not None else None for _, n in runs[path]] for path in paths}
    print(f"\nComparison over {rounds} round(s):")
    for path in paths:
        total = statistics.median(t for t, _ in runs[path])
        line = f"  {path.name}: median total {total:.1f} s"
        if path != first:
            line += f" (x{statistics.median(t for t, _ in runs[first]) / total:.2f})"
        known = [m for m in model[path] if m is not None]
        if known:
            numbers = next(n for _, n in runs[path] if n is not None)
            line += f"; median model time {statistics.median(known):.1f} s"
            line += f" ({numbers[1]} forward calls, {numbers[3]} backward passes)"
            line += f", median CPU time {statistics.median(c for c in cpu[path] if c):.1f} s"
            for label, values in (("model time", model), ("CPU time", cpu)):
                pairs = [
                    (a, b) for a, b in zip(values[first], values[path], strict=True) if a and b
                ]
                if path != first and pairs:
                    ratios = ", ".join(f"x{a / b:.2f}" for a, b in pairs)
                    mean_ratio = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
                    line += (
                        f"\n    {label} ratio by round {ratios}; over all rounds x{mean_ratio:.2f}"
                    )
        print(line)
    print("  (x: the first notebook's time divided by this one's; above 1 is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: solutions/*.ipynb")
    parser.add_argument("--labs", action="store_true", help="run the student labs instead")
    parser.add_argument("--slowest", type=int, default=5)
    parser.add_argument(
        "--model-time", action="store_true", help="also time the model's forward/backward passes"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the notebooks in turn this many rounds and compare them (medians, ratios)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The kernels import labkit from this checkout, whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    folder = ROOT / ("labs" if args.labs else "solutions")
    paths = [p.resolve() for p in args.notebooks] or sorted(folder.glob("*.ipynb"))
    print(f"{len(paths)} notebook(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    runs: dict[Path, list[tuple]] = {path: [] for path in paths}
    for _ in range(args.repeat):
        for path in paths:
            runs[path].append(run_notebook(path, args.slowest, args.timeout, args.model_time))
    totals = {path.name: runs[path][-1][0] for path in paths}
    print("\nTotals: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))
    if args.repeat > 1 or len(paths) > 1:
        compare(paths, runs)


if __name__ == "__main__":
    main()
