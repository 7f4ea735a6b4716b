"""Lab 03's checks pass the solution and other correct implementations, and fail the stub and
plausible mistakes with a message that names the mistake.

One table, ``CASES``: every correct alternative (loops, batches, float64, nnsight, numpy and
scipy conventions) and every wrong implementation (with the words its hint must contain) lives
here, never in the notebook or in labkit. ``tests/support/checks.py`` runs each entry the two
ways a check runs: in the notebook (recorded answers) and on hidden variants (the references
compute the answers). ``new=True`` marks mistakes of kinds no issue listed: state kept between
calls, family-specific module paths, ignored inputs and arguments, sizes past 9, defaults.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from torch import Tensor

import labkit
from labkit.checks.lab03 import SITES, problems
from labkit.hooks import capture, hooked, patch
from labkit.notebooks import read_nbformat
from tests.support.checks import Correct, LabHarness, Wrong, stub, table_counts

H = LabHarness("03")
ROOT = Path(__file__).resolve().parents[1]


def sol(name: str) -> Callable:
    """The solution notebook's function ``name`` (loaded once, on first use)."""
    return H.solution[name]


def float64(lm: labkit.LabModel) -> labkit.LabModel:
    """A float64 copy of the model (the original is left alone)."""
    return labkit.LabModel(copy.deepcopy(lm.model).double(), lm.tokenizer, lm.name)


def last_logits(lm, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return lm.model(tokens).logits[:, -1]


def acts_of(lm, tokens: Tensor, site: str) -> Tensor:
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    return cache.stack(site)


def key_of(*tensors: Tensor) -> tuple:
    """A cache key made of the inputs' contents (a memo that an answer keeps between calls)."""
    return tuple(x.detach().cpu().numpy().tobytes() for x in tensors)


def envoy(root, path: str):
    """The module (or nnsight envoy) at a dotted attribute path."""
    for name in path.split("."):
        root = getattr(root, name)
    return root


def memo_ignoring_metric(exercise: str, name: str) -> Callable:
    """A wrong answer named ``name`` that keeps the solution's results between calls, keyed on
    every input but the model and the metric: a later call with another metric on the same
    prompts gets the earlier metric's answer."""
    memo: dict = {}

    def answer(*args, **kwargs):
        bound = inspect.signature(sol(exercise)).bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple(
            value.detach().cpu().numpy().tobytes() if isinstance(value, Tensor) else repr(value)
            for arg, value in bound.arguments.items()
            if arg not in ("lm", "metric")
        )
        if key not in memo:
            memo[key] = sol(exercise)(*args, **kwargs)
        return memo[key]

    answer.__name__ = answer.__qualname__ = name
    return answer


# ----- 3.1 normalised_metric ---------------------------------------------------------------------
def _diffs(logits: Tensor, targets, foils) -> Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]


def metric_float64(lm, clean, corrupted, targets, foils):
    high = _diffs(last_logits(lm, clean).double(), targets, foils).mean()
    low = _diffs(last_logits(lm, corrupted).double(), targets, foils).mean()
    return lambda logits: (_diffs(logits.double(), targets, foils).mean() - low) / (high - low)


def metric_looped(lm, clean, corrupted, targets, foils):
    targets, foils = list(map(int, targets)), list(map(int, foils))

    def mean_diff(logits):
        total = sum(logits[i, targets[i]] - logits[i, foils[i]] for i in range(len(targets)))
        return total / len(targets)

    high, low = mean_diff(last_logits(lm, clean)), mean_diff(last_logits(lm, corrupted))
    return lambda logits: (mean_diff(logits) - low) / (high - low)


def metric_log_probs(lm, clean, corrupted, targets, foils):
    """Log-probabilities differ from logits by a constant per row: the same difference."""

    def diff(logits):
        return _diffs(logits.log_softmax(-1), targets, foils).sum()

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    return lambda logits: (diff(logits) - low) / (high - low)


def metric_raw(lm, clean, corrupted, targets, foils):
    return lambda logits: _diffs(logits, targets, foils).mean()


def metric_flipped(lm, clean, corrupted, targets, foils):
    good = sol("normalised_metric")(lm, clean, corrupted, targets, foils)
    return lambda logits: 1 - good(logits)


def metric_per_prompt(lm, clean, corrupted, targets, foils):
    high = _diffs(last_logits(lm, clean), targets, foils)
    low = _diffs(last_logits(lm, corrupted), targets, foils)
    return lambda logits: ((_diffs(logits, targets, foils) - low) / (high - low)).mean()


def metric_probs(lm, clean, corrupted, targets, foils):
    def diff(logits):
        return _diffs(logits.softmax(-1), targets, foils).mean()

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    return lambda logits: (diff(logits) - low) / (high - low)


def metric_first_ids(lm, clean, corrupted, targets, foils):
    batch = clean.shape[0]
    first_t, first_f = [int(targets[0])] * batch, [int(foils[0])] * batch
    return sol("normalised_metric")(lm, clean, corrupted, first_t, first_f)


def metric_every_pair(lm, clean, corrupted, targets, foils):
    def diff(logits):  # (batch, batch): every row with every target
        return (logits[:, torch.as_tensor(targets)] - logits[:, torch.as_tensor(foils)]).mean()

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    return lambda logits: (diff(logits) - low) / (high - low)


def metric_float(lm, clean, corrupted, targets, foils):
    good = sol("normalised_metric")(lm, clean, corrupted, targets, foils)
    return lambda logits: good(logits).item()


def metric_returns_value(lm, clean, corrupted, targets, foils):
    good = sol("normalised_metric")(lm, clean, corrupted, targets, foils)
    return good(last_logits(lm, clean))


def metric_clean_only(lm, clean, corrupted, targets, foils):
    high = _diffs(last_logits(lm, clean), targets, foils).mean()
    return lambda logits: _diffs(logits, targets, foils).mean() / high


_BASELINES: dict = {}


def metric_globals(lm, clean, corrupted, targets, foils):
    """Keeps the baselines in a global that the next call overwrites."""
    _BASELINES["high"] = _diffs(last_logits(lm, clean), targets, foils).mean()
    _BASELINES["low"] = _diffs(last_logits(lm, corrupted), targets, foils).mean()

    def metric(logits):
        low = _BASELINES["low"]
        return (_diffs(logits, targets, foils).mean() - low) / (_BASELINES["high"] - low)

    return metric


_METRICS: dict = {}


def metric_memo_prompts(lm, clean, corrupted, targets, foils):
    """Remembers the metric of each pair of prompts, whatever the targets and foils."""
    key = key_of(clean, corrupted)
    if key not in _METRICS:
        _METRICS[key] = sol("normalised_metric")(lm, clean, corrupted, targets, foils)
    return _METRICS[key]


def metric_argmax(lm, clean, corrupted, targets, foils):
    def diff(logits):
        rows = torch.arange(logits.shape[0])
        return (logits.max(-1).values - logits[rows, torch.as_tensor(foils)]).mean()

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    return lambda logits: (diff(logits) - low) / (high - low)


def metric_first_row(lm, clean, corrupted, targets, foils):
    """Written for a batch of one: reads row 0 only."""
    t, f = int(targets[0]), int(foils[0])
    high = last_logits(lm, clean)[0, t] - last_logits(lm, clean)[0, f]
    low = last_logits(lm, corrupted)[0, t] - last_logits(lm, corrupted)[0, f]
    return lambda logits: (logits[0, t] - logits[0, f] - low) / (high - low)


def metric_first_position(lm, clean, corrupted, targets, foils):
    with torch.no_grad():
        high = _diffs(lm.model(clean).logits[:, 0], targets, foils).mean()
        low = _diffs(lm.model(corrupted).logits[:, 0], targets, foils).mean()
    return lambda logits: (_diffs(logits, targets, foils).mean() - low) / (high - low)


# ----- 3.2 patch_grid ----------------------------------------------------------------------------
def grid_loop(lm, clean, corrupted, metric, site="resid_pre", cells=None):
    """One forward pass per cell, with labkit's patch (``cells(p)``: the positions patched)."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        for p in range(clean.shape[1]):
            positions = [p] if cells is None else cells(p)
            with torch.no_grad(), patch(lm, site, layer, cache[site, layer], positions=positions):
                grid[layer, p] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def grid_float64(lm, clean, corrupted, metric, site="resid_pre"):
    return sol("patch_grid")(float64(lm), clean, corrupted, metric, site).double()


def grid_positions_batched(lm, clean, corrupted, metric, site="resid_pre"):
    """One forward pass per layer: row block p of a big batch patches position p."""
    batch, n_pos = clean.shape
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        source = cache[site, layer]

        def put(act, source=source):
            act = act.clone().view(n_pos, batch, *act.shape[1:])
            for p in range(n_pos):
                act[p, :, p] = source[:, p]
            return act.view(n_pos * batch, *act.shape[2:])

        with torch.no_grad(), hooked(lm, site, layer, put):
            logits = lm.model(corrupted.repeat(n_pos, 1)).logits[:, -1].view(n_pos, batch, -1)
        grid[layer] = torch.stack([metric(rows) for rows in logits])
    return grid


def grid_noising(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, corrupted, clean, metric, site)


def grid_resid_post(lm, clean, corrupted, metric, site="resid_pre"):
    return sol("patch_grid")(
        lm, clean, corrupted, metric, "resid_post" if site == "resid_pre" else site
    )


def grid_always_resid_pre(lm, clean, corrupted, metric, site="resid_pre"):
    return sol("patch_grid")(lm, clean, corrupted, metric, "resid_pre")


def grid_leaks_backward(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, clean, corrupted, metric, site, cells=lambda p: list(range(p + 1)))


def grid_all_positions(lm, clean, corrupted, metric, site="resid_pre"):
    n_pos = clean.shape[1]
    return grid_loop(lm, clean, corrupted, metric, site, cells=lambda p: list(range(n_pos)))


def grid_first_prompt(lm, clean, corrupted, metric, site="resid_pre"):
    mixed = corrupted.clone()
    mixed[0] = clean[0]
    return sol("patch_grid")(lm, mixed, corrupted, metric, site)


def grid_shifted_layer(lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol("patch_grid")(lm, clean, corrupted, metric, site)
    return torch.cat([grid[1:], grid[-1:]])


def grid_change(lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol("patch_grid")(lm, clean, corrupted, metric, site)
    return grid - metric(last_logits(lm, corrupted))


def grid_default_attn_out(lm, clean, corrupted, metric, site="attn_out"):
    return sol("patch_grid")(lm, clean, corrupted, metric, site)


grid_memo_ignores_metric = memo_ignoring_metric("patch_grid", "grid_memo_ignores_metric")


def grid_first_change_of_row_0(lm, clean, corrupted, metric, site="resid_pre"):
    """Skips the positions before the first change of the *first* prompt only."""
    first = int((clean[0] != corrupted[0]).nonzero()[0])
    grid = grid_loop(lm, clean, corrupted, metric, site)
    grid[:, :first] = metric(last_logits(lm, corrupted))
    return grid


def grid_ten_layers(lm, clean, corrupted, metric, site="resid_pre"):
    """Batches layers in groups of 10 and forgets the last, incomplete group."""
    grid = sol("patch_grid")(lm, clean, corrupted, metric, site)
    grid[10:] = metric(last_logits(lm, corrupted))
    return grid


# ----- 3.3 patch_heads ---------------------------------------------------------------------------
def heads_loop(lm, clean, corrupted, metric, heads_of=None, positions=None):
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):
            heads = [head] if heads_of is None else heads_of(head)
            value = cache["head_out", layer]
            with (
                torch.no_grad(),
                patch(lm, "head_out", layer, value, heads=heads, positions=positions),
            ):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_o_proj_hook(lm, clean, corrupted, metric):
    """Patches the flat input of W_O by hand, with a forward pre-hook (no labkit sites)."""
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.float64)
    d = lm.d_head
    for layer in range(lm.n_layers):
        source = cache["head_out", layer].flatten(-2)
        for head in range(lm.n_heads):

            def pre(mod, args, head=head, source=source):
                x = args[0].clone()
                x[..., head * d : (head + 1) * d] = source[..., head * d : (head + 1) * d]
                return (x,)

            handle = lm.attn_out_proj(layer).register_forward_pre_hook(pre)
            try:
                with torch.no_grad():
                    grid[layer, head] = float(metric(lm.model(corrupted).logits[:, -1]))
            finally:
                handle.remove()
    return grid


def heads_float64(lm, clean, corrupted, metric):
    return sol("patch_heads")(float64(lm), clean, corrupted, metric)


def heads_kv(lm, clean, corrupted, metric):
    kv = problems.kv_heads(lm)
    return heads_loop(lm, clean, corrupted, metric)[:, :kv]


def _heads_split(lm, clean, corrupted, metric, site):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    d = lm.d_model // lm.n_heads
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):

            def put(act, layer=layer, head=head):
                act = act.clone()
                act[..., head * d : (head + 1) * d] = cache[site, layer][
                    ..., head * d : (head + 1) * d
                ]
                return act

            with torch.no_grad(), patch(lm, site, layer, put):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_resid_split(lm, clean, corrupted, metric):
    return _heads_split(lm, clean, corrupted, metric, "resid_pre")


def heads_attn_out_split(lm, clean, corrupted, metric):
    return _heads_split(lm, clean, corrupted, metric, "attn_out")


def heads_last_position(lm, clean, corrupted, metric):
    return heads_loop(lm, clean, corrupted, metric, positions=[clean.shape[1] - 1])


def heads_noising(lm, clean, corrupted, metric):
    return sol("patch_heads")(lm, corrupted, clean, metric)


def heads_reversed(lm, clean, corrupted, metric):
    return sol("patch_heads")(lm, clean, corrupted, metric).flip(1)


def heads_changed_positions(lm, clean, corrupted, metric):
    changed = (clean != corrupted).any(0).nonzero().flatten().tolist()
    return heads_loop(lm, clean, corrupted, metric, positions=changed)


def heads_kv_group(lm, clean, corrupted, metric):
    size = lm.n_heads // problems.kv_heads(lm)
    return heads_loop(
        lm,
        clean,
        corrupted,
        metric,
        heads_of=lambda h: list(range(h // size * size, (h // size + 1) * size)),
    )


heads_memo_ignores_metric = memo_ignoring_metric("patch_heads", "heads_memo_ignores_metric")


def heads_llama_paths(lm, clean, corrupted, metric):
    """Written for Llama's module names: model.model.layers[L].self_attn.o_proj."""
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    d = lm.d_head
    for layer in range(lm.n_layers):
        source = cache["head_out", layer].flatten(-2)
        o_proj = lm.model.model.layers[layer].self_attn.o_proj
        for head in range(lm.n_heads):

            def pre(mod, args, head=head, source=source):
                x = args[0].clone()
                x[..., head * d : (head + 1) * d] = source[..., head * d : (head + 1) * d]
                return (x,)

            handle = o_proj.register_forward_pre_hook(pre)
            try:
                with torch.no_grad():
                    grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
            finally:
                handle.remove()
    return grid


