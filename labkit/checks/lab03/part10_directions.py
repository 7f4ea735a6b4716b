"""Part 10 of lab 03: noising and denoising a set of heads (exercise 3.15)."""

from __future__ import annotations

from collections.abc import Callable

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, prompts, metric, heads and direction), "
    "and must give the same answer as it did then."
)


def _case(t: Checker, fn: Callable, p: P.Pair, metric, heads, direction, repeat=False):
    where = direction or "denoise"
    want = t.expected("patch_head_set", *p.args, metric, heads, where)
    wrong = t.mistakes("patch_head_set", *p.args, metric, heads, where)
    shown = " (no direction: the default, 'denoise')" if direction is None else f", {direction!r})"
    what = (
        f"patch_head_set(lm, clean, corrupted, metric, heads={heads}{shown} on {p.describe()}, "
        f"{metric.label}"
    )
    args = (*p.args, metric, heads) if direction is None else (*p.args, metric, heads, direction)
    got = t.scalar(t.call(fn, *args), what)
    run = (
        "the corrupted run with these heads' clean outputs"
        if where == "denoise"
        else "the clean run with these heads' corrupted outputs"
    )
    t.close(
        got,
        want,
        f"{what}: the metric of {run}, all patched at once, at every position",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )
    return got


@LAB.exercise("3.15", "noising and denoising a set of heads", points=2)
def check_patch_head_set(patch_head_set: Callable, t: Checker) -> None:
    """Both directions and the default one, on a grouped-query model (two prompts) and a model
    of another family with more than 9 layers and positions, sets in no sorted order with two
    heads of one layer, the same set given again in another order with a repeat, the
    normalised metric and one that is not, the first call repeated; and the definition: an
    empty set patches nothing (the corrupted run's metric when denoising, the clean run's when
    noising)."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt2", "gpt_neox"]), 2, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 151, batch=2, n_pos=t.choice([6, 5, 7]))
    o = P.pair(t, other, 152, batch=1, n_pos=t.choice([10, 11]))
    heads_g = P.heads_of(t, grouped, 153, t.choice([4, 3]))
    heads_o = P.heads_of(t, other, 154, 3)
    again = [*heads_g[::-1], heads_g[0]]  # the same set, another order, a repeat
    m_g, m_o = P.normalised(t, g), P.normalised(t, o)
    noise_g = P.random_metric(kit.generator(t, 155), g.batch, grouped.vocab_size)
    with t.part("denoising (and the default); an empty set", points=1):
        first = _case(t, patch_head_set, g, m_g, heads_g, None)
        _case(t, patch_head_set, o, m_o, heads_o, "denoise")
        same = _case(t, patch_head_set, g, m_g, again, "denoise")
        t.close(
            same,
            first,
            f"patch_head_set(..., heads={again}, 'denoise'): the same set of heads as "
            f"{heads_g} in another order, with a repeat, patches the same heads",
            scale=P.scale_of(first),
        )
        low = float(m_o(P.last_logits(o.lm, o.corrupted)))
        what = f"patch_head_set(..., heads=[], 'denoise') on {o.describe()}"
        got = t.scalar(t.call(patch_head_set, *o.args, m_o, [], "denoise"), what)
        t.close(got, low, f"{what}: no head patched, the corrupted run's metric, {low:.4g}")
    with t.part("noising; an empty set; the first call again", points=1):
        _case(t, patch_head_set, g, m_g, heads_g, "noise")
        _case(t, patch_head_set, o, m_o, heads_o, "noise")
        _case(t, patch_head_set, g, noise_g, heads_g, "noise")  # another metric
        high = float(noise_g(P.last_logits(g.lm, g.clean)))
        what = f"patch_head_set(..., heads=[], 'noise') on {g.describe()}, {noise_g.label}"
        got = t.scalar(t.call(patch_head_set, *g.args, noise_g, [], "noise"), what)
        t.close(got, high, f"{what}: no head patched, the clean run's metric, {high:.4g}")
        _case(t, patch_head_set, g, m_g, heads_g, None, repeat=True)
