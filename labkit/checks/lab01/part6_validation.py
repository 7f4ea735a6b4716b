"""Part 6: can we trust the scores? Deletion and insertion curves, Spearman's rank
correlation, and the randomisation sanity check."""

from __future__ import annotations

import copy
from itertools import combinations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import LAB, Call, compare_calls


def curve_calls(t: Checker, gen: torch.Generator) -> list[Call]:
    """A nonlinear scorer and tiny models' logits of two families: orders that are not sorted,
    partial and full, of 1 to 10 positions (past 9), over repeated tokens (a repeated token is
    always in the order), replacements absent from or present in the prompt; the first problem
    again at the end."""
    first, second = kit.families(t, 2, first="gpt2")
    score = P.scorer(t, gen)
    n_pos = t.choice([12, 11, 14])
    ids = P.scorer_ids(gen, n_pos)
    order = P.unsorted(gen, list(range(n_pos)), 10, keep=(n_pos - 1,))
    s1, ids1 = P.tiny_score(t, first, gen, 6)
    order1 = P.unsorted(gen, [1, 2, 3, 4, 5], 5)
    short = P.scorer_ids(gen, t.choice([8, 6]))
    s2, ids2 = P.tiny_score(t, second, gen, t.choice([9, 7]))
    order2 = P.unsorted(gen, list(range(ids2.shape[1])), 4, keep=(0, 1))
    space = P.tiny(t, first).token_id(" ")
    present = int(ids2[0, 3])
    return [
        Call(
            (score, ids, order, 0),
            f"a nonlinear scorer, tokens {ids[0].tolist()}, order {order.tolist()}, replacement 0",
        ),
        Call((s1, ids1, order1, space), f"a tiny {first} model's logit, order {order1.tolist()}"),
        Call(
            (score, short, torch.tensor([3]), 0),
            f"the scorer, tokens {short[0].tolist()}, order [3]",
        ),
        Call(
            (s2, ids2, order2, present),
            f"a tiny {second} model's logit, tokens "
            f"{ids2[0].tolist()}, order {order2.tolist()}, replacement {present}",
        ),
        Call((score, ids, order, 0), "the first problem again, after the others", repeat=True),
    ]


def _same_token_problem(t: Checker, gen: torch.Generator, at: int):
    """A scorer, tokens, an unsorted order of 5, and a replacement equal to the token at
    ``order[at]`` (replacing it changes nothing)."""
    score = P.scorer(t, gen)
    ids = P.scorer_ids(gen, t.choice([7, 9]))
    order = P.unsorted(gen, list(range(1, ids.shape[1])), 5)
    return score, ids, order, int(ids[0, order[at]])


# ----- Exercise 1.13 -----------------------------------------------------------------------------
@LAB.exercise("1.13", "deletion curve", points=2)
def check_deletion_curve(deletion_curve, t: Checker) -> None:
    """Curves over orders that are not sorted, partial and full, 1 to 10 long, on a nonlinear
    scorer and tiny models of two families, with a repeat; then entry 0 is the original score,
    and replacing a token by itself leaves the curve flat at that step."""
    hint = (
        "Entry k scores the tokens with the first k positions of `order` replaced by "
        "replacement_id, all together (k = 0..len(order)). Shape (len(order) + 1,)."
    )
    gen = kit.generator(t, 15)
    with t.part("orders that are not sorted, partial and full", points=1):
        compare_calls(t, deletion_curve, "deletion_curve", curve_calls(t, gen), hint=hint)
    with t.part("entry 0 is the original score; a token replaced by itself", points=1):
        score, ids, order, same = _same_token_problem(t, gen, 1)
        what = f"tokens {ids[0].tolist()}, order {order.tolist()}, replacement {same}"
        (got,) = compare_calls(
            t, deletion_curve, "deletion_curve", [Call((score, ids, order, same), what)], hint=hint
        )
        with torch.no_grad():
            start = float(score(ids)[0])
        t.close(got[0], start, f"{what}: entry 0 is score(tokens) = {start:.4g}", hint=hint)
        t.close(
            got[2],
            got[1],
            f"{what}: replacing position {int(order[1])} by its own token "
            "changes nothing (entries 1 and 2 are equal)",
            hint=hint,
        )


