"""Checks for lab 01 (input attribution): one ``check_<exercise>(your_function)`` per exercise.

Each check runs your function on small problems built so that every plausible shortcut gives a
different answer from the method itself:

* smooth, non-polynomial, non-additive functions of the embeddings (a first-order step is not
  the true change, and quadrature rules differ at a few steps);
* nonlinear, position-aware token scorers with interactions (replacing tokens together is not
  the sum of replacing them one at a time, and deleting a token shifts the others);
* attention patterns with heterogeneous heads, several paths between tokens, and rows that do not
  sum to one;
* tiny transformers (``labkit.tiny``) whose norms are not identity maps;
* frozen modules with parameters of the same shape (for the randomisation check).

Every check calls your function more than once, compares with a reference computed before your
code runs, and says which known mistake your answer matches when it matches one. In a notebook
the problems are fixed; the instructor's grader replays the same checks on hidden variants
(other seeds, shapes and model families).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from math import factorial

import torch
from torch import Tensor

from labkit.checks.core import Checker, Results, check, skip_if_unattempted
from labkit.models import LabModel
from labkit.tiny import TINY_FAMILIES, tiny_model

__all__ = [
    "EXERCISES",
    "Results",
    "check_attention_flow",
    "check_attention_rollout",
    "check_completeness_gap",
    "check_deletion_curve",
    "check_input_x_gradient",
    "check_insertion_curve",
    "check_integrated_gradients",
    "check_layer_attribution",
    "check_layer_weighted_attention",
    "check_logit_difference_fn",
    "check_occlusion",
    "check_randomize_weights",
    "check_saliency",
    "check_shapley_values",
    "check_space_baseline",
    "check_spearman",
    "skip_if_unattempted",
]

Fn = Callable[[Tensor], Tensor]


def _generator(t: Checker, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(t.seed(offset))


def _scale(expected: Tensor) -> float:
    """The typical size of the expected values: absolute tolerances are multiplied by it."""
    return max(float(expected.detach().abs().max()), 1e-3)


def _gradient(f: Fn, x: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad.detach()


# ----- smooth functions of the embeddings --------------------------------------------------------
def _smooth_problem(t: Checker, offset: int, pos: int = 5, d: int = 4) -> dict:
    """A non-polynomial, non-additive f: (batch, pos, d) -> (batch,), an input x (1, pos, d) and
    a nonzero baseline b (1, pos, d).

    f(e) = sum_p c_p softplus(2 <w_p, e_p>) + 2 tanh(<u, e>): its gradient differs from position
    to position and from point to point, and no quadrature rule is exact on it.
    """
    gen = _generator(t, offset)
    w = torch.randn(pos, d, generator=gen)
    u = 0.5 * torch.randn(pos, d, generator=gen)
    c = torch.randn(pos, generator=gen)

    def f(e: Tensor) -> Tensor:
        a = (e * w).sum(-1)  # (batch, pos)
        return (c * torch.nn.functional.softplus(2 * a)).sum(-1) + 2 * torch.tanh(
            (e * u).sum((1, 2))
        )

    x = 1.5 * torch.randn(1, pos, d, generator=gen)
    b = 0.5 * torch.randn(1, pos, d, generator=gen)
    return {"f": f, "x": x, "b": b, "w": w}


def _quadratic(w: Tensor) -> Fn:
    """f(e) = sum(w * e**2): (batch, pos, d) -> (batch,)."""
    return lambda e: (w * e**2).sum(dim=(1, 2))


# ----- tiny transformers -------------------------------------------------------------------------
_TINY: dict[str, tuple[LabModel, dict[str, Tensor], dict[int, tuple[dict, ...]]]] = {}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooks(model: torch.nn.Module) -> dict[int, tuple[dict, ...]]:
    """A copy of every module's hook dictionaries (handle id -> hook)."""
    return {
        id(m): tuple(dict(getattr(m, name, {})) for name in _HOOK_DICTS) for m in model.modules()
    }


def _restore_hooks(model: torch.nn.Module, pristine: dict[int, tuple[dict, ...]]) -> None:
    """Remove hooks added since ``pristine`` and put back any of its hooks that went missing."""
    for module in model.modules():
        kept = pristine.get(id(module), ({},) * len(_HOOK_DICTS))
        for name, keep in zip(_HOOK_DICTS, kept, strict=True):
            registered = getattr(module, name, None)
            if registered is None:
                continue
            for key in [k for k in registered if k not in keep]:
                del registered[key]
            for key, hook in keep.items():
                registered.setdefault(key, hook)


def _tiny(family: str) -> LabModel:
    """A tiny random model of ``family`` with sharpened weights, norm scales far from 1 and
    nonzero shifts (so final-norm mistakes show), restored to its pristine state on every use.

    transformers installs its output-capturing hooks the first time a model is asked for
    hidden states or attentions; they are installed here, before any check watches the model.
    """
    if family not in _TINY:
        lm = tiny_model(family, seed=1)
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for name, p in lm.model.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                if p.dim() >= 2:
                    p.mul_(4.0)  # sharper: logits that depend strongly on the input
                elif name.endswith("weight"):
                    p.copy_(1.0 + 0.5 * noise)  # norm scales
                else:
                    p.copy_(0.2 * noise)  # norm shifts and biases
            ids = torch.tensor([[lm.anchor_token_id, 70, 71]])
            lm.model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        pristine = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
        _TINY[family] = (lm, pristine, _hooks(lm.model))
    lm, pristine, hooks = _TINY[family]
    with torch.no_grad():
        for key, value in lm.model.state_dict().items():
            if not torch.equal(value, pristine[key]):
                value.copy_(pristine[key])
    _restore_hooks(lm.model, hooks)
    for p in lm.model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return lm


def _tiny_ids(lm: LabModel, gen: torch.Generator, n: int, anchor: bool = True) -> Tensor:
    """Random byte tokens (1, n), the first one the anchor when ``anchor``."""
    ids = torch.randint(3, lm.vocab_size, (1, n), generator=gen)
    if anchor:
        ids[0, 0] = lm.anchor_token_id
    return ids


def _tiny_logit(lm: LabModel, target: int) -> Fn:
    return lambda e: lm.model(inputs_embeds=e).logits[:, -1, target]


def _tiny_logit_problem(t: Checker, offset: int, n: int = 6) -> tuple[LabModel, Fn, Tensor, Tensor]:
    """A tiny model (family picked by the variant), f = one token's logit from embeddings, an
    input (1, n, d_model) and a space baseline that keeps the anchor."""
    lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
    gen = _generator(t, offset)
    ids = _tiny_ids(lm, gen, n)
    target = int(torch.randint(3, lm.vocab_size, (1,), generator=gen))
    with torch.no_grad():
        x = lm.embed(ids)
        b = lm.embed(torch.full_like(ids, lm.token_id(" ")))
        b[:, 0] = x[:, 0]
    return lm, _tiny_logit(lm, target), x, b


def _attribution(t: Checker, fn: Callable, *args, n_pos: int, what: str) -> Tensor:
    return t.tensor(
        t.call(fn, *args),
        what,
        shape=(n_pos,),
        hint="Return one score per position (pos,): reduce over d_model and drop the batch "
        "dimension.",
    )


