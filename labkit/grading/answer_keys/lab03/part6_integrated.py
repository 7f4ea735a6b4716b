"""Lab 03, part 6 (exercise 3.10): integrated patching's references and mistakes."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem


# ----- 3.10 integrated_patching ------------------------------------------------------------------
def _integrated(
    lm,
    clean,
    corrupted,
    metric,
    n_steps: int,
    offset: float = 0.5,
    baseline: str = "corrupted",
    spacing: int | None = None,
) -> Tensor:
    with torch.no_grad():
        x = lm.embed(clean)
        b = lm.embed(corrupted) if baseline == "corrupted" else torch.zeros_like(x)
    total = torch.zeros_like(x)
    for step in range(n_steps):
        alpha = (step + offset) / (spacing or n_steps)
        point = (b + alpha * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            value = metric(lm.model(inputs_embeds=point).logits[:, -1])
            total += torch.autograd.grad(value, point)[0]
    return ((x - b) * total / n_steps).sum(-1).sum(0)


_MIDPOINT = "use the midpoint rule, alpha_k = (k + 1/2) / n_steps for k = 0 .. n_steps - 1."


@KEY.mistake("integrated_patching", "Left Riemann sum (alpha_k = k / n_steps): " + _MIDPOINT)
def ig_left(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=0.0)


@KEY.mistake("integrated_patching", "Right Riemann sum (alpha_k = (k + 1) / n_steps): " + _MIDPOINT)
def ig_right(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=1.0)


@KEY.mistake(
    "integrated_patching",
    "Your steps include both ends (alpha from 0 to 1, like torch.linspace(0, 1, n_steps)): "
    + _MIDPOINT,
)
def ig_linspace(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps < 2:
        raise NotThisProblem
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=0.0, spacing=n_steps - 1)


@KEY.mistake(
    "integrated_patching",
    "The sign is flipped: (clean - corrupted) times the average gradient.",
)
def ig_sign(sol, lm, clean, corrupted, metric, n_steps=16):
    return -sol.integrated_patching(lm, clean, corrupted, metric, n_steps)


@KEY.mistake(
    "integrated_patching",
    "That is integrated gradients from a zero baseline. Integrate from the corrupted "
    "embeddings to the clean ones.",
)
def ig_zero_baseline(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, baseline="zero")


@KEY.mistake(
    "integrated_patching",
    "You summed the gradients over the steps. Average them (divide by n_steps).",
)
def ig_summed(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps == 1:
        raise NotThisProblem
    return n_steps * sol.integrated_patching(lm, clean, corrupted, metric, n_steps)


@KEY.mistake(
    "integrated_patching",
    "That is attribution patching at the embeddings: one gradient, at the corrupted run. "
    "Integrated patching averages the gradients along the path.",
)
def ig_tangent(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, 1, offset=0.0)


@KEY.mistake(
    "integrated_patching",
    "Your result does not depend on n_steps: it used 16 steps whatever n_steps was. Use the "
    "argument.",
)
def ig_fixed_steps(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps == 16:
        raise NotThisProblem
    return sol.integrated_patching(lm, clean, corrupted, metric, 16)
