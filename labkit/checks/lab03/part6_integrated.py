"""Part 6 of lab 03: the link to lab 01, integrated patching (exercise 3.10)."""

from __future__ import annotations

from collections.abc import Callable

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

DEFAULT_STEPS = 16


def _scores(t: Checker, fn: Callable, p: P.Pair, metric, n_steps: int | None, what: str):
    args = (*p.args, metric) if n_steps is None else (*p.args, metric, n_steps)
    return t.tensor(
        t.call(fn, *args), what, shape=(p.n_pos,), hint="One score per position: (pos,)."
    )


@LAB.exercise("3.10", "integrated patching at the embeddings", points=2, timeout=30)
def check_integrated_patching(integrated_patching: Callable, t: Checker) -> None:
    """The midpoint rule with n_steps of 1, a few, and the default, on two families (one prompt
    longer than 9 tokens), batches of 1 and 2, the normalised metric and one that is not, the
    first call repeated; and the definition, completeness: on a model that is linear in its
    embeddings the scores add up to metric(clean) - metric(corrupted) for any n_steps."""
    first, second = P.families(t, ["llama", "gpt_neox"])
    a = P.pair(t, P.model(t, first, 1), 101, batch=2, n_pos=t.choice([6, 5]))
    b = P.pair(t, P.model(t, second, 2, n_layers=3), 102, batch=1, n_pos=t.choice([10, 12]))
    m_a = P.normalised(t, a)
    m_b = P.random_metric(kit.generator(t, 103), b.batch, b.lm.vocab_size)
    noise_a = P.random_metric(kit.generator(t, 105), a.batch, a.lm.vocab_size)
    steps = t.choice([3, 4, 5])
    with t.part(
        "midpoint-rule integrated gradients from the corrupted to the clean embeddings", points=1
    ):
        for p, metric, n_steps in [
            (a, m_a, steps),
            (b, m_b, None),  # the default n_steps
            (a, m_a, 1),
            (a, noise_a, steps),  # the same prompts, another metric
            (a, m_a, steps),  # the first call again
        ]:
            given = DEFAULT_STEPS if n_steps is None else n_steps
            want = t.expected("integrated_patching", *p.args, metric, given)
            wrong = t.mistakes("integrated_patching", *p.args, metric, given)
            shown = " (the default n_steps, 16)" if n_steps is None else f", n_steps={n_steps})"
            what = (
                f"integrated_patching(lm, clean, corrupted, metric{shown} on {p.describe()}, "
                f"{metric.label}"
            )
            got = _scores(t, integrated_patching, p, metric, n_steps, what)
            t.close(
                got,
                want,
                f"{what}: the average gradient at alpha_k = (k + 1/2) / n_steps "
                "times (clean - corrupted) embeddings, summed over d_model and the batch",
                atol=1e-5,  # a few steps more or less are a difference of about 1e-3
                rtol=1e-4,
                scale=P.scale_of(want),
                mistakes=wrong,
            )

    lin, metric, _ = P.linear_problem(t, 104)
    total = float(
        metric(P.last_logits(lin.lm, lin.clean)) - metric(P.last_logits(lin.lm, lin.corrupted))
    )
    with t.part("completeness: the scores add up to metric(clean) - metric(corrupted)", points=1):
        for n_steps in (t.choice([2, 3]), None):
            shown = "" if n_steps is None else f", n_steps={n_steps}"
            what = (
                f"integrated_patching(..{shown}) on a tiny {lin.lm.family} model that is "
                "linear in its embeddings"
            )
            got = _scores(t, integrated_patching, lin, metric, n_steps, what)
            t.close(
                got.sum(),
                total,
                f"{what}: the sum of the scores is metric(clean) - metric(corrupted) = {total:.4g}",
                atol=2e-4,
                hint="On this model the gradient is the same at every point of the path, "
                "so completeness holds exactly, for any n_steps.",
            )
