"""Checks for lab 03 (attribution patching): one ``check_<exercise>(your_function)`` per exercise.

Each check runs your function on tiny random transformers (``labkit.tiny``, several families,
with weights scaled up and norm weights that are not 1, so that every shortcut gives a different
answer) and compares with a reference computed first: exact patching cell by cell with
``labkit.hooks.patch``, gradients with ``torch.autograd``. They also test the method's
invariants: the metric is 1 on the clean run and 0 on the corrupted one; attribution patching
is *exact* on a model that is linear in its activations; integrated patching adds up to the
total effect. Loops, batches, float64, labkit hooks and nnsight are all accepted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor, nn

from labkit.checks.core import Checker, Results, check, skip_if_unattempted
from labkit.hooks import capture, patch
from labkit.models import LabModel
from labkit.tiny import tiny_model

__all__ = [
    "EXERCISES",
    "Results",
    "SITES",
    "check_activations_and_grads",
    "check_agreement",
    "check_attribution_patching",
    "check_head_attribution",
    "check_integrated_patching",
    "check_normalised_metric",
    "check_patch_grid",
    "check_patch_heads",
    "check_patches_to_find_top_k",
    "check_qk_fix",
    "skip_if_unattempted",
]

SITES = ("resid_pre", "attn_out", "mlp_out")
# Clean and corrupted prompts of the tiny byte-level models: same length, a few bytes swapped.
_CLEAN = ("The cat sat", "My dog sits", "A red hat!!")
_CORRUPTED = ("The hat sat", "My fog sits", "A big cat!!")
_TARGETS, _FOILS = (70, 81, 92), (105, 77, 88)


# ----- test problems ----------------------------------------------------------------------------
@cache
def _tiny(family: str, seed: int = 1) -> LabModel:
    """A tiny model whose weight matrices are scaled up 6x and whose norm weights are random.

    At their initial scale tiny models hardly depend on the input; scaled up they are strongly
    nonlinear, so a gradient taken at the wrong run, or a patch at the wrong place, shows.
    Norm weights far from 1 make a head split on the residual stream differ from the right one.
    Cached: checks must not change it (``t.watch`` verifies that).
    """
    lm = tiny_model(family, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if param.dim() == 2 and "wpe" not in name:
                param.mul_(6.0)
            elif "norm" in name or "ln" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return lm


@cache
def _linear_model(seed: int = 0) -> LabModel:
    """A tiny GPT-2 that is *linear* in every activation: no layer norms, identity MLP
    activation, and zero query weights, so that every attention pattern is uniform (fixed).
    Attribution patching must be exact on it."""
    lm = tiny_model("gpt2", seed=seed)
    gpt = lm.model.transformer
    gpt.ln_f = nn.Identity()
    with torch.no_grad():
        for block in gpt.h:
            block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
            block.mlp.act = nn.Identity()
            block.attn.c_attn.weight[:, : lm.d_model] = 0.0  # queries are 0: uniform patterns
            block.attn.c_attn.bias[: lm.d_model] = 0.0
            for param in block.parameters():
                if param.dim() == 2:
                    param.mul_(3.0)
    return lm


@cache
def _linear_model64() -> LabModel:
    """The linear model in float64, for its exact-patching reference: patching in float32 loses
    about 3e-5 of the normalised metric to cancellation, more than the tolerance."""
    lm = _linear_model()
    return LabModel(copy.deepcopy(lm.model).double(), lm.tokenizer, lm.name)


def _tokens(lm: LabModel, texts: tuple[str, ...]) -> Tensor:
    return torch.cat([lm.to_tokens(text, prepend_anchor=True) for text in texts])  # (batch, pos)


def _problem(t: Checker, family: str | None = None, n_prompts: int = 2) -> dict:
    """A tiny model, clean and corrupted tokens (batch, pos), and a reference metric."""
    family = family or t.choice(["llama", "qwen2", "gpt2", "gpt_neox"])
    lm = t.watch(_tiny(family))
    start = t.choice([0, 1]) if n_prompts < len(_CLEAN) else 0
    rows = list(range(start, start + n_prompts))
    clean = _tokens(lm, tuple(_CLEAN[i] for i in rows))
    corrupted = _tokens(lm, tuple(_CORRUPTED[i] for i in rows))
    targets = [_TARGETS[i] for i in rows]
    foils = [_FOILS[i] for i in rows]
    metric = _reference_metric(lm, clean, corrupted, targets, foils)
    return dict(
        lm=lm,
        family=family,
        clean=clean,
        corrupted=corrupted,
        targets=targets,
        foils=foils,
        metric=metric,
    )


def _mean_diff(logits: Tensor, targets: list[int], foils: list[int]) -> Tensor:
    rows = torch.arange(logits.shape[0])
    return (logits[rows, targets] - logits[rows, foils]).mean()


def _reference_metric(lm, clean, corrupted, targets, foils) -> Callable[[Tensor], Tensor]:
    with torch.no_grad():
        high = _mean_diff(lm.model(clean).logits[:, -1], targets, foils)
        low = _mean_diff(lm.model(corrupted).logits[:, -1], targets, foils)

    def metric(logits: Tensor) -> Tensor:  # (batch, vocab) -> ()
        return (_mean_diff(logits, targets, foils) - low) / (high - low)

    return metric


def _last_logits(lm: LabModel, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return lm.model(tokens).logits[:, -1]


def _exact_grid(lm, clean, corrupted, metric, site, direction="denoise") -> Tensor:
    """Exact patching, one forward pass per (layer, position): the slow, obvious reference."""
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    with torch.no_grad(), capture(lm, site) as cache_:
        lm.model(source)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        for pos in range(clean.shape[1]):
            with torch.no_grad(), patch(lm, site, layer, cache_[site, layer], positions=[pos]):
                grid[layer, pos] = metric(lm.model(target).logits[:, -1])
    return grid


def _exact_heads(lm, clean, corrupted, metric, positions=None) -> Tensor:
    with torch.no_grad(), capture(lm, "head_out") as cache_:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):
            value = cache_["head_out", layer]
            with torch.no_grad(), patch(lm, "head_out", layer, value, heads=[head]):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def _acts_grads(lm, tokens, metric, site) -> tuple[Tensor, Tensor]:
    """Activations at ``site`` in every layer and the metric's gradient there, in float64."""
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache_:
        value = metric(lm.model(inputs_embeds=embeds).logits[:, -1])
        grads = torch.autograd.grad(value, [cache_[site, i] for i in range(lm.n_layers)])
    return cache_.stack(site).detach(), torch.stack(grads)