# ----- 3.4 activations_and_grads -----------------------------------------------------------------
def grads_backward(lm, tokens, metric, site):
    """.backward() with the captured activations' .grad (retained by capture)."""
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        layers = [None] * lm.n_layers
        value = metric(lm.model(inputs_embeds=embeds).logits[:, -1])
        for layer in range(lm.n_layers):
            layers[layer] = cache[site, layer]
            layers[layer].retain_grad()
        value.backward()
    return torch.stack(layers).detach(), torch.stack([x.grad for x in layers])


def grads_one_layer_at_a_time(lm, tokens, metric, site):
    """One forward and backward pass per layer, with that layer's activation made a leaf."""
    acts, grads = [], []
    for layer in range(lm.n_layers):
        leaf = {}

        def make_leaf(act, leaf=leaf):
            leaf["x"] = act.detach().requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad(), hooked(lm, site, layer, make_leaf):
            value = metric(lm.model(tokens).logits[:, -1])
            grads.append(torch.autograd.grad(value, leaf["x"])[0])
        acts.append(leaf["x"].detach())
    return torch.stack(acts), torch.stack(grads)


def grads_nnsight(lm, tokens, metric, site):
    """nnsight's trace: save each layer's activation, then its .grad in a backward session
    (gradients arrive last layer first). The lists live outside the trace block."""
    from nnsight import TransformersModel

    model = TransformersModel(lm.model, tokenizer=lm.tokenizer)
    embeds = lm.embed(tokens).detach().requires_grad_(True)  # frozen weights: a leaf needs grad
    live, acts, grads = [], [], []
    with model.trace(inputs_embeds=embeds):
        blocks = envoy(model, lm.spec.blocks)
        for layer in range(lm.n_layers):
            block = blocks[layer]
            if site == "resid_pre":
                x = block.input
            elif site == "attn_out":
                x = envoy(block, lm.spec.attn).output[0]
            elif site == "mlp_out":
                x = envoy(block, lm.spec.mlp).output
            else:  # head_out: the input of W_O
                x = envoy(block, lm.spec.attn_out_proj).input
            live.append(x)
            acts.append(x.save())
        value = metric(model.output.logits[:, -1])
        with value.backward():
            for x in reversed(live):
                grads.append(x.grad.save())
    acts = torch.stack([a.detach() for a in acts])
    grads = torch.stack(grads[::-1])
    if site == "head_out":
        acts = acts.unflatten(-1, (lm.n_heads, lm.d_head))
        grads = grads.unflatten(-1, (lm.n_heads, lm.d_head))
    return acts, grads


_PILED: dict = {}


def grads_accumulate(lm, tokens, metric, site):
    """Keeps each input's gradient buffer between calls, and adds to it."""
    acts, grads = grads_backward(lm, tokens, metric, site)
    key = (*key_of(tokens, metric.weights), site)
    _PILED[key] = _PILED.get(key, 0) + grads
    return acts, _PILED[key]


def grads_negated(lm, tokens, metric, site):
    acts, grads = grads_backward(lm, tokens, metric, site)
    return acts, -grads


def grads_of_logits(lm, tokens, metric, site):
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        value = lm.model(inputs_embeds=embeds).logits[:, -1].sum()
        layers = [cache[site, layer] for layer in range(lm.n_layers)]
        grads = torch.autograd.grad(value, layers)
    return torch.stack(layers).detach(), torch.stack(grads)


def grads_first_position(lm, tokens, metric, site):
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        value = metric(lm.model(inputs_embeds=embeds).logits[:, 0])
        layers = [cache[site, layer] for layer in range(lm.n_layers)]
        grads = torch.autograd.grad(value, layers)
    return torch.stack(layers).detach(), torch.stack(grads)


def grads_resid_post(lm, tokens, metric, site):
    return sol("activations_and_grads")(
        lm, tokens, metric, "resid_post" if site == "resid_pre" else site
    )


def grads_always_resid_pre(lm, tokens, metric, site):
    return sol("activations_and_grads")(lm, tokens, metric, "resid_pre")


def grads_batch_sum(lm, tokens, metric, site):
    acts, grads = sol("activations_and_grads")(lm, tokens, metric, site)
    return acts, grads.sum(1, keepdim=True).expand_as(grads).clone()


grads_memo_ignores_metric = memo_ignoring_metric(
    "activations_and_grads", "grads_memo_ignores_metric"
)


def grads_last_layer(lm, tokens, metric, site):
    acts, grads = sol("activations_and_grads")(lm, tokens, metric, site)
    return acts[-1], grads[-1]


def grads_heads_flat(lm, tokens, metric, site):
    """Returns head_out as the flat input of W_O, (..., n_heads * d_head)."""
    acts, grads = sol("activations_and_grads")(lm, tokens, metric, site)
    if site == "head_out":
        return acts.flatten(-2), grads.flatten(-2)
    return acts, grads


def grads_gpt2_paths(lm, tokens, metric, site):
    """Written for GPT-2's module names: model.transformer.h[L]."""
    blocks = lm.model.transformer.h
    return sol("activations_and_grads")(lm, tokens, metric, site) if len(blocks) else None


