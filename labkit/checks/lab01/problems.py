"""The problems lab 01's checks are made of: functions of embeddings, token scorers, attention
patterns and modules to randomise.

Everything here builds *inputs*; nothing computes an exercise's answer. Every callable problem is
an ``nn.Module`` defined at module level, with everything that decides its output in its state
(buffers or submodules, never 0-dimensional: the grader fingerprints inputs by their bytes), so
it can be sent to the grader's worker and fingerprinted by its state. A check builds it, the
student's function uses it, and the reference gets the same object.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from labkit.checks import kit
from labkit.models import LabModel

SCALE = 4.0  # sharpened tiny models: their logits depend strongly on the input


def tiny(t, family: str, seed: int = 1, **sizes) -> LabModel:
    """A sharpened tiny model with norm weights far from 1, watched during the check."""
    lm = kit.tiny(family, seed=seed, scale=SCALE, random_norms=True, **sizes)
    return t.watch(lm, f"the tiny {family} test model")


# ----- functions of the embeddings: (batch, pos, d) -> (batch,) -----------------------------------
class Smooth(nn.Module):
    """f(e) = sum_p c_p softplus(2 <w_p, e_p>) + 2 tanh(<u, e>).

    Not a polynomial and not additive over positions: its gradient changes from point to point,
    a first-order estimate is not the true change, and no quadrature rule is exact on it.
    """

    def __init__(self, w: Tensor, u: Tensor, c: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("u", u)
        self.register_buffer("c", c)

    def forward(self, e: Tensor) -> Tensor:
        a = (e * self.w).sum(-1)  # (batch, pos)
        return (self.c * nn.functional.softplus(2 * a)).sum(-1) + 2 * torch.tanh(
            (e * self.u).sum((1, 2))
        )


class Wavy(nn.Module):
    """f(e) = sum_p c_p sin(<w_p, e_p>): many oscillations along a long path, so integrals
    with different numbers of steps differ."""

    def __init__(self, w: Tensor, c: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("c", c)

    def forward(self, e: Tensor) -> Tensor:
        return (self.c * torch.sin((e * self.w).sum(-1))).sum(-1)


class Quadratic(nn.Module):
    """f(e) = sum(w * e**2): homogeneous of degree 2."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, e: Tensor) -> Tensor:
        return (self.w * e**2).sum((1, 2))


