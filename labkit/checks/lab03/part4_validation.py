"""Part 4 of lab 03: validation against exact patching (exercises 3.7 and 3.8)."""

from __future__ import annotations

from collections.abc import Callable

from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

KEYS = ("pearson", "spearman", "slope", "sign agreement", "top-k recall")


def _numbers(t: Checker, agreement: Callable, estimate, exact, k: int | None, what: str) -> dict:
    args = (estimate, exact) if k is None else (estimate, exact, k)
    got = t.call(agreement, *args)
    t.true(
        isinstance(got, dict) and set(KEYS) <= set(got),
        f"{what} returns a dict with the keys {', '.join(repr(key) for key in KEYS)}",
    )
    return {key: t.scalar(got[key], f"{what}[{key!r}]") for key in KEYS}


def _describe(estimate, k: int | None) -> str:
    shape = " x ".join(str(n) for n in estimate.shape)
    return f"agreement(estimate, exact{'' if k is None else f', k={k}'}) on a {shape} table"


@LAB.exercise("3.7", "agreement with exact patching", points=2)
def check_agreement(agreement: Callable, t: Checker) -> None:
    """Five numbers on three tables without ties (2-D and 3-D, 24 to 30 components, large
    effects of both signs that the estimate gets wrong or misses, a top-k recall at the default
    k that no other k gives), with k given and the default k, a table asked again with another
    k, and the first call repeated; then each number's definition on estimates made from exact
    patching itself (equal, -3x, 2x + 1, x cubed)."""
    grid, grid_exact = P.agreement_scores(t.seed(71))
    cube, cube_exact = P.noisy_scores(t.seed(72), t.choice([(2, 3, 4), (3, 2, 4), (4, 3, 2)]))
    wide_shape = t.choice([(4, 6), (6, 4), (3, 8)])
    wide, wide_exact = P.ranked_scores(
        t.seed(73), wide_shape, P.AGREE_RANKS, P.AGREE_ALARMS, negative_alarm=True
    )
    k = t.choice([5, 4, 6])
    with t.part("pearson, spearman, slope, sign agreement and top-k recall", points=1):
        answers = []
        for estimate, exact, kk in [
            (grid, grid_exact, k),
            (wide, wide_exact, None),  # the default k
            (cube, cube_exact, 3),
            (wide, wide_exact, t.choice([7, 6, 8])),  # the same table as before, another k
            (grid, grid_exact, k),  # the first call again
        ]:
            given = {} if kk is None else {"k": kk}
            want = t.expected("agreement", estimate, exact, *given.values())
            wrong = t.mistakes("agreement", estimate, exact, *given.values())
            what = _describe(estimate, kk)
            got = _numbers(t, agreement, estimate, exact, kk, what)
            answers += [
                P.Answer(got[key], want[key], f"{what}: {key!r}", P.pick(wrong, key))
                for key in KEYS
            ]
        P.close_all(t, answers)

    x = wide_exact
    cases = [
        ("an estimate equal to exact", x, 4, dict.fromkeys(KEYS, 1.0)),
        (
            "estimate = -3 x exact",
            -3 * x,
            5,
            {
                "pearson": -1.0,
                "spearman": -1.0,
                "slope": -3.0,
                "sign agreement": 0.0,
                "top-k recall": 1.0,
            },
        ),
        ("estimate = 2 x exact + 1", 2 * x + 1, 3, {"pearson": 1.0, "spearman": 1.0, "slope": 2.0}),
        (
            "estimate = exact ** 3 (same order, other sizes)",
            x**3,
            6,
            {"spearman": 1.0, "sign agreement": 1.0, "top-k recall": 1.0},
        ),
    ]
    with t.part("each number's definition, on estimates made from exact itself", points=1):
        for name, estimate, kk, known in cases:
            what = f"{_describe(estimate, kk)} with {name}"
            got = _numbers(t, agreement, estimate, x, kk, what)
            for key, value in known.items():
                t.close(got[key], value, f"{what}: {key} is {value:g}")


@LAB.exercise("3.8", "patches needed to find the top-k", points=1)
def check_patches_to_find_top_k(patches_to_find_top_k: Callable, t: Checker) -> None:
    """Two tables (40 components; 48 in three dimensions) in which no answer is k, every k
    gives another answer, and the largest effects and false alarms have either sign; k given
    in an unsorted order and the default k; and the definition: an estimate that orders the
    components as exact patching does needs exactly k patches."""
    flat, flat_exact = P.ranked_scores(t.seed(81), (40,))
    cube, cube_exact = P.ranked_scores(t.seed(82), t.choice([(4, 3, 4), (2, 4, 6), (3, 4, 4)]))
    with t.part("the rank, in order of |estimate|, of the last exact top-k component", points=1):
        answers = []
        for estimate, exact, k in [
            (flat, flat_exact, 2),
            (cube, cube_exact, None),  # the default k
            (flat, flat_exact, t.choice([5, 4, 6])),
            (cube, cube_exact, t.choice([3, 7])),
            (flat, flat_exact, 8),
            (flat, flat_exact, 2),  # the first call again
        ]:
            given = () if k is None else (k,)
            want = t.expected("patches_to_find_top_k", estimate, exact, *given)
            wrong = t.mistakes("patches_to_find_top_k", estimate, exact, *given)
            shown = "" if k is None else f", k={k}"
            what = (
                f"patches_to_find_top_k(estimate, exact{shown}) with {estimate.numel()} components"
            )
            got = t.scalar(t.call(patches_to_find_top_k, estimate, exact, *given), what)
            answers.append(
                P.Answer(
                    got,
                    want,
                    f"{what}: patches made in order of |estimate| until all of the exact top-k "
                    "(by |effect|) are found",
                    wrong,
                    atol=0.1,
                )
            )
        P.close_all(t, answers)
        for estimate, exact, name, k in [
            (cube_exact, cube_exact, "exact itself", 4),
            (-2 * flat_exact, flat_exact, "-2 x exact (the same sizes)", 5),
        ]:
            what = f"patches_to_find_top_k(estimate, exact, k={k}) with estimate = {name}"
            got = t.scalar(t.call(patches_to_find_top_k, estimate, exact, k), what)
            t.close(got, k, f"{what}: a perfect order needs exactly k patches", atol=0.1)
