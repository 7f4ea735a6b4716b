"""Lab 01's checks accept correct implementations and reject wrong ones, by name.

One table (``CASES``) of :class:`Correct` and :class:`Wrong` implementations, run the two ways a
check runs (``tests/support/checks.py``): in the notebook, with the answers ``labkit build``
recorded, and on hidden variants, with the references computing every answer. The solution's
functions come from solutions/01_attribution.ipynb, the stubs from labs/01_attribution.ipynb.
Correct alternatives and wrong implementations live only here, never in labkit. A wrong one
marked ``new`` is of a kind no issue listed (caches and memos, leftover state, one family's
module names, ignored inputs and default arguments, repeated tokens, sizes past 9).
"""

from __future__ import annotations

import copy
import itertools
import pickle
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from functools import reduce
from math import factorial

import networkx as nx
import pytest
import torch

from labkit import plaindata
from labkit.checks.core import run_check
from labkit.checks.guards import _is_library_hook
from labkit.grading.remote import Outbox, RemoteRunner
from labkit.hooks import capture
from labkit.notebooks import notebook_definitions
from tests.support.checks import ROOT, Correct, LabHarness, Wrong, table_counts

EARLIER = "earlier input"  # the words of the hint for an answer that repeats an earlier one


class Fresh:
    """A wrong implementation with state (a cache, a reused leaf, globals): a new one for every
    run of a check, so that one run's state does not leak into the next."""

    def __init__(self, factory: Callable[[], Callable], name: str) -> None:
        self.factory, self.__name__ = factory, name

    def __call__(self, *args, **kwargs):
        raise AssertionError("build it with .factory() first")


class Harness(LabHarness):
    """The table harness, building :class:`Fresh` implementations anew for each run."""

    def notebook(self, exercise, fn):
        return super().notebook(exercise, fn.factory() if isinstance(fn, Fresh) else fn)

    def hidden(self, exercise, fn, variant):
        return super().hidden(exercise, fn.factory() if isinstance(fn, Fresh) else fn, variant)


H = Harness("01")


def memo(fn: Callable, key: Callable, name: str) -> Fresh:
    """``fn`` with a memo keyed on ``key(*args)``: right the first time, stale after."""

    def factory():
        seen: dict = {}

        def cached(*args):
            k = key(*args)
            if k not in seen:
                seen[k] = fn(*args)
            return seen[k]

        return cached

    return Fresh(factory, name)


def shapes(*args) -> tuple:
    return tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))


# ----- 1.1 and 1.2: gradients ---------------------------------------------------------------------
def grad_of(f, x):
    leaf = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(leaf).sum(), leaf)
    return g


def reused_leaf(reduce_fn: Callable, name: str) -> Fresh:
    """The classic bug: one leaf kept between calls, .backward() without zeroing .grad."""

    def factory():
        leaves: dict = {}

        def attribute(f, x):
            if x.shape not in leaves:
                leaves[x.shape] = torch.zeros_like(x).requires_grad_(True)
            leaf = leaves[x.shape]
            with torch.no_grad():
                leaf.copy_(x)
            f(leaf).sum().backward()
            return reduce_fn(leaf.detach(), leaf.grad)

        return attribute

    return Fresh(factory, name)


def saliency_loop(f, x):
    g = grad_of(f, x)[0]
    return torch.stack([g[p].pow(2).sum().sqrt() for p in range(g.shape[0])])


def saliency_float64(f, x):
    return torch.linalg.vector_norm(grad_of(f, x).double(), dim=-1)[0]


def saliency_captum(f, x):
    from captum.attr import Saliency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Saliency(f).attribute(x.clone(), abs=False)[0].norm(dim=-1).detach()


def saliency_backward(f, x):
    leaf = x.detach().clone().requires_grad_(True)
    f(leaf).sum().backward()
    return leaf.grad[0].norm(dim=-1)


def saliency_signed(f, x):
    return grad_of(f, x)[0].sum(-1)


def saliency_l1(f, x):
    return grad_of(f, x)[0].abs().sum(-1)


def saliency_squared(f, x):
    return grad_of(f, x)[0].pow(2).sum(-1)


def saliency_rms(f, x):
    return grad_of(f, x)[0].pow(2).mean(-1).sqrt()


def saliency_max(f, x):
    return grad_of(f, x)[0].abs().amax(-1)


def saliency_times_input(f, x):
    return (grad_of(f, x) * x)[0].norm(dim=-1)


def saliency_at_zero(f, x):
    return grad_of(f, torch.zeros_like(x))[0].norm(dim=-1)


def saliency_normalised(f, x):
    s = grad_of(f, x)[0].norm(dim=-1)
    return s / s.sum()


def saliency_over_positions(f, x):
    return grad_of(f, x)[0].norm(dim=0)


def saliency_float16(f, x):
    return grad_of(f, x)[0].norm(dim=-1).half()


def ixg_einsum(f, x):
    return torch.einsum("bpd,bpd->p", x, grad_of(f, x))


def ixg_loop64(f, x):
    g = grad_of(f, x)
    return torch.stack([(x[0, p].double() * g[0, p].double()).sum() for p in range(x.shape[1])])


def ixg_captum(f, x):
    from captum.attr import InputXGradient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InputXGradient(f).attribute(x.clone())[0].sum(-1).detach()


def ixg_sign(f, x):
    return -(x * grad_of(f, x))[0].sum(-1)


def ixg_norm(f, x):
    return (x * grad_of(f, x))[0].norm(dim=-1)


def ixg_abs(f, x):
    return (x * grad_of(f, x))[0].abs().sum(-1)


def ixg_gradient_alone(f, x):
    return grad_of(f, x)[0].sum(-1)


def ixg_mean(f, x):
    return (x * grad_of(f, x))[0].mean(-1)


def ixg_true_change(f, x):
    rows = x.repeat(x.shape[1], 1, 1)
    rows[torch.arange(x.shape[1]), torch.arange(x.shape[1])] = 0.0
    with torch.no_grad():
        return f(x) - f(rows)


def ixg_at_zero(f, x):
    return (x * grad_of(f, torch.zeros_like(x)))[0].sum(-1)


def ixg_keeps_batch(f, x):
    return (x * grad_of(f, x)).sum(-1)


