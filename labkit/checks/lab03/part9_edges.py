"""Part 9 of lab 03: edge attribution patching (exercise 3.14)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, prompts and metric), and must give the "
    "same answer as it did then."
)


def edge_shape(lm) -> tuple[int, int]:
    """(senders, receivers): the embeddings, then each layer's heads and MLP; each layer's
    attention and MLP, then the logits."""
    return 1 + lm.n_layers * (lm.n_heads + 1), 2 * lm.n_layers + 1


def edges_of(lm) -> list[tuple[int, int]]:
    """Every (sender, receiver) pair in which the receiver comes after the sender."""
    places = [-1] + [p for layer in range(lm.n_layers) for p in [2 * layer] * lm.n_heads
                     + [2 * layer + 1]]  # fmt: skip
    return [(s, r) for s, place in enumerate(places) for r in range(2 * lm.n_layers + 1)
            if r > place]  # fmt: skip


def _case(t: Checker, fn: Callable, p: P.Pair, metric, repeat=False):
    want = t.expected("edge_attribution_patching", *p.args, metric)
    wrong = t.mistakes("edge_attribution_patching", *p.args, metric)
    what = (
        f"edge_attribution_patching(lm, clean, corrupted, metric) on {p.describe()}, {metric.label}"
    )
    got = t.tensor(
        t.call(fn, *p.args, metric),
        what,
        shape=edge_shape(p.lm),
        hint="Rows: the embeddings, then per layer its heads and its MLP; columns: per layer "
        "its attention and its MLP, then the logits.",
    )
    t.close(
        got,
        want,
        f"{what}: (clean - corrupted output of the sender) . gradient of the metric at the "
        "receiver's input through that receiver only, at the corrupted run, summed over "
        "positions, d_model and the batch; 0 where the receiver does not come after the sender",
        atol=1e-5,
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )


@LAB.exercise("3.14", "edge attribution patching", points=3)
def check_edge_attribution_patching(edge_attribution_patching: Callable, t: Checker) -> None:
    """A grouped-query model (two prompts) and a model of another family with more than 9
    layers and positions (one prompt), the normalised metric and one that is not (also on the
    same prompts), the first call repeated; and the definition: on a model that is linear in
    its activations, every edge's estimate is exact edge patching (minus the corrupted run's
    metric)."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt2", "llama"]), 2, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 141, batch=2, n_pos=t.choice([6, 5, 7]))
    o = P.pair(t, other, 142, batch=1, n_pos=t.choice([10, 11]))
    m_g = P.normalised(t, g)
    m_o = P.random_metric(kit.generator(t, 143), o.batch, other.vocab_size)
    noise_g = P.random_metric(kit.generator(t, 144), g.batch, grouped.vocab_size)
    with t.part("every edge", points=1):
        _case(t, edge_attribution_patching, g, m_g)
        _case(t, edge_attribution_patching, o, m_o)
        _case(t, edge_attribution_patching, g, noise_g)  # the same prompts, another metric

    lin, metric, lin64 = P.linear_problem(t, 145)
    metric64 = P.as_float64(metric)
    base = float(metric64(P.last_logits(lin64, lin.corrupted)))
    edges = edges_of(lin.lm)
    with t.part("exact on a model linear in its activations; the first call again", points=2):
        exact = t.expected("patch_edges", lin64, lin.clean, lin.corrupted, metric64, edges)
        what = (
            f"edge_attribution_patching(...) on a tiny {lin.lm.family} model that is linear in "
            "its activations"
        )
        got = t.tensor(
            t.call(edge_attribution_patching, *lin.args, metric), what, shape=edge_shape(lin.lm)
        )
        rows, cols = zip(*edges, strict=True)
        t.close(
            got[list(rows), list(cols)],
            torch.as_tensor(exact).double() - base,
            f"{what}: each edge's estimate is exact edge patching (the receiver alone gets the "
            "sender's clean output) minus the corrupted run's metric, on every edge",
            atol=2e-4,
            scale=P.scale_of(torch.as_tensor(exact) - base),
            hint="On this model the metric is linear in every receiver's input, so the "
            "first-order estimate is exact. A gradient that includes the skip connection, or "
            "one taken at the clean run, is not.",
        )
        _case(t, edge_attribution_patching, g, m_g, repeat=True)
