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

Hooks at one site run in the order they were opened. So a :func:`capture` opened *inside* a
:func:`patch` at the same site records the patched value, and one opened *outside* it (before
it) records the value before the patch. A patch never writes into the activation tensor: it
passes on a new one, so a ``keep_grad`` capture keeps the original.

Layers are whole numbers and may be negative (``-1`` is the last layer); positions and heads are
whole numbers (a list, a range or an integer tensor), never floats.

>>> with capture(lm, "resid_post") as cache:
...     lm.model(clean_ids)
>>> with patch(lm, "resid_post", layer=5, value=cache["resid_post", 5], positions=[3]):
...     patched_logits = lm.model(corrupted_ids).logits
"""

from __future__ import annotations

import operator
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


def _whole_number(value, what: str) -> int:
    """``value`` as a Python int: ints, numpy ints and one-element integer tensors; never a float
    or a bool (which would silently pick the wrong layer or position)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{what} must be a whole number, got a {value.dtype} tensor {value}.")
        value = value.item()
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a whole number such as 3, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a whole number such as 3, got {value!r}.") from None


class ActivationCache(dict):
    """Activations keyed by ``(site, layer)``; ``cache["embed"]`` for the embedding site.

    Layers are plain ints; a negative layer counts from the end (``cache["resid_post", -1]``).
    """

    def __init__(self, *args, n_layers: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_layers = n_layers

    def _key(self, key):
        if isinstance(key, str):
            return (key, None)
        if isinstance(key, tuple) and len(key) == 2 and key[1] is not None:
            layer = _whole_number(key[1], "The layer")
            if self.n_layers and -self.n_layers <= layer < 0:
                layer += self.n_layers
            return (key[0], layer)
        return key

    def __getitem__(self, key):
        key = self._key(key)
        if key not in self:
            have = sorted({f"{s}" if layer is None else f"({s!r}, {layer})" for s, layer in self})
            raise KeyError(f"{key} was not captured. Captured: {', '.join(have) or 'nothing'}.")
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        try:
            key = self._key(key)
        except TypeError:
            return False
        return super().__contains__(key)

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
    layer = _whole_number(layer, "The layer")
    lm.block(layer)  # raises a clear IndexError if out of range
    return layer % lm.n_layers


def _layer_list(lm: LabModel, layers) -> list[int]:
    """``layers`` (None: all; an int; a list, range or 1-d integer tensor) as a list of ints."""
    if layers is None:
        return list(range(lm.n_layers))
    if hasattr(layers, "tolist") and not isinstance(layers, torch.Tensor):  # numpy
        layers = layers.tolist()
    if isinstance(layers, torch.Tensor):
        if layers.dim() > 1:
            raise TypeError(f"layers must be one layer or a flat list, got shape {layers.shape}.")
        layers = layers.reshape(-1).tolist() if not layers.is_floating_point() else [layers]
    if isinstance(layers, int | float | bool) or not isinstance(layers, Sequence | range):
        return [_whole_number(layers, "layers")]
    return [_whole_number(layer, "Each layer") for layer in layers]


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
        split = (lm.n_heads, lm.d_head)

        def heads_hook(mod, args):
            flat = args[0]  # (batch, pos, n_heads * d_head)
            heads = flat.view(*flat.shape[:-1], *split)
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
    Opened inside a :func:`patch` at the same site, it records the patched value.
    """
    sites = [sites] if isinstance(sites, str) else list(sites)
    layers = _layer_list(lm, layers)
    cache = ActivationCache(n_layers=lm.n_layers)

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


def _integer_index(values, what: str) -> torch.Tensor:
    """Positions or heads as a 1-d long tensor; floats and bools are errors, not truncated."""
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{what} must be whole numbers, got a {values.dtype} tensor.")
        return values.reshape(-1).long()
    if hasattr(values, "tolist"):  # numpy arrays and scalars
        values = values.tolist()
    if isinstance(values, int | float | bool) or not isinstance(values, Sequence | range):
        values = [values]
    return torch.tensor([_whole_number(v, what) for v in values], dtype=torch.long)


def _as_index(positions: Positions, length: int) -> torch.Tensor | slice:
    if positions is None:
        return slice(None)
    if isinstance(positions, slice):
        return positions
    index = _integer_index(positions, "Positions")
    if index.numel() and (index.max() >= length or index.min() < -length):
        raise IndexError(
            f"Position(s) {index.tolist()} are outside the prompt, which has {length} tokens "
            f"(positions 0..{length - 1})."
        )
    return index


def _patch_value(value) -> torch.Tensor | ActivationFn:
    """A patch value as a real-valued tensor or a function; anything else is a clear error."""
    if value is None:
        raise ValueError("patch needs a value: a tensor, or a function of the activation.")
    if callable(value) and not isinstance(value, torch.Tensor):
        return value
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"The patch value must be a tensor or a function of the activation, got "
            f"{type(value).__name__}."
        ) from None
    if tensor.is_complex():
        raise TypeError(
            "The patch value is complex; activations are real. Pass its real part "
            "(value.real) if that is what you mean."
        )
    return tensor


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
    A :func:`capture` opened inside this block at the same site records the patched value.
    The caller's tensors and the model's activation are never written to: the patched
    activation is a new tensor.
    """
    value = _patch_value(value)
    if heads is not None and site != "head_out":
        raise ValueError("`heads` only applies to the 'head_out' site.")
    if heads is not None:
        heads = _integer_index(heads, "Heads")
        if heads.numel() and (heads.max() >= lm.n_heads or heads.min() < -lm.n_heads):
            raise IndexError(
                f"Head(s) {heads.tolist()} do not exist: this model has heads 0..{lm.n_heads - 1}."
            )

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


def _put_back_forward(module: nn.Module, forward) -> None:
    """Undo ``module.forward = ...``: restore the instance's own forward, or the class's."""
    if forward is None:
        del module.forward
    else:
        module.forward = forward


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
    lm: LabModel,
    layer: int | Sequence[int],
    resid: torch.Tensor,
    past: Cache | None = None,
) -> torch.Tensor:
    """Finish a forward pass from the residual stream entering block ``layer``.

    ``resid`` (batch, pos, d_model) takes the place of resid_pre[layer]; blocks below ``layer``
    are skipped (not computed), and ``layer == lm.n_layers`` runs only the final norm and the
    unembedding. Hooks at later layers (``patch``, ``hooked``) still apply. Returns the logits
    at the last position, (batch, vocab). Causal tracing uses this to reuse a corrupted run's
    computation below the layer it restores (lab 02).

    With ``past`` (from :func:`key_value_prefix`), ``resid`` holds only the positions after
    the cached ones, and position indices inside hooks count from the first of them.

    ``layer`` may also give each row its own layer (a non-decreasing list, one per row): row
    ``i`` enters block ``layer[i]`` with ``resid[i]`` as its resid_pre, and is not computed
    below it. The batch grows on the way up: a hook at layer ``l`` sees only the rows that
    have entered at or below ``l``, which are the first rows (``act.shape[0]`` of them), in
    order. So one pass computes what a pass per starting layer would, without the rows that
    have not started yet. (A ``resid_pre`` hook at ``l`` sees the rows that enter there too.)
    """
    resid = resid.to(lm.device)
    if not isinstance(layer, int | torch.Tensor) or (
        isinstance(layer, torch.Tensor) and layer.dim() > 0
    ):
        return _run_rows_from(lm, _layer_list(lm, layer), resid, past)
    layer = _whole_number(layer, "The layer")
    if not 0 <= layer <= lm.n_layers:
        raise IndexError(f"layer {layer} is not in 0..{lm.n_layers} for run_from.")

    def inject(mod, args, kwargs):
        if args:
            return (resid, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid}

    target = lm.final_norm if layer == lm.n_layers else lm.blocks[layer]
    with ExitStack() as stack:
        handle = target.register_forward_pre_hook(inject, with_kwargs=True)
        stack.callback(handle.remove)
        return _finish(lm, stack, layer, resid, past)


