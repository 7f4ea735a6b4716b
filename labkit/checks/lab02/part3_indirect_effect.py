"""Part 3 of lab 02, the average indirect effect: exercises 2.7 (average indirect effect) and
2.8 (average recovery over prompts)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from labkit.checks import kit
from labkit.checks.core import Checker, Mistakes
from labkit.checks.lab02 import problems
from labkit.checks.lab02.lab import LAB

ROLES = ("subject", "last subject token", "after subject", "last token")
_ROLE_HINTS = {
    "subject": "'subject' means the subject tokens before its last one (tokens before the "
    "subject are not counted anywhere).",
    "last subject token": "The last subject token is subject_positions[-1].",
    "after subject": "'after subject' is every token after the subject except the last.",
    "last token": "The last token is position -1 of each prompt.",
}
_AIE_SHAPE = f"One row per layer and one column per role, in the order {ROLES}."


def _shapes(t: Checker, gen: torch.Generator, fixed: list[tuple[int, int, int]]) -> list:
    """Prompt shapes (start, size, after): ``fixed`` in the notebook; in hidden variants as many,
    drawn, with the same guarantees: the first has every role, the second a one-token subject,
    the third nothing between the subject and the last token, the last 10 tokens or more."""
    if t.variant == 0:
        return list(fixed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    shapes = [(draw(1, 4), draw(1, 3), draw(0, 5)) for _ in fixed]
    start, size, after = shapes[0]
    shapes[0] = (start, max(size, 2), max(after, 1))
    if len(shapes) > 1:
        shapes[1] = (shapes[1][0], 1, shapes[1][2])
    if len(shapes) > 2:
        shapes[2] = (*shapes[2][:2], 0)
    if len(shapes) > 3:
        start, size, after = shapes[-1]
        shapes[-1] = (start, size, max(after, 10 - start - size))
    return shapes


def _lows(gen: torch.Generator, count: int) -> list[float]:
    return [round(0.02 + 0.2 * float(torch.rand(1, generator=gen)), 4) for _ in range(count)]


def _column_mistakes(wrong, column: int) -> Mistakes:
    return Mistakes(lambda: [(torch.as_tensor(m)[:, column], h) for m, h in wrong])


# ----- 2.7 ---------------------------------------------------------------------------------------
@LAB.exercise("2.7", "average indirect effect", points=3)
def check_average_indirect_effect(average_indirect_effect: Callable, t: Checker) -> None:
    """Hand-made grids, then 1 to 6 random prompts of 4 to 16 tokens on 1 to 13 layers, with
    one-token subjects, subjects right after the anchor, and nothing between subject and last
    token, in no order and again after others; a constant effect averages to itself, and the
    order of the prompts does not matter."""
    gen = kit.generator(t, 7)
    deep, shallow = t.choice((11, 12, 13)), t.choice((1, 2))
    # Hand-made: two prompts, 2 layers. A: 7 tokens, subject 1..3. B: 5 tokens, subject 2.
    grid_a = torch.tensor(
        [[0.1, 0.2, 0.3, 0.5, 0.4, 0.2, 0.6], [0.1, 0.1, 0.2, 0.9, 0.3, 0.5, 0.8]]
    )
    grid_b = torch.tensor([[0.2, 0.2, 0.7, 0.3, 0.5], [0.2, 0.2, 0.4, 0.6, 0.9]])
    hand = ([grid_a, grid_b], [0.1, 0.2], [[1, 2, 3], [2]])
    shapes = _shapes(t, gen, [(2, 3, 2), (1, 1, 9), (3, 2, 0), (1, 2, 1), (6, 1, 4)])
    grids, subjects = problems.random_grids(gen, deep, shapes)
    many = (grids, _lows(gen, len(grids)), subjects)
    one_grids, one_subjects = problems.random_grids(gen, shallow, _shapes(t, gen, [(1, 2, 1)]))
    one = (one_grids, _lows(gen, 1), one_subjects)

    def compare(what: str, args: tuple) -> Tensor:
        want = t.expected("average_indirect_effect", *args)
        wrong = t.mistakes("average_indirect_effect", *args)
        got = t.call(average_indirect_effect, *args)
        got = t.tensor(
            got, f"average_indirect_effect on {what}", shape=tuple(want.shape), hint=_AIE_SHAPE
        )
        for column, role in enumerate(ROLES):
            t.close(
                got[:, column],
                want[:, column],
                f"the {role!r} column on {what}: indirect effect = restored minus corrupted "
                "probability, averaged within each prompt, then over the prompts that have "
                "tokens in that role",
                atol=1e-6,
                mistakes=_column_mistakes(wrong, column),
                hint=_ROLE_HINTS[role],
            )
        return got

    with t.part("two hand-made grids (the second prompt has a one-token subject)", points=1):
        compare("two hand-made grids of 2 layers", hand)

    with t.part("random grids: more layers and tokens, subjects anywhere, one prompt", points=1):
        described = (
            f"{len(shapes)} random grids of {deep} layers and "
            f"{min(g.shape[1] for g in grids)} to {max(g.shape[1] for g in grids)} "
            "tokens (a one-token subject, a subject right before the last token)"
        )
        compare(described, many)
        compare(f"a single prompt's grid of {shallow} layer(s)", one)
        compare(described + ", again after others", many)

    with t.part(
        "a constant effect averages to itself; the prompts' order does not matter", points=1
    ):
        grids, lows, subjects = many
        effect = 0.25
        flat = [torch.full(g.shape, low + effect) for g, low in zip(grids, lows, strict=True)]
        what = (
            f"average_indirect_effect on {len(flat)} grids that are each prompt's corrupted "
            f"probability + {effect} everywhere"
        )
        got = t.tensor(
            t.call(average_indirect_effect, flat, lows, subjects),
            what,
            shape=(deep, len(ROLES)),
            hint=_AIE_SHAPE,
        )
        t.close(
            got,
            torch.full((deep, len(ROLES)), effect),
            what + ": every entry is the effect",
            atol=1e-6,
            hint="Subtract each prompt's own corrupted probability; average "
            "within each prompt, then over prompts.",
        )
        order = torch.randperm(len(grids), generator=gen).tolist()
        order = order if order != sorted(order) else order[::-1]
        shuffled = (
            [grids[i] for i in order],
            [lows[i] for i in order],
            [subjects[i] for i in order],
        )
        what = "average_indirect_effect on the random grids, then on the same prompts in the " + (
            f"order {order}"
        )
        straight = t.tensor(
            t.call(average_indirect_effect, *many), what, shape=(deep, len(ROLES)), hint=_AIE_SHAPE
        )
        t.close(
            t.call(average_indirect_effect, *shuffled),
            straight,
            what + ": the same average",
            atol=1e-6,
            hint="Pair each grid with its own corrupted probability and subject.",
        )


# ----- 2.8 ---------------------------------------------------------------------------------------
# Total effects by kind: far above every threshold the check uses (0.01, 0.05, 0.15), tiny
# (between 0.01 and 0.05), medium (between 0.15 and 0.35), negative, small (between 0.05 and
# 0.15), and tiny with a clean probability below 0.05.
_EFFECTS = {
    "big": (0.4, 0.7),
    "tiny": (0.015, 0.045),
    "medium": (0.2, 0.3),
    "negative": (-0.3, -0.1),
    "small": (0.07, 0.12),
}


def _recovery_prompts(
    t: Checker, gen: torch.Generator, n_layers: int, kinds: list[str], fixed: list
) -> tuple[list[Tensor], list[float], list[float], list[list[int]]]:
    """Grids, clean and corrupted probabilities and subjects of prompts whose total effects
    are of the given kinds; the first prompt has every role."""
    grids, subjects = problems.random_grids(gen, n_layers, _shapes(t, gen, fixed))
    highs, lows = [], []
    for kind, grid in zip(kinds, grids, strict=True):
        low_end, high_end = _EFFECTS[kind]
        effect = low_end + (high_end - low_end) * float(torch.rand(1, generator=gen))
        low = 0.02 + 0.2 * float(torch.rand(1, generator=gen)) if kind != "negative" else 0.45
        low = 0.001 if kind == "tiny" and len(lows) == len(kinds) - 1 else low
        high, low = round(low + effect, 4), round(low, 4)
        lows.append(low)
        highs.append(high)
        grid.copy_((low + (high - low) * (1.5 * grid - 0.25)).clamp(1e-4, 0.999))
    return grids, highs, lows, subjects


@LAB.exercise("2.8", "average recovery over prompts", points=3)
def check_average_recovery(average_recovery: Callable, t: Checker) -> None:
    """Six and three prompts (up to 13 layers and 16 tokens) with large, small, tiny and
    negative total effects, at the default min_effect and at three others, in no order and
    again after others; then the definition: grids at the clean probability average to 1, at
    the corrupted one to 0, and a prompt left out changes nothing whatever its grid."""
    gen = kit.generator(t, 8)
    deep, shallow = t.choice((11, 12, 13)), t.choice((2, 1, 3))
    six = _recovery_prompts(
        t,
        gen,
        deep,
        ["big", "tiny", "medium", "negative", "small", "tiny"],
        [(2, 3, 2), (1, 1, 2), (2, 2, 1), (1, 2, 2), (3, 1, 1), (1, 2, 9)],
    )
    three = _recovery_prompts(
        t, gen, shallow, ["big", "tiny", "small"], [(2, 2, 8), (1, 1, 9), (5, 2, 3)]
    )

    def compare(args: tuple, what: str) -> None:
        want = t.expected("average_recovery", *args)
        wrong = t.mistakes("average_recovery", *args)
        got = t.tensor(
            t.call(average_recovery, *args), what, shape=tuple(want.shape), hint=_AIE_SHAPE
        )
        t.close(
            got,
            want,
            what,
            atol=1e-5,
            rtol=1e-4,
            mistakes=wrong,
            hint="Keep the prompts with p_clean - p_corrupted >= min_effect; turn each kept "
            "grid into recovery (exercise 2.6); average by role as in exercise 2.7, with a "
            "corrupted level of 0.",
        )

    def described(data, min_effect=None) -> str:
        shown = "" if min_effect is None else f", min_effect={min_effect}"
        effects = ", ".join(f"{h - lo:+.3f}" for h, lo in zip(data[1], data[2], strict=True))
        return (
            f"average_recovery(grids, clean_probs, corrupted_probs, subjects{shown}) on "
            f"{len(data[0])} prompts of {data[0][0].shape[0]} layer(s), total effects "
            f"{effects}"
        )

    with t.part("the default min_effect", points=1):
        compare(six, described(six))
        compare(three, described(three))

    with t.part("other thresholds, and the default again after them", points=1):
        for data, min_effect in ((six, 0.15), (three, 0.01), (six, 0.01)):
            compare((*data, min_effect), described(data, min_effect))
        compare(six, described(six) + " (again, after others)")

    with t.part(
        "the definition: clean grids give 1, corrupted grids 0, and a prompt left out "
        "changes nothing",
        points=1,
    ):
        grids, highs, lows, subjects = six
        shape = (deep, len(ROLES))
        for name, levels, value in (("clean", highs, 1.0), ("corrupted", lows, 0.0)):
            flat = [torch.full(g.shape, level) for g, level in zip(grids, levels, strict=True)]
            what = (
                f"average_recovery on six grids that hold each prompt's {name} probability "
                "everywhere"
            )
            got = t.tensor(
                t.call(average_recovery, flat, highs, lows, subjects),
                what,
                shape=shape,
                hint=_AIE_SHAPE,
            )
            t.close(
                got,
                torch.full(shape, value),
                f"{what}: every entry is {value:g}",
                atol=1e-5,
                hint="Recovery is 1 at the clean probability and 0 at the "
                "corrupted one; average the kept prompts' recoveries by role.",
            )
        wild = torch.full((deep, 6), 0.9)
        extra = (
            [*grids[:2], wild, *grids[2:]],
            [*highs[:2], 0.41, *highs[2:]],
            [*lows[:2], 0.4, *lows[2:]],
            [*subjects[:2], [2, 3], *subjects[2:]],
        )
        what = (
            "average_recovery on the six prompts, then with a seventh (total effect 0.01, "
            "below min_effect) inserted third"
        )
        base = t.tensor(t.call(average_recovery, *six), what, shape=shape, hint=_AIE_SHAPE)
        t.close(
            t.call(average_recovery, *extra),
            base,
            what + ": the same result",
            atol=1e-5,
            rtol=1e-4,
            hint="Leave out every prompt with p_clean - p_corrupted < min_effect, "
            "with its grid and its subject.",
        )