def _clean_acts(lm, tokens, site) -> Tensor:
    with torch.no_grad(), capture(lm, site) as cache_:
        lm.model(tokens)
    return cache_.stack(site)


def _resid_heads(lm, clean, corrupted, metric) -> Tensor:
    """The classic mistake: split the attention's *input* (residual stream) into heads."""
    a_clean = _clean_acts(lm, clean, "resid_pre")
    a_corr, grads = _acts_grads(lm, corrupted, metric, "resid_pre")
    per = ((a_clean - a_corr) * grads).sum(1)  # (L, pos, d_model)
    per = per.view(lm.n_layers, clean.shape[1], lm.n_heads, -1).sum(-1)
    return per.transpose(1, 2)  # (L, H, pos)


def _attn_out_heads(lm, clean, corrupted, metric) -> Tensor:
    """Another mistake: split the attention *output* (after W_O) into heads."""
    a_clean = _clean_acts(lm, clean, "attn_out")
    a_corr, grads = _acts_grads(lm, corrupted, metric, "attn_out")
    per = ((a_clean - a_corr) * grads).sum(1)
    per = per.view(lm.n_layers, clean.shape[1], lm.n_heads, -1).sum(-1)
    return per.transpose(1, 2)


def _attribution(lm, clean, corrupted, metric, site, grad_at="corrupted", sign=1.0) -> Tensor:
    a_clean, clean_grads = None, None
    if grad_at == "clean":
        a_clean, clean_grads = _acts_grads(lm, clean, metric, site)
        a_corr = _clean_acts(lm, corrupted, site)
        grads = clean_grads
    else:
        a_clean = _clean_acts(lm, clean, site)
        a_corr, grads = _acts_grads(lm, corrupted, metric, site)
    per = sign * (a_clean - a_corr) * grads  # (L, batch, pos, ...)
    if site == "head_out":
        return per.sum(-1).sum(1).transpose(1, 2)  # (L, H, pos)
    return per.sum(-1).sum(1)  # (L, pos)


def _scale(x: Tensor) -> float:
    return max(float(x.abs().max()), 1e-3)


