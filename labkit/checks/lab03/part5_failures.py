"""Part 5 of lab 03: where attribution patching fails; AtP*'s QK fix (exercise 3.9)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in x.shape) + ")"


@LAB.exercise("3.9", "the QK fix", points=2)
def check_qk_fix(qk_fix: Callable, t: Checker) -> None:
    """Saturated heads with leading dimensions of every rank (none, heads, layers x batch x
    heads), fewer queries than keys (the queries are the last positions) and a square case,
    masked scores -inf, the first call repeated; then the definition: a score shift per query
    changes nothing, a gradient that is constant along the keys gives 0 (each pattern row sums
    to 1), and so do clean scores equal to the corrupted ones."""
    n_keys = t.choice([7, 6, 9])
    heads = P.attention_scores(t.seed(91), (3,), t.choice([4, 3, 5]), n_keys)
    single = P.attention_scores(t.seed(92), (), 5, 5)
    stacked = P.attention_scores(t.seed(93), (2, t.choice([2, 3]), 2), 3, n_keys)
    with t.part("(softmax(clean) - softmax(corrupted)) . d metric / d pattern", points=1):
        for scores in (heads, single, stacked, heads):  # the first call again at the end
            want = t.expected("qk_fix", *scores)
            wrong = t.mistakes("qk_fix", *scores)
            shape = _shape(scores[0])
            what = f"qk_fix(scores_clean, scores_corrupted, pattern_grad) on scores {shape}"
            got = t.tensor(
                t.call(qk_fix, *scores),
                what,
                shape=tuple(want.shape),
                hint="Sum over the last two dimensions (queries and keys) only.",
            )
            t.close(
                got,
                want,
                f"{what}: the QK-fix estimate",
                atol=1e-5,
                scale=P.scale_of(scores[2]),  # the size of the terms, not of their sum
                mistakes=wrong,
            )

    gen = kit.generator(t, 94)
    clean, corrupted, grad = stacked
    shift = 5.0 * torch.randn(*clean.shape[:-1], 1, generator=gen)  # one constant per query
    per_query = torch.randn(*grad.shape[:-1], 1, generator=gen).expand_as(grad).clone()
    with t.part("the definition: what the softmax ignores changes nothing", points=1):
        want = t.expected("qk_fix", *stacked)
        what = f"qk_fix on scores {_shape(clean)}"
        got = t.tensor(t.call(qk_fix, clean + shift, corrupted, grad), what, shape=want.shape)
        t.close(
            got,
            want,
            f"{what} with a constant added to each query's clean scores (the "
            "pattern is the same, so is the estimate)",
            atol=1e-5,
            scale=P.scale_of(grad),
        )
        zero = torch.zeros(want.shape)
        got = t.tensor(t.call(qk_fix, clean, corrupted, per_query), what, shape=want.shape)
        t.close(
            got,
            zero,
            f"{what} with a gradient that is the same for every key of a query "
            "(each pattern row sums to 1, so the change is 0)",
            atol=1e-5,
            scale=P.scale_of(per_query),
        )
        got = t.tensor(t.call(qk_fix, corrupted, corrupted, grad), what, shape=want.shape)
        t.close(got, zero, f"{what} with clean scores equal to the corrupted ones", atol=1e-5)
