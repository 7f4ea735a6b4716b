"""Checks for lab 01 (input attribution): one ``check_<exercise>(your_function)`` per exercise.

Each check calls your function on small seeded inputs whose right answer is known in closed form
(linear and quadratic "models", a bag-of-tokens scorer, hand-built attention patterns), on a tiny
random transformer, and against captum where captum implements the same method. They test the
method's invariants too: completeness for integrated gradients, rows that sum to one for
attention rollout, "replacing a token by itself changes nothing" for occlusion.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

from labkit.checks.core import Checker, Results, check, skip_if_unattempted

__all__ = [
    "EXERCISES",
    "Results",
    "check_attention_flow",
    "check_attention_rollout",
    "check_completeness_gap",
    "check_deletion_curve",
    "check_input_x_gradient",
    "check_insertion_curve",
    "check_integrated_gradients",
    "check_layer_weighted_attention",
    "check_logit_difference_fn",
    "check_occlusion",
    "check_randomize_weights",
    "check_saliency",
    "check_space_baseline",
    "check_spearman",
    "skip_if_unattempted",
]


POS, D = 5, 4  # shapes of the closed-form test problems


# ----- test problems with known answers ---------------------------------------------------------
def _problem(seed: int = 0) -> dict[str, Tensor]:
    """Seeded embeddings x, baseline b and weights W, all (1, POS, D)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, POS, D, generator=gen)
    b = 0.5 * torch.randn(1, POS, D, generator=gen)
    w = torch.randn(1, POS, D, generator=gen)
    return {"x": x, "b": b, "w": w}


def _linear(w: Tensor) -> Callable[[Tensor], Tensor]:
    """f(e) = sum(w * e) + 3: gradient w everywhere. (batch, pos, d) -> (batch,)."""
    return lambda e: (e * w).sum(dim=(1, 2)) + 3.0


def _quadratic(w: Tensor) -> Callable[[Tensor], Tensor]:
    """f(e) = sum(w * e**2): gradient 2 w e, path integral from b to x is w (x^2 - b^2)."""
    return lambda e: (w * e**2).sum(dim=(1, 2))


@cache
def _tiny():
    from labkit.tiny import tiny_model

    return tiny_model("llama", seed=1)


def _tiny_problem() -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """The tiny model's logit of one token from embeddings, an input and a nonzero baseline."""
    lm = _tiny()
    ids = lm.to_tokens("puns!", prepend_anchor=True)  # (1, 6)
    target = lm.token_id("s")
    with torch.no_grad():
        x = lm.embed(ids)
        b = lm.embed(torch.full_like(ids, lm.token_id(" ")))
    b[:, 0] = x[:, 0]

    def f(e: Tensor) -> Tensor:
        return lm.model(inputs_embeds=e).logits[:, -1, target]

    return f, x, b


