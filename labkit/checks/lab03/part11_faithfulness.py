"""Part 11 of lab 03: how faithful is the circuit (exercise 3.16)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, prompts, ids and heads), and must give "
    "the same answer as it did then."
)


def _ids(p: P.Pair) -> tuple:
    return (p.lm, p.clean, p.corrupted, p.targets, p.foils)


def _case(t: Checker, fn: Callable, p: P.Pair, heads, repeat=False, note=""):
    want = t.expected("circuit_faithfulness", *_ids(p), heads)
    wrong = t.mistakes("circuit_faithfulness", *_ids(p), heads)
    what = (
        f"circuit_faithfulness(lm, clean, corrupted, target_ids, foil_ids, heads={heads}) on "
        f"{p.describe()}{note}"
    )
    got = t.tensor(
        t.call(fn, *_ids(p), heads),
        what,
        shape=(p.batch,),
        hint="One value per prompt pair: (batch,).",
    )
    t.close(
        got,
        want,
        f"{what}: per pair, (LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted), where the "
        "circuit run is the clean prompt with every head outside the set given its corrupted "
        "output",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )


@LAB.exercise("3.16", "faithfulness of a circuit", points=2)
def check_circuit_faithfulness(circuit_faithfulness: Callable, t: Checker) -> None:
    """A grouped-query model (three prompt pairs) and a model of another family with more than
    9 layers and positions (two pairs), sets in no sorted order with two heads of one layer and
    a repeat, the same prompts with other targets, the first call repeated; and the definition:
    keeping every head changes nothing (1 for every pair), and keeping none makes the last
    position the corrupted run's (0 for every pair: the last token is the same in both
    prompts)."""
    grouped = P.model(t, t.choice(["llama", "qwen2"]), 1, n_heads=6, n_kv_heads=t.choice([2, 3]))
    other = P.model(t, t.choice(["gpt2", "gpt_neox"]), 2, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 161, batch=3, n_pos=t.choice([6, 7, 5]), keep_last=True)
    o = P.pair(t, other, 162, batch=2, n_pos=t.choice([10, 11]), keep_last=True)
    g2 = P.retarget(t, g, 163, as_tensor=True)
    heads_g = P.heads_of(t, grouped, 164, t.choice([4, 5]), repeat=True)
    heads_o = P.heads_of(t, other, 165, t.choice([6, 5]))
    with t.part("the share of each pair's logit difference that the heads recover", points=1):
        _case(t, circuit_faithfulness, g, heads_g)
        _case(t, circuit_faithfulness, o, heads_o)
        _case(
            t,
            circuit_faithfulness,
            g2,
            heads_g,
            note=" (the same prompts as an earlier call, other target and foil ids)",
        )
        _case(t, circuit_faithfulness, g, heads_g[1:3])
    with t.part("the definition: every head keeps 1, no head 0; the first call again", points=1):
        for p in (o, g):
            every = [
                (layer, head) for layer in range(p.lm.n_layers) for head in range(p.lm.n_heads)
            ]
            for heads, value in [(every[::-1], 1.0), ([], 0.0)]:
                kept = "every head" if heads else "no head"
                what = f"circuit_faithfulness(..., heads=<{kept}>) on {p.describe()}"
                got = t.tensor(
                    t.call(circuit_faithfulness, *_ids(p), heads), what, shape=(p.batch,)
                )
                t.close(
                    got,
                    torch.full((p.batch,), value),
                    f"{what}: {kept} kept is {value:g} for every pair",
                    atol=1e-3,
                )
        _case(t, circuit_faithfulness, g, heads_g, repeat=True)
