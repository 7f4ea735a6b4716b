"""Part 4: the mistakes of occlusion and of exact Shapley values."""

from __future__ import annotations

from itertools import combinations
from math import factorial

import torch

from labkit.grading.answer_keys.lab01.key import KEY


def rows(tokens, masks, r: int) -> torch.Tensor:
    """One row per mask: the tokens with the listed positions set to r."""
    out = tokens.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        out[row, list(positions)] = r
    return out


def by_value(tokens, masks, r: int) -> torch.Tensor:
    """Like :func:`rows`, but every occurrence of the listed positions' tokens is replaced."""
    out = tokens.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        for p in positions:
            out[row][tokens[0] == tokens[0, p]] = r
    return out


def deleted(tokens, positions) -> torch.Tensor:
    return tokens[:, [i for i in range(tokens.shape[1]) if i not in set(positions)]]


def scored(score, ids) -> torch.Tensor:
    with torch.no_grad():
        return score(ids).double()


# ----- Exercise 1.10: occlusion ------------------------------------------------------------------
def _occlusion_mistake(hint: str, masks, r=None, build=rows) -> None:
    @KEY.mistake("occlusion", hint)
    def mistake(sol, score, tokens, replacement_id):
        n = tokens.shape[1]
        if n < 2:
            raise ValueError("one token: nothing to tell apart")
        used = replacement_id if r is None else r
        return scored(score, tokens)[0] - scored(score, build(tokens, masks(n), used))


_occlusion_mistake(
    "Off by one: row i must replace token i.", lambda n: [[(i + 1) % n] for i in range(n)]
)
_occlusion_mistake(
    "Off by one: row i must replace token i.", lambda n: [[(i - 1) % n] for i in range(n)]
)
_occlusion_mistake(
    "You replaced every token EXCEPT i; replace only token i.",
    lambda n: [[j for j in range(n) if j != i] for i in range(n)],
)
_occlusion_mistake(
    "Use the replacement_id you were given (you always used 0).",
    lambda n: [[i] for i in range(n)],
    r=0,
)
_occlusion_mistake(
    "Replace the token at POSITION i only: you replaced every occurrence of its value (the "
    "prompt repeats a token).",
    lambda n: [[i] for i in range(n)],
    build=by_value,
)


@KEY.mistake(
    "occlusion",
    "You deleted the token; replace it instead (deleting shifts every later token and shortens "
    "the prompt).",
)
def occlusion_deleted(sol, score, tokens, replacement_id):
    n = tokens.shape[1]
    if n < 2:
        raise ValueError("one token cannot be deleted")
    full = scored(score, tokens)[0]
    return full - torch.stack([scored(score, deleted(tokens, [i]))[0] for i in range(n)])


@KEY.mistake("occlusion", "Wrong sign: score(original) - score(occluded).")
def occlusion_sign(sol, score, tokens, replacement_id):
    return -sol.occlusion(score, tokens, replacement_id)


@KEY.mistake(
    "occlusion", "Subtract from the original score: you returned the occluded scores themselves."
)
def occlusion_scores_only(sol, score, tokens, replacement_id):
    n = tokens.shape[1]
    return scored(score, rows(tokens, [[i] for i in range(n)], replacement_id))


@KEY.mistake("occlusion", "Return the drop in score, not the drop relative to the score.")
def occlusion_relative(sol, score, tokens, replacement_id):
    return sol.occlusion(score, tokens, replacement_id) / scored(score, tokens)[0]


# ----- Exercise 1.11: Shapley values -------------------------------------------------------------
def coalition_values(score, tokens, positions, r, build=rows) -> dict:
    """v(S) for every coalition S (a tuple of player indices): the players outside S replaced."""
    n = len(positions)
    coalitions = [c for k in range(n + 1) for c in combinations(range(n), k)]
    masks = [[positions[i] for i in range(n) if i not in c] for c in coalitions]
    return dict(zip(coalitions, scored(score, build(tokens, masks, r)), strict=True))


def weighted(values: dict, n: int, weight) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for c in values:
            if i not in c:
                out[i] += weight(len(c), n) * (values[tuple(sorted((*c, i)))] - values[c])
    return out


def shapley_weight(s: int, n: int) -> float:
    return factorial(s) * factorial(n - s - 1) / factorial(n)


def _players(positions) -> list[int]:
    return [int(p) for p in positions]


def _shapley_mistake(hint: str, make, at_least: int = 2) -> None:
    @KEY.mistake("shapley_values", hint)
    def mistake(sol, score, tokens, positions, replacement_id):
        players = _players(positions)
        if len(players) < at_least:
            raise ValueError("too few players to tell apart")
        return make(sol, score, tokens, players, replacement_id)


_shapley_mistake(
    "You weighted every coalition equally (the Banzhaf value); Shapley weights a coalition of "
    "size s by s! (n - s - 1)! / n!.",
    lambda sol, s, t, p, r: weighted(
        coalition_values(s, t, p, r), len(p), lambda k, n: 0.5 ** (n - 1)
    ),
)
_shapley_mistake(
    "That is occlusion (each token removed from the full prompt); Shapley averages over every "
    "coalition of the other tokens.",
    lambda sol, s, t, p, r: scored(s, t)[0] - scored(s, rows(t, [[q] for q in p], r)),
)
_shapley_mistake(
    "That is each token added to an empty coalition alone; Shapley averages over every coalition.",
    lambda sol, s, t, p, r: (
        scored(s, rows(t, [[q for q in p if q != x] for x in p], r)) - scored(s, rows(t, [p], r))[0]
    ),
)
_shapley_mistake(
    "Averaging 'removed from all' and 'added to none' is exact only without interactions of "
    "three or more tokens; sum over every coalition.",
    lambda sol, s, t, p, r: (
        (
            scored(s, t)[0]
            - scored(s, rows(t, [[q] for q in p], r))
            + scored(s, rows(t, [[q for q in p if q != x] for x in p], r))
            - scored(s, rows(t, [p], r))[0]
        )
        / 2
    ),
    at_least=3,
)
_shapley_mistake(
    "Wrong sign: v(S with i) - v(S).",
    lambda sol, s, t, p, r: -sol.shapley_values(s, t, torch.tensor(p), r).double(),
    at_least=1,
)
_shapley_mistake(
    "The weight is s! (n - s - 1)! / n!, with n - s - 1.",
    lambda sol, s, t, p, r: weighted(
        coalition_values(s, t, p, r),
        len(p),
        lambda k, n: factorial(k) * factorial(n - k) / factorial(n),
    ),
)
_shapley_mistake(
    "Return the values in the order of `positions`, not sorted by position.",
    lambda sol, s, t, p, r: sol.shapley_values(s, t, torch.tensor(sorted(p)), r).double(),
)
_shapley_mistake(
    "Player i is bit i of the mask and entry i of the result: your values come out in reverse "
    "order.",
    lambda sol, s, t, p, r: sol.shapley_values(s, t, torch.tensor(p), r).double().flip(0),
)
_shapley_mistake(
    "Replace the players' POSITIONS: you replaced every occurrence of their tokens (the prompt "
    "repeats a token).",
    lambda sol, s, t, p, r: weighted(
        coalition_values(s, t, p, r, by_value), len(p), shapley_weight
    ),
    at_least=1,
)