# ----- 1.3: layer attribution ---------------------------------------------------------------------
def layer_hidden_states(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    out = lm.model(inputs_embeds=x, output_hidden_states=True)
    states = out.hidden_states[:-1]  # the input of every block (the last entry is normed)
    grads = torch.autograd.grad(out.logits[0, -1, target_id], states)
    return torch.stack([(s * g)[0].sum(-1) for s, g in zip(states, grads, strict=True)]).detach()


def layer_loop64(lm, tokens, target_id):
    rows = []
    for layer in range(lm.n_layers):
        x = lm.embed(tokens).detach().requires_grad_(True)
        with capture(lm, "resid_pre", layer, keep_grad=True) as cache:
            logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
            act = cache["resid_pre", layer]
            (grad,) = torch.autograd.grad(logit, act)
        rows.append((act.double() * grad.double())[0].sum(-1).detach())
    return torch.stack(rows)


def layer_own_hooks(lm, tokens, target_id):
    acts = []
    handles = [b.register_forward_pre_hook(lambda m, a: acts.append(a[0])) for b in lm.blocks]
    try:
        x = lm.embed(tokens).detach().requires_grad_(True)
        logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(logit, acts)
    return torch.stack([(a * g)[0].sum(-1) for a, g in zip(acts, grads, strict=True)]).detach()


def _layer(site="resid_pre", reduce_by="xg", sign=1.0, score="logit"):
    def layer_attribution(lm, tokens, target_id):
        x = lm.embed(tokens).detach().requires_grad_(True)
        with capture(lm, site, keep_grad=True) as cache:
            logits = lm.model(inputs_embeds=x).logits[0, -1]
            out = logits.softmax(-1)[target_id] if score == "prob" else logits[target_id]
            acts = [cache[site, layer] for layer in range(lm.n_layers)]
            grads = torch.autograd.grad(out, acts)
        rows = []
        for a, g in zip(acts, grads, strict=True):
            rows.append(
                {"xg": (a * g)[0].sum(-1), "norm": g[0].norm(dim=-1), "g": g[0].sum(-1)}[reduce_by]
            )
        return sign * torch.stack(rows).detach()

    return layer_attribution


def layer_hidden_outputs(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    out = lm.model(inputs_embeds=x, output_hidden_states=True)
    states = out.hidden_states[1:]
    grads = torch.autograd.grad(out.logits[0, -1, target_id], states)
    return torch.stack([(s * g)[0].sum(-1) for s, g in zip(states, grads, strict=True)]).detach()


def layer_leaky_hooks(lm, tokens, target_id):
    acts = []
    for block in lm.blocks:
        block.register_forward_pre_hook(lambda mod, args: acts.append(args[0]) or None)
    x = lm.embed(tokens).detach().requires_grad_(True)
    logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
    grads = torch.autograd.grad(logit, acts)
    return torch.stack([(a * g)[0].sum(-1) for a, g in zip(acts, grads, strict=True)]).detach()


def layer_llama_paths(lm, tokens, target_id):
    """Written for Llama's module names: lm.model.model.layers."""
    acts = []
    layers = lm.model.model.layers
    handles = [b.register_forward_pre_hook(lambda m, a: acts.append(a[0])) for b in layers]
    try:
        x = lm.embed(tokens).detach().requires_grad_(True)
        logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(logit, acts)
    return torch.stack([(a * g)[0].sum(-1) for a, g in zip(acts, grads, strict=True)]).detach()


def layer_three_layers(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    with capture(lm, "resid_pre", keep_grad=True) as cache:
        logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
        acts = [cache["resid_pre", layer] for layer in range(min(3, lm.n_layers))]
        grads = torch.autograd.grad(logit, acts)
    return torch.stack([(a * g)[0].sum(-1) for a, g in zip(acts, grads, strict=True)]).detach()


def layer_top_prediction(lm, tokens, target_id):
    with torch.no_grad():
        top = int(lm.model(input_ids=tokens).logits[0, -1].argmax())
    return _layer()(lm, tokens, top)


# ----- 1.4 to 1.6: integrated gradients, the gap, the baseline -----------------------------------
def ig_rule(f, x, b, n, rule):
    """IG with a chosen quadrature, one alpha at a time (a looped implementation)."""
    if rule == "midpoint":
        alphas, weights = [(k + 0.5) / n for k in range(n)], [1 / n] * n
    elif rule == "right":
        alphas, weights = [(k + 1) / n for k in range(n)], [1 / n] * n
    elif rule == "left":
        alphas, weights = [k / n for k in range(n)], [1 / n] * n
    elif rule == "linspace":
        alphas, weights = torch.linspace(0, 1, n).tolist(), [1 / n] * n
    elif rule == "trapezoid":
        alphas = [k / (n - 1) for k in range(n)]
        weights = [0.5 / (n - 1)] + [1 / (n - 1)] * (n - 2) + [0.5 / (n - 1)]
    total = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights, strict=True):
        total += weight * grad_of(f, b + alpha * (x - b))
    return ((x - b) * total)[0].sum(-1)


def ig_midpoint_loop(f, x, b, n_steps=32):
    return ig_rule(f, x, b, n_steps, "midpoint")


def ig_captum_middle(f, x, b, n_steps=32):
    """captum's midpoint rule (captum refuses a single step: that one is the midpoint's
    gradient, by hand)."""
    from captum.attr import IntegratedGradients

    if n_steps == 1:
        return ((x - b) * grad_of(f, (x + b) / 2))[0].sum(-1)
    ig = IntegratedGradients(f)
    return ig.attribute(x.clone(), baselines=b.clone(), n_steps=n_steps, method="riemann_middle")[
        0
    ].sum(-1)


def ig_float64(f, x, b, n_steps=32):
    alphas = (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps
    path = (b.double() + alphas[:, None, None] * (x - b).double()).to(x.dtype)
    path.requires_grad_(True)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b).double()[0] * grads.double().mean(0)).sum(-1)


def ig_reversed_path(f, x, b, n_steps=32):
    """From the input towards the baseline: the midpoints are the same set."""
    alphas = (torch.arange(n_steps, dtype=x.dtype) + 0.5) / n_steps
    path = (x - alphas[:, None, None] * (x - b)).requires_grad_(True)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b)[0] * grads.mean(0)).sum(-1)


def ig_right(f, x, b, n_steps=32):
    return ig_rule(f, x, b, n_steps, "right")


def ig_left(f, x, b, n_steps=32):
    return ig_rule(f, x, b, n_steps, "left")


def ig_trapezoid(f, x, b, n_steps=32):
    return ig_rule(f, x, b, n_steps, "trapezoid")


def ig_linspace(f, x, b, n_steps=32):
    return ig_rule(f, x, b, n_steps, "linspace")


def ig_captum_default(f, x, b, n_steps=32):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(f)
    return ig.attribute(x.clone(), baselines=b.clone(), n_steps=n_steps)[0].sum(-1)


def ig_fifty_steps(f, x, b, n_steps=32):
    return ig_rule(f, x, b, 50, "midpoint")


def ig_no_average(f, x, b, n_steps=32):
    return n_steps * ig_rule(f, x, b, n_steps, "midpoint")


def ig_gradient_at_input(f, x, b, n_steps=32):
    return ((x - b) * grad_of(f, x))[0].sum(-1)


def ig_zero_baseline(f, x, b, n_steps=32):
    return ig_rule(f, x, torch.zeros_like(x), n_steps, "midpoint")


def ig_input_alone(f, x, b, n_steps=32):
    total = sum(grad_of(f, b + (k + 0.5) / n_steps * (x - b)) for k in range(n_steps)) / n_steps
    return (x * total)[0].sum(-1)


def ig_sign(f, x, b, n_steps=32):
    return -ig_rule(f, x, b, n_steps, "midpoint")


def ig_default_twenty(f, x, b, n_steps=20):
    return ig_rule(f, x, b, n_steps, "midpoint")


def ig_path_from_zero(f, x, b, n_steps=32):
    """The path b + alpha * x (not b + alpha * (x - b))."""
    total = sum(grad_of(f, b + (k + 0.5) / n_steps * x) for k in range(n_steps)) / n_steps
    return ((x - b) * total)[0].sum(-1)


def _change(f, x, b):
    with torch.no_grad():
        return (f(x) - f(b)).sum()


def gap_items(f, x, b, a):
    return a.sum().item() - (f(x).sum().item() - f(b).sum().item())


def gap_stacked(f, x, b, a):
    with torch.no_grad():
        both = f(torch.cat([x, b]))
    return float(a.sum() - (both[0] - both[1]))


def gap_float64(f, x, b, a):
    return float(a.double().sum() - _change(f, x, b).double())


def gap_sign(f, x, b, a):
    return float(_change(f, x, b) - a.sum())


def gap_no_baseline(f, x, b, a):
    with torch.no_grad():
        return float(a.sum() - f(x).sum())


def gap_abs(f, x, b, a):
    return abs(float(a.sum() - _change(f, x, b)))


def gap_relative(f, x, b, a):
    return float((a.sum() - _change(f, x, b)) / _change(f, x, b))


def gap_zeros(f, x, b, a):
    return float(a.sum() - _change(f, x, torch.zeros_like(x)))


def gap_abs_scores(f, x, b, a):
    return float(a.abs().sum() - _change(f, x, b))


def gap_change_only(f, x, b, a):
    return float(_change(f, x, b))


def gap_without_first(f, x, b, a):
    return float(a[1:].sum() - _change(f, x, b))


def gap_own_ig(f, x, b, a):
    """Ignores the attributions it was given and computes IG's instead."""
    return float(ig_midpoint_loop(f, x, b, 8).sum() - _change(f, x, b))


def _gap_change_memo():
    changes: dict = {}

    def completeness_gap(f, x, b, a):
        if x.shape not in changes:
            changes[x.shape] = _change(f, x, b)
        return float(a.sum() - changes[x.shape])

    return completeness_gap


def _embed(lm, ids):
    with torch.no_grad():
        return lm.embed(ids)


def space_weight_rows(lm, ids):
    space = lm.embed.weight[lm.token_id(" ")].expand(1, ids.shape[1] - 1, -1)
    return torch.cat([lm.embed.weight[ids[:, :1]], space], dim=1).detach()


def space_where(lm, ids):
    keep = torch.arange(ids.shape[1]) == 0
    return _embed(lm, torch.where(keep, ids, torch.full_like(ids, lm.token_id(" "))))


def space_overwrite(lm, ids):
    out = _embed(lm, ids).clone()
    out[:, 1:] = _embed(lm, torch.full_like(ids[:, 1:], lm.token_id(" ")))
    return out


def _space_ids(lm, ids, rest, first=None, keep=1, keep_last=False):
    out = torch.full_like(ids, rest)
    out[:, :keep] = ids[:, :keep] if first is None else first
    if keep_last:
        out[:, -1] = ids[:, -1]
    return out


def space_zeros(lm, ids):
    return torch.zeros(1, ids.shape[1], lm.d_model)


def space_zeros_after_first(lm, ids):
    return torch.cat([_embed(lm, ids[:, :1]), torch.zeros(1, ids.shape[1] - 1, lm.d_model)], 1)


def space_everywhere(lm, ids):
    return _embed(lm, torch.full_like(ids, lm.token_id(" ")))


def space_pad(lm, ids):
    return _embed(lm, _space_ids(lm, ids, 0))


def space_token_ids(lm, ids):
    return _space_ids(lm, ids, lm.token_id(" "))


def space_anchor_first(lm, ids):
    return _embed(lm, _space_ids(lm, ids, lm.token_id(" "), first=lm.anchor_token_id))


def space_in_place(lm, ids):
    ids[:, 1:] = lm.token_id(" ")  # writes into the caller's tokens
    return _embed(lm, ids)


def space_gpt2_id(lm, ids):
    return _embed(lm, _space_ids(lm, ids, 220))


def space_keeps_last(lm, ids):
    return _embed(lm, _space_ids(lm, ids, lm.token_id(" "), keep_last=True))


def space_keeps_two(lm, ids):
    return _embed(lm, _space_ids(lm, ids, lm.token_id(" "), keep=2))


