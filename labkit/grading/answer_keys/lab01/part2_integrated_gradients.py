"""Part 2: the mistakes of integrated gradients, the completeness gap and the space baseline."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab01.key import KEY
from labkit.grading.answer_keys.lab01.part1_gradients import grad


# ----- Exercise 1.4: integrated gradients --------------------------------------------------------
def quadrature(rule: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha (n,) and weights (n,) of a rule on [0, 1], in float64."""
    k = torch.arange(n, dtype=torch.float64)
    equal = torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "midpoint":
        return (k + 0.5) / n, equal
    if rule == "right":
        return (k + 1) / n, equal
    if rule == "left":
        return k / n, equal
    if rule == "linspace":  # both ends, equal weights
        return torch.linspace(0, 1, n, dtype=torch.float64), equal
    if rule == "interior":  # k / (n + 1), k = 1..n
        return (k + 1) / (n + 1), equal
    if rule == "trapezoid":
        if n < 2:
            raise ValueError("the trapezoid rule needs two points")
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    if rule == "gauss-legendre":
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)
    raise ValueError(rule)


def path_grads(f, x, b, alphas: torch.Tensor) -> torch.Tensor:
    """The gradients of f at b + alpha (x - b), one batch (in x's dtype): (n, pos, d)."""
    path = (b.double() + alphas[:, None, None] * (x - b).double()).to(x.dtype)
    return grad(f, path).double()


def ig_with(f, x, b, n: int, rule: str = "midpoint") -> torch.Tensor:
    """IG with a quadrature rule: (pos,)."""
    alphas, weights = quadrature(rule, n)
    total = (weights[:, None, None] * path_grads(f, x, b, alphas)).sum(0)
    return ((x - b).double()[0] * total).sum(-1)


def _ig_rule(rule: str, hint: str) -> None:
    @KEY.mistake("integrated_gradients", hint)
    def mistake(sol, f, x, b, n_steps=32):
        return ig_with(f, x, b, n_steps, rule)


_ig_rule(
    "right",
    "That is the right Riemann sum, alpha = (k + 1)/n; the docstring asks for the midpoint "
    "rule, alpha = (k + 0.5)/n.",
)
_ig_rule("left", "That is the left Riemann sum, alpha = k/n; use the midpoint rule, (k + 0.5)/n.")
_ig_rule("trapezoid", "That is the trapezoid rule; use the midpoint rule with weights 1/n.")
_ig_rule(
    "linspace",
    "Your alphas are torch.linspace(0, 1, n) (both ends); use the midpoint rule, (k + 0.5)/n.",
)
_ig_rule("interior", "Your alphas are k/(n + 1); use the midpoint rule, (k + 0.5)/n.")
_ig_rule(
    "gauss-legendre",
    "That is Gauss-Legendre quadrature (captum's default); the docstring asks for the midpoint "
    "rule.",
)


@KEY.mistake("integrated_gradients", "You summed the gradients without dividing by n_steps.")
def ig_sum(sol, f, x, b, n_steps=32):
    return n_steps * ig_with(f, x, b, n_steps)


@KEY.mistake("integrated_gradients", "Wrong sign: multiply by (input - baseline).")
def ig_sign(sol, f, x, b, n_steps=32):
    return -ig_with(f, x, b, n_steps)


@KEY.mistake(
    "integrated_gradients",
    "You used only the gradient at the input: average the gradients at n_steps points along "
    "the path.",
)
def ig_gradient_at_input(sol, f, x, b, n_steps=32):
    return ((x - b).double() * grad(f, x).double())[0].sum(-1)


@KEY.mistake(
    "integrated_gradients",
    "You used a zero baseline, or multiplied by the input alone: multiply the averaged gradient "
    "by (input - baseline), with the baseline you were given.",
)
def ig_zero_baseline(sol, f, x, b, n_steps=32):
    return ig_with(f, x, torch.zeros_like(x), n_steps)


@KEY.mistake(
    "integrated_gradients",
    "You multiplied the averaged gradient by the input alone: multiply by (input - baseline).",
)
def ig_input_alone(sol, f, x, b, n_steps=32):
    alphas, _ = quadrature("midpoint", n_steps)
    return (x.double()[0] * path_grads(f, x, b, alphas).mean(0)).sum(-1)


def _ig_steps(other: int) -> None:
    @KEY.mistake(
        "integrated_gradients",
        "Your result is the midpoint rule with a number of steps other than n_steps: use the "
        "n_steps you were given (32 when none is given).",
    )
    def mistake(sol, f, x, b, n_steps=32):
        if other == n_steps:
            raise ValueError("the same number of steps")
        return ig_with(f, x, b, other)


for _steps in (100, 64, 50, 32, 20, 16, 10):
    _ig_steps(_steps)