# ----- Exercise 3.1 -----------------------------------------------------------------------------
@check("Exercise 3.1: normalised metric", points=2)
def check_normalised_metric(normalised_metric: Callable, t: Checker) -> None:
    p = _problem(t, n_prompts=3)
    lm, clean, corrupted = p["lm"], p["clean"], p["corrupted"]
    targets, foils = p["targets"], p["foils"]
    clean_logits, corrupted_logits = _last_logits(lm, clean), _last_logits(lm, corrupted)
    gen = torch.Generator().manual_seed(t.seed(3))
    other = clean_logits + 2.0 * torch.randn(clean_logits.shape, generator=gen)
    high = _mean_diff(clean_logits, targets, foils)
    low = _mean_diff(corrupted_logits, targets, foils)
    expected = (_mean_diff(other, targets, foils) - low) / (high - low)
    rows = torch.arange(3)

    def per_prompt(logits):
        d = logits[rows, targets] - logits[rows, foils]
        c = clean_logits[rows, targets] - clean_logits[rows, foils]
        k = corrupted_logits[rows, targets] - corrupted_logits[rows, foils]
        return ((d - k) / (c - k)).mean()

    probs = other.softmax(-1)
    prob_diff = (probs[rows, targets] - probs[rows, foils]).mean()
    mistakes = [
        (
            _mean_diff(other, targets, foils),
            "This is the raw logit difference. Normalise it: "
            "subtract the corrupted run's value and divide by (clean - corrupted).",
        ),
        (
            1 - expected,
            "The sign is flipped: the metric must be 1 on the clean run and 0 on the "
            "corrupted one, i.e. (x - corrupted) / (clean - corrupted).",
        ),
        (
            per_prompt(other),
            "You normalised each prompt separately and then averaged. Average "
            "the logit differences over the batch first, then normalise once (a prompt whose clean "
            "and corrupted values are close would otherwise blow up the mean).",
        ),
        (prob_diff, "Use logits, not probabilities: the metric is a logit difference."),
    ]

    with t.part("metric(clean logits) is 1 and metric(corrupted logits) is 0", points=1):
        metric = t.call(normalised_metric, lm, clean, corrupted, targets, foils)
        t.true(
            callable(metric),
            "normalised_metric returns a function of the logits",
            hint="Return the inner function `metric`, not its value.",
        )
        got = t.scalar(t.call(metric, clean_logits), "metric(logits of the clean prompts)")
        t.close(
            got,
            1.0,
            "metric(clean logits) == 1",
            atol=1e-4,
            mistakes=[(high, mistakes[0][1]), (0.0, mistakes[1][1])],
        )
        got = t.scalar(t.call(metric, corrupted_logits), "metric(logits of the corrupted prompts)")
        t.close(
            got,
            0.0,
            "metric(corrupted logits) == 0",
            atol=1e-4,
            mistakes=[(low, mistakes[0][1]), (1.0, mistakes[1][1])],
        )

    with t.part("metric of other logits, and its gradient", points=1):
        metric = t.call(normalised_metric, lm, clean, corrupted, targets, foils)
        got = t.scalar(t.call(metric, other), "metric(other logits (batch, vocab))")
        t.close(
            got,
            expected,
            "the normalised mean logit difference of other logits",
            atol=1e-4,
            mistakes=mistakes,
            hint="Read each row's target and foil logit (row i uses target_ids[i]).",
        )

        def gradient(logits: Tensor) -> Tensor:
            value = metric(logits)
            if not isinstance(value, Tensor) or not value.requires_grad:
                raise TypeError(
                    "the metric returned a value without a gradient: keep it a torch tensor "
                    "(no .item(), float() or numpy), so that attribution patching can call "
                    ".backward() on it"
                )
            return torch.autograd.grad(value, logits)[0]

        want = torch.zeros_like(other)
        want[rows, targets] += 1 / (3 * (high - low))
        want[rows, foils] -= 1 / (3 * (high - low))
        got = t.call(gradient, other.clone().requires_grad_(True))
        t.close(
            t.tensor(got, "d metric / d logits", shape=tuple(other.shape)),
            want,
            "the metric's gradient: +1/(batch (clean-corrupted)) at each target, minus that "
            "at each foil",
            atol=1e-5,
            scale=float(want.abs().max()),
        )


# ----- Exercise 3.2 -----------------------------------------------------------------------------
@check("Exercise 3.2: exact patching grid", points=3)
def check_patch_grid(patch_grid: Callable, t: Checker) -> None:
    for index, site in enumerate(SITES):
        p = _problem(t, family=t.choice(["llama", "gpt2", "gpt_neox", "qwen2"]))
        lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
        expected = _exact_grid(lm, clean, corrupted, metric, site)

        def mistakes(site=site, lm=lm, clean=clean, corrupted=corrupted, metric=metric):
            """Wrong answers, computed only when the answer is not the expected one."""
            found = [
                (
                    _exact_grid(lm, clean, corrupted, metric, site, direction="noise"),
                    "This is the noising direction (corrupted activations patched into the clean "
                    "run). Patch the *clean* activation into the *corrupted* run.",
                ),
            ]
            if site == "resid_pre":
                post = _exact_grid(lm, clean, corrupted, metric, "resid_post")
                found.append(
                    (
                        post,
                        "This is resid_post (the block's output). resid_pre[layer] "
                        "is the block's input.",
                    )
                )
            return found

        with t.part(f"site {site!r} on a tiny {p['family']} model", points=1):
            got = t.call(patch_grid, lm, clean, corrupted, metric, site)
            got = t.tensor(
                got,
                f"patch_grid(..., site={site!r})",
                shape=(lm.n_layers, clean.shape[1]),
                hint="One cell per (layer, position): (n_layers, pos).",
            )
            tolerance = 1e-4 * _scale(expected)
            wrong = (
                []
                if torch.allclose(got.double(), expected.double(), atol=tolerance, rtol=1e-3)
                else mistakes()
            )
            t.close(
                got,
                expected,
                f"each cell = metric of the corrupted run with the clean "
                f"{site} at that one (layer, position), for every prompt of the batch",
                atol=1e-4,
                scale=_scale(expected),
                mistakes=wrong,
                hint="Patch one position only (not every position up to it), in every "
                "prompt of the batch, and let the rest of the run recompute."
                if index == 0
                else "Check the site: " + site + ".",
            )