# ----- Exercise 1.1 ------------------------------------------------------------------------------
@check("Exercise 1.1: saliency", points=2)
def check_saliency(saliency: Callable, t: Checker) -> None:
    with t.part("a smooth nonlinear f, twice in a row", points=1):
        p = _smooth_problem(t, 1)
        f, x = p["f"], p["x"]
        grad = _gradient(f, x)[0]  # (pos, d)
        expected = grad.norm(dim=-1)
        second_f = _quadratic(p["w"])
        second_grad = _gradient(second_f, x)[0]
        second = second_grad.norm(dim=-1)
        mistakes = [
            (grad.sum(-1), "You summed the signed gradient; saliency is its L2 norm."),
            (grad.abs().sum(-1), "You took the L1 norm (sum of |gradient|); use the L2 norm."),
            (grad.pow(2).sum(-1), "You returned the squared norm: take the square root."),
            (grad.pow(2).mean(-1).sqrt(), "You took the root MEAN square; the L2 norm sums."),
            (grad.abs().amax(-1), "You took the largest |gradient| entry; use the L2 norm."),
            ((grad * x[0]).norm(dim=-1), "You multiplied by the input: that is not saliency."),
            (
                _gradient(f, torch.zeros_like(x))[0].norm(dim=-1),
                "Take the gradient AT the input embeddings, not at zero.",
            ),
            (expected / expected.sum(), "Do not normalise the scores to sum to one."),
        ]
        what = "saliency(f, x) for f(e) = sum_p c_p softplus(2 <w_p, e_p>) + 2 tanh(<u, e>)"
        got = _attribution(t, saliency, f, x, n_pos=5, what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="Saliency is the L2 norm over d_model of the gradient of f at the input.",
        )
        what = "a second call, on f(e) = sum(w * e**2) (gradient 2 w e)"
        got = _attribution(t, saliency, second_f, x, n_pos=5, what=what)
        t.close(
            got,
            second,
            what,
            scale=_scale(second),
            mistakes=[
                (
                    (grad + second_grad).norm(dim=-1),
                    "Gradients piled up from the previous call: take "
                    "a fresh leaf copy of the input each time, or use torch.autograd.grad.",
                ),
                (expected, "You returned the previous call's answer."),
            ],
        )
    with t.part("a tiny transformer (one token's logit)", points=1):
        lm, f, x, _ = _tiny_logit_problem(t, 2)
        grad = _gradient(f, x)[0]
        expected = grad.norm(dim=-1)
        what = f"saliency on a tiny {lm.family} model, the logit of one token"
        got = _attribution(t, saliency, f, x, n_pos=x.shape[1], what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (grad.abs().sum(-1), "You took the L1 norm; use the L2 norm."),
                (grad.sum(-1), "You summed the signed gradient; saliency is its L2 norm."),
            ],
        )


# ----- Exercise 1.2 ------------------------------------------------------------------------------
@check("Exercise 1.2: input x gradient", points=2)
def check_input_x_gradient(input_x_gradient: Callable, t: Checker) -> None:
    with t.part("a smooth nonlinear f, twice in a row", points=1):
        p = _smooth_problem(t, 3)
        f, x = p["f"], p["x"]
        grad = _gradient(f, x)[0]
        expected = (x[0] * grad).sum(-1)
        with torch.no_grad():
            zeroed = x.repeat(5, 1, 1)
            zeroed[torch.arange(5), torch.arange(5)] = 0.0
            true_change = f(x) - f(zeroed)  # (pos,): what input x gradient estimates
        mistakes = [
            (-expected, "Wrong sign: multiply the input by the gradient, do not subtract."),
            ((x[0] * grad).norm(dim=-1), "Sum over d_model (keep the sign); do not take a norm."),
            (
                (x[0] * grad).abs().sum(-1),
                "Keep the sign: sum x * gradient, not its absolute value.",
            ),
            (grad.sum(-1), "You summed the gradient alone: multiply it by the input first."),
            ((x[0] * grad).mean(-1), "SUM over d_model, not the mean."),
            (
                true_change,
                "You computed the true change when each token's embedding is set to "
                "zero (an occlusion); input x gradient is its first-order estimate from ONE "
                "gradient at the input.",
            ),
            (
                (x[0] * _gradient(f, torch.zeros_like(x))[0]).sum(-1),
                "Take the gradient at the input, not at zero.",
            ),
        ]
        what = "input_x_gradient(f, x) for a smooth nonlinear f"
        got = _attribution(t, input_x_gradient, f, x, n_pos=5, what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="Multiply the input by the gradient element-wise, then sum over d_model.",
        )
        second_f = _quadratic(p["w"])
        second_grad = _gradient(second_f, x)[0]
        second = (x[0] * second_grad).sum(-1)
        what = "a second call, on f(e) = sum(w * e**2)"
        got = _attribution(t, input_x_gradient, second_f, x, n_pos=5, what=what)
        t.close(
            got,
            second,
            what,
            scale=_scale(second),
            mistakes=[
                (
                    (x[0] * (grad + second_grad)).sum(-1),
                    "Gradients piled up from the previous call: "
                    "take a fresh leaf copy of the input each time, or use torch.autograd.grad.",
                ),
            ],
        )
    with t.part("a tiny transformer (one token's logit)", points=1):
        lm, f, x, _ = _tiny_logit_problem(t, 4)
        grad = _gradient(f, x)[0]
        expected = (x[0] * grad).sum(-1)
        what = f"input_x_gradient on a tiny {lm.family} model"
        got = _attribution(t, input_x_gradient, f, x, n_pos=x.shape[1], what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (-expected, "Wrong sign."),
                ((x[0] * grad).norm(dim=-1), "Sum over d_model; do not take a norm."),
            ],
        )


