"""Lab 03, part 11 (exercise 3.16): the faithfulness of a circuit."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _ids, _run_cache
from labkit.hooks import patch


# ----- 3.16 circuit_faithfulness -----------------------------------------------------------------
def _faithful(lm, clean, corrupted, targets, foils, heads, *, keep=True, run="clean",
              positions=None, scale="pair", mean=False) -> Tensor:  # fmt: skip
    """Faithfulness and its wrong versions: ``keep`` False corrupts the heads in the set
    instead of the others; ``run`` "corrupted" denoises the set in the corrupted run."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    rows = torch.arange(clean.shape[0])
    chosen = {(int(L), int(h)) for L, h in heads}

    def diff(tokens, contexts=()):
        from contextlib import ExitStack

        with torch.no_grad(), ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            logits = lm.model(tokens).logits[:, -1]
        return logits[rows, targets] - logits[rows, foils]

    high, low = diff(clean), diff(corrupted)
    if run == "corrupted":
        cache = _run_cache(lm, clean, "head_out")
        kept = {L: [h for h in range(lm.n_heads) if (L, h) in chosen] for L in range(lm.n_layers)}
        contexts = [
            patch(lm, "head_out", L, cache["head_out", L], heads=kept[L]) for L in kept if kept[L]
        ]
        now = diff(corrupted, contexts)
    else:
        cache = _run_cache(lm, corrupted, "head_out")
        contexts = []
        for L in range(lm.n_layers):
            which = [h for h in range(lm.n_heads) if ((L, h) in chosen) != keep]
            if which:
                contexts.append(patch(lm, "head_out", L, cache["head_out", L], heads=which,
                                      positions=positions))  # fmt: skip
        now = diff(clean, contexts)
    if scale == "clean":
        found = now / high
    elif scale == "batch":
        found = ((now.mean() - low.mean()) / (high.mean() - low.mean())).expand(len(rows))
    else:
        found = (now - low) / (high - low)
    return found.mean() if mean else found.clone()


@KEY.mistake(
    "circuit_faithfulness",
    "You measured the clean run's top token, not the target_ids given: the target need not be "
    "the token the model ranks first. Use the target and foil ids you are passed.",
)
def faith_argmax_target(sol, lm, clean, corrupted, targets, foils, heads):
    with torch.no_grad():
        top = lm.model(clean).logits[:, -1].argmax(-1)
    if torch.equal(top, _ids(lm, targets).expand_as(top)):
        raise NotThisProblem
    return _faithful(lm, clean, corrupted, top, foils, heads)


@KEY.mistake(
    "circuit_faithfulness",
    "You corrupted the heads in the set and kept the others: that ablates the circuit. Keep "
    "the set clean and give every *other* head its corrupted output.",
)
def faith_ablates_set(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, keep=False)


@KEY.mistake(
    "circuit_faithfulness",
    "You normalised the batch's mean logit difference once. Faithfulness is per prompt pair: "
    "(LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted) for each row, so that its spread "
    "shows.",
)
def faith_batch(sol, lm, clean, corrupted, targets, foils, heads):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _faithful(lm, clean, corrupted, targets, foils, heads, scale="batch")


@KEY.mistake(
    "circuit_faithfulness",
    "You denoised the set (its clean outputs in the corrupted run, everything else computed "
    "from the corrupted prompt). Faithfulness runs the clean prompt and corrupts every head "
    "*outside* the set.",
)
def faith_denoised_set(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, run="corrupted")


@KEY.mistake(
    "circuit_faithfulness",
    "You divided by the clean logit difference only. Subtract the corrupted run's first: "
    "(LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted).",
)
def faith_clean_only(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, scale="clean")


@KEY.mistake(
    "circuit_faithfulness",
    "You corrupted the other heads at the last position only. Give them their corrupted "
    "outputs at every position: information reaches the last position through earlier ones.",
)
def faith_last_position(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, positions=[clean.shape[1] - 1])
