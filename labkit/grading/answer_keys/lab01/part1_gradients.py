"""Part 1: the mistakes of saliency, input x gradient and layer attribution."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab01.key import KEY


def grad(f, x: torch.Tensor) -> torch.Tensor:
    """The gradient of f(x).sum() with respect to x (a fresh leaf): (1, pos, d)."""
    leaf = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(leaf).sum(), leaf)
    return g.detach()


# ----- Exercise 1.1: saliency --------------------------------------------------------------------
@KEY.mistake("saliency", "You summed the signed gradient over d_model; saliency is its L2 norm.")
def saliency_signed_sum(sol, f, x):
    return grad(f, x)[0].sum(-1)


@KEY.mistake("saliency", "You took the L1 norm (sum of |gradient|); saliency uses the L2 norm.")
def saliency_l1(sol, f, x):
    return grad(f, x)[0].abs().sum(-1)


@KEY.mistake("saliency", "You returned the squared norm: take the square root.")
def saliency_squared(sol, f, x):
    return grad(f, x)[0].pow(2).sum(-1)


@KEY.mistake("saliency", "You took the root MEAN square over d_model; the L2 norm sums.")
def saliency_rms(sol, f, x):
    return grad(f, x)[0].pow(2).mean(-1).sqrt()


@KEY.mistake("saliency", "You took the largest |gradient| entry; saliency is the L2 norm.")
def saliency_max(sol, f, x):
    return grad(f, x)[0].abs().amax(-1)


@KEY.mistake("saliency", "You multiplied the gradient by the input: that is not saliency.")
def saliency_times_input(sol, f, x):
    return (grad(f, x) * x)[0].norm(dim=-1)


@KEY.mistake("saliency", "Take the gradient AT the input embeddings, not at zero.")
def saliency_at_zero(sol, f, x):
    return grad(f, torch.zeros_like(x))[0].norm(dim=-1)


@KEY.mistake("saliency", "Do not normalise the scores to sum to one.")
def saliency_normalised(sol, f, x):
    s = sol.saliency(f, x)
    return s / s.sum()


def _piled(flat: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(the gradients of every (f, x) pair in ``flat`` added up, the last x)."""
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    return sum(grad(f, x) for f, x in pairs), pairs[-1][1]


PILED = (
    "Gradients piled up from earlier calls on inputs of the same size (.backward() on a tensor "
    "you keep, and its .grad never cleared). Differentiate a fresh leaf copy each time, with "
    "torch.autograd.grad."
)


@KEY.mistake("saliency@after", PILED)
def saliency_piled(sol, *flat):
    g, _ = _piled(flat)
    return g[0].norm(dim=-1)


@KEY.mistake("input_x_gradient@after", PILED)
def ixg_piled(sol, *flat):
    g, x = _piled(flat)
    return (x * g)[0].sum(-1)


# ----- Exercise 1.2: input x gradient ------------------------------------------------------------
@KEY.mistake("input_x_gradient", "Wrong sign: multiply the input by the gradient as it is.")
def ixg_sign(sol, f, x):
    return -sol.input_x_gradient(f, x)


@KEY.mistake("input_x_gradient", "Sum x * gradient over d_model (keep the sign); not a norm.")
def ixg_norm(sol, f, x):
    return (x * grad(f, x))[0].norm(dim=-1)


@KEY.mistake("input_x_gradient", "Keep the sign: sum x * gradient, not its absolute value.")
def ixg_abs(sol, f, x):
    return (x * grad(f, x))[0].abs().sum(-1)


@KEY.mistake("input_x_gradient", "You summed the gradient alone: multiply it by the input first.")
def ixg_gradient_alone(sol, f, x):
    return grad(f, x)[0].sum(-1)


@KEY.mistake("input_x_gradient", "SUM over d_model, not the mean.")
def ixg_mean(sol, f, x):
    return (x * grad(f, x))[0].mean(-1)


@KEY.mistake(
    "input_x_gradient",
    "You computed the true change when each token's embedding is set to zero (an occlusion); "
    "input x gradient is its first-order estimate from ONE gradient at the input.",
)
def ixg_true_change(sol, f, x):
    n = x.shape[1]
    zeroed = x.repeat(n, 1, 1)
    zeroed[torch.arange(n), torch.arange(n)] = 0.0
    with torch.no_grad():
        return f(x) - f(zeroed)


