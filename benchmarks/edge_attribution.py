"""Benchmark: edge attribution patching (EAP) over every edge against exact edge patching.

On the default model and the lab's IOI pairs (``labkit.data.patching_pairs("ioi")``), with lab
03's edges: senders are the embeddings, every head and every MLP; receivers are every layer's
attention, every MLP and the logits; an edge runs from a sender to a receiver after it.

* EAP: the solution's ``edge_attribution_patching``, one clean forward pass and one corrupted
  forward and backward pass for every edge at once (median of 3 runs after a warm-up);
* exact: the solution's ``patch_edges``, which patches edges batched by receiver (16 edges per
  pass, each run started at the receiver's layer and at the first position where the prompts
  differ). For every receiver, one full pass of 16 of its edges (drawn uniformly) is timed;
  with ``--all``, every edge is patched and timed instead.

Extrapolation: exact patching of every edge takes, per receiver, ceil(edges into it / 16)
passes, each as long as the pass measured for that receiver; the sum over receivers is the
time of every edge (a per-edge average from a small uniform sample would count a mostly empty
pass per edge and overstate it). Printed: both times, their ratio, and the agreement of EAP
with exact patching on the edges patched (Pearson, Spearman, sign agreement, top-10 recall).
Every function is read from solutions/03_attribution_patching.ipynb. Run:
    HF_HUB_OFFLINE=1 python benchmarks/edge_attribution.py [--pairs N] [--sample K | --all]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="IOI pairs in the batch")
    parser.add_argument("--sample", type=int, default=300, help="edges patched exactly")
    parser.add_argument("--all", action="store_true", help="patch every edge exactly (minutes)")
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
    print(
        f"{lm.name}, {len(pairs)} IOI pairs of {clean.shape[1]} tokens, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )

    eap_fn = sol["edge_attribution_patching"]
    eap_fn(lm, clean, corrupted, metric)  # warm-up
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        eap = eap_fn(lm, clean, corrupted, metric)
        runs.append(time.perf_counter() - started)
    eap_seconds = statistics.median(runs)

    place = torch.tensor(
        [-1]
        + [p for layer in range(lm.n_layers) for p in [2 * layer] * lm.n_heads + [2 * layer + 1]]
    )
    edges = (torch.arange(2 * lm.n_layers + 1)[None, :] > place[:, None]).nonzero().tolist()
    per_pass = 16  # patch_edges' default edges_per_pass
    by_receiver: dict[int, list[int]] = {}
    for i, (_, receiver) in enumerate(edges):
        by_receiver.setdefault(receiver, []).append(i)
    gen = torch.Generator().manual_seed(0)
    base = float(metric(lm.model(corrupted).logits[:, -1]).detach())
    chosen, exact, every_edge, patched_seconds = [], [], 0.0, 0.0
    for into in by_receiver.values():
        if args.all:
            pick = into
        else:
            pick = [into[i] for i in torch.randperm(len(into), generator=gen)[:per_pass].tolist()]
        started = time.perf_counter()
        found = sol["patch_edges"](lm, clean, corrupted, metric, [edges[i] for i in pick]) - base
        seconds = time.perf_counter() - started
        patched_seconds += seconds
        passes = -(-len(pick) // per_pass)
        every_edge += seconds / passes * -(-len(into) // per_pass)
        chosen += pick
        exact.append(found)
    exact = torch.cat(exact)
    how = "measured" if args.all else "extrapolated per receiver from one pass each"
    estimate = torch.stack([eap[s, r] for s, r in (edges[i] for i in chosen)])
    a = sol["agreement"](estimate, exact, 10)
    print(
        f"{len(edges)} edges into {len(by_receiver)} receivers. EAP of every edge: "
        f"{eap_seconds:.2f} s (median of 3). Exact patching of {len(chosen)} edges: "
        f"{patched_seconds:.1f} s; of every edge: {every_edge:.0f} s ({how})."
    )
    print(
        f"ratio {every_edge / eap_seconds:.0f}x; on the edges patched: pearson {a['pearson']:.3f}, "
        f"spearman {a['spearman']:.3f}, sign agreement {a['sign agreement']:.3f}, "
        f"top-10 recall {a['top-k recall']:.1f}"
    )

    worst = (estimate - exact).abs().topk(3).indices.tolist()
    print(
        "largest misses (EAP / exact): "
        + "; ".join(
            f"{sol['edge_name'](lm, *edges[chosen[i]])} {estimate[i]:+.3f} / {exact[i]:+.3f}"
            for i in worst
        )
    )


if __name__ == "__main__":
    main()