def _quiet(fn: Callable, *args, **kwargs):
    """Call a captum method without its 'input did not require gradients' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def _call_attribution(t: Checker, fn: Callable, *args, shape: tuple[int, ...], what: str):
    got = t.call(fn, *args)
    hint = "Return one score per position: reduce over d_model, and drop the batch dimension."
    return t.tensor(got, what, shape=shape, hint=hint)


# ----- gradient methods ---------------------------------------------------------------------------
@check("Exercise 1.1: saliency", points=1)
def check_saliency(saliency: Callable, t: Checker) -> None:
    p = _problem()
    what = "saliency on f(e) = sum(W * e) + 3, whose gradient is W"
    got = _call_attribution(t, saliency, _linear(p["w"]), p["x"], shape=(POS,), what=what)
    t.close(
        got,
        p["w"][0].norm(dim=-1),
        what,
        hint="Saliency is the L2 norm of the gradient over d_model: one number >= 0 per token.",
    )
    what = "saliency on f(e) = sum(W * e**2), whose gradient is 2 W e"
    got = _call_attribution(t, saliency, _quadratic(p["w"]), p["x"], shape=(POS,), what=what)
    t.close(
        got,
        (2 * p["w"] * p["x"])[0].norm(dim=-1),
        what,
        hint="Take the gradient at the input itself, with respect to the embeddings.",
    )
    from captum.attr import Saliency

    f, x, _ = _tiny_problem()
    expected = _quiet(Saliency(f).attribute, x.clone(), abs=True)[0].norm(dim=-1)
    what = "saliency on a tiny transformer, against captum's Saliency (L2 norm over d_model)"
    got = _call_attribution(t, saliency, f, x, shape=(x.shape[1],), what=what)
    t.close(got, expected, what, atol=1e-5, rtol=1e-4)


@check("Exercise 1.2: input x gradient", points=1)
def check_input_x_gradient(input_x_gradient: Callable, t: Checker) -> None:
    p = _problem()
    what = "input x gradient on f(e) = sum(W * e) + 3, which gives sum_d x W per token"
    got = _call_attribution(t, input_x_gradient, _linear(p["w"]), p["x"], shape=(POS,), what=what)
    t.close(
        got,
        (p["x"] * p["w"])[0].sum(dim=-1),
        what,
        hint="Multiply the input by the gradient element-wise, then SUM over d_model (keep the "
        "sign: a negative score means the token pushes the logit down).",
    )
    what = "input x gradient on f(e) = sum(W * e**2), which gives sum_d 2 W x^2 per token"
    got = _call_attribution(
        t, input_x_gradient, _quadratic(p["w"]), p["x"], shape=(POS,), what=what
    )
    t.close(got, (2 * p["w"] * p["x"] ** 2)[0].sum(dim=-1), what)
    from captum.attr import InputXGradient

    f, x, _ = _tiny_problem()
    expected = _quiet(InputXGradient(f).attribute, x.clone())[0].sum(dim=-1)
    what = "input x gradient on a tiny transformer, against captum's InputXGradient"
    got = _call_attribution(t, input_x_gradient, f, x, shape=(x.shape[1],), what=what)
    t.close(got, expected.detach(), what, atol=1e-5, rtol=1e-4)


@check("Exercise 1.3: integrated gradients", points=2)
def check_integrated_gradients(integrated_gradients: Callable, t: Checker) -> None:
    p = _problem()
    x, b, w = p["x"], p["b"], p["w"]
    what = "IG on a linear f with a NONZERO baseline: exactly sum_d (x - b) W per token"
    got = _call_attribution(t, integrated_gradients, _linear(w), x, b, 8, shape=(POS,), what=what)
    t.close(
        got,
        ((x - b) * w)[0].sum(dim=-1),
        what,
        hint="Multiply the averaged gradient by (input - baseline), not by the input, and use "
        "the baseline you are given.",
    )
    what = "IG with a zero baseline on a linear f equals input x gradient"
    got = _call_attribution(
        t, integrated_gradients, _linear(w), x, torch.zeros_like(x), 8, shape=(POS,), what=what
    )
    t.close(got, (x * w)[0].sum(dim=-1), what)
    what = "IG on f(e) = sum(W * e**2), 200 steps: the path integral is sum_d W (x^2 - b^2)"
    got = _call_attribution(
        t, integrated_gradients, _quadratic(w), x, b, 200, shape=(POS,), what=what
    )
    t.close(
        got,
        (w * (x**2 - b**2))[0].sum(dim=-1),
        what,
        atol=1e-2,
        rtol=1e-2,
        hint="Average the gradients at points ALONG the straight path from the baseline to the "
        "input (alpha between 0 and 1), not only at the input; divide the sum by n_steps.",
    )
    from captum.attr import IntegratedGradients

    f, x, b = _tiny_problem()
    expected = IntegratedGradients(f).attribute(x, baselines=b, n_steps=64)[0].sum(dim=-1)
    what = "IG on a tiny transformer (64 steps), against captum's IntegratedGradients"
    got = _call_attribution(t, integrated_gradients, f, x, b, 64, shape=(x.shape[1],), what=what)
    t.close(got, expected.detach(), what, atol=2e-3, rtol=2e-2)
    with torch.no_grad():
        change = float(f(x) - f(b))
    t.close(
        got.sum(),
        change,
        "completeness on the tiny transformer: the scores sum to f(input) - f(baseline)",
        atol=2e-3,
        rtol=2e-2,
    )


@check("Exercise 1.4: completeness gap", points=1)
def check_completeness_gap(completeness_gap: Callable, t: Checker) -> None:
    p = _problem()
    x, b, w = p["x"], p["b"], p["w"]
    f = _linear(w)
    exact = ((x - b) * w)[0].sum(dim=-1)  # the IG of a linear function
    what = "completeness_gap of exact IG scores on a linear f"
    gap = t.scalar(t.call(completeness_gap, f, x, b, exact), what)
    t.close(gap, 0.0, what, atol=1e-4, hint="sum(scores) - (f(input) - f(baseline)).")
    what = "completeness_gap when the scores sum to 1.5 more than f(input) - f(baseline)"
    shifted = exact + torch.tensor([1.5, 0, 0, 0, 0])
    gap = t.scalar(t.call(completeness_gap, f, x, b, shifted), what)
    t.close(
        gap,
        1.5,
        what,
        atol=1e-4,
        hint="Keep the sign: positive means the scores claim more than the output changed. "
        "Subtract f(baseline) as well as f(input).",
    )
    what = "completeness_gap when the scores sum to 0.5 LESS than f(input) - f(baseline)"
    gap = t.scalar(t.call(completeness_gap, f, x, b, exact - 0.1), what)
    t.close(gap, -0.5, what, atol=1e-4, hint="A shortfall gives a negative gap.")


@check("Exercise 1.5: the space baseline", points=1)
def check_space_baseline(space_baseline: Callable, t: Checker) -> None:
    lm = _tiny()
    ids = lm.to_tokens("a pun", prepend_anchor=True)  # (1, 6)
    what = "space_baseline(lm, tokens) on a tiny model"
    got = t.tensor(t.call(space_baseline, lm, ids), what, shape=(1, ids.shape[1], lm.d_model))
    with torch.no_grad():
        space = lm.embed.weight[lm.token_id(" ")]
        anchor = lm.embed.weight[ids[0, 0]]
    t.close(
        got[0, 0],
        anchor,
        what + ": position 0 (the anchor) equals the input's embedding there",
        hint="Keep the anchor token: the model needs its attention sink on the whole path.",
    )
    t.close(
        got[0, 1:],
        space.expand(ids.shape[1] - 1, -1),
        what + ": every other position is the embedding of the ' ' token",
        hint="Use the embedding of lm.token_id(' ') (not a zero vector, not the pad token).",
    )


# ----- attention methods --------------------------------------------------------------------------
def _attention(n_layers: int, n_heads: int, n_pos: int, seed: int) -> Tensor:
    """Random causal attention patterns (n_layers, n_heads, pos, pos): rows sum to one."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_layers, n_heads, n_pos, n_pos, generator=gen) * 2
    mask = torch.ones(n_pos, n_pos).triu(1).bool()
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1)