# ----- 3.5 attribution_patching ------------------------------------------------------------------
def attr_float64(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return ((acts_of(lm, clean, site).double() - acts.double()) * grads.double()).sum((1, 3))


def attr_einsum(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = sol("activations_and_grads")(lm, corrupted, metric, site)
    return torch.einsum("lbpd,lbpd->lp", acts_of(lm, clean, site) - acts, grads)


def attr_nnsight(lm, clean, corrupted, metric, site="resid_pre"):
    clean_acts, _ = grads_nnsight(lm, clean, metric, site)
    acts, grads = grads_nnsight(lm, corrupted, metric, site)
    return ((clean_acts - acts) * grads).sum(-1).sum(1)


def _attr(lm, clean, corrupted, metric, site, grad_run="corrupted", sign=1.0):
    _, grads = grads_backward(lm, clean if grad_run == "clean" else corrupted, metric, site)
    delta = acts_of(lm, clean, site) - acts_of(lm, corrupted, site)
    return sign * (delta * grads).sum((1, 3))


def attr_grad_at_clean(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, "clean")


def attr_sign(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, sign=-1.0)


def attr_noising(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, "clean", sign=-1.0)


def attr_gradient_only(lm, clean, corrupted, metric, site="resid_pre"):
    _, grads = grads_backward(lm, corrupted, metric, site)
    return grads.sum((1, 3))


def attr_input_x_gradient(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return (acts * grads).sum((1, 3))


def attr_batch_mean(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return ((acts_of(lm, clean, site) - acts) * grads).sum(-1).mean(1)


def attr_always_resid_pre(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, "resid_pre")


def attr_abs(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site).abs()


def attr_accumulating(lm, clean, corrupted, metric, site="resid_pre"):
    """Built on an activations_and_grads that lets gradients pile up between calls."""
    acts, grads = grads_accumulate(lm, corrupted, metric, site)
    return ((acts_of(lm, clean, site) - acts) * grads).sum(-1).sum(1)


attr_memo_ignores_metric = memo_ignoring_metric("attribution_patching", "attr_memo_ignores_metric")


def attr_default_mlp_out(lm, clean, corrupted, metric, site="mlp_out"):
    return sol("attribution_patching")(lm, clean, corrupted, metric, site)


def attr_all_positions_at_once(lm, clean, corrupted, metric, site="resid_pre"):
    """The estimate of patching a whole layer, put in every position of the row."""
    estimate = sol("attribution_patching")(lm, clean, corrupted, metric, site)
    return estimate.sum(1, keepdim=True).expand_as(estimate).clone()


# ----- 3.6 head_attribution ----------------------------------------------------------------------
def head_attr_float64(lm, clean, corrupted, metric):
    acts, grads = grads_backward(lm, corrupted, metric, "head_out")
    per = (acts_of(lm, clean, "head_out").double() - acts.double()) * grads.double()
    return per.sum((1, 4)).transpose(1, 2)


def head_attr_from_flat(lm, clean, corrupted, metric):
    """Gradients of the flat o_proj input, split into heads by hand."""
    acts, grads = sol("activations_and_grads")(lm, corrupted, metric, "head_out")
    delta = (acts_of(lm, clean, "head_out") - acts).flatten(-2)
    flat = (delta * grads.flatten(-2)).view(*delta.shape[:-1], lm.n_heads, lm.d_head)
    return flat.sum(-1).sum(1).permute(0, 2, 1)


def head_attr_nnsight(lm, clean, corrupted, metric):
    clean_acts, _ = grads_nnsight(lm, clean, metric, "head_out")
    acts, grads = grads_nnsight(lm, corrupted, metric, "head_out")
    return torch.einsum("lbphd,lbphd->lhp", clean_acts - acts, grads)


def head_attr_kv(lm, clean, corrupted, metric):
    kv = problems.kv_heads(lm)
    per = sol("head_attribution")(lm, clean, corrupted, metric)
    return per.view(lm.n_layers, kv, -1, per.shape[-1]).sum(2)


def _split_heads(lm, clean, corrupted, metric, site):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    per = ((acts_of(lm, clean, site) - acts) * grads).sum(1)  # (L, pos, d_model)
    return per.view(lm.n_layers, clean.shape[1], lm.n_heads, -1).sum(-1).transpose(1, 2)


def head_attr_resid(lm, clean, corrupted, metric):
    return _split_heads(lm, clean, corrupted, metric, "resid_pre")


def head_attr_attn_out(lm, clean, corrupted, metric):
    return _split_heads(lm, clean, corrupted, metric, "attn_out")


def head_attr_sign(lm, clean, corrupted, metric):
    return -sol("head_attribution")(lm, clean, corrupted, metric)


def head_attr_grad_at_clean(lm, clean, corrupted, metric):
    _, grads = grads_backward(lm, clean, metric, "head_out")
    delta = acts_of(lm, clean, "head_out") - acts_of(lm, corrupted, "head_out")
    return (delta * grads).sum((1, 4)).transpose(1, 2)


def head_attr_reshaped(lm, clean, corrupted, metric):
    per = sol("head_attribution")(lm, clean, corrupted, metric)  # (L, H, pos)
    return per.transpose(1, 2).reshape(per.shape)


def head_attr_input_x_gradient(lm, clean, corrupted, metric):
    acts, grads = grads_backward(lm, corrupted, metric, "head_out")
    return (acts * grads).sum((1, 4)).transpose(1, 2)


def head_attr_accumulating(lm, clean, corrupted, metric):
    acts, grads = grads_accumulate(lm, corrupted, metric, "head_out")
    return ((acts_of(lm, clean, "head_out") - acts) * grads).sum((1, 4)).transpose(1, 2)


head_attr_memo_ignores_metric = memo_ignoring_metric(
    "head_attribution", "head_attr_memo_ignores_metric"
)


def head_attr_llama_paths(lm, clean, corrupted, metric):
    """Written for Llama's module names: model.model.layers[L].self_attn.o_proj."""
    layers = lm.model.model.layers
    return sol("head_attribution")(lm, clean, corrupted, metric) if len(layers) else None


# ----- 3.7 agreement -----------------------------------------------------------------------------
def agreement_numpy(estimate, exact, k=10):
    import numpy as np

    x, y = exact.flatten().numpy().astype(float), estimate.flatten().numpy().astype(float)
    rx, ry = x.argsort().argsort(), y.argsort().argsort()
    top = set(np.abs(x).argsort()[::-1][:k].tolist()) & set(np.abs(y).argsort()[::-1][:k].tolist())
    return {
        "pearson": np.corrcoef(x, y)[0, 1],
        "spearman": np.corrcoef(rx, ry)[0, 1],
        "slope": np.polyfit(x, y, 1)[0],
        "sign agreement": float((np.sign(x) == np.sign(y)).mean()),
        "top-k recall": len(top) / k,
    }


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks from 1, tied values sharing their mean rank: scipy.stats.rankdata's default
    ("average"), the textbook convention (scipy is not installed here)."""
    ranks = torch.empty(len(v), dtype=torch.float64)
    order = v.argsort()
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def agreement_average_ranks(estimate, exact, k=10):
    """Spearman from average ranks (scipy's convention), the slope as r * sd(y) / sd(x)."""
    import numpy as np

    x, y = exact.flatten().double(), estimate.flatten().double()
    r = float(np.corrcoef(x.numpy(), y.numpy())[0, 1])
    rho = float(np.corrcoef(_average_ranks(x).numpy(), _average_ranks(y).numpy())[0, 1])
    top_x = set(x.abs().topk(k).indices.tolist())
    top_y = set(y.abs().topk(k).indices.tolist())
    return {
        "pearson": r,
        "spearman": rho,
        "slope": r * float(y.std() / x.std()),
        "sign agreement": float(((x > 0) == (y > 0)).double().mean()),
        "top-k recall": len(top_x & top_y) / k,
    }


def agreement_sorted(estimate, exact, k=10):
    """Plain Python: ranks from sorted(), sums by hand."""
    x, y = exact.flatten().tolist(), estimate.flatten().tolist()
    n = len(x)

    def ranks(v):
        order = sorted(range(n), key=lambda i: v[i])
        out = [0] * n
        for rank, i in enumerate(order):
            out[i] = rank
        return out

    def pearson(a, b):
        ma, mb = sum(a) / n, sum(b) / n
        cov = sum((p - ma) * (q - mb) for p, q in zip(a, b, strict=True))
        va = sum((p - ma) ** 2 for p in a)
        vb = sum((q - mb) ** 2 for q in b)
        return cov / (va * vb) ** 0.5

    mx, my = sum(x) / n, sum(y) / n
    slope = sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True)) / sum(
        (p - mx) ** 2 for p in x
    )
    top_x = set(sorted(range(n), key=lambda i: -abs(x[i]))[:k])
    top_y = set(sorted(range(n), key=lambda i: -abs(y[i]))[:k])
    return {
        "pearson": pearson(x, y),
        "spearman": pearson(ranks(x), ranks(y)),
        "slope": slope,
        "sign agreement": sum((p > 0) == (q > 0) for p, q in zip(x, y, strict=True)) / n,
        "top-k recall": len(top_x & top_y) / k,
    }


def agreement_torch(estimate, exact, k=10):
    x, y = exact.flatten().double(), estimate.flatten().double()
    r = torch.corrcoef(torch.stack([x, y]))[0, 1]
    rank = torch.corrcoef(
        torch.stack([x.argsort().argsort().double(), y.argsort().argsort().double()])
    )[0, 1]
    slope = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution[0, 0]
    return {
        "pearson": r,
        "spearman": rank,
        "slope": slope,
        "sign agreement": (torch.sign(x) == torch.sign(y)).float().mean(),
        "top-k recall": torch.isin(x.abs().topk(k).indices, y.abs().topk(k).indices).float().mean(),
    }


def _agreement_with(**changes) -> Callable:
    """The solution with some numbers computed the wrong way: ``fn(x, y, k)``, x exact."""

    def fn(estimate, exact, k=10):
        out = dict(sol("agreement")(estimate, exact, k))
        x, y = exact.flatten().double(), estimate.flatten().double()
        for key, value in changes.items():
            out[key] = value(x, y, k)
        return out

    return fn


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _recall(x, y, k, signed_x=False, signed_y=False):
    top_x = set((x if signed_x else x.abs()).topk(k).indices.tolist())
    top_y = set((y if signed_y else y.abs()).topk(k).indices.tolist())
    return len(top_x & top_y) / k


def _ols(x, y):
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


agreement_slope_swapped = _agreement_with(slope=lambda x, y, k: _ols(y, x))
agreement_slope_origin = _agreement_with(slope=lambda x, y, k: float((x * y).sum() / (x * x).sum()))
agreement_spearman_values = _agreement_with(spearman=lambda x, y, k: _corr(x, y))
agreement_spearman_abs = _agreement_with(
    spearman=lambda x, y, k: _corr(
        x.abs().argsort().argsort().double(), y.abs().argsort().argsort().double()
    )
)
agreement_cosine = _agreement_with(
    pearson=lambda x, y, k: float((x * y).sum() / (x.norm() * y.norm()))
)
agreement_signed_topk = _agreement_with(
    **{"top-k recall": lambda x, y, k: _recall(x, y, k, True, True)}
)
agreement_signed_topk_exact = _agreement_with(
    **{"top-k recall": lambda x, y, k: _recall(x, y, k, signed_x=True)}
)
agreement_signed_topk_estimate = _agreement_with(
    **{"top-k recall": lambda x, y, k: _recall(x, y, k, signed_y=True)}
)
agreement_recall_count = _agreement_with(**{"top-k recall": lambda x, y, k: k * _recall(x, y, k)})
agreement_sign_count = _agreement_with(
    **{"sign agreement": lambda x, y, k: float((x.sign() == y.sign()).sum())}
)
agreement_sign_positive = _agreement_with(
    **{"sign agreement": lambda x, y, k: float((y > 0).double().mean())}
)
agreement_recall_k10 = _agreement_with(**{"top-k recall": lambda x, y, k: _recall(x, y, 10)})
agreement_recall_k5 = _agreement_with(**{"top-k recall": lambda x, y, k: _recall(x, y, 5) * 5 / k})


def agreement_no_slope(estimate, exact, k=10):
    out = dict(sol("agreement")(estimate, exact, k))
    del out["slope"]
    return out


_TABLES: dict = {}


def agreement_memo_ignores_k(estimate, exact, k=10):
    key = key_of(estimate, exact)
    if key not in _TABLES:
        _TABLES[key] = sol("agreement")(estimate, exact, k)
    return _TABLES[key]


def agreement_default_k5(estimate, exact, k=5):
    return sol("agreement")(estimate, exact, k)


for _name, _fn in list(globals().items()):  # name the wrong versions built by _agreement_with
    if _name.startswith("agreement_") and getattr(_fn, "__name__", "") == "fn":
        _fn.__name__ = _fn.__qualname__ = _name


# ----- 3.8 patches_to_find_top_k -----------------------------------------------------------------
def find_max_rank(estimate, exact, k=10):
    top = exact.flatten().abs().topk(k).indices
    rank = estimate.flatten().abs().argsort(descending=True).argsort()
    return int(rank[top].max()) + 1


def find_cumsum(estimate, exact, k=10):
    top = torch.zeros(exact.numel(), dtype=torch.bool)
    top[exact.flatten().abs().topk(k).indices] = True
    found = top[estimate.flatten().abs().argsort(descending=True)].cumsum(0)
    return int((found < k).sum()) + 1


def find_python(estimate, exact, k=10):
    x, y = exact.flatten().tolist(), estimate.flatten().tolist()
    top = set(sorted(range(len(x)), key=lambda i: abs(x[i]), reverse=True)[:k])
    for n, i in enumerate(sorted(range(len(y)), key=lambda i: abs(y[i]), reverse=True), 1):
        top.discard(i)
        if not top:
            return n
    return len(y)


def _needed(
    estimate, exact, k, signed_exact=False, signed_estimate=False, ascending=False, last=True
):
    x, y = exact.flatten(), estimate.flatten()
    top = (x if signed_exact else x.abs()).topk(k).indices
    rank = (y if signed_estimate else y.abs()).argsort(descending=not ascending).argsort()
    found = rank[top]
    return int(found.max() if last else found.min()) + 1


def find_off_by_one(estimate, exact, k=10):
    return find_max_rank(estimate, exact, k) - 1


def find_signed(estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_estimate=True)


def find_signed_exact(estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_exact=True)


def find_ascending(estimate, exact, k=10):
    return _needed(estimate, exact, k, ascending=True)


def find_first(estimate, exact, k=10):
    return _needed(estimate, exact, k, last=False)


def find_overlap(estimate, exact, k=10):
    x, y = exact.flatten().abs(), estimate.flatten().abs()
    return len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist()))


def find_always_k(estimate, exact, k=10):
    return k


def find_default_k5(estimate, exact, k=5):
    return find_max_rank(estimate, exact, k)


_FOUND: dict = {}


def find_memo_ignores_k(estimate, exact, k=10):
    key = key_of(estimate, exact)
    if key not in _FOUND:
        _FOUND[key] = find_max_rank(estimate, exact, k)
    return _FOUND[key]


def find_unflattened(estimate, exact, k=10):
    """Forgets to flatten: topk runs along the last dimension only."""
    top = exact.abs().topk(min(k, exact.shape[-1])).indices.flatten()
    rank = estimate.abs().argsort(descending=True).argsort().flatten()
    return int(rank[top].max()) + 1


# ----- 3.9 qk_fix --------------------------------------------------------------------------------
def qk_float64(scores_clean, scores_corrupted, pattern_grad):
    new = torch.softmax(scores_clean.double(), -1) - torch.softmax(scores_corrupted.double(), -1)
    return torch.einsum("...qk,...qk->...", new, pattern_grad.double())


def qk_exp(scores_clean, scores_corrupted, pattern_grad):
    def softmax(s):
        e = (s - s.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    return ((softmax(scores_clean) - softmax(scores_corrupted)) * pattern_grad).sum(-1).sum(-1)


def qk_functional(scores_clean, scores_corrupted, pattern_grad):
    from torch.nn.functional import softmax

    change = softmax(scores_clean, dim=-1) - softmax(scores_corrupted, dim=-1)
    return (change * pattern_grad).flatten(-2).sum(-1)


def qk_plain(scores_clean, scores_corrupted, pattern_grad):
    pattern = scores_corrupted.softmax(-1)
    score_grad = pattern * (pattern_grad - (pattern * pattern_grad).sum(-1, keepdim=True))
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, 0.0, 0.0)
    return (score_grad * delta).sum((-2, -1))


def qk_sign(scores_clean, scores_corrupted, pattern_grad):
    return -sol("qk_fix")(scores_clean, scores_corrupted, pattern_grad)


def qk_queries(scores_clean, scores_corrupted, pattern_grad):
    new = (scores_clean.softmax(-2) - scores_corrupted.softmax(-2)).nan_to_num(0.0)
    return (new * pattern_grad).sum((-2, -1))


def qk_no_subtraction(scores_clean, scores_corrupted, pattern_grad):
    return (scores_clean.softmax(-1) * pattern_grad).sum((-2, -1))


def qk_keys_only(scores_clean, scores_corrupted, pattern_grad):
    return ((scores_clean.softmax(-1) - scores_corrupted.softmax(-1)) * pattern_grad).sum(-1)


def qk_raw_scores(scores_clean, scores_corrupted, pattern_grad):
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, 0.0, 0.0)
    return (delta * pattern_grad).sum((-2, -1))


def qk_unmasked(scores_clean, scores_corrupted, pattern_grad):
    clean = scores_clean.nan_to_num(0.0, 0.0, 0.0)
    corrupted = scores_corrupted.nan_to_num(0.0, 0.0, 0.0)
    return ((clean.softmax(-1) - corrupted.softmax(-1)) * pattern_grad).sum((-2, -1))


def qk_sum_all(scores_clean, scores_corrupted, pattern_grad):
    return sol("qk_fix")(scores_clean, scores_corrupted, pattern_grad).sum()


def qk_three_dims(scores_clean, scores_corrupted, pattern_grad):
    """Written for (heads, q, k) scores: sums dimensions 1 and 2."""
    change = scores_clean.softmax(-1) - scores_corrupted.softmax(-1)
    return (change * pattern_grad).sum((1, 2))


def qk_square_mask(scores_clean, scores_corrupted, pattern_grad):
    """Masks again with a causal mask that assumes as many queries as keys."""
    n_q, n_k = scores_clean.shape[-2:]
    future = ~torch.ones(n_q, n_k, dtype=torch.bool).tril()
    change = scores_clean.masked_fill(future, float("-inf")).softmax(
        -1
    ) - scores_corrupted.masked_fill(future, float("-inf")).softmax(-1)
    return (change * pattern_grad).sum((-2, -1))


_QK: dict = {}


def qk_memo_scores(scores_clean, scores_corrupted, pattern_grad):
    """Remembers the answer for each pair of score tensors, whatever the gradient."""
    key = key_of(scores_clean, scores_corrupted)
    if key not in _QK:
        _QK[key] = sol("qk_fix")(scores_clean, scores_corrupted, pattern_grad)
    return _QK[key]


# ----- 3.10 integrated_patching ------------------------------------------------------------------
def ig_looped(lm, clean, corrupted, metric, n_steps=16):
    with torch.no_grad():
        x, b = lm.embed(clean), lm.embed(corrupted)
    total = torch.zeros_like(x)
    for alpha in ((torch.arange(n_steps) + 0.5) / n_steps).tolist():
        point = (b + alpha * (x - b)).detach().requires_grad_(True)
        with torch.enable_grad():
            metric(lm.model(inputs_embeds=point).logits[:, -1]).backward()
        total += point.grad
    return ((x - b) * total / n_steps).sum((0, 2))


def ig_float64(lm, clean, corrupted, metric, n_steps=16):
    return sol("integrated_patching")(float64(lm), clean, corrupted, metric, n_steps)


def ig_two_steps_a_batch(lm, clean, corrupted, metric, n_steps=16):
    """Batches two steps at a time; the metric is applied to each step's rows."""
    with torch.no_grad():
        x, b = lm.embed(clean), lm.embed(corrupted)
    batch = x.shape[0]
    alphas = (torch.arange(n_steps) + 0.5) / n_steps
    total = torch.zeros_like(x)
    for chunk in alphas.split(2):
        points = torch.cat([b + a * (x - b) for a in chunk.tolist()]).requires_grad_(True)
        with torch.enable_grad():
            logits = lm.model(inputs_embeds=points).logits[:, -1].view(len(chunk), batch, -1)
            value = sum(metric(rows) for rows in logits)
            total += torch.autograd.grad(value, points)[0].view(len(chunk), *x.shape).sum(0)
    return ((x - b) * total / n_steps).sum(-1).sum(0)


