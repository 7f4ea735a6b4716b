"""Part 4: perturbation. Occlusion and exact Shapley values."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import LAB, Call, compare_calls, magnitude


def _replaced(tokens: torch.Tensor, positions, replacement_id: int) -> torch.Tensor:
    out = tokens.clone()
    out[0, list(positions)] = replacement_id
    return out


# ----- Exercise 1.10 -----------------------------------------------------------------------------
@LAB.exercise("1.10", "occlusion", points=2)
def check_occlusion(occlusion, t: Checker) -> None:
    """A nonlinear, position-aware scorer and tiny models' logits of two families (1 to 13
    positions, repeated tokens, replacements absent from or present in the prompt), unsorted,
    with a repeat; then a token replaced by itself, and positions the score ignores, score 0."""
    hint = (
        "Entry i is score(tokens) - score(tokens with position i set to replacement_id): "
        "replace (never delete) one position per row. Shape (pos,)."
    )
    gen = kit.generator(t, 12)
    first, second = kit.families(t, 2, first="gpt2")
    with t.part("a nonlinear scorer and tiny models' logits", points=1):
        score = P.scorer(t, gen)
        ids = P.scorer_ids(gen, t.choice([12, 10, 13]))
        short = P.scorer_ids(gen, t.choice([4, 5]))
        n_pos = t.choice([6, 7])
        s1, ids1 = P.tiny_score(t, first, gen, n_pos)
        s2, ids2 = P.tiny_score(t, second, gen, 1)
        space = P.tiny(t, first).token_id(" ")
        present = int(short[0, 1])
        calls = [
            Call((score, ids, 0), f"a nonlinear scorer, tokens {ids[0].tolist()}, replacement 0"),
            Call((s1, ids1, space), f"a tiny {first} model's logit, {ids1.shape[1]} tokens"),
            Call((s2, ids2, space), f"a tiny {second} model's logit, one token"),
            Call(
                (score, short, present),
                f"the scorer, tokens {short[0].tolist()}, "
                f"replacement {present} (a token of the prompt)",
            ),
            Call((score, ids, 0), "the first problem again, after the others", repeat=True),
        ]
        compare_calls(t, occlusion, "occlusion", calls, hint=hint)
    with t.part("a token replaced by itself, and positions the score ignores, score 0", points=1):
        dead = [2, 5]
        score = P.scorer(t, gen, dead=tuple(dead))
        ids = P.scorer_ids(gen, n_pos)  # the size of an earlier problem
        same = t.choice([3, 1, 4])
        call = Call(
            (score, ids, int(ids[0, same])),
            f"a scorer that ignores positions {dead}, tokens {ids[0].tolist()}, "
            f"replacement {int(ids[0, same])} (the token at position {same})",
        )
        (got,) = compare_calls(t, occlusion, "occlusion", [call], hint=hint)
        zero = [same, *dead]
        t.close(got[zero], torch.zeros(len(zero)), f"entries {zero} are zero", hint=hint)


# ----- Exercise 1.11 -----------------------------------------------------------------------------
@LAB.exercise("1.11", "exact Shapley values", points=2)
def check_shapley_values(shapley_values, t: Checker) -> None:
    """A scorer with interactions and tiny models' logits of two families, 1 to 6 players out of
    order (positions past 9, players whose tokens repeat), unsorted, with a repeat; then
    efficiency (the values add up to score(tokens) - score(every player replaced)) and a
    player the score ignores (value 0)."""
    hint = (
        "phi_i = sum over coalitions S of the other players of |S|! (n - |S| - 1)! / n! * "
        "(v(S + i) - v(S)), v(S) = score with the players outside S replaced; in the order of "
        "`positions`. Shape (n,)."
    )
    gen = kit.generator(t, 13)
    first, second = kit.families(t, 2, first="gpt2")
    with t.part("a scorer with interactions and tiny models' logits", points=1):
        score = P.scorer(t, gen)
        n_pos = t.choice([12, 13, 11])
        ids = P.scorer_ids(gen, n_pos)
        players = P.unsorted(gen, list(range(n_pos)), 4, keep=(0, n_pos - 1))
        s1, ids1 = P.tiny_score(t, first, gen, 6)
        players1 = P.unsorted(gen, [1, 2, 3, 4, 5], 3)
        short = P.scorer_ids(gen, 5)
        s2, ids2 = P.tiny_score(t, second, gen, t.choice([8, 9]))
        players2 = P.unsorted(gen, list(range(ids2.shape[1])), 6, keep=(1, ids2.shape[1] - 1))
        space = P.tiny(t, first).token_id(" ")
        calls = [
            Call(
                (score, ids, players, 0),
                f"a nonlinear scorer, tokens {ids[0].tolist()}, "
                f"players {players.tolist()}, replacement 0",
            ),
            Call(
                (s1, ids1, players1, space),
                f"a tiny {first} model's logit, players {players1.tolist()}",
            ),
            Call((score, short, torch.tensor([2]), 0), "the scorer, one player: [2]"),
            Call(
                (s2, ids2, players2, space),
                f"a tiny {second} model's logit, players {players2.tolist()}",
            ),
            Call(
                (score, ids, players, 0), "the first problem again, after the others", repeat=True
            ),
        ]
        compare_calls(t, shapley_values, "shapley_values", calls, hint=hint)
    with t.part("efficiency, and a player the score ignores", points=1):
        dead = t.choice([4, 2])
        score = P.scorer(t, gen, dead=(dead,))
        ids = P.scorer_ids(gen, 7)
        players = P.unsorted(gen, [1, 2, 3, 4, 5, 6], 4, keep=(dead,))  # as many as before
        what = f"a scorer that ignores position {dead}, players {players.tolist()}"
        (got,) = compare_calls(
            t, shapley_values, "shapley_values", [Call((score, ids, players, 0), what)], hint=hint
        )
        with torch.no_grad():
            total = float(score(ids)[0] - score(_replaced(ids, players.tolist(), 0))[0])
        t.close(
            got.sum(),
            total,
            f"{what}: the values add up to score(tokens) - score(every "
            f"player replaced) = {total:.4g} (efficiency)",
            scale=magnitude(got),
            hint=hint,
        )
        index = players.tolist().index(dead)
        t.close(
            got[index],
            0.0,
            f"{what}: the player at position {dead}, which the score ignores, gets 0",
            scale=magnitude(got),
            hint=hint,
        )