def _finish(
    lm: LabModel, stack: ExitStack, lowest: int, resid: torch.Tensor, past: Cache | None
) -> torch.Tensor:
    """Run the model with the blocks below ``lowest`` passed through; the last position's
    logits (batch, vocab)."""
    for block in list(lm.blocks)[:lowest]:
        # An instance attribute shadows the class's forward. The block may have one already
        # (nnsight puts its own on every module it wraps): put that back afterwards.
        stack.callback(_put_back_forward, block, block.__dict__.get("forward"))
        block.forward = _pass_through
    out = lm.model.base_model(inputs_embeds=resid, past_key_values=past, use_cache=past is not None)
    final = out.last_hidden_state  # (batch, pos, d_model), after the final norm
    # Unembed only the last position, as a contiguous (batch, d_model) matrix: a strided
    # (batch, 1, d_model) slice (what logits_to_keep=1 gives) makes torch copy the whole
    # unembedding matrix once per row, which cost more than the transformer blocks here.
    return lm.unembed(final[:, -1].contiguous())


def _run_rows_from(
    lm: LabModel, starts: list[int], resid: torch.Tensor, past: Cache | None
) -> torch.Tensor:
    """run_from with a starting layer per row (see there): the batch grows block by block."""
    if len(starts) != resid.shape[0]:
        raise ValueError(
            f"run_from got {len(starts)} layers for {resid.shape[0]} rows: give one per row."
        )
    if any(not 0 <= s <= lm.n_layers for s in starts):
        raise IndexError(f"layers {starts} are not all in 0..{lm.n_layers} for run_from.")
    if starts != sorted(starts):
        raise ValueError("run_from's layers per row must not decrease: sort the rows by layer.")
    # entered[l]: how many rows have entered at or below layer l (they are the first ones).
    entered = [sum(s <= layer for s in starts) for layer in range(lm.n_layers + 1)]
    if past is not None:  # each layer's keys and values for the rows computed there
        # (at least one row: a skipped layer's cache still tells the model the prefix length)
        kept = [max(1, entered[i]) for i in range(len(past.layers))]
        past = DynamicCache(
            ddp_cache_data=[
                (cached.keys[: kept[i]], cached.values[: kept[i]])
                for i, cached in enumerate(past.layers)
            ]
        )

    def enter(layer: int):
        begin, end = (entered[layer - 1] if layer else 0), entered[layer]

        def grow(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = resid[begin:end]
            hidden = new if begin == 0 else torch.cat([hidden, new])  # (entered, pos, d)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return grow

    with ExitStack() as stack:
        targets = [*lm.blocks, lm.final_norm]
        for layer in sorted(set(starts)):
            # prepend: hooks opened earlier at this block (a resid_pre patch) see the new rows
            handle = targets[layer].register_forward_pre_hook(
                enter(layer), with_kwargs=True, prepend=True
            )
            stack.callback(handle.remove)
        return _finish(lm, stack, starts[0], resid[:1], past)
