"""Part 2: integrated gradients, the completeness gap and the space baseline."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import LAB, Call, compare_calls, magnitude

IDS = "You returned token ids: return their embeddings, (1, pos, d_model)."
PER_POSITION = "Return one score per position, shape (pos,): reduce over d_model, drop the batch."


def _change(f, x: torch.Tensor, b: torch.Tensor) -> float:
    with torch.no_grad():
        return float(f(x).sum()) - float(f(b).sum())


# ----- Exercise 1.4 ------------------------------------------------------------------------------
@LAB.exercise("1.4", "integrated gradients", points=4, timeout=20)
def check_integrated_gradients(integrated_gradients, t: Checker) -> None:
    """IG on a linear f (exact for any n_steps, and complete), on smooth functions with 1 to 6
    steps, on tiny models of three families, and with n_steps left at its default (32)."""
    hint = (
        "Average the gradients at alpha_k = (k + 0.5) / n_steps, k = 0..n_steps-1, on the "
        "straight path b + alpha (x - b); multiply by (x - b) and sum over d_model. " + PER_POSITION
    )
    gen = kit.generator(t, 6)
    with t.part("a linear f: exact for any n_steps, and complete", points=1):
        n_pos = t.choice([10, 6, 12])
        f = t.watch(P.Linear(torch.randn(1, n_pos, 4, generator=gen), 3.0), "the test function")
        x, b = torch.randn(2, 1, n_pos, 4, generator=gen)
        zero = torch.zeros_like(x)
        calls = [
            Call((f, x, b, 1), f"f(e) = sum(w * e) + 3 on {n_pos} positions, n_steps=1"),
            Call((f, x, zero, 2), "the same f, a zero baseline, n_steps=2"),
            Call((f, x, b, 7), "the same f, the first baseline, n_steps=7"),
        ]
        outs = compare_calls(t, integrated_gradients, "integrated_gradients", calls, hint=hint)
        for call, got in zip(calls, outs, strict=True):
            change = _change(f, x, call.args[2])
            t.close(
                got.sum(),
                change,
                f"{call.what}: the scores add up to f(x) - f(b) = {change:.4g} (completeness)",
                scale=magnitude(change),
                hint=hint,
            )
    with t.part("smooth non-polynomial functions, n_steps 3, 1 and 6", points=1):
        f, x, b = P.wavy(gen, t.choice([5, 11, 3]), t.choice([4, 2, 6]), phase=5.0)
        g, y = P.smooth(gen, t.choice([12, 2, 9]), 3)
        for h in (f, g):
            t.watch(h, "the test function")
        c = 0.5 * torch.randn(y.shape, generator=gen)
        what = f"f(e) = sum_p c_p sin(<w_p, e_p>) of {x.shape[1]} positions"
        calls = [
            Call((f, x, b, 3), f"{what}, n_steps=3"),
            Call((g, y, c, 1), f"a smooth f of {y.shape[1]} positions, n_steps=1"),
            Call((f, x, b, 6), f"{what}, n_steps=6"),
            Call((f, x, b, 3), f"{what}, n_steps=3 again after the others", repeat=True),
        ]
        compare_calls(t, integrated_gradients, "integrated_gradients", calls, hint=hint)
    with t.part("tiny models of three families", points=1):
        n_steps = t.choice([8, 5, 12])
        calls = []
        for family, n_pos in zip(
            kit.families(t, 3, first="gpt2"), [6, t.choice([11, 13]), 2], strict=True
        ):
            f, x, b = P.token_logit(t, family, gen, n_pos)
            what = f"a tiny {family} model's logit, {n_pos} positions, n_steps={n_steps}"
            calls.append(Call((f, x, b, n_steps), what))
        compare_calls(t, integrated_gradients, "integrated_gradients", calls, hint=hint)
    with t.part("n_steps left at its default, 32", points=1):
        f, x, b = P.wavy(gen, t.choice([4, 7]), 3)
        t.watch(f, "the test function")
        g, y, c = P.token_logit(t, kit.families(t, 1, first="llama")[0], gen, 5)
        calls = [
            Call(
                (f, x, b),
                "integrated_gradients(f, x, b), no n_steps, on f(e) = sum_p "
                "c_p sin(<w_p, e_p>) along a path of several periods",
            ),
            Call((g, y, c), "integrated_gradients(f, x, b) on a tiny model, no n_steps"),
        ]
        compare_calls(t, integrated_gradients, "integrated_gradients", calls, hint=hint)


# ----- Exercise 1.5 ------------------------------------------------------------------------------
def _scores(gen: torch.Generator, n_pos: int, total: float, spread: float) -> torch.Tensor:
    """Mixed-sign scores (n_pos,) that add up to ``total``; the first one is not zero."""
    scores = spread * torch.randn(n_pos, generator=gen)
    scores[0] = spread * (1.0 + float(torch.rand(1, generator=gen)))
    return scores + (total - float(scores.sum())) / n_pos


@LAB.exercise("1.5", "completeness gap", points=2)
def check_completeness_gap(completeness_gap, t: Checker) -> None:
    """The gap on smooth functions and tiny models, with scores that claim more and less than
    f(x) - f(b); then shifting the scores by d shifts the gap by sum(d)."""
    hint = "The gap is sum(attributions) - (f(embeddings) - f(baseline)), a float, with its sign."
    gen = kit.generator(t, 7)
    first, second = kit.families(t, 2, first="gpt2")
    with t.part("scores that claim more, and less, than f(x) - f(b)", points=1):
        f1, x1 = P.smooth(gen, t.choice([12, 10]), 3)
        t.watch(f1, "the test function")
        b1 = 0.5 * torch.randn(x1.shape, generator=gen)
        n_pos = t.choice([5, 3])
        f2, x2, b2 = P.token_logit(t, first, gen, n_pos)
        f3, x3, b3 = P.token_logit(t, second, gen, 1)
        calls = []
        for f, x, b, excess, what in [
            (f1, x1, b1, 0.8, "a smooth f"),
            (f2, x2, b2, -0.6, f"a tiny {first} model"),
            (f3, x3, b3, 0.5, f"a tiny {second} model, one position"),
        ]:
            change = _change(f, x, b)
            spread = max(abs(change), 1.0)
            scores = _scores(gen, x.shape[1], change + excess * spread, spread)
            calls.append(
                Call(
                    (f, x, b, scores),
                    f"{what}, scores that add up to "
                    f"{float(scores.sum()):.4g}, f(x) - f(b) = {change:.4g}",
                )
            )
        calls.append(Call(calls[0].args, calls[0].what + ", again after the others", repeat=True))
        compare_calls(t, completeness_gap, "completeness_gap", calls, hint=hint, scalar=True)
    with t.part("shifting the scores by d shifts the gap by sum(d)", points=1):
        f, x, b = P.token_logit(t, second, gen, n_pos)  # the size of an earlier problem
        scores = torch.randn(x.shape[1], generator=gen)
        shift = torch.randn(x.shape[1], generator=gen)
        calls = [
            Call((f, x, b, scores), f"a tiny {second} model, {x.shape[1]} positions"),
            Call(
                (f, x, b, scores + shift), f"the same, scores shifted by {float(shift.sum()):.4g}"
            ),
        ]
        got, shifted = compare_calls(
            t, completeness_gap, "completeness_gap", calls, hint=hint, scalar=True
        )
        t.close(
            shifted - got,
            float(shift.sum()),
            "the gap moves with the sum of the scores",
            scale=magnitude(got),
            hint=hint,
        )


# ----- Exercise 1.6 ------------------------------------------------------------------------------
@LAB.exercise("1.6", "the space baseline", points=2)
def check_space_baseline(space_baseline, t: Checker) -> None:
    """Tiny models of three families, prompts of 1 to 12 tokens (repeats, a ' ' inside, two of
    the same length), in an unsorted order with a repeat; then first tokens that are not the
    anchor, and positions 1.. that are all the same vector."""
    hint = (
        "Embed a copy of the tokens whose positions 1.. are lm.token_id(' '); position 0 keeps "
        "the input's token. Shape (1, pos, d_model)."
    )
    gen = kit.generator(t, 8)
    first, second, third = kit.families(t, 3, first="gpt2")

    def prompt(family: str, n_pos: int, start: int | None = None) -> Call:
        lm = P.tiny(t, family)
        ids = kit.token_ids(lm, gen, n_pos)
        if n_pos > 3:
            ids[0, 2] = lm.token_id(" ")
        if start is not None:
            ids[0, 0] = start
        return Call(
            (lm, ids),
            f"space_baseline(lm, tokens) on a tiny {family} model, tokens {ids[0].tolist()}",
        )

    with t.part("tiny models of three families, prompts of 1 to 12 tokens", points=1):
        n = t.choice([6, 5, 8])
        calls = [
            prompt(first, n),
            prompt(second, t.choice([12, 11, 13])),
            prompt(third, 1),
            prompt(second, n),
        ]
        calls.append(Call(calls[1].args, calls[1].what + ", again", repeat=True))
        compare_calls(t, space_baseline, "space_baseline", calls, hint=hint, on_integer=IDS)
    with t.part("a first token that is not the anchor", points=1):
        start = int(torch.randint(3, 259, (1,), generator=gen))
        calls = [
            prompt(second, t.choice([7, 4]), start=start),
            prompt(first, 3, start=P.tiny(t, first).token_id(" ")),
        ]
        outs = compare_calls(t, space_baseline, "space_baseline", calls, hint=hint, on_integer=IDS)
        for got in outs:
            rest = got[0, 1:]
            t.close(
                rest,
                rest[:1].expand_as(rest),
                "positions 1.. all hold the same vector",
                scale=magnitude(got),
                hint=hint,
            )