def space_llama_paths(lm, ids):
    """Written for Llama's module names: lm.model.model.embed_tokens."""
    with torch.no_grad():
        return lm.model.model.embed_tokens(_space_ids(lm, ids, lm.token_id(" ")))


# ----- 1.7 to 1.9: attention ----------------------------------------------------------------------
def lwa_einsum(a, w):
    return torch.einsum("l,lhp->p", w / w.sum(), a[:, :, -1]) / a.shape[1]


def lwa_loop(a, w):
    total = sum(w[layer] * a[layer, :, a.shape[-1] - 1].mean(0) for layer in range(a.shape[0]))
    return total / w.sum()


def lwa_normalise_result(a, w):
    v = (w.double()[:, None] * a[:, :, -1].double().mean(1)).sum(0)
    return v / v.sum()


def _lwa(a, w, row=-1, reduce_by="mean", norm="sum", column=False):
    picked = a[:, :, :, row] if column else a[:, :, row]
    heads = {"mean": picked.mean(1), "sum": picked.sum(1), "max": picked.amax(1)}[reduce_by]
    weights = {"sum": w / w.sum(), "none": w, "softmax": w.softmax(0), "max": w / w.max()}[norm]
    return weights @ heads


def lwa_column(a, w):
    return _lwa(a, w, column=True)


def lwa_first_row(a, w):
    return _lwa(a, w, row=0)


def lwa_sum_heads(a, w):
    return _lwa(a, w, reduce_by="sum")


def lwa_max_heads(a, w):
    return _lwa(a, w, reduce_by="max")


def lwa_unnormalised(a, w):
    return _lwa(a, w, norm="none")


def lwa_softmax(a, w):
    return _lwa(a, w, norm="softmax")


def lwa_by_max(a, w):
    return _lwa(a, w, norm="max")


def lwa_plain_mean(a, w):
    return a[:, :, -1].mean((0, 1))


def lwa_last_layer(a, w):
    return a[-1, :, -1].mean(0)


def lwa_without_anchor(a, w):
    out = _lwa(a, w).clone()
    out[0] = 0.0
    return out / out.sum()


def lwa_nine_heads(a, w):
    return (w / w.sum()) @ (a[:, :, -1].sum(1) / 9)  # SmolLM2 has 9 heads


def _mats(a, residual=True, reduce_by="mean", renorm="after", eye_dtype=None):
    n = a.shape[-1]
    eye = torch.eye(n, dtype=eye_dtype or a.dtype)
    out = []
    for layer in a:
        m = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.amax(0)}[reduce_by]
        if renorm == "before":
            m = m / m.sum(-1, keepdim=True)
        if residual:
            m = 0.5 * m + 0.5 * eye
        if renorm == "after":
            m = m / m.sum(-1, keepdim=True)
        out.append(m)
    return out


def _roll(mats, left=True, start=None):
    out = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype) if start is None else start
    for m in mats:
        out = m @ out if left else out @ m
    return out


def rollout_reduce(a):
    return reduce(lambda acc, m: m @ acc, _mats(a))


