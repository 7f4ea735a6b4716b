"""Benchmark: the restoration grid as one forward pass per cell vs lab 02's implementation.

Both compute the same grid on the default model with the seed notebook's prompt ("Why do
electricians make good swimmers? Because they know the" -> " current", subject
" electricians"), the same seeded noise samples, for the residual stream and for MLP outputs
restored over a window of 10 layers. Printed: seconds for each, the speed-up (measured in this
run), and the largest difference between the two grids. The lab's grid is timed as the best
of three runs (it takes seconds, so a busy moment on a shared machine would swamp one run); the
loop, which takes minutes, runs once.

The lab's implementation batches many cells per forward pass, starts each pass at the lowest
restored layer (the corrupted run below it is reused) and computes only the positions from the
restored one on (the corrupted run's keys and values before it are reused). It is read from
solutions/02_causal_tracing.ipynb, so this measures the code students see.

Measured on 2 CPU cores (2026-11-23): resid 10.7x, MLP 7.7x, attention 9.5x, max difference
4.2e-09; on 2026-11-24, idle: resid 9.5x (190.9 s vs 20.2 s), MLP 7.7x (171.4 s vs 22.1 s).
Run:  HF_HUB_OFFLINE=1 python benchmarks/causal_tracing_grid.py
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path

import torch

import labkit
from labkit.notebooks import notebook_definitions as solution_functions
from labkit.hooks import capture, patch, span_positions

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="noise samples (lab: 3)")
    parser.add_argument("--sites", default="resid,mlp", help="comma-separated: resid,mlp,attn")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    lab = solution_functions(ROOT / "solutions" / "02_causal_tracing.ipynb")
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
        t_lab = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fast = lab["restoration_grid"](lm, tokens, corrupted, target_id, site, window)
            t_lab = min(t_lab, time.perf_counter() - start)
        start = time.perf_counter()
        slow = grid_one_forward_per_cell(lm, tokens, corrupted, target_id, site, window)
        t_loop = time.perf_counter() - start
        print(
            f"{site:5s} window {window:2d}: one forward per cell {t_loop:6.1f} s | lab "
            f"{t_lab:5.1f} s | speed-up {t_loop / t_lab:4.1f}x | max |grid difference| "
            f"{(fast - slow).abs().max().item():.1e}"
        )


if __name__ == "__main__":
    main()
