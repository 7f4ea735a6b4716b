"""Part 1: gradients. Saliency, input x gradient and attribution layer by layer."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import LAB, Call, compare_calls, magnitude

PER_POSITION = "Return one score per position, shape (pos,): reduce over d_model, drop the batch."


def gradient_calls(t: Checker, name: str, offset: int) -> list[Call]:
    """Functions of embeddings in an unsorted order of sizes (past 9 positions, and 1), on a
    smooth f, a quadratic and tiny models of three families (two of them of one size), the
    smooth f at another input too, and the first problem again at the end."""
    gen = kit.generator(t, offset)
    first, second, third = kit.families(t, 3, first="gpt2")
    f1, x1 = P.smooth(gen, t.choice([12, 10, 14]), t.choice([5, 3, 8]))
    n_pos = t.choice([4, 6, 3])
    f2, x2, _ = P.token_logit(t, first, gen, n_pos)
    f3 = t.watch(P.Quadratic(torch.randn(1, 1, 3, generator=gen)), "the test function")
    x3 = torch.randn(1, 1, 3, generator=gen)
    f4, x4, _ = P.token_logit(t, second, gen, t.choice([11, 13, 10]))
    f5, x5, _ = P.token_logit(t, third, gen, n_pos)
    t.watch(f1, "the test function")
    calls = [
        Call((f1, x1), f"a smooth nonlinear f of {x1.shape[1]} positions, d = {x1.shape[2]}"),
        Call((f2, x2), f"a tiny {first} model's logit of one token, {n_pos} positions"),
        Call((f3, x3), "f(e) = sum(w * e**2) on one position"),
        Call((f4, x4), f"a tiny {second} model, {x4.shape[1]} positions"),
        Call((f5, x5), f"a tiny {third} model, {n_pos} positions"),
        Call((f1, 0.5 * x1.flip(1)), "the first smooth f at another input"),
        Call(
            (f1, x1), "the first smooth f at its first input again, after the others", repeat=True
        ),
    ]
    for k, call in enumerate(calls):  # gradients piled up on a leaf kept for each size
        same = [c.args for c in calls[:k] if c.args[1].shape == call.args[1].shape]
        if same:
            flat = [a for args in [*same, call.args] for a in args]
            call.more = t.mistakes(name + "@after", *flat)
    return calls


def dead_smooth(gen: torch.Generator, n_pos: int, dead: list[int]):
    """A smooth f that does not depend on the positions in ``dead``, and an input."""
    f, x = P.smooth(gen, n_pos, 4)
    for name in ("w", "u"):
        getattr(f, name)[dead] = 0.0
    return f, x


# ----- Exercise 1.1 ------------------------------------------------------------------------------
@LAB.exercise("1.1", "saliency", points=2)
def check_saliency(saliency, t: Checker) -> None:
    """Saliency on smooth functions and tiny models of three families (sizes from 1 to past 9
    positions, unsorted, the first problem repeated at the end); then its definition: a norm
    (never negative), zero where f ignores a position, and |c| times larger for c f."""
    hint = "Saliency is the L2 norm over d_model of the gradient of f at the input. " + PER_POSITION
    with t.part("smooth functions and tiny models of three families", points=1):
        compare_calls(t, saliency, "saliency", gradient_calls(t, "saliency", 1), hint=hint)
    with t.part("the definition: a norm of the gradient, zero where f ignores a position", 1):
        gen = kit.generator(t, 2)
        dead = [1, 4]
        f, x = dead_smooth(gen, t.choice([6, 5, 9]), dead)
        t.watch(f, "the test function")
        (got,) = compare_calls(
            t,
            saliency,
            "saliency",
            [Call((f, x), f"a smooth f that ignores positions {dead}")],
            hint=hint,
        )
        t.true(bool((got >= 0).all()), "saliency is never negative", hint)
        t.close(got[dead], torch.zeros(len(dead)), f"positions {dead}, which f ignores, score 0")
        scaled = t.watch(P.Scaled(f, -2.5), "the test function")
        again = t.call(saliency, scaled, x)
        t.close(
            again,
            2.5 * got,
            "saliency of -2.5 f is 2.5 times the saliency of f",
            scale=magnitude(got),
            hint=hint,
        )


# ----- Exercise 1.2 ------------------------------------------------------------------------------
@LAB.exercise("1.2", "input x gradient", points=2)
def check_input_x_gradient(input_x_gradient, t: Checker) -> None:
    """Input x gradient on the problems of saliency's check; then Euler's theorem: for f
    homogeneous of degree k (linear: 1, quadratic: 2), the scores add up to k f(x)."""
    hint = "Multiply the input by the gradient at the input, element-wise; sum over d_model. "
    with t.part("smooth functions and tiny models of three families", points=1):
        calls = gradient_calls(t, "input_x_gradient", 3)
        compare_calls(t, input_x_gradient, "input_x_gradient", calls, hint=hint + PER_POSITION)
    with t.part("Euler: the scores of a degree-k homogeneous f add up to k f(x)", points=1):
        gen = kit.generator(t, 4)
        n_pos = t.choice([10, 7, 12])
        linear = P.Linear(torch.randn(1, n_pos, 3, generator=gen))
        quadratic = P.Quadratic(torch.randn(1, 2, 5, generator=gen))
        cases = [
            (linear, torch.randn(1, n_pos, 3, generator=gen), 1),
            (quadratic, torch.randn(1, 2, 5, generator=gen), 2),
        ]
        for f, x, k in cases:
            t.watch(f, "the test function")
            what = f"a {['', 'linear', 'quadratic'][k]} f of {x.shape[1]} positions"
            (got,) = compare_calls(
                t, input_x_gradient, "input_x_gradient", [Call((f, x), what)], hint=hint
            )
            with torch.no_grad():
                total = k * float(f(x))
            t.close(
                got.sum(),
                total,
                f"{what}: the scores add up to {k} f(x) = {total:.4g}",
                scale=magnitude(total),
                hint=hint,
            )


# ----- Exercise 1.3 ------------------------------------------------------------------------------
@LAB.exercise("1.3", "layer attribution", points=2)
def check_layer_attribution(layer_attribution, t: Checker) -> None:
    """Tiny models of three families with 1 to 11 layers and 2 to 12 positions; then one
    model with two targets (neither its top prediction), another prompt of the same length and
    a repeat, so the answer must follow the target and the tokens."""
    hint = (
        "Row l: sum over d_model of resid_pre[l] * d logit / d resid_pre[l] (the residual "
        "stream entering block l; row 0 is the embeddings), shape (n_layers, pos)."
    )
    gen = kit.generator(t, 5)
    first, second, third = kit.families(t, 3, first="gpt2")
    shapes = [
        (first, t.choice([3, 4, 2]), t.choice([7, 5, 9])),
        (second, t.choice([11, 10, 12]), t.choice([4, 3, 5])),
        (third, 1, t.choice([12, 10, 11])),
    ]
    with t.part("tiny models of three families, 1 to 11 layers", points=1):
        calls = []
        for family, n_layers, n_pos in shapes:
            lm = P.tiny(t, family, n_layers=n_layers)
            ids = kit.token_ids(lm, gen, n_pos)
            target = P.other_target(lm, ids, gen)
            what = f"a tiny {family} model, {n_layers} layers, {n_pos} tokens, target {target}"
            calls.append(Call((lm, ids, target), what))
        calls.append(Call(calls[1].args, calls[1].what + ", again after the others", repeat=True))
        compare_calls(t, layer_attribution, "layer_attribution", calls, hint=hint)
    with t.part("the target and the tokens matter", points=1):
        family, n_layers, n_pos = shapes[0]
        lm = P.tiny(t, family, n_layers=n_layers)
        ids, other = kit.token_ids(lm, gen, n_pos), kit.token_ids(lm, gen, n_pos)
        a = P.other_target(lm, ids, gen)
        b = P.other_target(lm, ids, gen, avoid=a)
        calls = [
            Call((lm, ids, a), f"tokens {ids[0].tolist()}, target {a}"),
            Call((lm, other, a), f"other tokens of the same length, target {a}"),
            Call((lm, ids, b), f"the first tokens, another target {b}"),
            Call((lm, ids, a), f"the first tokens and target {a} again", repeat=True),
        ]
        compare_calls(t, layer_attribution, "layer_attribution", calls, hint=hint)