# ----- Exercise 3.3 -----------------------------------------------------------------------------
@check("Exercise 3.3: exact patching of every head", points=2)
def check_patch_heads(patch_heads: Callable, t: Checker) -> None:
    for family in (t.choice(["llama", "qwen2"]), t.choice(["gpt2", "gpt_neox"])):
        p = _problem(t, family=family)
        lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
        expected = _exact_heads(lm, clean, corrupted, metric)
        kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
        with t.part(
            f"every head of a tiny {family} model ({lm.n_heads} query heads, {kv} key/value heads)",
            points=1,
        ):
            got = t.call(patch_heads, lm, clean, corrupted, metric)
            if isinstance(got, Tensor) and got.dim() == 2 and got.shape[1] == kv != lm.n_heads:
                t.fail(
                    "the shape of the result",
                    f"Your result has {kv} columns: that is the number of key/value heads.",
                    hint=f"This model has {lm.n_heads} query heads sharing {kv} key/value "
                    "heads. A head's output (the input of the attention output projection) "
                    "has one slice per *query* head: (n_layers, n_heads).",
                )
            got = t.tensor(got, "patch_heads(...)", shape=(lm.n_layers, lm.n_heads))
            t.close(
                got,
                expected,
                "each cell = metric of the corrupted run with one head's "
                "clean output at every position",
                atol=1e-4,
                scale=_scale(expected),
                hint="Patch the head's slice of the input of the attention output "
                "projection (labkit site 'head_out'), at all positions, one head at a time.",
            )


# ----- Exercise 3.4 -----------------------------------------------------------------------------
@check("Exercise 3.4: activations and gradients", points=2)
def check_activations_and_grads(activations_and_grads: Callable, t: Checker) -> None:
    p = _problem(t)
    lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
    for site in ("resid_pre", t.choice(["head_out", "mlp_out"])):
        acts, grads = _acts_grads(lm, corrupted, metric, site)
        clean_acts, clean_grads = _acts_grads(lm, clean, metric, site)
        with t.part(
            f"site {site!r}: the corrupted run's activations and d metric / d act", points=1
        ):
            first = t.call(activations_and_grads, lm, corrupted, metric, site)
            t.true(
                isinstance(first, tuple) and len(first) == 2,
                "activations_and_grads returns a pair (activations, gradients)",
            )
            got_acts = t.tensor(
                first[0],
                "the activations",
                shape=tuple(acts.shape),
                hint="Stack every layer: (n_layers, batch, pos, ...).",
            )
            t.close(
                got_acts,
                acts,
                "the activations of the run on `tokens`",
                atol=1e-4,
                scale=_scale(acts),
                mistakes=[(clean_acts, "These are another run's.")],
            )
            got = t.tensor(first[1], "the gradients", shape=tuple(grads.shape))
            t.close(
                got,
                grads,
                "the gradient of the metric at each activation",
                atol=1e-5,
                scale=_scale(grads),
                mistakes=[
                    (
                        clean_grads,
                        "This is the gradient at the *clean* run. Take it at the "
                        "run you were given (the corrupted one).",
                    ),
                    (-grads, "The sign is flipped."),
                ],
            )
            second = t.call(activations_and_grads, lm, corrupted, metric, site)
            t.true(isinstance(second, tuple) and len(second) == 2, "a second call returns a pair")
            again = t.tensor(second[1], "the gradients of a second call", shape=tuple(grads.shape))
            t.close(
                again,
                grads,
                "a second call gives the same gradients",
                atol=1e-5,
                scale=_scale(grads),
                mistakes=[
                    (
                        2 * grads,
                        "The gradients doubled on the second call: they accumulate "
                        "in `.grad` across calls. Use torch.autograd.grad, or fresh tensors "
                        "each call.",
                    ),
                ],
            )


# ----- Exercise 3.5 -----------------------------------------------------------------------------
@check("Exercise 3.5: attribution patching", points=3)
def check_attribution_patching(attribution_patching: Callable, t: Checker) -> None:
    p = _problem(t)
    lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
    for site in ("resid_pre", t.choice(["attn_out", "mlp_out"])):
        expected = _attribution(lm, clean, corrupted, metric, site)
        mistakes = [
            (-expected, "The sign is flipped: the estimate is (clean - corrupted) . gradient."),
            (
                _attribution(lm, clean, corrupted, metric, site, grad_at="clean"),
                "The gradient was taken at the clean run. For a clean-into-corrupted patch, "
                "linearise around the corrupted run.",
            ),
            (
                _attribution(lm, clean, corrupted, metric, site, grad_at="clean", sign=-1.0),
                "That is the *noising* estimate ((corrupted - clean) . gradient at the clean run); "
                "this exercise asks for denoising.",
            ),
        ]
        with t.part(f"site {site!r} on a tiny {p['family']} model", points=1):
            got = t.call(attribution_patching, lm, clean, corrupted, metric, site)
            got = t.tensor(
                got,
                f"attribution_patching(..., site={site!r})",
                shape=(lm.n_layers, clean.shape[1]),
            )
            t.close(
                got,
                expected,
                "(clean - corrupted) . d metric/d act at the corrupted run, "
                "summed over d_model and the batch",
                atol=1e-4,
                scale=_scale(expected),
                mistakes=mistakes,
            )

    lin = t.watch(_linear_model(), "the linear model")
    clean, corrupted = _tokens(lin, _CLEAN[:2]), _tokens(lin, _CORRUPTED[:2])
    metric = _reference_metric(lin, clean, corrupted, list(_TARGETS[:2]), list(_FOILS[:2]))
    site = t.choice(list(SITES))
    lin64 = _linear_model64()
    metric64 = _reference_metric(lin64, clean, corrupted, list(_TARGETS[:2]), list(_FOILS[:2]))
    exact = _exact_grid(lin64, clean, corrupted, metric64, site)
    corrupted_value = 0.0
    with t.part(f"exact on a model that is linear in its activations (site {site!r})", points=1):
        got = t.call(attribution_patching, lin, clean, corrupted, metric, site)
        got = t.tensor(
            got, "attribution patching on the linear model", shape=(lin.n_layers, clean.shape[1])
        )
        t.close(
            got + corrupted_value,
            exact,
            "on a linear model, attribution patching equals "
            "exact patching minus the corrupted metric (0) in every cell",
            atol=2e-4,  # float32 attribution patching against float64 exact patching
            scale=_scale(exact),
            hint="Sum (clean - corrupted) * gradient over d_model and over the batch; the "
            "gradient must come from the corrupted run.",
        )