# ----- Exercise 1.14 -----------------------------------------------------------------------------
@LAB.exercise("1.14", "insertion curve", points=2)
def check_insertion_curve(insertion_curve, t: Checker) -> None:
    """The problems of the deletion curve's check; then the last entry is the original score,
    and putting back a token equal to the replacement leaves the curve flat at that step."""
    hint = (
        "Entry k has every position of `order` replaced except its first k (entry 0: all of "
        "them; the last entry: none). Shape (len(order) + 1,)."
    )
    gen = kit.generator(t, 16)
    with t.part("orders that are not sorted, partial and full", points=1):
        compare_calls(t, insertion_curve, "insertion_curve", curve_calls(t, gen), hint=hint)
    with t.part("the last entry is the original score; a token equal to the replacement", 1):
        score, ids, order, same = _same_token_problem(t, gen, -1)
        what = f"tokens {ids[0].tolist()}, order {order.tolist()}, replacement {same}"
        (got,) = compare_calls(
            t,
            insertion_curve,
            "insertion_curve",
            [Call((score, ids, order, same), what)],
            hint=hint,
        )
        with torch.no_grad():
            end = float(score(ids)[0])
        t.close(got[-1], end, f"{what}: the last entry is score(tokens) = {end:.4g}", hint=hint)
        t.close(
            got[-2],
            got[-1],
            f"{what}: putting back position {int(order[-1])}, whose token "
            "is the replacement, changes nothing",
            hint=hint,
        )


# ----- Exercise 1.15 -----------------------------------------------------------------------------
def _no_ties(gen: torch.Generator, n: int, dtype: torch.dtype, sign: float):
    """Skewed scores a and noisy scores b (n,) that correlate with sign ``sign``, without ties."""
    while True:
        a = torch.randn(n, generator=gen, dtype=torch.float64).mul(3).exp()
        b = sign * (a.log() + 1.2 * torch.randn(n, generator=gen, dtype=torch.float64))
        a, b = a.to(dtype), b.to(dtype)
        if len(set(a.tolist())) == n and len(set(b.tolist())) == n:
            return a, b


@LAB.exercise("1.15", "Spearman rank correlation", points=2)
def check_spearman(spearman, t: Checker) -> None:
    """Scores of 2 to 12 values (float32 and float64, skewed, correlations of either sign,
    without ties), unsorted sizes, a repeat; then the definition: rho(a, a) = 1,
    rho(a, -a) = -1, symmetric, unchanged by increasing transforms of either vector."""
    hint = "Spearman's rho is the Pearson correlation of the ranks of a and of b (a float)."
    gen = kit.generator(t, 17)
    with t.part("scores of 2 to 12 values, float32 and float64, without ties", points=1):
        n = t.choice([12, 10, 11])
        problems = [
            _no_ties(gen, n, torch.float32, 1.0),
            _no_ties(gen, 3, torch.float64, -1.0),
            _no_ties(gen, 2, torch.float32, 1.0),
            _no_ties(gen, t.choice([9, 7]), torch.float64, -1.0),
        ]
        calls = [
            Call(
                (a, b),
                f"spearman(a, b) for a = {[round(v, 3) for v in a.tolist()]}, "
                f"b = {[round(v, 3) for v in b.tolist()]} ({a.dtype})",
            )
            for a, b in problems
        ]
        calls.append(Call(calls[0].args, "the first pair again, after the others", repeat=True))
        compare_calls(t, spearman, "spearman", calls, hint=hint, scalar=True, atol=1e-5, rtol=1e-4)
    with t.part("rho(a, a) = 1, rho(a, -a) = -1, symmetric, unchanged by exp and cubes", 1):
        a, b = _no_ties(gen, n, torch.float64, 1.0)  # the size of an earlier problem
        calls = [
            Call(
                (a, b),
                f"a = {[round(v, 3) for v in a.tolist()]}, b = {[round(v, 3) for v in b.tolist()]}",
            )
        ]
        (rho,) = compare_calls(
            t, spearman, "spearman", calls, hint=hint, scalar=True, atol=1e-5, rtol=1e-4
        )
        for args, want, what in [
            ((b, a), float(rho), "spearman(b, a) = spearman(a, b)"),
            ((a.log(), b**3), float(rho), "spearman(log a, b**3) = spearman(a, b)"),
            ((a, a), 1.0, "spearman(a, a) = 1"),
            ((a, -a), -1.0, "spearman(a, -a) = -1"),
        ]:
            got = t.scalar(t.call(spearman, *args), what)
            t.close(got, want, what, atol=1e-5, rtol=1e-4, hint=hint)


