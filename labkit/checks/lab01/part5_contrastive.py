"""Part 5: contrastive attribution. The logit difference as a function of the embeddings."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker
from labkit.checks.lab01 import problems as P
from labkit.checks.lab01.lab import EARLIER, LAB, PILED, earlier_answers, magnitude

NO_GRAD = (
    "Your function's output carries no gradient: do not run the model under torch.no_grad() "
    "(or inference_mode), and do not detach the embeddings. Integrated gradients "
    "differentiates this function."
)


LATEST = (
    "Your first function now answers with the target and foil of the function made LAST: keep "
    "each function's own arguments (a closure over them), not globals that the next call of "
    "logit_difference_fn overwrites."
)


def _pair(lm, gen: torch.Generator, ascending: bool) -> tuple[int, int]:
    """Two different token ids, the target first: the smaller one first if ``ascending``."""
    a, b = (int(i) + 3 for i in torch.randperm(lm.vocab_size - 3, generator=gen)[:2])
    return (min(a, b), max(a, b)) if ascending else (max(a, b), min(a, b))


def _batch(lm, gen: torch.Generator, batch: int, n_pos: int, jitter: bool = False):
    emb = P.embeddings(lm, kit.token_ids(lm, gen, n_pos, batch=batch))
    if jitter:  # embeddings of no token at all
        emb = emb + emb.std() * torch.randn(emb.shape, generator=gen)
    return emb


def _compare(t: Checker, made: list, calls: list, hint: str) -> None:
    """``made``: the student's functions with the (lm, target, foil) they were made from;
    ``calls``: (index into made, embeddings, what, repeat, more): ``more`` names mistakes of
    this call only, as (value, hint) pairs, or as a function of the expected value that
    gives them."""
    earlier = earlier_answers(t)
    for index, emb, what, repeat, more in calls:
        fn, (lm, target, foil) = made[index]
        want = t.expected("logit_difference", lm, target, foil, emb)
        more = more(want) if callable(more) else more
        named = t.mistakes("logit_difference", lm, target, foil, emb) + list(more)
        got = t.call(fn, emb)
        if repeat:
            named = named + [(2 * torch.as_tensor(want), PILED)]
        named = named + [(w, EARLIER) for w in list(earlier)]
        t.close(got, want, what, scale=magnitude(want), hint=hint, mistakes=named)
        earlier.append(want)


def _make(t: Checker, logit_difference_fn, lm, target: int, foil: int):
    fn = t.call(logit_difference_fn, lm, target, foil)
    t.true(
        callable(fn),
        f"logit_difference_fn(lm, {target}, {foil}) returns a function of the embeddings",
        "Define an inner function of the embeddings and return it (do not call it).",
    )
    return fn, (lm, target, foil)


# ----- Exercise 1.12 -----------------------------------------------------------------------------
@LAB.exercise("1.12", "contrastive logit difference", points=3)
def check_logit_difference_fn(logit_difference_fn, t: Checker) -> None:
    """Tiny models of three families, batches of 1 to 5 prompts of 1 to 11 positions, target and
    foil in either id order, embeddings of no token; functions made earlier keep their own
    model, target and foil; and gradients flow through the function."""
    hint = (
        "Return a function of the embeddings (batch, pos, d_model) giving logits[:, -1, target] "
        "- logits[:, -1, foil] from lm.model(inputs_embeds=embeddings): shape (batch,)."
    )
    gen = kit.generator(t, 14)
    first, second, third = kit.families(t, 3, first="gpt2")
    with t.part("three families, batches of several prompts, either id order", points=1):
        lms = [P.tiny(t, family) for family in (first, second, third)]
        made = [
            _make(t, logit_difference_fn, lm, *_pair(lm, gen, up))
            for lm, up in zip(lms, [True, False, t.choice([True, False])], strict=True)
        ]
        n_pos = t.choice([7, 6])
        embs = [
            _batch(lms[0], gen, 3, n_pos),
            _batch(lms[1], gen, 3, n_pos),
            _batch(lms[2], gen, 2, 1),
            _batch(lms[1], gen, 1, t.choice([11, 12])),
            _batch(lms[0], gen, 5, 4, jitter=True),
        ]
        _, (_, *ids) = made[-1]  # the target and foil of the function made last
        latest = [
            [(t.expected("logit_difference", lms[i], *ids, e), LATEST)] if i < 2 else []
            for i, e in zip([0, 1, 2, 1, 0], embs, strict=True)
        ]
        calls = [
            (0, embs[0], f"a tiny {first} model, a batch of 3 prompts of {n_pos} tokens"),
            (1, embs[1], f"a tiny {second} model (target id above the foil's), 3 prompts"),
            (2, embs[2], f"a tiny {third} model, 2 prompts of 1 token"),
            (1, embs[3], f"the {second} model's function, 1 prompt past 9 tokens"),
            (
                0,
                embs[4],
                f"the {first} model's function on 5 rows of embeddings that are no token's",
            ),
        ]
        calls = [(*call, False, more) for call, more in zip(calls, latest, strict=True)]
        calls.append(
            (0, embs[0], f"the {first} model's function on its first batch again", True, latest[0])
        )
        _compare(t, made, calls, hint)
    with t.part("functions made earlier keep their own model, target and foil", points=1):
        lm, other = P.tiny(t, second), P.tiny(t, first)
        target, foil = _pair(lm, gen, True)
        third_id = next(i for i in range(3, lm.vocab_size) if i not in (target, foil))
        made = [
            _make(t, logit_difference_fn, lm, target, foil),
            _make(t, logit_difference_fn, other, foil, target),
            _make(t, logit_difference_fn, lm, third_id, target),
        ]
        emb, emb2 = _batch(lm, gen, 2, 5), _batch(other, gen, 3, 8)
        latest = [(t.expected("logit_difference", lm, third_id, target, emb), LATEST)]
        calls = [
            (
                0,
                emb,
                f"the first function ({second}, target {target}, foil {foil}), made "
                "before two others",
                False,
                latest,
            ),
            (1, emb2, f"the second ({first}, target {foil}, foil {target})", False, ()),
            (2, emb, f"the third ({second}, target {third_id}, foil {target})", False, ()),
            (0, emb, "the first function again", True, latest),
        ]
        _compare(t, made, calls, hint)
    with t.part("gradients flow through it (integrated gradients needs them)", points=1):
        lm, offset = P.signalling_tiny(t, third)
        target, foil = _pair(lm, gen, False)
        made = [_make(t, logit_difference_fn, lm, target, foil)]
        emb = _batch(lm, gen, 2, 6).requires_grad_(True)
        shift = float(offset[target] - offset[foil])
        calls = [
            (
                0,
                emb,
                "the function on embeddings that require gradients",
                False,
                lambda want: [(want + shift, NO_GRAD)],
            )
        ]
        _compare(t, made, calls, hint)