# ----- Exercise 1.4 ------------------------------------------------------------------------------
def _quadrature(rule: str, n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Points alpha (n,) and weights (n,) of a rule on [0, 1]."""
    k = torch.arange(n, dtype=dtype)
    if rule == "midpoint":
        return (k + 0.5) / n, torch.full((n,), 1 / n, dtype=dtype)
    if rule == "right":
        return (k + 1) / n, torch.full((n,), 1 / n, dtype=dtype)
    if rule == "left":
        return k / n, torch.full((n,), 1 / n, dtype=dtype)
    if rule == "linspace":  # both ends, equal weights
        return torch.linspace(0, 1, n, dtype=dtype), torch.full((n,), 1 / n, dtype=dtype)
    if rule == "trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=dtype)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=dtype), weights
    if rule == "gauss-legendre":
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.tensor((nodes + 1) / 2, dtype=dtype), torch.tensor(weights / 2, dtype=dtype)
    raise ValueError(rule)


def _ig_rule(f: Fn, x: Tensor, b: Tensor, rule: str, n: int, dtype=torch.float64) -> Tensor:
    """Integrated gradients with a quadrature rule (float64 unless f needs float32): (pos,)."""
    alphas, weights = _quadrature(rule, n, dtype)
    x, b = x.detach().to(dtype), b.detach().to(dtype)
    path = (b + alphas[:, None, None] * (x - b)).requires_grad_(True)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b)[0] * (weights[:, None, None] * grads).sum(0)).sum(-1)


def _ig_mistakes(
    f: Fn, x: Tensor, b: Tensor, n: int, dtype=torch.float64
) -> list[tuple[Tensor, str]]:
    """What the usual wrong integrators give on this problem, each with its hint."""

    def _ig(f, x, b, rule, n):
        return _ig_rule(f, x, b, rule, n, dtype)

    ig = _ig(f, x, b, "midpoint", n)
    out = [
        (
            _ig(f, x, b, "right", n),
            "That is the right Riemann sum, alpha = (k + 1)/n; the "
            "docstring asks for the midpoint rule, alpha = (k + 0.5)/n.",
        ),
        (
            _ig(f, x, b, "left", n),
            "That is the left Riemann sum, alpha = k/n; use the midpoint "
            "rule, alpha = (k + 0.5)/n.",
        ),
        (
            _ig(f, x, b, "trapezoid", n),
            "That is the trapezoid rule; use the midpoint rule, "
            "alpha = (k + 0.5)/n with equal weights 1/n.",
        ),
        (
            _ig(f, x, b, "linspace", n),
            "Your alphas are torch.linspace(0, 1, n) (both ends); use "
            "the midpoint rule, alpha = (k + 0.5)/n.",
        ),
        (
            _ig(f, x, b, "gauss-legendre", n),
            "That is Gauss-Legendre quadrature (captum's "
            "default); the docstring asks for the midpoint rule.",
        ),
        (n * ig, "You summed the gradients without dividing by n_steps: average them."),
        (-ig, "Wrong sign: multiply by (input - baseline)."),
        (
            ((x - b)[0].double() * _gradient(f, x)[0].double()).sum(-1),
            "You used only the "
            "gradient at the input: average the gradients at n_steps points along the path.",
        ),
        (
            _ig(f, x, torch.zeros_like(x), "midpoint", n),
            "You used a zero baseline: use the baseline you were given.",
        ),
    ]
    for other in (20, 32, 50, 64):
        if other != n:
            out.append(
                (
                    _ig(f, x, b, "midpoint", other),
                    f"Your result is the midpoint rule "
                    f"with {other} steps: use the n_steps argument you were given ({n}).",
                )
            )
    return out


@check("Exercise 1.4: integrated gradients", points=4, timeout=20)
def check_integrated_gradients(integrated_gradients: Callable, t: Checker) -> None:
    with t.part("a linear f and a nonzero baseline: exactly sum_d (x - b) w", points=1):
        p = _smooth_problem(t, 5)
        x, b, w = p["x"], p["b"], p["w"]

        def linear(e: Tensor) -> Tensor:
            return (e * w).sum(dim=(1, 2)) + 3.0

        expected = ((x - b) * w)[0].sum(-1)
        what = "integrated_gradients(f, x, b, 4) for f(e) = sum(w * e) + 3"
        got = _attribution(t, integrated_gradients, linear, x, b, 4, n_pos=5, what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (
                    (x * w)[0].sum(-1),
                    "You used a zero baseline (or multiplied by the input alone): multiply "
                    "the averaged gradient by (input - baseline), with the baseline given.",
                ),
                (4 * expected, "You summed the gradients without dividing by n_steps."),
                (-expected, "Wrong sign: (input - baseline), not (baseline - input)."),
                ((x[0] * w).sum(-1) - (b[0] * w).sum(-1) + 3.0 / 5, "Do not add f's constant."),
            ],
        )
    for n, offset in ((3, 6), (5, 7)):
        with t.part(f"a smooth non-polynomial f, the midpoint rule with n_steps={n}", points=1):
            p = _smooth_problem(t, offset)
            f, x, b = p["f"], p["x"], p["b"]
            expected = _ig_rule(f, x, b, "midpoint", n)
            mistakes = _ig_mistakes(f, x, b, n)
            what = f"integrated_gradients(f, x, b, n_steps={n}) on a smooth non-polynomial f"
            got = _attribution(t, integrated_gradients, f, x, b, n, n_pos=5, what=what)
            t.close(
                got,
                expected,
                what,
                scale=_scale(expected),
                mistakes=mistakes,
                hint="Average the gradients at alpha_k = (k + 0.5)/n_steps, k = 0..n_steps-1, "
                "on the straight path b + alpha (x - b), then multiply by (x - b) and sum "
                "over d_model.",
            )
    with t.part("a tiny transformer, 8 steps, against the midpoint rule", points=1):
        lm, f, x, b = _tiny_logit_problem(t, 8)
        expected = _ig_rule(f, x, b, "midpoint", 8, torch.float32)
        what = f"integrated_gradients on a tiny {lm.family} model, 8 steps"
        got = _attribution(t, integrated_gradients, f, x, b, 8, n_pos=x.shape[1], what=what)
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=_ig_mistakes(f, x, b, 8, torch.float32),
        )


# ----- Exercise 1.5 ------------------------------------------------------------------------------
@check("Exercise 1.5: completeness gap", points=2)
def check_completeness_gap(completeness_gap: Callable, t: Checker) -> None:
    for offset, excess, label in ((9, 0.8, "claim MORE"), (10, -0.6, "claim LESS")):
        with t.part(f"scores that {label} than f(x) - f(b)", points=1):
            p = _smooth_problem(t, offset)
            f, x, b = p["f"], p["x"], p["b"]
            gen = _generator(t, offset + 100)
            with torch.no_grad():
                fx, fb, f0 = float(f(x)), float(f(b)), float(f(torch.zeros_like(x)))
            change = fx - fb
            scores = torch.randn(5, generator=gen) * 2  # mixed signs
            scores += (change + excess - float(scores.sum())) / 5
            total = float(scores.sum())
            expected = total - change
            what = (
                f"completeness_gap on a smooth f with f(x) = {fx:.4g}, f(b) = {fb:.4g} and "
                f"scores summing to {total:.4g}"
            )
            got = t.scalar(t.call(completeness_gap, f, x, b, scores), what)
            t.close(
                got,
                expected,
                what,
                atol=1e-4,
                scale=max(abs(fx), abs(fb), 1.0),
                mistakes=[
                    (abs(expected), "Keep the sign: do not take the absolute value."),
                    (
                        -expected,
                        "Wrong sign: sum(scores) - (f(x) - f(baseline)), so a positive gap "
                        "means the scores claim more than the output changed.",
                    ),
                    (total - fx, "You ignored the baseline: subtract f(baseline) too."),
                    (
                        change,
                        "You returned f(x) - f(baseline) alone: subtract it from the sum "
                        "of the scores.",
                    ),
                    (expected / change, "Return the gap in logits, not relative to the change."),
                    (total - (fx - f0), "Use f(baseline), not f(zeros)."),
                    (float(scores.abs().sum()) - change, "Sum the scores with their signs."),
                ],
                hint="The gap is sum(attributions) - (f(embeddings) - f(baseline)).",
            )


# ----- Exercise 1.6 ------------------------------------------------------------------------------
@check("Exercise 1.6: the space baseline", points=2)
def check_space_baseline(space_baseline: Callable, t: Checker) -> None:
    for part, (anchor, offset) in enumerate(((True, 11), (False, 12))):
        name = "an anchored prompt" if anchor else "a prompt whose first token is not the anchor"
        with t.part(name, points=1):
            lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
            gen = _generator(t, offset)
            ids = _tiny_ids(lm, gen, 5 + 3 * part, anchor=anchor)
            n = ids.shape[1]
            space = torch.full_like(ids, lm.token_id(" "))
            space[0, 0] = ids[0, 0]
            with torch.no_grad():
                expected = lm.embed(space)
                everywhere = lm.embed(torch.full_like(ids, lm.token_id(" ")))
                with_anchor = everywhere.clone()
                with_anchor[0, 0] = lm.embed.weight[lm.anchor_token_id]
                zeros_but_first = torch.zeros_like(expected)
                zeros_but_first[0, 0] = expected[0, 0]
                pad = lm.embed(torch.cat([ids[:, :1], torch.zeros_like(ids[:, 1:])], 1))
            what = f"space_baseline(lm, tokens) for tokens {ids[0].tolist()} on a tiny model"
            got = t.call(space_baseline, lm, ids)
            if type(got) is Tensor and not got.is_floating_point():
                t.fail(
                    what,
                    "You returned token ids (an integer tensor).",
                    "Return the EMBEDDINGS of those tokens: lm.embed(ids).",
                )
            got = t.tensor(
                got, what, shape=(1, n, lm.d_model), hint="Return embeddings (1, pos, d_model)."
            )
            t.close(
                got,
                expected,
                what,
                scale=_scale(expected),
                mistakes=[
                    (
                        torch.zeros_like(expected),
                        "That is the zero baseline; use the embedding of "
                        "the ' ' token at every position except 0.",
                    ),
                    (
                        zeros_but_first,
                        "Positions 1.. must hold the embedding of ' ': you put zeros there (or "
                        "the pad token, whose embedding is zero in this model).",
                    ),
                    (
                        everywhere,
                        "Keep position 0 as in the input (the anchor): only positions "
                        "1.. become ' '.",
                    ),
                    (
                        with_anchor,
                        "Position 0 keeps the INPUT's first token, whatever it is (here "
                        "not the anchor): copy tokens[:, 0].",
                    ),
                    (pad, "Use lm.token_id(' '), not token 0 (the pad token)."),
                ],
                hint="Embed a copy of the tokens in which positions 1.. are lm.token_id(' ').",
            )


# ----- attention patterns ------------------------------------------------------------------------
def _attention(gen: torch.Generator, n_layers: int, n_heads: int, n_pos: int) -> Tensor:
    """Random causal patterns (layers, heads, pos, pos) whose heads differ a lot: rows sum to 1."""
    temperature = torch.rand(n_layers, n_heads, 1, 1, generator=gen) * 3 + 0.3
    scores = torch.randn(n_layers, n_heads, n_pos, n_pos, generator=gen) * temperature
    mask = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1)


def _without_sink(attentions: Tensor) -> Tensor:
    """The patterns with the first column (the attention sink) zeroed: rows sum to less than 1
    (row 0 keeps its single entry)."""
    out = attentions.clone()
    out[..., 1:, 0] = 0.0
    return out


def _mixed(
    attentions: Tensor, reduce: str = "mean", residual: float = 0.5, renormalise: str = "after"
) -> list[Tensor]:
    """Each layer's A_hat (pos, pos), with variations for the mistakes."""
    n = attentions.shape[-1]
    eye = torch.eye(n, dtype=attentions.dtype)
    out = []
    for layer in attentions:
        a = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.amax(0)}[reduce]
        if renormalise == "before":
            a = a / a.sum(-1, keepdim=True)
        a = (1 - residual) * a + residual * eye
        if renormalise == "after":
            a = a / a.sum(-1, keepdim=True)
        out.append(a)
    return out


def _rollout(mats: Sequence[Tensor], left: bool = True) -> Tensor:
    out = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype)
    for a in mats:
        out = a @ out if left else out @ a
    return out