class Linear(nn.Module):
    """f(e) = sum(w * e) + bias: linear in the embeddings (homogeneous when bias is 0)."""

    def __init__(self, w: Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("bias", torch.tensor([float(bias)], dtype=w.dtype))

    def forward(self, e: Tensor) -> Tensor:
        return (self.w * e).sum((1, 2)) + self.bias[0]


class Scaled(nn.Module):
    """factor * f(e)."""

    def __init__(self, f: nn.Module, factor: float) -> None:
        super().__init__()
        self.f = f
        self.register_buffer("factor", torch.tensor([float(factor)]))

    def forward(self, e: Tensor) -> Tensor:
        return self.factor[0] * self.f(e)


class TokenLogit(nn.Module):
    """One token's logit at the last position of a tiny model, from embeddings."""

    def __init__(self, lm: LabModel, target: int) -> None:
        super().__init__()
        self.net = lm.model
        self.register_buffer("target", torch.tensor([int(target)]))

    def forward(self, e: Tensor) -> Tensor:
        return self.net(inputs_embeds=e, logits_to_keep=1).logits[:, -1, self.target[0]]


def smooth(gen: torch.Generator, n_pos: int, d: int) -> tuple[Smooth, Tensor]:
    """A smooth function of (batch, n_pos, d) embeddings, and an input (1, n_pos, d)."""
    w = torch.randn(n_pos, d, generator=gen)
    u = 0.5 * torch.randn(n_pos, d, generator=gen)
    c = torch.randn(n_pos, generator=gen)
    return Smooth(w, u, c), 1.5 * torch.randn(1, n_pos, d, generator=gen)


def wavy(gen: torch.Generator, n_pos: int, d: int, phase: float = 12.0):
    """A :class:`Wavy` f, an input and a baseline whose path crosses about ``phase`` radians
    at every position: (f, x, b)."""
    f = Wavy(torch.randn(n_pos, d, generator=gen), 1 + torch.rand(n_pos, generator=gen))
    x = torch.randn(1, n_pos, d, generator=gen)
    x = x * (phase / (f.w * x).sum(-1).abs().clamp_min(0.5))[..., None]  # |<w_p, x_p>| = phase
    return f, x, 0.1 * torch.randn(1, n_pos, d, generator=gen)


def embeddings(lm: LabModel, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return lm.embed(ids).detach().clone()


def other_target(lm: LabModel, ids: Tensor, gen: torch.Generator, avoid: int = -1) -> int:
    """A token id that is not the model's top prediction after ``ids`` (first row), nor
    ``avoid``."""
    with torch.no_grad():
        top = int(lm.model(input_ids=ids[:1], logits_to_keep=1).logits[0, -1].argmax())
    while True:
        target = int(torch.randint(3, lm.vocab_size, (1,), generator=gen))
        if target not in (top, avoid):
            return target


def token_logit(t, family: str, gen: torch.Generator, n_pos: int, **sizes):
    """(f, embeddings, baseline): a tiny model's logit of a token that is not its top
    prediction; the embeddings (1, n_pos, d_model) of random tokens (anchor first, a repeated
    token); and the embeddings of other random tokens with the same first token."""
    lm = tiny(t, family, **sizes)
    ids = kit.token_ids(lm, gen, n_pos)
    f = t.watch(TokenLogit(lm, other_target(lm, ids, gen)), "the test function")
    return f, embeddings(lm, ids), other_prompt(lm, ids, gen)


def other_prompt(lm: LabModel, ids: Tensor, gen: torch.Generator) -> Tensor:
    """Embeddings of other random tokens with the same first token (a baseline to integrate
    from): (1, pos, d_model)."""
    other = kit.token_ids(lm, gen, ids.shape[1], anchor=False, repeat=False)
    other[:, 0] = ids[:, 0]
    return embeddings(lm, other)


# ----- token scorers: ids (batch, pos) -> (batch,) ------------------------------------------------
class Scorer(nn.Module):
    """A nonlinear, position-aware score of token ids, with interactions between tokens.

    Token ``v`` at position ``p`` adds ``P[p] * E[v]`` to h (3 numbers), and the score is
    ``h_0 + 2 tanh(h_1) + 0.5 h_2**2``: replacing two tokens together is not the sum of
    replacing each, and deleting a token (shifting the rest) changes every later term. A
    position whose row of P is zero does not matter at all.
    """

    def __init__(self, emb: Tensor, pos: Tensor) -> None:
        super().__init__()
        self.register_buffer("emb", emb)
        self.register_buffer("pos", pos)

    def forward(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise ValueError(f"score() takes token ids (batch, pos), got shape {tuple(ids.shape)}")
        h = (self.pos[: ids.shape[1]] * self.emb[ids.cpu()]).sum(1)  # (batch, 3)
        return (h[:, 0] + 2 * torch.tanh(h[:, 1]) + 0.5 * h[:, 2] ** 2).to(ids.device)


class TinyScore(nn.Module):
    """A tiny model's logit of one token at the last position, from token ids (no gradients)."""

    def __init__(self, lm: LabModel, target: int) -> None:
        super().__init__()
        self.net = lm.model
        self.register_buffer("target", torch.tensor([int(target)]))

    def forward(self, ids: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(input_ids=ids, logits_to_keep=1).logits[:, -1, self.target[0]]


VOCAB = 40  # the scorer's vocabulary: ids 0..39


def scorer(t, gen: torch.Generator, max_pos: int = 16, dead: tuple[int, ...] = ()) -> Scorer:
    """A watched :class:`Scorer`; positions in ``dead`` do not matter to it."""
    pos = 0.5 + torch.rand(max_pos, 3, generator=gen)
    pos[list(dead)] = 0.0
    return t.watch(Scorer(torch.randn(VOCAB, 3, generator=gen), pos), "the test score")


def scorer_ids(gen: torch.Generator, n_pos: int, repeat: bool = True) -> Tensor:
    """(1, n_pos) ids for :class:`Scorer`, distinct except the last, a repeat of the first."""
    ids = torch.randperm(VOCAB - 1, generator=gen)[:n_pos][None] + 1
    if repeat and n_pos >= 3:
        ids[0, -1] = ids[0, 0]
    return ids


def tiny_score(t, family: str, gen: torch.Generator, n_pos: int) -> tuple[TinyScore, Tensor]:
    """(score, tokens): a tiny model's logit of a token that is not its top prediction."""
    lm = tiny(t, family)
    ids = kit.token_ids(lm, gen, n_pos)
    return t.watch(TinyScore(lm, other_target(lm, ids, gen)), "the test score"), ids


def unsorted(gen: torch.Generator, positions: list[int], length: int, keep=()) -> Tensor:
    """``length`` of ``positions`` (always those in ``keep``) in an order that is not sorted
    (when it can be)."""
    rest = [p for p in positions if p not in keep]
    rest = [rest[i] for i in torch.randperm(len(rest), generator=gen)[: length - len(keep)]]
    chosen = torch.tensor([*keep, *rest])
    while True:
        pick = chosen[torch.randperm(len(chosen), generator=gen)]
        if length < 2 or not bool((pick.diff() > 0).all()):
            return pick


# ----- attention patterns (n_layers, n_heads, pos, pos) -------------------------------------------
def random_patterns(
    gen: torch.Generator, n_layers: int, n_heads: int, n_pos: int, dtype=torch.float32
) -> Tensor:
    """Causal patterns whose heads differ a lot; rows sum to one."""
    temperature = torch.rand(n_layers, n_heads, 1, 1, generator=gen) * 3 + 0.3
    scores = torch.randn(n_layers, n_heads, n_pos, n_pos, generator=gen) * temperature
    mask = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1).to(dtype)


def model_patterns(family: str, gen: torch.Generator, n_pos: int, **sizes) -> Tensor:
    """A tiny model's attention patterns for random tokens: (n_layers, n_heads, pos, pos).
    Its weights are scaled up more than the other problems' so that heads differ. (Asking for
    attentions leaves transformers' own hooks on a model, which can then no longer be sent to
    a grading worker: this model is never sent.)"""
    lm = kit.tiny(family, seed=3, scale=10.0, random_norms=True, **sizes)
    ids = kit.token_ids(lm, gen, n_pos)
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_attentions=True, logits_to_keep=1)
    return torch.stack(out.attentions)[:, 0].detach().clone()


def without_sink(patterns: Tensor) -> Tensor:
    """The patterns with the first column zeroed below row 0: rows sum to less than one."""
    out = patterns.clone()
    out[..., 1:, 0] = 0.0
    return out


# ----- gradients must flow ------------------------------------------------------------------------
class NoGradSignal:
    """A forward hook on a model's unembedding: when its output carries no gradient (a forward
    pass under ``torch.no_grad()``, or from detached embeddings), ``offset`` is added to the
    logits, so the answer shows it."""

    def __init__(self, offset: Tensor) -> None:
        self.offset = offset

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if isinstance(output, Tensor) and not output.requires_grad:
            return output + self.offset.to(output.device, output.dtype)
        return None


def signalling_tiny(t, family: str) -> tuple[LabModel, Tensor]:
    """A tiny model (used by no other check) whose logits move by an offset when computed
    without gradients; returns it and the offset (vocab,). The offset is the same in every
    variant: a grading worker keeps the copy of the model it was sent first."""
    lm = kit.tiny(family, seed=90_001, scale=SCALE, random_norms=True)
    offset = 50.0 * torch.randn(lm.vocab_size, generator=torch.Generator().manual_seed(90_001))
    lm.unembed.register_forward_hook(NoGradSignal(offset))
    return t.watch(lm, f"the tiny {family} test model"), offset


# ----- modules to randomise -----------------------------------------------------------------------
class Gain(nn.Module):
    """A module with a bare parameter (not a Linear, not a norm)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(size))


class Assorted(nn.Module):
    """Parameters of every kind, nested, with means and spreads of their own. One weight's
    rows and another's columns have means of their own too (so statistics taken per row or per
    column keep a trace of the old values)."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.rows = nn.Linear(32, 64)
        self.inner = nn.Sequential(nn.LayerNorm(64), nn.Sequential(nn.Linear(64, 32), Gain(6)))
        self.table = nn.Embedding(12, 5)
        structured = {"rows.weight": (64, 1), "inner.1.0.weight": (1, 64)}
        with torch.no_grad():
            for i, (name, p) in enumerate(sorted(self.named_parameters())):
                center = 2.0 * float(torch.randn(1, generator=gen)) + (i % 3 - 1)
                if name in structured:  # rows (or columns) with means of their own
                    offsets = 0.7 * torch.randn(structured[name], generator=gen)
                    p.copy_(center + offsets + torch.randn(p.shape, generator=gen))
                else:
                    spread = 0.1 + 0.5 * float(torch.rand(1, generator=gen))
                    p.copy_(center + spread * torch.randn(p.shape, generator=gen))
        self.requires_grad_(False)


def modules_to_randomise(gen: torch.Generator, family: str) -> list[nn.Module]:
    """An :class:`Assorted` module and a copy of a tiny model's block, frozen like
    ``load_model()``'s. Fresh objects, nobody else's."""
    block = copy.deepcopy(kit.tiny(family, seed=2, scale=SCALE, random_norms=True).blocks[0])
    block.requires_grad_(False)
    return [Assorted(gen), block]
