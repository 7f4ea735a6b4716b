"""The problems lab 03's checks are built from. Problem builders only: nothing here computes an
exercise's answer (the checks ask ``t.expected`` for those).

* :func:`model` -- a tiny sharpened model of any family and size, watched by the check;
* :func:`pair` -- clean and corrupted prompts that line up token by token, with targets and
  foils that are not the clean run's top token, in either id order;
* :class:`LinearMetric` -- a metric of the last position's logits, ``(logits * weights).sum() +
  offset``. The checks of exercises 3.2-3.10 pass one: either the normalised metric of a pair
  (its coefficients come from ``t.expected``) or a random one (a metric the spec leaves free);
* :func:`linear_model` -- a tiny model that is linear in every activation (no norms, a linear
  MLP, fixed uniform attention), on which attribution patching must be exact;
* :func:`agreement_scores`, :func:`noisy_scores`, :func:`ranked_scores` -- score tables
  without ties, for the validation exercises; :func:`attention_scores` for the QK fix;
* :func:`close_all`, :func:`whole`, :func:`pick` -- comparisons that name a known mistake only
  when it explains the whole answer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from labkit.checks import kit
from labkit.checks.core import Mistakes
from labkit.models import LabModel
from labkit.tiny import tiny_model

__all__ = [
    "SITES",
    "Answer",
    "LinearMetric",
    "Pair",
    "agreement_scores",
    "as_float64",
    "attention_scores",
    "close_all",
    "describe_model",
    "families",
    "float64",
    "heads_of",
    "kv_heads",
    "last_logits",
    "linear_model",
    "linear_problem",
    "model",
    "noisy_scores",
    "normalised",
    "pair",
    "pick",
    "random_metric",
    "ranked_scores",
    "retarget",
    "scale_of",
    "tie_free",
    "whole",
]

SITES = ("resid_pre", "attn_out", "mlp_out")  # the sites the lab patches per (layer, position)
SCALE = 6.0  # tiny models' weight matrices are scaled up this much: every shortcut shows
MODEL_SEEDS = 3  # hidden variants draw each model's weights from this many seeds
LINEAR_SCALE = 10.0  # the linear models' weight matrices are scaled up this much


# ----- metrics -----------------------------------------------------------------------------------
class LinearMetric(nn.Module):
    """A metric of the last position's logits: ``metric(logits (batch, vocab)) -> ()``, equal to
    ``(logits * weights).sum() + offset``. Differentiable, like the lab's normalised metric."""

    def __init__(self, weights: Tensor, offset: float | Tensor = 0.0) -> None:
        super().__init__()
        weights = torch.as_tensor(weights).detach().clone()
        offset = torch.as_tensor(offset, dtype=weights.dtype).detach().reshape(1).clone()
        self.register_buffer("weights", weights)
        self.register_buffer("offset", offset)  # (1,): the grader's fingerprints skip 0-d tensors
        self.label = "a linear metric"

    def forward(self, logits: Tensor) -> Tensor:
        return (logits * self.weights).sum() + self.offset[0]

    def extra_repr(self) -> str:
        batch, vocab = self.weights.shape
        return f"batch={batch}, vocab={vocab}"


def random_metric(gen: torch.Generator, batch: int, vocab: int) -> LinearMetric:
    """A metric the spec allows but that is not normalised: dense weights, an offset."""
    weights = torch.randn(batch, vocab, generator=gen) / vocab**0.5
    offset = 0.5 + torch.rand((), generator=gen)
    metric = LinearMetric(weights, offset)
    metric.label = "a metric that is not normalised"
    return metric


# ----- models ------------------------------------------------------------------------------------
def families(t, notebook: list[str]) -> list[str]:
    """The families of a check's problems: ``notebook`` in the notebook (chosen so that module
    paths differ), a shuffled draw of as many in hidden variants."""
    return list(notebook) if t.variant == 0 else kit.families(t, len(notebook))


def model(
    t,
    family: str,
    offset: int,
    *,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
) -> LabModel:
    """A tiny sharpened model (weights x6, norm weights far from 1), watched by the check.

    ``n_kv_heads`` (llama, qwen2) defaults to half the query heads: grouped-query attention.
    """
    seed = 0 if t.variant == 0 else t.seed(offset) % MODEL_SEEDS
    lm = kit.tiny(
        family,
        seed=seed,
        scale=SCALE,
        random_norms=True,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=8 * n_heads,
        d_mlp=16 * n_heads,
    )
    return t.watch(lm, f"the tiny {family} model")


