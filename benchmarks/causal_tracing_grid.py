"""Benchmark: the restoration grid as one forward pass per cell vs lab 02's implementation.

Both compute the same grid on the default model with the seed notebook's prompt ("Why do
electricians make good swimmers? Because they know the" -> " current", subject
" electricians"), the same seeded noise samples, for the residual stream and for MLP and
attention outputs restored over a window of 10 layers. Printed for each site: seconds for each
(wall clock, and CPU time of this process, which a busy shared machine disturbs far less), the
speed-ups measured in this run, and the largest difference between the grids. The lab's grid is
timed as the best of three runs; the loop, which takes minutes, runs once. With ``--baseline
OTHER.ipynb`` the grid of another version of the solution notebook is timed in the same run
(before/after). ``--profile`` adds where the time of one lab grid goes, by layer and by
operation.

The lab's implementation runs one forward pass per restored position. Each batch row (one per
restored layer and noise sample) starts at the first layer where it differs from the corrupted
run (``run_from`` with a layer per row: the batch grows on the way up), positions before the
restored one reuse the corrupted run's keys and values, and only the last position is unembedded.
It is read from solutions/02_causal_tracing.ipynb, so this measures the code students see.

Measured on 2 CPU cores, one thread, load 5-7 from other jobs (2026-12-06), speed-ups in CPU
time (wall clock in brackets), 3 samples: resid 11.5x (13.2x), MLP 8.9x (8.1x), attention 8.6x
(9.7x); the previous implementation (a pass per group of 10 layers) in the same run: 8.1x
(9.3x), 6.7x (5.6x), 6.8x (5.7x); grids equal to 4.5e-09. About three quarters of a lab grid's
time is matrix products, and the time per block grows with the layer as rows join. Each row
computes only what differs from the corrupted run, so what is left is the work inside the
passes, not their number: the loop does 4.1 TFLOP, the lab 576 GFLOP for the residual stream
(7.1x less) and 769 GFLOP for a window of 10 (5.3x less); the rest of the speed-up is the
larger matrices running faster per FLOP.
Run:  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/causal_tracing_grid.py \
      --sites resid,mlp,attn [--baseline OLD.ipynb] [--profile]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import torch

import labkit
from labkit.hooks import capture, patch, span_positions
from labkit.notebooks import notebook_definitions as solution_functions

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Why do electricians make good swimmers? Because they know the"
SUBJECT, TARGET = " electricians", " current"
SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def grid_one_forward_per_cell(lm, tokens, corrupted_embeds, target_id, site, window):
    """The seed notebook's loop: a full forward pass for every (layer, position) cell."""
    name = SITE_OF[site]
    with capture(lm, name) as clean:
        lm.model(tokens)
    grid = torch.zeros(lm.n_layers, tokens.shape[1])
    for layer in range(lm.n_layers):
        low, high = layer, layer + 1
        if site != "resid":
            low, high = max(0, layer - window // 2), min(lm.n_layers, layer - (-window // 2))
        for position in range(tokens.shape[1]):
            with ExitStack() as stack:
                for restored in range(low, high):
                    value = clean[name, restored]
                    stack.enter_context(patch(lm, name, restored, value, positions=[position]))
                logits = lm.model(inputs_embeds=corrupted_embeds).logits  # (samples, pos, vocab)
            grid[layer, position] = logits[:, -1].softmax(-1)[:, target_id].mean()
    return grid


def timed(fn, repeats: int = 1):
    """(result, best wall seconds, best CPU seconds) of ``repeats`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = min(wall, time.perf_counter() - start_wall)
        cpu = min(cpu, time.process_time() - start_cpu)
    return result, wall, cpu


def profile(lm, grid) -> None:
    """Where one grid's time goes: CPU seconds per block, outside the blocks, and per kind of
    operation (torch.profiler's self time, which includes waiting on a busy machine)."""
    per_layer, started, handles = defaultdict(float), {}, []
    for i, block in enumerate(lm.blocks):
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, i=i: started.__setitem__(i, time.process_time())
            )
        )
        handles.append(
            block.register_forward_hook(
                lambda m, a, o, i=i: per_layer.__setitem__(
                    i, per_layer[i] + time.process_time() - started[i]
                )
            )
        )
    try:
        _, _, total = timed(grid)
    finally:
        for handle in handles:
            handle.remove()
    blocks = sum(per_layer.values())
    print(
        f"  one grid: {total:.2f} s CPU; in the blocks {blocks:.2f} s, outside them (clean and "
        f"corrupted runs, unembedding, Python) {total - blocks:.2f} s"
    )
    print("  per layer (s): " + " ".join(f"{i}:{per_layer[i]:.2f}" for i in range(lm.n_layers)))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        grid()
    kinds = {
        "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
        "softmax": ("aten::_softmax",),
        "copies and concatenation": ("aten::copy_", "aten::cat", "aten::clone", "aten::index_put_"),
    }
    events = prof.key_averages()
    whole = sum(e.self_cpu_time_total for e in events)
    for kind, names in kinds.items():
        share = sum(e.self_cpu_time_total for e in events if e.key in names) / whole
        print(f"  {kind:25}: {100 * share:4.1f}% of the profiled time")
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    print(
        "  top operations: "
        + ", ".join(
            f"{e.key} {100 * e.self_cpu_time_total / whole:.1f}% ({e.count} calls)" for e in top
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="noise samples (lab: 2)")
    parser.add_argument("--sites", default="resid,mlp", help="comma-separated: resid,mlp,attn")
    parser.add_argument("--baseline", type=Path, help="another solution notebook to time too")
    parser.add_argument("--profile", action="store_true", help="profile one lab grid per site")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lab = solution_functions(ROOT / "solutions" / "02_causal_tracing.ipynb")
    other = solution_functions(args.baseline, "baseline") if args.baseline else None
    lm = labkit.load_model()
    tokens = lm.to_tokens(PROMPT, prepend_anchor=True)
    subject = span_positions(lm, tokens, SUBJECT)
    target_id = lm.token_id(TARGET)
    corrupted = lab["corrupt_subject"](lm, tokens, subject, n_samples=args.samples, seed=0)
    print(
        f"{lm.name}, {tokens.shape[1]} tokens, subject at {subject}, {args.samples} noise "
        f"samples, {torch.get_num_threads()} threads"
    )
    for site in args.sites.split(","):
        window = 1 if site == "resid" else 10

        def grid(functions=lab, site=site, window=window):
            return functions["restoration_grid"](lm, tokens, corrupted, target_id, site, window)

        fast, wall, cpu = timed(grid, repeats=3)
        slow, loop_wall, loop_cpu = timed(
            lambda site=site, window=window: grid_one_forward_per_cell(
                lm, tokens, corrupted, target_id, site, window
            )
        )
        print(
            f"{site:5s} window {window:2d}: one forward per cell {loop_wall:6.1f} s "
            f"({loop_cpu:5.1f} s CPU) | lab {wall:5.1f} s ({cpu:4.1f} s CPU) | speed-up "
            f"{loop_wall / wall:4.1f}x ({loop_cpu / cpu:4.1f}x in CPU time) | max |grid "
            f"difference| {(fast - slow).abs().max().item():.1e}"
        )
        if other is not None:
            before, other_wall, other_cpu = timed(lambda: grid(other), repeats=3)
            print(
                f"{'':16}baseline {other_wall:5.1f} s ({other_cpu:4.1f} s CPU) | speed-up "
                f"{loop_wall / other_wall:4.1f}x ({loop_cpu / other_cpu:4.1f}x in CPU time) | "
                f"max |grid difference| {(before - slow).abs().max().item():.1e}"
            )
        if args.profile:
            profile(lm, grid)


if __name__ == "__main__":
    main()