# ----- Exercise 3.6 -----------------------------------------------------------------------------
@check("Exercise 3.6: attribution per head", points=2)
def check_head_attribution(head_attribution: Callable, t: Checker) -> None:
    for family in (t.choice(["llama", "qwen2"]), t.choice(["gpt2", "gpt_neox"])):
        p = _problem(t, family=family)
        lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
        n_pos = clean.shape[1]
        expected = _attribution(lm, clean, corrupted, metric, "head_out")
        kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
        mistakes = [
            (
                _resid_heads(lm, clean, corrupted, metric),
                "You split the residual stream (the "
                "attention's input) into heads. A head's output is the input of the attention "
                "output projection (site 'head_out').",
            ),
            (
                _attn_out_heads(lm, clean, corrupted, metric),
                "You split the attention output "
                "(after W_O mixes the heads) into chunks. Use the input of W_O (site 'head_out').",
            ),
            (-expected, "The sign is flipped."),
            (
                _attribution(lm, clean, corrupted, metric, "head_out", grad_at="clean"),
                "The gradient was taken at the clean run; take it at the corrupted run.",
            ),
        ]
        with t.part(f"heads x positions of a tiny {family} model", points=1):
            got = t.call(head_attribution, lm, clean, corrupted, metric)
            if isinstance(got, Tensor) and got.dim() == 3 and got.shape[1] == kv != lm.n_heads:
                t.fail(
                    "the shape of the result",
                    f"Your result has {kv} heads per layer: the number of key/value heads.",
                    hint=f"Count query heads ({lm.n_heads}): "
                    "each has its own slice of the input of W_O.",
                )
            got = t.tensor(
                got,
                "head_attribution(...)",
                shape=(lm.n_layers, lm.n_heads, n_pos),
                hint="(n_layers, n_heads, pos)",
            )
            t.close(
                got,
                expected,
                "(clean - corrupted) . gradient per head and position, "
                "summed over d_head and the batch",
                atol=1e-4,
                scale=_scale(expected),
                mistakes=mistakes,
            )


# ----- Exercise 3.7 -----------------------------------------------------------------------------
def _ranks(x: Tensor) -> Tensor:
    return x.argsort().argsort().double()


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _recall(x: Tensor, y: Tensor, k: int, signed_x: bool = False, signed_y: bool = False) -> float:
    """Top-k recall of y against x, ranking each by size (or, as a mistake, by signed value)."""
    top_x = set((x if signed_x else x.abs()).topk(k).indices.tolist())
    top_y = set((y if signed_y else y.abs()).topk(k).indices.tolist())
    return len(top_x & top_y) / k


def _agreement(estimate: Tensor, exact: Tensor, k: int) -> dict[str, float]:
    x, y = exact.flatten().double(), estimate.flatten().double()
    xc = x - x.mean()
    return {
        "pearson": _pearson(x, y),
        "spearman": _pearson(_ranks(x), _ranks(y)),
        "slope": float((xc * (y - y.mean())).sum() / (xc * xc).sum()),
        "sign agreement": float((x.sign() == y.sign()).double().mean()),
        "top-k recall": _recall(x, y, k),
    }


AGREEMENT_KEYS = ("pearson", "spearman", "slope", "sign agreement", "top-k recall")
AGREEMENT_KS = (5, 4, 6)  # the k of the notebook's problem, then the hidden ones


