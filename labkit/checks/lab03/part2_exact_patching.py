"""Part 2 of lab 03: exact activation patching (exercises 3.2 and 3.3)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB


def _grid_case(t: Checker, patch_grid: Callable, p: P.Pair, metric, site: str | None) -> None:
    """One call: the cells where both runs agree, then every cell against the reference."""
    where = site or "resid_pre"
    want = t.expected("patch_grid", *p.args, metric, where)
    wrong = t.mistakes("patch_grid", *p.args, metric, where)
    base = float(metric(P.last_logits(p.lm, p.corrupted)))
    shown = " (no site: the default, 'resid_pre')" if site is None else f", {site!r})"
    what = f"patch_grid(lm, clean, corrupted, metric{shown} on {p.describe()}, {metric.label}"
    args = (*p.args, metric) if site is None else (*p.args, metric, site)
    got = t.call(patch_grid, *args)
    got = t.tensor(
        got,
        what,
        shape=(p.lm.n_layers, p.n_pos),
        hint="One cell per (layer, position): (n_layers, pos).",
    )
    before = (slice(None), slice(0, p.first_change))  # every layer, before the first change
    agree = got[before]
    tolerance = 1e-4 * P.scale_of(want)
    t.close(
        agree,
        torch.full_like(agree, base),
        f"{what}: before position {p.first_change}, the first where the prompts differ, both "
        f"runs agree and a patch changes nothing: every cell is the corrupted run's metric, "
        f"{base:.4g}",
        scale=max(abs(base), 1.0),
        mistakes=P.whole(wrong, got, before, tolerance),  # named only if the whole grid fits
    )
    t.close(
        got,
        want,
        f"{what}: cell (L, p) is the metric of the corrupted run with the clean {where} at "
        "layer L, position p only, in every prompt of the batch",
        scale=P.scale_of(want),
        mistakes=wrong,
    )


@LAB.exercise("3.2", "exact patching grid", points=3)
def check_patch_grid(patch_grid: Callable, t: Checker) -> None:
    """Every site, the default site, two families (one with more than 10 layers and 9
    positions), batches of 1 and 2 whose prompts change at different positions, the
    normalised metric and a metric that is not normalised (also on the same prompts and site);
    calls in no sorted order, and the first call repeated at the end. Where the runs agree, a
    cell is the corrupted run's metric (the definition)."""
    first, second = P.families(t, ["gpt2", "llama"])
    small = P.pair(
        t, P.model(t, first, 1, n_layers=t.choice([3, 2])), 21, batch=2, n_pos=t.choice([6, 4, 7])
    )
    big = P.pair(
        t,
        P.model(t, second, 2, n_layers=t.choice([11, 12])),  # more than one batch of 10
        22,
        batch=1,
        n_pos=t.choice([10, 11]),
        changes=1,
    )
    m_small, m_big = P.normalised(t, small), P.normalised(t, big)
    other = P.random_metric(kit.generator(t, 23), small.batch, small.lm.vocab_size)
    plan = {
        "site 'resid_pre' (and the default site)": [
            (small, m_small, None),
            (big, m_big, "resid_pre"),
        ],
        "site 'attn_out'": [
            (big, m_big, "attn_out"),
            (small, m_small, "attn_out"),
            (small, other, "attn_out"),  # the same prompts and site, another metric
        ],
        "site 'mlp_out', and the first call again": [
            (small, other, "mlp_out"),
            (big, m_big, "mlp_out"),
            (small, m_small, None),
        ],
    }
    for name, calls in plan.items():
        with t.part(name, points=1):
            for p, metric, site in calls:
                _grid_case(t, patch_grid, p, metric, site)


@LAB.exercise("3.3", "exact patching of every head", points=2)
def check_patch_heads(patch_heads: Callable, t: Checker) -> None:
    """A grouped-query model (more query heads than key/value heads, and than layers) and a
    model of another family with more than 9 layers; batches of 1 and 2, the normalised
    metric and one that is not; the first call repeated at the end."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt2", "gpt_neox"]), 2, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 31, batch=2, n_pos=t.choice([6, 5]))
    o = P.pair(t, other, 32, batch=1, n_pos=t.choice([5, 4]))
    m_g, m_o = P.normalised(t, g), P.normalised(t, o)
    noise = P.random_metric(kit.generator(t, 33), g.batch, grouped.vocab_size)
    plan = {
        f"every head of {P.describe_model(grouped)}": [(g, m_g), (g, noise)],
        f"every head of {P.describe_model(other)}, and the first call again": [(o, m_o), (g, m_g)],
    }
    for name, calls in plan.items():
        with t.part(name, points=1):
            for p, metric in calls:
                want = t.expected("patch_heads", *p.args, metric)
                wrong = t.mistakes("patch_heads", *p.args, metric)
                what = (
                    f"patch_heads(lm, clean, corrupted, metric) on {p.describe()}, {metric.label}"
                )
                got = t.call(patch_heads, *p.args, metric)
                n_layers, n_heads, kv = p.lm.n_layers, p.lm.n_heads, P.kv_heads(p.lm)
                if kv != n_heads and isinstance(got, torch.Tensor) and got.shape == (n_layers, kv):
                    t.fail(
                        what,
                        f"Your result has {kv} columns: that is the number of key/value heads.",
                        hint=f"This model has {n_heads} query heads sharing {kv} key/value "
                        "heads. Each query head writes its own slice of the input of the "
                        "attention output projection: (n_layers, n_heads).",
                    )
                got = t.tensor(
                    got,
                    what,
                    shape=(n_layers, n_heads),
                    hint="One cell per (layer, head): (n_layers, n_heads).",
                )
                t.close(
                    got,
                    want,
                    f"{what}: cell (L, h) is the metric of the corrupted run with head h's clean "
                    "output (the input of W_O) at every position",
                    scale=P.scale_of(want),
                    mistakes=wrong,
                )
