"""Lab 02's answer key: the values its checks need that are no exercise's output, and the
catalogue of plausible mistakes, each with the hint that names it. In notebook order.

Every function takes ``sol`` (the solution notebook's definitions) and then the inputs the
check passes to ``t.expected`` / ``t.mistakes``. A mistake that does not apply to its inputs
raises :class:`NotHere` and is left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import Tensor

from labkit.grading.answers import AnswerKey
from labkit.hooks import capture, hooked
from labkit.models import LabModel

KEY = AnswerKey("02")
SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


class NotHere(ValueError):
    """This mistake gives nothing different on these inputs."""


# ----- shared: runs with edited activations ------------------------------------------------------
# An edit of one batch row: (site, layer, position or None for all, value, add instead of set).
Edit = tuple[str, int, "int | list[int] | None", Tensor, bool]


def _run(lm: LabModel, edits: Sequence[Sequence[Edit]], *, unnormed: bool = False, **inputs):
    """Last-position logits (rows, vocab), float64, where batch row r gets ``edits[r]``.

    ``inputs`` (input_ids or inputs_embeds) has one row per edit list. With ``unnormed``, the
    logits skip the final norm.
    """
    by_site: dict[tuple[str, int], list] = defaultdict(list)
    for row, row_edits in enumerate(edits):
        for site, layer, position, value, add in row_edits:
            by_site[site, layer % lm.n_layers].append((row, position, value, add))
    last = lm.n_layers - 1
    with ExitStack() as stack, torch.no_grad():
        for (site, layer), items in by_site.items():

            def edit(act: Tensor, items=items) -> Tensor:  # (rows, pos, d_model)
                act = act.clone()
                for row, position, value, add in items:
                    where = (row, slice(None) if position is None else position)
                    act[where] = act[where] + value if add else value.to(act.dtype)
                return act

            stack.enter_context(hooked(lm, site, layer, edit))
        final = stack.enter_context(capture(lm, "resid_post", last))
        logits = lm.model(**inputs).logits[:, -1]
    if unnormed:
        logits = lm.unembed(final["resid_post", last][:, -1])
    return logits.double()


def _acts(lm: LabModel, sites: Sequence[str], **inputs: Tensor):
    with torch.no_grad(), capture(lm, list(sites)) as cache:
        lm.model(**inputs)
    return cache


# ----- values the checks compare with (definitions, not exercises) -------------------------------
@KEY.reference("next_token_probs")
def next_token_probs(sol, lm: LabModel, tokens: Tensor) -> Tensor:
    """The unpatched run's next-token probabilities at the last position, (vocab,)."""
    return _run(lm, [[]], input_ids=tokens).softmax(-1)[0]


@KEY.reference("clean_prob")
def clean_prob(sol, lm: LabModel, tokens: Tensor, target_id: int) -> float:
    """p(target) at the last position of an unpatched run of ``tokens`` (1, pos)."""
    return float(_run(lm, [[]], input_ids=tokens).softmax(-1)[0, target_id])


@KEY.reference("corrupted_prob")
def corrupted_prob(sol, lm: LabModel, embeds: Tensor, target_id: int) -> float:
    """p(target) of a run of ``embeds`` (samples, pos, d_model), averaged over the samples."""
    probs = _run(lm, [[]] * embeds.shape[0], inputs_embeds=embeds).softmax(-1)
    return float(probs[:, target_id].mean())


@KEY.reference("final_resid_probs")
def final_resid_probs(sol, lm: LabModel, vector: Tensor) -> Tensor:
    """Next-token probabilities when ``vector`` is the last block's output at the last
    position: softmax(unembed(final_norm(vector)))."""
    with torch.no_grad():
        return lm.unembed(lm.final_norm(vector[None, None]))[0, 0].double().softmax(-1)


@KEY.mistake(
    "final_resid_probs",
    "Your result skips the final norm: the model applies it to the "
    "last block's output before the unembedding.",
)
def final_resid_unnormed(sol, lm, vector):
    with torch.no_grad():
        return lm.unembed(vector).double().softmax(-1)


@KEY.reference("noise_std")
def noise_std(sol, lm: LabModel, tokens: Tensor, noise_scale: float) -> float:
    """The standard deviation exercise 2.4 asks for: noise_scale x the embedding matrix's."""
    return float(noise_scale * lm.embed.weight.double().std())


# ----- 2.1 collect_activations -------------------------------------------------------------------
def _stacked(lm, tokens, site):
    return _acts(lm, [site], input_ids=tokens).stack(site)[:, 0]


def _only(site: str, *allowed: str) -> None:
    if site not in allowed:
        raise NotHere(site)


def _module_inputs(lm, tokens, modules) -> Tensor:
    found = []
    with ExitStack() as stack, torch.no_grad():
        for module in modules:
            handle = module.register_forward_pre_hook(lambda m, args: found.append(args[0]))
            stack.callback(handle.remove)
        lm.model(tokens)
    return torch.stack(found)[:, 0]


