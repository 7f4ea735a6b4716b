"""Part 8 of lab 03: path patching, a head's direct and indirect effects (exercise 3.13)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, prompts, metric, heads and path), and "
    "must give the same answer as it did then."
)


def _case(t: Checker, fn: Callable, p: P.Pair, metric, heads, path, repeat=False):
    where = path or "direct"
    want = t.expected("path_patching", *p.args, metric, heads, where)
    wrong = t.mistakes("path_patching", *p.args, metric, heads, where)
    shown = " (no path: the default, 'direct')" if path is None else f", {path!r})"
    what = (
        f"path_patching(lm, clean, corrupted, metric, heads={heads}{shown} on {p.describe()}, "
        f"{metric.label}"
    )
    args = (*p.args, metric, heads) if path is None else (*p.args, metric, heads, path)
    got = t.tensor(
        t.call(fn, *args),
        what,
        shape=(len(heads),),
        hint="One value per entry of heads, in its order (repeats included): (len(heads),).",
    )
    route = (
        "its clean output reaches only the final residual stream (the logits); every later "
        "layer reads its corrupted output"
        if where == "direct"
        else "its clean output reaches every later component, but the final residual stream "
        "keeps its corrupted output"
    )
    t.close(
        got,
        want,
        f"{what}: entry i is the metric of the corrupted run in which head heads[i] takes one "
        f"path: {route}",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )
    return got


@LAB.exercise("3.13", "path patching", points=3)
def check_path_patching(path_patching: Callable, t: Checker) -> None:
    """Both paths and the default one, on a grouped-query model (two prompts) and a model of
    another family with more than 9 layers and positions, heads in no sorted order with two of
    one layer and a repeat, the normalised metric and one that is not, the first call repeated;
    and the definition: on a model that is linear in its activations, a head's direct and
    indirect effects add up to its total effect (patching it as usual)."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt2", "gpt_neox"]), 2, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 131, batch=2, n_pos=t.choice([6, 5, 7]))
    o = P.pair(t, other, 132, batch=1, n_pos=t.choice([10, 11]))
    heads_g = P.heads_of(t, grouped, 133, t.choice([4, 3]), repeat=True)
    heads_o = P.heads_of(t, other, 134, 3)
    m_g, m_o = P.normalised(t, g), P.normalised(t, o)
    noise_g = P.random_metric(kit.generator(t, 135), g.batch, grouped.vocab_size)
    with t.part("the direct path (and the default)", points=1):
        _case(t, path_patching, g, m_g, heads_g, None)
        _case(t, path_patching, o, m_o, heads_o, "direct")
        _case(t, path_patching, g, noise_g, heads_g, "direct")  # another metric
    with t.part("the indirect path, and the first call again", points=1):
        _case(t, path_patching, o, m_o, heads_o, "indirect")
        _case(t, path_patching, g, m_g, heads_g, "indirect")
        _case(t, path_patching, g, m_g, heads_g, None, repeat=True)

    lin, metric, lin64 = P.linear_problem(t, 136)
    metric64 = P.as_float64(metric)
    base = float(metric64(P.last_logits(lin64, lin.corrupted)))
    heads = P.heads_of(t, lin.lm, 137, t.choice([5, 4]))
    with t.part("direct + indirect = total on a model linear in its activations", points=1):
        total = t.expected("patch_heads", lin64, lin.clean, lin.corrupted, metric64)
        what = (
            f"path_patching(..., heads={heads}, 'direct') and (..., 'indirect') on a tiny "
            f"{lin.lm.family} model that is linear in its activations"
        )
        direct = t.tensor(
            t.call(path_patching, *lin.args, metric, heads, "direct"), what, shape=(len(heads),)
        )
        indirect = t.tensor(
            t.call(path_patching, *lin.args, metric, heads, "indirect"), what, shape=(len(heads),)
        )
        want = torch.stack([total[layer, head].double() for layer, head in heads])
        t.close(
            direct + indirect - base,
            want,
            f"{what}: on this model the effects add up: direct + indirect - (the corrupted "
            f"run's metric, {base:.4g}) is patching the head as usual, for every head",
            atol=2e-4,
            scale=P.scale_of(want),
            hint="The direct path adds the head's change to the final residual stream only; "
            "the indirect path lets every later component see it, then takes it back out of "
            "the final residual stream.",
        )
