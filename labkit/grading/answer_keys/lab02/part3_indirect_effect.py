"""Part 3 of lab 02's answer key, the average indirect effect (2.7-2.8): the mistakes of
averaging by role and of averaging recoveries."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab02.key import KEY, NotHere

# ----- 2.7 average_indirect_effect ---------------------------------------------------------------
ROLE_COUNT = 4


def _aie(grids, lows, subjects, mistake: str = "") -> Tensor:
    """The average indirect effect (n_layers, 4) with a known mistake."""
    n_layers = grids[0].shape[0]
    per_role: list[list[Tensor]] = [[] for _ in range(ROLE_COUNT)]
    mean_low = sum(lows) / len(lows)
    for grid, low, subject in zip(grids, lows, subjects, strict=True):
        grid = grid.double()
        if mistake == "no subtraction":
            effect = grid
        elif mistake == "mean low":
            effect = grid - mean_low
        else:
            effect = grid - low
        last_subject, last = subject[-1], grid.shape[1] - 1
        if mistake == "last subject off by one":
            last_subject += 1
        roles = [list(subject[:-1]), [last_subject], list(range(last_subject + 1, last)), [last]]
        if mistake == "whole subject":
            roles[0] = list(subject)
        if mistake == "after includes last":
            roles[2] = list(range(last_subject + 1, last + 1))
        if mistake == "includes prefix":
            roles[0] = list(range(0, last_subject))
        for column, positions in enumerate(roles):
            if mistake == "pooled":
                per_role[column] += [effect[:, p] for p in positions]
            elif positions:
                per_role[column].append(effect[:, positions].mean(1))
            elif mistake == "counts every prompt":
                per_role[column].append(torch.zeros(n_layers, dtype=torch.float64))
    out = torch.zeros(n_layers, ROLE_COUNT, dtype=torch.float64)
    for column, effects in enumerate(per_role):
        if effects:
            out[:, column] = torch.stack(effects).mean(0)
    return out


_AIE_MISTAKES = {
    "no subtraction": "You averaged the restored probabilities; the indirect effect is the "
    "restored probability minus that prompt's corrupted probability.",
    "mean low": "You subtracted the corrupted probability averaged over all prompts; subtract "
    "each prompt's own corrupted probability from its own grid.",
    "pooled": "You averaged over all tokens of a role at once, so prompts with longer subjects "
    "weigh more: average within each prompt first, then over prompts.",
    "counts every prompt": "You divided by the number of all prompts; average only over the "
    "prompts that have tokens in that role (a one-token subject has no 'subject' tokens).",
    "last subject off by one": "Your 'last subject token' is the token after the subject: it is "
    "subject[-1].",
    "whole subject": "Your 'subject' column includes the last subject token; it is the subject "
    "tokens before the last one.",
    "after includes last": "Your 'after subject' includes the last token; it stops before it.",
    "includes prefix": "Your 'subject' column includes the tokens before the subject; they "
    "belong to no role.",
}


def _aie_mistake(name: str) -> None:
    @KEY.mistake("average_indirect_effect", _AIE_MISTAKES[name])
    def mistake(sol, grids, lows, subjects):
        return _aie(grids, lows, subjects, name)


for _name in _AIE_MISTAKES:
    _aie_mistake(_name)


# ----- 2.8 average_recovery ----------------------------------------------------------------------
def _kept(highs, lows, min_effect, rule) -> list[int]:
    return [
        i
        for i, (high, low) in enumerate(zip(highs, lows, strict=True))
        if rule(high, low) >= min_effect
    ]


def _average_of(sol, grids, subjects, keep, normalise) -> Tensor:
    recoveries = [normalise(i) for i in keep]
    return sol.average_indirect_effect(recoveries, [0.0] * len(keep), [subjects[i] for i in keep])


_AVERAGE_RECOVERY_MISTAKES = {
    "no threshold": "You kept prompts whose total effect is below min_effect: their recovery "
    "divides by almost nothing. Leave out every prompt with p_clean - p_corrupted < min_effect.",
    "zeroed": "You counted the prompts below min_effect as zero recovery; leave them out of the "
    "average altogether (a zero would pull every role towards 'no effect').",
    "abs threshold": "You kept a prompt whose corruption raised p(target) (negative total "
    "effect): the threshold is on p_clean - p_corrupted itself, not its absolute value.",
    "clean threshold": "You filtered on the clean probability; filter on the total effect "
    "p_clean - p_corrupted.",
    "ratio of means": "You divided the average indirect effect by the average total effect; "
    "normalise each prompt's grid first, then average the recoveries.",
    "raw": "You averaged raw indirect effects: normalise each prompt's grid to recovery first.",
    "clipped": "You clipped recoveries to 0..1; keep them as they are.",
    "fixed threshold": "You ignored the min_effect argument.",
    "subjects not filtered": "You left prompts out of the grids but not out of the subjects, so "
    "the kept grids are paired with the wrong subjects: filter every list the same way.",
    "pooled ends": "You normalised every grid with the clean and corrupted probabilities "
    "averaged over the prompts; normalise each prompt with its own.",
}


def _average_recovery(sol, grids, highs, lows, subjects, min_effect=0.05, mistake=""):
    rule = {
        "no threshold": lambda high, low: math.inf,
        "abs threshold": lambda high, low: abs(high - low),
        "clean threshold": lambda high, low: high,
    }.get(mistake, lambda high, low: high - low)
    threshold = 0.05 if mistake == "fixed threshold" else min_effect
    if mistake == "fixed threshold" and min_effect == 0.05:
        raise NotHere("the default")
    keep = _kept(highs, lows, threshold, rule)

    def recovery(i: int) -> Tensor:
        if mistake in ("raw", "ratio of means"):
            return grids[i].double() - lows[i]
        if mistake == "pooled ends":
            high = sum(highs[k] for k in keep) / len(keep)
            low = sum(lows[k] for k in keep) / len(keep)
            return sol.recovery(grids[i].double(), high, low)
        value = sol.recovery(grids[i].double(), highs[i], lows[i])
        return value.clamp(0, 1) if mistake == "clipped" else value

    if mistake == "zeroed":
        everyone = list(range(len(grids)))
        recoveries = [
            recovery(i) if i in keep else torch.zeros_like(grids[i].double()) for i in everyone
        ]
        return sol.average_indirect_effect(recoveries, [0.0] * len(grids), subjects)
    if mistake == "subjects not filtered":
        if keep == list(range(len(keep))):
            raise NotHere("the kept prompts come first")
        recoveries = [recovery(i) for i in keep]
        return sol.average_indirect_effect(recoveries, [0.0] * len(keep), subjects[: len(keep)])
    out = _average_of(sol, grids, subjects, keep, recovery)
    if mistake == "ratio of means":
        out = out / (sum(highs[i] - lows[i] for i in keep) / len(keep))
    return out


def _average_recovery_mistake(name: str) -> None:
    @KEY.mistake("average_recovery", _AVERAGE_RECOVERY_MISTAKES[name])
    def mistake(sol, grids, highs, lows, subjects, min_effect=0.05):
        return _average_recovery(sol, grids, highs, lows, subjects, min_effect, name)


for _name in _AVERAGE_RECOVERY_MISTAKES:
    _average_recovery_mistake(_name)
