"""Lab 03, part 7 (exercises 3.11-3.12): direct logit attribution and the logit lens."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import (
    _dla,
    _final_scale,
    _ids,
    _is_layer_norm,
    _run_cache,
)


# ----- 3.11 direct_logit_attribution -------------------------------------------------------------
@KEY.mistake(
    "direct_logit_attribution",
    "This is the component times the unembedding with no final norm. The model reads the "
    "residual stream through the final norm: multiply by its weight and divide by the scale "
    "it computed on this run's final residual stream.",
)
def dla_no_norm(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="none")


@KEY.mistake(
    "direct_logit_attribution",
    "You applied the final norm to each component on its own, so its scale was recomputed "
    "from that component. Freeze the scale at the run's final residual stream: then the "
    "components add up to the logit difference.",
)
def dla_norm_recomputed(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="recomputed")


@KEY.mistake(
    "direct_logit_attribution",
    "You divided by the norm's scale but left out its weight: the final norm multiplies by "
    "its weight (one number per dimension) too.",
)
def dla_no_weight(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="no_weight")


@KEY.mistake(
    "direct_logit_attribution",
    "This model's final norm is a LayerNorm: it subtracts each vector's mean before it "
    "scales. Centre the component too (or, equivalently, the direction).",
)
def dla_no_centre(sol, lm, tokens, targets, foils, site="head_out"):
    if not _is_layer_norm(lm):
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, norm="no_centre")


@KEY.mistake(
    "direct_logit_attribution",
    "That is the component times the gradient of the logit difference: the gradient includes "
    "how the norm's scale would change. Direct logit attribution freezes the scale.",
)
def dla_gradient(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="gradient")


@KEY.mistake(
    "direct_logit_attribution",
    "You cut the attention output (after W_O mixed the heads) into chunks. A head's output is "
    "its slice of the input of W_O, multiplied by its own slice of W_O.",
)
def dla_attn_out_chunks(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out":
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, heads="attn_out")


@KEY.mistake(
    "direct_logit_attribution",
    "You cut the residual stream into chunks. A head's output is its slice of the input of "
    "W_O (site 'head_out'), multiplied by its own slice of W_O.",
)
def dla_resid_chunks(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out":
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, heads="resid_pre")


@KEY.mistake(
    "direct_logit_attribution",
    "Each head got W_O's bias added: the bias belongs to no head. Subtract it (apply W_O to "
    "zeros and take that away).",
)
def dla_bias_per_head(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out" or getattr(lm.attn_out_proj(0), "bias", None) is None:
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, bias=True)


@KEY.mistake(
    "direct_logit_attribution",
    "The sign is flipped: the logit difference is target minus foil.",
)
def dla_sign(sol, lm, tokens, targets, foils, site="head_out"):
    return -sol.direct_logit_attribution(lm, tokens, targets, foils, site)


@KEY.mistake(
    "direct_logit_attribution",
    "You summed over the prompts: the logit difference is a mean over the batch.",
)
def dla_batch_sum(sol, lm, tokens, targets, foils, site="head_out"):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    return tokens.shape[0] * sol.direct_logit_attribution(lm, tokens, targets, foils, site)


@KEY.mistake(
    "direct_logit_attribution",
    "You read the first position. The logits that predict the next token are the last "
    "position's: index -1.",
)
def dla_first_position(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, position=0)


# ----- 3.12 logit_lens ---------------------------------------------------------------------------
@KEY.reference("logit_lens@model")
def model_logit_diff(sol, lm, tokens, targets, foils, position=-1):
    """The model's own mean logit difference at ``position``: the lens's last entry."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    with torch.no_grad():
        logits = lm.model(tokens).logits[:, position]
    rows = torch.arange(tokens.shape[0])
    return float((logits[rows, targets] - logits[rows, foils]).mean())


def _lens(lm, tokens, targets, foils, position=-1, *, norm="recompute", shift=False,
          double_last=False, reduce="mean") -> Tensor:  # fmt: skip
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    cache = _run_cache(lm, tokens, ["resid_pre", "resid_post"])
    last = lm.n_layers - 1
    if shift:
        streams = [cache["resid_post", L][:, position] for L in range(lm.n_layers)]
    else:
        streams = [cache["resid_pre", L][:, position] for L in range(lm.n_layers)]
    streams.append(cache["resid_post", last][:, position])
    x = torch.stack(streams)  # (L + 1, batch, d)
    unembed = lm.unembed.weight
    direction = unembed[targets] - unembed[foils]
    with torch.no_grad():
        if norm == "none":
            read = x
        elif norm == "frozen":
            scale = _final_scale(lm, x[-1])
            centred = x - x.mean(-1, keepdim=True) if _is_layer_norm(lm) else x
            read = lm.final_norm.weight * centred / scale
            if _is_layer_norm(lm):
                read = read + lm.final_norm.bias
        else:
            read = lm.final_norm(x)
            if double_last:
                read = torch.cat([read[:-1], lm.final_norm(read[-1:])])
        values = (read * direction).sum(-1)
    return values.sum(-1) if reduce == "sum" else values.mean(-1)


@KEY.mistake(
    "logit_lens",
    "You unembedded the residual stream without the final norm. The model never reads its "
    "stream raw: apply lm.final_norm first, as the model does at the end.",
)
def lens_no_norm(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, norm="none")


@KEY.mistake(
    "logit_lens",
    "You unembedded the residual stream without the final norm (only the last entry, "
    "transformers' normalised last hidden state, went through it). The model never reads its "
    "stream raw: apply lm.final_norm to every layer's stream first.",
)
def lens_no_norm_but_last(sol, lm, tokens, targets, foils, position=-1):
    raw = _lens(lm, tokens, targets, foils, position, norm="none")
    normed = _lens(lm, tokens, targets, foils, position)
    return torch.cat([raw[:-1], normed[-1:]])


@KEY.mistake(
    "logit_lens",
    "Your last entry went through the final norm twice: the last hidden state transformers "
    "returns (hidden_states[-1], last_hidden_state) is already normalised.",
)
def lens_double_norm(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, double_last=True)


@KEY.mistake(
    "logit_lens",
    "Entry L reads the residual stream entering layer L (resid_pre; entry 0 is the "
    "embeddings); yours reads the stream leaving it (resid_post), one layer late.",
)
def lens_resid_post(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, shift=True)


@KEY.mistake(
    "logit_lens",
    "You froze the norm's scale at the final residual stream, as direct logit attribution "
    "does. The lens asks what the model would say if it stopped at layer L: normalise each "
    "layer's stream with its own scale (call lm.final_norm on it).",
)
def lens_frozen_scale(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, norm="frozen")


@KEY.mistake("logit_lens", "The sign is flipped: the logit difference is target minus foil.")
def lens_sign(sol, lm, tokens, targets, foils, position=-1):
    return -sol.logit_lens(lm, tokens, targets, foils, position)


@KEY.mistake("logit_lens", "You summed over the prompts: average the logit difference.")
def lens_batch_sum(sol, lm, tokens, targets, foils, position=-1):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    return _lens(lm, tokens, targets, foils, position, reduce="sum")


@KEY.mistake(
    "logit_lens",
    "You read the last position whatever `position` was: read the position you are given.",
)
def lens_always_last(sol, lm, tokens, targets, foils, position=-1):
    if position in (-1, tokens.shape[1] - 1):
        raise NotThisProblem
    return sol.logit_lens(lm, tokens, targets, foils, -1)