def _agreement_problem(seed: int) -> tuple[Tensor, Tensor]:
    """A 5 x 6 grid of exact effects and an estimate of them on which every shortcut in
    :func:`_agreement_mistakes` gives another number than the right one, for every seed and
    every k in AGREEMENT_KS:

    * six large negative effects (|exact| 6 to 11.5) lead by absolute value. The estimate misses
      the largest (close to 0) and raises a false alarm (-10 on a small effect) instead, so the
      top-k recall is (k - 1) / k;
    * the two largest positive effects are estimated with the wrong sign, so ranking by signed
      value instead of size gives a recall of at most (k - 2) / k (by signed value on one side
      only: at most 1 / k);
    * the estimate is offset by +1, so a line through the origin has another slope.

    The small effects are redrawn (from the same generator) until every other shortcut, such
    as Spearman computed as Pearson, is off by a clear margin too.
    """
    gen = torch.Generator().manual_seed(seed)
    roles = torch.randperm(30, generator=gen)
    large, missed, false_alarm, flipped = roles[:5], roles[5], roles[6], roles[7:9]
    size = 6.0 + torch.arange(6.0) + 0.5 * torch.rand(6, generator=gen)  # distinct, 6 to 11.5
    for _ in range(100):
        exact = torch.randn(30, generator=gen).clamp(-1.4, 1.4) ** 3  # heavy tails, |x| < 2.75
        estimate = 0.6 * exact + 0.3 * torch.randn(30, generator=gen).clamp(-1.0, 1.0)
        exact[large], estimate[large] = -size[:5], -0.8 * size[:5]
        exact[missed], estimate[missed] = -size[5], 0.1 * torch.rand((), generator=gen)
        exact[false_alarm], estimate[false_alarm] = -0.5 * torch.rand((), generator=gen), -11.0
        exact[flipped] = torch.tensor([4.0, 3.5]) + 0.3 * torch.rand(2, generator=gen)
        estimate[flipped] = -0.5 * exact[flipped]
        estimate, exact = (estimate + 1.0).view(5, 6), exact.view(5, 6)
        if all(
            abs(value - _agreement(estimate, exact, k)[key]) > 0.005  # 8 x the tolerance
            for k in AGREEMENT_KS
            for key, wrong in _agreement_mistakes(estimate, exact, k).items()
            for value, _ in wrong
        ):
            break
    return estimate, exact


def _agreement_mistakes(estimate: Tensor, exact: Tensor, k: int) -> dict[str, list]:
    """Plausible wrong values of each key, with the hint that names the mistake."""
    y, x = estimate.flatten().double(), exact.flatten().double()
    yc = y - y.mean()
    by_sign = "Rank by size (absolute value): a large negative effect is a top effect too."
    return {
        "slope": [
            (
                float((yc * (x - x.mean())).sum() / (yc * yc).sum()),
                "You regressed exact on the estimate. The slope is of the estimate (y) "
                "against exact patching (x): cov(x, y) / var(x).",
            ),
            (
                float((x * y).sum() / (x * x).sum()),
                "That is the slope of a line through the origin. Fit the least-squares line "
                "with an intercept: cov(x, y) / var(x).",
            ),
        ],
        "spearman": [
            (
                _pearson(x, y),
                "That is Pearson's r. Spearman's rho is Pearson's r of the ranks.",
            )
        ],
        "top-k recall": [
            (_recall(x, y, k, signed_x=True, signed_y=True), by_sign),
            (_recall(x, y, k, signed_x=True), by_sign),
            (_recall(x, y, k, signed_y=True), by_sign),
            (k * _recall(x, y, k), "Return a fraction of k (between 0 and 1), not a count."),
        ],
        "sign agreement": [
            (
                float((x.sign() == y.sign()).sum()),
                "Return a fraction (between 0 and 1), not a count.",
            )
        ],
    }


@check("Exercise 3.7: agreement with exact patching", points=2)
def check_agreement(agreement: Callable, t: Checker) -> None:
    estimate, exact = _agreement_problem(t.seed(7))
    k = t.choice(list(AGREEMENT_KS))
    want = _agreement(estimate, exact, k)
    wrong = _agreement_mistakes(estimate, exact, k)
    with t.part("pearson, spearman, slope, sign agreement and top-k recall", points=2):
        got = t.call(agreement, estimate.clone(), exact.clone(), k)
        t.true(
            isinstance(got, dict) and set(AGREEMENT_KEYS) <= set(got),
            f"agreement returns a dict with the keys {', '.join(AGREEMENT_KEYS)}",
        )
        for key in AGREEMENT_KEYS:
            value = t.scalar(got[key], f"agreement(...)[{key!r}]")
            t.close(
                value,
                want[key],
                f"agreement(...)[{key!r}] on a 5 x 6 grid (k = {k})",
                atol=1e-4,
                mistakes=wrong.get(key, []),
            )
        t.true(
            abs(t.scalar(t.call(agreement, exact.clone(), exact.clone(), k)["pearson"], "r") - 1.0)
            < 1e-6,
            "an estimate equal to exact patching has Pearson r = 1",
        )


# ----- Exercise 3.8 -----------------------------------------------------------------------------
def _patches_needed(estimate: Tensor, exact: Tensor, k: int, signed: str = "") -> int:
    """The answer (``signed=""``), or a mistake: the top-k of the signed exact effects
    (``"exact"``), or the estimate's order by signed value (``"estimate"``)."""
    exact, estimate = exact.flatten(), estimate.flatten()
    top = set((exact if signed == "exact" else exact.abs()).topk(k).indices.tolist())
    key = estimate if signed == "estimate" else estimate.abs()
    order = key.argsort(descending=True).tolist()
    return max(order.index(i) for i in top) + 1


