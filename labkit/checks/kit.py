"""The problem kit every lab's checks build their problems from.

* :func:`tiny` -- a tiny model of any family and size, *sharpened*: its weight matrices scaled
  up (``scale``) so that it depends strongly on its input, and optionally with norm weights far
  from 1 (``random_norms``), so that a shortcut (a gradient at the wrong run, a patch at the
  wrong place, a norm left out) gives a visibly different answer. Models are cached, and every
  call hands the model back pristine: its original weights, no hooks, frozen, no gradients.
* :func:`generator` -- a ``torch.Generator`` seeded for this check, part and variant.
* :func:`token_ids` -- random token ids, with repeats and an anchor where asked.
* :func:`families` -- which model families a check covers: several in the notebook's own
  problems, shuffled in hidden variants.

The kit builds inputs only: it never computes an exercise's answer (that is ``t.expected``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from labkit.checks.guards import hook_keys
from labkit.models import LabModel
from labkit.tiny import TINY_FAMILIES, tiny_model

__all__ = ["FAMILIES", "TinySpec", "families", "generator", "tiny", "token_ids"]

FAMILIES = TINY_FAMILIES  # ("llama", "qwen2", "gpt2", "gpt_neox")


@dataclass(frozen=True)
class TinySpec:
    """Everything that makes one tiny model: family, weights and sizes."""

    family: str = "llama"
    seed: int = 0
    scale: float = 1.0  # weight matrices (not position embeddings) are multiplied by this
    random_norms: bool = False  # norm weights drawn from [0.5, 1.5) instead of 1
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: half the query heads (grouped-query attention)
    d_model: int = 32
    d_mlp: int = 64


@cache
def _build(spec: TinySpec) -> tuple[LabModel, dict[str, Tensor], set]:
    lm = tiny_model(
        spec.family,
        seed=spec.seed,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        d_model=spec.d_model,
        d_mlp=spec.d_mlp,
    )
    gen = torch.Generator().manual_seed(10_007 * spec.seed + 1)
    with torch.no_grad():
        for name, param in sorted(lm.model.named_parameters()):
            if param.dim() == 2 and "wpe" not in name:
                param.mul_(spec.scale)
            elif spec.random_norms and ("norm" in name or ".ln_" in name) and "weight" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    pristine = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    return lm, pristine, hook_keys(lm.model)


def tiny(family: str = "llama", **settings) -> LabModel:
    """A sharpened tiny model (see :class:`TinySpec` for the settings), pristine.

    The same settings give the same model object, put back as it was built: a check that
    changed it, or a student's function that left a hook on it, affects nobody after.
    """
    spec = TinySpec(family, **settings)
    lm, pristine, hooks = _build(spec)
    net = lm.model
    extra = hook_keys(net) - hooks  # a check's or a student's (transformers' own stay: it
    # installs its output capturing once and counts on it)
    if extra:
        modules = dict(net.named_modules())
        for name, kind, key in extra:
            getattr(modules[name], kind).pop(key, None)
            for more in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                         "_forward_pre_hooks_with_kwargs"):  # fmt: skip
                getattr(modules[name], more, {}).pop(key, None)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if not torch.equal(value, pristine[name]):
                value.copy_(pristine[name])
    for param in net.parameters():
        param.requires_grad_(False)
        param.grad = None
    net.eval()
    return lm


def generator(t, offset: int) -> torch.Generator:
    """A generator for one problem of a check: ``offset`` tells the problems apart, the
    variant (hidden when grading) the runs."""
    return torch.Generator().manual_seed(t.seed(offset))


def families(t, count: int = 2, first: str = "llama") -> list[str]:
    """``count`` different families: ``first`` and the next ones in the notebook, a shuffled
    draw in hidden variants (so code written for one family's module names fails somewhere)."""
    if t.variant == 0:
        rest = [f for f in FAMILIES if f != first]
        return [first, *rest][:count]
    order = list(FAMILIES)
    t._rng.shuffle(order)
    return order[:count]


def token_ids(
    lm: LabModel,
    gen: torch.Generator,
    n_pos: int,
    *,
    batch: int = 1,
    anchor: bool = True,
    repeat: bool = True,
) -> Tensor:
    """Random byte tokens (batch, n_pos): the anchor token first if ``anchor``, and, if
    ``repeat``, the last position a repeat of an earlier token (a token that occurs twice)."""
    low = 3  # the tiny tokenizer's 3 special tokens come first
    ids = torch.randint(low, low + 256, (batch, n_pos), generator=gen)
    if anchor:
        ids[:, 0] = lm.tokenizer.bos_token_id
    if repeat and n_pos >= 3:
        start = 1 if anchor else 0
        ids[:, -1] = ids[:, start]
    return ids