# ----- Exercise 1.5: the completeness gap --------------------------------------------------------
def _fs(f, x, b) -> tuple[float, float, float]:
    with torch.no_grad():
        return float(f(x).sum()), float(f(b).sum()), float(f(torch.zeros_like(x)).sum())


@KEY.mistake("completeness_gap", "Keep the sign: do not take the absolute value.")
def gap_abs(sol, f, x, b, attributions):
    return abs(sol.completeness_gap(f, x, b, attributions))


@KEY.mistake(
    "completeness_gap",
    "Wrong sign: sum(scores) - (f(x) - f(baseline)), so a positive gap means the scores claim "
    "more than the output changed.",
)
def gap_sign(sol, f, x, b, attributions):
    return -sol.completeness_gap(f, x, b, attributions)


@KEY.mistake("completeness_gap", "You ignored the baseline: subtract f(baseline) too.")
def gap_no_baseline(sol, f, x, b, attributions):
    fx, _, _ = _fs(f, x, b)
    return float(attributions.sum()) - fx


@KEY.mistake("completeness_gap", "Return the gap in logits, not relative to the change.")
def gap_relative(sol, f, x, b, attributions):
    fx, fb, _ = _fs(f, x, b)
    return sol.completeness_gap(f, x, b, attributions) / (fx - fb)


@KEY.mistake("completeness_gap", "Use f(baseline), not f(zeros).")
def gap_zeros(sol, f, x, b, attributions):
    fx, _, f0 = _fs(f, x, b)
    return float(attributions.sum()) - (fx - f0)


@KEY.mistake("completeness_gap", "Sum the scores with their signs, not their absolute values.")
def gap_abs_scores(sol, f, x, b, attributions):
    fx, fb, _ = _fs(f, x, b)
    return float(attributions.abs().sum()) - (fx - fb)


@KEY.mistake(
    "completeness_gap",
    "You returned f(x) - f(baseline) alone: subtract it from the sum of the scores.",
)
def gap_change_only(sol, f, x, b, attributions):
    fx, fb, _ = _fs(f, x, b)
    return fx - fb


@KEY.mistake(
    "completeness_gap",
    "You left out the first position's score: sum ALL the scores (the anchor's too).",
)
def gap_without_first(sol, f, x, b, attributions):
    fx, fb, _ = _fs(f, x, b)
    return float(attributions[1:].sum()) - (fx - fb)


# ----- Exercise 1.6: the space baseline ----------------------------------------------------------
def _embed(lm, ids):
    with torch.no_grad():
        return lm.embed(ids).detach()


def _with(tokens, first, rest):
    out = torch.full_like(tokens, rest)
    out[:, 0] = tokens[:, 0] if first is None else first
    return out


@KEY.mistake(
    "space_baseline",
    "That is the zero baseline; use the embedding of the ' ' token at every position except 0.",
)
def space_zero(sol, lm, tokens):
    return torch.zeros(1, tokens.shape[1], lm.d_model)


@KEY.mistake(
    "space_baseline",
    "Positions 1.. must hold the embedding of ' ': you put zeros there.",
)
def space_zeros_after_first(sol, lm, tokens):
    out = torch.zeros(1, tokens.shape[1], lm.d_model)
    out[:, 0] = _embed(lm, tokens[:, :1])[:, 0]
    return out


@KEY.mistake(
    "space_baseline",
    "Keep position 0 as in the input (the anchor): only positions 1.. become ' '.",
)
def space_everywhere(sol, lm, tokens):
    return _embed(lm, torch.full_like(tokens, lm.token_id(" ")))


@KEY.mistake(
    "space_baseline",
    "Position 0 keeps the INPUT's first token, whatever it is (here not the anchor): copy "
    "tokens[:, 0].",
)
def space_anchor_first(sol, lm, tokens):
    return _embed(lm, _with(tokens, lm.anchor_token_id, lm.token_id(" ")))


@KEY.mistake("space_baseline", "Use lm.token_id(' '), not token 0 (the pad token).")
def space_pad(sol, lm, tokens):
    return _embed(lm, _with(tokens, None, 0))


@KEY.mistake(
    "space_baseline",
    "Use lm.token_id(' ') of the model you were given, not a number written in your code (220 "
    "is GPT-2's ' ').",
)
def space_gpt2_id(sol, lm, tokens):
    return _embed(lm, _with(tokens, None, 220))


@KEY.mistake(
    "space_baseline",
    "Every position from 1 to the LAST becomes ' ': you kept the last token.",
)
def space_keeps_last(sol, lm, tokens):
    ids = _with(tokens, None, lm.token_id(" "))
    ids[:, -1] = tokens[:, -1]
    return _embed(lm, ids)


@KEY.mistake(
    "space_baseline",
    "Only position 0 keeps its token: you kept position 1 as well.",
)
def space_keeps_two(sol, lm, tokens):
    ids = _with(tokens, None, lm.token_id(" "))
    ids[:, :2] = tokens[:, :2]
    return _embed(lm, ids)
