"""Lab 03, part 10 (exercise 3.15): noising and denoising a set of heads."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _corrupted_metric, _run_cache
from labkit.hooks import patch


# ----- 3.15 patch_head_set -----------------------------------------------------------------------
def _head_set(lm, source, target, metric, heads, *, positions=None, group=False, each=False):
    """The metric of the run on ``target`` with ``heads`` from the run on ``source``; with
    ``each``, every head patched alone and the changes added up."""
    cache = _run_cache(lm, source, "head_out")
    base = _corrupted_metric(lm, target, metric)
    chosen = sorted({(int(L), int(h)) for L, h in heads})
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    size = lm.n_heads // kv

    def run(which):
        contexts = []
        for layer in sorted({L for L, _ in which}):
            mine = [h for L, h in which if L == layer]
            if group:
                mine = sorted(
                    {g for h in mine for g in range(h // size * size, (h // size + 1) * size)}
                )
            contexts.append(patch(lm, "head_out", layer, cache["head_out", layer], heads=mine,
                                  positions=positions))  # fmt: skip
        with torch.no_grad():
            from contextlib import ExitStack

            with ExitStack() as stack:
                for context in contexts:
                    stack.enter_context(context)
                return float(metric(lm.model(target).logits[:, -1]))

    if each:
        return torch.tensor(base + sum(run([h]) - base for h in chosen))
    return torch.tensor(run(chosen))


@KEY.mistake(
    "patch_head_set",
    "Denoising and noising are swapped: denoising puts the clean outputs into the corrupted "
    "run (is the set sufficient?), noising puts the corrupted outputs into the clean run (is "
    "it necessary?).",
)
def set_swapped(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    other = "noise" if direction == "denoise" else "denoise"
    return sol.patch_head_set(lm, clean, corrupted, metric, heads, other)


@KEY.mistake(
    "patch_head_set",
    "You returned how much the metric fell (its clean value minus the patched one). Return "
    "the metric of the patched run itself, in both directions.",
)
def set_loss(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if direction != "noise":
        raise NotThisProblem
    high = _corrupted_metric(lm, clean, metric)
    return high - sol.patch_head_set(lm, clean, corrupted, metric, heads, direction)


@KEY.mistake(
    "patch_head_set",
    "You patched the heads one at a time and added up their effects. Patch them all in one "
    "run: heads interact, and their effects do not add up.",
)
def set_each(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if len({tuple(h) for h in heads}) < 2:
        raise NotThisProblem
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, each=True)


@KEY.mistake(
    "patch_head_set",
    "You patched the heads at the last position only. Patch their outputs at every position.",
)
def set_last_position(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, positions=[clean.shape[1] - 1])


@KEY.mistake(
    "patch_head_set",
    "You patched every query head that shares a key/value head with a chosen one. Each query "
    "head has its own output: patch only the heads you are given.",
)
def set_kv_group(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    if kv == lm.n_heads:
        raise NotThisProblem
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, group=True)


@KEY.mistake(
    "patch_head_set",
    "Only the first head of the list was patched: patch every (layer, head) in it.",
)
def set_first_only(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if len({tuple(h) for h in heads}) < 2:
        raise NotThisProblem
    return sol.patch_head_set(lm, clean, corrupted, metric, list(heads)[:1], direction)