# ----- Exercise 1.16 -----------------------------------------------------------------------------
NOTHING_CHANGED = (
    "Randomise in place, and do not skip frozen parameters: load_model() leaves every parameter "
    "with requires_grad=False, so `if p.requires_grad:` skips them all. Returning a new module "
    "does not change the one you were given."
)
OWN = (
    "Draw every value from N(p.mean(), p.std()): THIS parameter's own mean and std, taken "
    "before you overwrite it."
)
STANDARD = (
    "Those look like draws from a standard normal, N(0, 1): use each parameter's own mean and std."
)
SEED = (
    "Draw from torch.Generator().manual_seed(seed), created once per call, and pass "
    "generator= to every draw: the same seed must give the same values, another seed others."
)


def _randomised(t: Checker, randomize_weights_, module: torch.nn.Module, *seed) -> dict:
    """Call the student's function on ``module`` (with ``seed`` if given); return the values of
    its parameters afterwards, by name."""
    t.call(randomize_weights_, module, *seed)
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """How much new weights still follow the old ones (a correlation of the values)."""
    old, new = (v.double().flatten() for v in (a, b))
    old, new = old - old.mean(), new - new.mean()
    return float((old @ new) / (old.norm() * new.norm()).clamp_min(1e-300))


@LAB.exercise("1.16", "randomise weights", points=4, check_name="check_randomize_weights")
def check_randomize_weights_(randomize_weights_, t: Checker) -> None:
    """Two frozen modules (parameters of every kind, nested; a tiny model's block of a family
    the variant picks): every parameter changes in place; each is drawn afresh from N(its own
    mean, its own std) (not the old values plus noise, not per row or column, not uniform);
    same-shape parameters get their own noise; and the seed decides the values."""
    gen = kit.generator(t, 18)
    family = kit.families(t, 1, first="gpt_neox")[0]
    originals = P.modules_to_randomise(gen, family)
    old = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in originals]
    seed = t.seed(19) % 1000 + 1

    def fresh(i: int) -> torch.nn.Module:
        return copy.deepcopy(originals[i])

    with t.part("every parameter of two frozen modules changes, in place", points=1):
        for i, what in enumerate(
            ["a module with parameters of every kind, nested", f"a tiny {family} model's block"]
        ):
            new = _randomised(t, randomize_weights_, fresh(i), seed)
            unchanged = [n for n, v in new.items() if torch.equal(v, old[i][n])]
            what = f"randomize_weights_(module, {seed}) on {what}, frozen like load_model()'s"
            if len(unchanged) == len(new):
                t.fail(what, "No parameter changed.", NOTHING_CHANGED)
            if unchanged:
                t.fail(
                    what,
                    f"These parameters did not change: {', '.join(unchanged)}.",
                    "Every parameter gets new values: weights and biases, norms, embeddings "
                    "and parameters of any other module, however deeply nested.",
                )
    with t.part("each parameter is drawn afresh from N(its own mean, its own std)", points=1):
        for i in range(2):
            new = _randomised(t, randomize_weights_, fresh(i), seed)
            for name, value in new.items():
                _fresh_normal(t, name, value, old[i][name])
    with t.part("parameters of the same shape get their own noise", points=1):
        for i in range(2):
            new = _randomised(t, randomize_weights_, fresh(i), seed)
            kept = [n for n, v in new.items() if torch.equal(v, old[i][n])]
            t.true(
                not kept,
                f"randomize_weights_ gives every parameter new values ({len(kept)} kept theirs)",
                NOTHING_CHANGED,
            )  # independence of values that never changed would prove nothing
            z = {n: ((v - old[i][n].mean()) / old[i][n].std()).flatten() for n, v in new.items()}
            for a, b in combinations(sorted(z), 2):
                if z[a].shape == z[b].shape and z[a].numel() >= 16:
                    corr = _corr(z[a], z[b])
                    t.true(
                        corr < 0.9,
                        f"'{a}' and '{b}' (same shape) got independent noise "
                        f"(their standardised values correlate at {corr:.3f})",
                        "Create ONE generator per call and draw every parameter from it; "
                        "reseeding for each parameter gives same-shape parameters the same "
                        "noise.",
                    )
    with t.part("the seed decides the values; seed=0 by default", points=1):
        first = _randomised(t, randomize_weights_, fresh(0), seed)
        again = _randomised(t, randomize_weights_, fresh(0), seed)
        other = _randomised(t, randomize_weights_, fresh(0), seed + 1)
        default = _randomised(t, randomize_weights_, fresh(1))
        zero = _randomised(t, randomize_weights_, fresh(1), 0)
        same = all(torch.equal(first[n], again[n]) for n in first)
        t.true(same, f"seed {seed} twice on identical modules gives identical values", SEED)
        t.true(
            not all(torch.equal(first[n], other[n]) for n in first),
            f"seeds {seed} and {seed + 1} give different values",
            SEED,
        )
        t.true(
            all(torch.equal(default[n], zero[n]) for n in zero),
            "randomize_weights_(module) draws what randomize_weights_(module, 0) draws",
            "Keep the default seed=0 and use it: without a seed, seed 0 decides the values.",
        )


