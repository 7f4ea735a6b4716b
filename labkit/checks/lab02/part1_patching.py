"""Part 1 of lab 02, activation patching: exercises 2.1 (collect activations), 2.2 (patch one
position) and 2.3 (cross-context patching at every layer)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from labkit.checks import kit
from labkit.checks.core import Checker, Mistakes
from labkit.checks.lab02 import problems
from labkit.checks.lab02.lab import LAB

SITES = ("resid_post", "mlp_out", "attn_out")
# Tolerances: float32 runs of 13 sharpened layers differ from float64 ones by up to 5e-4 (of the
# activations' largest size, of a probability, of a log-probability); these allow 4x that.
_ACTS = {"atol": 2e-3, "rtol": 1e-3}  # atol x the largest activation
_PROBS = {"atol": 1e-5, "rtol": 2e-3}
_LOG_PROBS = {"atol": 2e-3, "rtol": 1e-4}


def _shown(lm, tokens: Tensor) -> str:
    return f"a tiny {lm.family} model with {lm.n_layers} layers, {tokens.shape[1]} tokens"


# ----- 2.1 ---------------------------------------------------------------------------------------
@LAB.exercise("2.1", "collect activations", points=4)
def check_collect_activations(collect_activations: Callable, t: Checker) -> None:
    """Every site, on two families, 1 to 13 layers and prompts of 2 to 14 tokens; the same
    sizes again with other weights and another prompt; the sites must add up."""
    first, second = problems.families(t)
    deep, shallow = t.choice((11, 12, 13)), t.choice((2, 1, 3))
    long, short = t.choice((12, 10, 14)), t.choice((3, 2, 4))
    seed = t.choice((0, 1, 2, 3))
    gen = kit.generator(t, 1)
    a = problems.model(t, first, deep, seed)
    b = problems.model(t, second, shallow, seed)
    c = problems.model(t, first, deep, seed + 1)  # the sizes of `a`, other weights
    tokens = problems.prompt(a, gen, long, repeats=[(long // 2, 2)])
    other = problems.prompt(a, gen, long)  # the length of `tokens`, other tokens
    runs = [
        (a, tokens, ""),
        (b, problems.prompt(b, gen, short), ""),
        (c, tokens, " (the sizes and prompt of the first model, other weights)"),
        (a, other, " (the first model, another prompt of the same length)"),
        (a, tokens, " (the first call again, after others)"),
    ]

    for site in SITES:
        with t.part(f"{site} of every layer", points=1):
            for i, (lm, ids, note) in enumerate(runs):
                default = site == "resid_post" and i == 0  # the default site, not named
                args = (lm, ids) if default else (lm, ids, site)
                call = f"collect_activations(lm, tokens{'' if default else f', {site!r}'})"
                what = f"{call} on {_shown(lm, ids)}{note}"
                want = t.expected("collect_activations", *args)
                wrong = t.mistakes("collect_activations", *args)
                got = t.tensor(
                    t.call(collect_activations, *args),
                    what,
                    shape=tuple(want.shape),
                    hint="One row per layer, for the single prompt: (n_layers, pos, d_model). "
                    "output_hidden_states has n_layers + 1 entries (the embedding first), and a "
                    "cache has a batch dimension.",
                )
                t.close(
                    got,
                    want,
                    what,
                    **_ACTS,
                    scale=float(want.abs().max()),
                    mistakes=wrong,
                    hint=_collect_hint(site),
                )

    with t.part("the sites add up, and the last layer's resid_post gives the logits", points=1):
        for lm, ids, _ in runs[:2]:
            got = {}
            for site in SITES:
                what = f"collect_activations(lm, tokens, {site!r}) on {_shown(lm, ids)}"
                got[site] = t.tensor(
                    t.call(collect_activations, lm, ids, site),
                    what,
                    shape=(lm.n_layers, ids.shape[1], lm.d_model),
                ).float()
            resid, size = got["resid_post"], float(got["resid_post"].abs().max())
            if lm.n_layers > 1:
                t.close(
                    resid[1:] - resid[:-1],
                    got["attn_out"][1:] + got["mlp_out"][1:],
                    f"on {_shown(lm, ids)}: resid_post[L] - resid_post[L - 1] = attn_out[L] + "
                    "mlp_out[L] for every layer L >= 1 (what each block adds to the stream)",
                    atol=1e-4,
                    scale=size,
                    hint="attn_out and mlp_out are what the attention and the MLP of a block "
                    "add to the residual stream; resid_post is the block's output.",
                )
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits[0]
                from_resid = lm.unembed(lm.final_norm(resid[-1][None]))[0]
            t.close(
                from_resid,
                logits,
                f"on {_shown(lm, ids)}: the final norm and the unembedding applied to your "
                "resid_post of the last layer give the model's logits at every position",
                atol=1e-4,
                scale=float(logits.abs().max()),
                hint="resid_post of the last layer is the last block's output, before the final "
                "norm.",
            )


def _collect_hint(site: str) -> str:
    if site == "resid_post":
        return "resid_post[layer] is the output of block `layer` (a hook on lm.blocks[layer])."
    module = "lm.mlp(layer)" if site == "mlp_out" else "lm.attn(layer)"
    return f"Record the output of {module} (the first element if it returns a tuple)."


# ----- 2.2 ---------------------------------------------------------------------------------------
_PROBS_SHAPE = "Return the probabilities of the next token at the last position: shape (vocab,)."


def _cells(gen: torch.Generator, n_layers: int, n_pos: int, repeated: int) -> list:
    """(layer, position) cells in no order: a layer and a position past 9 where there are, the
    anchor, the last position, a position whose token occurs twice, and a random one."""

    def pick(low: int, high: int) -> int:
        return int(torch.randint(low, max(high, low + 1), (1,), generator=gen))

    cells = [
        (pick(max(0, n_layers - 2), n_layers), pick(max(1, n_pos - 3), n_pos - 1)),
        (pick(0, n_layers), n_pos - 1),
        (pick(0, n_layers - 1), repeated),
        (pick(0, n_layers), 0),
        (pick(0, n_layers), pick(1, n_pos - 1)),
    ]
    order = torch.randperm(len(cells), generator=gen).tolist()
    return [cells[i] for i in order]


@LAB.exercise("2.2", "patch one position", points=3)
def check_patch_position(patch_position: Callable, t: Checker) -> None:
    """Another prompt's activations at cells of two families' models (layers and positions past
    9, the anchor, the last position, a token that occurs twice), in no order and again after
    others; the run's own activation changes nothing; after the last block only the last
    position counts."""
    first, second = problems.families(t)
    deep, shallow = t.choice((11, 12, 10)), t.choice((2, 3))
    long, short = t.choice((12, 11, 13)), t.choice((4, 3, 5))
    gen = kit.generator(t, 2)
    models = []
    for family, n_layers, n_pos in ((first, deep, long), (second, shallow, short)):
        lm = problems.model(t, family, n_layers, seed=t.choice((0, 1, 2)))
        repeated = n_pos // 2
        tokens = problems.prompt(lm, gen, n_pos, repeats=[(repeated, 1)])
        donor = problems.prompt(lm, gen, n_pos)
        cells = _cells(gen, n_layers, n_pos, repeated)
        models.append((lm, tokens, cells, problems.resid_at(lm, donor, cells)))
    (a, ids_a, cells_a, vectors_a), (b, ids_b, cells_b, vectors_b) = models
    calls = [(a, ids_a, *cell, v) for cell, v in zip(cells_a, vectors_a, strict=True)]
    calls += [(b, ids_b, *cell, v) for cell, v in zip(cells_b[:3], vectors_b[:3], strict=True)]
    order = torch.randperm(len(calls), generator=gen).tolist()
    calls = [calls[i] for i in order] + calls[order[0] : order[0] + 1]  # and one again

    def compare(args, want, what, mistakes=(), hint=""):
        got = t.tensor(
            t.call(patch_position, *args), what, shape=tuple(want.shape), hint=_PROBS_SHAPE
        )
        t.close(got, want, what, **_PROBS, mistakes=mistakes, hint=hint)

    with t.part("another prompt's activation, at cells of two models", points=1):
        for lm, ids, layer, position, vector in calls:
            args = (lm, ids, layer, position, vector)
            compare(
                args,
                t.expected("patch_position", *args),
                f"patch_position(lm, tokens, {layer}, {position}, vector) on {_shown(lm, ids)}, "
                "vector = another prompt's resid_post there, against a reference patch",
                t.mistakes("patch_position", *args),
                hint="Replace resid_post[layer] (the output of block `layer`) at `position` only, "
                "in a fresh run of `tokens`, and return softmax of the last position's logits.",
            )

    with t.part("patching a run's own activation back in changes nothing", points=1):
        for lm, ids, cells, _ in models:
            own = problems.resid_at(lm, ids, cells[:3])
            for (layer, position), vector in zip(cells[:3], own, strict=True):
                args = (lm, ids, layer, position, vector)
                compare(
                    args,
                    t.expected("next_token_probs", lm, ids),
                    f"patch_position(lm, tokens, {layer}, {position}, the run's own "
                    f"resid_post[{layer}][{position}]) on {_shown(lm, ids)} gives the unpatched "
                    "probabilities",
                    t.mistakes("patch_position", *args),
                    hint="Patching in the value that is already there must change nothing: "
                    "patch resid_post (the output of block `layer`) at `position`, and apply "
                    "softmax to the last position's logits.",
                )

    with t.part("after the last block, only the last position counts", points=1):
        for lm, ids, _, vectors in models:
            last_layer, last = lm.n_layers - 1, ids.shape[1] - 1
            early = (lm, ids, last_layer, 1, vectors[0])
            compare(
                early,
                t.expected("next_token_probs", lm, ids),
                f"patch_position(lm, tokens, {last_layer}, 1, vector) on {_shown(lm, ids)}: "
                "after the last block, position 1 cannot change the prediction at the last one",
                t.mistakes("patch_position", *early),
                hint="Replace the activation at the given position only.",
            )
            final = (lm, ids, last_layer, last, vectors[0])
            compare(
                final,
                t.expected("final_resid_probs", lm, vectors[0]),
                f"patch_position(lm, tokens, {last_layer}, {last}, v) on {_shown(lm, ids)}: "
                "after the last block, at the last position, gives softmax(unembed(final_norm(v)))",
                t.mistakes("final_resid_probs", lm, vectors[0])
                + t.mistakes("patch_position", *final),
                hint="Overwrite the activation (do not add to it) at the output of block "
                "`layer`, and let the model finish the forward pass (final norm, unembedding).",
            )


# ----- 2.3 ---------------------------------------------------------------------------------------
def _close_log(t: Checker, got: Tensor, want: Tensor, what: str, mistakes=(), hint="") -> None:
    """Compare probabilities as log-probabilities: relative precision at every size."""
    if not bool((got > 0).all()):
        t.close(got, want, what, **_PROBS, mistakes=mistakes, hint=hint)
        t.fail(what, "Some of your values are not positive: return probabilities.", hint)
    logs = Mistakes(
        lambda: [
            (torch.as_tensor(w).double().log(), h)
            for w, h in mistakes
            if bool((torch.as_tensor(w) > 0).all())
        ]
    )
    t.close(
        got.double().log(),
        torch.as_tensor(want).double().log(),
        what + " (compared as log-probabilities)",
        **_LOG_PROBS,
        mistakes=logs,
        hint=hint,
    )


@LAB.exercise("2.3", "cross-context patching at every layer", points=3)
def check_cross_context_curve(cross_context_curve: Callable, t: Checker) -> None:
    """Donors longer, shorter and as long as the recipient, on two families (up to 13 layers),
    targets that are no run's top token, in no order and again after others; a prompt patched
    with itself keeps its probability; the last layer ends on the donor's probability."""
    first, second = problems.families(t)
    deep, shallow = t.choice((11, 13, 10)), t.choice((2, 1, 3))
    gen = kit.generator(t, 3)
    a = problems.model(t, first, deep, seed=t.choice((0, 1, 2)))
    b = problems.model(t, second, shallow, seed=t.choice((0, 1, 2)))
    short_a, long_a = t.choice((6, 5, 7)), t.choice((12, 10, 14))
    recipient, donor, same = (problems.prompt(a, gen, n) for n in (short_a, long_a, short_a))
    recipient_b, donor_b = problems.prompt(b, gen, t.choice((10, 11))), problems.prompt(b, gen, 4)

    def problem(lm, run, give):
        return lm, run, give, problems.pick_target(lm, {"input_ids": give}, {"input_ids": run})

    cases = [
        ("a donor longer than the recipient", problem(a, recipient, donor)),
        ("a donor shorter than the recipient", problem(b, recipient_b, donor_b)),
        ("a donor shorter than the recipient", problem(a, donor, recipient)),
        ("a donor as long as the recipient", problem(a, recipient, same)),
    ]
    cases.append(cases[0])  # again, after the others

    def curve(args, what):
        return t.tensor(
            t.call(cross_context_curve, *args),
            what,
            shape=(args[0].n_layers,),
            hint="One probability per layer: p(target) in the recipient's run with layer L "
            "patched, shape (n_layers,).",
        )

    with t.part("every layer, donors of every length, on two models", points=1):
        for words, args in cases:
            lm, _, _, target_id = args
            what = (
                f"cross_context_curve(lm, recipient, donor, {target_id}) with {words}, on "
                f"{_shown(lm, args[1])}: every layer against a reference patch of that layer"
            )
            want = t.expected("cross_context_curve", *args)
            wrong = t.mistakes("cross_context_curve", *args)
            _close_log(
                t,
                curve(args, what),
                want,
                what,
                wrong,
                hint="Row L: run the recipient with its last position's resid_post[L] "
                "replaced by the donor's last position's resid_post[L]; return softmax "
                "of the last logits at target_id.",
            )

    with t.part("a prompt patched with itself keeps its own probability at every layer", points=1):
        for _, (lm, run, _, target_id) in cases[:2]:
            what = (
                f"cross_context_curve(lm, tokens, tokens, {target_id}) on {_shown(lm, run)}: "
                "donor = recipient"
            )
            own = t.expected("clean_prob", lm, run, target_id)
            _close_log(
                t,
                curve((lm, run, run, target_id), what),
                torch.full((lm.n_layers,), own, dtype=torch.float64),
                what,
                hint="Patching a run's own vector back in must change nothing: patch the "
                "last position of a fresh run of the recipient.",
            )

    with t.part("at the last layer the curve ends on the donor's probability", points=1):
        for words, (lm, run, give, target_id) in cases[:3]:
            what = (
                f"the last layer of cross_context_curve(lm, recipient, donor, {target_id}) "
                f"with {words}, on {_shown(lm, run)}: there the patched vector is the final "
                "residual stream, so the recipient predicts what the donor predicts"
            )
            donor_p = t.expected("clean_prob", lm, give, target_id)
            _close_log(
                t,
                curve((lm, run, give, target_id), what)[-1:],
                torch.tensor([donor_p], dtype=torch.float64),
                what,
                hint="At layer n_layers - 1 the curve must end on the donor run's p(target).",
            )
