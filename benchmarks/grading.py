"""Benchmark: how many lab 01 submissions `labkit grade` grades per minute.

N synthetic submissions (default 24), graded with the default limits and `--jobs` workers
(default 2, one per core): with `--mix honest` all are the solution notebook (the issue's goal
is about honest classes); with `--mix class` half are correct, a quarter wrong (unattempted, or
with plausible mistakes in several exercises) and a quarter hostile (an infinite loop, os._exit,
a memory bomb). Every submission is tested on the notebook's problems and on two hidden
variants: each call of student code in its contained worker, every check in the grader.

Printed: the workers' start-up time (importing torch and the lab's libraries, once per worker),
the grading time, and submissions per minute with and without the start-up.

Goal (issue 24): at least 25 honest lab 01 submissions per minute with --jobs 2 on 2 cores.
Run:  HF_HUB_OFFLINE=1 python benchmarks/grading.py [--n 24] [--jobs 2] [--mix honest|class]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from labkit.grading.config import Limits
from labkit.grading.grader import Options, grade, preload_modules, start_all
from labkit.grading.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attribution.ipynb"
LAB = ROOT / "labs" / "01_attribution.ipynb"

WRONG = {  # plausible mistakes: each function still runs and returns the right shape
    "saliency": "def saliency(f, embeddings):\n"
    "    x = embeddings.detach().clone().requires_grad_(True)\n"
    "    (grad,) = torch.autograd.grad(f(x).sum(), x)\n"
    "    return grad[0].sum(dim=-1)  # sums instead of the L2 norm\n",
    "spearman": "def spearman(a, b):\n"
    "    a, b = a - a.mean(), b - b.mean()  # correlates values, not ranks\n"
    "    return float((a * b).sum() / (a.norm() * b.norm()))\n",
    "attention_rollout": "def attention_rollout(attentions):\n"
    "    out = torch.eye(attentions.shape[-1])\n"
    "    for layer in attentions:\n"
    "        out = out @ layer.mean(dim=0)  # no residual, wrong order\n"
    "    return out\n",
}
HOSTILE = [
    {"saliency": "def saliency(f, embeddings):\n    while True:\n        pass\n"},
    {"occlusion": "import os\n\ndef occlusion(score, tokens, replacement_id):\n    os._exit(1)\n"},
    {"spearman": "def spearman(a, b):\n    return bytearray(64 * 2**30)\n"},
]


def _replace(nb: nbformat.NotebookNode, functions: dict[str, str]) -> nbformat.NotebookNode:
    for name, source in functions.items():
        for cell in nb.cells:
            if cell.cell_type == "code" and f"def {name}(" in cell.source:
                cell.source = source
                break
    return nb


def make_submissions(folder: Path, n: int, mix: str = "honest") -> dict[str, int]:
    counts = {"correct": 0, "wrong": 0, "hostile": 0}
    for i in range(n):
        nb = nbformat.read(SOLUTION, as_version=4)
        if mix == "honest" or i % 4 in (0, 1):
            kind = "correct"
        elif i % 4 == 2:
            kind = "wrong"
            nb = nbformat.read(LAB, as_version=4) if i % 8 == 2 else _replace(nb, WRONG)
        else:
            kind = "hostile"
            nb = _replace(nb, HOSTILE[(i // 4) % len(HOSTILE)])
        counts[kind] += 1
        path = folder / f"student{i:03d}" / "lab01.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="number of submissions")
    parser.add_argument("--jobs", type=int, default=2, help="workers (one per core)")
    parser.add_argument("--mix", choices=("honest", "class"), default="honest")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="labkit-bench-"))
    try:
        counts = make_submissions(scratch / "submissions", args.n, args.mix)
        limits = Limits()
        started = time.perf_counter()
        pool = [Sandbox(limits, slot=k, preload=preload_modules(LAB)) for k in range(args.jobs)]
        start_all(pool)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        summary = grade(
            Options(
                lab="01",
                submissions=scratch / "submissions",
                out=scratch / "grades",
                jobs=args.jobs,
                seed="benchmark",
                limits=limits,
                solutions=ROOT / "solutions",
                labs=ROOT / "labs",
                check_reference=False,
                pool=pool,
            )
        )
        seconds = time.perf_counter() - started
        for sandbox in pool:
            sandbox.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_minute = 60 * summary.graded / seconds
    overall = 60 * summary.graded / (seconds + startup)
    print(
        f"{summary.graded} submissions ({counts['correct']} correct, {counts['wrong']} wrong, "
        f"{counts['hostile']} hostile), {args.jobs} workers, 2 hidden variants each"
    )
    print(f"worker start-up (once): {startup:.1f} s; grading: {seconds:.1f} s")
    print(f"{per_minute:.1f} submissions per minute ({overall:.1f} counting start-up)")


if __name__ == "__main__":
    main()