@KEY.mistake(
    "collect_activations",
    "Your last layer has the final norm applied: "
    "output_hidden_states' last entry is norm(resid_post), not resid_post. Take the "
    "blocks' outputs (hooks).",
)
def collect_final_norm(sol, lm, tokens, site="resid_post"):
    _only(site, "resid_post")
    with torch.no_grad():
        hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[1:])[:, 0]


@KEY.mistake(
    "collect_activations",
    "These are the blocks' inputs (resid_pre): hidden_states[0] "
    "is the embedding, so hidden_states[i + 1] is the output of block i.",
)
def collect_resid_pre(sol, lm, tokens, site="resid_post"):
    _only(site, "resid_post")
    return _stacked(lm, tokens, "resid_pre")


@KEY.mistake(
    "collect_activations",
    "You returned the residual stream (resid_post) for another site: use the `site` argument.",
)
def collect_ignores_site(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out", "attn_out")
    return _stacked(lm, tokens, "resid_post")


@KEY.mistake(
    "collect_activations",
    "You swapped the two modules: this is attn_out for "
    "site='mlp_out', or mlp_out for site='attn_out'.",
)
def collect_swapped(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out", "attn_out")
    return _stacked(lm, tokens, {"mlp_out": "attn_out", "attn_out": "mlp_out"}[site])


@KEY.mistake(
    "collect_activations",
    "These are the MLPs' inputs (after the norm); record what the MLP module returns.",
)
def collect_mlp_inputs(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out")
    return _module_inputs(lm, tokens, [lm.mlp(i) for i in range(lm.n_layers)])


@KEY.mistake(
    "collect_activations",
    "These are the heads' outputs before the output projection "
    "W_O; attn_out is what the attention module returns (after W_O).",
)
def collect_head_outputs(sol, lm, tokens, site="resid_post"):
    _only(site, "attn_out")
    return _module_inputs(lm, tokens, [lm.attn_out_proj(i) for i in range(lm.n_layers)])


@KEY.mistake(
    "collect_activations",
    "This is the residual stream after attention (resid_pre + "
    "attn_out), not the attention output alone.",
)
def collect_resid_mid(sol, lm, tokens, site="resid_post"):
    _only(site, "attn_out")
    cache = _acts(lm, ["resid_pre", "attn_out"], input_ids=tokens)
    return (cache.stack("resid_pre") + cache.stack("attn_out"))[:, 0]


# ----- 2.2 patch_position ------------------------------------------------------------------------
def _patched_probs(lm, tokens, edits: list[Edit], unnormed: bool = False) -> Tensor:
    logits = _run(lm, [edits], unnormed=unnormed, input_ids=tokens)[0]
    return logits.softmax(-1).float()


def _patch_mistake(hint: str):
    def register(fn):
        return KEY.mistake("patch_position", hint)(fn)

    return register


@_patch_mistake(
    "Your probabilities are the unpatched run's: nothing was patched. Patch the output of "
    "block `layer` (resid_post), after the last block too."
)
def patch_nothing(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [])


@_patch_mistake("You returned logits: apply softmax over the vocabulary.")
def patch_logits(sol, lm, tokens, layer, position, vector):
    return _run(lm, [[("resid_post", layer, position, vector, False)]], input_ids=tokens)[0].float()


@_patch_mistake("You returned log-probabilities: use softmax, not log_softmax.")
def patch_log_probs(sol, lm, tokens, layer, position, vector):
    logits = _run(lm, [[("resid_post", layer, position, vector, False)]], input_ids=tokens)
    return logits[0].log_softmax(-1).float()


@_patch_mistake(
    "You patched the block's input (resid_pre); the site is resid_post, the output "
    "of block `layer`."
)
def patch_resid_pre(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_pre", layer, position, vector, False)])


@_patch_mistake("You overwrote every position; put the vector at `position` only.")
def patch_every_position(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_post", layer, None, vector, False)])


@_patch_mistake(
    "You overwrote every position from `position` to the end (a slice "
    "[position:]); put the vector at `position` only."
)
def patch_from_position_on(sol, lm, tokens, layer, position, vector):
    rest = list(range(position, tokens.shape[1]))
    return _patched_probs(lm, tokens, [("resid_post", layer, rest, vector, False)])


@_patch_mistake(
    "You overwrote every position that holds the same token as `position`; a "
    "position is an index, not a token."
)
def patch_same_token(sol, lm, tokens, layer, position, vector):
    same = (tokens[0] == tokens[0, position]).nonzero().flatten().tolist()
    if same == [position]:
        raise NotHere("the token occurs once")
    return _patched_probs(lm, tokens, [("resid_post", layer, same, vector, False)])


@_patch_mistake("You added the vector to the activation; overwrite it instead.")
def patch_adds(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_post", layer, position, vector, True)])


@_patch_mistake(
    "You patched the next position (position + 1): positions count from 0, the "
    "anchor token included."
)
def patch_next_position(sol, lm, tokens, layer, position, vector):
    if position + 1 >= tokens.shape[1]:
        raise NotHere("no next position")
    return _patched_probs(lm, tokens, [("resid_post", layer, position + 1, vector, False)])


@_patch_mistake(
    "You patched the previous position (position - 1): positions count from 0, the "
    "anchor token included."
)
def patch_previous_position(sol, lm, tokens, layer, position, vector):
    if position == 0:
        raise NotHere("no previous position")
    return _patched_probs(lm, tokens, [("resid_post", layer, position - 1, vector, False)])


@_patch_mistake(
    "You patched the input of block layer + 1, or nothing after the last block: patch the "
    "output of block `layer` (resid_post)."
)
def patch_next_block(sol, lm, tokens, layer, position, vector):
    if layer + 1 >= lm.n_layers:
        return _patched_probs(lm, tokens, [])
    return _patched_probs(lm, tokens, [("resid_pre", layer + 1, position, vector, False)])


@_patch_mistake(
    "Your result skips the final norm: the model applies it to the last block's "
    "output before the unembedding."
)
def patch_unnormed(sol, lm, tokens, layer, position, vector):
    edits = [("resid_post", layer, position, vector, False)]
    return _patched_probs(lm, tokens, edits, unnormed=True)


# ----- 2.3 cross_context_curve -------------------------------------------------------------------
def _curve(lm, recipient, donor, target_id, mistake: str = "") -> Tensor:
    """The curve (n_layers,) of p(target), or a known mistake's."""
    n_layers = lm.n_layers
    cache = _acts(lm, ["resid_pre", "resid_post"], input_ids=donor)
    post, pre = cache.stack("resid_post")[:, 0], cache.stack("resid_pre")[:, 0]
    site, vectors, at, tokens = "resid_post", post[:, -1], -1, recipient.repeat(n_layers, 1)
    if mistake == "resid_pre":
        site, vectors = "resid_pre", pre[:, -1]
    if mistake == "hidden_states":
        vectors = pre[:, -1]
    if mistake == "same index":
        if recipient.shape[1] >= donor.shape[1]:
            raise NotHere("the donor is not longer")
        vectors = post[:, recipient.shape[1] - 1]
    if mistake == "every position":
        at = None
    if mistake == "swapped":
        own = _acts(lm, ["resid_post"], input_ids=recipient).stack("resid_post")[:, 0, -1]
        vectors, tokens = own, donor.repeat(n_layers, 1)
    if mistake == "every row":
        edits = [[(site, L, at, vectors[L], False) for L in range(n_layers)]] * n_layers
    else:
        edits = [[(site, L, at, vectors[L], False)] for L in range(n_layers)]
    logits = _run(lm, edits, input_ids=tokens)  # (n_layers, vocab)
    if mistake == "logits":
        return logits[:, target_id]
    if mistake == "top token":
        return logits.softmax(-1).max(-1).values
    return logits.softmax(-1)[:, target_id]


_CROSS_MISTAKES = {
    "every position": "Your curve matches overwriting every position of the recipient with the "
    "donor's last vector (labkit.hooks.patch with positions=None patches all of them): patch "
    "the last position only.",
    "swapped": "Your curve matches patching the recipient's vector into the donor's run: the "
    "run is the recipient's, the patched vector is the donor's.",
    "resid_pre": "Your curve is shifted by one layer: it matches patching resid_pre[L] (the "
    "input of block L); patch resid_post[L], the output of block L.",
    "hidden_states": "Your donor vector at layer L is the donor's hidden_states[L], the input "
    "of block L (hidden_states[0] is the embedding): take hidden_states[L + 1] or a hook.",
    "same index": "Your donor vector is taken at the recipient's last index, which is not the "
    "donor's last position when the prompts differ in length: take the donor's position -1.",
    "every row": "Every batch row has every layer patched: row L must patch layer L only.",
    "logits": "You returned logits: return probabilities (softmax over the vocabulary).",
    "top token": "You returned the probability of each row's top token; return the probability "
    "of target_id.",
}


def _cross_mistake(name: str) -> None:
    @KEY.mistake("cross_context_curve", _CROSS_MISTAKES[name])
    def mistake(sol, lm, recipient, donor, target_id):
        return _curve(lm, recipient, donor, target_id, name)


for _name in _CROSS_MISTAKES:
    _cross_mistake(_name)


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
    source = _acts(lm, sites, input_ids=tokens)
    embeds = corrupted.repeat(n_layers * n_pos, 1, 1)
    if mistake == "noising":  # the clean run, with the corrupted activation put in
        source = _acts(lm, sites, inputs_embeds=corrupted)
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
    logits = _run(lm, edits, inputs_embeds=embeds).view(n_layers, n_pos, n_samples, -1)
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
