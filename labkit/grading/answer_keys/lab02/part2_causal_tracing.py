"""Part 2 of lab 02's answer key, ROME causal tracing (2.4-2.6): the noise's standard
deviation and the corrupted run's probability as references, and the mistakes of corrupting,
of the restoration grid and of recovery."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab02.key import KEY, NotHere, acts, run
from labkit.grading.answer_keys.lab02.part1_patching import clean_prob
from labkit.models import LabModel

SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


@KEY.reference("corrupted_prob")
def corrupted_prob(sol, lm: LabModel, embeds: Tensor, target_id: int) -> float:
    """p(target) of a run of ``embeds`` (samples, pos, d_model), averaged over the samples."""
    probs = run(lm, [[]] * embeds.shape[0], inputs_embeds=embeds).softmax(-1)
    return float(probs[:, target_id].mean())


@KEY.reference("noise_std")
def noise_std(sol, lm: LabModel, tokens: Tensor, noise_scale: float) -> float:
    """The standard deviation exercise 2.4 asks for: noise_scale x the embedding matrix's."""
    return float(noise_scale * lm.embed.weight.double().std())


# ----- 2.4 corrupt_subject: the noise's standard deviation ---------------------------------------
def _embedding(lm) -> Tensor:
    return lm.embed.weight.double()


@KEY.mistake(
    "noise_std",
    "Your noise has std noise_scale: multiply standard normal noise by "
    "noise_scale * lm.embed.weight.std().",
)
def std_unit(sol, lm, tokens, noise_scale):
    return float(noise_scale)


@KEY.mistake(
    "noise_std",
    "You used the std of this prompt's embeddings; use the std of the whole "
    "embedding matrix, lm.embed.weight.std().",
)
def std_of_prompt(sol, lm, tokens, noise_scale):
    with torch.no_grad():
        return float(noise_scale * lm.embed(tokens).double().std())


@KEY.mistake(
    "noise_std",
    "You averaged the std per dimension (column); use the std of all "
    "entries of the embedding matrix, lm.embed.weight.std().",
)
def std_per_column(sol, lm, tokens, noise_scale):
    return float(noise_scale * _embedding(lm).std(0).mean())


@KEY.mistake(
    "noise_std",
    "You averaged the std per token (row); use the std of all entries of "
    "the embedding matrix, lm.embed.weight.std().",
)
def std_per_row(sol, lm, tokens, noise_scale):
    return float(noise_scale * _embedding(lm).std(1).mean())


@KEY.mistake(
    "noise_std",
    "Your noise is scaled by the variance; use the standard deviation lm.embed.weight.std().",
)
def std_variance(sol, lm, tokens, noise_scale):
    return float(noise_scale * _embedding(lm).var())


@KEY.mistake("noise_std", "Your noise has std 1 x the embedding std: scale it by noise_scale.")
def std_unscaled(sol, lm, tokens, noise_scale):
    return float(_embedding(lm).std())


@KEY.mistake(
    "noise_std",
    "Your noise ignores noise_scale (it has std 3 x the embedding std): "
    "use the argument, not a hard-coded 3.",
)
def std_hard_coded(sol, lm, tokens, noise_scale):
    if noise_scale == 3.0:
        raise NotHere("the default")
    return float(3.0 * _embedding(lm).std())


