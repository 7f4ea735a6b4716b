"""Part 7 of lab 03: direct logit attribution and the logit lens (exercises 3.11 and 3.12)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.checks.core import Checker
from labkit.checks.lab03 import problems as P
from labkit.checks.lab03.lab import LAB

_REPEATED = (
    "This call repeats an earlier one (the same model, tokens, ids and arguments), and must give "
    "the same answer as it did then."
)


def _problems(t: Checker, offset: int) -> tuple[P.Pair, P.Pair, P.Pair]:
    """A grouped-query model of a family with RMSNorm (two prompts) and a model of a family with
    LayerNorm and biases in W_O (more than 9 layers and positions, one prompt); the first pair's
    prompts again with other targets and foils."""
    grouped = P.model(
        t, t.choice(["llama", "qwen2"]), offset, n_heads=6, n_kv_heads=t.choice([2, 3])
    )
    other = P.model(t, t.choice(["gpt2", "gpt_neox"]), offset + 1, n_layers=t.choice([10, 11]))
    g = P.pair(t, grouped, 10 * offset + 1, batch=2, n_pos=t.choice([6, 7, 5]))
    o = P.pair(t, other, 10 * offset + 2, batch=1, n_pos=t.choice([10, 11]))
    return g, o, P.retarget(t, g, 10 * offset + 3, as_tensor=True)


def _ids(p: P.Pair) -> tuple:
    return (p.lm, p.clean, p.targets, p.foils)


# ----- 3.11 --------------------------------------------------------------------------------------
OTHER_IDS = " (the same prompts as an earlier call, other target and foil ids)"


def _dla_case(t: Checker, fn: Callable, p: P.Pair, site: str | None, repeat=False, note=""):
    where = site or "head_out"
    want = t.expected("direct_logit_attribution", *_ids(p), where)
    wrong = t.mistakes("direct_logit_attribution", *_ids(p), where)
    shown = " (no site: the default, 'head_out')" if site is None else f", {site!r})"
    what = (
        f"direct_logit_attribution(lm, tokens, target_ids, foil_ids{shown} on {p.describe()}" + note
    )
    args = _ids(p) if site is None else (*_ids(p), site)
    got = t.call(fn, *args)
    n_layers, n_heads, kv = p.lm.n_layers, p.lm.n_heads, P.kv_heads(p.lm)
    if (
        where == "head_out"
        and kv != n_heads
        and isinstance(got, torch.Tensor)
        and (got.shape == (n_layers, kv))
    ):
        t.fail(
            what,
            f"Your result has {kv} columns: that is the number of key/value heads.",
            hint=f"This model has {n_heads} query heads sharing {kv} key/value heads. Each "
            "query head writes its own slice of the input of W_O: (n_layers, n_heads).",
        )
    shape = (n_layers, n_heads) if where == "head_out" else (n_layers,)
    got = t.tensor(
        got,
        what,
        shape=shape,
        hint="'head_out': one value per (layer, head); 'attn_out' and 'mlp_out': one per layer.",
    )
    t.close(
        got,
        want,
        f"{what}: each component's output at the last position, through the final norm with "
        "the scale of this run's final residual stream, times W_U[target] - W_U[foil], "
        "averaged over the prompts",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )
    return got


@LAB.exercise("3.11", "direct logit attribution", points=3)
def check_direct_logit_attribution(direct_logit_attribution: Callable, t: Checker) -> None:
    """Every site and the default one, on a grouped-query model with RMSNorm and no W_O bias
    (two prompts) and a model with LayerNorm and W_O biases (more than 9 layers and positions),
    targets that are not the top token in either id order, ids as lists and as tensors, the
    same prompts with other targets, the first call repeated at the end; and the definition:
    where W_O has no bias, a layer's heads add up to its attention output, and swapping target
    and foil flips every sign."""
    g, o, g2 = _problems(t, 111)
    with t.part("every head (site 'head_out', the default)", points=1):
        _dla_case(t, direct_logit_attribution, g, None)
        _dla_case(t, direct_logit_attribution, o, "head_out")
        _dla_case(t, direct_logit_attribution, g2, None, note=OTHER_IDS)
    with t.part("sites 'attn_out' and 'mlp_out', and the first call again", points=1):
        _dla_case(t, direct_logit_attribution, o, "mlp_out")
        _dla_case(t, direct_logit_attribution, g, "attn_out")
        _dla_case(t, direct_logit_attribution, g, "mlp_out")
        _dla_case(t, direct_logit_attribution, o, "attn_out")
        _dla_case(t, direct_logit_attribution, g, None, repeat=True)
    with t.part("the definition: heads add up to their layer; target and foil swapped", points=1):
        what = f"direct_logit_attribution on {g.describe()}, whose W_O has no bias"
        heads = t.tensor(
            t.call(direct_logit_attribution, *_ids(g2), "head_out"),
            what,
            shape=(g.lm.n_layers, g.lm.n_heads),
        )
        attn = t.tensor(
            t.call(direct_logit_attribution, *_ids(g2), "attn_out"), what, shape=(g.lm.n_layers,)
        )
        t.close(
            heads.sum(1),
            attn,
            f"{what}: the heads of a layer, summed, are its attention output ('attn_out')",
            scale=P.scale_of(attn),
            hint="Each head's vector is its slice of the input of W_O times its own slice of "
            "W_O; the vectors of a layer's heads add up to W_O's output.",
        )
        swapped = t.tensor(
            t.call(direct_logit_attribution, g2.lm, g2.clean, g2.foils, g2.targets, "head_out"),
            what,
            shape=(g.lm.n_layers, g.lm.n_heads),
        )
        t.close(
            swapped,
            -heads,
            f"{what}: with target and foil swapped every value changes sign",
            scale=P.scale_of(heads),
        )


# ----- 3.12 --------------------------------------------------------------------------------------
def _lens_case(t: Checker, fn: Callable, p: P.Pair, position: int | None, repeat=False, note=""):
    where = -1 if position is None else position
    want = t.expected("logit_lens", *_ids(p), where)
    wrong = t.mistakes("logit_lens", *_ids(p), where)
    shown = " (no position: the default, -1)" if position is None else f", position={position})"
    what = f"logit_lens(lm, tokens, target_ids, foil_ids{shown} on {p.describe()}" + note
    args = _ids(p) if position is None else (*_ids(p), position)
    got = t.tensor(
        t.call(fn, *args),
        what,
        shape=(p.lm.n_layers + 1,),
        hint="One entry per layer (the stream entering it) and one for the final residual "
        "stream: (n_layers + 1,).",
    )
    t.close(
        got,
        want,
        f"{what}: entry L is the stream entering layer L (the last entry: the final residual "
        "stream) at that position, through the final norm and the unembedding, target minus "
        "foil, averaged over the prompts",
        scale=P.scale_of(want),
        mistakes=wrong,
        hint=_REPEATED if repeat else "",
    )
    return got


@LAB.exercise("3.12", "the logit lens", points=2)
def check_logit_lens(logit_lens: Callable, t: Checker) -> None:
    """The default position and others (counted from the start and from the end), a
    grouped-query model with RMSNorm (two prompts) and a model with LayerNorm (more than 9
    layers and positions), the same prompts with other targets, the first call repeated; and
    the definition: the last entry is the model's own logit difference at that position."""
    g, o, g2 = _problems(t, 121)
    inner = t.choice([3, 4, 2])
    with t.part("every layer, at the last position and at others", points=1):
        _lens_case(t, logit_lens, g, None)
        _lens_case(t, logit_lens, o, inner)
        _lens_case(t, logit_lens, g, -2)
        _lens_case(t, logit_lens, o, None)
    with t.part("the definition: the last entry is the model's logit difference", points=1):
        for p, position in [(g2, None), (o, inner - 1), (g, None)]:  # the first call again
            where = -1 if position is None else position
            model = t.expected("logit_lens@model", *_ids(p), where)
            shown = "" if position is None else f", position={position}"
            what = f"logit_lens(...{shown}) on {p.describe()}" + (OTHER_IDS if p is g2 else "")
            args = _ids(p) if position is None else (*_ids(p), position)
            got = t.tensor(t.call(logit_lens, *args), what, shape=(p.lm.n_layers + 1,))
            t.close(
                got[-1],
                model,
                f"{what}: the last entry reads the final residual stream as the model does, "
                f"so it is the model's own mean logit difference there, {model:.4g}",
                scale=max(abs(model), 1.0),
                hint="The final residual stream is the input of the final norm (resid_post of "
                "the last layer), normalised once.",
            )