FIND_KS = (2, (4, 5), 8)  # the k of each round; the middle one is a hidden choice
# Rank of each of the exact top-8 components (largest first) in the estimate's order: every
# answer is above k and differs between rounds (k = 2: 3, k = 4: 5, k = 5: 7, k = 8: 11).
_FIND_RANKS = (3, 2, 4, 5, 7, 8, 9, 11)


def _find_problem(seed: int) -> tuple[Tensor, Tensor]:
    """40 exact effects and an estimate with a fixed ranking of the exact top-8 (_FIND_RANKS):

    * the estimate's first component is a false alarm (-20 on a small effect), two more
      (ranks 6 and 10) are false alarms too, and the largest effect comes third: no answer is k,
      and counting the overlap of the two top-k sets, or stopping at the first find, differs;
    * the largest and the fifth largest effects are negative (and so are their estimates):
      the top-k by signed value, or the estimate ordered by signed value, gives other answers.
    """
    gen = torch.Generator().manual_seed(seed)
    roles = torch.randperm(40, generator=gen).tolist()
    top, alarms = roles[:8], roles[8:11]  # alarms: estimate ranks 1, 6 and 10
    exact = torch.randn(40, generator=gen).clamp(-1.2, 1.2) ** 3  # |effect| < 1.73
    estimate = exact + 1.5 * torch.randn(40, generator=gen).clamp(-1.0, 1.0)  # |est| < 3.3
    level = 20.0 - 1.5 * torch.arange(12.0) + 0.5 * torch.rand(12, generator=gen)  # > 3.5
    for i, cell in enumerate(top):
        sign = -1.0 if i in (0, 4) else 1.0
        exact[cell] = sign * (12.0 - i + 0.4 * torch.rand((), generator=gen))
        estimate[cell] = sign * level[_FIND_RANKS[i] - 1]
    for cell, rank in zip(alarms, (1, 6, 10), strict=True):
        exact[cell] = -0.2 * torch.rand((), generator=gen)
        estimate[cell] = (-1.0 if rank == 1 else 1.0) * level[rank - 1]
    return estimate, exact


@check("Exercise 3.8: patches needed to find the top-k", points=1)
def check_patches_to_find_top_k(patches_to_find_top_k: Callable, t: Checker) -> None:
    estimate, exact = _find_problem(t.seed(8))
    with t.part("the rank, in estimate order, of the last exact top-k component", points=1):
        for k in (FIND_KS[0], t.choice(list(FIND_KS[1])), FIND_KS[2]):
            want = _patches_needed(estimate, exact, k)
            got = t.call(patches_to_find_top_k, estimate.clone(), exact.clone(), k)
            got = t.scalar(got, f"patches_to_find_top_k(estimate, exact, k={k})")
            t.close(
                got,
                want,
                f"the number of exact patches, made in order of |estimate|, "
                f"until all of the exact top-{k} (by |effect|) are found",
                atol=0.1,
                mistakes=[
                    (want - 1, "Off by one: count the patches, starting at 1."),
                    (
                        _patches_needed(estimate, exact, k, signed="estimate"),
                        "Order by absolute value, not the signed estimate.",
                    ),
                    (
                        _patches_needed(estimate, exact, k, signed="exact"),
                        "The exact top-k are the largest effects by absolute value: a large "
                        "negative effect counts too.",
                    ),
                ],
            )
        got = t.scalar(t.call(patches_to_find_top_k, exact.clone(), exact.clone(), 5), "n")
        t.close(got, 5, "a perfect estimate needs exactly k patches", atol=0.1)