# ----- 2.5 restoration_grid ----------------------------------------------------------------------
def _window(layer: int, window: int, n_layers: int) -> list[int]:
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def _grid(lm, tokens, corrupted, target_id, site="resid", window=1, mistake="") -> Tensor:
    """The grid (n_layers, pos) with a known mistake: one forward pass, one batch row per
    (layer, position, noise sample)."""
    n_samples, n_pos, _ = corrupted.shape
    n_layers = lm.n_layers
    name = SITE_OF[site]
    if mistake == "site resid_pre":
        name = "resid_pre"
    elif mistake == "swapped site":
        name = {"mlp_out": "attn_out", "attn_out": "mlp_out"}[name]
    elif mistake == "resid in window":
        name = "resid_post"

    def layers(layer: int) -> list[int]:
        if site == "resid" or mistake == "no window":
            return [layer]
        if mistake == "window from layer":
            return list(range(layer, min(n_layers, layer + window)))
        if mistake == "window too short":
            return list(range(max(0, layer - window // 2), min(n_layers, layer + window // 2)))
        if mistake == "window wraps":
            return list(range(layer - window // 2, min(n_layers, layer - (-window // 2))))
        return _window(layer, window, n_layers)

    def position(pos: int):
        if mistake == "next position":
            return min(pos + 1, n_pos - 1)
        return None if mistake == "every position" else pos

    with torch.no_grad():
        clean_embeds = lm.embed(tokens)
    sites = sorted({name, "resid_post"})
    source = acts(lm, sites, input_ids=tokens)
    embeds = corrupted.repeat(n_layers * n_pos, 1, 1)
    if mistake == "noising":  # the clean run, with the corrupted activation put in
        source = acts(lm, sites, inputs_embeds=corrupted)
        embeds = clean_embeds.expand(n_layers * n_pos * n_samples, -1, -1)

    def value(low: int, p: int, s: int) -> Tensor:
        act = source[name, low % n_layers]  # (1 or n_samples, pos, d_model)
        where = position(p)
        return act[s % act.shape[0], slice(None) if where is None else where]

    edits = [
        [(name, low, position(p), value(low, p, s), False) for low in layers(L)]
        for L in range(n_layers)
        for p in range(n_pos)
        for s in range(n_samples)
    ]
    logits = run(lm, edits, inputs_embeds=embeds).view(n_layers, n_pos, n_samples, -1)
    if mistake == "mean logits":
        return logits.mean(2).softmax(-1)[..., target_id]
    probs = logits.softmax(-1)[..., target_id]  # (n_layers, pos, samples)
    if mistake == "first sample":
        return probs[..., 0]
    grid = probs.mean(-1)
    if mistake == "normalised":
        high = clean_prob(sol=None, lm=lm, tokens=tokens, target_id=target_id)
        low = corrupted_prob(sol=None, lm=lm, embeds=corrupted, target_id=target_id)
        return (grid - low) / (high - low)
    return grid


_GRID_MISTAKES = {  # mistake -> (the sites where it differs, hint)
    "next position": (
        ("resid", "mlp", "attn"),
        "Your grid matches restoring position p + 1 in column p: positions count from 0, the "
        "anchor token included.",
    ),
    "site resid_pre": (
        ("resid",),
        "Your grid matches restoring resid_pre (the input of block L); restore resid_post, its "
        "output.",
    ),
    "every position": (
        ("resid", "mlp", "attn"),
        "Your grid matches restoring every position of the layer: a cell restores one "
        "(layer, position).",
    ),
    "first sample": (
        ("resid", "mlp", "attn"),
        "Your grid uses only the first noise sample: average p(target) over all samples.",
    ),
    "mean logits": (
        ("resid", "mlp", "attn"),
        "Your grid averages the logits over samples before the softmax: average the probabilities.",
    ),
    "normalised": (
        ("resid", "mlp", "attn"),
        "Your grid is normalised to 0..1 (recovery); return the raw probability p(target).",
    ),
    "noising": (
        ("resid", "mlp", "attn"),
        "Your grid runs the clean prompt with the corrupted activation at each cell (noising); "
        "restore the clean activation in the corrupted run (denoising).",
    ),
    "no window": (
        ("mlp", "attn"),
        "Your grid restores only layer L: restore every layer of the window around L.",
    ),
    "window from layer": (
        ("mlp", "attn"),
        "Your window starts at L; it is centred on L: from max(0, L - window // 2) up to "
        "(not including) min(n_layers, L - (-window // 2)).",
    ),
    "window too short": (
        ("mlp", "attn"),
        "Your window is one layer short for odd windows: it ends at L - (-window // 2) (that is "
        "L plus window / 2 rounded up), not L + window // 2.",
    ),
    "window wraps": (
        ("mlp", "attn"),
        "Your window reaches below layer 0 and wraps around to the last layers (negative "
        "indices): clip its start at max(0, L - window // 2).",
    ),
    "swapped site": (
        ("mlp", "attn"),
        "Your grid matches the other module (attention for 'mlp', MLP for 'attn').",
    ),
    "resid in window": (
        ("mlp", "attn"),
        "Your grid restores the residual stream over the window; for 'mlp' and 'attn', restore "
        "the module's output (mlp_out, attn_out).",
    ),
}


def _grid_mistake(name: str, sites: tuple[str, ...], hint: str) -> None:
    @KEY.mistake("restoration_grid", hint)
    def mistake(sol, lm, tokens, corrupted, target_id, site="resid", window=1):
        if site not in sites:
            raise NotHere(site)
        return _grid(lm, tokens, corrupted, target_id, site, window, name).float()


for _name, (_sites, _hint) in _GRID_MISTAKES.items():
    _grid_mistake(_name, _sites, _hint)


@KEY.mistake("restoration_grid", "Your grid is for the clean run's top token; use target_id.")
def grid_top_token(sol, lm, tokens, corrupted, target_id, site="resid", window=1):
    with torch.no_grad():
        top = int(lm.model(tokens).logits[0, -1].argmax())
    return sol.restoration_grid(lm, tokens, corrupted, top, site, window)


# ----- 2.6 recovery ------------------------------------------------------------------------------
def _recovery_mistake(hint: str):
    return KEY.mistake("recovery", hint)


def _fraction(probs, high, low) -> Tensor:
    return (probs.double() - low) / (high - low)


@_recovery_mistake(
    "You divided the raw probability by the total effect: subtract p_corrupted "
    "first, then divide by p_clean - p_corrupted."
)
def recovery_no_subtraction(sol, probs, high, low):
    return probs.double() / (high - low)


@_recovery_mistake("You divided by p_clean; divide by the total effect p_clean - p_corrupted.")
def recovery_over_clean(sol, probs, high, low):
    return (probs.double() - low) / high


@_recovery_mistake(
    "You returned probs / p_clean: recovery measures the part of the lost "
    "probability that came back, relative to p_corrupted."
)
def recovery_ratio(sol, probs, high, low):
    return probs.double() / high


@_recovery_mistake(
    "Your values are 1 - recovery: the clean probability must map to 1 and the corrupted one to 0."
)
def recovery_reversed(sol, probs, high, low):
    return 1 - _fraction(probs, high, low)


@_recovery_mistake(
    "You clipped to 0..1; keep values outside it: above 1 means the restored run "
    "beats the clean run, below 0 that the restoration hurts."
)
def recovery_clipped(sol, probs, high, low):
    return _fraction(probs, high, low).clamp(0, 1)


@_recovery_mistake(
    "You normalised by the grid's own minimum and maximum; use the clean and "
    "corrupted runs' probabilities as the two ends of the scale."
)
def recovery_min_max(sol, probs, high, low):
    probs = probs.double()
    return (probs - probs.min()) / (probs.max() - probs.min())


@_recovery_mistake(
    "You took the absolute value of the total effect; keep its sign (when the "
    "corruption raises p(target), p_clean - p_corrupted is negative)."
)
def recovery_abs(sol, probs, high, low):
    if high >= low:
        raise NotHere("a positive total effect")
    return (probs.double() - low) / abs(high - low)


@_recovery_mistake("You returned percentages: recovery is a fraction (1 = clean).")
def recovery_percent(sol, probs, high, low):
    return 100 * _fraction(probs, high, low)


@_recovery_mistake("You normalised log-probabilities; normalise the probabilities themselves.")
def recovery_log(sol, probs, high, low):
    return (probs.double().log() - math.log(low)) / (math.log(high) - math.log(low))
