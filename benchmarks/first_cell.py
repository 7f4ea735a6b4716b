"""Benchmark: the first cell of a lab, ``import labkit`` plus the warm ``load_model()``.

Each run is a fresh ``python -c "import labkit; labkit.load_model()"`` (the converted model is
already cached), as a student's kernel pays it. Printed: the median over the runs of the wall
time and of the CPU time (user + system; less sensitive to a busy machine), the split between
``import labkit`` and ``load_model()``, and where the import time goes (``python -X importtime``,
summed by top-level package, and the slowest single imports).

With ``--baseline DIR`` the same runs alternate with a second checkout (for example the main
branch) and the ratio is printed, measured in this one run.

Goal (issue 16): at most 3 s on 2 cores. Run:
    HF_HUB_OFFLINE=1 python benchmarks/first_cell.py [--runs 5] [--baseline ../main]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_CELL = """
import time
start = time.perf_counter()
import labkit
imported = time.perf_counter()
labkit.load_model()
loaded = time.perf_counter()
print("@@", imported - start, loaded - imported)
"""


# What load_model() cannot avoid: torch, and transformers' Llama model and fast tokenizer.
FLOOR = """
import time
start = time.perf_counter()
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
imported = time.perf_counter()
print("@@", imported - start, 0.0)
"""


def child_env(source: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    return env


def one_run(source: Path, code: str = FIRST_CELL) -> dict[str, float]:
    """Wall and CPU seconds of one fresh first cell, with its import/load split."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(source),
        cwd=source,  # the current folder comes first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    imported, loaded = map(float, out.split("@@")[1].split())
    return {"wall": wall, "cpu": cpu, "import labkit": imported, "load_model()": loaded}


def import_breakdown(source: Path, top: int) -> None:
    """``python -X importtime`` of the first cell, summed by top-level package."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", FIRST_CELL],
        env=child_env(source),
        cwd=source,  # the current folder comes first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = []  # (self microseconds, cumulative microseconds, module)
    for line in err.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match[1]), int(match[2]), match[4]))
    by_package: dict[str, int] = defaultdict(int)
    for self_us, _, module in rows:
        by_package[module.split(".")[0]] += self_us
    total = sum(by_package.values())
    print(f"\nImports in the first cell: {total / 1e6:.2f} s in {len(rows)} modules")
    print("  by top-level package (self time summed):")
    for package, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {us / 1e6:6.2f} s  {us / total:5.1%}  {package}")
    print("  slowest single imports (cumulative, with everything they import):")
    for _, cumulative, module in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"    {cumulative / 1e6:6.2f} s  {module}")


def summarise(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    parts = ", ".join(f"{key} {value:.2f} s" for key, value in medians.items())
    print(f"{name}: median of {len(runs)}: {parts}")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--top", type=int, default=12, help="rows of the import breakdown")
    args = parser.parse_args()

    sources = {"this checkout": (ROOT, FIRST_CELL)}
    if args.baseline:
        sources["baseline"] = (args.baseline.resolve(), FIRST_CELL)
    sources["floor: import torch + transformers' Llama"] = (ROOT, FLOOR)
    for source, code in sources.values():
        one_run(source, code)  # warm the file cache (and convert a missing model) first
    runs: dict[str, list] = {name: [] for name in sources}
    for _ in range(args.runs):
        for name, (source, code) in sources.items():  # alternate: a busy moment hits all
            runs[name].append(one_run(source, code))
    print(
        f"First cell: import labkit; labkit.load_model()  ({os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f})"
    )
    medians = {name: summarise(f"{name} ({sources[name][0]})", r) for name, r in runs.items()}
    if args.baseline:
        for key in ("wall", "cpu"):
            ratio = medians["baseline"][key] / medians["this checkout"][key]
            print(f"  {key}: baseline / this checkout = {ratio:.2f}x")
    floor = medians["floor: import torch + transformers' Llama"]["cpu"]
    share = floor / medians["this checkout"]["cpu"]
    print(f"  the floor is {share:.0%} of this checkout's first cell (CPU time)")
    import_breakdown(ROOT, args.top)
    print(json.dumps({name: m for name, m in medians.items()}, indent=None))


if __name__ == "__main__":
    main()