@KEY.mistake("input_x_gradient", "Take the gradient at the input, not at zero.")
def ixg_at_zero(sol, f, x):
    return (x * grad(f, torch.zeros_like(x)))[0].sum(-1)


# ----- Exercise 1.3: layer attribution -----------------------------------------------------------
def _layer_rows(lm, tokens, target_id, site: str, reduce: str = "xg", position: int = -1):
    from labkit.hooks import capture

    x = lm.embed(tokens).detach().requires_grad_(True)
    with capture(lm, site, keep_grad=True) as cache:
        out = lm.model(inputs_embeds=x).logits[0, position]
        score = out.softmax(-1)[target_id] if reduce == "prob" else out[target_id]
        acts = [cache[site, layer] for layer in range(lm.n_layers)]
        grads = torch.autograd.grad(score, acts)
    rows = {
        "xg": lambda a, g: (a * g)[0].sum(-1),
        "prob": lambda a, g: (a * g)[0].sum(-1),
        "norm": lambda a, g: g[0].norm(dim=-1),
        "g": lambda a, g: g[0].sum(-1),
    }[reduce]
    return torch.stack([rows(a, g) for a, g in zip(acts, grads, strict=True)]).detach()


@KEY.mistake(
    "layer_attribution",
    "Off by one layer: use each block's INPUT (resid_pre; row 0 is the embeddings), not its "
    "output (resid_post).",
)
def layer_resid_post(sol, lm, tokens, target_id):
    return _layer_rows(lm, tokens, target_id, "resid_post")


@KEY.mistake(
    "layer_attribution",
    "hidden_states[1:] are the blocks' outputs (and the last one is after the final norm): use "
    "each block's input.",
)
def layer_hidden_outputs(sol, lm, tokens, target_id):
    # hidden_states[1:] through hooks: output_hidden_states would leave transformers' own
    # hooks on the model, which then can no longer be sent to a grading worker.
    from labkit.hooks import capture

    finals = []
    handle = lm.final_norm.register_forward_hook(lambda m, a, out: finals.append(out))
    try:
        x = lm.embed(tokens).detach().requires_grad_(True)
        with capture(lm, "resid_post", keep_grad=True) as cache:
            logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
            states = [cache["resid_post", layer] for layer in range(lm.n_layers - 1)]
    finally:
        handle.remove()
    states.append(finals[0])
    grads = torch.autograd.grad(logit, states)
    return torch.stack([(s * g)[0].sum(-1) for s, g in zip(states, grads, strict=True)]).detach()


@KEY.mistake("layer_attribution", "Wrong sign: activation * gradient.")
def layer_sign(sol, lm, tokens, target_id):
    return -sol.layer_attribution(lm, tokens, target_id)


@KEY.mistake(
    "layer_attribution",
    "Multiply the activation by the gradient and sum over d_model; the gradient's norm is "
    "saliency.",
)
def layer_norm(sol, lm, tokens, target_id):
    return _layer_rows(lm, tokens, target_id, "resid_pre", "norm")


@KEY.mistake("layer_attribution", "Multiply the gradient by the activation before summing.")
def layer_gradient_alone(sol, lm, tokens, target_id):
    return _layer_rows(lm, tokens, target_id, "resid_pre", "g")


@KEY.mistake("layer_attribution", "Attribute the target's LOGIT, not its probability.")
def layer_probability(sol, lm, tokens, target_id):
    return _layer_rows(lm, tokens, target_id, "resid_pre", "prob")


@KEY.mistake("layer_attribution", "Use the logit at the LAST position (-1), not at position 0.")
def layer_first_position(sol, lm, tokens, target_id):
    return _layer_rows(lm, tokens, target_id, "resid_pre", position=0)


@KEY.mistake(
    "layer_attribution",
    "You attributed the model's top prediction: use target_id (the check's targets are not "
    "the top prediction).",
)
def layer_top_token(sol, lm, tokens, target_id):
    with torch.no_grad():
        top = int(lm.model(input_ids=tokens).logits[0, -1].argmax())
    return sol.layer_attribution(lm, tokens, top)
