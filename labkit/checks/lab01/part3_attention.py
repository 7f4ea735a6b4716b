"""Part 3: attention as attribution. Layer-weighted attention, rollout and flow."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import LAB, Call, compare_calls


def _shape(a: torch.Tensor) -> str:
    n_layers, n_heads, n_pos, _ = a.shape
    return f"{n_layers} layers, {n_heads} heads, {n_pos} positions"


# ----- Exercise 1.7 ------------------------------------------------------------------------------
@LAB.exercise("1.7", "layer-weighted attention", points=2)
def check_layer_weighted_attention(layer_weighted_attention, t: Checker) -> None:
    """Patterns of tiny models of two families and random ones (1 to 11 layers, 2 to 12
    positions), weights of any scale with zeros and one-hot ones, unsorted, with a repeat; then
    c * weights gives the same answer, and the answer sums to one."""
    hint = (
        "Take each layer's last row, attentions[:, :, -1, :], average it over heads, then "
        "average over layers with weights / weights.sum(). Shape (pos,)."
    )
    gen = kit.generator(t, 9)
    first, second = kit.families(t, 2, first="gpt2")
    with t.part("patterns of tiny models and random ones, weights of any scale", points=1):
        a1 = P.model_patterns(first, gen, t.choice([7, 6]), n_layers=3)
        w1 = 7 * torch.rand(3, generator=gen)
        w1[1] = 0.0
        a2 = P.model_patterns(second, gen, t.choice([10, 11]), n_layers=t.choice([11, 10]))
        w2 = 0.01 * torch.linspace(1.0, 2.0, a2.shape[0])
        a3 = P.random_patterns(gen, 1, 1, 2)
        a4 = P.random_patterns(gen, 4, 3, t.choice([12, 9, 10]))
        w4 = torch.zeros(4)
        w4[t.choice([2, 1, 3])] = 1.0
        a5 = P.random_patterns(gen, *a4.shape[:3])
        w5 = torch.rand(4, generator=gen) + 0.1
        calls = [
            Call((a1, w1), f"{first} patterns ({_shape(a1)}), weights {w1.tolist()}"),
            Call((a2, w2), f"{second} patterns ({_shape(a2)}), weights 0.01 .. 0.02"),
            Call((a3, torch.tensor([2.5])), f"random patterns ({_shape(a3)}), weight [2.5]"),
            Call((a4, w4), f"random patterns ({_shape(a4)}), one-hot weights {w4.tolist()}"),
            Call((a5, w5), f"other random patterns of that shape, weights {w5.tolist()}"),
            Call((a1, w1), f"the {first} patterns and weights again", repeat=True),
        ]
        compare_calls(t, layer_weighted_attention, "layer_weighted_attention", calls, hint=hint)
    with t.part("the scale of the weights does not matter; the answer sums to one", points=1):
        a = P.random_patterns(gen, 5, 4, t.choice([6, 8]))
        w = 0.5 + torch.rand(5, generator=gen)
        calls = [
            Call((a, w), f"random patterns ({_shape(a)}), weights {w.tolist()}"),
            Call((a, 1000 * w), "the same patterns, the weights times 1000"),
        ]
        got, scaled = compare_calls(
            t, layer_weighted_attention, "layer_weighted_attention", calls, hint=hint
        )
        t.close(scaled, got, "the same answer for weights times 1000", hint=hint)
        t.close(got.sum(), 1.0, "the answer sums to one", hint=hint)


# ----- Exercise 1.8 ------------------------------------------------------------------------------
@LAB.exercise("1.8", "attention rollout", points=3)
def check_attention_rollout(attention_rollout, t: Checker) -> None:
    """Random causal patterns with heads that differ (1 to 11 layers, 3 to 10 positions,
    unsorted, a repeat); rows that do not sum to one and float64 patterns; then tiny models'
    patterns, whose rollout has rows that sum to one and nothing above the diagonal."""
    hint = (
        "A_hat = 0.5 * (mean over heads) + 0.5 * I, each row divided by its sum; then "
        "R = A_hat_L @ ... @ A_hat_1 (later layers on the left). Shape (pos, pos)."
    )
    gen = kit.generator(t, 10)
    with t.part("random patterns with heads that differ, 1 to 11 layers", points=1):
        first_shape = (3, 4, t.choice([6, 5]))
        shapes = [first_shape, (t.choice([11, 10]), 2, 4), (1, 1, 3), (2, 3, t.choice([10, 12]))]
        patterns = [P.random_patterns(gen, *shape) for shape in shapes]
        calls = [Call((a,), f"random causal patterns, {_shape(a)}") for a in patterns]
        calls.append(Call(calls[0].args, calls[0].what + ", again after the others", repeat=True))
        compare_calls(t, attention_rollout, "attention_rollout", calls, hint=hint)
    with t.part("rows that do not sum to one; float64 patterns", points=1):
        a = P.without_sink(P.random_patterns(gen, *first_shape))  # an earlier problem's size
        b = P.without_sink(P.random_patterns(gen, 3, 2, t.choice([11, 9]), dtype=torch.float64))
        calls = [
            Call((a,), f"patterns whose first column was zeroed ({_shape(a)})"),
            Call((b,), f"float64 patterns, first column zeroed ({_shape(b)})"),
        ]
        compare_calls(t, attention_rollout, "attention_rollout", calls, hint=hint)
    with t.part("tiny models' patterns: rows sum to one, nothing above the diagonal", points=1):
        first, second = kit.families(t, 2, first="gpt2")
        patterns = [
            P.model_patterns(first, gen, t.choice([8, 7]), n_layers=3),
            P.model_patterns(second, gen, 5, n_layers=t.choice([10, 11])),
        ]
        calls = [
            Call((a,), f"a tiny {family} model's patterns ({_shape(a)})")
            for family, a in zip([first, second], patterns, strict=True)
        ]
        for got in compare_calls(t, attention_rollout, "attention_rollout", calls, hint=hint):
            n_pos = got.shape[0]
            t.close(
                got.sum(-1), torch.ones(n_pos), "every row of the rollout sums to one", hint=hint
            )
            t.close(
                got.triu(1),
                torch.zeros(n_pos, n_pos),
                "causal patterns roll out to zeros above the diagonal",
                hint=hint,
            )


# ----- Exercise 1.9 ------------------------------------------------------------------------------
@LAB.exercise("1.9", "attention flow", points=3, timeout=20)
def check_attention_flow(attention_flow, t: Checker) -> None:
    """Random patterns with many paths (1 to 10 layers, 3 to 10 positions, unsorted, a repeat)
    with the default target; given targets, positive and negative, on rows that do not sum to
    one; then tiny models' patterns: every flow between 0 and 1, none from after the target."""
    hint = (
        "Nodes (layer, token); an edge (l, j) -> (l + 1, i) with capacity A_hat_l[i, j] (A_hat as "
        "in rollout); score j = max flow from (0, j) to (n_layers, target). Shape (pos,)."
    )
    gen = kit.generator(t, 11)
    with t.part("many paths between tokens, the default target", points=1):
        shapes = [
            (3, 3, t.choice([5, 6])),
            (t.choice([10, 11]), 2, 3),
            (2, 4, t.choice([10, 9])),
            (1, 2, 4),
        ]
        patterns = [P.random_patterns(gen, *shape) for shape in shapes]
        calls = [
            Call((a,), f"attention_flow(attentions) on random patterns, {_shape(a)}")
            for a in patterns
        ]
        calls.append(Call(calls[0].args, calls[0].what + ", again after the others", repeat=True))
        compare_calls(t, attention_flow, "attention_flow", calls, hint=hint)
    with t.part("a given target, positive or negative; rows that do not sum to one", points=1):
        a = P.without_sink(P.random_patterns(gen, 3, 2, t.choice([6, 7])))
        b = P.random_patterns(gen, 4, 3, 5)
        calls = [
            Call((a, 2), f"attention_flow(attentions, 2), first column zeroed, {_shape(a)}"),
            Call((b, -2), f"attention_flow(attentions, -2) on random patterns, {_shape(b)}"),
            Call((a, -1), "the first patterns, target=-1 given"),
        ]
        compare_calls(t, attention_flow, "attention_flow", calls, hint=hint)
    with t.part("tiny models' patterns: flows between 0 and 1, none after the target", points=1):
        first, second = kit.families(t, 2, first="gpt2")
        a = P.model_patterns(first, gen, t.choice([6, 7]), n_layers=3)
        b = P.model_patterns(second, gen, 9, n_layers=2)
        target = t.choice([3, 2, 4])
        calls = [
            Call((a, target), f"a tiny {first} model's patterns, target {target}"),
            Call((b,), f"a tiny {second} model's patterns ({_shape(b)})"),
        ]
        outs = compare_calls(t, attention_flow, "attention_flow", calls, hint=hint)
        for call, got in zip(calls, outs, strict=True):
            last = call.args[1] % got.shape[0] if len(call.args) > 1 else got.shape[0] - 1
            t.true(
                bool(((got >= -1e-6) & (got <= 1 + 1e-6)).all()),
                f"{call.what}: every flow is between 0 and 1 (the capacities into the target)",
                hint,
            )
            t.close(
                got[last + 1 :],
                torch.zeros(got.shape[0] - last - 1),
                f"{call.what}: tokens after the target have no path to it",
                hint=hint,
            )