def rollout_a_plus_i(a):
    """(A + I), rows renormalised: the same matrices as 0.5 A + 0.5 I renormalised."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    out = eye
    for layer in a:
        m = layer.mean(0) + eye
        out = (m / m.sum(-1, keepdim=True)) @ out
    return out


def rollout_float64(a):
    return _roll(_mats(a.double()))


def rollout_no_residual(a):
    return _roll(_mats(a, residual=False))


def rollout_wrong_order(a):
    return _roll(_mats(a), left=False)


def rollout_max_heads(a):
    return _roll(_mats(a, reduce_by="max"))


def rollout_sum_heads(a):
    return _roll(_mats(a, reduce_by="sum"))


def rollout_transposed(a):
    return _roll(_mats(a)).T


def rollout_per_head(a):
    return torch.stack([_roll(_mats(a[:, h : h + 1])) for h in range(a.shape[1])]).mean(0)


def rollout_last_layer(a):
    return _mats(a)[-1]


def rollout_layer_average(a):
    return sum(_mats(a)) / a.shape[0]


def rollout_no_renorm(a):
    return _roll(_mats(a, renorm="none"))


def rollout_renorm_before(a):
    return _roll(_mats(a, renorm="before"))


def rollout_skips_last(a):
    return _roll(_mats(a)[:-1]) if a.shape[0] > 1 else torch.eye(a.shape[-1], dtype=a.dtype)


def rollout_float32_identity(a):
    start = torch.eye(a.shape[-1])  # float32, whatever the patterns' dtype
    return _roll(_mats(a), start=start)


def _flow_graph(mats, target=-1, reverse=False, dense=False, flow_func=None, wrap=True):
    from networkx.algorithms.flow import edmonds_karp

    n = mats[0].shape[-1]
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, i) for layer in range(len(mats) + 1) for i in range(n))
    for layer, m in enumerate(mats):
        for i in range(n):
            for j in range(n):
                c = float(m[j, i] if reverse else m[i, j])
                if dense or c > 0:
                    graph.add_edge((layer, j), (layer + 1, i), capacity=c)
    sink = (len(mats), target % n if wrap else target)
    if sink not in graph:
        return torch.zeros(n)
    return torch.tensor(
        [
            nx.maximum_flow_value(graph, (0, j), sink, flow_func=flow_func or edmonds_karp)
            for j in range(n)
        ]
    )


def _widest(mats, target=-1):
    n = mats[0].shape[-1]
    best = torch.zeros(n, n)
    best.fill_diagonal_(float("inf"))
    for m in mats:
        best = torch.stack(
            [torch.stack([torch.minimum(best[j], m[i]).max() for i in range(n)]) for j in range(n)]
        )
    return best[:, target % n]


def flow_dense(a, target=-1):
    return _flow_graph(_mats(a), target, dense=True)


def flow_shortest_augmenting(a, target=-1):
    func = nx.algorithms.flow.shortest_augmenting_path
    return _flow_graph(_mats(a.double()), target, flow_func=func)


def flow_widest(a, target=-1):
    return _widest(_mats(a), target)


def flow_rollout(a, target=-1):
    return _roll(_mats(a))[target]


def flow_no_residual(a, target=-1):
    return _flow_graph(_mats(a, residual=False), target)


def flow_reversed(a, target=-1):
    return _flow_graph(_mats(a), target, reverse=True)


def flow_sum_heads(a, target=-1):
    return _flow_graph(_mats(a, reduce_by="sum"), target)


def flow_max_heads(a, target=-1):
    return _flow_graph(_mats(a, reduce_by="max"), target)


def flow_ignores_target(a, target=-1):
    return _flow_graph(_mats(a), -1)


def flow_no_renorm(a, target=-1):
    return _flow_graph(_mats(a, renorm="none"), target)


def flow_renorm_before(a, target=-1):
    return _flow_graph(_mats(a, renorm="before"), target)


def flow_unwrapped_sink(a, target=-1):
    return _flow_graph(_mats(a), target, wrap=False)


def flow_first_layer(a, target=-1):
    return _flow_graph(_mats(a)[:1], target)


def flow_default_zero(a, target=0):
    return _flow_graph(_mats(a), target)


# ----- 1.10 and 1.11: perturbation ----------------------------------------------------------------
def _rows(tokens, masks, r):
    batch = tokens.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        batch[row, list(positions)] = r
    return batch


def _by_value(tokens, masks, r):
    batch = tokens.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        for p in positions:
            batch[row][tokens[0] == tokens[0, p]] = r
    return batch


def _delete(tokens, positions):
    return tokens[:, [i for i in range(tokens.shape[1]) if i not in set(positions)]]


def _scores(score, ids):
    with torch.no_grad():
        return score(ids)


def _occlusion(score, ids, masks, r, build=_rows):
    return _scores(score, ids)[0] - _scores(score, build(ids, masks, r))


def _each(n):
    return [[i] for i in range(n)]


def occlusion_loop(score, ids, r):
    return torch.stack([_occlusion(score, ids, [[i]], r)[0] for i in range(ids.shape[1])])


def occlusion_masked_fill64(score, ids, r):
    n = ids.shape[1]
    rows = ids.repeat(n, 1).masked_fill(torch.eye(n, dtype=torch.bool), r)
    return _scores(score, ids)[0].double() - _scores(score, rows).double()


def occlusion_one_row_at_a_time(score, ids, r):
    full = _scores(score, ids)[0]
    out = []
    for i in range(ids.shape[1]):
        row = ids.clone()
        row[0, i] = r
        out.append(full - _scores(score, row)[0])
    return torch.stack(out)


def occlusion_deleted(score, ids, r):
    full = _scores(score, ids)[0]
    return torch.stack([full - _scores(score, _delete(ids, [i]))[0] for i in range(ids.shape[1])])


def occlusion_sign(score, ids, r):
    return -_occlusion(score, ids, _each(ids.shape[1]), r)


def occlusion_next(score, ids, r):
    n = ids.shape[1]
    return _occlusion(score, ids, [[(i + 1) % n] for i in range(n)], r)


def occlusion_previous(score, ids, r):
    n = ids.shape[1]
    return _occlusion(score, ids, [[(i - 1) % n] for i in range(n)], r)


def occlusion_all_but_i(score, ids, r):
    n = ids.shape[1]
    return _occlusion(score, ids, [[j for j in range(n) if j != i] for i in range(n)], r)


def occlusion_always_zero(score, ids, r):
    return _occlusion(score, ids, _each(ids.shape[1]), 0)


def occlusion_in_place(score, ids, r):
    out = []
    full = _scores(score, ids)[0]
    for i in range(ids.shape[1]):
        old = int(ids[0, i])
        ids[0, i] = r  # writes into the caller's tensor, and forgets to put the last one back
        out.append(full - _scores(score, ids)[0])
        if i < ids.shape[1] - 1:
            ids[0, i] = old
    return torch.stack(out)


def occlusion_by_value(score, ids, r):
    return _occlusion(score, ids, _each(ids.shape[1]), r, build=_by_value)


def occlusion_relative(score, ids, r):
    return _occlusion(score, ids, _each(ids.shape[1]), r) / _scores(score, ids)[0]


def occlusion_scores_only(score, ids, r):
    return _scores(score, _rows(ids, _each(ids.shape[1]), r))


def occlusion_without_anchor(score, ids, r):
    return _occlusion(score, ids, _each(ids.shape[1]), r)[1:]


def _coalitions(score, ids, players, r, build=_rows):
    n = len(players)
    masks = [[players[i] for i in range(n) if not (m >> i) & 1] for m in range(2**n)]
    return _scores(score, build(ids, masks, r)).double()  # value of mask m: bit i = i present


def _shapley(weight, build=_rows, replacement=None):
    def shapley_values(score, ids, positions, r):
        players = [int(p) for p in positions]
        n = len(players)
        values = _coalitions(score, ids, players, r if replacement is None else replacement, build)
        out = torch.zeros(n, dtype=torch.float64)
        for m in range(2**n):
            size = bin(m).count("1")
            for i in range(n):
                if not (m >> i) & 1:
                    out[i] += weight(size, n) * (values[m | (1 << i)] - values[m])
        return out

    return shapley_values


def _w_shapley(s, n):
    return factorial(s) * factorial(n - s - 1) / factorial(n)


def shapley_permutations(score, ids, positions, r):
    players = [int(p) for p in positions]
    n = len(players)
    values = _coalitions(score, ids, players, r)
    out = torch.zeros(n, dtype=torch.float64)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        mask = 0
        for i in perm:
            out[i] += values[mask | (1 << i)] - values[mask]
            mask |= 1 << i
    return out / len(perms)


def shapley_recursive(score, ids, positions, r):
    """The subsets of the other players, each coalition scored on its own (once), in Python
    floats."""
    players = [int(p) for p in positions]
    n = len(players)
    seen: dict = {}

    def value(present: frozenset) -> float:
        if present not in seen:
            row = _rows(ids, [[p for i, p in enumerate(players) if i not in present]], r)
            seen[present] = float(_scores(score, row)[0])
        return seen[present]

    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for k in range(n):
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                total += _w_shapley(k, n) * (value(s | {i}) - value(s))
        out.append(total)
    return torch.tensor(out)


def shapley_sampled(score, ids, positions, r):
    players = [int(p) for p in positions]
    n = len(players)
    values = _coalitions(score, ids, players, r)
    gen = torch.Generator().manual_seed(0)
    out = torch.zeros(n, dtype=torch.float64)
    for _ in range(6):
        mask = 0
        for i in torch.randperm(n, generator=gen).tolist():
            out[i] += values[mask | (1 << i)] - values[mask]
            mask |= 1 << i
    return out / 6


def shapley_occlusion(score, ids, positions, r):
    return _occlusion(score, ids, [[int(p)] for p in positions], r)


def shapley_leave_one_in(score, ids, positions, r):
    p = [int(q) for q in positions]
    alone = _scores(score, _rows(ids, [[q for q in p if q != x] for x in p], r))
    return alone - _scores(score, _rows(ids, [p], r))[0]


def shapley_endpoints(score, ids, positions, r):
    return (
        shapley_occlusion(score, ids, positions, r) + shapley_leave_one_in(score, ids, positions, r)
    ) / 2


def shapley_sign(score, ids, positions, r):
    return -_shapley(_w_shapley)(score, ids, positions, r)


def shapley_sorted(score, ids, positions, r):
    return _shapley(_w_shapley)(score, ids, sorted(int(p) for p in positions), r)


def shapley_reversed_bits(score, ids, positions, r):
    return _shapley(_w_shapley)(score, ids, positions, r).flip(0)


# ----- 1.12: the contrastive function -------------------------------------------------------------
def _ld(lm, t, f, position=-1, kind="logit", grad=True, detach_input=False):
    def logit_difference(e):
        e = e.detach() if detach_input else e
        logits = lm.model(inputs_embeds=e).logits[:, position]
        if kind == "prob":
            logits = logits.softmax(-1)
        return logits[:, t] - logits[:, f]

    if grad:
        return logit_difference

    def under_no_grad(e):
        with torch.no_grad():
            return logit_difference(e)

    return under_no_grad


def ld_log_softmax(lm, t, f):
    def logit_difference(e):
        lp = lm.model(inputs_embeds=e).logits[:, -1].log_softmax(-1)
        return lp[:, t] - lp[:, f]

    return logit_difference


def ld_loop(lm, t, f):
    def logit_difference(e):
        rows = [lm.model(inputs_embeds=row[None]).logits[0, -1] for row in e]
        return torch.stack([r[t] - r[f] for r in rows])

    return logit_difference


def ld_base_model(lm, t, f):
    def logit_difference(e):
        final = lm.model.base_model(inputs_embeds=e).last_hidden_state[:, -1]  # after the norm
        logits = lm.unembed(final)
        return logits[:, t] - logits[:, f]

    return logit_difference


def ld_probability(lm, t, f):
    return _ld(lm, t, f, kind="prob")


def ld_sign(lm, t, f):
    return _ld(lm, f, t)


def ld_second_to_last(lm, t, f):
    return _ld(lm, t, f, position=-2)


def ld_first_position(lm, t, f):
    return _ld(lm, t, f, position=0)


def ld_target_only(lm, t, f):
    return lambda e: lm.model(inputs_embeds=e).logits[:, -1, t]


def ld_without_final_norm(lm, t, f):
    def logit_difference(e):
        last = lm.n_layers - 1
        with capture(lm, "resid_post", last, keep_grad=True) as cache:
            lm.model(inputs_embeds=e)
        logits = lm.unembed(cache["resid_post", last][:, -1])
        return logits[:, t] - logits[:, f]

    return logit_difference


def ld_no_grad(lm, t, f):
    return _ld(lm, t, f, grad=False)


def ld_detached_input(lm, t, f):
    return _ld(lm, t, f, detach_input=True)


def _ld_computed_once():
    memo: dict = {}

    def logit_difference_fn(lm, t, f):
        def logit_difference(e):
            if "value" not in memo:
                memo["value"] = _ld(lm, t, f)(e)
            return memo["value"]

        return logit_difference

    return logit_difference_fn


def ld_llama_paths(lm, t, f):
    """Written for Llama's module names: lm.model.model and lm.model.lm_head."""

    def logit_difference(e):
        final = lm.model.model(inputs_embeds=e).last_hidden_state[:, -1]
        logits = lm.model.lm_head(final)
        return logits[:, t] - logits[:, f]

    return logit_difference


def _ld_globals():
    chosen: dict = {}

    def logit_difference_fn(lm, t, f):
        chosen.update(target=t, foil=f)  # the next call overwrites them

        def logit_difference(e):
            logits = lm.model(inputs_embeds=e).logits[:, -1]
            return logits[:, chosen["target"]] - logits[:, chosen["foil"]]

        return logit_difference

    return logit_difference_fn


def ld_first_row(lm, t, f):
    def logit_difference(e):
        logits = lm.model(inputs_embeds=e).logits[:, -1]
        return (logits[:1, t] - logits[:1, f]).expand(e.shape[0])

    return logit_difference


def ld_mean_over_positions(lm, t, f):
    def logit_difference(e):
        logits = lm.model(inputs_embeds=e).logits
        return logits[:, :, t].mean(1) - logits[:, :, f].mean(1)

    return logit_difference


# ----- 1.13 to 1.15: curves and rank correlation --------------------------------------------------
def _order(order):
    return [int(p) for p in order]


def deletion_loop(score, ids, order, r):
    o = _order(order)
    return torch.stack([_scores(score, _rows(ids, [o[:k]], r))[0] for k in range(len(o) + 1)])


def deletion_masks64(score, ids, order, r):
    o = _order(order)
    return _scores(score, _rows(ids, [o[:k] for k in range(len(o) + 1)], r)).double()


def deletion_incremental(score, ids, order, r):
    row, rows = ids.clone(), [ids.clone()]
    for p in _order(order):
        row = row.clone()
        row[0, p] = r
        rows.append(row)
    return _scores(score, torch.cat(rows))


def _deletion(masks, build=_rows):
    def deletion_curve(score, ids, order, r):
        return _scores(score, build(ids, masks(_order(order)), r))

    return deletion_curve


def deletion_deleted(score, ids, order, r):
    o = _order(order)
    return torch.stack([_scores(score, _delete(ids, o[:k]))[0] for k in range(len(o) + 1)])


