"""Helpers that several parts of lab 03's answer key share: short runs, caches and
norm arithmetic."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.hooks import capture, patch


# ----- helpers: short wrong implementations ------------------------------------------------------
def _rows_diff(logits: Tensor, targets, foils) -> Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]


def _last(lm, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return lm.model(tokens).logits[:, -1]


def _acts(lm, tokens: Tensor, site: str) -> Tensor:
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    return cache.stack(site)


def _acts_grads(lm, tokens: Tensor, metric, site: str, position: int = -1, of=None):
    """Activations at ``site`` (every layer) and the gradient of ``of(logits)`` (default: the
    metric of the last position's logits) at each of them."""
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        logits = lm.model(inputs_embeds=embeds).logits
        value = metric(logits[:, position]) if of is None else of(logits)
        layers = [cache[site, layer] for layer in range(lm.n_layers)]
        grads = torch.autograd.grad(value, layers)
    return torch.stack(layers).detach(), torch.stack(grads)


def _loop_grid(lm, source: Tensor, target: Tensor, metric, site: str, cells) -> Tensor:
    """Exact patching, one forward pass per cell: cell (L, p) patches ``source``'s activation
    at the positions ``cells(p)`` of layer L into the run on ``target``."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(source)
    grid = torch.zeros(lm.n_layers, source.shape[1])
    for layer in range(lm.n_layers):
        for p in range(source.shape[1]):
            with torch.no_grad(), patch(lm, site, layer, cache[site, layer], positions=cells(p)):
                grid[layer, p] = metric(lm.model(target).logits[:, -1])
    return grid


def _loop_heads(
    lm,
    clean: Tensor,
    corrupted: Tensor,
    metric,
    *,
    heads=None,
    positions=None,
    site: str = "head_out",
) -> Tensor:
    """Exact patching per (layer, head): ``heads(h)`` are the heads patched for column h (at
    the head_out site), or, for the split-a-vector mistakes, chunk h of ``site``."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    chunk = lm.d_model // lm.n_heads
    for layer in range(lm.n_layers):
        source = cache[site, layer]
        for h in range(lm.n_heads):
            if site == "head_out":
                context = patch(
                    lm, site, layer, source, positions=positions, heads=heads(h) if heads else [h]
                )
            else:

                def put(act, source=source, h=h):
                    act = act.clone()
                    act[..., h * chunk : (h + 1) * chunk] = source[..., h * chunk : (h + 1) * chunk]
                    return act

                context = patch(lm, site, layer, put)
            with torch.no_grad(), context:
                grid[layer, h] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def _corrupted_metric(lm, corrupted: Tensor, metric) -> float:
    with torch.no_grad():
        return float(metric(lm.model(corrupted).logits[:, -1]))


# ===== Parts 7-11: from components to a mechanism ================================================
def _ids(lm, ids) -> Tensor:
    return torch.as_tensor(ids, device=lm.device).long()


def _head_vectors(lm, z: Tensor, layer: int, *, bias: bool = False) -> Tensor:
    """Each head's output through its own slice of W_O: (..., n_heads, d_head) -> (...,
    n_heads, d_model); with ``bias``, W_O's bias added to every head (a mistake)."""
    n_heads, d_head = lm.n_heads, lm.d_head
    alone = torch.zeros(*z.shape[:-2], n_heads, n_heads, d_head, dtype=z.dtype)
    alone[..., range(n_heads), range(n_heads), :] = z
    alone = alone.flatten(-2)
    proj = lm.attn_out_proj(layer)
    return proj(alone) if bias else proj(alone) - proj(torch.zeros_like(alone))


def _chunks(x: Tensor, n_heads: int) -> Tensor:
    """(..., d_model) cut into n_heads chunks: (..., n_heads, d_model) with zeros elsewhere."""
    size = x.shape[-1] // n_heads
    out = torch.zeros(*x.shape[:-1], n_heads, x.shape[-1], dtype=x.dtype)
    for h in range(n_heads):
        out[..., h, h * size : (h + 1) * size] = x[..., h * size : (h + 1) * size]
    return out


def _run_cache(lm, tokens: Tensor, sites) -> object:
    with torch.no_grad(), capture(lm, sites) as cache:
        lm.model.base_model(tokens)
    return cache


def _final_scale(lm, final: Tensor) -> Tensor:
    norm = lm.final_norm
    if isinstance(norm, torch.nn.LayerNorm):
        return (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


def _is_layer_norm(lm) -> bool:
    return isinstance(lm.final_norm, torch.nn.LayerNorm)


def _dla(
    lm,
    tokens,
    targets,
    foils,
    site="head_out",
    *,
    norm="frozen",
    heads="head_out",
    bias=False,
    position=-1,
    reduce="mean",
    sign=1.0,
) -> Tensor:
    """Direct logit attribution and its wrong versions. ``norm``: "frozen" (right), "none",
    "recomputed" (the final norm applied to each component), "no_weight", "no_centre",
    "gradient" (the gradient through the norm, scale derivative included); ``heads``:
    "head_out" (right), "attn_out" or "resid_pre" (a d_model vector cut into chunks)."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    last = lm.n_layers - 1
    cache = _run_cache(lm, tokens, ["head_out", "attn_out", "mlp_out", "resid_pre", "resid_post"])
    final = cache["resid_post", last][:, position]  # (batch, d_model)
    unembed = lm.unembed.weight
    raw = unembed[targets] - unembed[foils]  # (batch, d_model)
    if site == "head_out":
        if heads == "head_out":
            parts = [_head_vectors(lm, cache["head_out", L][:, position], L, bias=bias)
                     for L in range(lm.n_layers)]  # fmt: skip
        else:
            parts = [_chunks(cache[heads, L][:, position], lm.n_heads) for L in range(lm.n_layers)]
        vectors = torch.stack(parts)  # (L, batch, H, d)
    else:
        vectors = cache.stack(site)[:, :, position]  # (L, batch, d)
    with torch.no_grad():
        if norm == "none":
            values = (vectors * (raw if site != "head_out" else raw[:, None])).sum(-1)
        elif norm == "recomputed":
            logits_dir = raw if site != "head_out" else raw[:, None]
            values = (lm.final_norm(vectors) * logits_dir).sum(-1)
        elif norm == "gradient":
            x = final.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                value = (lm.final_norm(x) * raw).sum()
                (grad,) = torch.autograd.grad(value, x)
            values = (vectors * (grad if site != "head_out" else grad[:, None])).sum(-1)
        else:
            direction = raw if norm == "no_weight" else lm.final_norm.weight * raw
            if _is_layer_norm(lm) and norm != "no_centre":
                direction = direction - direction.mean(-1, keepdim=True)
            direction = direction / _final_scale(lm, final)
            values = (vectors * (direction if site != "head_out" else direction[:, None])).sum(-1)
    values = sign * values  # (L, batch) or (L, batch, H)
    return (values.sum(1) if reduce == "sum" else values.mean(1)).detach()
