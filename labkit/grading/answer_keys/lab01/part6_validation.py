"""Part 6: the mistakes of the deletion and insertion curves and of Spearman's rho. (The
randomisation check tests the properties of fresh draws; it has no reference values.)"""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab01.key import KEY
from labkit.grading.answer_keys.lab01.part4_perturbation import by_value, deleted, rows, scored


def _order(order) -> list[int]:
    return [int(p) for p in order]


# ----- Exercise 1.13: deletion curve -------------------------------------------------------------
def _deletion_mistake(hint: str, masks, build=rows, at_least: int = 1) -> None:
    @KEY.mistake("deletion_curve", hint)
    def mistake(sol, score, tokens, order, replacement_id):
        o = _order(order)
        if len(o) < at_least:
            raise ValueError("too short an order to tell apart")
        return scored(score, build(tokens, masks(o), replacement_id))


_deletion_mistake(
    "Entry 0 must be the original score (nothing replaced), and entry k has the first k replaced.",
    lambda o: [o[:k] for k in range(1, len(o) + 2)],
)
_deletion_mistake(
    "Replace tokens cumulatively: entry k has ALL of the first k replaced, not only the k-th.",
    lambda o: [[]] + [[p] for p in o],
    at_least=2,
)
_deletion_mistake(
    "Follow `order` from its start, not from its end.",
    lambda o: [o[::-1][:k] for k in range(len(o) + 1)],
    at_least=2,
)
_deletion_mistake(
    "Follow `order` as given; do not sort the positions.",
    lambda o: [sorted(o)[:k] for k in range(len(o) + 1)],
    at_least=2,
)
_deletion_mistake(
    "Replace the tokens at the POSITIONS in `order`: you replaced every occurrence of their "
    "values (the prompt repeats a token).",
    lambda o: [o[:k] for k in range(len(o) + 1)],
    build=by_value,
)


@KEY.mistake(
    "deletion_curve", "You deleted tokens; replace them (deleting shifts the other tokens)."
)
def deletion_deleted(sol, score, tokens, order, replacement_id):
    o = _order(order)
    return torch.stack([scored(score, deleted(tokens, o[:k]))[0] for k in range(len(o) + 1)])


@KEY.mistake(
    "deletion_curve",
    "You added up one-token drops; replace the tokens TOGETHER and score the result (the "
    "effects are not additive).",
)
def deletion_additive(sol, score, tokens, order, replacement_id):
    o = _order(order)
    full = scored(score, tokens)[0]
    drops = full - scored(score, rows(tokens, [[p] for p in o], replacement_id))
    return full - torch.cat([torch.zeros(1, dtype=drops.dtype), drops.cumsum(0)])


@KEY.mistake(
    "deletion_curve", "Return the scores themselves, not their drops from the original score."
)
def deletion_drops(sol, score, tokens, order, replacement_id):
    curve = sol.deletion_curve(score, tokens, order, replacement_id)
    return curve[0] - curve


# ----- Exercise 1.14: insertion curve ------------------------------------------------------------
def _insertion_mistake(hint: str, masks, build=rows, at_least: int = 1) -> None:
    @KEY.mistake("insertion_curve", hint)
    def mistake(sol, score, tokens, order, replacement_id):
        o = _order(order)
        if len(o) < at_least:
            raise ValueError("too short an order to tell apart")
        return scored(score, build(tokens, masks(o, tokens.shape[1]), replacement_id))


_insertion_mistake(
    "That is the deletion curve: start with ALL of `order` replaced and put tokens back.",
    lambda o, n: [o[:k] for k in range(len(o) + 1)],
)
_insertion_mistake(
    "You put back the LAST tokens of `order` first (the deletion curve, reversed): put the "
    "FIRST tokens back first.",
    lambda o, n: [o[:k] for k in range(len(o) + 1)][::-1],
    at_least=2,
)
_insertion_mistake(
    "Off by one: entry 0 has every token of `order` replaced.",
    lambda o, n: [o[k + 1 :] for k in range(len(o) + 1)],
)
_insertion_mistake(
    "Replace only the positions in `order`; the others stay as they are throughout.",
    lambda o, n: [[p for p in range(n) if p not in o[:k]] for k in range(len(o) + 1)],
)
_insertion_mistake(
    "Follow `order` as given; do not sort the positions.",
    lambda o, n: [sorted(o)[k:] for k in range(len(o) + 1)],
    at_least=2,
)
_insertion_mistake(
    "Replace the tokens at the POSITIONS in `order`: you replaced every occurrence of their "
    "values (the prompt repeats a token).",
    lambda o, n: [o[k:] for k in range(len(o) + 1)],
    build=by_value,
)


@KEY.mistake(
    "insertion_curve",
    "You added up one-token gains; put the tokens back TOGETHER and score the result (effects "
    "are not additive).",
)
def insertion_additive(sol, score, tokens, order, replacement_id):
    o = _order(order)
    start = scored(score, rows(tokens, [o], replacement_id))[0]
    gains = scored(score, rows(tokens, [[q for q in o if q != p] for p in o], replacement_id))
    return start + torch.cat([torch.zeros(1, dtype=gains.dtype), (gains - start).cumsum(0)])


# ----- Exercise 1.15: Spearman rank correlation --------------------------------------------------
def _ranks(x: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty(len(x), dtype=torch.float64)
    ranks[x.argsort()] = torch.arange(len(x), dtype=torch.float64)
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _spearman_mistake(hint: str, make) -> None:
    @KEY.mistake("spearman", hint)
    def mistake(sol, a, b):
        return make(sol, a, b)


_spearman_mistake(
    "That is Pearson's correlation of the VALUES; correlate their ranks.",
    lambda sol, a, b: _pearson(a, b),
)
_spearman_mistake(
    "argsort gives the ORDER, not the ranks: apply argsort twice.",
    lambda sol, a, b: _pearson(a.argsort(), b.argsort()),
)
_spearman_mistake("Keep the sign of the correlation.", lambda sol, a, b: abs(sol.spearman(a, b)))
_spearman_mistake("Rank BOTH vectors.", lambda sol, a, b: _pearson(_ranks(a), b))
_spearman_mistake("Rank BOTH vectors.", lambda sol, a, b: _pearson(a, _ranks(b)))
_spearman_mistake(
    "Rank both vectors in the same direction (both ascending).",
    lambda sol, a, b: -sol.spearman(a, b),
)
_spearman_mistake(
    "Do not sort the values: rank them in place.",
    lambda sol, a, b: _pearson(a.sort().values, b.sort().values),
)
_spearman_mistake(
    "Without ties, rho = 1 - 6 sum d^2 / (n (n^2 - 1)): you divided by n (n - 1) instead.",
    lambda sol, a, b: 1 - 6 * float(((_ranks(a) - _ranks(b)) ** 2).sum()) / (len(a) * (len(a) - 1)),
)
