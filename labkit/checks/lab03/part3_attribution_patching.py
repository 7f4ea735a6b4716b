"""Part 3 of lab 03: attribution patching (exercises 3.4, 3.5 and 3.6)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, tokens, metric and site), and must give "
    "the same answer as it did then."
)


# ----- 3.4 ---------------------------------------------------------------------------------------
def _acts_grads_case(t: Checker, fn: Callable, p: P.Pair, metric, site: str, repeat=False):
    args = (p.lm, p.corrupted, metric, site)
    want_acts, want_grads = t.expected("activations_and_grads", *args)
    wrong = t.mistakes("activations_and_grads", *args)
    what = (
        f"activations_and_grads(lm, tokens, metric, {site!r}) on {p.describe()} (the "
        f"corrupted prompts), {metric.label}"
    )
    got = t.call(fn, *args)
    t.true(
        isinstance(got, (tuple, list)) and len(got) == 2,
        f"{what} returns a pair (activations, gradients)",
    )
    shape = "(n_layers, batch, pos" + (", n_heads, d_head)" if site == "head_out" else ", d_model)")
    acts = t.tensor(
        got[0],
        f"{what}: the activations",
        shape=tuple(want_acts.shape),
        hint=f"Stack every layer: {shape}.",
    )
    t.close(
        acts,
        want_acts,
        f"{what}: the activations at {site!r} of the run on tokens",
        scale=P.scale_of(want_acts),
        mistakes=P.pick(wrong, 0),
        hint=_REPEATED if repeat else "",
    )
    grads = t.tensor(
        got[1],
        f"{what}: the gradients",
        shape=tuple(want_grads.shape),
        hint=f"One gradient per activation: {shape}.",
    )
    t.close(
        grads,
        want_grads,
        f"{what}: d metric / d activation, at every layer",
        atol=1e-5,
        scale=P.scale_of(want_grads),
        mistakes=P.pick(wrong, 1),
        hint=_REPEATED if repeat else "",
    )


@LAB.exercise("3.4", "activations and gradients", points=2)
def check_activations_and_grads(activations_and_grads: Callable, t: Checker) -> None:
    """Every site the lab uses (resid_pre, attn_out, mlp_out and head_out), two families (one
    with more than 9 layers and positions), batches of 1 and 2, the normalised metric and one
    that is not; the first call repeated at the end (gradients left in .grad, or a cache,
    would show there)."""
    first, second = P.families(t, ["gpt_neox", "llama"])
    a = P.pair(
        t, P.model(t, first, 1, n_layers=t.choice([3, 2])), 41, batch=2, n_pos=t.choice([7, 5])
    )
    b = P.pair(
        t, P.model(t, second, 2, n_layers=t.choice([11, 10])), 42, batch=1, n_pos=t.choice([12, 10])
    )
    m_a = P.normalised(t, a)
    m_b = P.random_metric(kit.generator(t, 43), b.batch, b.lm.vocab_size)
    noise_a = P.random_metric(kit.generator(t, 44), a.batch, a.lm.vocab_size)
    with t.part("sites 'resid_pre' and 'attn_out'", points=1):
        _acts_grads_case(t, activations_and_grads, b, m_b, "resid_pre")
        _acts_grads_case(t, activations_and_grads, a, m_a, "attn_out")
        _acts_grads_case(t, activations_and_grads, a, m_a, "resid_pre")
    with t.part("sites 'head_out' and 'mlp_out', and the first call again", points=1):
        _acts_grads_case(t, activations_and_grads, a, m_a, "head_out")
        _acts_grads_case(t, activations_and_grads, b, m_b, "mlp_out")
        _acts_grads_case(t, activations_and_grads, a, noise_a, "head_out")  # another metric
        _acts_grads_case(t, activations_and_grads, b, m_b, "resid_pre", repeat=True)


# ----- 3.5 ---------------------------------------------------------------------------------------
def _estimate_case(t: Checker, fn: Callable, p: P.Pair, metric, site: str | None, repeat=False):
    where = site or "resid_pre"
    want = t.expected("attribution_patching", *p.args, metric, where)
    wrong = t.mistakes("attribution_patching", *p.args, metric, where)
    shown = " (no site: the default, 'resid_pre')" if site is None else f", {site!r})"
    what = (
        f"attribution_patching(lm, clean, corrupted, metric{shown} on {p.describe()}, "
        f"{metric.label}"
    )
    args = (*p.args, metric) if site is None else (*p.args, metric, site)
    got = t.tensor(
        t.call(fn, *args),
        what,
        shape=(p.lm.n_layers, p.n_pos),
        hint="One estimate per (layer, position): (n_layers, pos).",
    )
    t.close(
        got,
        want,
        f"{what}: (clean - corrupted) . d metric / d act at the corrupted run, summed over "
        "d_model and the batch",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )


@LAB.exercise("3.5", "attribution patching", points=3)
def check_attribution_patching(attribution_patching: Callable, t: Checker) -> None:
    """Every site and the default one, two families (one with more than 9 layers and
    positions), batches of 1 and 3, the normalised metric and one that is not, the first
    call repeated at the end; and its definition: on a model that is linear in its
    activations, the estimate *is* exact patching (minus the corrupted run's metric)."""
    first, second = P.families(t, ["qwen2", "gpt2"])
    a = P.pair(t, P.model(t, first, 1), 51, batch=3, n_pos=t.choice([6, 4, 7]))
    b = P.pair(
        t, P.model(t, second, 2, n_layers=t.choice([10, 11])), 52, batch=1, n_pos=t.choice([11, 10])
    )
    m_a = P.normalised(t, a)
    m_b = P.random_metric(kit.generator(t, 53), b.batch, b.lm.vocab_size)
    noise_a = P.random_metric(kit.generator(t, 55), a.batch, a.lm.vocab_size)
    with t.part("sites 'resid_pre' (the default) and 'attn_out'", points=1):
        _estimate_case(t, attribution_patching, a, m_a, None)
        _estimate_case(t, attribution_patching, b, m_b, "attn_out")
        _estimate_case(t, attribution_patching, b, m_b, "resid_pre")
    with t.part("site 'mlp_out', and the first call again", points=1):
        _estimate_case(t, attribution_patching, b, m_b, "mlp_out")
        _estimate_case(t, attribution_patching, a, m_a, "mlp_out")
        _estimate_case(t, attribution_patching, a, noise_a, "mlp_out")  # another metric
        _estimate_case(t, attribution_patching, a, m_a, None, repeat=True)

    lin, metric, lin64 = P.linear_problem(t, 54)
    metric64 = P.as_float64(metric)
    base = float(metric64(P.last_logits(lin64, lin.corrupted)))
    sites = t.choice([("mlp_out", "resid_pre", "attn_out"), ("attn_out", "mlp_out", "resid_pre")])
    with t.part("exact on a model that is linear in its activations", points=1):
        for site in sites:
            exact = t.expected("patch_grid", lin64, lin.clean, lin.corrupted, metric64, site)
            what = (
                f"attribution_patching(..., {site!r}) on a tiny {lin.lm.family} model that is "
                "linear in its activations (no norms, a linear MLP, fixed attention)"
            )
            got = t.call(attribution_patching, *lin.args, metric, site)
            got = t.tensor(got, what, shape=(lin.lm.n_layers, lin.n_pos))
            t.close(
                got,
                exact - base,
                f"{what}: the estimate equals exact patching minus the corrupted run's metric, "
                "in every cell",
                atol=2e-4,  # float32 estimates against float64 exact patching
                scale=P.scale_of(exact),
            )


# ----- 3.6 ---------------------------------------------------------------------------------------
def _heads_case(t: Checker, fn: Callable, p: P.Pair, metric, repeat=False) -> None:
    want = t.expected("head_attribution", *p.args, metric)
    wrong = t.mistakes("head_attribution", *p.args, metric)
    what = f"head_attribution(lm, clean, corrupted, metric) on {p.describe()}, {metric.label}"
    got = t.call(fn, *p.args, metric)
    n_layers, n_heads, kv = p.lm.n_layers, p.lm.n_heads, P.kv_heads(p.lm)
    if kv != n_heads and isinstance(got, torch.Tensor) and got.shape == (n_layers, kv, p.n_pos):
        t.fail(
            what,
            f"Your result has {kv} heads per layer: the number of key/value heads.",
            hint=f"Count query heads ({n_heads}): each has its own slice of the input of W_O.",
        )
    got = t.tensor(got, what, shape=(n_layers, n_heads, p.n_pos), hint="(n_layers, n_heads, pos)")
    t.close(
        got,
        want,
        f"{what}: (clean - corrupted) . gradient per head and position at the input of W_O, "
        "summed over d_head and the batch",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )


@LAB.exercise("3.6", "attribution per head", points=2)
def check_head_attribution(head_attribution: Callable, t: Checker) -> None:
    """A grouped-query model (more query heads than key/value heads, and never as many
    positions as heads), a model of another family with more than 9 layers and positions,
    batches of 1 and 2, the normalised metric and one that is not (also on the same prompts),
    the first call repeated; and its definition: on a model linear in its activations, a
    head's estimates summed over positions are exact patching of that head (minus the
    corrupted run's metric)."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt_neox", "gpt2"]), 2, n_layers=t.choice([10, 12]))
    g = P.pair(t, grouped, 61, batch=2, n_pos=t.choice([5, 7]))  # never as many as the heads
    o = P.pair(t, other, 62, batch=1, n_pos=t.choice([10, 11]))
    m_g = P.normalised(t, g)
    m_o = P.random_metric(kit.generator(t, 63), o.batch, other.vocab_size)
    noise_g = P.random_metric(kit.generator(t, 65), g.batch, grouped.vocab_size)
    with t.part(f"{P.describe_model(grouped)}, and {P.describe_model(other)}", points=1):
        _heads_case(t, head_attribution, g, m_g)
        _heads_case(t, head_attribution, o, m_o)
    lin, metric, lin64 = P.linear_problem(t, 64)
    metric64 = P.as_float64(metric)
    base = float(metric64(P.last_logits(lin64, lin.corrupted)))
    with t.part("exact on a model linear in its activations; the first call again", points=1):
        exact = t.expected("patch_heads", lin64, lin.clean, lin.corrupted, metric64)
        what = (
            f"head_attribution(...) on a tiny {lin.lm.family} model that is linear in its "
            "activations, summed over positions"
        )
        got = t.call(head_attribution, *lin.args, metric)
        got = t.tensor(got, what, shape=(lin.lm.n_layers, lin.lm.n_heads, lin.n_pos))
        t.close(
            got.sum(-1),
            exact - base,
            f"{what}: exact patching of each head (at every position) minus the corrupted "
            "run's metric",
            atol=2e-4,
            scale=P.scale_of(exact),
        )
        _heads_case(t, head_attribution, g, noise_g)  # the same prompts, another metric
        _heads_case(t, head_attribution, g, m_g, repeat=True)