def describe_model(lm: LabModel) -> str:
    kv = kv_heads(lm)
    heads = f"{lm.n_heads} heads" + (f" sharing {kv} key/value heads" if kv != lm.n_heads else "")
    return f"a tiny {lm.family} model ({lm.n_layers} layers, {heads})"


def kv_heads(lm: LabModel) -> int:
    return lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads


class _Ones(nn.Module):
    """An MLP "activation" that is 1 everywhere: a gated MLP becomes linear in its input."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)


@cache
def linear_model(
    family: str = "gpt2", seed: int = 0, n_layers: int = 3, scale: float = LINEAR_SCALE
) -> LabModel:
    """A tiny model that is *linear* in every activation: norms removed, a linear MLP, and query
    weights of 0, so that every attention pattern is uniform (fixed). Attribution patching is
    exact on it. ``family`` is "gpt2" or "llama"."""
    lm = tiny_model(family, seed=seed, n_layers=n_layers)
    net = lm.model
    with torch.no_grad():
        if family == "gpt2":
            net.transformer.ln_f = nn.Identity()
            for block in net.transformer.h:
                block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
                block.mlp.act = nn.Identity()
                block.attn.c_attn.weight[:, : lm.d_model] = 0.0  # queries are 0
                block.attn.c_attn.bias[: lm.d_model] = 0.0
        elif family == "llama":
            net.model.norm = nn.Identity()
            for block in net.model.layers:
                block.input_layernorm = nn.Identity()
                block.post_attention_layernorm = nn.Identity()
                block.mlp.act_fn = _Ones()  # down(1 * up(x))
                block.self_attn.q_proj.weight.zero_()
        else:
            raise ValueError(f"No linear model of the {family} family.")
        for name, param in net.named_parameters():
            if param.dim() == 2 and "wpe" not in name:
                param.mul_(scale)
    return lm


@cache
def float64(lm: LabModel) -> LabModel:
    """A float64 copy of ``lm`` (for expected values that float32 would blur)."""
    return LabModel(copy.deepcopy(lm.model).double(), lm.tokenizer, lm.name)


def last_logits(lm: LabModel, tokens: Tensor) -> Tensor:
    """The logits of the last position, (batch, vocab): a plain forward pass."""
    with torch.no_grad():
        return lm.model(tokens).logits[:, -1]


# ----- prompt pairs ------------------------------------------------------------------------------
@dataclass
class Pair:
    """A model, clean and corrupted tokens (batch, pos), and each row's target and foil id."""

    lm: LabModel
    clean: Tensor
    corrupted: Tensor
    targets: list[int] | Tensor
    foils: list[int] | Tensor

    @property
    def args(self) -> tuple:
        return (self.lm, self.clean, self.corrupted)

    @property
    def ids(self) -> tuple:
        return (self.lm, self.clean, self.corrupted, self.targets, self.foils)

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    @property
    def first_change(self) -> int:
        """The first position at which some row's clean and corrupted tokens differ."""
        return int((self.clean != self.corrupted).any(0).nonzero()[0])

    def describe(self) -> str:
        prompts = "1 prompt pair" if self.batch == 1 else f"{self.batch} prompt pairs"
        return f"{describe_model(self.lm)}, {prompts} of {self.n_pos} tokens"


def pair(
    t,
    lm: LabModel,
    offset: int,
    *,
    batch: int,
    n_pos: int,
    changes: int = 2,
    as_tensor: bool = False,
    keep_last: bool = False,
) -> Pair:
    """Random clean prompts (an anchor first, a repeated token last) and corrupted ones that
    differ at 1 to ``changes`` positions per row; with several rows, the first row's first
    change comes after another row's. Each row's target rises from the corrupted to the clean
    run and its foil falls; neither is the clean run's top token, and target ids are below
    their foils in some rows and above in others. With ``keep_last`` no row changes its last
    token (then every head's corrupted output makes the last position the corrupted run's)."""
    gen = kit.generator(t, offset)
    clean = kit.token_ids(lm, gen, n_pos, batch=batch)
    corrupted = clean.clone()
    earliest = n_pos - 1
    for row in [*range(1, batch), 0]:  # the first row last: its changes come after the others'
        low = 1 if row or batch == 1 else earliest + 1
        high = n_pos - 1 if (row == 0 or batch == 1) and not keep_last else n_pos - 2
        low = min(low, high)
        count = min(1 + int(torch.randint(changes, (), generator=gen)), high - low + 1)
        where = low + torch.randperm(high - low + 1, generator=gen)[:count]
        shift = torch.randint(1, 256, (count,), generator=gen)
        corrupted[row, where] = (clean[row, where] - 3 + shift) % 256 + 3
        earliest = min(earliest, int(where.min()))
    targets, foils = _contrast(lm, clean, corrupted, gen)
    if as_tensor:
        targets, foils = torch.tensor(targets), torch.tensor(foils)
    return Pair(lm, clean, corrupted, targets, foils)


