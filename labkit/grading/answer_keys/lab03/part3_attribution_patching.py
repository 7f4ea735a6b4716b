"""Lab 03, part 3 (exercises 3.4-3.6): attribution patching's references and mistakes."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _acts, _acts_grads


# ----- 3.4 activations_and_grads -----------------------------------------------------------------
@KEY.mistake(
    "activations_and_grads",
    "The gradients have the wrong sign: take the gradient of the metric itself.",
)
def grads_negated(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, -grads


@KEY.mistake(
    "activations_and_grads",
    "The gradients are twice what they should be: they piled up in .grad over two backward "
    "passes or calls. Use torch.autograd.grad (it leaves .grad alone), or fresh tensors each "
    "call.",
)
def grads_doubled(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, 2 * grads


@KEY.mistake(
    "activations_and_grads",
    "The gradients are three times what they should be: they piled up in .grad over calls. "
    "Use torch.autograd.grad (it leaves .grad alone), or fresh tensors each call.",
)
def grads_tripled(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, 3 * grads


@KEY.mistake(
    "activations_and_grads",
    "These are gradients of the logits' sum, not of the metric: differentiate "
    "metric(last position's logits).",
)
def grads_of_logits(sol, lm, tokens, metric, site):
    return _acts_grads(lm, tokens, metric, site, of=lambda logits: logits[:, -1].sum())


@KEY.mistake(
    "activations_and_grads",
    "The metric read the first position's logits. It reads the last position: logits[:, -1].",
)
def grads_first_position(sol, lm, tokens, metric, site):
    return _acts_grads(lm, tokens, metric, site, position=0)


@KEY.mistake(
    "activations_and_grads",
    "These are resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def grads_resid_post(sol, lm, tokens, metric, site):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.activations_and_grads(lm, tokens, metric, "resid_post")


@KEY.mistake(
    "activations_and_grads",
    "These are the residual stream's (resid_pre), whatever the site: capture the site you "
    "are given.",
)
def grads_always_resid_pre(sol, lm, tokens, metric, site):
    if site in ("resid_pre", "head_out"):
        raise NotThisProblem
    return sol.activations_and_grads(lm, tokens, metric, "resid_pre")


@KEY.mistake(
    "activations_and_grads",
    "Each prompt's gradient is the sum over the batch. The metric's gradient at row i is that "
    "row's own: no sum over the batch.",
)
def grads_batch_sum(sol, lm, tokens, metric, site):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, grads.sum(1, keepdim=True).expand_as(grads).clone()


# ----- 3.5 attribution_patching ------------------------------------------------------------------
def _estimate(
    lm, clean, corrupted, metric, site, *, grad_at="corrupted", sign=1.0, delta="difference"
) -> Tensor:
    """Attribution patching and its wrong versions, (n_layers, pos) (head_out: (L, H, pos))."""
    clean_acts = _acts(lm, clean, site)
    corrupted_acts, grads = _acts_grads(lm, corrupted, metric, site)
    if grad_at == "clean":
        grads = _acts_grads(lm, clean, metric, site)[1]
    step = {
        "difference": clean_acts - corrupted_acts,
        "gradient": torch.ones_like(grads),
        "input": corrupted_acts,
    }[delta]
    per = (sign * step * grads).sum(-1).sum(1)
    return per.transpose(1, 2) if site == "head_out" else per


@KEY.mistake(
    "attribution_patching",
    "The sign is flipped: the estimate is (clean - corrupted) . gradient.",
)
def attr_sign(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return -sol.attribution_patching(lm, clean, corrupted, metric, site)


@KEY.mistake(
    "attribution_patching",
    "The gradient was taken at the clean run. A clean-into-corrupted patch is linearised "
    "around the corrupted run: take the gradient there.",
)
def attr_grad_at_clean(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, grad_at="clean")


@KEY.mistake(
    "attribution_patching",
    "That is the noising estimate ((corrupted - clean) . gradient at the clean run); this "
    "exercise asks for denoising.",
)
def attr_noising(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, grad_at="clean", sign=-1.0)


@KEY.mistake(
    "attribution_patching",
    "That is the gradient alone, summed. Multiply it by the change of the activation, "
    "clean - corrupted, before summing over d_model.",
)
def attr_gradient_only(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, delta="gradient")


@KEY.mistake(
    "attribution_patching",
    "That is activation x gradient of the corrupted run. Multiply the gradient by the "
    "difference clean - corrupted.",
)
def attr_input_x_gradient(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, delta="input")


@KEY.mistake(
    "attribution_patching",
    "You averaged over the batch. The metric already averages over the prompts, so the "
    "estimates add up over the batch: sum.",
)
def attr_batch_mean(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, site) / clean.shape[0]


@KEY.mistake(
    "attribution_patching",
    "This is the resid_pre estimate, whatever the site: use the site you are given.",
)
def attr_always_resid_pre(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site == "resid_pre":
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "attribution_patching",
    "This is resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def attr_resid_post(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, "resid_post")


@KEY.mistake(
    "attribution_patching",
    "The estimate is twice what it should be: the gradients piled up in .grad over two "
    "backward passes or calls. Use torch.autograd.grad, or fresh tensors each call.",
)
def attr_doubled(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return 2 * sol.attribution_patching(lm, clean, corrupted, metric, site)


@KEY.mistake(
    "attribution_patching",
    "These are absolute values; the estimate keeps its sign.",
)
def attr_abs(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return sol.attribution_patching(lm, clean, corrupted, metric, site).abs()


# ----- 3.6 head_attribution ----------------------------------------------------------------------
def _split_estimate(lm, clean, corrupted, metric, site: str) -> Tensor:
    """The estimate of a vector site cut into n_heads chunks: (L, H, pos)."""
    clean_acts = _acts(lm, clean, site)
    corrupted_acts, grads = _acts_grads(lm, corrupted, metric, site)
    per = ((clean_acts - corrupted_acts) * grads).sum(1)  # (L, pos, d_model)
    per = per.view(lm.n_layers, clean.shape[1], lm.n_heads, -1).sum(-1)
    return per.transpose(1, 2)


@KEY.mistake(
    "head_attribution",
    "You split the residual stream (the attention's input) into heads. A head's output is the "
    "input of the attention output projection (site 'head_out').",
)
def head_attr_resid(sol, lm, clean, corrupted, metric):
    return _split_estimate(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "head_attribution",
    "You split the attention output (after W_O mixes the heads) into chunks. Use the input of "
    "W_O (site 'head_out').",
)
def head_attr_attn_out(sol, lm, clean, corrupted, metric):
    return _split_estimate(lm, clean, corrupted, metric, "attn_out")


@KEY.mistake("head_attribution", "The sign is flipped: (clean - corrupted) . gradient.")
def head_attr_sign(sol, lm, clean, corrupted, metric):
    return -sol.head_attribution(lm, clean, corrupted, metric)


@KEY.mistake(
    "head_attribution",
    "The gradient was taken at the clean run; take it at the corrupted run.",
)
def head_attr_grad_at_clean(sol, lm, clean, corrupted, metric):
    return _estimate(lm, clean, corrupted, metric, "head_out", grad_at="clean")


@KEY.mistake(
    "head_attribution",
    "Heads and positions are mixed up: a reshape is not a transpose. Sum over d_head and the "
    "batch, then swap the position and head axes with .transpose (or .permute).",
)
def head_attr_reshaped(sol, lm, clean, corrupted, metric):
    per = sol.head_attribution(lm, clean, corrupted, metric)  # (L, H, pos)
    if per.shape[1] == per.shape[2]:
        raise NotThisProblem
    return per.transpose(1, 2).reshape(per.shape)


@KEY.mistake(
    "head_attribution",
    "That is activation x gradient of the corrupted run. Multiply the gradient by the "
    "difference clean - corrupted.",
)
def head_attr_input_x_gradient(sol, lm, clean, corrupted, metric):
    return _estimate(lm, clean, corrupted, metric, "head_out", delta="input")


@KEY.mistake(
    "head_attribution",
    "The estimate is twice what it should be: the gradients piled up in .grad over two "
    "backward passes or calls. Use torch.autograd.grad, or fresh tensors each call.",
)
def head_attr_doubled(sol, lm, clean, corrupted, metric):
    return 2 * sol.head_attribution(lm, clean, corrupted, metric)