@check("Exercise 1.7: layer-weighted attention", points=2)
def check_layer_weighted_attention(layer_weighted_attention: Callable, t: Checker) -> None:
    shapes = t.choice([(3, 4, 5), (4, 3, 6), (2, 5, 7)])
    for part, offset in enumerate((13, 14)):
        name = (
            "heterogeneous heads, unnormalised layer weights"
            if part == 0
            else "a second problem, one layer weighted zero"
        )
        with t.part(name, points=1):
            gen = _generator(t, offset)
            n_layers, n_heads, n_pos = shapes
            attn = _attention(gen, n_layers, n_heads, n_pos)
            weights = torch.rand(n_layers, generator=gen) * 3 + 0.5
            if part == 1:
                weights[0] = 0.0
            norm = weights / weights.sum()
            last = attn[:, :, -1]  # (layers, heads, pos)
            expected = norm @ last.mean(1)
            mistakes = [
                (
                    norm @ attn[:, :, :, -1].mean(1),
                    "You read the last COLUMN; read the last "
                    "row, attentions[:, :, -1, :] (how the last position attends).",
                ),
                (
                    norm @ attn[:, :, 0].mean(1),
                    "You read the first row; the last position "
                    "(-1) is the one that predicts the next token.",
                ),
                (norm @ last.sum(1), "Average over heads, do not sum."),
                (norm @ last.amax(1), "Average over heads, do not take the max."),
                (weights @ last.mean(1), "Normalise the layer weights to sum to one."),
                (last.mean((0, 1)), "Use the layer weights: this is the plain mean."),
                (
                    weights.softmax(0) @ last.mean(1),
                    "Normalise by dividing by the sum, not with a softmax.",
                ),
                ((weights / weights.amax()) @ last.mean(1), "Divide the weights by their SUM."),
            ]
            what = (
                f"layer_weighted_attention on random patterns ({n_layers} layers, {n_heads} "
                f"heads that differ, {n_pos} positions), weights {weights.tolist()}"
            )
            got = t.tensor(t.call(layer_weighted_attention, attn, weights), what, shape=(n_pos,))
            t.close(
                got,
                expected,
                what,
                mistakes=mistakes,
                hint="Take attentions[:, :, -1, :], average over heads, then a weighted "
                "average over layers with weights / weights.sum().",
            )


@check("Exercise 1.8: attention rollout", points=3)
def check_attention_rollout(attention_rollout: Callable, t: Checker) -> None:
    n_layers, n_heads, n_pos = t.choice([(3, 4, 5), (4, 3, 6), (3, 2, 4)])
    with t.part("several layers with heterogeneous heads", points=2):
        gen = _generator(t, 15)
        attn = _attention(gen, n_layers, n_heads, n_pos)
        expected = _rollout(_mixed(attn))
        per_head = torch.stack([_rollout(_mixed(attn[:, h : h + 1])) for h in range(n_heads)])
        mistakes = [
            (
                _rollout(_mixed(attn, residual=0.0)),
                "Mix in the residual: A_hat = 0.5 * A + 0.5 * I for every layer.",
            ),
            (
                _rollout(_mixed(attn), left=False),
                "Later layers multiply on the LEFT: "
                "R = A_hat_L @ ... @ A_hat_1 (you computed A_hat_1 @ ... @ A_hat_L).",
            ),
            (_rollout(_mixed(attn, reduce="max")), "Average over heads, not max."),
            (_rollout(_mixed(attn, reduce="sum")), "Average over heads, do not sum them."),
            (expected.T, "You returned the transpose: row i should be position i at the top."),
            (
                per_head.mean(0),
                "Average the heads BEFORE multiplying the layers: you rolled out "
                "each head separately and averaged the results.",
            ),
            (_mixed(attn)[-1], "Multiply the layers together: you returned the last layer only."),
            (sum(_mixed(attn)) / n_layers, "Multiply the layers, do not average them."),
        ]
        what = (
            f"attention_rollout on random causal patterns ({n_layers} layers, {n_heads} "
            "heterogeneous heads)"
        )
        got = t.tensor(t.call(attention_rollout, attn), what, shape=(n_pos, n_pos))
        t.close(
            got,
            expected,
            what,
            mistakes=mistakes,
            hint="A_hat = 0.5 * mean over heads + 0.5 * I, rows renormalised; then "
            "R = A_hat_L @ ... @ A_hat_1.",
        )
    with t.part("rows that do not sum to one (the sink column removed)", points=1):
        gen = _generator(t, 16)
        attn = _without_sink(_attention(gen, n_layers, n_heads, n_pos))
        expected = _rollout(_mixed(attn))
        what = "attention_rollout on patterns whose first column was zeroed (rows sum below 1)"
        got = t.tensor(t.call(attention_rollout, attn), what, shape=(n_pos, n_pos))
        t.close(
            got,
            expected,
            what,
            mistakes=[
                (
                    _rollout(_mixed(attn, renormalise="none")),
                    "Renormalise each layer's A_hat so its rows sum to one (they do not here).",
                ),
                (
                    _rollout(_mixed(attn, renormalise="before")),
                    "Renormalise AFTER mixing in the "
                    "identity: A_hat = 0.5 * A + 0.5 * I, then divide each row by its sum.",
                ),
            ],
        )
        t.close(got.sum(-1), torch.ones(n_pos), "every row of the rollout sums to one")


def _flow(mats: Sequence[Tensor], target: int, transpose: bool = False) -> Tensor:
    """Max flow from each input token to (top, target) through capacities mats[l][i, j]."""
    import networkx as nx

    n = mats[0].shape[-1]
    graph = nx.DiGraph()
    for layer, a in enumerate(mats):
        a = a.T if transpose else a
        for i in range(n):
            for j in range(n):
                if a[i, j] > 0:
                    graph.add_edge((layer, j), (layer + 1, i), capacity=float(a[i, j]))
    sink = (len(mats), target % n)
    return torch.tensor(
        [
            nx.maximum_flow_value(graph, (0, j), sink)
            if graph.has_node((0, j)) and graph.has_node(sink) and nx.has_path(graph, (0, j), sink)
            else 0.0
            for j in range(n)
        ]
    )


def _widest_path(mats: Sequence[Tensor], target: int) -> Tensor:
    """The bottleneck of the widest single path from each token (not a max flow)."""
    n = mats[0].shape[-1]
    width = torch.zeros(n, n)  # width[j, i]: best bottleneck from input j to node i
    width.fill_diagonal_(float("inf"))
    for a in mats:
        # new[j, i] = max_k min(width[j, k], a[i, k])
        width = torch.minimum(width[:, None, :], a[None, :, :]).amax(-1)
    return width[:, target % n]


@check("Exercise 1.9: attention flow", points=3, timeout=20)
def check_attention_flow(attention_flow: Callable, t: Checker) -> None:
    n_layers, n_heads, n_pos = t.choice([(3, 3, 5), (2, 4, 6), (4, 2, 4)])
    with t.part("several layers: many paths between tokens", points=2):
        gen = _generator(t, 17)
        attn = _attention(gen, n_layers, n_heads, n_pos)
        mats = _mixed(attn)
        expected = _flow(mats, -1)
        mistakes = [
            (
                _widest_path(mats, -1),
                "That is the widest single path (its narrowest edge); the "
                "max flow adds up every path, e.g. nx.maximum_flow_value.",
            ),
            (
                _rollout(mats)[-1],
                "That is rollout's last row: flow is a max-flow value, not a product of matrices.",
            ),
            (
                _flow(_mixed(attn, residual=0.0), -1),
                "Mix in the residual: capacities 0.5 * A + 0.5 * I.",
            ),
            (
                _flow(mats, -1, transpose=True),
                "Edges point the wrong way: the edge from token j "
                "(layer l) to token i (layer l+1) has capacity A_hat[i, j].",
            ),
            (_flow(_mixed(attn, reduce="sum"), -1), "Average over heads, do not sum them."),
            (_flow(_mixed(attn, reduce="max"), -1), "Average over heads, not max."),
        ]
        what = f"attention_flow on random patterns ({n_layers} layers, {n_heads} heads)"
        got = t.tensor(t.call(attention_flow, attn), what, shape=(n_pos,))
        t.close(
            got,
            expected,
            what,
            atol=1e-4,
            mistakes=mistakes,
            hint="Nodes (layer, token); edge (l, j) -> (l + 1, i) with capacity A_hat[i, j]; "
            "score j = max flow from (0, j) to (n_layers, target).",
        )
    with t.part("target=2, rows that do not sum to one", points=1):
        gen = _generator(t, 18)
        attn = _without_sink(_attention(gen, n_layers, n_heads, n_pos))
        mats = _mixed(attn)
        expected = _flow(mats, 2)
        what = "attention_flow(attentions, target=2) on patterns with the sink column zeroed"
        got = t.tensor(t.call(attention_flow, attn, 2), what, shape=(n_pos,))
        t.close(
            got,
            expected,
            what,
            atol=1e-4,
            mistakes=[
                (
                    _flow(mats, -1),
                    "Use the `target` argument: flow into (top layer, target), not "
                    "always into the last position.",
                ),
                (
                    _flow(_mixed(attn, renormalise="none"), 2),
                    "Renormalise each layer's A_hat so its rows sum to one (they do not here).",
                ),
                (
                    _flow(_mixed(attn, renormalise="before"), 2),
                    "Renormalise AFTER mixing in the identity.",
                ),
            ],
        )
        t.close(got[3:], torch.zeros(n_pos - 3), "tokens after the target get no flow")