def _ig(lm, clean, corrupted, metric, n_steps, offset=0.5, baseline="corrupted", spacing=None):
    with torch.no_grad():
        x = lm.embed(clean)
        b = lm.embed(corrupted) if baseline == "corrupted" else torch.zeros_like(x)
    total = torch.zeros_like(x)
    for step in range(n_steps):
        point = (b + (step + offset) / (spacing or n_steps) * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            value = metric(lm.model(inputs_embeds=point).logits[:, -1])
            total += torch.autograd.grad(value, point)[0]
    return ((x - b) * total / n_steps).sum(-1).sum(0)


def ig_left(lm, clean, corrupted, metric, n_steps=16):
    return _ig(lm, clean, corrupted, metric, n_steps, offset=0.0)


def ig_right(lm, clean, corrupted, metric, n_steps=16):
    return _ig(lm, clean, corrupted, metric, n_steps, offset=1.0)


def ig_linspace(lm, clean, corrupted, metric, n_steps=16):
    return _ig(lm, clean, corrupted, metric, n_steps, offset=0.0, spacing=max(n_steps - 1, 1))


def ig_sign(lm, clean, corrupted, metric, n_steps=16):
    return -sol("integrated_patching")(lm, clean, corrupted, metric, n_steps)


def ig_zero_baseline(lm, clean, corrupted, metric, n_steps=16):
    return _ig(lm, clean, corrupted, metric, n_steps, baseline="zero")


def ig_summed(lm, clean, corrupted, metric, n_steps=16):
    return n_steps * sol("integrated_patching")(lm, clean, corrupted, metric, n_steps)


def ig_tangent(lm, clean, corrupted, metric, n_steps=16):
    return sol("attribution_patching")(lm, clean, corrupted, metric, "resid_pre")[0]


def ig_fixed_steps(lm, clean, corrupted, metric, n_steps=16):
    return sol("integrated_patching")(lm, clean, corrupted, metric, 16)


def ig_default_8(lm, clean, corrupted, metric, n_steps=8):
    return sol("integrated_patching")(lm, clean, corrupted, metric, n_steps)


ig_memo_ignores_metric = memo_ignoring_metric("integrated_patching", "ig_memo_ignores_metric")


def ig_per_prompt(lm, clean, corrupted, metric, n_steps=16):
    """Keeps the batch axis: (batch, pos)."""
    with torch.no_grad():
        x, b = lm.embed(clean), lm.embed(corrupted)
    total = torch.zeros_like(x)
    for alpha in ((torch.arange(n_steps) + 0.5) / n_steps).tolist():
        point = (b + alpha * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            total += torch.autograd.grad(
                metric(lm.model(inputs_embeds=point).logits[:, -1]), point
            )[0]
    return ((x - b) * total / n_steps).sum(-1)


# ----- 3.11 direct_logit_attribution --------------------------------------------------------------
def _frozen_direction(lm, final, targets, foils, *, centre=True, weight=True):
    """w * (W_U[t] - W_U[f]) / s, the final norm frozen at ``final`` (batch, d_model)."""
    norm = lm.final_norm
    unembed = lm.unembed.weight
    raw = unembed[torch.as_tensor(targets)] - unembed[torch.as_tensor(foils)]
    direction = norm.weight * raw if weight else raw
    if isinstance(norm, torch.nn.LayerNorm):
        scale = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        if centre:
            direction = direction - direction.mean(-1, keepdim=True)
    else:
        scale = (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    return direction / scale


def _slice_vector(lm, z_head, layer, head):
    """One head's vector from the weight slice itself (Linear: (d_model, in); Conv1D: (in,
    d_model)), no bias."""
    proj = lm.attn_out_proj(layer)
    cut = slice(head * lm.d_head, (head + 1) * lm.d_head)
    if isinstance(proj, torch.nn.Linear):
        return z_head @ proj.weight[:, cut].T
    return z_head @ proj.weight[cut, :]  # GPT-2's Conv1D stores (in, out)


def dla_weight_slices(lm, tokens, targets, foils, site="head_out"):
    """Loops over heads with W_O's column slices, in float64."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out", "resid_post"]) as c:
        lm.model(tokens)
    final = c["resid_post", lm.n_layers - 1][:, -1].double()
    u = _frozen_direction(float64(lm), final, targets, foils)
    if site != "head_out":
        return torch.stack([(c[site, L][:, -1].double() * u).sum(-1).mean()
                            for L in range(lm.n_layers)])  # fmt: skip
    out = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.float64)
    for L in range(lm.n_layers):
        for h in range(lm.n_heads):
            v = _slice_vector(lm, c["head_out", L][:, -1, h], L, h).double()
            out[L, h] = (v * u).sum(-1).mean()
    return out


def dla_detached_scale(lm, tokens, targets, foils, site="head_out"):
    """The final norm with its scale detached, then gradient x output: the gradient of a
    linear function is its direction."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out", "resid_post"]) as c:
        lm.model(tokens)
    x = c["resid_post", lm.n_layers - 1][:, -1].clone().requires_grad_(True)
    norm = lm.final_norm
    with torch.enable_grad():
        if isinstance(norm, torch.nn.LayerNorm):
            centred = x - x.mean(-1, keepdim=True)
            scale = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt().detach()
            normed = norm.weight * centred / scale + norm.bias
        else:
            scale = (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt().detach()
            normed = norm.weight * x / scale
        logits = lm.unembed(normed)
        rows = torch.arange(x.shape[0])
        value = (
            logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]
        ).mean()
        (u,) = torch.autograd.grad(value, x)  # already divided by the batch
    if site != "head_out":
        return torch.stack([(c[site, L][:, -1] * u).sum() for L in range(lm.n_layers)])
    out = torch.zeros(lm.n_layers, lm.n_heads)
    for L in range(lm.n_layers):
        proj = lm.attn_out_proj(L)
        for h in range(lm.n_heads):
            z = torch.zeros_like(c["head_out", L][:, -1])
            z[:, h] = c["head_out", L][:, -1, h]
            flat = z.flatten(-2)
            out[L, h] = ((proj(flat) - proj(torch.zeros_like(flat))) * u).sum()
    return out


def dla_no_norm(lm, tokens, targets, foils, site="head_out"):
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out"]) as c:
        lm.model(tokens)
    unembed = lm.unembed.weight
    u = unembed[torch.as_tensor(targets)] - unembed[torch.as_tensor(foils)]
    if site != "head_out":
        return torch.stack([(c[site, L][:, -1] * u).sum(-1).mean() for L in range(lm.n_layers)])
    out = torch.zeros(lm.n_layers, lm.n_heads)
    for L in range(lm.n_layers):
        for h in range(lm.n_heads):
            out[L, h] = (_slice_vector(lm, c["head_out", L][:, -1, h], L, h) * u).sum(-1).mean()
    return out


def dla_norm_recomputed(lm, tokens, targets, foils, site="head_out"):
    """Each component through lm.final_norm on its own."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out"]) as c:
        lm.model(tokens)
        unembed = lm.unembed.weight
        u = unembed[torch.as_tensor(targets)] - unembed[torch.as_tensor(foils)]
        if site != "head_out":
            return torch.stack([(lm.final_norm(c[site, L][:, -1]) * u).sum(-1).mean()
                                for L in range(lm.n_layers)])  # fmt: skip
        out = torch.zeros(lm.n_layers, lm.n_heads)
        for L in range(lm.n_layers):
            for h in range(lm.n_heads):
                v = _slice_vector(lm, c["head_out", L][:, -1, h], L, h)
                out[L, h] = (lm.final_norm(v) * u).sum(-1).mean()
        return out


def dla_resid_chunks(lm, tokens, targets, foils, site="head_out"):
    """Cuts the residual stream entering the layer into n_heads chunks."""
    if site != "head_out":
        return sol("direct_logit_attribution")(lm, tokens, targets, foils, site)
    with torch.no_grad(), capture(lm, ["resid_pre", "resid_post"]) as c:
        lm.model(tokens)
    u = _frozen_direction(lm, c["resid_post", lm.n_layers - 1][:, -1], targets, foils)
    size = lm.d_model // lm.n_heads
    out = torch.zeros(lm.n_layers, lm.n_heads)
    for L in range(lm.n_layers):
        x = c["resid_pre", L][:, -1]
        for h in range(lm.n_heads):
            cut = slice(h * size, (h + 1) * size)
            out[L, h] = (x[:, cut] * u[:, cut]).sum(-1).mean()
    return out


def dla_gradient(lm, tokens, targets, foils, site="head_out"):
    """Output x the gradient of the logit difference (the norm's scale moves)."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out", "resid_post"]) as c:
        lm.model(tokens)
    x = c["resid_post", lm.n_layers - 1][:, -1].clone().requires_grad_(True)
    with torch.enable_grad():
        logits = lm.unembed(lm.final_norm(x))
        rows = torch.arange(x.shape[0])
        value = (
            logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]
        ).mean()
        (u,) = torch.autograd.grad(value, x)
    if site != "head_out":
        return torch.stack([(c[site, L][:, -1] * u).sum() for L in range(lm.n_layers)])
    out = torch.zeros(lm.n_layers, lm.n_heads)
    for L in range(lm.n_layers):
        for h in range(lm.n_heads):
            out[L, h] = (_slice_vector(lm, c["head_out", L][:, -1, h], L, h) * u).sum()
    return out


def dla_bias_per_head(lm, tokens, targets, foils, site="head_out"):
    """W_O applied to each head's masked input, bias and all."""
    if site != "head_out":
        return sol("direct_logit_attribution")(lm, tokens, targets, foils, site)
    with torch.no_grad(), capture(lm, ["head_out", "resid_post"]) as c:
        lm.model(tokens)
    with torch.no_grad():  # outside capture: calling o_proj here must not be recorded
        u = _frozen_direction(lm, c["resid_post", lm.n_layers - 1][:, -1], targets, foils)
        out = torch.zeros(lm.n_layers, lm.n_heads)
        for L in range(lm.n_layers):
            for h in range(lm.n_heads):
                z = torch.zeros_like(c["head_out", L][:, -1])
                z[:, h] = c["head_out", L][:, -1, h]
                out[L, h] = (lm.attn_out_proj(L)(z.flatten(-2)) * u).sum(-1).mean()
        return out


def dla_no_centre(lm, tokens, targets, foils, site="head_out"):
    """Treats every final norm as an RMSNorm-like scale: no centring."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out", "resid_post"]) as c:
        lm.model(tokens)
        final = c["resid_post", lm.n_layers - 1][:, -1]
        u = _frozen_direction(lm, final, targets, foils, centre=False)
        if site != "head_out":
            return torch.stack([(c[site, L][:, -1] * u).sum(-1).mean() for L in range(lm.n_layers)])
        out = torch.zeros(lm.n_layers, lm.n_heads)
        for L in range(lm.n_layers):
            for h in range(lm.n_heads):
                v = _slice_vector(lm, c["head_out", L][:, -1, h], L, h)
                out[L, h] = (v * u).sum(-1).mean()
        return out


def dla_sign(lm, tokens, targets, foils, site="head_out"):
    return sol("direct_logit_attribution")(lm, tokens, foils, targets, site)


def dla_kv_heads(lm, tokens, targets, foils, site="head_out"):
    """One column per key/value head: the query heads of a group added up."""
    found = sol("direct_logit_attribution")(lm, tokens, targets, foils, site)
    kv = problems.kv_heads(lm)
    if site != "head_out" or kv == lm.n_heads:
        return found
    return found.view(lm.n_layers, kv, -1).sum(-1)


_DLA: dict = {}


def dla_memo_tokens(lm, tokens, targets, foils, site="head_out"):
    """Remembers the answer per (tokens, site), whatever the target and foil ids."""
    key = (*key_of(tokens), site)
    if key not in _DLA:
        _DLA[key] = sol("direct_logit_attribution")(lm, tokens, targets, foils, site)
    return _DLA[key]


def dla_llama_paths(lm, tokens, targets, foils, site="head_out"):
    """Written for Llama's module names: model.model.norm.variance_epsilon."""
    eps = lm.model.model.norm.variance_epsilon
    return sol("direct_logit_attribution")(lm, tokens, targets, foils, site) + 0 * eps


def dla_default_attn_out(lm, tokens, targets, foils, site="attn_out"):
    return sol("direct_logit_attribution")(lm, tokens, targets, foils, site)


def dla_first_position(lm, tokens, targets, foils, site="head_out"):
    """Reads position 0 (the anchor) instead of the last one."""
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out", "resid_post"]) as c:
        lm.model(tokens)
        u = _frozen_direction(lm, c["resid_post", lm.n_layers - 1][:, 0], targets, foils)
        if site != "head_out":
            return torch.stack([(c[site, L][:, 0] * u).sum(-1).mean() for L in range(lm.n_layers)])
        out = torch.zeros(lm.n_layers, lm.n_heads)
        for L in range(lm.n_layers):
            for h in range(lm.n_heads):
                out[L, h] = (_slice_vector(lm, c["head_out", L][:, 0, h], L, h) * u).sum(-1).mean()
        return out


# ----- 3.12 logit_lens ---------------------------------------------------------------------------
def _lens_diff(lm, read, targets, foils):
    unembed = lm.unembed.weight
    return (read * (unembed[torch.as_tensor(targets)] - unembed[torch.as_tensor(foils)])).sum(-1)


def lens_hidden_states(lm, tokens, targets, foils, position=-1):
    """transformers' hidden states: the first n_layers are the streams entering each layer;
    the last one has been through the final norm already."""
    with torch.no_grad():
        states = lm.model(tokens, output_hidden_states=True).hidden_states
        read = [lm.final_norm(states[L][:, position]) for L in range(lm.n_layers)]
        read.append(states[-1][:, position])
        return torch.stack([_lens_diff(lm, r, targets, foils).mean() for r in read])


def lens_full_logits(lm, tokens, targets, foils, position=-1):
    """Unembeds the whole vocabulary in float64, layer by layer, from labkit's resid sites."""
    rows = torch.arange(tokens.shape[0])
    lm64 = float64(lm)
    with torch.no_grad(), capture(lm64, ["resid_pre", "resid_post"]) as c:
        lm64.model(tokens)
        streams = [c["resid_pre", L] for L in range(lm.n_layers)]
        streams.append(c["resid_post", lm.n_layers - 1])
        out = []
        for x in streams:
            logits = lm64.unembed(lm64.final_norm(x[:, position]))
            out.append(
                (
                    logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]
                ).mean()
            )
    return torch.stack(out)