# ----- Exercise 3.9 -----------------------------------------------------------------------------
def _saturated_scores(seed: int, heads: int = 3, n: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    corrupted = 12.0 * torch.randn(heads, n, n, generator=gen)  # saturated softmax
    clean = corrupted + 6.0 * torch.randn(heads, n, n, generator=gen)
    grad = torch.randn(heads, n, n, generator=gen)
    mask = ~causal
    return (
        clean.masked_fill(mask, float("-inf")),
        corrupted.masked_fill(mask, float("-inf")),
        grad.masked_fill(mask, 0.0),
    )


def _atp_scores(clean: Tensor, corrupted: Tensor, grad: Tensor) -> Tensor:
    pattern = corrupted.softmax(-1)
    score_grad = pattern * (grad - (pattern * grad).sum(-1, keepdim=True))
    return (score_grad * (clean - corrupted).nan_to_num(0.0, 0.0, 0.0)).sum((-2, -1))


@check("Exercise 3.9: the QK fix", points=2)
def check_qk_fix(qk_fix: Callable, t: Checker) -> None:
    clean, corrupted, grad = _saturated_scores(t.seed(9))
    want = ((clean.softmax(-1) - corrupted.softmax(-1)) * grad).sum((-2, -1))
    mistakes = [
        (
            _atp_scores(clean, corrupted, grad),
            "That is the plain linear estimate through the "
            "softmax (gradient w.r.t. the scores times the change in scores). The fix recomputes "
            "the pattern exactly: softmax(clean scores) - softmax(corrupted scores).",
        ),
        (-want, "The sign is flipped: new pattern minus the corrupted pattern."),
        (
            ((clean.softmax(-2) - corrupted.softmax(-2)).nan_to_num(0.0) * grad).sum((-2, -1)),
            "Softmax over the keys (the last dimension), not the queries.",
        ),
        ((clean.softmax(-1) * grad).sum((-2, -1)), "Subtract the corrupted pattern."),
    ]
    with t.part("a saturated head: (softmax(new) - softmax(old)) . d metric / d pattern", points=1):
        got = t.call(qk_fix, clean.clone(), corrupted.clone(), grad.clone())
        got = t.tensor(
            got,
            "qk_fix(scores_clean, scores_corrupted, pattern_grad)",
            shape=tuple(want.shape),
            hint="Sum over the query and key dimensions.",
        )
        t.close(
            got,
            want,
            "the QK-fix estimate per head",
            atol=1e-5,
            scale=_scale(want),
            mistakes=mistakes,
        )
    with t.part("leading dimensions (layers, batch) and a row constant", points=1):
        stacked = [_saturated_scores(t.seed(10 + i), heads=2) for i in range(4)]
        c, k, g = (torch.stack([s[j] for s in stacked]).view(2, 2, 2, 5, 5) for j in range(3))
        want = ((c.softmax(-1) - k.softmax(-1)) * g).sum((-2, -1))
        got = t.call(qk_fix, c + 3.0, k.clone(), g.clone())  # + a constant: same pattern
        t.close(
            t.tensor(got, "qk_fix on (2, 2, 2, 5, 5) scores", shape=(2, 2, 2)),
            want,
            "scores shifted by a constant give the same pattern, hence the same estimate",
            atol=1e-5,
            scale=_scale(want),
        )


# ----- Exercise 3.10 ----------------------------------------------------------------------------
def _integrated(lm, clean, corrupted, metric, n_steps: int, rule: str = "midpoint") -> Tensor:
    with torch.no_grad():
        x, b = lm.embed(clean), lm.embed(corrupted)
    offsets = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
    total = torch.zeros_like(x)
    for k in range(n_steps):
        point = (b + (k + offsets) / n_steps * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            value = metric(lm.model(inputs_embeds=point).logits[:, -1])
            total += torch.autograd.grad(value, point)[0]
    return ((x - b) * total / n_steps).sum(-1).sum(0)


@check("Exercise 3.10: integrated patching at the embeddings", points=2, timeout=30)
def check_integrated_patching(integrated_patching: Callable, t: Checker) -> None:
    p = _problem(t, family=t.choice(["llama", "gpt_neox", "qwen2"]))
    lm, clean, corrupted, metric = p["lm"], p["clean"], p["corrupted"], p["metric"]
    steps = t.choice([3, 4])
    want = _integrated(lm, clean, corrupted, metric, steps)
    mistakes = [
        (
            _integrated(lm, clean, corrupted, metric, steps, "left"),
            "Left Riemann sum: use the midpoint rule, alpha_k = (k + 1/2) / n_steps.",
        ),
        (
            _integrated(lm, clean, corrupted, metric, steps, "right"),
            "Right Riemann sum: use the midpoint rule, alpha_k = (k + 1/2) / n_steps.",
        ),
        (-want, "The sign is flipped: (clean - corrupted) times the average gradient."),
    ]
    with t.part(f"{steps} steps on a tiny {p['family']} model", points=1):
        got = t.call(integrated_patching, lm, clean, corrupted, metric, steps)
        got = t.tensor(
            got,
            f"integrated_patching(..., n_steps={steps})",
            shape=(clean.shape[1],),
            hint="One score per position: (pos,).",
        )
        t.close(
            got,
            want,
            "midpoint-rule integrated gradients from the corrupted to the clean "
            "embeddings, summed over d_model and the batch",
            atol=1e-4,
            scale=_scale(want),
            mistakes=mistakes,
        )
    with t.part("completeness: with many steps the scores add up to 1 - 0", points=1):
        got = t.call(integrated_patching, lm, clean, corrupted, metric, 32)
        got = t.tensor(got, "integrated_patching(..., n_steps=32)", shape=(clean.shape[1],))
        t.close(
            got.sum(),
            1.0,
            "the sum of the scores is metric(clean) - metric(corrupted) = 1",
            atol=0.05,
            hint="Average the gradients over the steps (do not sum them), and "
            "multiply by (clean - corrupted) embeddings.",
        )


EXERCISES = {
    "normalised_metric": check_normalised_metric,
    "patch_grid": check_patch_grid,
    "patch_heads": check_patch_heads,
    "activations_and_grads": check_activations_and_grads,
    "attribution_patching": check_attribution_patching,
    "head_attribution": check_head_attribution,
    "agreement": check_agreement,
    "patches_to_find_top_k": check_patches_to_find_top_k,
    "qk_fix": check_qk_fix,
    "integrated_patching": check_integrated_patching,
}