# ----- token scorers -----------------------------------------------------------------------------
def _scorer(t: Checker, offset: int, n_vocab: int = 24, max_pos: int = 16) -> Callable:
    """score(ids (batch, pos)) -> (batch,): nonlinear, position-aware, with interactions.

    Each token is a vector E[id] (3,) scaled per position by P[p] (3,); h = sum_p P[p] * E[id_p]
    and score = h_0 + 2 tanh(h_1) + 0.5 h_2**2. Replacing two tokens together is not the sum of
    replacing each, and removing a token (shifting the rest) changes every later term.
    """
    gen = _generator(t, offset)
    emb = torch.randn(n_vocab, 3, generator=gen)
    pos = 0.5 + torch.rand(max_pos, 3, generator=gen)

    def score(ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise ValueError(
                f"score() takes token ids of shape (batch, pos), got {tuple(ids.shape)}"
            )
        h = (pos[: ids.shape[1]].to(ids.device) * emb.to(ids.device)[ids]).sum(1)  # (batch, 3)
        return h[:, 0] + 2 * torch.tanh(h[:, 1]) + 0.5 * h[:, 2] ** 2

    return score


def _scorer_ids(t: Checker, offset: int, n: int, n_vocab: int = 24) -> Tensor:
    gen = _generator(t, offset)
    return torch.randperm(n_vocab - 2, generator=gen)[:n][None] + 2  # distinct tokens >= 2


def _replaced(ids: Tensor, masks: Sequence[Sequence[int]], r: int) -> Tensor:
    """One row per mask: ids with the listed positions set to r."""
    rows = ids.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        rows[row, list(positions)] = r
    return rows


def _deleted(ids: Tensor, positions: Sequence[int]) -> Tensor:
    keep = [i for i in range(ids.shape[1]) if i not in set(positions)]
    return ids[:, keep]


def _tiny_scorer(lm: LabModel, target: int) -> Callable:
    def score(ids: Tensor) -> Tensor:
        with torch.no_grad():
            return lm.model(input_ids=ids).logits[:, -1, target]

    return score


# ----- Exercise 1.10 -----------------------------------------------------------------------------
@check("Exercise 1.10: occlusion", points=2)
def check_occlusion(occlusion: Callable, t: Checker) -> None:
    with t.part("a nonlinear, position-aware scorer", points=1):
        score = _scorer(t, 19)
        ids = _scorer_ids(t, 20, 7)
        n, r = ids.shape[1], 0
        full = score(ids)[0]
        expected = full - score(_replaced(ids, [[i] for i in range(n)], r))
        mistakes = [
            (
                full - torch.stack([score(_deleted(ids, [i]))[0] for i in range(n)]),
                "You deleted "
                "the token; replace it instead (deleting shifts every later token and shortens "
                "the prompt).",
            ),
            (-expected, "Wrong sign: score(original) - score(occluded)."),
            (
                full - score(_replaced(ids, [[(i + 1) % n] for i in range(n)], r)),
                "Off by one: row i must replace token i.",
            ),
            (
                full - score(_replaced(ids, [[(i - 1) % n] for i in range(n)], r)),
                "Off by one: row i must replace token i.",
            ),
            (
                full
                - score(_replaced(ids, [[j for j in range(n) if j != i] for i in range(n)], r)),
                "You replaced every token EXCEPT i; replace only token i.",
            ),
        ]
        what = f"occlusion(score, tokens, replacement_id={r}) with a nonlinear scorer"
        got = t.tensor(t.call(occlusion, score, ids, r), what, shape=(n,))
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="Entry i is score(tokens) - score(tokens with token i set to replacement_id).",
        )
        # the given replacement, a second time: replacing a token by itself changes nothing
        r2 = int(ids[0, 2])
        expected = full - score(_replaced(ids, [[i] for i in range(n)], r2))
        what = f"occlusion with replacement_id={r2}, the token at position 2 (entry 2 must be 0)"
        got = t.tensor(t.call(occlusion, score, ids, r2), what, shape=(n,))
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (
                    full - score(_replaced(ids, [[i] for i in range(n)], 0)),
                    "Use the replacement_id you were given (you always used 0).",
                ),
            ],
        )
    with t.part("a tiny transformer's logit", points=1):
        lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
        gen = _generator(t, 21)
        ids = _tiny_ids(lm, gen, 6)
        target, r = int(torch.randint(3, lm.vocab_size, (1,), generator=gen)), lm.token_id(" ")
        score = _tiny_scorer(lm, target)
        n = ids.shape[1]
        expected = score(ids)[0] - score(_replaced(ids, [[i] for i in range(n)], r))
        what = f"occlusion on a tiny {lm.family} model's logit, replacement ' '"
        got = t.tensor(t.call(occlusion, score, ids, r), what, shape=(n,))
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (-expected, "Wrong sign: score(original) - score(occluded)."),
            ],
        )


# ----- Exercise 1.12 -----------------------------------------------------------------------------
def _differentiate(f: Callable, embeddings: Tensor) -> Tensor | str:
    """Run the student's f on a leaf copy and return the gradient of its sum (or why not)."""
    x = embeddings.detach().clone().requires_grad_(True)
    out = f(x)
    if not isinstance(out, Tensor) or not out.requires_grad:
        return "no gradient"
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    return "no gradient" if grad is None else grad


@check("Exercise 1.12: contrastive logit difference", points=3)
def check_logit_difference_fn(logit_difference_fn: Callable, t: Checker) -> None:
    from labkit.hooks import capture

    lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
    gen = _generator(t, 22)
    target, foil = (int(i) for i in torch.randperm(lm.vocab_size - 3, generator=gen)[:2] + 3)
    ids = torch.cat([_tiny_ids(lm, gen, 7) for _ in range(3)])  # (3, 7)
    with torch.no_grad(), capture(lm, "resid_post", lm.n_layers - 1) as cache:
        emb = lm.embed(ids)
        logits = lm.model(inputs_embeds=emb).logits  # (3, 7, vocab)
        unnormed = lm.unembed(cache["resid_post", lm.n_layers - 1])  # without the final norm
    expected = logits[:, -1, target] - logits[:, -1, foil]
    with t.part("the logit difference at the last position, on a batch of 3", points=1):
        probs = logits[:, -1].softmax(-1)
        mistakes = [
            (-expected, "Wrong sign: logit(target) - logit(foil)."),
            (probs[:, target] - probs[:, foil], "Use logits, not probabilities."),
            (logits[:, -1, target], "Subtract the foil's logit."),
            (logits[:, -2, target] - logits[:, -2, foil], "Use the LAST position (-1)."),
            (logits[:, 0, target] - logits[:, 0, foil], "Use the LAST position (-1), not 0."),
            (
                unnormed[:, -1, target] - unnormed[:, -1, foil],
                "You unembedded the residual "
                "stream without the final norm: use the model's logits.",
            ),
        ]
        f = t.call(logit_difference_fn, lm, target, foil)
        t.true(
            callable(f),
            "logit_difference_fn(lm, target_id, foil_id) returns a function of the embeddings",
            "Define an inner function and return it (do not call it).",
        )
        what = f"logit_difference_fn(lm, {target}, {foil})(embeddings) on a batch of 3 prompts"
        got = t.tensor(t.call(f, emb), what, shape=(3,), hint="One number per batch row.")
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="logits[:, -1, target] - logits[:, -1, foil] from "
            "lm.model(inputs_embeds=embeddings).",
        )
    with t.part("other embeddings: the function depends on its input only", points=1):
        new = emb + torch.randn(emb.shape, generator=gen) * emb.std()  # not any token's
        with torch.no_grad():
            new_logits = lm.model(inputs_embeds=new).logits
        new_expected = new_logits[:, -1, target] - new_logits[:, -1, foil]
        f = t.call(logit_difference_fn, lm, target, foil)
        what = "the function on a second batch of 3 rows of perturbed embeddings"
        got = t.tensor(t.call(f, new), what, shape=(3,))
        t.close(
            got,
            new_expected,
            what,
            scale=_scale(new_expected),
            mistakes=[
                (
                    expected,
                    "Your function ignores its input: it returned the answer for "
                    "the first batch again (a cached value?).",
                )
            ],
        )
    with t.part("gradients flow through it (integrated gradients needs them)", points=1):
        x = emb[:2].clone().requires_grad_(True)
        with torch.enable_grad():
            out = lm.model(inputs_embeds=x).logits[:, -1]
            (expected_grad,) = torch.autograd.grad((out[:, target] - out[:, foil]).sum(), x)
        f = t.call(logit_difference_fn, lm, target, foil)
        grad = t.call(_differentiate, f, emb[:2])
        what = "the gradient of your function's output with respect to the embeddings"
        if isinstance(grad, str):
            t.fail(
                what,
                "Its output does not depend differentiably on the embeddings.",
                "Do not wrap the forward pass in torch.no_grad() and do not .detach(): "
                "integrated gradients differentiates this function.",
            )
        t.close(grad, expected_grad, what, scale=_scale(expected_grad))


