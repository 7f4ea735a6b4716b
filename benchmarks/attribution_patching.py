"""Benchmark: attribution patching against the fastest exact patching lab 03 teaches.

On the default model and the lab's IOI pairs (``labkit.data.patching_pairs("ioi")``: the
seed's task, "When John and Mary went to the shops, John gave a ... to", names swapped), over
the same components:

* every head at all positions (30 x 9): exact = the lab's ``patch_heads`` (9 heads per forward
  pass, each run started at the patched layer and at the first position where the prompts
  differ); estimate = attribution patching per head and position, summed over positions;
* head x position (30 x 9 x pos): exact = the lab's ``patch_head_positions`` for every head
  (one run per position and layer, batched over that layer's heads, reusing the corrupted
  keys and values before the position); estimate = attribution patching per head and position.

The estimate is the lab's ``attribution_all(..., sites=("head_out",))``: one clean forward pass
without logits, then one corrupted forward pass from the first position where the prompts
differ (reusing the clean run's keys and values before it, which are the same in both runs),
unembedding only the last position, and one backward pass for every head at once. Its time
includes all three. The exact functions get the same savings where they apply (no logits that
nothing reads; nothing recomputed before the first difference). Every function is read from
solutions/03_attribution_patching.ipynb, so this measures the code students see; the
exercise's ``head_attribution`` (full runs, one site per call) is timed too, for reference.

Printed: seconds (the estimate: median of 5 runs after a warm-up; exact: one run), the speed-up
measured in this run by the wall clock and by CPU time (steadier on a shared machine), and
beside it the agreement of the estimate with exact patching (Pearson, Spearman, top-10 recall).

Measured 2026-11-24 on 2 CPU cores (6 pairs, 1 thread, one other job running): estimate 1.96 s;
every head 46.3 s exact, 23.6x (CPU 23.6x); head x position 143.6 s exact, 73.2x (CPU 74.3x);
Pearson 0.73, Spearman 0.92, top-10 recall 0.9 beside both. Idle, 2 threads (2026-11-24):
estimate 1.70 s; every head 25.8 s exact, 15.2x; head x position 68.3 s exact, 40.2x (the exact
side gains more from the second thread). Run:
    HF_HUB_OFFLINE=1 python benchmarks/attribution_patching.py [--pairs N] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import labkit
from labkit.data import patching_pairs
from labkit.notebooks import notebook_definitions as solution_functions

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *args, repeats: int = 1, **kwargs) -> tuple[object, float, float]:
    """The result of ``fn(*args)`` and its wall-clock and CPU seconds: one run, or the median of
    ``repeats`` runs after a warm-up run."""
    if repeats > 1:
        fn(*args, **kwargs)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return out, statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="IOI pairs in the batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sol = solution_functions(ROOT / "solutions" / "03_attribution_patching.ipynb")
    lm = labkit.load_model()
    pairs = patching_pairs("ioi")[: args.pairs]
    clean = torch.cat([lm.to_tokens(p["clean"], prepend_anchor=True) for p in pairs])
    corrupted = torch.cat([lm.to_tokens(p["corrupted"], prepend_anchor=True) for p in pairs])
    targets = [lm.token_id(p["target"]) for p in pairs]
    foils = [lm.token_id(p["foil"]) for p in pairs]
    metric = sol["normalised_metric"](lm, clean, corrupted, targets, foils)
    agreement = sol["agreement"]
    first = int((clean != corrupted).any(0).nonzero()[0])
    print(
        f"{lm.name}, {len(pairs)} IOI pairs of {clean.shape[1]} tokens (the first {first} the "
        f"same in both prompts), {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f}"
    )

    found, t_attr, c_attr = timed(
        sol["attribution_all"], lm, clean, corrupted, metric, sites=("head_out",), repeats=5
    )
    estimate = found["head_out"]  # (n_layers, n_heads, pos)
    _, t_exercise, c_exercise = timed(
        sol["head_attribution"], lm, clean, corrupted, metric, repeats=5
    )
    heads, t_heads, c_heads = timed(sol["patch_heads"], lm, clean, corrupted, metric)
    every = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    by_position, t_hp, c_hp = timed(
        sol["patch_head_positions"], lm, clean, corrupted, metric, every
    )
    by_position = by_position.view(lm.n_layers, lm.n_heads, -1)

    print(
        f"attribution patching, every head x position: {t_attr:.2f} s (CPU {c_attr:.2f} s); "
        f"the exercise's head_attribution: {t_exercise:.2f} s (CPU {c_exercise:.2f} s)"
    )
    for name, exact, est, seconds, cpu in [
        ("every head, all positions", heads, estimate.sum(-1), t_heads, c_heads),
        ("head x position", by_position, estimate, t_hp, c_hp),
    ]:
        a = agreement(est, exact, 10)
        print(
            f"{name:26} exact {seconds:7.1f} s  ratio {seconds / t_attr:6.1f}x "
            f"(CPU {cpu / c_attr:6.1f}x; exercise {seconds / t_exercise:5.1f}x)   "
            f"pearson {a['pearson']:.3f}  spearman {a['spearman']:.3f}  "
            f"top-10 recall {a['top-k recall']:.1f}"
        )


if __name__ == "__main__":
    main()