def deletion_additive(score, ids, order, r):
    o = _order(order)
    drops = _occlusion(score, ids, [[p] for p in o], r)
    return _scores(score, ids)[0] - torch.cat([torch.zeros(1), drops.cumsum(0)])


def deletion_in_place(score, ids, order, r):
    out = [_scores(score, ids)[0]]
    for p in _order(order):
        ids[0, p] = r
        out.append(_scores(score, ids)[0])
    return torch.stack(out)


def deletion_drops(score, ids, order, r):
    curve = deletion_loop(score, ids, order, r)
    return curve[0] - curve


def insertion_loop(score, ids, order, r):
    o = _order(order)
    return torch.stack([_scores(score, _rows(ids, [o[k:]], r))[0] for k in range(len(o) + 1)])


def insertion_put_back(score, ids, order, r):
    o = _order(order)
    row = _rows(ids, [o], r)
    rows = [row]
    for p in o:
        row = row.clone()
        row[0, p] = ids[0, p]
        rows.append(row)
    return _scores(score, torch.cat(rows))


def insertion_reversed_deletion(score, ids, order, r):
    """Entry k has order[k:] replaced: the deletion curve of the reversed order, read backwards."""
    return deletion_loop(score, ids, torch.tensor(_order(order)[::-1]), r).flip(0)


def _insertion(masks, build=_rows):
    def insertion_curve(score, ids, order, r):
        return _scores(score, build(ids, masks(_order(order), ids.shape[1]), r))

    return insertion_curve


def insertion_additive(score, ids, order, r):
    o = _order(order)
    start = _scores(score, _rows(ids, [o], r))[0]
    gains = _scores(score, _rows(ids, [[q for q in o if q != p] for p in o], r)) - start
    return start + torch.cat([torch.zeros(1), gains.cumsum(0)])


def insertion_in_place(score, ids, order, r):
    o = _order(order)
    out = []
    for k in range(len(o) + 1):
        ids[0, o[k:]] = r  # writes into the caller's tokens (and never puts them back)
        out.append(_scores(score, ids)[0])
    return torch.stack(out)


def _ranks(v):
    ranks = torch.empty(len(v), dtype=torch.float64)
    ranks[v.argsort()] = torch.arange(len(v), dtype=torch.float64)
    return ranks


def _corr(x, y):
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


def spearman_d2(a, b):
    n = len(a)
    return float(1 - 6 * ((_ranks(a) - _ranks(b)) ** 2).sum() / (n * (n**2 - 1)))


def spearman_corrcoef(a, b):
    return _corr(a.argsort().argsort(), b.argsort().argsort())


def spearman_python(a, b):
    def ranks(v):
        values = v.tolist()
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, i in enumerate(order, start=1):
            out[i] = rank
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var


def spearman_numpy(a, b):
    import numpy as np

    ra, rb = np.argsort(np.argsort(a.numpy())), np.argsort(np.argsort(b.numpy()))
    return np.corrcoef(ra, rb)[0, 1]


def spearman_pearson(a, b):
    return _corr(a, b)


def spearman_argsort_once(a, b):
    return _corr(a.argsort(), b.argsort())


def spearman_abs(a, b):
    return abs(spearman_d2(a, b))


def spearman_ranks_a_only(a, b):
    return _corr(a.argsort().argsort(), b)


def spearman_ranks_b_only(a, b):
    return _corr(a, b.argsort().argsort())


def spearman_opposite(a, b):
    return _corr(a.argsort().argsort(), (-b).argsort().argsort())


def spearman_sorted_values(a, b):
    return _corr(a.sort().values, b.sort().values)


def spearman_n_n_minus_1(a, b):
    n = len(a)
    return float(1 - 6 * ((_ranks(a) - _ranks(b)) ** 2).sum() / (n * (n - 1)))


def spearman_kendall(a, b):
    n = len(a)
    pairs = list(itertools.combinations(range(n), 2))
    agree = sum(float(torch.sign((a[i] - a[j]) * (b[i] - b[j]))) for i, j in pairs)
    return agree / len(pairs)


# ----- 1.16: randomisation ------------------------------------------------------------------------
def randomize_normal_(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(float(p.mean()), float(p.std()), generator=gen)


def randomize_state_dict(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) * v.std() + v.mean()
        for k, v in module.state_dict().items()
    }
    module.load_state_dict(state)