def retarget(t, p: Pair, offset: int, *, as_tensor: bool = False) -> Pair:
    """The same prompts with other targets and foils (chosen as :func:`pair` chooses them)."""
    gen = kit.generator(t, offset)
    ids = torch.as_tensor(p.targets).tolist(), torch.as_tensor(p.foils).tolist()
    before = list(zip(*ids, strict=True))
    targets, foils = _contrast(p.lm, p.clean, p.corrupted, gen, avoid=before)
    if as_tensor:
        targets, foils = torch.tensor(targets), torch.tensor(foils)
    return Pair(p.lm, p.clean, p.corrupted, targets, foils)


def _contrast(lm: LabModel, clean: Tensor, corrupted: Tensor, gen, avoid=()) -> tuple[list, list]:
    """Per row, a token whose logit rises most from the corrupted to the clean run (the target)
    and one whose logit falls most (the foil), never the clean run's top token (nor the pair
    ``avoid[row]``)."""
    high, low = last_logits(lm, clean), last_logits(lm, corrupted)
    rise = high - low
    targets, foils = [], []
    below = bool(torch.randint(2, (), generator=gen))  # row 0: target id below the foil's?
    for row in range(clean.shape[0]):
        top = int(high[row].argmax())
        order = [i for i in rise[row].argsort(descending=True).tolist() if i != top]
        ups, downs = order[:6], order[-6:]
        taken = avoid[row] if avoid else None
        options = [(u, d) for u in ups for d in downs if (u < d) == below and (u, d) != taken]
        options = options or [(u, d) for u in ups for d in downs if (u, d) != taken]
        u, d = options[int(torch.randint(len(options), (), generator=gen))]
        targets.append(u)
        foils.append(d)
        below = not below
    return targets, foils


def heads_of(t, lm: LabModel, offset: int, count: int, *, repeat: bool = False) -> list:
    """``count`` different (layer, head) pairs of ``lm`` in no sorted order (the first pair's
    layer above the second's, and at least two heads of one layer when there are enough), as
    plain ints; with ``repeat``, the first pair once more at the end."""
    gen = kit.generator(t, offset)
    every = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    order = torch.randperm(len(every), generator=gen).tolist()
    chosen = [every[i] for i in order[:count]]
    if count >= 3 and len({layer for layer, _ in chosen}) == count and lm.n_heads > 1:
        layer, head = chosen[0]
        chosen[-1] = (
            layer,
            (head + 1 + int(torch.randint(lm.n_heads - 1, (), generator=gen))) % lm.n_heads,
        )  # two heads of one layer
    if count >= 2 and chosen[0][0] < chosen[1][0]:
        chosen[0], chosen[1] = chosen[1], chosen[0]  # not sorted by layer
    return chosen + chosen[:1] if repeat else chosen


# ----- score tables (exercises 3.7 to 3.9) -------------------------------------------------------
def tie_free(values: Tensor) -> bool:
    """No two values equal, no two of the same size, and none 0: the lab assumes no ties."""
    flat = values.flatten()
    n = flat.numel()
    return bool(
        flat.unique().numel() == n and flat.abs().unique().numel() == n and (flat != 0).all()
    )


def _heavy(gen: torch.Generator, shape, size: float) -> Tensor:
    """Heavy-tailed values in (-size, size), all different (a strictly monotone map of
    normal draws)."""
    return size * torch.tanh(torch.randn(shape, generator=gen)) ** 3


