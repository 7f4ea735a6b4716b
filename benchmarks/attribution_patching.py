"""Benchmark: attribution patching against the fastest exact patching lab 03 teaches.

On the default model and the lab's IOI pairs (``labkit.data.patching_pairs("ioi")``: the
seed's task, "When John and Mary went to the shops, John gave a ... to", names swapped), over
the same components:

* every head at all positions (30 x 9): exact = the lab's ``patch_heads`` (9 heads per forward
  pass, each run started at the patched layer and at the first position where the prompts
  differ); estimate = ``head_attribution`` summed over positions;
* head x position (30 x 9 x pos): exact = the lab's ``patch_head_positions`` for every head
  (one run per position and layer, batched over that layer's heads, reusing the corrupted
  keys and values before the position); estimate = ``head_attribution``.

The attribution patching time includes its clean forward pass and the corrupted forward and
backward passes. Printed: seconds, the speed-up measured in this run, and beside it the
agreement of the estimate with exact patching (Pearson, Spearman, top-10 recall). Every
function is read from solutions/03_attribution_patching.ipynb, so this measures the code
students see.

Measured on the shared 2-core machine under heavy load (2026-11-23, 2 pairs, 1 thread): every
head 11.4x (Pearson 0.83, Spearman 0.95), head x position 42.4x (Pearson 0.83, Spearman 0.97);
to be re-measured on an idle machine. Run:
    HF_HUB_OFFLINE=1 python benchmarks/attribution_patching.py [--pairs N] [--threads T]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import labkit
from labkit.build import solution_functions
from labkit.data import patching_pairs

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *args, repeats: int = 1):
    """The result of ``fn(*args)`` and its best time over ``repeats`` runs, in seconds."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


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
    print(
        f"{lm.name}, {len(pairs)} IOI pairs of {clean.shape[1]} tokens, "
        f"{torch.get_num_threads()} threads"
    )

    estimate, t_attr = timed(sol["head_attribution"], lm, clean, corrupted, metric, repeats=3)
    heads, t_heads = timed(sol["patch_heads"], lm, clean, corrupted, metric)
    every = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    by_position, t_hp = timed(sol["patch_head_positions"], lm, clean, corrupted, metric, every)
    by_position = by_position.view(lm.n_layers, lm.n_heads, -1)

    print(f"attribution patching (every head x position): {t_attr:.2f} s")
    for name, exact, est, seconds in [
        ("every head, all positions", heads, estimate.sum(-1), t_heads),
        ("head x position", by_position, estimate, t_hp),
    ]:
        a = agreement(est, exact, 10)
        print(
            f"{name:26} exact {seconds:7.1f} s  ratio {seconds / t_attr:6.1f}x   "
            f"pearson {a['pearson']:.3f}  spearman {a['spearman']:.3f}  "
            f"top-10 recall {a['top-k recall']:.1f}"
        )


if __name__ == "__main__":
    main()