def randomize_float64(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(noise * p.double().std() + p.double().mean())


def _randomize(
    module,
    seed=0,
    *,
    skip_frozen=False,
    reseed=False,
    dist="normal",
    scope="own",
    dims=None,
    noise=None,
    only=None,
):
    gen = torch.Generator().manual_seed(seed)
    params = list(module.parameters())
    everything = torch.cat([p.flatten() for p in params])
    with torch.no_grad():
        for sub in module.modules():
            if only is not None and not isinstance(sub, only):
                continue
            for p in sub.parameters(recurse=False):
                if skip_frozen and not p.requires_grad:
                    continue
                if reseed:
                    gen = torch.Generator().manual_seed(seed)
                if noise is not None:
                    p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
                    continue
                if scope == "module":
                    mean, std = everything.mean(), everything.std()
                elif dims is not None and p.dim() == 2:
                    mean, std = p.mean(dims, keepdim=True), p.std(dims, keepdim=True)
                else:
                    mean, std = p.mean(), p.std()
                if dist == "normal":
                    z = torch.randn(p.shape, generator=gen)
                else:  # uniform with mean 0 and std 1
                    z = (torch.rand(p.shape, generator=gen) - 0.5) * 12**0.5
                p.copy_(z * std + mean)


def randomize_zeros(module, seed=0):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def randomize_standard_normal(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def randomize_global_rng(module, seed=0):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(float(p.mean()), float(p.std()))


def randomize_copy(module, seed=0):
    clone = copy.deepcopy(module)
    randomize_normal_(clone, seed)
    return clone


def randomize_weights_only(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                p.normal_(float(p.mean()), float(p.std()), generator=gen)


def randomize_shuffle(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=gen)].view_as(p))


def randomize_skips_frozen(module, seed=0):
    _randomize(module, seed, skip_frozen=True)


def randomize_reseeded(module, seed=0):
    _randomize(module, seed, reseed=True)


def randomize_uniform(module, seed=0):
    _randomize(module, seed, dist="uniform")


def randomize_module_stats(module, seed=0):
    _randomize(module, seed, scope="module")


def randomize_one_percent_noise(module, seed=0):
    _randomize(module, seed, noise=0.01)


def randomize_per_row(module, seed=0):
    _randomize(module, seed, dims=1)


def randomize_linear_only(module, seed=0):
    _randomize(module, seed, only=torch.nn.Linear)


def randomize_default_one(module, seed=1):
    randomize_normal_(module, seed)


# ----- the table --------------------------------------------------------------------------------
def _stuck_on_first(fn):
    return memo(fn, lambda *args: id(args[0]), f"{fn.__name__}_memo_on_the_first_argument")


def _stuck_on_shape(fn):
    return memo(fn, shapes, f"{fn.__name__}_memo_on_shapes")


CASES = [
    # 1.1 saliency
    Correct("saliency", saliency_loop, "a loop over positions"),
    Correct("saliency", saliency_float64, "linalg.vector_norm in float64"),
    Correct("saliency", saliency_captum, "captum's Saliency"),
    Correct("saliency", saliency_backward, ".backward() on a fresh leaf"),
    Wrong("saliency", saliency_signed, hint="signed"),
    Wrong("saliency", saliency_l1, hint="L1 norm"),
    Wrong("saliency", saliency_squared, hint="square root"),
    Wrong("saliency", saliency_rms, hint="root MEAN square"),
    Wrong("saliency", saliency_max, hint="largest"),
    Wrong("saliency", saliency_times_input, hint="multiplied the gradient by the input"),
    Wrong("saliency", saliency_at_zero, hint="AT the input"),
    Wrong("saliency", saliency_normalised, hint="normalise"),
    Wrong(
        "saliency",
        reused_leaf(lambda x, g: g[0].norm(dim=-1), "saliency_reused_leaf"),
        hint="piled up",
    ),
    Wrong("saliency", saliency_over_positions, hint="one score per position"),
    Wrong("saliency", _stuck_on_shape(saliency_loop), hint=EARLIER, new=True),
    Wrong("saliency", _stuck_on_first(saliency_loop), hint=EARLIER, new=True),
    Wrong("saliency", saliency_float16, hint="too coarse", new=True),
    # 1.2 input x gradient
    Correct("input_x_gradient", ixg_einsum, "einsum"),
    Correct("input_x_gradient", ixg_loop64, "a loop in float64"),
    Correct("input_x_gradient", ixg_captum, "captum's InputXGradient"),
    Wrong("input_x_gradient", ixg_sign, hint="Wrong sign"),
    Wrong("input_x_gradient", ixg_norm, hint="not a norm"),
    Wrong("input_x_gradient", ixg_abs, hint="absolute value"),
    Wrong("input_x_gradient", ixg_gradient_alone, hint="gradient alone"),
    Wrong("input_x_gradient", ixg_mean, hint="not the mean"),
    Wrong("input_x_gradient", ixg_true_change, hint="first-order estimate"),
    Wrong("input_x_gradient", ixg_at_zero, hint="not at zero"),
    Wrong(
        "input_x_gradient",
        reused_leaf(lambda x, g: (x * g)[0].sum(-1), "ixg_reused_leaf"),
        hint="piled up",
    ),
    Wrong("input_x_gradient", _stuck_on_shape(ixg_einsum), hint=EARLIER, new=True),
    Wrong("input_x_gradient", _stuck_on_first(ixg_einsum), hint=EARLIER, new=True),
    Wrong("input_x_gradient", ixg_keeps_batch, hint="expected shape", new=True),
    # 1.3 layer attribution
    Correct("layer_attribution", layer_hidden_states, "output_hidden_states[:-1]"),
    Correct("layer_attribution", layer_loop64, "one layer at a time, float64"),
    Correct("layer_attribution", layer_own_hooks, "its own hooks on lm.blocks, removed"),
    Wrong("layer_attribution", _layer(site="resid_post"), hint="Off by one layer"),
    Wrong("layer_attribution", layer_hidden_outputs, hint="hidden_states[1:]"),
    Wrong("layer_attribution", _layer(sign=-1.0), hint="Wrong sign"),
    Wrong("layer_attribution", _layer(reduce_by="norm"), hint="saliency"),
    Wrong("layer_attribution", _layer(reduce_by="g"), hint="before summing"),
    Wrong("layer_attribution", _layer(score="prob"), hint="probability"),
    Wrong("layer_attribution", layer_leaky_hooks, hint="hook(s) registered"),
    Wrong("layer_attribution", layer_llama_paths, hint="AttributeError", new=True),
    Wrong(
        "layer_attribution",
        memo(
            layer_hidden_states,
            lambda lm, ids, t: (id(lm), ids.shape),
            "layer_memo_on_model_and_length",
        ),
        hint=EARLIER,
        new=True,
    ),
    Wrong("layer_attribution", layer_three_layers, hint="expected shape", new=True),
    Wrong("layer_attribution", layer_top_prediction, hint="top prediction", new=True),
    # 1.4 integrated gradients
    Correct("integrated_gradients", ig_midpoint_loop, "midpoint rule, looped"),
    Correct("integrated_gradients", ig_captum_middle, "captum, riemann_middle"),
    Correct("integrated_gradients", ig_float64, "float64 accumulation"),
    Correct("integrated_gradients", ig_reversed_path, "the path from the input to the baseline"),
    Wrong("integrated_gradients", ig_right, hint="right Riemann"),
    Wrong("integrated_gradients", ig_left, hint="left Riemann"),
    Wrong("integrated_gradients", ig_trapezoid, hint="ZeroDivisionError"),
    Wrong("integrated_gradients", ig_linspace, hint="linspace"),
    Wrong("integrated_gradients", ig_captum_default, hint="Gauss-Legendre"),
    Wrong("integrated_gradients", ig_fifty_steps, hint="other than n_steps"),
    Wrong("integrated_gradients", ig_no_average, hint="dividing by n_steps"),
    Wrong("integrated_gradients", ig_gradient_at_input, hint="only the gradient at the input"),
    Wrong("integrated_gradients", ig_zero_baseline, hint="zero baseline"),
    Wrong("integrated_gradients", ig_input_alone, hint="input alone"),
    Wrong("integrated_gradients", ig_sign, hint="Wrong sign"),
    Wrong("integrated_gradients", _stuck_on_shape(ig_midpoint_loop), hint=EARLIER, new=True),
    Wrong("integrated_gradients", ig_default_twenty, hint="32 when none", new=True),
    Wrong("integrated_gradients", ig_path_from_zero, hint="straight path", new=True),
    # 1.5 completeness gap
    Correct("completeness_gap", gap_items, "separate calls, item()"),
    Correct("completeness_gap", gap_stacked, "x and b in one batch"),
    Correct("completeness_gap", gap_float64, "float64"),
    Wrong("completeness_gap", gap_sign, hint="Wrong sign"),
    Wrong("completeness_gap", gap_no_baseline, hint="ignored the baseline"),
    Wrong("completeness_gap", gap_abs, hint="absolute value"),
    Wrong("completeness_gap", gap_relative, hint="relative"),
    Wrong("completeness_gap", gap_zeros, hint="f(zeros)"),
    Wrong("completeness_gap", gap_abs_scores, hint="with their signs"),
    Wrong("completeness_gap", gap_change_only, hint="alone"),
    Wrong("completeness_gap", gap_without_first, hint="first position", new=True),
    Wrong(
        "completeness_gap",
        Fresh(_gap_change_memo, "gap_change_memo_on_shape"),
        hint="sum(attributions)",
        new=True,
    ),
    Wrong("completeness_gap", gap_own_ig, hint="sum(attributions)", new=True),
    # 1.6 space baseline
    Correct("space_baseline", space_weight_rows, "rows of the embedding matrix"),
    Correct("space_baseline", space_where, "torch.where"),
    Correct("space_baseline", space_overwrite, "embed, then overwrite"),
    Wrong("space_baseline", space_zeros, hint="zero baseline"),
    Wrong("space_baseline", space_zeros_after_first, hint="you put zeros there"),
    Wrong("space_baseline", space_everywhere, hint="Keep position 0"),
    Wrong("space_baseline", space_pad, hint="pad token"),
    Wrong("space_baseline", space_token_ids, hint="token ids"),
    Wrong("space_baseline", space_anchor_first, hint="INPUT's first token"),
    Wrong("space_baseline", space_in_place, hint="changed its input"),
    Wrong("space_baseline", space_gpt2_id, hint="220", new=True),
    Wrong("space_baseline", space_keeps_last, hint="kept the last token", new=True),
    Wrong("space_baseline", space_keeps_two, hint="kept position 1", new=True),
    Wrong("space_baseline", space_llama_paths, hint="AttributeError", new=True),
    Wrong(
        "space_baseline",
        memo(space_where, lambda lm, ids: ids.shape, "space_memo_on_length"),
        hint=EARLIER,
        new=True,
    ),
    # 1.7 layer-weighted attention
    Correct("layer_weighted_attention", lwa_einsum, "einsum"),
    Correct("layer_weighted_attention", lwa_loop, "a loop over layers"),
    Correct("layer_weighted_attention", lwa_normalise_result, "float64, normalise the result"),
    Wrong("layer_weighted_attention", lwa_column, hint="last COLUMN"),
    Wrong("layer_weighted_attention", lwa_first_row, hint="first row"),
    Wrong("layer_weighted_attention", lwa_sum_heads, hint="do not sum"),
    Wrong("layer_weighted_attention", lwa_max_heads, hint="not take the max"),
    Wrong("layer_weighted_attention", lwa_unnormalised, hint="Normalise the layer weights"),
    Wrong("layer_weighted_attention", lwa_softmax, hint="softmax"),
    Wrong("layer_weighted_attention", lwa_by_max, hint="their SUM"),
    Wrong("layer_weighted_attention", lwa_plain_mean, hint="plain mean"),
    Wrong("layer_weighted_attention", lwa_last_layer, hint="last layer only", new=True),
    Wrong("layer_weighted_attention", lwa_without_anchor, hint="left out position 0", new=True),
    Wrong("layer_weighted_attention", _stuck_on_shape(lwa_einsum), hint=EARLIER, new=True),
    Wrong("layer_weighted_attention", lwa_nine_heads, hint="average it over heads", new=True),
    # 1.8 attention rollout
    Correct("attention_rollout", rollout_reduce, "functools.reduce"),
    Correct("attention_rollout", rollout_a_plus_i, "(A + I), rows renormalised"),
    Correct("attention_rollout", rollout_float64, "float64"),
    Wrong("attention_rollout", rollout_no_residual, hint="residual"),
    Wrong("attention_rollout", rollout_wrong_order, hint="LEFT"),
    Wrong("attention_rollout", rollout_max_heads, hint="not max"),
    Wrong("attention_rollout", rollout_sum_heads, hint="do not sum"),
    Wrong("attention_rollout", rollout_transposed, hint="transpose"),
    Wrong("attention_rollout", rollout_per_head, hint="each head separately"),
    Wrong("attention_rollout", rollout_last_layer, hint="last layer only"),
    Wrong("attention_rollout", rollout_layer_average, hint="do not average"),
    Wrong("attention_rollout", rollout_no_renorm, hint="Renormalise each"),
    Wrong("attention_rollout", rollout_renorm_before, hint="AFTER mixing"),
    Wrong("attention_rollout", rollout_skips_last, hint="left out the last one", new=True),
    Wrong("attention_rollout", rollout_float32_identity, hint="RuntimeError", new=True),
    Wrong("attention_rollout", _stuck_on_shape(rollout_reduce), hint=EARLIER, new=True),
    # 1.9 attention flow
    Correct("attention_flow", flow_dense, "dense graph, Edmonds-Karp"),
    Correct("attention_flow", flow_shortest_augmenting, "shortest augmenting path, float64"),
    Wrong("attention_flow", flow_widest, hint="widest single path"),
    Wrong("attention_flow", flow_rollout, hint="rollout"),
    Wrong("attention_flow", flow_no_residual, hint="residual"),
    Wrong("attention_flow", flow_reversed, hint="wrong way"),
    Wrong("attention_flow", flow_sum_heads, hint="do not sum"),
    Wrong("attention_flow", flow_max_heads, hint="not max"),
    Wrong("attention_flow", flow_ignores_target, hint="`target`"),
    Wrong("attention_flow", flow_no_renorm, hint="Renormalise each"),
    Wrong("attention_flow", flow_renorm_before, hint="AFTER mixing"),
    Wrong("attention_flow", flow_unwrapped_sink, hint="counts from the end", new=True),
    Wrong("attention_flow", flow_first_layer, hint="first layer's edges only", new=True),
    Wrong("attention_flow", _stuck_on_shape(flow_dense), hint=EARLIER, new=True),
    Wrong("attention_flow", flow_default_zero, hint="max flow", new=True),
    # 1.10 occlusion
    Correct("occlusion", occlusion_loop, "a loop"),
    Correct("occlusion", occlusion_masked_fill64, "masked_fill, float64"),
    Correct("occlusion", occlusion_one_row_at_a_time, "one row per call of score"),
    Wrong("occlusion", occlusion_deleted, hint="You deleted"),
    Wrong("occlusion", occlusion_sign, hint="Wrong sign"),
    Wrong("occlusion", occlusion_next, hint="Off by one"),
    Wrong("occlusion", occlusion_previous, hint="Off by one"),
    Wrong("occlusion", occlusion_all_but_i, hint="EXCEPT i"),
    Wrong("occlusion", occlusion_always_zero, hint="always used 0"),
    Wrong("occlusion", occlusion_in_place, hint="changed its input"),
    Wrong("occlusion", occlusion_by_value, hint="every occurrence", new=True),
    Wrong("occlusion", occlusion_relative, hint="relative to the score", new=True),
    Wrong("occlusion", occlusion_scores_only, hint="occluded scores themselves", new=True),
    Wrong("occlusion", occlusion_without_anchor, hint="shape (pos,)", new=True),
    Wrong("occlusion", _stuck_on_shape(occlusion_loop), hint=EARLIER, new=True),
    # 1.11 Shapley values
    Correct("shapley_values", shapley_permutations, "every permutation"),
    Correct("shapley_values", _shapley(_w_shapley), "coalitions by bitmask, float64"),
    Correct("shapley_values", shapley_recursive, "subsets of the others, one score per row"),
    Wrong("shapley_values", _shapley(lambda s, n: 1 / 2 ** (n - 1)), hint="Banzhaf"),
    Wrong("shapley_values", shapley_occlusion, hint="That is occlusion"),
    Wrong("shapley_values", shapley_leave_one_in, hint="empty coalition"),
    Wrong("shapley_values", shapley_endpoints, hint="three or more"),
    Wrong("shapley_values", shapley_sign, hint="Wrong sign"),
    Wrong(
        "shapley_values",
        _shapley(lambda s, n: factorial(s) * factorial(n - s) / factorial(n)),
        hint="n - s - 1",
    ),
    Wrong("shapley_values", shapley_sampled, hint="coalitions S of the other players"),
    Wrong("shapley_values", shapley_sorted, hint="order of `positions`"),
    Wrong("shapley_values", shapley_reversed_bits, hint="reverse order", new=True),
    Wrong(
        "shapley_values", _shapley(_w_shapley, build=_by_value), hint="every occurrence", new=True
    ),
    Wrong(
        "shapley_values",
        memo(_shapley(_w_shapley), lambda s, ids, pos, r: len(pos), "shapley_memo_on_n"),
        hint=EARLIER,
        new=True,
    ),
    Wrong("shapley_values", _shapley(_w_shapley, replacement=0), hint="coalitions S", new=True),
    # 1.12 contrastive function
    Correct("logit_difference_fn", ld_log_softmax, "log-softmax difference"),
    Correct("logit_difference_fn", ld_loop, "a loop over the batch"),
    Correct("logit_difference_fn", ld_base_model, "base model, then unembed"),
    Wrong("logit_difference_fn", ld_probability, hint="probabilities"),
    Wrong("logit_difference_fn", ld_sign, hint="Wrong sign"),
    Wrong("logit_difference_fn", ld_second_to_last, hint="not the one before it"),
    Wrong("logit_difference_fn", ld_first_position, hint="not 0"),
    Wrong("logit_difference_fn", ld_target_only, hint="Subtract the foil"),
    Wrong("logit_difference_fn", ld_without_final_norm, hint="final norm"),
    Wrong("logit_difference_fn", ld_no_grad, hint="no_grad"),
    Wrong("logit_difference_fn", ld_detached_input, hint="detach the embeddings"),
    Wrong("logit_difference_fn", Fresh(_ld_computed_once, "ld_computed_once"), hint=EARLIER),
    Wrong("logit_difference_fn", ld_llama_paths, hint="AttributeError", new=True),
    Wrong("logit_difference_fn", Fresh(_ld_globals, "ld_globals"), hint="made LAST", new=True),
    Wrong("logit_difference_fn", ld_first_row, hint="first row's", new=True),
    Wrong("logit_difference_fn", ld_mean_over_positions, hint="mean over positions", new=True),
    # 1.13 deletion curve
    Correct("deletion_curve", deletion_loop, "a loop"),
    Correct("deletion_curve", deletion_masks64, "cumulative masks, float64"),
    Correct("deletion_curve", deletion_incremental, "one more replaced per row"),
    Wrong("deletion_curve", deletion_deleted, hint="You deleted"),
    Wrong(
        "deletion_curve",
        _deletion(lambda o: [o[:k] for k in range(1, len(o) + 2)]),
        hint="original score",
    ),
    Wrong("deletion_curve", _deletion(lambda o: [[]] + [[p] for p in o]), hint="cumulatively"),
    Wrong(
        "deletion_curve",
        _deletion(lambda o: [o[::-1][:k] for k in range(len(o) + 1)]),
        hint="from its start",
    ),
    Wrong("deletion_curve", deletion_additive, hint="not additive"),
    Wrong(
        "deletion_curve",
        _deletion(lambda o: [sorted(o)[:k] for k in range(len(o) + 1)]),
        hint="do not sort",
    ),
    Wrong("deletion_curve", deletion_in_place, hint="changed its input"),
    Wrong(
        "deletion_curve",
        _deletion(lambda o: [o[:k] for k in range(len(o) + 1)], _by_value),
        hint="every occurrence",
        new=True,
    ),
    Wrong("deletion_curve", deletion_drops, hint="not their drops", new=True),
    Wrong(
        "deletion_curve",
        memo(deletion_loop, lambda s, ids, o, r: len(o), "deletion_memo_on_length"),
        hint=EARLIER,
        new=True,
    ),
    # 1.14 insertion curve
    Correct("insertion_curve", insertion_loop, "a loop"),
    Correct("insertion_curve", insertion_put_back, "put the tokens back one by one"),
    Correct("insertion_curve", insertion_reversed_deletion, "a deletion curve, reversed twice"),
    Wrong(
        "insertion_curve",
        _insertion(lambda o, n: [o[:k] for k in range(len(o) + 1)]),
        hint="deletion curve",
    ),
    Wrong(
        "insertion_curve",
        _insertion(lambda o, n: [o[:k] for k in range(len(o) + 1)][::-1]),
        hint="LAST tokens",
    ),
    Wrong(
        "insertion_curve",
        _insertion(lambda o, n: [o[k + 1 :] for k in range(len(o) + 1)]),
        hint="Off by one",
    ),
    Wrong(
        "insertion_curve",
        _insertion(
            lambda o, n: [[p for p in range(n) if p not in o[:k]] for k in range(len(o) + 1)]
        ),
        hint="only the positions",
    ),
    Wrong("insertion_curve", insertion_additive, hint="not additive"),
    Wrong("insertion_curve", insertion_in_place, hint="changed its input"),
    Wrong(
        "insertion_curve",
        _insertion(lambda o, n: [sorted(o)[k:] for k in range(len(o) + 1)]),
        hint="do not sort",
        new=True,
    ),
    Wrong(
        "insertion_curve",
        _insertion(lambda o, n: [o[k:] for k in range(len(o) + 1)], _by_value),
        hint="every occurrence",
        new=True,
    ),
    Wrong(
        "insertion_curve",
        memo(insertion_loop, lambda s, ids, o, r: len(o), "insertion_memo_on_length"),
        hint=EARLIER,
        new=True,
    ),
    # 1.15 Spearman
    Correct("spearman", spearman_d2, "1 - 6 sum d^2 / n(n^2 - 1)"),
    Correct("spearman", spearman_corrcoef, "torch.corrcoef of the ranks"),
    Correct("spearman", spearman_python, "plain Python, ranks from 1"),
    Correct("spearman", spearman_numpy, "numpy, returns numpy.float64"),
    Wrong("spearman", spearman_pearson, hint="VALUES"),
    Wrong("spearman", spearman_argsort_once, hint="apply argsort twice"),
    Wrong("spearman", spearman_abs, hint="Keep the sign"),
    Wrong("spearman", spearman_ranks_a_only, hint="Rank BOTH"),
    Wrong("spearman", spearman_ranks_b_only, hint="Rank BOTH"),
    Wrong("spearman", spearman_opposite, hint="same direction"),
    Wrong("spearman", spearman_sorted_values, hint="Do not sort"),
    Wrong("spearman", spearman_n_n_minus_1, hint="n (n - 1)", new=True),
    Wrong(
        "spearman",
        memo(spearman_d2, lambda a, b: len(a), "spearman_memo_on_length"),
        hint=EARLIER,
        new=True,
    ),
    Wrong("spearman", spearman_kendall, hint="Pearson correlation of the ranks", new=True),
    # 1.16 randomise weights
    Correct("randomize_weights_", randomize_normal_, "normal_ with a generator"),
    Correct("randomize_weights_", randomize_state_dict, "through the state_dict"),
    Correct("randomize_weights_", randomize_float64, "float64 draws"),
    Wrong("randomize_weights_", randomize_zeros, hint="own mean"),
    Wrong("randomize_weights_", randomize_standard_normal, hint="standard normal"),
    Wrong("randomize_weights_", randomize_global_rng, hint="torch.Generator"),
    Wrong("randomize_weights_", randomize_copy, hint="No parameter changed"),
    Wrong("randomize_weights_", randomize_weights_only, hint="did not change"),
    Wrong("randomize_weights_", randomize_skips_frozen, hint="if p.requires_grad"),
    Wrong("randomize_weights_", randomize_reseeded, hint="reseeding"),
    Wrong("randomize_weights_", randomize_uniform, hint="uniform"),
    Wrong("randomize_weights_", randomize_shuffle, hint="another order"),
    Wrong("randomize_weights_", randomize_module_stats, hint="THIS parameter"),
    Wrong("randomize_weights_", randomize_one_percent_noise, hint="do not add noise", new=True),
    Wrong("randomize_weights_", randomize_per_row, hint="not one per row", new=True),
    Wrong("randomize_weights_", randomize_linear_only, hint="did not change", new=True),
    Wrong("randomize_weights_", randomize_default_one, hint="default seed=0", new=True),
]

CORRECT = [c for c in CASES if isinstance(c, Correct)]
WRONG = [c for c in CASES if isinstance(c, Wrong)]


# ----- the tests ----------------------------------------------------------------------------------
def test_every_exercise_has_its_cases() -> None:
    """At least 2 correct alternatives, 6 wrong implementations and 3 wrong ones of new kinds."""
    names = list(H.exercises)
    assert set(names) == {c.exercise for c in CASES}
    for name, (correct, wrong, new) in table_counts(CASES, names).items():
        assert correct >= 2 and wrong >= 6 and new >= 3, (name, correct, wrong, new)


def test_the_lab_registers_every_exercise_in_notebook_order() -> None:
    numbers = [check.number for check in H.exercises.values()]
    assert numbers == [f"1.{i}" for i in range(1, 17)]
    for check in H.exercises.values():
        assert callable(H.solution[check.name]), check.name
        assert getattr(H.module, check.__name__) is check
    assert H.module.check_randomize_weights is H.exercises["randomize_weights_"]  # the notebook's
    assert set(H.module.__all__) >= {"Results", "skip_if_unattempted", "EXERCISES", "LAB"}


@pytest.mark.parametrize("name", list(H.exercises))
def test_the_solution_passes_in_the_notebook(name: str) -> None:
    result = H.notebook(name, H.solution[name])
    assert result.passed and result.score == result.max_score, result.report()
    assert result.max_score == H.check(name).points == sum(p.points for p in result.parts)


@pytest.mark.parametrize("case", CORRECT, ids=lambda c: c.id)
def test_a_correct_implementation_passes(case: Correct) -> None:
    H.assert_passes(case, H.variants(2))


@pytest.mark.parametrize("case", WRONG, ids=lambda c: c.id)
def test_a_wrong_implementation_fails_with_its_hint(case: Wrong) -> None:
    H.assert_fails(case, H.variants(1))


@pytest.fixture(scope="module")
def stubs() -> dict:
    path = next((ROOT / "labs").glob("01_*.ipynb"))
    return notebook_definitions(path, module_name="lab:01")


@pytest.mark.parametrize("name", list(H.exercises))
def test_the_stub_is_not_attempted(name: str, stubs: dict) -> None:
    for result in (H.notebook(name, stubs[name]), H.hidden(name, stubs[name], H.variants(1)[0])):
        assert not result.attempted and not result.passed and result.score == 0, result.report()


def _all_pass(name: str, variants: list[int]) -> None:
    for label, fn in [("solution", H.solution[name])] + [
        (c.id, c.fn) for c in CORRECT if c.exercise == name
    ]:
        for variant in variants:
            result = H.hidden(name, fn, variant)
            assert result.passed, f"{label} on hidden variant {variant}:\n{result.report()}"


def test_the_solution_and_every_correct_answer_pass_a_few_hidden_variants() -> None:
    for name in H.exercises:
        _all_pass(name, H.variants(5)[2:])  # the first two: test_a_correct_implementation_passes


@pytest.mark.variants
@pytest.mark.parametrize("name", list(H.exercises))
def test_the_solution_and_every_correct_answer_pass_200_hidden_variants(name, request) -> None:
    """About 18 minutes on one core: run with ``-m variants`` (make test-variants)."""
    if "variants" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("200 hidden variants per check: run with -m variants")
    _all_pass(name, H.variants(200))


class WorkerLikeRunner:
    """Sends each call the way the grader does (pickled by the grader's Outbox, which refuses
    code; the reply as plain data; a module changed in place brought back), but runs it here.

    ``strict=False`` first takes transformers' output-capturing hooks off the models it sends:
    in this process, correct alternatives that ask for hidden states leave them on the shared
    tiny models, which a grader never does (the student's code runs in the worker)."""

    def __init__(self, strict: bool = True) -> None:
        self.outbox = Outbox()
        self.functions: dict = {}
        self.strict = strict

    def call(self, t, fn, args, kwargs):
        if isinstance(fn, plaindata.FunctionHandle):
            fn = self.functions[fn.number]
        with ExitStack() as stack:
            if not self.strict:
                stack.enter_context(_without_library_hooks([*args, *kwargs.values()]))
            sent_args, sent_kwargs = pickle.loads(self.outbox.dumps((args, kwargs)))
        value = t._call_here(fn, tuple(sent_args), dict(sent_kwargs))
        changed = {}
        for i, (mine, theirs) in enumerate(zip(args, sent_args, strict=True)):
            if isinstance(mine, torch.nn.Module):
                changed[i] = theirs.state_dict()
        RemoteRunner._bring_back(args, changed)
        return plaindata.decode(plaindata.encode(value, functions=self.functions))


@contextmanager
def _without_library_hooks(objects):
    taken = []
    for obj in objects:
        net = getattr(obj, "model", obj)
        if isinstance(net, torch.nn.Module):
            for module in net.modules():
                for kind in ("_forward_hooks", "_forward_pre_hooks"):
                    hooks = getattr(module, kind)
                    for key in [k for k, h in hooks.items() if _is_library_hook(h)]:
                        taken.append((hooks, key, hooks.pop(key)))
    try:
        yield
    finally:
        for hooks, key, hook in taken:
            hooks[key] = hook


@pytest.mark.parametrize("name", list(H.exercises))
def test_every_check_sends_only_data_and_reads_plain_replies(name: str) -> None:
    for variant in (0, H.variants(1)[0]):
        result = run_check(
            H.check(name),
            H.solution[name],
            variant=variant,
            runner=WorkerLikeRunner(strict=False),
            answers=H.answers,
        )
        assert result.passed, result.report() + "\n" + "\n".join(p.message for p in result.parts)


STRICT = """
from labkit.checks import core
from tests.test_checks_lab01 import H, WorkerLikeRunner
from labkit.checks.core import run_check
from labkit.checks.guards import _is_library_hook

core._EAGER[0] = True  # every mistake is worked out, as when recording
for variant in (0, *H.variants(2)):
    for name, check in H.exercises.items():
        result = run_check(check, H.solution[name], variant=variant, runner=WorkerLikeRunner(),
                           answers=H.answers)
        assert result.passed, (variant, result.report(), [p.message for p in result.parts])
print("ok")
"""


def test_the_grader_side_leaves_every_model_it_sends_sendable() -> None:
    """References, mistakes and problem builders run in the grader's process: none of them may
    leave on a model it sends what cannot be pickled (transformers' output-capturing hooks)."""
    done = subprocess.run(
        [sys.executable, "-c", STRICT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_every_check_in_the_notebook_is_fast() -> None:
    """With the recorded answers a check only runs the student's function (here the solution's)."""
    for name in H.exercises:
        H.notebook(name, H.solution[name])  # warm: tiny models are built once per kernel
        started = time.perf_counter()
        H.notebook(name, H.solution[name])
        assert time.perf_counter() - started < 1.0, name


def test_a_failure_names_what_was_tested_and_the_mistake() -> None:
    result = H.notebook("input_x_gradient", ixg_sign)
    text = result.report()
    assert "Tested:" in text and "Largest mismatch" in text and "Hint: Wrong sign" in text
    assert "def " not in text and "BEGIN SOLUTION" not in text