def agreement_scores(seed: int) -> tuple[Tensor, Tensor]:
    """A 5 x 6 grid of exact effects and an estimate, without ties, on which the shortcuts of
    the agreement exercise give other numbers than the definitions:

    * six large negative effects lead by size. The estimate misses the largest (close to 0)
      and raises a false alarm (-10 on a small effect) instead: the top-k recall (k from 4 to
      6) is (k - 1) / k by size, less by signed value;
    * the two largest positive effects are estimated with the wrong sign;
    * the estimate is offset by +1, so a line through the origin has another slope.
    """
    gen = torch.Generator().manual_seed(seed)
    roles = torch.randperm(30, generator=gen)
    large, missed, false_alarm, flipped = roles[:5], roles[5], roles[6], roles[7:9]
    size = 6.0 + torch.arange(6.0) + 0.5 * torch.rand(6, generator=gen)  # distinct, 6 to 11.5
    for _ in range(100):
        exact = _heavy(gen, 30, 2.7)
        estimate = 0.6 * exact + _heavy(gen, 30, 0.5)
        exact[large], estimate[large] = -size[:5], -0.8 * size[:5]
        exact[missed], estimate[missed] = -size[5], 0.1 * torch.rand((), generator=gen)
        exact[false_alarm], estimate[false_alarm] = -0.5 * torch.rand((), generator=gen), -11.0
        exact[flipped] = torch.tensor([4.0, 3.5]) + 0.3 * torch.rand(2, generator=gen)
        estimate[flipped] = -0.5 * exact[flipped]
        estimate = estimate + 1.0
        if tie_free(exact) and tie_free(estimate):
            break
    return estimate.view(5, 6), exact.view(5, 6)