# ----- Exercises 1.13 and 1.14 -------------------------------------------------------------------
def _curve_problem(t: Checker, offset: int) -> tuple[Callable, Tensor, Tensor, int]:
    """A nonlinear scorer, 8 tokens, and an order over 5 of them (not sorted)."""
    score = _scorer(t, offset)
    ids = _scorer_ids(t, offset + 1, 8)
    gen = _generator(t, offset + 2)
    order = torch.randperm(7, generator=gen)[:5] + 1  # positions 1..7, never the anchor
    while bool((order.diff() > 0).all()):  # make sure that sorting would change it
        order = torch.randperm(7, generator=gen)[:5] + 1
    return score, ids, order, 0


@check("Exercise 1.13: deletion curve", points=2)
def check_deletion_curve(deletion_curve: Callable, t: Checker) -> None:
    with t.part("a nonlinear scorer, an unsorted order over 5 of 8 tokens", points=1):
        score, ids, order, r = _curve_problem(t, 23)
        o = order.tolist()
        n = len(o)
        expected = score(_replaced(ids, [o[:k] for k in range(n + 1)], r))
        single = score(ids)[0] - score(_replaced(ids, [[p] for p in o], r))
        mistakes = [
            (
                torch.stack([score(_deleted(ids, o[:k]))[0] for k in range(n + 1)]),
                "You deleted tokens; replace them (deleting shifts the other tokens).",
            ),
            (
                score(_replaced(ids, [o[:k] for k in range(1, n + 2)], r)),
                "Entry 0 must be the "
                "original score (nothing replaced), and entry k has the first k replaced.",
            ),
            (
                score(_replaced(ids, [[]] + [[p] for p in o], r)),
                "Replace tokens cumulatively: "
                "entry k has ALL of the first k replaced, not only the k-th.",
            ),
            (
                score(_replaced(ids, [o[::-1][:k] for k in range(n + 1)], r)),
                "Follow `order` from its start, not from its end.",
            ),
            (
                score(ids)[0] - torch.cat([torch.zeros(1), single.cumsum(0)]),
                "You added up "
                "one-token drops; replace the tokens TOGETHER and score the result (the effects "
                "are not additive).",
            ),
            (
                score(_replaced(ids, [sorted(o)[:k] for k in range(n + 1)], r)),
                "Follow `order` as given; do not sort the positions.",
            ),
        ]
        what = f"deletion_curve(score, tokens, order={o}, replacement_id={r})"
        got = t.tensor(t.call(deletion_curve, score, ids, order, r), what, shape=(n + 1,))
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="Entry k scores the tokens with the first k positions of `order` replaced "
            "(all together), k = 0..len(order).",
        )
    with t.part("a tiny transformer's logit, a full order", points=1):
        lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
        gen = _generator(t, 26)
        ids = _tiny_ids(lm, gen, 6)
        target, r = int(torch.randint(3, lm.vocab_size, (1,), generator=gen)), lm.token_id(" ")
        score = _tiny_scorer(lm, target)
        o = (torch.randperm(5, generator=gen) + 1).tolist()
        expected = score(_replaced(ids, [o[:k] for k in range(len(o) + 1)], r))
        what = f"deletion_curve on a tiny {lm.family} model, order {o}"
        got = t.tensor(
            t.call(deletion_curve, score, ids, torch.tensor(o), r), what, shape=(len(o) + 1,)
        )
        t.close(got, expected, what, scale=_scale(expected))


@check("Exercise 1.14: insertion curve", points=2)
def check_insertion_curve(insertion_curve: Callable, t: Checker) -> None:
    with t.part("a nonlinear scorer, an unsorted order over 5 of 8 tokens", points=1):
        score, ids, order, r = _curve_problem(t, 27)
        o = order.tolist()
        n = len(o)
        expected = score(_replaced(ids, [o[k:] for k in range(n + 1)], r))
        everything = [p for p in range(ids.shape[1])]
        start = score(_replaced(ids, [o], r))[0]
        single = score(_replaced(ids, [[q for q in o if q != p] for p in o], r)) - start
        mistakes = [
            (
                score(_replaced(ids, [o[:k] for k in range(n + 1)], r)),
                "That is the deletion "
                "curve: start with ALL of `order` replaced and put tokens back.",
            ),
            (
                score(_replaced(ids, [o[:k] for k in range(n + 1)], r)).flip(0),
                "You put back the LAST tokens of `order` first (the deletion curve, "
                "reversed): put the FIRST tokens back first.",
            ),
            (
                score(_replaced(ids, [o[k + 1 :] for k in range(n + 1)], r)),
                "Off by one: entry 0 has every token of `order` replaced.",
            ),
            (
                score(
                    _replaced(
                        ids, [[p for p in everything if p not in o[:k]] for k in range(n + 1)], r
                    )
                ),
                "Replace only the positions in `order`; the others stay as they are throughout.",
            ),
            (
                start + torch.cat([torch.zeros(1), single.cumsum(0)]),
                "You added up one-token "
                "gains; put the tokens back TOGETHER and score the result (effects are not "
                "additive).",
            ),
        ]
        what = f"insertion_curve(score, tokens, order={o}, replacement_id={r})"
        got = t.tensor(t.call(insertion_curve, score, ids, order, r), what, shape=(n + 1,))
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="Entry k has every position of `order` replaced EXCEPT its first k; the last "
            "entry is the original score.",
        )
    with t.part("a tiny transformer's logit, a full order", points=1):
        lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
        gen = _generator(t, 30)
        ids = _tiny_ids(lm, gen, 6)
        target, r = int(torch.randint(3, lm.vocab_size, (1,), generator=gen)), lm.token_id(" ")
        score = _tiny_scorer(lm, target)
        o = (torch.randperm(5, generator=gen) + 1).tolist()
        expected = score(_replaced(ids, [o[k:] for k in range(len(o) + 1)], r))
        what = f"insertion_curve on a tiny {lm.family} model, order {o}"
        got = t.tensor(
            t.call(insertion_curve, score, ids, torch.tensor(o), r), what, shape=(len(o) + 1,)
        )
        t.close(got, expected, what, scale=_scale(expected))