@check("Exercise 1.6: layer-weighted attention", points=1)
def check_layer_weighted_attention(layer_weighted_attention: Callable, t: Checker) -> None:
    attn = _attention(3, 2, 4, seed=0)
    what = "layer_weighted_attention with a one-hot weight on layer 1 and identical heads"
    same_heads = attn.clone()
    same_heads[:, 1] = same_heads[:, 0]
    got = t.tensor(
        t.call(layer_weighted_attention, same_heads, torch.tensor([0.0, 1.0, 0.0])),
        what,
        shape=(4,),
    )
    t.close(
        got,
        same_heads[1, 0, -1],
        what,
        hint="Read the LAST row of each pattern: how much the final position (the one that "
        "predicts the next token) attends to each token.",
    )
    what = "layer_weighted_attention with one layer: the mean of the heads' last rows"
    got = t.tensor(
        t.call(layer_weighted_attention, attn[:1], torch.tensor([2.0])), what, shape=(4,)
    )
    t.close(got, 0.5 * (attn[0, 0, -1] + attn[0, 1, -1]), what, hint="Average over heads.")
    what = (
        "layer_weighted_attention sums to one, and unnormalised weights (1, 2, 3) act like "
        "(1/6, 2/6, 3/6)"
    )
    got = t.tensor(
        t.call(layer_weighted_attention, attn, torch.tensor([1.0, 2.0, 3.0])), what, shape=(4,)
    )
    t.close(
        got.sum(),
        1.0,
        what,
        hint="Divide the layer weights by their sum, so the result is a distribution again.",
    )
    expected = (attn[:, :, -1].mean(dim=1) * torch.tensor([1.0, 2.0, 3.0])[:, None]).sum(0) / 6
    t.close(got, expected, what)


