"""Part 2 of lab 02, ROME causal tracing: exercises 2.4 (corrupt the subject), 2.5 (the
restoration grid) and 2.6 (recovery, normalised)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab02 import problems
from labkit.checks.lab02.lab import LAB

_SIGMAS = 6.0  # statistical tests: a correct answer fails about once in 10^9 tests
# Grids: float32 runs of 13 sharpened layers differ from float64 ones by up to 1e-5 + 4e-4 x p.
_GRID = {"atol": 5e-5, "rtol": 2e-3}


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _z(value: float, expected: float, se: float) -> float:
    return abs(value - expected) / se


# ----- 2.4 ---------------------------------------------------------------------------------------
def _span(start: int, size: int) -> list[int]:
    return list(range(start, start + size))


@LAB.exercise("2.4", "corrupt the subject", points=4)
def check_corrupt_subject(corrupt_subject: Callable, t: Checker) -> None:
    """Subjects of 1 to 4 tokens at the start, middle and end of prompts of 3 to 14 tokens (a
    subject token also outside the subject), two families, every argument at other values than
    its default and at its default, in no order; the noise is tested for independence, its
    mean, its standard deviation and its tails; the seed must reproduce it and only it."""
    first, second = problems.families(t)
    gen = kit.generator(t, 4)
    a = problems.model(t, first, 1, seed=t.choice((0, 1, 2)), skewed=True)
    b = problems.model(t, second, 1, seed=t.choice((0, 1, 2)), skewed=True)
    long, short = t.choice((12, 11, 14)), t.choice((4, 3, 5))
    size, start = t.choice((3, 2, 4)), t.choice((4, 1, 6))
    subject = _span(start, size)
    again_at = start + size + 1 if start + size + 1 < long - 1 else start - 1  # outside it
    tokens = problems.doubled_bytes(problems.prompt(a, gen, long, repeats=[(again_at, start)]))
    other = problems.doubled_bytes(problems.prompt(a, gen, long))
    other_subject = _span(t.choice((2, 1, 5)), t.choice((2, 1, 4)))
    tokens_b = problems.doubled_bytes(problems.prompt(b, gen, short))
    subject_b = t.choice(([short - 1], [1, 2], [1]))  # the last position, or right after the anchor
    seeds = [t.seed(40 + i) + 1 for i in range(5)]  # never 0, the default
    calls: list[str] = []

    def corrupt(lm, ids, positions, where="", **options):
        shown = "".join(f", {k}={v}" for k, v in options.items())
        call = f"corrupt_subject(lm, tokens, {positions}{shown}) on a tiny {lm.family} model, " + (
            f"{ids.shape[1]} tokens{where}"
        )
        torch.manual_seed(t.seed(60 + len(calls)))  # the global generator differs at every call
        calls.append(call)
        got = t.call(corrupt_subject, lm, ids, list(positions), **options)
        shape = (options.get("n_samples", 10), ids.shape[1], lm.d_model)
        hint = (
            "Return the corrupted embeddings, one row per noise sample: (n_samples, pos, d_model)."
        )
        return t.tensor(got, call, shape=shape, hint=hint).double(), call

    def clean(lm, ids) -> Tensor:
        with torch.no_grad():
            return lm.embed(ids)[0].double()

    def noise(got, lm, ids, positions) -> Tensor:
        return got[:, positions] - clean(lm, ids)[positions]  # (n_samples, subject, d_model)

    with t.part("the noise goes on the subject's token embeddings only", points=1):
        same = {"n_samples": 7, "noise_scale": 1.5, "seed": seeds[0]}
        runs = [  # the same options on another model and on another prompt, then the defaults
            (a, tokens, subject, same),
            (b, tokens_b, subject_b, same),
            (a, other, other_subject, same),
            (b, tokens_b, subject_b, {}),
            (a, other, other_subject, {"n_samples": 2, "seed": seeds[0]}),
            (a, tokens, subject, same),
        ]
        for i, (lm, ids, positions, options) in enumerate(runs):
            again = " (the first call again, after others)" if i == len(runs) - 1 else ""
            got, call = corrupt(lm, ids, positions, again, **options)
            outside = [p for p in range(ids.shape[1]) if p not in positions]
            base = clean(lm, ids)
            t.close(
                got[:, outside],
                base[outside].expand(got.shape[0], -1, -1),
                f"{call}: tokens outside the subject keep their embeddings lm.embed(tokens)",
                atol=1e-6,
                scale=float(base.abs().max()),
                hint="Add noise only at the subject positions, to the token embeddings "
                "lm.embed(tokens); the model adds any position embeddings itself.",
            )
            t.true(
                bool((noise(got, lm, ids, positions) != 0).any(-1).all()),
                f"{call}: every subject position of every sample gets noise",
                hint="Noise at each of the subject positions (all of them), in every sample.",
            )

    with t.part("each sample, position and dimension gets its own draw", points=1):
        got, call = corrupt(a, tokens, subject, n_samples=400, seed=seeds[1])
        drawn = noise(got, a, tokens, subject)
        drawn = drawn - drawn.mean()
        found = []  # (correlation in standard errors, correlation, axis name, hint)
        for axis, name, hint in (
            (
                0,
                "consecutive samples",
                "Draw noise of shape (n_samples, n_subject, d_model), not one draw repeated for "
                "every sample (and do not re-seed the generator inside a loop over samples).",
            ),
            (
                1,
                "consecutive subject positions",
                "Draw different noise for each subject position (do not re-seed the generator "
                "inside a loop over positions).",
            ),
            (
                2,
                "consecutive dimensions",
                "Draw one number per dimension: noise of shape (n_samples, n_subject, d_model), "
                "not one number per token.",
            ),
        ):
            n = drawn.shape[axis] - 1
            x, y = drawn.narrow(axis, 0, n), drawn.narrow(axis, 1, n)
            corr = float((x * y).sum() / (x.square().sum() * y.square().sum()).sqrt())
            found.append((abs(corr) * math.sqrt(x.numel()), corr, name, hint))
        # Name the most dependent axis: noise repeated along one axis also inflates the others.
        errors, corr, name, hint = max(found)
        t.true(
            errors < _SIGMAS,
            f"{call}: the noise of {name} is independent (correlation {corr:.3f}, more than "
            f"{_SIGMAS:g} standard errors from 0)",
            hint=hint,
        )

    with t.part("Gaussian noise of std noise_scale x the std of the embedding matrix", points=1):
        for lm, ids, positions, options in (
            (a, tokens, subject, {"n_samples": 400, "seed": seeds[2]}),
            (b, tokens_b, subject_b, {"n_samples": 1200, "noise_scale": 0.5, "seed": seeds[3]}),
        ):
            got, call = corrupt(lm, ids, positions, **options)
            scale = options.get("noise_scale", 3.0)
            want = t.expected("noise_std", lm, ids, scale)
            wrong = t.mistakes("noise_std", lm, ids, scale)
            values = noise(got, lm, ids, positions).flatten()
            count, mean, std = values.numel(), float(values.mean()), float(values.std())
            t.true(
                _z(mean, 0.0, want / math.sqrt(count)) < _SIGMAS,
                f"{call}: the noise has mean zero (got {mean:.4g}, more than {_SIGMAS:g} "
                "standard errors from 0)",
                hint="Draw with torch.randn (mean 0), not torch.rand (uniform on 0..1).",
            )
            tol = _SIGMAS / math.sqrt(2 * count)  # relative standard error of a sample std
            t.close(
                std,
                want,
                f"{call}: the std of the noise (over {count} values) is {scale:g} x "
                f"lm.embed.weight.std() = {want:.4g}, within {_SIGMAS:g} standard errors",
                atol=0.0,
                rtol=tol,
                mistakes=[(v, h) for v, h in wrong if abs(v - want) > 2 * tol * want],
                hint="Scale standard normal noise (torch.randn) by noise_scale * "
                "lm.embed.weight.std().",
            )
            tails = float((values.abs() > 2 * std).double().mean())
            gaussian = math.erfc(2 / math.sqrt(2))  # P(|z| > 2) = 0.0455
            t.true(
                _z(tails, gaussian, math.sqrt(gaussian * (1 - gaussian) / count)) < _SIGMAS,
                f"{call}: the noise is Gaussian: {gaussian:.1%} of its values should lie beyond "
                f"2 std, but {tails:.1%} do",
                hint="Use torch.randn (normal), not uniform noise scaled to the same std.",
            )

    with t.part("seeded: the same seed gives the same noise, another seed other noise", points=1):
        first_run, call = corrupt(a, tokens, subject, n_samples=20, seed=seeds[4])
        corrupt(b, tokens_b, subject_b, n_samples=3, seed=seeds[4])  # another call between
        again, _ = corrupt(a, tokens, subject, n_samples=20, seed=seeds[4])
        t.true(
            torch.equal(first_run, again),
            f"{call} twice (with another call between) gives exactly the same embeddings",
            hint="Draw from torch.Generator().manual_seed(seed), created inside the function, "
            "not from the global random state or a generator kept between calls.",
        )
        other_run, other_call = corrupt(a, tokens, subject, n_samples=20, seed=seeds[4] + 1)
        t.true(
            not torch.equal(first_run, other_run),
            f"{other_call} gives other noise than seed={seeds[4]}",
            hint="Use the `seed` argument to seed your generator.",
        )
        default, default_call = corrupt(a, tokens, subject)
        named, named_call = corrupt(a, tokens, subject, n_samples=10, noise_scale=3.0, seed=0)
        t.true(
            torch.equal(default, named),
            f"{default_call} (the defaults) gives exactly {named_call}",
            hint="The defaults are n_samples=10, noise_scale=3.0 and seed=0.",
        )


# ----- 2.5 ---------------------------------------------------------------------------------------
_GRID_SHAPE = "One value per (layer, position): (n_layers, pos)."


@LAB.exercise("2.5", "the restoration grid", points=5, timeout=30)
def check_restoration_grid(restoration_grid: Callable, t: Checker) -> None:
    """Three models (two families; 2 to 13 layers), prompts of 3 to 12 tokens corrupted from
    the token after the anchor, the middle or the last token on, 1 to 3 samples, targets that
    are no run's top token, every site, odd and even windows and windows wider than the model,
    in no order and again after others; then what the method implies: no corruption gives the
    clean probability everywhere, a cell before the corruption the corrupted one, the last cell
    of the residual stream the clean one, and a window over every layer the same row."""
    first, second = problems.families(t)
    gen = kit.generator(t, 5)
    seed = t.choice((0, 1, 2))
    settings = [  # family, layers, tokens, corrupted span, samples
        (first, t.choice((3, 4, 5)), t.choice((11, 12, 10)), _span(t.choice((3, 2, 5)), 3), 2),
        (second, t.choice((11, 12, 13)), t.choice((5, 4, 6)), _span(1, t.choice((2, 1))), 3),
        (first, 2, 3, [2], 1),
    ]
    grids = []
    for family, n_layers, n_pos, span, n_samples in settings:
        lm = problems.model(t, family, n_layers, seed)
        tokens = problems.prompt(lm, gen, n_pos)
        corrupted = problems.substituted(lm, tokens, span, n_samples, gen)
        target = problems.pick_target(lm, {"input_ids": tokens}, {"inputs_embeds": corrupted})
        grids.append((lm, tokens, corrupted, target, span))
    p1, p2, p3 = grids
    odd, even = t.choice((5, 3, 7)), t.choice((2, 4, 6))
    cover = 2 * p3[0].n_layers  # a window over every layer of p3's model

    def call(problem, *site_window, what=""):
        lm, tokens, corrupted, target, _ = problem
        args = (lm, tokens, corrupted, target, *site_window)
        shown = "".join(f", {v!r}" for v in site_window)
        text = (
            f"restoration_grid(lm, tokens, corrupted, {target}{shown}) on a tiny "
            f"{lm.family} model with {lm.n_layers} layers, {tokens.shape[1]} tokens, "
            f"{_count(corrupted.shape[0], 'sample')}{what}"
        )
        got = t.call(restoration_grid, *args)
        return (
            args,
            text,
            t.tensor(got, text, shape=(lm.n_layers, tokens.shape[1]), hint=_GRID_SHAPE),
        )

    def against_reference(problem, *site_window, what="", hint=""):
        lm, tokens, corrupted, target, _ = problem
        args = (lm, tokens, corrupted, target, *site_window)
        want = t.expected("restoration_grid", *args)
        wrong = t.mistakes("restoration_grid", *args)
        _, text, got = call(problem, *site_window, what=what)
        t.close(
            got,
            want,
            f"{text}: every cell against a reference restoration of that cell",
            **_GRID,
            mistakes=wrong,
            hint=hint,
        )

    with t.part("the residual-stream grid", points=1):
        hint = (
            "Cell (L, p): run the corrupted embeddings with the clean resid_post[L] put back "
            "at position p only, and average p(target) over the noise samples."
        )
        against_reference(p1, hint=hint)  # the default site
        against_reference(p2, "resid", 1, hint=hint)
        against_reference(
            p3,
            "resid",
            even,
            what=" (the window is for 'mlp' and 'attn' only)",
            hint=hint + " The window does not apply to 'resid'.",
        )
        against_reference(p1, what=" (again, after others)", hint=hint)

    window_hint = (
        "Cell (L, p): restore the clean {} at position p in every layer of the window "
        "max(0, L - w // 2), ..., min(n_layers, L - (-w // 2)) - 1, all in the same "
        "run, and average p(target) over the noise samples."
    )
    with t.part("the MLP grid, windows odd, even, wider than the model and the default", points=1):
        hint = window_hint.format("mlp_out")
        against_reference(p2, "mlp", odd, hint=hint)
        against_reference(p1, "mlp", 3, hint=hint)
        against_reference(p3, "mlp", cover, hint=hint)
        against_reference(p2, "mlp", even, what=" (the same model, another window)", hint=hint)
        against_reference(p1, "mlp", what=" (the default window)", hint=hint)

    with t.part("the attention grid, windows odd and even", points=1):
        hint = window_hint.format("attn_out")
        against_reference(p1, "attn", even, hint=hint)
        against_reference(p2, "attn", odd, hint=hint)
        against_reference(p1, "attn", 3, what=" (the same model, another window)", hint=hint)

    with t.part("the definitions: the clean and the corrupted run at the edges", points=1):
        lm, tokens, corrupted, target, span = p1
        high = t.expected("clean_prob", lm, tokens, target)
        low = t.expected("corrupted_prob", lm, corrupted, target)
        _, text, got = call(p1, "resid", 1)
        t.close(
            got[:, : span[0]],
            torch.full((lm.n_layers, span[0]), low),
            f"{text}: restoring a position before the corrupted ones changes nothing, so "
            "those cells hold the corrupted run's p(target), averaged over the samples",
            **_GRID,
            hint="Run the corrupted embeddings you were given, and restore the clean "
            "activation at one position of one layer per cell.",
        )
        t.close(
            got[-1, -1],
            high,
            f"{text}: restoring the last layer's resid_post at the last position gives the "
            "clean run's p(target)",
            **_GRID,
            hint="The residual stream leaving the last block at the last position decides "
            "the prediction: restored, it gives the clean probability.",
        )
        with torch.no_grad():
            clean = lm.embed(tokens).repeat(2, 1, 1)
        for site, window in (("resid", 1), ("mlp", 3)):
            problem = (lm, tokens, clean, target, span)
            _, text, got = call(problem, site, window, what=" and no corruption at all")
            t.close(
                got,
                torch.full(got.shape, high),
                f"{text}: with nothing corrupted every cell is the clean run's p(target)",
                **_GRID,
                hint="Run the embeddings you were given (lm.model(inputs_embeds=...)); add no "
                "noise of your own; return raw probabilities (not normalised).",
            )

    with t.part("a window over every layer restores the same layers in every row", points=1):
        _, text, got = call(p3, "mlp", cover)
        t.close(
            got,
            got[:1].expand_as(got),
            f"{text}: with a window of {cover} layers every row restores every layer, so "
            "every row is the same",
            **_GRID,
            hint="Clip the window to the model's layers: max(0, L - w // 2) up to "
            "min(n_layers, L - (-w // 2)).",
        )


# ----- 2.6 ---------------------------------------------------------------------------------------
def _ends(gen: torch.Generator, raised: bool = False) -> tuple[float, float]:
    """(p_clean, p_corrupted), 0.2 to 0.35 apart; ``raised``: the corruption raises p(target)."""
    low = round(0.15 + 0.15 * float(torch.rand(1, generator=gen)), 4)
    high = round(low + 0.2 + 0.15 * float(torch.rand(1, generator=gen)), 4)
    return (low, high) if raised else (high, low)


@LAB.exercise("2.6", "recovery, normalised", points=2)
def check_recovery(recovery: Callable, t: Checker) -> None:
    """Grids, curves, 3-d tensors and single values (sizes past 9), total effects of either
    sign, values beyond both ends, in no order and again after others; the clean probability
    maps to 1, the corrupted one to 0, and the scale is linear."""
    gen = kit.generator(t, 6)
    deep, wide = t.choice((11, 12, 13)), t.choice((12, 10, 14))
    problems_ = [
        ("a grid", torch.rand(deep, wide, generator=gen), *_ends(gen)),
        ("another grid of that shape", torch.rand(deep, wide, generator=gen), *_ends(gen)),
        ("a curve", torch.rand(t.choice((5, 4, 7)), generator=gen), *_ends(gen, raised=True)),
        ("a 3-d tensor", torch.rand(2, 3, 4, generator=gen), *_ends(gen)),
        ("a single value", torch.rand(1, generator=gen), *_ends(gen, raised=True)),
    ]
    problems_.append(problems_[0])

    with t.part("element-wise, on tensors of any shape, either sign of the total effect", points=1):
        for i, (name, probs, high, low) in enumerate(problems_):
            effect = "the corruption raises p(target)" if high < low else "p_clean > p_corrupted"
            what = (
                f"recovery(probs, p_clean={high}, p_corrupted={low}) on {name} of shape "
                f"{tuple(probs.shape)} ({effect})"
                + (" again, after others" if i == len(problems_) - 1 else "")
            )
            want = t.expected("recovery", probs, high, low)
            wrong = t.mistakes("recovery", probs, high, low)
            got = t.tensor(
                t.call(recovery, probs, high, low),
                what,
                shape=tuple(probs.shape),
                hint="Same shape as probs.",
            )
            t.close(
                got,
                want,
                what,
                atol=1e-5,
                rtol=1e-4,
                mistakes=wrong,
                hint="Recovery is the fraction of the lost probability that came back: "
                "the restored probability's distance from p_corrupted, over the total "
                "effect p_clean - p_corrupted, element-wise.",
            )

    with t.part(
        "the clean run maps to 1, the corrupted run to 0, and the scale is linear", points=1
    ):
        fractions = torch.tensor([1.0, 0.0, 0.5, 1.5, -0.25], dtype=torch.float64)
        for high, low in (_ends(gen), _ends(gen, raised=True)):
            probs = (low + fractions * (high - low)).float()
            what = (
                f"recovery(probs, p_clean={high}, p_corrupted={low}) where probs are "
                "p_clean, p_corrupted, their midpoint, and 1.5 and -0.25 of the way from "
                "p_corrupted to p_clean"
            )
            got = t.tensor(t.call(recovery, probs, high, low), what, shape=(5,))
            t.close(
                got,
                fractions,
                what,
                atol=1e-5,
                rtol=1e-4,
                hint="The clean probability maps to 1 and the corrupted one to 0; values "
                "beyond them go beyond 1 and 0 (no clipping).",
            )