# ----- Exercise 1.15 -----------------------------------------------------------------------------
def _ranks(x: Tensor) -> Tensor:
    return x.argsort().argsort().double()


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@check("Exercise 1.15: Spearman rank correlation", points=2)
def check_spearman(spearman: Callable, t: Checker) -> None:
    for part, (offset, n, dtype) in enumerate(((31, 7, torch.float32), (32, 9, torch.float64))):
        with t.part(f"{n} scores of very different sizes ({dtype})", points=1):
            gen = _generator(t, offset)
            a = torch.randn(n, generator=gen, dtype=torch.float64).mul(3).exp()  # skewed
            b = a.log() + 1.2 * torch.randn(n, generator=gen, dtype=torch.float64)
            b = -b if part == 1 else b  # a negative correlation in the second part
            a, b = a.to(dtype), b.to(dtype)
            expected = _pearson(_ranks(a), _ranks(b))
            ra, rb = _ranks(a), _ranks(b)
            mistakes = [
                (
                    _pearson(a, b),
                    "That is Pearson's correlation of the VALUES; correlate their ranks.",
                ),
                (
                    _pearson(a.argsort().double(), b.argsort().double()),
                    "argsort gives the ORDER, not the ranks: apply argsort twice.",
                ),
                (abs(expected), "Keep the sign of the correlation."),
                (_pearson(ra, b), "Rank BOTH vectors."),
                (_pearson(a, rb), "Rank BOTH vectors."),
                (-expected, "Rank both vectors in the same direction (both ascending)."),
                (
                    _pearson(a.sort().values, b.sort().values),
                    "Do not sort the values: rank them in place (argsort twice).",
                ),
            ]
            what = (
                f"spearman(a, b) for a = {[round(v, 3) for v in a.tolist()]}, b = "
                f"{[round(v, 3) for v in b.tolist()]}"
            )
            got = t.scalar(t.call(spearman, a, b), what)
            t.close(
                got,
                expected,
                what,
                atol=1e-5,
                rtol=1e-4,
                mistakes=mistakes,
                hint="Rank each vector (argsort twice), then take the Pearson correlation "
                "of the ranks.",
            )


# ----- Exercise 1.16 -----------------------------------------------------------------------------
def _randomize_and_read(randomize: Callable, module: torch.nn.Module, seed: int) -> list:
    """Call the student's function on ``module`` and read what it did, as plain data:
    [parameter values after, same Parameter objects?, requires_grad flags, global RNG moved?]."""
    params = list(module.parameters())
    rng = torch.random.get_rng_state()
    randomize(module, seed)
    after = list(module.parameters())
    same = [len(after) == len(params) and a is b for a, b in zip(after, params, strict=False)]
    return [
        [p.detach().clone() for p in after],
        same,
        [p.requires_grad for p in after],
        not torch.equal(rng, torch.random.get_rng_state()),
    ]


