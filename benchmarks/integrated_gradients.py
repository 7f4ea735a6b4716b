"""Integrated gradients on the default model: one batched pass vs a loop over steps vs libraries.

Lab 01 asks students to put every integration step in one batch. This script measures what that
buys on the machine it runs on, in one run, as ratios (timings from one run are only comparable
with each other): the batched pass, the straightforward loop (one forward and backward per step),
captum's IntegratedGradients with the whole path in one batch, and inseq's integrated gradients.

    HF_HUB_OFFLINE=1 python benchmarks/integrated_gradients.py [--steps 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import labkit
from labkit.widgets.attribution import inseq_attribution


def batched_ig(f, x, b, n_steps):
    alphas = (torch.arange(n_steps, dtype=x.dtype) + 0.5) / n_steps
    path = (b + alphas[:, None, None] * (x - b)).requires_grad_(True)  # (n_steps, pos, d_model)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b)[0] * grads.mean(0)).sum(-1)


def looped_ig(f, x, b, n_steps):
    total = torch.zeros_like(x)
    for k in range(n_steps):
        point = (b + (k + 0.5) / n_steps * (x - b)).requires_grad_(True)  # (1, pos, d_model)
        (grad,) = torch.autograd.grad(f(point).sum(), point)
        total += grad / n_steps
    return ((x - b) * total)[0].sum(-1)


def best_of(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--target", default=" Paris")
    args = parser.parse_args()

    from captum.attr import IntegratedGradients

    lm = labkit.load_model()
    tokens = lm.to_tokens(args.prompt, prepend_anchor=True)
    target_id = lm.token_id(args.target)
    space_id = lm.token_id(" ")
    with torch.no_grad():
        x = lm.embed(tokens)
        b = lm.embed(torch.where(torch.arange(tokens.shape[1]) == 0, tokens, space_id))

    def f(e):
        return lm.model(inputs_embeds=e).logits[:, -1, target_id]

    n = args.steps
    runs = {
        "batched (ours)": lambda: batched_ig(f, x, b, n),
        "loop over steps": lambda: looped_ig(f, x, b, n),
        "captum riemann_middle": lambda: (
            IntegratedGradients(f)
            .attribute(x, baselines=b, n_steps=n, method="riemann_middle", internal_batch_size=n)[0]
            .sum(-1)
        ),
        "inseq (Gauss-Legendre)": lambda: inseq_attribution(
            lm, tokens, target_id, "integrated_gradients", baseline_id=space_id, n_steps=n
        ),
    }
    print(
        f"{lm.name}, {tokens.shape[1]} tokens, {n} steps, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, run in runs.items():
            results[name] = best_of(run, args.repeats)
    base_time, base_scores = results["batched (ours)"]
    for name, (seconds, scores) in results.items():
        diff = (scores.detach() - base_scores.detach()).abs().max().item()
        print(
            f"  {name:24} {seconds:6.2f} s  {seconds / base_time:5.2f}x batched  "
            f"max |diff| vs batched {diff:.1e}"
        )


if __name__ == "__main__":
    main()