def _fresh_normal(t: Checker, name: str, value: torch.Tensor, old: torch.Tensor) -> None:
    """``value`` looks like a fresh draw from N(old.mean(), old.std()), independent of ``old``."""
    n, mean, std = old.numel(), float(old.mean()), float(old.std())
    what = f"'{name}' ({n} values, mean {mean:.3g}, std {std:.3g})"
    if torch.equal(value.flatten().sort().values, old.flatten().sort().values):
        t.fail(
            what,
            "Its new values are the old ones in another order.",
            "Draw fresh values from a normal distribution; a permutation keeps the values.",
        )
    v = value.double()
    got_mean, got_std = float(v.mean()), float(v.std()) if n > 1 else 0.0
    near = (
        abs(got_mean - mean) <= 5 * std / n**0.5
        and abs(got_std - std) <= 5 * std / (2 * max(n - 1, 1)) ** 0.5 + 1e-7
    )
    if not near:
        standard = (
            abs(got_mean) <= 5 / n**0.5 and abs(got_std - 1) <= 5 / (2 * max(n - 1, 1)) ** 0.5
        )
        t.fail(
            f"{what}: the new values keep about its mean and std",
            f"They have mean {got_mean:.4g} and std {got_std:.4g}.",
            STANDARD if standard else OWN,
        )
    follow = (
        "Draw fresh values from N(mean, std); do not add noise to the old values (nor scale or "
        "shift them)."
    )
    corr = _corr(v, old) if n >= 30 else 0.0
    t.true(
        abs(corr) < 0.99,
        f"{what}: the new values do not follow the old ones (they correlate at {corr:.4f})",
        follow,
    )
    if old.dim() == 2 and min(old.shape) >= 16:
        for dim, kind in ((1, "row"), (0, "column")):
            means = _corr(v.mean(dim), old.double().mean(dim))
            t.true(
                abs(means) < 5 / old.shape[1 - dim] ** 0.5,
                f"{what}: each {kind}'s new mean "
                f"does not follow its old one (they correlate at {means:.3f})",
                f"Use ONE mean and ONE std per parameter (p.mean(), p.std()), not one per {kind}.",
            )
    t.true(
        abs(corr) < min(0.9, 5 / n**0.5),
        f"{what}: the new values do not follow the old ones (they correlate at {corr:.3f})",
        follow,
    )
    if n >= 1000:
        inside = float(((v - mean).abs() < std).double().mean())
        t.close(
            inside,
            0.6827,
            f"{what}: about 68% of the new values lie within one std",
            atol=5 * (0.6827 * 0.3173 / n) ** 0.5,
            rtol=0.0,
            hint="Draw from a normal distribution.",
            mistakes=[
                (
                    0.5774,
                    "The values look uniformly distributed: draw "
                    "from a NORMAL distribution (torch.randn or normal_).",
                )
            ],
        )