def _frozen_module(seed: int) -> torch.nn.Module:
    """Parameters of the same shape with different means and scales, frozen like load_model's."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(48, 48),
        torch.nn.Linear(48, 48),
        torch.nn.LayerNorm(48),
        torch.nn.Linear(48, 8),
    )
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 + 0.4 * i) + (0.3 * i - 1.0))
    net.requires_grad_(False)
    return net


def _read_randomized(
    t: Checker, fn: Callable, module: torch.nn.Module, seed: int, what: str
) -> tuple[list[Tensor], list[bool], list[bool], bool]:
    out = t.call(_randomize_and_read, fn, module, seed)
    if not (isinstance(out, list) and len(out) == 4):
        t.fail(what, "The call did not complete.")
    values, same, flags, rng_moved = out
    values = [t.tensor(v, what) for v in values]
    return values, list(same), list(flags), bool(rng_moved)


@check("Exercise 1.16: randomise weights", points=4)
def check_randomize_weights(randomize_weights_: Callable, t: Checker) -> None:
    seed = t.seed(33) % 1000
    net = _frozen_module(seed)
    names = [n for n, _ in net.named_parameters()]
    old = [p.detach().clone() for p in net.parameters()]
    with t.part("every parameter of a frozen module changes, in place", points=1):
        what = "randomize_weights_(module, seed) on a module frozen like load_model's"
        values, same, flags, _ = _read_randomized(t, randomize_weights_, net, 0, what)
        if len(values) != len(old) or not all(same):
            t.fail(
                what,
                "The module's parameters were replaced by new objects.",
                "Write into each parameter in place (p.copy_(...) under torch.no_grad()); "
                "do not assign new nn.Parameters or return a new module.",
            )
        unchanged = [n for n, v, o in zip(names, values, old, strict=True) if torch.equal(v, o)]
        if len(unchanged) == len(names):
            t.fail(
                what,
                "No parameter changed.",
                "Randomise in place, and do not skip frozen parameters: load_model() leaves "
                "every parameter with requires_grad=False, so `if p.requires_grad:` skips "
                "them all. Returning a new module does not change the one you were given.",
            )
        if unchanged:
            t.fail(
                what,
                f"These parameters did not change: {', '.join(unchanged)}.",
                "Every parameter, weights AND biases (and norm parameters), gets new values.",
            )
        t.true(
            flags == [False] * len(names),
            what + ": requires_grad stays False",
            "Leave requires_grad as it was.",
        )
    with t.part("each parameter is drawn from N(its own mean, its own std)", points=1):
        for name, v, o in zip(names, values, old, strict=True):
            n, mean, std = o.numel(), float(o.mean()), float(o.std())
            what = f"'{name}' ({n} values) keeps about its mean {mean:.3g} and std {std:.3g}"
            if torch.equal(v.flatten().sort().values, o.flatten().sort().values):
                t.fail(
                    what,
                    "Its new values are the old ones in another order.",
                    "Draw fresh values from a normal distribution; a permutation keeps the values.",
                )
            t.close(
                float(v.mean()),
                mean,
                what,
                atol=5 * std / n**0.5,
                rtol=0.0,
                mistakes=[
                    (0.0, "Use each parameter's own mean (and std), not a standard normal."),
                ],
                hint="Draw from N(p.mean(), p.std()) of THIS parameter, before overwriting it.",
            )
            t.close(
                float(v.std()),
                std,
                what,
                atol=5 * std / (2 * n) ** 0.5 + 1e-7,
                rtol=0.0,
                mistakes=[(1.0, "Use each parameter's own std, not 1.")],
                hint="Draw from N(p.mean(), p.std()) of THIS parameter.",
            )
            if n >= 1000:
                inside = float(((v - mean).abs() < std).double().mean())
                t.close(
                    inside,
                    0.6827,
                    what + ": about 68% of the values within one std",
                    atol=5 * (0.6827 * 0.3173 / n) ** 0.5,
                    rtol=0.0,
                    mistakes=[
                        (
                            0.5774,
                            "The values look uniformly distributed: draw from a NORMAL "
                            "distribution (torch.randn or normal_).",
                        ),
                    ],
                    hint="Draw from a normal distribution.",
                )
    with t.part("each parameter gets its own noise", points=1):
        z = [((v - o.mean()) / o.std()).flatten() for v, o in zip(values, old, strict=True)]
        for i, j in combinations(range(len(z)), 2):
            if z[i].shape != z[j].shape:
                continue
            corr = _pearson(z[i], z[j])
            t.true(
                corr < 0.99,
                f"'{names[i]}' and '{names[j]}' (same shape) got independent "
                f"noise (their standardised values correlate at {corr:.3f})",
                "Create ONE generator per call and draw every parameter from it; reseeding "
                "for each parameter gives same-shape parameters identical noise.",
            )
    with t.part("a seeded generator: repeatable, and the global random state untouched", points=1):
        what = "the same seed on an identical module gives identical values"
        torch.manual_seed(t.seed(34))  # a different global random state must not matter
        again, _, _, rng_moved = _read_randomized(
            t, randomize_weights_, _frozen_module(seed), 0, what
        )
        t.true(
            all(torch.equal(a, b) for a, b in zip(values, again, strict=True)),
            what,
            "Draw from a torch.Generator seeded with `seed`, not from the global random state.",
        )
        t.true(
            not rng_moved,
            "the global random state is the same before and after the call",
            "Use torch.Generator().manual_seed(seed) and pass generator= to randn/normal_; "
            "torch.manual_seed would reset everybody else's random numbers.",
        )
        other, _, _, _ = _read_randomized(t, randomize_weights_, _frozen_module(seed), 1, what)
        t.true(
            not torch.equal(values[0], other[0]),
            "a different seed gives different values",
            "Seed the generator with the `seed` argument.",
        )


# ----- Exercise 1.3: layer attribution -----------------------------------------------------------
def _layer_reference(lm: LabModel, ids: Tensor, target: int) -> dict[str, Tensor]:
    """x . dlogit/dx at every block's input (resid_pre), and what the usual mistakes give."""
    from labkit.hooks import capture

    layers = range(lm.n_layers)
    with torch.enable_grad(), capture(lm, ["resid_pre", "resid_post"], keep_grad=True) as cache:
        x = lm.embed(ids).detach().requires_grad_(True)  # the frozen model needs a leaf
        out = lm.model(inputs_embeds=x, output_hidden_states=True)
        pre = [cache["resid_pre", layer] for layer in layers]
        post = [cache["resid_post", layer] for layer in layers]
        hidden = list(out.hidden_states[1:])  # after each block; the last one after the norm
        grads = torch.autograd.grad(
            out.logits[0, -1, target], pre + post + hidden, allow_unused=True
        )
    n = lm.n_layers

    def rows(acts: list[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
        return torch.stack(
            [
                (a * g).sum(-1)[0] if g is not None else torch.zeros(a.shape[1])
                for a, g in zip(acts, grads, strict=True)
            ]
        ).detach()

    g_pre = torch.stack([g[0] for g in grads[:n]])  # (n_layers, pos, d_model)
    return {
        "expected": rows(pre, grads[:n]),
        "resid_post": rows(post, grads[n : 2 * n]),
        "hidden_states[1:]": rows(hidden, grads[2 * n :]),
        "saliency": g_pre.norm(dim=-1).detach(),
        "gradient": g_pre.sum(-1).detach(),
    }


@check("Exercise 1.3: layer attribution", points=2)
def check_layer_attribution(layer_attribution: Callable, t: Checker) -> None:
    lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
    for part, (offset, n) in enumerate(((35, 6), (36, 9))):
        with t.part("a tiny transformer" if part == 0 else "a second, longer prompt", points=1):
            gen = _generator(t, offset)
            ids = _tiny_ids(lm, gen, n)
            target = int(torch.randint(3, lm.vocab_size, (1,), generator=gen))
            ref = _layer_reference(lm, ids, target)
            expected = ref["expected"]  # (n_layers, pos)
            mistakes = [
                (
                    ref["resid_post"],
                    "Off by one layer: use each block's INPUT (resid_pre; row 0 "
                    "is the embeddings), not its output.",
                ),
                (
                    ref["hidden_states[1:]"],
                    "hidden_states[1:] are the blocks' outputs (and the "
                    "last one is after the final norm): use each block's input.",
                ),
                (-expected, "Wrong sign: activation * gradient."),
                (
                    ref["saliency"],
                    "Multiply the activation by the gradient and sum over d_model; "
                    "the gradient's norm is saliency.",
                ),
                (ref["gradient"], "Multiply the gradient by the activation before summing."),
            ]
            what = (
                f"layer_attribution(lm, tokens, target_id) on a tiny {lm.family} model "
                f"({lm.n_layers} layers, {n} tokens)"
            )
            got = t.tensor(
                t.call(layer_attribution, lm, ids, target),
                what,
                shape=(lm.n_layers, n),
                hint="One row per layer (the residual stream entering it), one "
                "column per position: (n_layers, pos).",
            )
            t.close(
                got,
                expected,
                what,
                scale=_scale(expected),
                mistakes=mistakes,
                hint="Row l: sum over d_model of resid_pre[l] * d logit / d resid_pre[l], "
                "from one forward and one backward pass.",
            )


# ----- Exercise 1.11: Shapley values -------------------------------------------------------------
def _shapley(
    score: Callable,
    ids: Tensor,
    positions: Sequence[int],
    r: int,
    weight: Callable[[int, int], float],
) -> Tensor:
    """Sum over coalitions S of the other players of weight(|S|, n) * (v(S + i) - v(S))."""
    n = len(positions)
    coalitions = [c for k in range(n + 1) for c in combinations(range(n), k)]
    masks = [[positions[i] for i in range(n) if i not in c] for c in coalitions]  # replaced
    values = dict(zip(coalitions, score(_replaced(ids, masks, r)).double(), strict=True))
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for c in coalitions:
            if i not in c:
                with_i = tuple(sorted((*c, i)))
                out[i] += weight(len(c), n) * (values[with_i] - values[c])
    return out


def _shapley_weight(s: int, n: int) -> float:
    return factorial(s) * factorial(n - s - 1) / factorial(n)


@check("Exercise 1.11: exact Shapley values", points=2)
def check_shapley_values(shapley_values: Callable, t: Checker) -> None:
    with t.part("a scorer with interactions between tokens", points=1):
        score = _scorer(t, 37)
        ids = _scorer_ids(t, 38, 7)
        gen = _generator(t, 39)
        positions = (torch.randperm(6, generator=gen)[:4] + 1).tolist()
        r = 0
        expected = _shapley(score, ids, positions, r, _shapley_weight)
        full = score(ids)[0].double()
        none = score(_replaced(ids, [positions], r))[0].double()
        occl = full - score(_replaced(ids, [[p] for p in positions], r)).double()
        alone = (
            score(_replaced(ids, [[q for q in positions if q != p] for p in positions], r)).double()
            - none
        )
        mistakes = [
            (
                _shapley(score, ids, positions, r, lambda s, n: 1 / 2 ** (n - 1)),
                "You weighted every coalition equally (the Banzhaf value); Shapley weights "
                "a coalition of size s by s! (n - s - 1)! / n!.",
            ),
            (
                occl,
                "That is occlusion (each token removed from the full prompt); Shapley "
                "averages over every coalition of the other tokens.",
            ),
            (
                alone,
                "That is each token added to an empty coalition alone; Shapley averages "
                "over every coalition.",
            ),
            (
                (occl + alone) / 2,
                "Averaging 'removed from all' and 'added to none' is exact only "
                "without interactions of three or more tokens; sum over every coalition.",
            ),
            (-expected, "Wrong sign: v(S with i) - v(S)."),
            (
                _shapley(
                    score,
                    ids,
                    positions,
                    r,
                    lambda s, n: factorial(s) * factorial(n - s) / factorial(n),
                ),
                "The weight is s! (n - s - 1)! / n!, with n - s - 1.",
            ),
            (
                expected[torch.tensor(positions).argsort()],
                "Return the values in the order of `positions`, not sorted by position.",
            ),
        ]
        what = (
            f"shapley_values(score, tokens, positions={positions}, replacement_id={r}) on a "
            "scorer with interactions"
        )
        got = t.tensor(
            t.call(shapley_values, score, ids, torch.tensor(positions), r),
            what,
            shape=(len(positions),),
            hint="One value per entry of `positions`, in that order.",
        )
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=mistakes,
            hint="For each player i, add s! (n-s-1)!/n! * (v(S + i) - v(S)) over every "
            "coalition S of the other players; v(S) scores the tokens with the players "
            "outside S replaced.",
        )
        t.close(
            got.sum(),
            full - none,
            "efficiency: the values add up to score(tokens) - score(all listed positions replaced)",
            scale=_scale(expected),
        )
    with t.part("a tiny transformer's logit, positions out of order", points=1):
        lm = t.watch(_tiny(t.choice(TINY_FAMILIES)), "the tiny test model")
        gen = _generator(t, 40)
        ids = _tiny_ids(lm, gen, 6)
        target, r = int(torch.randint(3, lm.vocab_size, (1,), generator=gen)), lm.token_id(" ")
        score = _tiny_scorer(lm, target)
        positions = (torch.randperm(5, generator=gen)[:3] + 1).tolist()
        expected = _shapley(score, ids, positions, r, _shapley_weight)
        what = f"shapley_values on a tiny {lm.family} model, positions {positions}"
        got = t.tensor(
            t.call(shapley_values, score, ids, torch.tensor(positions), r),
            what,
            shape=(len(positions),),
        )
        t.close(
            got,
            expected,
            what,
            scale=_scale(expected),
            mistakes=[
                (
                    expected[torch.tensor(positions).argsort()],
                    "Return the values in the order of `positions`, not sorted by position.",
                ),
            ],
        )


# The grader's map: the name of each exercise's function in the notebook -> its check.
EXERCISES = {
    "saliency": check_saliency,
    "input_x_gradient": check_input_x_gradient,
    "layer_attribution": check_layer_attribution,
    "integrated_gradients": check_integrated_gradients,
    "completeness_gap": check_completeness_gap,
    "space_baseline": check_space_baseline,
    "layer_weighted_attention": check_layer_weighted_attention,
    "attention_rollout": check_attention_rollout,
    "attention_flow": check_attention_flow,
    "occlusion": check_occlusion,
    "shapley_values": check_shapley_values,
    "logit_difference_fn": check_logit_difference_fn,
    "deletion_curve": check_deletion_curve,
    "insertion_curve": check_insertion_curve,
    "spearman": check_spearman,
    "randomize_weights_": check_randomize_weights,
}