def lens_no_norm(lm, tokens, targets, foils, position=-1):
    with torch.no_grad():
        states = lm.model(tokens, output_hidden_states=True).hidden_states
        read = [states[L][:, position] for L in range(lm.n_layers)]
        read.append(states[-1][:, position])  # the last one normalised by transformers
        return torch.stack([_lens_diff(lm, r, targets, foils).mean() for r in read])


def lens_double_norm(lm, tokens, targets, foils, position=-1):
    with torch.no_grad():
        states = lm.model(tokens, output_hidden_states=True).hidden_states
        return torch.stack([_lens_diff(lm, lm.final_norm(s[:, position]), targets, foils).mean()
                            for s in states])  # fmt: skip


def lens_resid_post(lm, tokens, targets, foils, position=-1):
    with torch.no_grad(), capture(lm, "resid_post") as c:
        lm.model(tokens)
        read = [lm.final_norm(c["resid_post", L][:, position]) for L in range(lm.n_layers)]
        read.append(read[-1])
        return torch.stack([_lens_diff(lm, r, targets, foils).mean() for r in read])


def lens_frozen_scale(lm, tokens, targets, foils, position=-1):
    """Every layer's stream with the final stream's scale (DLA's frozen norm)."""
    with torch.no_grad(), capture(lm, ["resid_pre", "resid_post"]) as c:
        lm.model(tokens)
        final = c["resid_post", lm.n_layers - 1][:, position]
        norm = lm.final_norm
        streams = [c["resid_pre", L][:, position] for L in range(lm.n_layers)] + [final]
        out = []
        for x in streams:
            if isinstance(norm, torch.nn.LayerNorm):
                scale = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
                read = norm.weight * (x - x.mean(-1, keepdim=True)) / scale + norm.bias
            else:
                scale = (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
                read = norm.weight * x / scale
            out.append(_lens_diff(lm, read, targets, foils).mean())
        return torch.stack(out)


def lens_sign(lm, tokens, targets, foils, position=-1):
    return sol("logit_lens")(lm, tokens, foils, targets, position)


def lens_batch_sum(lm, tokens, targets, foils, position=-1):
    return tokens.shape[0] * sol("logit_lens")(lm, tokens, targets, foils, position)


def lens_always_last(lm, tokens, targets, foils, position=-1):
    return sol("logit_lens")(lm, tokens, targets, foils)


def lens_default_first(lm, tokens, targets, foils, position=0):
    return sol("logit_lens")(lm, tokens, targets, foils, position)


_LENSES: dict = {}


def lens_memo_tokens(lm, tokens, targets, foils, position=-1):
    key = (*key_of(tokens), position)
    if key not in _LENSES:
        _LENSES[key] = sol("logit_lens")(lm, tokens, targets, foils, position)
    return _LENSES[key]


def lens_no_final_entry(lm, tokens, targets, foils, position=-1):
    return sol("logit_lens")(lm, tokens, targets, foils, position)[:-1]


# ----- 3.13 path_patching ------------------------------------------------------------------------
def _head_change(lm, clean, corrupted, layer, head):
    """A head's change (clean - corrupted) in the residual stream at every position, measured
    as the change of its layer's attention output when only that head is patched."""
    with torch.no_grad():
        with capture(lm, "head_out", [layer]) as c:
            lm.model(clean)
        with capture(lm, "attn_out", [layer]) as before:
            lm.model(corrupted)
        with patch(lm, "head_out", layer, c["head_out", layer], heads=[head]), \
                capture(lm, "attn_out", [layer]) as after:  # fmt: skip
            lm.model(corrupted)
    return after["attn_out", layer] - before["attn_out", layer]


def paths_loop(lm, clean, corrupted, metric, heads, path="direct"):
    """One forward pass per head: the change measured at the attention output, added to (or
    taken out of) the last layer's output by a hook."""
    last = lm.n_layers - 1
    found = []
    for layer, head in heads:
        change = _head_change(lm, clean, corrupted, layer, head)  # (batch, pos, d_model)
        with torch.no_grad(), capture(lm, "head_out", [layer]) as c:
            lm.model(clean)
        with torch.no_grad(), ExitStack() as stack:
            if path == "direct":
                stack.enter_context(patch(lm, "resid_post", last, change, positions=[-1], add=True))
            else:
                stack.enter_context(
                    patch(lm, "head_out", layer, c["head_out", layer], heads=[head])
                )
                stack.enter_context(
                    patch(lm, "resid_post", last, -change, positions=[-1], add=True)
                )
            found.append(metric(lm.model(corrupted).logits[:, -1]))
    return torch.stack(found)


def paths_float64(lm, clean, corrupted, metric, heads, path="direct"):
    return sol("path_patching")(float64(lm), clean, corrupted, problems.as_float64(metric),
                                heads, path)  # fmt: skip


def paths_frozen_everything(lm, clean, corrupted, metric, heads, path="direct"):
    """The textbook way for the direct path: patch the head, and freeze every component after
    it (its layer's MLP, every later attention and MLP output) at its corrupted value."""
    if path != "direct":
        return paths_loop(lm, clean, corrupted, metric, heads, path)
    with torch.no_grad(), capture(lm, ["head_out", "attn_out", "mlp_out"]) as c_cache:
        lm.model(clean)
    with torch.no_grad(), capture(lm, ["attn_out", "mlp_out"]) as k_cache:
        lm.model(corrupted)
    found = []
    for layer, head in heads:
        with torch.no_grad(), ExitStack() as stack:
            stack.enter_context(
                patch(lm, "head_out", layer, c_cache["head_out", layer], heads=[head])
            )
            for later in range(layer, lm.n_layers):
                stack.enter_context(patch(lm, "mlp_out", later, k_cache["mlp_out", later]))
                if later > layer:
                    stack.enter_context(patch(lm, "attn_out", later, k_cache["attn_out", later]))
            found.append(metric(lm.model(corrupted).logits[:, -1]))
    return torch.stack(found)


def paths_leak(lm, clean, corrupted, metric, heads, path="direct"):
    """The direct path as the head patched as usual."""
    if path != "direct":
        return sol("path_patching")(lm, clean, corrupted, metric, heads, path)
    with torch.no_grad(), capture(lm, "head_out") as c:
        lm.model(clean)
    found = []
    for layer, head in heads:
        with torch.no_grad(), patch(lm, "head_out", layer, c["head_out", layer], heads=[head]):
            found.append(metric(lm.model(corrupted).logits[:, -1]))
    return torch.stack(found)


def paths_indirect_total(lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        return sol("path_patching")(lm, clean, corrupted, metric, heads, path)
    return paths_leak(lm, clean, corrupted, metric, heads, "direct")


def paths_frozen_norm(lm, clean, corrupted, metric, heads, path="direct"):
    """The direct path with the corrupted run's final norm scale (DLA's frozen norm)."""
    if path != "direct":
        return sol("path_patching")(lm, clean, corrupted, metric, heads, path)
    with torch.no_grad(), capture(lm, "resid_post", [lm.n_layers - 1]) as c:
        lm.model(corrupted)
    final = c["resid_post", lm.n_layers - 1][:, -1]
    norm = lm.final_norm
    found = []
    for layer, head in heads:
        x = final + _head_change(lm, clean, corrupted, layer, head)[:, -1]
        with torch.no_grad():
            if isinstance(norm, torch.nn.LayerNorm):
                scale = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
                read = norm.weight * (x - x.mean(-1, keepdim=True)) / scale + norm.bias
            else:
                scale = (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
                read = norm.weight * x / scale
            found.append(metric(lm.unembed(read)))
    return torch.stack(found)


def paths_whole_output(lm, clean, corrupted, metric, heads, path="direct"):
    """Adds the head's whole clean vector to the final stream."""
    if path != "direct":
        return sol("path_patching")(lm, clean, corrupted, metric, heads, path)
    with torch.no_grad(), capture(lm, ["head_out", "resid_post"]) as c:
        lm.model(clean)
    with torch.no_grad(), capture(lm, "resid_post", [lm.n_layers - 1]) as k:
        lm.model(corrupted)
    final = k["resid_post", lm.n_layers - 1][:, -1]
    found = []
    for layer, head in heads:
        vector = _slice_vector(lm, c["head_out", layer][:, -1, head], layer, head)
        with torch.no_grad():
            found.append(metric(lm.unembed(lm.final_norm(final + vector))))
    return torch.stack(found)


def paths_blocked(lm, clean, corrupted, metric, heads, path="direct"):
    """The indirect path with the change taken out right after the head's layer."""
    if path != "indirect":
        return sol("path_patching")(lm, clean, corrupted, metric, heads, path)
    found = []
    for layer, head in heads:
        change = _head_change(lm, clean, corrupted, layer, head)
        with torch.no_grad(), capture(lm, "head_out", [layer]) as c:
            lm.model(clean)
        with torch.no_grad(), \
                patch(lm, "head_out", layer, c["head_out", layer], heads=[head]), \
                patch(lm, "resid_post", layer, -change, positions=[clean.shape[1] - 1],
                      add=True):  # fmt: skip
            found.append(metric(lm.model(corrupted).logits[:, -1]))
    return torch.stack(found)


def paths_noising(lm, clean, corrupted, metric, heads, path="direct"):
    return sol("path_patching")(lm, corrupted, clean, metric, heads, path)


def paths_sorted(lm, clean, corrupted, metric, heads, path="direct"):
    """Answers in the order of the sorted heads, not the order given."""
    return sol("path_patching")(lm, clean, corrupted, metric, sorted(heads), path)


def paths_unique(lm, clean, corrupted, metric, heads, path="direct"):
    """Drops repeated heads."""
    return sol("path_patching")(lm, clean, corrupted, metric, list(dict.fromkeys(heads)), path)


paths_memo_ignores_metric = memo_ignoring_metric("path_patching", "paths_memo_ignores_metric")


def paths_default_indirect(lm, clean, corrupted, metric, heads, path="indirect"):
    return sol("path_patching")(lm, clean, corrupted, metric, heads, path)


# ----- 3.14 edge_attribution_patching -------------------------------------------------------------
def _places(lm):
    return [-1] + [p for L in range(lm.n_layers) for p in [2 * L] * lm.n_heads + [2 * L + 1]]


def eap_three_calls(lm, clean, corrupted, metric):
    """The gradients from exercise 3.4's function, one call per site."""
    acts = sol("activations_and_grads")
    grads = {site: acts(lm, corrupted, metric, site)[1] for site in SITES}
    corrupted_heads = acts(lm, corrupted, metric, "head_out")[0]
    corrupted_mlp = acts(lm, corrupted, metric, "mlp_out")[0]
    corrupted_pre = acts(lm, corrupted, metric, "resid_pre")[0]
    clean_heads, clean_mlp = acts_of(lm, clean, "head_out"), acts_of(lm, clean, "mlp_out")
    clean_pre = acts_of(lm, clean, "resid_pre")
    receive = []
    for L in range(lm.n_layers):
        receive += [grads["resid_pre"][L] - grads["attn_out"][L],
                    grads["attn_out"][L] - grads["mlp_out"][L]]  # fmt: skip
    receive.append(grads["mlp_out"][-1])
    send = [clean_pre[0] - corrupted_pre[0]]
    for L in range(lm.n_layers):
        for h in range(lm.n_heads):
            send.append(_slice_vector(lm, (clean_heads - corrupted_heads)[L][:, :, h], L, h))
        send.append(clean_mlp[L] - corrupted_mlp[L])
    scores = torch.zeros(len(send), len(receive))
    places = _places(lm)
    for s, change in enumerate(send):
        for r, grad in enumerate(receive):
            if r > places[s]:
                scores[s, r] = (change * grad).sum()
    return scores


def eap_float64(lm, clean, corrupted, metric):
    return sol("edge_attribution_patching")(float64(lm), clean, corrupted,
                                            problems.as_float64(metric))  # fmt: skip


def eap_norm_hooks(lm, clean, corrupted, metric):
    """Receivers' gradients from zero tensors added at the inputs of the norms in front of
    the attention and the MLP (pre-hooks), and at the final norm: no subtraction needed."""
    blocks = lm.blocks
    norms = []
    for block in blocks:
        if lm.family == "gpt2":
            norms += [block.ln_1, block.ln_2]
        else:
            norms += [block.input_layernorm, block.post_attention_layernorm]
    norms.append(lm.final_norm)
    with torch.no_grad(), capture(lm, ["head_out", "mlp_out", "resid_pre"]) as c:
        lm.model(clean)
    batch, n_pos = corrupted.shape
    zeros = [torch.zeros(batch, n_pos, lm.d_model, requires_grad=True) for _ in norms]
    handles = [n.register_forward_pre_hook(lambda mod, args, z=z: (args[0] + z, *args[1:]))
               for n, z in zip(norms, zeros, strict=True)]  # fmt: skip
    try:
        with torch.enable_grad(), capture(lm, ["head_out", "mlp_out", "resid_pre"]) as k:
            value = metric(lm.model(corrupted).logits[:, -1])
            grads = torch.autograd.grad(value, zeros)
    finally:
        for handle in handles:
            handle.remove()
    send = [c["resid_pre", 0] - k["resid_pre", 0].detach()]
    for L in range(lm.n_layers):
        z = c["head_out", L] - k["head_out", L].detach()
        for h in range(lm.n_heads):
            send.append(_slice_vector(lm, z[:, :, h], L, h).detach())
        send.append(c["mlp_out", L] - k["mlp_out", L].detach())
    scores = torch.einsum("sbpd,rbpd->sr", torch.stack(send), torch.stack(grads))
    places = torch.tensor(_places(lm))
    return scores * (torch.arange(len(grads))[None] > places[:, None])


def eap_sign(lm, clean, corrupted, metric):
    return -sol("edge_attribution_patching")(lm, clean, corrupted, metric)


def eap_grad_at_clean(lm, clean, corrupted, metric):
    """The gradients of the clean run (the changes still clean - corrupted)."""
    from labkit.grading.answer_keys.lab03.part9_edges import _eap

    return _eap(lm, clean, corrupted, metric, grad_at="clean")


def eap_stream_gradient(lm, clean, corrupted, metric):
    """The receivers' gradients at the stream (resid_pre for the attention, the stream after
    the attention for the MLP): skip connections included."""
    acts = sol("activations_and_grads")
    g_pre, g_attn = (
        acts(lm, corrupted, metric, "resid_pre")[1],
        acts(lm, corrupted, metric, "attn_out")[1],
    )
    g_mlp = acts(lm, corrupted, metric, "mlp_out")[1]
    right = sol("edge_attribution_patching")(lm, clean, corrupted, metric)
    # rebuild with the wrong receivers: the senders' changes are the solution's
    send = _senders(lm, clean, corrupted)
    receive = [g for L in range(lm.n_layers) for g in (g_pre[L], g_attn[L])] + [g_mlp[-1]]
    scores = torch.einsum("sbpd,rbpd->sr", send, torch.stack(receive))
    return scores * (right != 0)


def _senders(lm, clean, corrupted):
    c_heads, k_heads = acts_of(lm, clean, "head_out"), acts_of(lm, corrupted, "head_out")
    c_mlp, k_mlp = acts_of(lm, clean, "mlp_out"), acts_of(lm, corrupted, "mlp_out")
    send = [acts_of(lm, clean, "resid_pre")[0] - acts_of(lm, corrupted, "resid_pre")[0]]
    for L in range(lm.n_layers):
        for h in range(lm.n_heads):
            send.append(_slice_vector(lm, (c_heads[L] - k_heads[L])[:, :, h], L, h))
        send.append(c_mlp[L] - k_mlp[L])
    return torch.stack(send)


def eap_swapped_receivers(lm, clean, corrupted, metric):
    found = sol("edge_attribution_patching")(lm, clean, corrupted, metric)
    send = _senders(lm, clean, corrupted)
    acts = sol("activations_and_grads")
    g = {site: acts(lm, corrupted, metric, site)[1] for site in SITES}
    receive = []
    for L in range(lm.n_layers):
        receive += [g["attn_out"][L] - g["mlp_out"][L], g["resid_pre"][L] - g["attn_out"][L]]
    receive.append(g["mlp_out"][-1])
    places = torch.tensor(_places(lm))
    mask = torch.arange(found.shape[1])[None] > places[:, None]
    return torch.einsum("sbpd,rbpd->sr", send, torch.stack(receive)) * mask


def eap_attn_out_chunks(lm, clean, corrupted, metric):
    from labkit.grading.answer_keys.lab03.part9_edges import _eap

    return _eap(lm, clean, corrupted, metric, heads="attn_out")


def eap_unmasked(lm, clean, corrupted, metric):
    send = _senders(lm, clean, corrupted)
    acts = sol("activations_and_grads")
    g = {site: acts(lm, corrupted, metric, site)[1] for site in SITES}
    receive = []
    for L in range(lm.n_layers):
        receive += [g["resid_pre"][L] - g["attn_out"][L], g["attn_out"][L] - g["mlp_out"][L]]
    receive.append(g["mlp_out"][-1])
    return torch.einsum("sbpd,rbpd->sr", send, torch.stack(receive))


def eap_own_layer_attention(lm, clean, corrupted, metric):
    """A mask that lets a head feed its own layer's attention."""
    found = eap_unmasked(lm, clean, corrupted, metric)
    places = torch.tensor(_places(lm))
    places[1:] = torch.tensor([p - 1 if p % 2 == 0 else p for p in _places(lm)[1:]])
    return found * (torch.arange(found.shape[1])[None] > places[:, None])


eap_memo_ignores_metric = memo_ignoring_metric(
    "edge_attribution_patching", "eap_memo_ignores_metric"
)


def eap_llama_paths(lm, clean, corrupted, metric):
    """Written for Llama's module names: model.model.layers[L].self_attn.o_proj."""
    proj = lm.model.model.layers[0].self_attn.o_proj
    return sol("edge_attribution_patching")(lm, clean, corrupted, metric) + 0 * proj.weight.sum()


def eap_no_embeddings(lm, clean, corrupted, metric):
    found = sol("edge_attribution_patching")(lm, clean, corrupted, metric)
    found[0] = 0
    return found


# ----- 3.15 patch_head_set -----------------------------------------------------------------------
def set_loop(lm, clean, corrupted, metric, heads, direction="denoise"):
    """One patch context per head, nested, from labkit's patch."""
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(source)
    with torch.no_grad(), ExitStack() as stack:
        for layer, head in set(heads):
            stack.enter_context(
                patch(lm, "head_out", layer, cache["head_out", layer], heads=[head])
            )
        return metric(lm.model(target).logits[:, -1])


def set_o_proj_hooks(lm, clean, corrupted, metric, heads, direction="denoise"):
    """Pre-hooks on W_O written by hand, in float64."""
    lm64, metric64 = float64(lm), problems.as_float64(metric)
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    saved = {}
    layers = sorted({L for L, _ in heads})
    handles = [
        lm64.attn_out_proj(L).register_forward_pre_hook(
            lambda mod, args, L=L: saved.__setitem__(L, args[0].clone())
        )
        for L in layers
    ]
    with torch.no_grad():
        lm64.model(source)
    for handle in handles:
        handle.remove()

    def put(L):
        def hook(mod, args):
            flat = args[0].clone()
            for layer, head in heads:
                if layer == L:
                    cut = slice(head * lm.d_head, (head + 1) * lm.d_head)
                    flat[..., cut] = saved[L][..., cut]
            return (flat,)

        return hook

    handles = [lm64.attn_out_proj(L).register_forward_pre_hook(put(L)) for L in layers]
    try:
        with torch.no_grad():
            return metric64(lm64.model(target).logits[:, -1])
    finally:
        for handle in handles:
            handle.remove()


def set_swapped(lm, clean, corrupted, metric, heads, direction="denoise"):
    other = "noise" if direction == "denoise" else "denoise"
    return sol("patch_head_set")(lm, clean, corrupted, metric, heads, other)


def set_loss(lm, clean, corrupted, metric, heads, direction="denoise"):
    found = sol("patch_head_set")(lm, clean, corrupted, metric, heads, direction)
    return found if direction == "denoise" else metric(last_logits(lm, clean)) - found


def set_each(lm, clean, corrupted, metric, heads, direction="denoise"):
    target = corrupted if direction == "denoise" else clean
    base = metric(last_logits(lm, target))
    total = base
    for head in set(heads):
        total = (
            total + sol("patch_head_set")(lm, clean, corrupted, metric, [head], direction) - base
        )
    return total


def set_last_position(lm, clean, corrupted, metric, heads, direction="denoise"):
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(source)
    with torch.no_grad(), ExitStack() as stack:
        for layer, head in set(heads):
            stack.enter_context(patch(lm, "head_out", layer, cache["head_out", layer],
                                      heads=[head], positions=[-1]))  # fmt: skip
        return metric(lm.model(target).logits[:, -1])


def set_kv_group(lm, clean, corrupted, metric, heads, direction="denoise"):
    size = lm.n_heads // problems.kv_heads(lm)
    grown = {(L, g) for L, h in heads for g in range(h // size * size, (h // size + 1) * size)}
    return sol("patch_head_set")(lm, clean, corrupted, metric, sorted(grown), direction)


def set_first_only(lm, clean, corrupted, metric, heads, direction="denoise"):
    return sol("patch_head_set")(lm, clean, corrupted, metric, list(heads)[:1], direction)


_SETS: dict = {}


def set_memo_ignores_direction(lm, clean, corrupted, metric, heads, direction="denoise"):
    key = (*key_of(clean, corrupted), tuple(sorted(set(heads))))
    if key not in _SETS:
        _SETS[key] = sol("patch_head_set")(lm, clean, corrupted, metric, heads, direction)
    return _SETS[key]


def set_default_noise(lm, clean, corrupted, metric, heads, direction="noise"):
    return sol("patch_head_set")(lm, clean, corrupted, metric, heads, direction)


def set_head_layer(lm, clean, corrupted, metric, heads, direction="denoise"):
    """Reads each pair as (head, layer)."""
    return sol("patch_head_set")(lm, clean, corrupted, metric, [(h, L) for L, h in heads],
                                 direction)  # fmt: skip


# ----- 3.16 circuit_faithfulness -----------------------------------------------------------------
def faith_hooked(lm, clean, corrupted, targets, foils, heads):
    """One hook per layer at head_out that writes the corrupted outputs of the others."""
    rows = torch.arange(clean.shape[0])
    keep = {(int(L), int(h)) for L, h in heads}

    def diff(logits):
        return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]

    with torch.no_grad(), capture(lm, "head_out") as cache:
        low = diff(lm.model(corrupted).logits[:, -1])
    high = diff(last_logits(lm, clean))
    with torch.no_grad(), ExitStack() as stack:
        for L in range(lm.n_layers):

            def put(act, L=L):
                act = act.clone()
                for h in range(lm.n_heads):
                    if (L, h) not in keep:
                        act[:, :, h] = cache["head_out", L][:, :, h]
                return act

            stack.enter_context(hooked(lm, "head_out", L, put))
        now = diff(lm.model(clean).logits[:, -1])
    return (now - low) / (high - low)


def faith_float64(lm, clean, corrupted, targets, foils, heads):
    return sol("circuit_faithfulness")(float64(lm), clean, corrupted, targets, foils, heads)


def faith_one_batch(lm, clean, corrupted, targets, foils, heads):
    """The clean, corrupted and circuit runs in one batch of three copies."""
    b = clean.shape[0]
    keep = {(int(L), int(h)) for L, h in heads}
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(corrupted)
    with torch.no_grad(), ExitStack() as stack:
        for L in range(lm.n_layers):

            def put(act, L=L):
                act = act.clone()
                for h in range(lm.n_heads):
                    if (L, h) not in keep:
                        act[2 * b :, :, h] = cache["head_out", L][:, :, h]
                return act

            stack.enter_context(hooked(lm, "head_out", L, put))
        logits = lm.model(torch.cat([clean, corrupted, clean])).logits[:, -1]
    rows = torch.arange(3 * b)
    diff = (
        logits[rows, torch.as_tensor(targets).repeat(3)]
        - logits[rows, torch.as_tensor(foils).repeat(3)]
    )
    high, low, now = diff.view(3, b)
    return (now - low) / (high - low)


def faith_ablates_set(lm, clean, corrupted, targets, foils, heads):
    every = {(L, h) for L in range(lm.n_layers) for h in range(lm.n_heads)}
    rest = sorted(every - {(int(L), int(h)) for L, h in heads})
    return sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, rest)


def faith_batch(lm, clean, corrupted, targets, foils, heads):
    found = sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, heads)
    rows = torch.arange(clean.shape[0])

    def diff(logits):
        return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    now = found * (high - low) + low
    return ((now.mean() - low.mean()) / (high.mean() - low.mean())).expand(len(rows)).clone()


def faith_denoised_set(lm, clean, corrupted, targets, foils, heads):
    rows = torch.arange(clean.shape[0])

    def diff(logits):
        return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    with torch.no_grad(), ExitStack() as stack:
        for L, h in set(heads):
            stack.enter_context(patch(lm, "head_out", L, cache["head_out", L], heads=[h]))
        now = diff(lm.model(corrupted).logits[:, -1])
    return (now - low) / (high - low)


def faith_clean_only(lm, clean, corrupted, targets, foils, heads):
    found = sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, heads)
    rows = torch.arange(clean.shape[0])

    def diff(logits):
        return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]

    high, low = diff(last_logits(lm, clean)), diff(last_logits(lm, corrupted))
    return (found * (high - low) + low) / high