# Hand-worked cases for rollout and flow (3 tokens). With the residual, each layer's matrix is
# A_hat = (A + I) / 2, and rollout multiplies later layers on the left: A_hat_2 @ A_hat_1.
_A1 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_A2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
_ROLLOUT_A2_A1 = torch.tensor(
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.375, 0.375]]  # A_hat_2 @ A_hat_1
)
# Max flow into the last token from each input token through the two layers of A_hat. The last
# token's inputs are (layer 1, token 0) with capacity 0.25 and (layer 1, token 2) with 0.75.
# Token 0 only reaches (1, 0) and the dead end (1, 1): 0.25. Tokens 1 and 2 each reach (1, 2)
# through an edge of capacity 0.5: 0.5. (Rollout's last row is [0.25, 0.375, 0.375].)
_FLOW_A2_A1 = torch.tensor([0.25, 0.5, 0.5])


def _two_layers() -> Tensor:
    return torch.stack([_A1, _A2])[:, None].expand(2, 2, 3, 3).clone()  # (layers, heads, 3, 3)


@check("Exercise 1.7: attention rollout", points=2)
def check_attention_rollout(attention_rollout: Callable, t: Checker) -> None:
    attn = _attention(1, 3, 4, seed=1)
    what = "attention_rollout of ONE layer: the head-averaged pattern mixed with the residual"
    got = t.tensor(t.call(attention_rollout, attn), what, shape=(4, 4))
    t.close(
        got,
        0.5 * attn[0].mean(dim=0) + 0.5 * torch.eye(4),
        what,
        hint="Each layer's matrix is 0.5 * (mean over heads of A) + 0.5 * I: the identity is "
        "the residual connection, which carries every token's own information forward.",
    )
    what = "attention_rollout of two hand-worked layers (3 tokens)"
    got = t.tensor(t.call(attention_rollout, _two_layers()), what, shape=(3, 3))
    t.close(
        got,
        _ROLLOUT_A2_A1,
        what,
        hint="Later layers multiply on the LEFT: rollout = A_hat_2 @ A_hat_1, so that row i "
        "says how much of each input token reaches position i at the top.",
    )
    attn = _attention(4, 3, 6, seed=2)
    what = "attention_rollout rows sum to one and stay causal (random 4-layer patterns)"
    got = t.tensor(t.call(attention_rollout, attn), what, shape=(6, 6))
    t.close(got.sum(dim=-1), torch.ones(6), what, hint="Renormalise rows, not columns.")
    t.close(got.triu(1), torch.zeros(6, 6), what)


@check("Exercise 1.8: attention flow", points=2)
def check_attention_flow(attention_flow: Callable, t: Checker) -> None:
    attn = _attention(1, 2, 4, seed=3)
    what = "attention_flow through ONE layer: each token's capacity into the last position"
    got = t.tensor(t.call(attention_flow, attn), what, shape=(4,))
    a_hat = 0.5 * attn[0].mean(dim=0) + 0.5 * torch.eye(4)
    t.close(
        got,
        a_hat[-1],
        what,
        atol=1e-4,
        hint="Edges go from token j at layer l to token i at layer l+1 with capacity "
        "A_hat[i, j], where A_hat = 0.5 * mean-over-heads A + 0.5 * I.",
    )
    what = "attention_flow through two hand-worked layers (3 tokens)"
    got = t.tensor(t.call(attention_flow, _two_layers()), what, shape=(3,))
    t.close(
        got,
        _FLOW_A2_A1,
        what,
        atol=1e-4,
        hint="Attention flow is a max-flow value (bottlenecks), not a product of matrices "
        "(that is rollout).",
    )
    what = "attention_flow into position 1: tokens after it get no flow"
    got = t.tensor(t.call(attention_flow, _two_layers(), 1), what, shape=(3,))
    t.close(got, torch.tensor([0.5, 0.5, 0.0]), what, atol=1e-4)


