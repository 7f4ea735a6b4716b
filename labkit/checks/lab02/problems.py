"""Lab 02's test problems, built from the shared kit (:mod:`labkit.checks.kit`).

* :func:`model` -- a sharpened tiny model of any family and depth, watched by the check;
* :func:`families` -- two families whose modules sit at different paths (a Llama-like one and
  GPT-2 or GPT-NeoX), so that code written for one family's module names fails somewhere;
* :func:`prompt` -- random token ids: the anchor first, and tokens that occur twice;
* :func:`resid_at` -- a run's residual stream at a few (layer, position) cells: values to patch;
* :func:`substituted` -- a prompt's embeddings with a span replaced, in each sample, by the
  embeddings of other tokens: the corrupted input of a restoration grid (a corruption of its
  own, not exercise 2.4's noise);
* ``model(..., skewed=True)`` -- an embedding matrix whose columns and rows differ in size, so
  that its standard deviation differs from a prompt's and from the mean over its columns
  (:func:`doubled_bytes` puts a prompt in the rows it doubles);
* :func:`pick_target` -- a token much likelier in one run than in another, and the top token
  of neither;
* :func:`random_grids` -- restoration grids and subjects of prompts of different lengths.

Everything here builds inputs; no exercise's answer is computed here (that is ``t.expected``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.hooks import capture
from labkit.models import LabModel

__all__ = [
    "LLAMA_LIKE",
    "SHARP",
    "doubled_bytes",
    "families",
    "model",
    "pick_target",
    "prompt",
    "random_grids",
    "resid_at",
    "substituted",
]

# Weight matrices x25 at d_model 16: predictions are confident and depend on every input token,
# so a patch at the wrong place moves probabilities by far more than float error.
SHARP = {"scale": 25.0, "random_norms": True, "d_model": 16, "d_mlp": 32, "n_heads": 2}
LLAMA_LIKE = ("llama", "qwen2")  # same module paths (model.layers...)
_FIRST_BYTE, _N_BYTES = 3, 256  # the tiny tokenizer: 3 special tokens, then one per byte


def model(
    t: Checker, family: str, n_layers: int = 3, seed: int = 0, skewed: bool = False
) -> LabModel:
    """A sharpened tiny model of ``family`` with ``n_layers`` blocks, pristine (its embedding
    made uneven if ``skewed``: see :func:`_skew_embedding`), and watched by the check."""
    lm = kit.tiny(family, seed=seed, n_layers=n_layers, **SHARP)
    if skewed:
        _skew_embedding(lm)
    return t.watch(lm, f"the tiny {family} model ({n_layers} layers)")


def families(t: Checker) -> list[str]:
    """Two families with different module paths: Llama and GPT-2 in the notebook, a shuffled
    pair (one Llama-like, one not) in hidden variants."""
    order = kit.families(t, len(kit.FAMILIES))
    first = order[0]
    second = next(f for f in order[1:] if (f in LLAMA_LIKE) != (first in LLAMA_LIKE))
    return [first, second]


def prompt(
    lm: LabModel, gen: torch.Generator, n_pos: int, repeats: Sequence[tuple[int, int]] = ()
) -> Tensor:
    """Token ids (1, n_pos): the anchor, random bytes, the last token a repeat of the first
    byte, and ``tokens[p] = tokens[q]`` for each ``(p, q)`` in ``repeats``."""
    ids = kit.token_ids(lm, gen, n_pos)
    for p, q in repeats:
        ids[0, p] = ids[0, q]
    return ids


def resid_at(lm: LabModel, tokens: Tensor, cells: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The residual stream leaving block L at position p of a run of ``tokens`` (1, pos), one
    vector (d_model,) per cell (L, p) asked for."""
    layers = sorted({layer for layer, _ in cells})
    with torch.no_grad(), capture(lm, "resid_post", layers) as recorded:
        lm.model(input_ids=tokens)
    return [recorded["resid_post", layer][0, p].clone() for layer, p in cells]


def substituted(
    lm: LabModel, tokens: Tensor, span: Sequence[int], n_samples: int, gen: torch.Generator
) -> Tensor:
    """Embeddings (n_samples, pos, d_model) of ``tokens`` (1, pos) where, in each sample, the
    positions of ``span`` hold the embeddings of other tokens (each one differs from the
    prompt's own token there); every other position holds the prompt's own embedding."""
    span = list(span)
    with torch.no_grad():
        out = lm.embed(tokens).repeat(n_samples, 1, 1)
        own = tokens[0, span] - _FIRST_BYTE
        shift = torch.randint(1, _N_BYTES, (n_samples, len(span)), generator=gen)
        others = (own + shift) % _N_BYTES + _FIRST_BYTE  # never the prompt's own token
        out[:, span] = lm.embed(others)
    return out


def _skew_embedding(lm: LabModel) -> None:
    """Make ``lm``'s embedding matrix uneven, in place: columns scaled from 0.2 to 5 (in a fixed
    shuffled order), the rows of the first 64 bytes doubled, everything doubled again.

    The kit hands every model back pristine, so this lasts until the next ``kit.tiny`` call for
    the same model; it happens before the check watches the model.
    """
    weight = lm.embed.weight
    d_model = weight.shape[1]
    gen = torch.Generator().manual_seed(2024)
    columns = torch.logspace(-0.7, 0.7, d_model)[torch.randperm(d_model, generator=gen)]
    with torch.no_grad():
        weight.mul_(2.0 * columns)
        weight[_FIRST_BYTE : _FIRST_BYTE + 64] *= 2.0


def doubled_bytes(ids: Tensor) -> Tensor:
    """``ids`` with every byte token mapped into the first 64 bytes (the rows that
    :func:`_skew_embedding` doubles); special tokens are kept."""
    byte = ids >= _FIRST_BYTE
    return torch.where(byte, (ids - _FIRST_BYTE) % 64 + _FIRST_BYTE, ids)


def pick_target(lm: LabModel, high: dict[str, Tensor], low: dict[str, Tensor]) -> int:
    """The token whose probability drops most from the run ``high`` to the run ``low`` (its
    smallest probability in the rows of ``high`` minus its largest in the rows of ``low``),
    among the tokens that are no row's top prediction. ``high`` and ``low`` are the keyword
    inputs of forward passes (``{"input_ids": ...}`` or ``{"inputs_embeds": ...}``)."""
    with torch.no_grad():
        up, down = (lm.model(**run).logits[:, -1].double().softmax(-1) for run in (high, low))
    score = up.min(0).values - down.max(0).values
    score[torch.cat([up, down]).argmax(-1)] = -torch.inf
    return int(score.argmax())


def random_grids(
    gen: torch.Generator,
    n_layers: int,
    shapes: Sequence[tuple[int, int, int]],
    low: float = 0.0,
    high: float = 1.0,
) -> tuple[list[Tensor], list[list[int]]]:
    """Grids (n_layers, pos) with values in [low, high) and the subjects of prompts shaped
    ``(start, size, after)``: the anchor and ``start - 1`` tokens, a subject of ``size`` tokens
    from position ``start``, ``after`` tokens, then the last token."""
    grids, subjects = [], []
    for start, size, after in shapes:
        n_pos = start + size + after + 1
        grids.append(low + (high - low) * torch.rand(n_layers, n_pos, generator=gen))
        subjects.append(list(range(start, start + size)))
    return grids, subjects