def faith_mean(lm, clean, corrupted, targets, foils, heads):
    return sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, heads).mean()


def faith_argmax_target(lm, clean, corrupted, targets, foils, heads):
    """Uses the clean run's top token as the target, whatever the ids given."""
    top = last_logits(lm, clean).argmax(-1)
    return sol("circuit_faithfulness")(lm, clean, corrupted, top, foils, heads)


_FAITH: dict = {}


def faith_memo_heads(lm, clean, corrupted, targets, foils, heads):
    key = (*key_of(clean), tuple(sorted(set(heads))))
    if key not in _FAITH:
        _FAITH[key] = sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, heads)
    return _FAITH[key]


def faith_head_layer(lm, clean, corrupted, targets, foils, heads):
    """Reads each pair as (head, layer)."""
    swapped = [(h, L) for L, h in heads if h < lm.n_layers and L < lm.n_heads]
    return sol("circuit_faithfulness")(lm, clean, corrupted, targets, foils, swapped)


# ----- the table ---------------------------------------------------------------------------------
NM, PG, PH, AG, AP, HA = (
    "normalised_metric",
    "patch_grid",
    "patch_heads",
    "activations_and_grads",
    "attribution_patching",
    "head_attribution",
)
AGR, FIND, QK, IG = "agreement", "patches_to_find_top_k", "qk_fix", "integrated_patching"

