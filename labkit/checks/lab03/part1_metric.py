"""Part 1 of lab 03: tasks and a normalised metric (exercise 3.1)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_NOT_A_TENSOR = (
    "Return a torch tensor from metric (no .item(), float() or numpy): attribution patching "
    "calls .backward() on it."
)


def _metric(t: Checker, normalised_metric: Callable, p: P.Pair):
    metric = t.call(normalised_metric, *p.ids)
    t.true(
        callable(metric),
        f"normalised_metric(...) on {p.describe()} returns a function of the logits",
        hint="Return the inner function (metric) itself, not its value.",
    )
    return metric


def _value(t: Checker, metric, logits: torch.Tensor, what: str) -> float:
    value = t.call(metric, logits)
    t.true(isinstance(value, torch.Tensor), f"{what} is a torch tensor", hint=_NOT_A_TENSOR)
    return t.scalar(value, what)


@LAB.exercise("3.1", "normalised metric", points=2)
def check_normalised_metric(normalised_metric: Callable, t: Checker) -> None:
    """The metric is 1 on the clean run and 0 on the corrupted run (its definition), and the
    normalised mean logit difference of other logits, on two families, batches of 1 and 3,
    target and foil ids in either order (targets are not the top token), ids as lists and as
    tensors. Two problems share their prompts but not their targets and foils; metrics made
    earlier must still answer for their own problem after later calls."""
    first, second = P.families(t, ["llama", "gpt2"])
    lm_a = P.model(t, first, 1)
    lm_b = P.model(t, second, 2, n_layers=t.choice([2, 1, 4]))
    a = P.pair(t, lm_a, 11, batch=3, n_pos=t.choice([7, 5, 9]))
    b = P.pair(t, lm_b, 12, batch=1, n_pos=t.choice([11, 12, 3]), as_tensor=True)
    c = P.retarget(t, a, 13, as_tensor=True)  # a's prompts, other targets and foils
    gen = kit.generator(t, 14)

    with t.part("metric(clean logits) is 1 and metric(corrupted logits) is 0", points=1):
        for p in (a, b, c, a):  # a repeat after the others
            runs = [
                ("clean", P.last_logits(p.lm, p.clean), 1.0),
                ("corrupted", P.last_logits(p.lm, p.corrupted), 0.0),
            ]
            wrong = [
                t.mistakes("normalised_metric@logits", *p.ids, logits) for _, logits, _ in runs
            ]
            metric = _metric(t, normalised_metric, p)
            for (run, logits, want), mistakes in zip(runs, wrong, strict=True):
                what = f"metric(logits of the {run} run) on {p.describe()}"
                t.close(
                    _value(t, metric, logits, what), want, f"{what} is {want:g}", mistakes=mistakes
                )

    with t.part("the metric of other logits; each metric keeps its own prompts", points=1):
        metrics = [_metric(t, normalised_metric, p) for p in (a, b, c)]  # all made first
        for i in (2, 0, 1):  # then used, a's after b's and c's were made
            p = (a, b, c)[i]
            clean = P.last_logits(p.lm, p.clean)
            logits = clean + 1.5 * torch.randn(clean.shape, generator=gen)
            want = t.expected("normalised_metric@logits", *p.ids, logits)
            wrong = t.mistakes("normalised_metric@logits", *p.ids, logits)
            what = (
                f"metric(other logits (batch, vocab)) on {p.describe()}; the metrics of all "
                "three problems were made first"
            )
            t.close(_value(t, metrics[i], logits, what), want, what, mistakes=wrong)