# ----- occlusion and contrastive attribution ------------------------------------------------------
def _bag_of_tokens(n_vocab: int = 20, seed: int = 0) -> tuple[Callable, Tensor, Tensor]:
    """score(ids) = sum_p c[p] * v[ids[p]]: position-dependent, so shifting positions shows."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n_vocab, generator=gen)
    c = torch.linspace(1.0, 2.0, 12)

    def score(ids: Tensor) -> Tensor:  # (batch, pos) -> (batch,)
        return (c[: ids.shape[1]] * v[ids]).sum(dim=1)

    return score, v, c


_IDS = torch.tensor([[1, 7, 3, 9, 4, 12, 5]])  # 7 tokens; token 1 is an anchor


@check("Exercise 1.9: occlusion", points=1)
def check_occlusion(occlusion: Callable, t: Checker) -> None:
    score, v, c = _bag_of_tokens()
    n = _IDS.shape[1]
    what = "occlusion with a position-weighted bag-of-tokens score (replacement token 0)"
    got = t.tensor(t.call(occlusion, score, _IDS.clone(), 0), what, shape=(n,))
    expected = c[:n] * (v[_IDS[0]] - v[0])
    t.close(
        got,
        expected,
        what,
        hint="Replace token i by the replacement token (do not delete it: deleting shifts every "
        "later position) and report score(original) - score(occluded).",
    )
    what = "occlusion with the replacement equal to token 3 (position 2): that entry must be 0"
    got = t.tensor(t.call(occlusion, score, _IDS.clone(), 3), what, shape=(n,))
    t.close(got, c[:n] * (v[_IDS[0]] - v[3]), what)
    t.close(got[2], 0.0, "occluding a token with itself changes nothing")


@check("Exercise 1.10: contrastive logit difference", points=1)
def check_logit_difference_fn(logit_difference_fn: Callable, t: Checker) -> None:
    lm = _tiny()
    ids = torch.stack([lm.to_tokens(s, prepend_anchor=True)[0] for s in ("abc", "xyz", "a b")])
    target, foil = lm.token_id("d"), lm.token_id("e")
    f = t.call(logit_difference_fn, lm, target, foil)
    t.true(callable(f), "logit_difference_fn returns a function of the embeddings")
    with torch.no_grad():
        emb = lm.embed(ids)
        logits = lm.model(input_ids=ids).logits[:, -1]
        got = t.call(f, emb)
    what = "logit_difference_fn(lm, target, foil)(embeddings) on a batch of 3 prompts"
    got = t.tensor(got, what, shape=(3,), hint="Return one number per batch row.")
    t.close(
        got,
        logits[:, target] - logits[:, foil],
        what,
        atol=1e-4,
        hint="logit(target) - logit(foil) at the LAST position (probabilities are not needed: "
        "the softmax's normaliser cancels in a difference of log-probabilities).",
    )


# ----- validation ---------------------------------------------------------------------------------
def _curve_order() -> Tensor:
    return torch.tensor([3, 1, 5, 2])


@check("Exercise 1.11: deletion curve", points=1)
def check_deletion_curve(deletion_curve: Callable, t: Checker) -> None:
    score, v, c = _bag_of_tokens()
    ids, order = _IDS.clone(), _curve_order()
    drops = c[order] * (v[ids[0, order]] - v[0])  # what replacing each token takes away
    expected = score(ids) - torch.cat([torch.zeros(1), drops.cumsum(0)])
    what = "deletion_curve on a bag-of-tokens score, order [3, 1, 5, 2], replacement token 0"
    got = t.tensor(t.call(deletion_curve, score, ids, order, 0), what, shape=(5,))
    t.close(
        got,
        expected,
        what,
        hint="Entry k is the score with the FIRST k tokens of `order` replaced (all of them "
        "together), starting from k = 0 (nothing replaced). Replace, do not delete.",
    )


@check("Exercise 1.12: insertion curve", points=1)
def check_insertion_curve(insertion_curve: Callable, t: Checker) -> None:
    score, v, c = _bag_of_tokens()
    ids, order = _IDS.clone(), _curve_order()
    gains = c[order] * (v[ids[0, order]] - v[0])
    start = score(ids) - gains.sum()
    expected = start + torch.cat([torch.zeros(1), gains.cumsum(0)])
    what = "insertion_curve on a bag-of-tokens score, order [3, 1, 5, 2], replacement token 0"
    got = t.tensor(t.call(insertion_curve, score, ids, order, 0), what, shape=(5,))
    t.close(
        got,
        expected,
        what,
        hint="Start with every token in `order` replaced; entry k puts back the first k of "
        "them. The last entry is the original score.",
    )


@check("Exercise 1.13: Spearman rank correlation", points=1)
def check_spearman(spearman: Callable, t: Checker) -> None:
    cases = [
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0]), 1.0),
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.4, 0.3, 0.2, 0.1]), -1.0),
        (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([1.0, 8.0, 27.0, 64.0, 1e3]), 1.0),
        (torch.tensor([0.3, 0.1, 0.2, 0.5, 0.4]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.6),
        (torch.tensor([5.0, -1.0, 2.0, 0.0]), torch.tensor([0.1, 0.2, 0.3, 0.4]), -0.4),
        (torch.tensor([0.3, 0.1, 0.2, 0.5, 0.4]), torch.tensor([2.0, 5.0, 1.0, 3.0, 4.0]), -0.1),
    ]
    for a, b, rho in cases:
        what = f"spearman({a.tolist()}, {b.tolist()})"
        got = t.scalar(t.call(spearman, a, b), what)
        t.close(
            got,
            rho,
            what,
            atol=1e-4,
            hint="Correlate the RANKS (position of each value in sorted order), not the values. "
            "Careful: argsort gives the order, argsort of argsort gives the ranks.",
        )


@check("Exercise 1.14: randomise weights", points=1)
def check_randomize_weights(randomize_weights_: Callable, t: Checker) -> None:
    def fresh() -> torch.nn.Module:
        torch.manual_seed(5)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
        with torch.no_grad():
            net[0].weight.mul_(3.0).add_(0.5)  # a parameter with its own mean and scale
        return net

    net = fresh()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    t.call(randomize_weights_, net, 0)
    for name, p in net.named_parameters():
        old = before[name]
        what = f"randomize_weights_ changed '{name}' in place"
        t.true(
            not torch.allclose(p, old),
            what,
            "Overwrite every parameter in place (p.copy_(...) under torch.no_grad()).",
        )
        if old.numel() < 100:  # too few entries to judge a sample's mean and std
            continue
        n = old.numel()
        what = f"'{name}' keeps roughly its mean {old.mean():.3f} and std {old.std():.3f}"
        t.close(
            p.mean().detach(),
            old.mean(),
            what,
            atol=5 * float(old.std()) / n**0.5,
            rtol=0.0,
            hint="Draw new values from a normal with the parameter's own mean and std.",
        )
        t.close(p.std().detach(), old.std(), what, atol=0.0, rtol=5 / (2 * n) ** 0.5)
    again = fresh()
    torch.manual_seed(123)  # a different global RNG state must not matter
    t.call(randomize_weights_, again, 0)
    t.true(
        all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters(), strict=True)),
        "the same seed gives the same weights",
        "Use a torch.Generator seeded with `seed`, not the global random state.",
    )
    other = fresh()
    t.call(randomize_weights_, other, 1)
    t.true(
        not torch.equal(net[0].weight, other[0].weight),
        "a different seed gives different weights",
    )


# The grader's map: the name of each exercise's function in the notebook -> its check.
EXERCISES = {
    "saliency": check_saliency,
    "input_x_gradient": check_input_x_gradient,
    "integrated_gradients": check_integrated_gradients,
    "completeness_gap": check_completeness_gap,
    "space_baseline": check_space_baseline,
    "layer_weighted_attention": check_layer_weighted_attention,
    "attention_rollout": check_attention_rollout,
    "attention_flow": check_attention_flow,
    "occlusion": check_occlusion,
    "logit_difference_fn": check_logit_difference_fn,
    "deletion_curve": check_deletion_curve,
    "insertion_curve": check_insertion_curve,
    "spearman": check_spearman,
    "randomize_weights_": check_randomize_weights,
}