def noisy_scores(seed: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Exact effects with a few large ones of either sign, and a noisy, shrunk estimate of them
    that gets some signs wrong; no ties."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(100):
        exact = _heavy(gen, shape, 3.0)
        exact = exact + torch.sign(exact) * 2.0 * (torch.rand(shape, generator=gen) < 0.2)
        estimate = 0.7 * exact + _heavy(gen, shape, 1.2) - 0.3
        if tie_free(exact) and tie_free(estimate):
            break
    return estimate, exact


# Estimate rank (1 = largest |estimate|) of each of the exact top-10 components, largest first,
# and the ranks taken by false alarms (small effects with large estimates). The answer for a
# k is the largest of the first k ranks: never k, and different for every k.
FIND_RANKS = (3, 2, 4, 5, 7, 8, 9, 11, 13, 16)
FIND_ALARMS = (1, 6, 10, 12, 14, 15)
# For agreement's default k: 7 of the exact top-10 are in the estimate's top-10, and the top-k
# recall of every other k from 1 to 9 is another number than 0.7.
AGREE_RANKS = (1, 3, 4, 6, 8, 9, 10, 12, 15, 17)
AGREE_ALARMS = (2, 5, 7, 11, 13, 14, 16)


def ranked_scores(
    seed: int,
    shape: tuple[int, ...],
    ranks: tuple[int, ...] = FIND_RANKS,
    alarms: tuple[int, ...] = FIND_ALARMS,
    negative_alarm: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact effects and an estimate in which the exact top components (by size, largest
    first) have the estimate ranks ``ranks``, and false alarms (small effects) take the ranks
    ``alarms``. The largest and the fifth largest effects are negative (and so are their
    estimates), and so is the first false alarm's estimate if ``negative_alarm``: ordering by
    signed value, or taking the top-k by signed value, gives other answers. Everything else is
    small. No ties."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod())
    depth = len(ranks) + len(alarms)
    roles = torch.randperm(n, generator=gen).tolist()
    top, false = roles[: len(ranks)], roles[len(ranks) : depth]
    level = 4.0 + depth - torch.arange(float(depth)) + 0.4 * torch.rand(depth, generator=gen)
    for _ in range(100):
        exact = _heavy(gen, n, 1.7)
        estimate = exact + _heavy(gen, n, 1.5)  # |estimate| < 3.2 < every level
        for i, cell in enumerate(top):
            sign = -1.0 if i in (0, 4) else 1.0
            exact[cell] = sign * (4.0 + len(ranks) - i + 0.4 * torch.rand((), generator=gen))
            estimate[cell] = sign * level[ranks[i] - 1]
        for j, (cell, rank) in enumerate(zip(false, alarms, strict=True)):
            exact[cell] = -0.2 * torch.rand((), generator=gen)
            estimate[cell] = (-1.0 if j == 0 and negative_alarm else 1.0) * level[rank - 1]
        if tie_free(exact) and tie_free(estimate):
            break
    return estimate.view(shape), exact.view(shape)


def attention_scores(
    seed: int, lead: tuple[int, ...], n_queries: int, n_keys: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Saturated attention scores (..., queries, keys) of a clean and a corrupted run, and a
    gradient with respect to the pattern. The queries are the last ``n_queries`` positions, so
    each may attend to the keys up to its own position; the others are -inf."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, n_queries, n_keys)
    corrupted = 12.0 * torch.randn(shape, generator=gen)  # a saturated softmax
    clean = corrupted + 6.0 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    masked = ~torch.ones(n_queries, n_keys, dtype=torch.bool).tril(n_keys - n_queries)
    return (
        clean.masked_fill(masked, float("-inf")),
        corrupted.masked_fill(masked, float("-inf")),
        grad.masked_fill(masked, 0.0),
    )


# ----- metrics of pairs, and comparing -----------------------------------------------------------
def normalised(t, p: Pair) -> LinearMetric:
    """The pair's normalised metric (1 on its clean run, 0 on its corrupted run) as a
    :class:`LinearMetric`; its coefficients come from ``t.expected``."""
    weights, offset = t.expected("normalised_metric@coefficients", *p.ids)
    metric = LinearMetric(weights, offset)
    metric.label = "the normalised metric"
    return metric


def as_float64(metric: LinearMetric) -> LinearMetric:
    double = LinearMetric(metric.weights.double(), metric.offset.double())
    double.label = metric.label
    return double


def linear_problem(t, offset: int) -> tuple[Pair, LinearMetric, LabModel]:
    """A pair on a model that is linear in its activations, its normalised metric, and the
    model in float64 (for exact patching, which float32 would blur)."""
    family = t.choice(["gpt2", "llama"])
    lin = t.watch(linear_model(family), f"the linear {family} model")
    p = pair(t, lin, offset, batch=2, n_pos=t.choice([6, 5, 8]))
    return p, normalised(t, p), float64(lin)


def scale_of(x: Tensor) -> float:
    """The typical size of ``x``, for tolerances that follow the values' magnitude."""
    return max(float(torch.as_tensor(x).abs().max()), 1e-3)


def pick(mistakes, index) -> Mistakes:
    """The mistakes of a function that returns a pair or a dict, for one of its items."""

    def make() -> list:
        found = []
        for value, hint in mistakes:
            try:
                found.append((value[index], hint))
            except (KeyError, IndexError, TypeError):
                continue
        return found

    return Mistakes(make)


@dataclass
class Answer:
    """One comparison of :func:`close_all`: an answer, its expected value and its mistakes."""

    got: Any
    want: Any
    what: str
    mistakes: Any = ()  # (wrong value, hint) pairs
    atol: float = 1e-4


def _agree(got: Any, value: Any, atol: float) -> bool:
    try:
        a, b = torch.as_tensor(got).double(), torch.as_tensor(value).double()
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.isclose(a, b, atol=atol, rtol=1e-3).all())


def whole(mistakes, got: Tensor, cells, atol: float, rtol: float = 1e-3) -> Mistakes:
    """The known mistakes that match the whole answer ``got``, shown on a part of it."""

    def make() -> list:
        return [
            (torch.as_tensor(v)[cells], h)
            for v, h in mistakes
            if torch.as_tensor(v).shape == got.shape
            and torch.isclose(got.double(), torch.as_tensor(v).double(), atol=atol, rtol=rtol).all()
        ]

    return Mistakes(make)


def close_all(t, answers: list[Answer]) -> None:
    """Compare several answers in order, as ``t.close`` does; but a known mistake is named
    only if it explains every answer it applies to. (On one problem two mistakes can give the
    same number; across all of them, only the one that was made fits.)"""

    def fits(hint: str) -> bool:
        for answer in answers:
            values = [v for v, h in answer.mistakes if h == hint]
            if values and not any(_agree(answer.got, v, answer.atol) for v in values):
                return False
        return True

    for answer in answers:
        named = Mistakes(lambda a=answer: [(v, h) for v, h in a.mistakes if fits(h)])
        t.close(answer.got, answer.want, answer.what, atol=answer.atol, mistakes=named)