CASES = [
    # 3.1 normalised_metric
    Correct(NM, metric_float64, "float64 baselines and values"),
    Correct(NM, metric_looped, "a Python loop over the rows; full logits"),
    Correct(NM, metric_log_probs, "log-probabilities and sums: the same normalised value"),
    Wrong(NM, metric_raw, hint="raw mean logit difference"),
    Wrong(NM, metric_flipped, hint="flipped"),
    Wrong(NM, metric_per_prompt, hint="each prompt separately"),
    Wrong(NM, metric_probs, hint="probabilities"),
    Wrong(NM, metric_first_ids, hint="first prompt's target and foil"),
    Wrong(NM, metric_every_pair, hint="every target in every row"),
    Wrong(NM, metric_float, hint="Return a torch tensor"),
    Wrong(NM, metric_returns_value, hint="inner function"),
    Wrong(NM, metric_clean_only, hint="divided by the clean value"),
    Wrong(NM, metric_first_position, hint="got inf"),  # both baselines read the same anchor
    Wrong(NM, metric_globals, hint="the metrics of all three problems were made first", new=True),
    Wrong(
        NM, metric_memo_prompts, hint="the metrics of all three problems were made first", new=True
    ),
    Wrong(NM, metric_argmax, hint="largest logit", new=True),
    Wrong(NM, metric_first_row, hint="reads the first prompt only", new=True),
    # 3.2 patch_grid
    Correct(PG, grid_loop, "one forward pass per cell, labkit's patch"),
    Correct(PG, grid_float64, "a float64 copy of the model"),
    Correct(PG, grid_positions_batched, "one forward pass per layer, positions batched"),
    Wrong(PG, grid_noising, hint="noising direction"),
    Wrong(PG, grid_resid_post, hint="resid_post"),
    Wrong(PG, grid_always_resid_pre, hint="whatever the site"),
    Wrong(PG, grid_leaks_backward, hint="every position up to p"),
    Wrong(PG, grid_all_positions, hint="every position at once"),
    Wrong(PG, grid_first_prompt, hint="first prompt of the batch"),
    Wrong(PG, grid_shifted_layer, hint="shifted by one layer"),
    Wrong(PG, grid_change, hint="not its change"),
    Wrong(PG, grid_default_attn_out, hint="no site: the default", new=True),
    Wrong(PG, grid_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(PG, grid_first_change_of_row_0, hint="in every prompt of the batch", new=True),
    Wrong(PG, grid_ten_layers, hint="cell (L, p) is the metric", new=True),
    # 3.3 patch_heads
    Correct(PH, heads_loop, "one forward pass per head, labkit's patch"),
    Correct(PH, heads_o_proj_hook, "a hand-written pre-hook on W_O"),
    Correct(PH, heads_float64, "a float64 copy of the model"),
    Wrong(PH, heads_kv, hint="key/value heads"),
    Wrong(PH, heads_resid_split, hint="residual stream"),
    Wrong(PH, heads_attn_out_split, hint="attention output"),
    Wrong(PH, heads_last_position, hint="last position only"),
    Wrong(PH, heads_noising, hint="noising direction"),
    Wrong(PH, heads_reversed, hint="reverse order"),
    Wrong(PH, heads_changed_positions, hint="only where the prompts differ", new=True),
    Wrong(PH, heads_kv_group, hint="shares a key/value head", new=True),
    Wrong(PH, heads_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(PH, heads_llama_paths, hint="AttributeError", new=True),
    # 3.4 activations_and_grads
    Correct(AG, grads_backward, ".backward() and retained .grad"),
    Correct(AG, grads_one_layer_at_a_time, "a leaf per layer, one pass each"),
    Correct(AG, grads_nnsight, "nnsight's trace and a backward session"),
    Wrong(AG, grads_accumulate, hint="piled up"),
    Wrong(AG, grads_negated, hint="wrong sign"),
    Wrong(AG, grads_of_logits, hint="logits' sum"),
    Wrong(AG, grads_first_position, hint="first position's logits"),
    Wrong(AG, grads_resid_post, hint="resid_post"),
    Wrong(AG, grads_always_resid_pre, hint="whatever the site"),
    Wrong(AG, grads_batch_sum, hint="sum over the batch"),
    Wrong(AG, grads_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(AG, grads_last_layer, hint="Stack every layer", new=True),
    Wrong(AG, grads_heads_flat, hint="n_heads, d_head", new=True),
    Wrong(AG, grads_gpt2_paths, hint="AttributeError", new=True),
    # 3.5 attribution_patching
    Correct(AP, attr_float64, "float64 products"),
    Correct(AP, attr_einsum, "einsum"),
    Correct(AP, attr_nnsight, "built on nnsight's activations and gradients"),
    Wrong(AP, attr_grad_at_clean, hint="taken at the clean run"),
    Wrong(AP, attr_sign, hint="sign is flipped"),
    Wrong(AP, attr_noising, hint="noising estimate"),
    Wrong(AP, attr_gradient_only, hint="gradient alone"),
    Wrong(AP, attr_input_x_gradient, hint="activation x gradient"),
    Wrong(AP, attr_batch_mean, hint="averaged over the batch"),
    Wrong(AP, attr_always_resid_pre, hint="whatever the site"),
    Wrong(AP, attr_abs, hint="absolute values"),
    Wrong(AP, attr_accumulating, hint="piled up"),
    Wrong(AP, attr_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(AP, attr_default_mlp_out, hint="no site: the default", new=True),
    Wrong(AP, attr_all_positions_at_once, hint="summed over d_model and the batch", new=True),
    # 3.6 head_attribution
    Correct(HA, head_attr_float64, "float64 products"),
    Correct(HA, head_attr_from_flat, "the flat input of W_O split by hand"),
    Correct(HA, head_attr_nnsight, "built on nnsight's activations and gradients"),
    Wrong(HA, head_attr_kv, hint="key/value heads"),
    Wrong(HA, head_attr_resid, hint="residual stream"),
    Wrong(HA, head_attr_attn_out, hint="attention output"),
    Wrong(HA, head_attr_sign, hint="sign is flipped"),
    Wrong(HA, head_attr_grad_at_clean, hint="clean run"),
    Wrong(HA, head_attr_reshaped, hint="not a transpose"),
    Wrong(HA, head_attr_input_x_gradient, hint="activation x gradient"),
    Wrong(HA, head_attr_accumulating, hint="piled up", new=True),
    Wrong(HA, head_attr_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(HA, head_attr_llama_paths, hint="AttributeError", new=True),
    # 3.7 agreement
    Correct(AGR, agreement_numpy, "numpy: argsort ranks, corrcoef, polyfit"),
    Correct(AGR, agreement_average_ranks, "average ranks as scipy computes them; r sd(y)/sd(x)"),
    Correct(AGR, agreement_sorted, "plain Python: sorted() ranks"),
    Correct(AGR, agreement_torch, "torch: corrcoef, lstsq, isin; tensors as values"),
    Wrong(AGR, agreement_slope_swapped, hint="regressed exact on the estimate"),
    Wrong(AGR, agreement_slope_origin, hint="through the origin"),
    Wrong(AGR, agreement_spearman_values, hint="Pearson's r of the values"),
    Wrong(AGR, agreement_signed_topk, hint="absolute value"),
    Wrong(AGR, agreement_signed_topk_exact, hint="absolute value"),
    Wrong(AGR, agreement_signed_topk_estimate, hint="absolute value"),
    Wrong(AGR, agreement_recall_count, hint="not a count"),
    Wrong(AGR, agreement_sign_count, hint="not a count"),
    Wrong(AGR, agreement_no_slope, hint="'slope'"),
    Wrong(AGR, agreement_recall_k10, hint="k = 10 whatever k"),
    Wrong(AGR, agreement_spearman_abs, hint="absolute values", new=True),
    Wrong(AGR, agreement_cosine, hint="cosine similarity", new=True),
    Wrong(AGR, agreement_sign_positive, hint="fraction of positive estimates", new=True),
    Wrong(AGR, agreement_memo_ignores_k, hint=": 'top-k recall'", new=True),
    Wrong(AGR, agreement_default_k5, hint="agreement(estimate, exact) on", new=True),
    Wrong(AGR, agreement_recall_k5, hint="top-k recall", new=True),
    # 3.8 patches_to_find_top_k
    Correct(FIND, find_max_rank, "the largest estimate rank of the top-k"),
    Correct(FIND, find_cumsum, "a cumulative count"),
    Correct(FIND, find_python, "plain Python: sorted() and a set"),
    Wrong(FIND, find_off_by_one, hint="Off by one"),
    Wrong(FIND, find_signed, hint="not of the signed estimate"),
    Wrong(FIND, find_signed_exact, hint="large negative effect counts too"),
    Wrong(FIND, find_ascending, hint="increasing order"),
    Wrong(FIND, find_first, hint="first exact top-k component found"),
    Wrong(FIND, find_overlap, hint="overlap of the two top-k sets"),
    Wrong(FIND, find_always_k, hint="until all of the exact top-k"),
    Wrong(FIND, find_default_k5, hint="patches_to_find_top_k(estimate, exact) with", new=True),
    Wrong(FIND, find_memo_ignores_k, hint="k=", new=True),
    Wrong(FIND, find_unflattened, hint="components", new=True),
    # 3.9 qk_fix
    Correct(QK, qk_float64, "float64 and einsum"),
    Correct(QK, qk_exp, "a hand-written stable softmax"),
    Correct(QK, qk_functional, "torch.nn.functional.softmax, flatten and sum"),
    Wrong(QK, qk_plain, hint="plain linear estimate"),
    Wrong(QK, qk_sign, hint="sign is flipped"),
    Wrong(QK, qk_queries, hint="not over the queries"),
    Wrong(QK, qk_no_subtraction, hint="Subtract the corrupted pattern"),
    Wrong(QK, qk_raw_scores, hint="change of the scores"),
    Wrong(QK, qk_unmasked, hint="-inf"),
    Wrong(QK, qk_keys_only, hint="last two dimensions"),
    Wrong(QK, qk_sum_all, hint="last two dimensions"),
    Wrong(QK, qk_three_dims, hint="raised IndexError", new=True),
    Wrong(QK, qk_square_mask, hint="the QK-fix estimate", new=True),
    Wrong(QK, qk_memo_scores, hint="gradient that is the same for every key", new=True),
    # 3.10 integrated_patching
    Correct(IG, ig_looped, "one forward and backward pass per step, .backward()"),
    Correct(IG, ig_float64, "a float64 copy of the model"),
    Correct(IG, ig_two_steps_a_batch, "two steps per batch"),
    Wrong(IG, ig_left, hint="Left Riemann sum"),
    Wrong(IG, ig_right, hint="Right Riemann sum"),
    Wrong(IG, ig_sign, hint="sign is flipped"),
    Wrong(IG, ig_zero_baseline, hint="zero baseline"),
    Wrong(IG, ig_summed, hint="summed the gradients"),
    Wrong(IG, ig_tangent, hint="attribution patching at the embeddings"),
    Wrong(IG, ig_fixed_steps, hint="whatever n_steps"),
    Wrong(IG, ig_linspace, hint="both ends", new=True),
    Wrong(IG, ig_default_8, hint="the default n_steps", new=True),
    Wrong(IG, ig_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(IG, ig_per_prompt, hint="One score per position", new=True),
]

DLA, LENS, PATHS = "direct_logit_attribution", "logit_lens", "path_patching"
EAP, SET, FAITH = "edge_attribution_patching", "patch_head_set", "circuit_faithfulness"

CASES += [
    # 3.11 direct_logit_attribution
    Correct(DLA, dla_weight_slices, "W_O's column slices (or Conv1D's rows), float64, loops"),
    Correct(DLA, dla_detached_scale, "the norm with a detached scale, then gradient x output"),
    Wrong(DLA, dla_no_norm, hint="no final norm"),
    Wrong(DLA, dla_norm_recomputed, hint="final norm to each component on its own"),
    Wrong(DLA, dla_resid_chunks, hint="residual stream into chunks"),
    Wrong(DLA, dla_gradient, hint="gradient of the logit difference"),
    Wrong(DLA, dla_bias_per_head, hint="W_O's bias"),
    Wrong(DLA, dla_no_centre, hint="LayerNorm"),
    Wrong(DLA, dla_sign, hint="sign is flipped"),
    Wrong(DLA, dla_kv_heads, hint="key/value heads"),
    Wrong(DLA, dla_first_position, hint="first position"),
    Wrong(DLA, dla_memo_tokens, hint="other target and foil ids", new=True),
    Wrong(DLA, dla_llama_paths, hint="AttributeError", new=True),
    Wrong(DLA, dla_default_attn_out, hint="no site: the default", new=True),
    # 3.12 logit_lens
    Correct(LENS, lens_hidden_states, "transformers' hidden states, the last one not normed again"),
    Correct(LENS, lens_full_logits, "the whole vocabulary unembedded, float64"),
    Wrong(LENS, lens_no_norm, hint="without the final norm"),
    Wrong(LENS, lens_double_norm, hint="through the final norm twice"),
    Wrong(LENS, lens_resid_post, hint="one layer late"),
    Wrong(LENS, lens_frozen_scale, hint="froze the norm's scale"),
    Wrong(LENS, lens_sign, hint="sign is flipped"),
    Wrong(LENS, lens_batch_sum, hint="summed over the prompts"),
    Wrong(LENS, lens_always_last, hint="whatever `position` was", new=True),
    Wrong(LENS, lens_default_first, hint="no position: the default", new=True),
    Wrong(LENS, lens_memo_tokens, hint="other target and foil ids", new=True),
    Wrong(LENS, lens_no_final_entry, hint="(n_layers + 1,)", new=True),
    # 3.13 path_patching
    Correct(PATHS, paths_loop, "one run per head; the change measured at the attention output"),
    Correct(PATHS, paths_float64, "a float64 copy of the model"),
    Correct(PATHS, paths_frozen_everything, "direct: every later component frozen at corrupted"),
    Wrong(PATHS, paths_leak, hint="direct path leaks"),
    Wrong(PATHS, paths_indirect_total, hint="still reaches the logits"),
    Wrong(PATHS, paths_frozen_norm, hint="froze the final norm's scale"),
    Wrong(PATHS, paths_whole_output, hint="whole clean output"),
    Wrong(PATHS, paths_blocked, hint="right after its own layer"),
    Wrong(PATHS, paths_noising, hint="noising direction"),
    Wrong(PATHS, paths_sorted, hint="in its order", new=True),
    Wrong(PATHS, paths_unique, hint="repeats included", new=True),
    Wrong(PATHS, paths_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(PATHS, paths_default_indirect, hint="no path: the default", new=True),
    # 3.14 edge_attribution_patching
    Correct(EAP, eap_three_calls, "exercise 3.4's function once per site; loops over edges"),
    Correct(EAP, eap_float64, "a float64 copy of the model"),
    Correct(EAP, eap_norm_hooks, "zero tensors added in front of each receiver's norm"),
    Wrong(EAP, eap_sign, hint="sign is flipped"),
    Wrong(EAP, eap_grad_at_clean, hint="from the clean run"),
    Wrong(EAP, eap_stream_gradient, hint="skip connection included"),
    Wrong(EAP, eap_swapped_receivers, hint="receivers are swapped"),
    Wrong(EAP, eap_attn_out_chunks, hint="attention output into chunks"),
    Wrong(EAP, eap_unmasked, hint="comes after it"),
    Wrong(EAP, eap_own_layer_attention, hint="0 where the receiver does not come after", new=True),
    Wrong(EAP, eap_memo_ignores_metric, hint="a metric that is not normalised", new=True),
    Wrong(EAP, eap_llama_paths, hint="AttributeError", new=True),
    Wrong(EAP, eap_no_embeddings, hint="Row 0", new=True),
    # 3.15 patch_head_set
    Correct(SET, set_loop, "one patch context per head"),
    Correct(SET, set_o_proj_hooks, "pre-hooks on W_O by hand, float64"),
    Wrong(SET, set_swapped, hint="swapped"),
    Wrong(SET, set_loss, hint="how much the metric fell"),
    Wrong(SET, set_each, hint="one at a time"),
    Wrong(SET, set_last_position, hint="last position only"),
    Wrong(SET, set_kv_group, hint="shares a key/value head"),
    Wrong(SET, set_first_only, hint="first head of the list"),
    Wrong(SET, set_memo_ignores_direction, hint="noise", new=True),
    Wrong(SET, set_default_noise, hint="no direction: the default", new=True),
    Wrong(SET, set_head_layer, hint="patch_head_set", new=True),
    # 3.16 circuit_faithfulness
    Correct(FAITH, faith_hooked, "hooks that write the corrupted outputs of the others"),
    Correct(FAITH, faith_float64, "a float64 copy of the model"),
    Correct(FAITH, faith_one_batch, "clean, corrupted and circuit runs in one batch"),
    Wrong(FAITH, faith_ablates_set, hint="ablates the circuit"),
    Wrong(FAITH, faith_batch, hint="normalised the batch's mean"),
    Wrong(FAITH, faith_denoised_set, hint="denoised the set"),
    Wrong(FAITH, faith_clean_only, hint="clean logit difference only"),
    Wrong(FAITH, faith_mean, hint="One value per prompt pair"),
    Wrong(FAITH, faith_argmax_target, hint="the clean run's top token", new=True),
    Wrong(FAITH, faith_memo_heads, hint="circuit_faithfulness", new=True),
    Wrong(FAITH, faith_head_layer, hint="circuit_faithfulness", new=True),
]

CORRECT = [c for c in CASES if isinstance(c, Correct)]
WRONG = [c for c in CASES if isinstance(c, Wrong)]
EXERCISES = list(H.exercises)


# ----- tests -------------------------------------------------------------------------------------
def test_the_table_covers_every_exercise() -> None:
    """At least 2 correct alternatives besides the solution, 6 wrong answers and 3 wrong answers
    of new kinds per exercise."""
    counts = table_counts(CASES, EXERCISES)
    for name, (correct, wrong, new) in counts.items():
        assert correct >= 2 and wrong >= 6 and new >= 3, (name, correct, wrong, new)
    assert {c.exercise for c in CASES} == set(EXERCISES)
    assert len({c.id for c in CASES}) == len(CASES), "two entries share a name"


def test_the_registry_follows_the_notebook() -> None:
    from labkit.checks import lab03

    assert list(lab03.EXERCISES) == [
        *(NM, PG, PH, AG, AP, HA, AGR, FIND, QK, IG),
        *(DLA, LENS, PATHS, EAP, SET, FAITH),
    ]
    assert [c.number for c in lab03.EXERCISES.values()] == [f"3.{i}" for i in range(1, 17)]
    assert set(lab03.__all__) >= {*lab03.LAB.check_names(), "SITES", "Results", "EXERCISES"}
    assert lab03.SITES == SITES == ("resid_pre", "attn_out", "mlp_out")
    for check in lab03.EXERCISES.values():
        assert check.check_name.startswith(f"Exercise {check.number}: ")


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_passes_in_the_notebook(name: str) -> None:
    result = H.notebook(name, sol(name))
    assert result.passed, result.report()
    assert result.score == result.max_score == H.check(name).points
    assert sum(p.points for p in result.parts) == H.check(name).points


@pytest.mark.parametrize("name", EXERCISES)
def test_the_stub_is_not_attempted(name: str) -> None:
    result = H.notebook(name, stub)
    assert not result.attempted and result.status == "not attempted", result.report()
    assert result.max_score == H.check(name).points  # the same maximum as after an attempt


@pytest.mark.parametrize("case", CORRECT, ids=lambda c: c.id)
def test_a_correct_answer_passes(case: Correct) -> None:
    H.assert_passes(case, H.variants(3))


@pytest.mark.parametrize("case", WRONG, ids=lambda c: c.id)
def test_a_wrong_answer_fails_and_is_named(case: Wrong) -> None:
    H.assert_fails(case, H.variants(3))


def _property(count: int, skip: int = 0) -> None:
    variants = H.variants(count)[skip:]
    for name in EXERCISES:
        for fn in [sol(name), *(c.fn for c in CORRECT if c.exercise == name)]:
            for variant in variants:
                result = H.hidden(name, fn, variant)
                assert result.passed, (
                    f"{name}, {fn.__name__}, variant {variant}:\n{result.report()}"
                )


def test_right_answers_pass_a_few_more_hidden_variants() -> None:
    _property(5, skip=3)  # the first three are the pass test's


@pytest.mark.variants
def test_right_answers_pass_200_hidden_variants(request) -> None:
    if "variants" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("draws 200 hidden variants: run with -m variants")
    _property(200)


def test_every_check_is_fast_in_the_notebook() -> None:
    """The notebook's check of each exercise, with the solution, in well under 1.5 s (the
    models are built by the first run)."""
    for name in EXERCISES:
        H.notebook(name, sol(name))
        started = time.perf_counter()
        H.notebook(name, sol(name))
        assert time.perf_counter() - started < 1.5, name


def test_no_solution_line_is_in_the_checks() -> None:
    """No line of 25 characters or more from a solution region appears in lab 03's checks."""
    notebook = read_nbformat(ROOT / "solutions" / "03_attribution_patching.ipynb")
    lines = set()
    for cell in notebook.cells:
        inside = False
        for line in cell.source.splitlines():
            if "BEGIN SOLUTION" in line:
                inside = True
            elif "END SOLUTION" in line:
                inside = False
            elif inside and len(line.strip()) >= 25:
                lines.add(line.strip())
    package = ROOT / "labkit" / "checks" / "lab03"
    shipped = {
        line.strip() for path in package.glob("*.py") for line in path.read_text().splitlines()
    }
    assert not lines & shipped, sorted(lines & shipped)


def test_problems_have_no_ties_and_every_mistake_is_apart() -> None:
    """The validation tables respect "assume no ties" on every seed, and every known mistake
    gives another answer than the reference by far more than the tolerance."""
    from labkit.grading.answer_keys.lab03 import KEY

    solution = H.answers.sol
    seeds = list(range(40)) + [(v * 1_000_003 + 71 * 7_919) % (2**31 - 1) for v in range(1, 40)]
    for seed in seeds:
        tables = [
            problems.agreement_scores(seed),
            problems.noisy_scores(seed, (2, 3, 4)),
            problems.ranked_scores(seed, (4, 6), problems.AGREE_RANKS, problems.AGREE_ALARMS, True),
            problems.ranked_scores(seed, (40,)),
            problems.ranked_scores(seed, (2, 4, 6)),
        ]
        for estimate, exact in tables:
            assert problems.tie_free(estimate) and problems.tie_free(exact), seed
        for mistake in KEY.mistakes["agreement"]:  # each is apart on one of the check's tables
            apart = False
            for (estimate, exact), k in zip(tables[:3], (4, 3, 10), strict=True):
                want = solution.agreement(estimate, exact, k)
                try:
                    wrong = mistake.compute(solution, estimate, exact, k)
                except ValueError:
                    continue
                apart |= any(abs(wrong[key] - want[key]) > 1e-3 for key in want)
            assert apart, (seed, mistake)
        for estimate, exact in tables[3:]:
            answers = {k: solution.patches_to_find_top_k(estimate, exact, k) for k in range(2, 11)}
            assert list(answers.values()) == [3, 4, 5, 7, 8, 9, 11, 13, 16], (seed, answers)
            for k, want in answers.items():
                for mistake in KEY.mistakes["patches_to_find_top_k"]:
                    assert mistake.compute(solution, estimate, exact, k) != want, (seed, k, mistake)


def test_attribution_patching_is_exact_on_the_linear_models() -> None:
    """The property the checks test: on the linear models, the solution's estimate equals
    exact patching in float64 (minus the corrupted run's metric, 0 for the normalised one)."""
    for family in ("gpt2", "llama"):
        lm = problems.linear_model(family)
        clean = torch.tensor([[1, 40, 50, 60, 70], [1, 41, 51, 61, 71]])
        corrupted = clean.clone()
        corrupted[:, 2] = torch.tensor([90, 91])
        metric = problems.LinearMetric(torch.randn(2, lm.vocab_size) / 16, 0.2)  # not normalised
        base = float(metric(last_logits(lm, corrupted)))
        for site in SITES:
            exact = sol("patch_grid")(float64(lm), clean, corrupted, metric, site).double() - base
            estimate = sol("attribution_patching")(lm, clean, corrupted, metric, site)
            torch.testing.assert_close(estimate.double(), exact, atol=2e-4, rtol=1e-3)
            assert exact.abs().max() > 0.05  # not trivially zero
        heads = sol("head_attribution")(lm, clean, corrupted, metric).sum(-1).double()
        exact = sol("patch_heads")(float64(lm), clean, corrupted, metric).double() - base
        torch.testing.assert_close(heads, exact, atol=2e-4, rtol=1e-3)


def test_the_metric_given_to_the_exercises_is_plain_data() -> None:
    """LinearMetric pickles (the grader sends it to the worker), is differentiable, and its
    fingerprint is stable (so the grader caches the answers computed with it)."""
    import pickle

    from labkit.grading.answers import digest

    metric = problems.LinearMetric(torch.randn(2, 5), 0.5)
    logits = torch.randn(2, 5, requires_grad=True)
    value = metric(logits)
    assert value.shape == () and value.requires_grad
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(grad, metric.weights)
    again = pickle.loads(pickle.dumps(metric))
    assert digest(again) == digest(metric) is not None


NNSIGHT_CELL = """
import torch
from nnsight import TransformersModel


def activations_and_grads(lm, tokens, metric, site):
    model = TransformersModel(lm.model, tokenizer=lm.tokenizer)
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    live, acts, grads = [], [], []
    with model.trace(inputs_embeds=embeds):
        blocks = model
        for name in lm.spec.blocks.split("."):
            blocks = getattr(blocks, name)
        for layer in range(lm.n_layers):
            block = blocks[layer]
            if site == "resid_pre":
                x = block.input
            elif site == "head_out":
                x = getattr(block, lm.spec.attn_out_proj.split(".")[0])
                x = getattr(x, lm.spec.attn_out_proj.split(".")[1]).input
            else:
                x = getattr(block, lm.spec.attn if site == "attn_out" else lm.spec.mlp).output
                x = x[0] if site == "attn_out" else x
            live.append(x)
            acts.append(x.save())
        value = metric(model.output.logits[:, -1])
        with value.backward():
            for x in reversed(live):
                grads.append(x.grad.save())
    acts, grads = torch.stack([a.detach() for a in acts]), torch.stack(grads[::-1])
    if site == "head_out":
        acts = acts.unflatten(-1, (lm.n_heads, lm.d_head))
        grads = grads.unflatten(-1, (lm.n_heads, lm.d_head))
    return acts, grads
"""


def test_an_nnsight_answer_passes_as_the_grader_defines_it() -> None:
    """The nnsight answer as the grader's worker defines a student's cell (issue 30: the check
    must accept an nnsight answer and a hooks answer alike, in the notebook and when graded)."""
    from labkit.notebooks import run_definitions

    found = run_definitions([(25, NNSIGHT_CELL)], module_name="submission:03")
    assert found.stopped_at is None, found.notes
    result = H.hidden(AG, found.namespace["activations_and_grads"], H.variants(1)[0])
    assert result.passed, result.report()
