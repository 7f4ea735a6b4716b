"""Read and overwrite activations inside a forward pass, with plain PyTorch hooks.

An *activation site* is a named place in the model where a tensor flows past:

===========  =============================================  ===============================
site         what it is                                     shape
===========  =============================================  ===============================
embed        token embeddings (no layer)                    (batch, pos, d_model)
resid_pre    residual stream entering block ``layer``       (batch, pos, d_model)
resid_post   residual stream leaving block ``layer``        (batch, pos, d_model)
attn_out     attention output added to the residual         (batch, pos, d_model)
mlp_out      MLP output added to the residual               (batch, pos, d_model)
head_out     each head's output, before W_O mixes them      (batch, pos, n_heads, d_head)
===========  =============================================  ===============================

Two context managers do everything the labs need:

* :func:`capture` records activations while the body runs a forward pass;
* :func:`patch` replaces (or adds to) an activation at chosen positions and heads.

Hooks are always removed when the ``with`` block ends, also when it raises.

>>> with capture(lm, "resid_post") as cache:
...     lm.model(clean_ids)
>>> with patch(lm, "resid_post", layer=5, value=cache["resid_post", 5], positions=[3]):
...     patched_logits = lm.model(corrupted_ids).logits
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from transformers import Cache, DynamicCache

from labkit.models import LabModel

SITES = ("embed", "resid_pre", "resid_post", "attn_out", "mlp_out", "head_out")

# A hook body: takes the activation in its canonical shape, returns a replacement (or None).
ActivationFn = Callable[[torch.Tensor], torch.Tensor | None]
Positions = int | Sequence[int] | slice | torch.Tensor | None


class ActivationCache(dict):
    """Activations keyed by ``(site, layer)``; ``cache["embed"]`` for the embedding site."""

    def __getitem__(self, key):
        if isinstance(key, str):
            key = (key, None)
        if key not in self:
            have = sorted({f"{s}" if layer is None else f"({s!r}, {layer})" for s, layer in self})
            raise KeyError(f"{key} was not captured. Captured: {', '.join(have) or 'nothing'}.")
        return super().__getitem__(key)

    def stack(self, site: str) -> torch.Tensor:
        """All captured layers of ``site`` stacked: (n_layers, batch, pos, ...)."""
        layers = sorted(layer for s, layer in self if s == site and layer is not None)
        if not layers:
            raise KeyError(f"No layers of '{site}' were captured.")
        return torch.stack([self[site, layer] for layer in layers])


def _check_site(lm: LabModel, site: str, layer: int | None) -> int | None:
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}. Sites: {', '.join(SITES)}.")
    if site == "embed":
        return None
    if layer is None:
        raise ValueError(f"Site {site!r} needs a layer (0..{lm.n_layers - 1}).")
    lm.block(layer)  # raises a clear IndexError if out of range
    return layer % lm.n_layers


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _hook_site(lm: LabModel, site: str, layer: int | None, fn: ActivationFn):
    """Register ``fn`` at a site; return the hook handle. ``fn`` sees the canonical shape."""
    if site == "embed":
        return lm.embed.register_forward_hook(lambda mod, args, out: fn(out))

    if site == "resid_pre":

        def pre_hook(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return lm.block(layer).register_forward_pre_hook(pre_hook, with_kwargs=True)

    if site == "head_out":
        n_heads, d_head = lm.n_heads, lm.d_head

        def heads_hook(mod, args):
            flat = args[0]  # (batch, pos, n_heads * d_head)
            heads = flat.view(*flat.shape[:-1], n_heads, d_head)
            new = fn(heads)
            # Always pass on a tensor derived from `heads`, so gradients reach a captured view.
            new = heads if new is None else new
            return (new.reshape(flat.shape), *args[1:])

        return lm.attn_out_proj(layer).register_forward_pre_hook(heads_hook)

    module: nn.Module = {
        "resid_post": lm.block,
        "attn_out": lm.attn,
        "mlp_out": lm.mlp,
    }[site](layer)

    def post_hook(mod, args, output):
        new = fn(_first(output))
        return None if new is None else _replace_first(output, new)

    return module.register_forward_hook(post_hook)


@contextmanager
def hooked(lm: LabModel, site: str, layer: int | None, fn: ActivationFn) -> Iterator[None]:
    """Run ``fn(activation)`` at one site during the body; its return value replaces it."""
    layer = _check_site(lm, site, layer)
    handle = _hook_site(lm, site, layer, fn)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture(
    lm: LabModel,
    sites: str | Sequence[str],
    layers: int | Sequence[int] | None = None,
    *,
    keep_grad: bool = False,
) -> Iterator[ActivationCache]:
    """Record activations at ``sites`` (all layers unless ``layers`` is given).

    With ``keep_grad=True`` the cache holds the live tensors (not detached copies) and keeps
    their ``.grad`` after a backward pass: this is what attribution patching needs.
    """
    sites = [sites] if isinstance(sites, str) else list(sites)
    if layers is None:
        layers = range(lm.n_layers)
    elif isinstance(layers, int):
        layers = [layers]
    cache = ActivationCache()

    def recorder(key):
        def record(act: torch.Tensor) -> None:
            if keep_grad:
                if act.requires_grad:
                    act.retain_grad()
                cache[key] = act
            else:
                cache[key] = act.detach().clone()

        return record

    with ExitStack() as stack:
        for site in sites:
            for layer in [None] if site == "embed" else layers:
                layer = _check_site(lm, site, layer)
                stack.enter_context(hooked(lm, site, layer, recorder((site, layer))))
        yield cache


def _as_index(positions: Positions, length: int) -> torch.Tensor | slice:
    if positions is None:
        return slice(None)
    if isinstance(positions, slice):
        return positions
    index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if index.numel() and (index.max() >= length or index.min() < -length):
        raise IndexError(
            f"Position(s) {index.tolist()} are outside the prompt, which has {length} tokens "
            f"(positions 0..{length - 1})."
        )
    return index


@contextmanager
def patch(
    lm: LabModel,
    site: str,
    layer: int | None = None,
    value: torch.Tensor | ActivationFn | None = None,
    *,
    positions: Positions = None,
    heads: int | Sequence[int] | None = None,
    add: bool = False,
) -> Iterator[None]:
    """Overwrite (or, with ``add=True``, add to) the activation at a site during the body.

    ``value`` is either
      * a tensor shaped like the activation (batch may be 1), e.g. ``cache["resid_post", 5]``
        from another run: only its entries at ``positions`` (and ``heads``) are used; or
      * a smaller tensor, e.g. a vector (d_model,), broadcast to the chosen positions; or
      * a function ``activation -> new activation`` for full control.
    ``positions=None`` means every position; ``heads`` only applies to the ``head_out`` site.
    """
    if value is None:
        raise ValueError("patch needs a value: a tensor, or a function of the activation.")
    if heads is not None and site != "head_out":
        raise ValueError("`heads` only applies to the 'head_out' site.")

    def apply(act: torch.Tensor) -> torch.Tensor:
        if callable(value):
            return value(act)
        index = _index(_as_index(positions, act.shape[1]), heads)
        source = value.to(act.device, act.dtype)
        if source.dim() == act.dim():
            if source.shape[1:] != act.shape[1:] or source.shape[0] not in (1, act.shape[0]):
                raise ValueError(
                    f"The patch value for {site!r} at layer {layer} has shape "
                    f"{tuple(source.shape)}, but the activation has shape {tuple(act.shape)}. "
                    "Both runs must have the same number of tokens: check that the clean and "
                    "corrupted prompts tokenise to the same length."
                )
            source = source[index]
        new = act.clone()
        if add:
            new[index] = new[index] + source
        else:
            new[index] = source
        return new

    with hooked(lm, site, layer, apply):
        yield


def _index(pos: torch.Tensor | slice, heads: int | Sequence[int] | None) -> tuple:
    """Index into (batch, pos, ...) at every batch row, the given positions and heads."""
    if heads is None:
        return (slice(None), pos)
    head_index = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
    if isinstance(pos, slice):
        return (slice(None), pos, head_index)
    return (slice(None), pos[:, None], head_index[None, :])  # every (position, head) pair


def span_positions(lm: LabModel, tokens: torch.Tensor, span: str) -> list[int]:
    """The positions of the tokens that spell ``span`` inside ``tokens`` (1, pos).

    Use it to find a subject to corrupt, e.g. ``span_positions(lm, ids, " France")``. The span
    must line up with token boundaries; its last occurrence is used.
    """
    if not span:
        raise ValueError("The span is empty: give the words to find, e.g. ' France'.")
    pieces = lm.str_tokens(tokens)
    for start in range(len(pieces) - 1, -1, -1):
        text = ""
        for end in range(start, len(pieces)):
            text += pieces[end]
            if text.strip() == span.strip():
                return list(range(start, end + 1))
            if len(text.strip()) >= len(span.strip()):
                break
    raise ValueError(
        f"{span!r} is not a run of whole tokens in {pieces}. Copy the words exactly as they "
        "appear in the prompt (mind the leading space)."
    )


def _pass_through(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


def key_value_prefix(cache: Cache, length: int, repeat: int = 1) -> DynamicCache | None:
    """The keys and values of a run's first ``length`` positions, for every layer.

    ``cache`` is the ``past_key_values`` of a forward pass with ``use_cache=True``; each batch
    row is repeated ``repeat`` times (new row ``i`` is old row ``i % batch``). Pass the result
    to :func:`run_from` as ``past`` to compute only the later positions: with causal attention,
    positions before ``length`` never see what happens after them, so their keys and values
    can be reused. Returns None for ``length == 0`` (nothing to reuse).
    """
    if length == 0:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None:
        raise TypeError(
            "key_value_prefix needs the past_key_values of a forward pass run with use_cache=True."
        )
    if length > layers[0].keys.shape[-2]:
        raise ValueError(f"The cache holds {layers[0].keys.shape[-2]} positions, not {length}.")
    # Each kept tensor: (batch * repeat, kv_heads, length, d_head).
    kept = [
        (
            layer.keys[:, :, :length].repeat(repeat, 1, 1, 1),
            layer.values[:, :, :length].repeat(repeat, 1, 1, 1),
        )
        for layer in layers
    ]
    return DynamicCache(ddp_cache_data=kept)


def run_from(
    lm: LabModel, layer: int, resid: torch.Tensor, past: Cache | None = None
) -> torch.Tensor:
    """Finish a forward pass from the residual stream entering block ``layer``.

    ``resid`` (batch, pos, d_model) takes the place of resid_pre[layer]; blocks below ``layer``
    are skipped (not computed), and ``layer == lm.n_layers`` runs only the final norm and the
    unembedding. Hooks at later layers (``patch``, ``hooked``) still apply. Returns the logits
    at the last position, (batch, vocab). Causal tracing uses this to reuse a corrupted run's
    computation below the layer it restores (lab 02).

    With ``past`` (from :func:`key_value_prefix`), ``resid`` holds only the positions after
    the cached ones, and position indices inside hooks count from the first of them.
    """
    if not 0 <= layer <= lm.n_layers:
        raise IndexError(f"layer {layer} is not in 0..{lm.n_layers} for run_from.")
    resid = resid.to(lm.device)

    def inject(mod, args, kwargs):
        if args:
            return (resid, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid}

    target = lm.final_norm if layer == lm.n_layers else lm.blocks[layer]
    with ExitStack() as stack:
        handle = target.register_forward_pre_hook(inject, with_kwargs=True)
        stack.callback(handle.remove)
        for block in list(lm.blocks)[:layer]:
            block.forward = _pass_through  # an instance attribute shadows the class's forward
            stack.callback(delattr, block, "forward")
        out = lm.model.base_model(
            inputs_embeds=resid, past_key_values=past, use_cache=past is not None
        )
    final = out.last_hidden_state  # (batch, pos, d_model), after the final norm
    # Unembed only the last position, as a contiguous (batch, d_model) matrix: a strided
    # (batch, 1, d_model) slice (what logits_to_keep=1 gives) makes torch copy the whole
    # unembedding matrix once per row, which cost more than the transformer blocks here.
    return lm.unembed(final[:, -1].contiguous())
