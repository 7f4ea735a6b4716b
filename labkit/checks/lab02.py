"""Checks for lab 02: activation patching and ROME-style causal tracing.

Each check runs your function on tiny random models (``labkit.tiny``), where a forward pass
takes milliseconds, made into sharper test problems: weights scaled up so that predictions are
confident and depend on the input, norm weights and biases that are not 1 and 0 (so a missing
final norm shows), embedding columns of different sizes. Expected answers come from a
reference built on ``labkit.hooks`` and are computed before your code runs; whole grids are
compared, never a few cells. Where your answer matches a known mistake, the hint names it.

Loops, batches, ``labkit.hooks``, nnsight and float64 are all accepted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from labkit.checks.core import Checker, check, skip_if_unattempted
from labkit.checks.guards import hook_count
from labkit.hooks import capture, hooked
from labkit.models import LabModel
from labkit.tiny import tiny_model

__all__ = [
    "EXERCISES",
    "ROLES",
    "check_average_indirect_effect",
    "check_average_recovery",
    "check_collect_activations",
    "check_cross_context_curve",
    "check_corrupt_subject",
    "check_patch_position",
    "check_recovery",
    "check_restoration_grid",
    "skip_if_unattempted",
]

ROLES = ("subject", "last subject token", "after subject", "last token")
_SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
_SITE_NAMES = ("resid_post", "mlp_out", "attn_out")
# Pairs of prompts of the same length (the tiny tokenizer: one byte, one token).
_PAIRS = (
    ("The cat sat", "A dog ran!!"),
    ("Cats nap.", "Dogs run!"),
    ("Red sun up", "Big owl ok"),
    ("I saw a bat", "We met two."),
)
# Prompts with a subject that has tokens before and after it.
_SUBJECTS = (
    ("A cat sat.", "cat"),
    ("The sun is hot", "sun"),
    ("My dog ran", "dog"),
    ("An owl flew by", "owl"),
)


# ----- test problems -----------------------------------------------------------------------------
_MODELS: dict[tuple[str, int], tuple[LabModel, dict[str, torch.Tensor], int]] = {}


def _build(family: str, seed: int) -> LabModel:
    """A tiny random model, sharpened into a test problem.

    * 2-d weights x25: at their initial scale, tiny models predict an almost uniform
      distribution that hardly depends on the input, so a wrong patch would move
      probabilities by 1e-7;
    * norm weights in 0.5..1.5 and nonzero biases: with norm weights of 1, forgetting the
      final norm or taking the wrong side of a norm can go unnoticed;
    * embedding columns scaled by 0.3..3 and the rows of letters by 1.5, so that the std of
      the embedding matrix differs from the std of a prompt's embeddings and from the mean
      std per dimension.
    """
    lm = tiny_model(family, seed=seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    letters = lm.tokenizer.convert_tokens_to_ids(
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    )
    with torch.no_grad():
        for param in lm.model.parameters():
            if param.dim() == 2:
                param.mul_(25.0)
            elif bool((param == 1).all()):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
            elif bool((param == 0).all()):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
        embed = lm.embed.weight  # (vocab, d_model)
        embed.mul_(0.3 + 2.7 * torch.rand(lm.d_model, generator=generator))
        embed[letters] *= 1.5
        # transformers installs its output-capturing hooks on the first call that asks for
        # hidden states or attentions; install them now, so a student's call does not look
        # like one that left hooks behind.
        lm.model(lm.to_tokens("a"), output_hidden_states=True, output_attentions=True)
    return lm


def _untouched(lm: LabModel, pristine: dict[str, torch.Tensor], hooks: int, config: dict) -> bool:
    net = lm.model
    if hook_count(net) != hooks or any("forward" in vars(m) for m in net.modules()):
        return False
    if any(m.training for m in net.modules()) or net.config.to_dict() != config:
        return False
    if any(p.requires_grad or p.grad is not None for p in net.parameters()):
        return False
    state = net.state_dict()
    return state.keys() == pristine.keys() and all(
        torch.equal(state[k], v) for k, v in pristine.items()
    )


def _model(family: str = "llama", seed: int = 1) -> LabModel:
    """A test-problem model: cached, but rebuilt whenever anything about it changed."""
    key = (family, seed)
    if key in _MODELS and _untouched(*_MODELS[key]):
        return _MODELS[key][0]
    lm = _build(family, seed)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    lm.model.eval()
    _MODELS[key] = (lm, state, hook_count(lm.model), lm.model.config.to_dict())
    return lm


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and a busy machine does not stall them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Mistakes:
    """``(wrong answer, hint)`` pairs for ``t.close``, computed only if an answer is wrong.

    Working out what each mistake would return costs forward passes; a right answer never
    needs them. They are computed after the student's call has returned, when ``t.watch`` has
    already verified (and repaired) the model.
    """

    def __init__(self, make: Callable[[], list[tuple[torch.Tensor, str]]]) -> None:
        self._make, self._items = make, None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        if self._items is None:
            self._items = list(self._make())
        return iter(self._items)


def _ids(lm: LabModel, text: str) -> torch.Tensor:
    return lm.to_tokens(text, prepend_anchor=True)


def _positions(text: str, span: str) -> list[int]:
    """Token positions of ``span`` in ``text`` (one byte per token, anchor at 0)."""
    start = 1 + text.index(span)
    return list(range(start, start + len(span)))


def _window(layer: int, window: int, n_layers: int) -> list[int]:
    """The layers a windowed restoration at ``layer`` covers (ROME's rule)."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


# An edit of one batch row: (site, layer, position or None for all, value, add instead of set).
Edit = tuple[str, int, "int | None", torch.Tensor, bool]


def _run(
    lm: LabModel, edits: Sequence[Sequence[Edit]], *, unnormed: bool = False, **inputs
) -> torch.Tensor:
    """Last-position logits (rows, vocab), float64, where batch row r gets ``edits[r]``.

    ``inputs`` (input_ids or inputs_embeds) has one row per edit list. The reference for every
    check in this lab: one forward pass, any number of single-activation edits per row. With
    ``unnormed``, the logits skip the final norm (a known mistake's answer).
    """
    by_site: dict[tuple[str, int], list] = defaultdict(list)
    for row, row_edits in enumerate(edits):
        for site, layer, position, value, add in row_edits:
            by_site[site, layer].append((row, position, value, add))
    last = lm.n_layers - 1
    with ExitStack() as stack, torch.no_grad():
        for (site, layer), items in by_site.items():

            def edit(act: torch.Tensor, items=items) -> torch.Tensor:  # (rows, pos, d_model)
                act = act.clone()
                for row, position, value, add in items:
                    where = (row, slice(None) if position is None else position)  # int or slice
                    act[where] = act[where] + value if add else value.to(act.dtype)
                return act

            stack.enter_context(hooked(lm, site, layer % lm.n_layers, edit))
        final = stack.enter_context(capture(lm, "resid_post", last))
        logits = lm.model(**inputs).logits[:, -1]
    if unnormed:
        logits = lm.unembed(final["resid_post", last][:, -1])
    return logits.double()


def _acts(lm: LabModel, sites: Sequence[str], **inputs: torch.Tensor) -> dict:
    with torch.no_grad(), capture(lm, list(sites)) as cache:
        lm.model(**inputs)
    return cache


# ----- Exercise 2.1 ------------------------------------------------------------------------------
def _collect_problem(lm: LabModel, tokens: torch.Tensor) -> dict[str, tuple]:
    """For each site: the expected activations (n_layers, pos, d_model) and known mistakes."""
    cache = _acts(lm, ["resid_pre", "resid_post", "mlp_out", "attn_out"], input_ids=tokens)
    with torch.no_grad():
        hidden = lm.model(tokens, output_hidden_states=True).hidden_states  # n_layers + 1
    inputs: dict[str, list[torch.Tensor]] = {"mlp": [], "o_proj": []}
    with ExitStack() as stack, torch.no_grad():
        for layer in range(lm.n_layers):
            for key, module in (("mlp", lm.mlp(layer)), ("o_proj", lm.attn_out_proj(layer))):

                def record(mod, args, key=key):
                    inputs[key].append(args[0].detach().clone())

                handle = module.register_forward_pre_hook(record)
                stack.callback(handle.remove)
        lm.model(tokens)
    stack_of = {s: cache.stack(s)[:, 0].double() for s in ("resid_pre", *_SITE_NAMES)}
    after_norm = torch.stack(hidden[1:])[:, 0].double()
    resid_post = (
        stack_of["resid_post"],
        [
            (
                after_norm,
                "Your last layer has the final norm applied: output_hidden_states' last "
                "entry is norm(resid_post), not resid_post. Take the blocks' outputs (hooks).",
            ),
            (
                stack_of["resid_pre"],
                "These are the blocks' inputs (resid_pre): hidden_states[0] "
                "is the embedding, so hidden_states[i + 1] is the output of block i.",
            ),
        ],
    )
    mlp = (
        stack_of["mlp_out"],
        [
            (
                torch.stack(inputs["mlp"])[:, 0].double(),
                "These are the MLPs' inputs (after the norm); record what the MLP module returns.",
            ),
            (
                stack_of["resid_post"],
                "You returned the residual stream (resid_post) for "
                "site='mlp_out': use the `site` argument.",
            ),
        ],
    )
    attn = (
        stack_of["attn_out"],
        [
            (
                torch.stack(inputs["o_proj"])[:, 0].double(),
                "These are the heads' outputs before "
                "the output projection W_O; attn_out is what the attention module returns (after "
                "W_O).",
            ),
            (
                stack_of["resid_pre"] + stack_of["attn_out"],
                "This is the residual stream after "
                "attention (resid_pre + attn_out), not the attention output alone.",
            ),
            (
                stack_of["resid_post"],
                "You returned the residual stream (resid_post) for "
                "site='attn_out': use the `site` argument.",
            ),
        ],
    )
    return {"resid_post": resid_post, "mlp_out": mlp, "attn_out": attn}


@check("Exercise 2.1: collect activations", points=3, timeout=30)
def check_collect_activations(collect_activations: Callable, t: Checker) -> None:
    families = (t.choice(("llama", "qwen2")), t.choice(("gpt2", "gpt_neox")))
    text = t.choice(_PAIRS)[0]
    with _one_thread():
        problems = []
        for family in families:
            lm = t.watch(_model(family), f"the tiny {family} model")
            tokens = _ids(lm, text)
            problems.append((family, lm, tokens, _collect_problem(lm, tokens)))
        for site in _SITE_NAMES:
            with t.part(f"{site} of every layer", points=1):
                for family, lm, tokens, expected in problems:
                    want, mistakes = expected[site]
                    call = f"collect_activations(lm, tokens, {site!r}) on a tiny {family} model"
                    for attempt in ("", " (called a second time)"):
                        got = t.call(collect_activations, lm, tokens, site)
                        got = t.tensor(
                            got,
                            call + attempt,
                            shape=tuple(want.shape),
                            hint="One row per layer, for the single prompt: "
                            "(n_layers, pos, d_model). output_hidden_states has n_layers + 1 "
                            "entries (the embedding first), and a cache has a batch dimension.",
                        )
                        t.close(
                            got,
                            want,
                            f"the {site} activations of every layer: {call}{attempt}",
                            atol=1e-5,
                            rtol=1e-4,
                            scale=float(want.abs().max()),
                            mistakes=mistakes,
                            hint=_collect_hint(site)
                            if not attempt
                            else "A second call must "
                            "give the same activations: do not keep activations from earlier "
                            "calls (a list created outside the function grows every call).",
                        )


def _collect_hint(site: str) -> str:
    if site == "resid_post":
        return "resid_post[layer] is the output of block `layer` (a hook on lm.blocks[layer])."
    module = "lm.mlp(layer)" if site == "mlp_out" else "lm.attn(layer)"
    return f"Record the output of {module} (the first element if it returns a tuple)."


# ----- Exercise 2.2 ------------------------------------------------------------------------------
_PROBS_SHAPE = "Return the probabilities of the next token at the last position: shape (vocab,)."


def _patch_problem(lm: LabModel, tokens: torch.Tensor, vectors: torch.Tensor) -> dict:
    """Expected probabilities (and known mistakes) for every (layer, position) cell.

    ``vectors`` (n_layers, pos, d_model) are the values patched in at each cell.
    """
    n_layers, n_pos = vectors.shape[:2]
    cells = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    rows = tokens.repeat(len(cells), 1)

    def probs(make: Callable[[int, int], list]) -> torch.Tensor:
        logits = _run(lm, [make(layer, pos) for layer, pos in cells], input_ids=rows)
        return logits.softmax(-1).view(n_layers, n_pos, -1)

    def edit(site, layer, pos, add=False, at=None):
        """Cell (layer, pos)'s vector, put at ``site`` of ``layer``, position ``at`` (default
        ``pos``; "all" for every position)."""
        at = pos if at is None else at
        return [(site, layer, None if at == "all" else at, vectors[layer, pos], add)]

    last = n_pos - 1
    logits = _run(lm, [edit("resid_post", L, p) for L, p in cells], input_ids=rows)
    expected = logits.softmax(-1).view(n_layers, n_pos, -1)
    mistakes = lambda: [  # noqa: E731
        (
            logits.view(n_layers, n_pos, -1),
            "You returned logits: apply softmax over the vocabulary.",
        ),
        (
            logits.log_softmax(-1).view(n_layers, n_pos, -1),
            "You returned log-probabilities: use softmax, not log_softmax.",
        ),
        (
            probs(lambda L, p: edit("resid_pre", L, p)),
            "You patched the block's input "
            "(resid_pre); the site is resid_post, the output of block `layer`.",
        ),
        (
            probs(lambda L, p: edit("resid_post", L, p, at="all")),
            "You overwrote every position; put the vector at `position` only.",
        ),
        (
            probs(lambda L, p: edit("resid_post", L, p, add=True)),
            "You added the vector to the activation; overwrite it instead.",
        ),
        (
            probs(lambda L, p: edit("resid_post", L, p, at=min(p + 1, last))),
            "You patched the next "
            "position (position + 1): positions count from 0, the anchor token included.",
        ),
        (
            probs(lambda L, p: edit("resid_post", L, p, at=max(p - 1, 0))),
            "You patched the previous "
            "position (position - 1): positions count from 0, the anchor token included.",
        ),
        (
            probs(
                lambda L, p: (
                    [("resid_pre", L + 1, p, vectors[L, p], False)] if L + 1 < n_layers else []
                )
            ),
            "You patched the input of block layer + 1 (or nothing after the last block).",
        ),
        (
            _run(lm, [edit("resid_post", L, p) for L, p in cells], unnormed=True, input_ids=rows)
            .softmax(-1)
            .view(n_layers, n_pos, -1),
            "Your result skips the final norm: the model applies it to the last block's "
            "output before the unembedding.",
        ),
    ]
    return {"expected": expected, "mistakes": _Mistakes(mistakes)}


@check("Exercise 2.2: patch one position", points=3, timeout=30)
def check_patch_position(patch_position: Callable, t: Checker) -> None:
    family = t.choice(("llama", "gpt2", "qwen2", "gpt_neox"))
    text, other_text = t.choice(_PAIRS)
    with _one_thread():
        lm = t.watch(_model(family), f"the tiny {family} model")
        tokens, other = _ids(lm, text), _ids(lm, other_text)
        n_pos, last_layer = tokens.shape[1], lm.n_layers - 1
        own = _acts(lm, ["resid_post"], input_ids=tokens).stack("resid_post")[:, 0]
        donor = _acts(lm, ["resid_post"], input_ids=other).stack("resid_post")[:, 0]
        clean = _run(lm, [[]], input_ids=tokens).softmax(-1)[0]
        swapped = _patch_problem(lm, tokens, donor)
        rng = torch.Generator().manual_seed(t.seed(2))
        own_cells = [
            (layer, int(torch.randint(n_pos, (1,), generator=rng))) for layer in range(lm.n_layers)
        ]
        final = lm.final_norm(donor[last_layer, 2][None, None])[0, 0]
        direct = lm.unembed(final).double().softmax(-1)

        def compare(got, expected, what, mistakes=(), hint=""):
            got = t.tensor(
                got,
                what,
                shape=(lm.vocab_size,),
                hint="Return the probabilities "
                "of the next token at the last position, shape (vocab,).",
            )
            t.close(got, expected, what, atol=1e-6, rtol=1e-4, mistakes=mistakes, hint=hint)

        with t.part("another prompt's activation, at every layer and position", points=1):
            answers = []
            for layer in range(lm.n_layers):
                for position in range(n_pos):
                    what = f"patch_position(lm, tokens, {layer}, {position}, vector)"
                    got = t.call(
                        patch_position, lm, tokens, layer, position, donor[layer, position]
                    )
                    answers.append(
                        t.tensor(got, what, shape=(lm.vocab_size,), hint=_PROBS_SHAPE).double()
                    )
            t.close(
                torch.stack(answers).view(lm.n_layers, n_pos, -1),
                swapped["expected"],
                "patch_position(lm, tokens, layer, position, vector) at every (layer, position), "
                "vector = another prompt's resid_post there, against a reference patch (index: "
                "layer, position, token)",
                atol=1e-6,
                rtol=1e-4,
                mistakes=swapped["mistakes"],
                hint="Replace resid_post[layer] (the output of block `layer`) at `position` only, "
                "in a fresh run of `tokens`, and return softmax of the last position's logits.",
            )

        with t.part("patching a run's own activation back in changes nothing", points=1):
            for layer, position in own_cells:
                got = t.call(patch_position, lm, tokens, layer, position, own[layer, position])
                compare(
                    got,
                    clean,
                    f"patch_position(lm, tokens, {layer}, {position}, the run's own "
                    f"resid_post[{layer}][{position}]) gives the unpatched probabilities",
                    mistakes=[
                        (clean.log(), "You returned log-probabilities: use softmax."),
                        (torch.zeros_like(clean), "Your probabilities are all zero."),
                    ],
                    hint="Patching in the value that is already there must change nothing: "
                    "patch resid_post (the output of block `layer`), and apply softmax to the "
                    "last position's logits.",
                )

        with t.part("at the last layer: only the last position matters", points=1):
            got = t.call(patch_position, lm, tokens, last_layer, 2, donor[last_layer, 2])
            compare(
                got,
                clean,
                f"patching position 2 after the last block ({last_layer}) cannot change the "
                "next-token prediction at the last position",
                hint="Replace the activation at the given position only, not every position.",
            )
            got = t.call(patch_position, lm, tokens, last_layer, n_pos - 1, donor[last_layer, 2])
            compare(
                got,
                direct,
                "patching vector v after the last block, at the last position, gives "
                "softmax(unembed(final_norm(v)))",
                mistakes=[
                    (
                        lm.unembed(donor[last_layer, 2]).double().softmax(-1),
                        "Your "
                        "result skips the final norm: the model applies it before the "
                        "unembedding.",
                    )
                ],
                hint="Overwrite the activation (do not add to it) at the output of block "
                "`layer`, and let the model finish the forward pass (final norm, unembedding).",
            )


# ----- Exercise 2.4 ------------------------------------------------------------------------------
def _z(value: float, expected: float, se: float) -> float:
    return abs(value - expected) / se


@check("Exercise 2.4: corrupt the subject", points=4, timeout=30)
def check_corrupt_subject(corrupt_subject: Callable, t: Checker) -> None:
    text, span = t.choice(_SUBJECTS)
    families = ("llama", t.choice(("gpt2", "gpt_neox")))
    n, seed = 200, t.seed(0)
    with _one_thread():
        problems = []
        for family in families:
            lm = t.watch(_model(family), f"the tiny {family} model")
            tokens = _ids(lm, text)
            with torch.no_grad():
                clean = lm.embed(tokens)[0].double()  # (pos, d_model)
            problems.append((family, lm, tokens, clean))
        subject = _positions(text, span)
        n_pos = len(text) + 1
        outside = [p for p in range(n_pos) if p not in subject]
        family, lm, tokens, clean = problems[0]
        sigma = lm.embed.weight.double().std().item()
        sigma_prompt = clean.std().item()
        sigma_columns = lm.embed.weight.double().std(0).mean().item()

        def corrupt(lm, tokens, n_samples=n, noise_scale=None, seed=seed, what=""):
            kwargs = {"n_samples": n_samples, "seed": seed}
            if noise_scale is not None:
                kwargs["noise_scale"] = noise_scale
            shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            call = f"corrupt_subject(lm, tokens, {subject}, {shown})" + what
            got = t.call(corrupt_subject, lm, tokens, list(subject), **kwargs)
            shape = (n_samples, n_pos, lm.d_model)
            return t.tensor(
                got,
                call,
                shape=shape,
                hint="Return the corrupted embeddings, one "
                "row per noise sample: (n_samples, pos, d_model).",
            ), call

        with t.part("the noise goes on the subject's token embeddings only", points=1):
            for family, lm_f, tokens_f, clean_f in problems:
                got, call = corrupt(lm_f, tokens_f, what=f" on a tiny {family} model")
                t.close(
                    got[:, outside].double(),
                    clean_f[outside].expand(n, -1, -1),
                    f"{call}: tokens outside the subject keep their embeddings lm.embed(tokens)",
                    atol=1e-6,
                    scale=float(clean_f.abs().max()),
                    hint="Add noise only at the subject positions, to the token embeddings "
                    "lm.embed(tokens) (the model adds any position embeddings itself).",
                )
                noise = got[:, subject].double() - clean_f[subject]  # (n, subject, d_model)
                t.true(
                    bool((noise != 0).any(-1).all()),
                    f"{call}: every subject position of every sample gets noise",
                    hint="Noise at each of the subject positions, in every sample.",
                )

        with t.part("each sample, position and dimension gets its own draw", points=1):
            got, call = corrupt(lm, tokens)
            noise = got[:, subject].double() - clean[subject]  # (n, subject, d_model)
            noise = noise - noise.mean()  # correlations of the centred noise
            for axis, name, hint in (
                (
                    0,
                    "consecutive samples",
                    "Draw noise of shape (n_samples, n_subject, "
                    "d_model), not one draw repeated for every sample (and do not re-seed the "
                    "generator inside a loop over samples).",
                ),
                (
                    1,
                    "consecutive subject positions",
                    "Draw different noise for each subject "
                    "position (do not re-seed the generator inside a loop over positions).",
                ),
                (
                    2,
                    "consecutive dimensions",
                    "Draw one number per dimension: noise of shape "
                    "(n_samples, n_subject, d_model), not one number per token.",
                ),
            ):
                a, b = (
                    noise.narrow(axis, 0, noise.shape[axis] - 1),
                    noise.narrow(axis, 1, noise.shape[axis] - 1),
                )
                corr = ((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt()).item()
                t.true(
                    abs(corr) < 5 / math.sqrt(a.numel()),
                    f"{call}: the noise of {name} is independent (correlation {corr:.3f}, "
                    f"more than 5 standard errors from 0)",
                    hint=hint,
                )

        with t.part("the noise is Gaussian with std noise_scale x std of the embeddings", points=1):
            got, call = corrupt(lm, tokens)
            noise = (got[:, subject].double() - clean[subject]).flatten()  # iid N(0, (3 sigma)^2)
            count = noise.numel()
            std = noise.std().item()
            want = 3 * sigma
            se = want / math.sqrt(2 * count)  # standard error of a sample std
            tol = 5 * se / want  # relative: 5 standard errors
            wrong = [
                (
                    3.0,
                    "Your noise has std noise_scale: multiply standard normal noise by "
                    "noise_scale * lm.embed.weight.std().",
                ),
                (
                    3 * sigma_prompt,
                    "You used the std of this prompt's embeddings; use the std "
                    "of the whole embedding matrix, lm.embed.weight.std().",
                ),
                (
                    3 * sigma_columns,
                    "You averaged the std per dimension; use the std of all "
                    "entries of the embedding matrix, lm.embed.weight.std().",
                ),
                (
                    3 * sigma**2,
                    "Your noise is scaled by the variance; use the standard "
                    "deviation lm.embed.weight.std().",
                ),
                (sigma, "Your noise has std 1 x the embedding std: scale it by noise_scale."),
            ]
            mean = noise.mean().item()
            t.true(
                _z(mean, 0.0, want / math.sqrt(count)) < 5,
                f"{call}: the noise has mean zero (got {mean:.4g}, more than 5 standard "
                f"errors from 0)",
                hint="Draw with torch.randn (mean 0), not torch.rand (uniform on 0..1).",
            )
            t.close(
                std,
                want,
                f"{call}: the std of the noise (over {count} values) is 3 x "
                f"lm.embed.weight.std() = {want:.4g}, within 5 standard errors",
                atol=0.0,
                rtol=tol,
                mistakes=[(v, h) for v, h in wrong if abs(v - want) > tol * want],
                hint="Scale standard normal noise (torch.randn) by noise_scale * "
                "lm.embed.weight.std().",
            )
            tails = (noise.abs() > 2 * std).double().mean().item()
            gaussian = math.erfc(2 / math.sqrt(2))  # P(|z| > 2) = 0.0455
            t.true(
                _z(tails, gaussian, math.sqrt(gaussian * (1 - gaussian) / count)) < 5,
                f"{call}: the noise is Gaussian: {gaussian:.1%} of its values should lie beyond"
                f" 2 std, but {tails:.1%} do",
                hint="Use torch.randn (normal), not uniform noise scaled to the same std.",
            )

        with t.part(
            "seeded: the same seed gives the same noise, another seed other noise", points=1
        ):
            first, call = corrupt(lm, tokens, n_samples=20)
            again, _ = corrupt(lm, tokens, n_samples=20, what=" (a second time)")
            t.true(
                torch.equal(first, again),
                f"{call} twice gives exactly the same embeddings",
                hint="Draw from torch.Generator().manual_seed(seed), created inside the "
                "function, not from the global random state or a generator kept between calls.",
            )
            other, other_call = corrupt(lm, tokens, n_samples=20, seed=seed + 1)
            t.true(
                not torch.equal(first, other),
                f"{other_call} gives different noise than seed={seed}",
                hint="Use the `seed` argument to seed your generator.",
            )
            scaled, scaled_call = corrupt(lm, tokens, n_samples=n, noise_scale=1.5)
            noise = (scaled[:, subject].double() - clean[subject]).flatten()
            want = 1.5 * sigma
            t.close(
                noise.std().item(),
                want,
                f"{scaled_call}: noise_scale=1.5 gives noise of std 1.5 x the embedding std",
                atol=0.0,
                rtol=5 / math.sqrt(2 * noise.numel()),
                mistakes=[
                    (
                        3 * sigma,
                        "Your noise ignores noise_scale (it has std 3 x the "
                        "embedding std): use the argument, not a hard-coded 3.",
                    )
                ],
                hint="Scale by the noise_scale argument.",
            )


# ----- Exercise 2.5 ------------------------------------------------------------------------------
def _grid_problem(
    lm: LabModel, tokens: torch.Tensor, corrupted: torch.Tensor, target_id: int
) -> Callable:
    """A function (site, window, mistake) -> grid (n_layers, pos): the reference and mistakes.

    Each grid is one forward pass of the tiny model: one batch row per (layer, position,
    noise sample).
    """
    n_samples, n_pos, _ = corrupted.shape
    n_layers = lm.n_layers
    clean_embeds = lm.embed(tokens).detach()
    clean = _acts(lm, ["resid_pre", "resid_post", "mlp_out", "attn_out"], input_ids=tokens)
    noisy = _acts(lm, ["resid_post", "mlp_out", "attn_out"], inputs_embeds=corrupted)
    p_clean = _run(lm, [[]], input_ids=tokens).softmax(-1)[0, target_id].item()
    p_corrupted = _run(lm, [[]] * n_samples, inputs_embeds=corrupted).softmax(-1)[:, target_id]
    p_corrupted = p_corrupted.mean().item()
    cells = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]

    def grid(site: str, window: int = 1, mistake: str = "") -> torch.Tensor:
        name = _SITE_OF[site]
        if mistake == "site resid_pre":
            name = "resid_pre"
        elif mistake == "swapped site":
            name = {"mlp_out": "attn_out", "attn_out": "mlp_out"}.get(name, name)
        elif mistake == "resid in window":
            name = "resid_post"

        def layers(layer: int) -> list[int]:
            if site == "resid" or mistake == "no window":
                return [layer]
            if mistake == "window from layer":
                return list(range(layer, min(n_layers, layer + window)))
            if mistake == "window too short":
                return list(range(max(0, layer - window // 2), min(n_layers, layer + window // 2)))
            if mistake == "window wraps":
                return list(range(layer - window // 2, min(n_layers, layer - (-window // 2))))
            return _window(layer, window, n_layers)

        def position(pos: int) -> int | slice:
            if mistake == "next position":
                return min(pos + 1, n_pos - 1)
            return slice(None) if mistake == "every position" else pos

        # Row (L, p, s) restores cell (L, p) in noise sample s; "noising" runs the clean prompt
        # with the corrupted activation put in instead.
        source, embeds = clean, corrupted.repeat(len(cells), 1, 1)
        if mistake == "noising":
            source, embeds = noisy, clean_embeds.expand(len(cells) * n_samples, -1, -1)

        def value(low: int, p: int, s: int) -> torch.Tensor:
            act = source[name, low % n_layers]  # (1 or n_samples, pos, d_model)
            return act[s % act.shape[0], position(p)]

        edits = [
            [(name, low, position(p), value(low, p, s), False) for low in layers(L)]
            for L, p in cells
            for s in range(n_samples)
        ]
        logits = _run(lm, edits, inputs_embeds=embeds).view(n_layers, n_pos, n_samples, -1)
        if mistake == "mean logits":
            return logits.mean(2).softmax(-1)[..., target_id]
        probs = logits.softmax(-1)[..., target_id]  # (n_layers, pos, samples)
        if mistake == "first sample":
            return probs[..., 0]
        result = probs.mean(-1)
        if mistake == "normalised":
            return (result - p_corrupted) / (p_clean - p_corrupted)
        return result

    grid.p_clean, grid.p_corrupted = p_clean, p_corrupted
    return grid


_GRID_MISTAKES = {
    "next position": "Your grid matches restoring position p + 1 in column p: positions count "
    "from 0, the anchor token included.",
    "site resid_pre": "Your grid matches restoring resid_pre (the input of block L); restore "
    "resid_post, its output.",
    "every position": "Your grid matches restoring every position of the layer: a cell "
    "restores one (layer, position).",
    "first sample": "Your grid uses only the first noise sample: average p(target) over all "
    "samples.",
    "mean logits": "Your grid averages the logits over samples before the softmax: average "
    "the probabilities.",
    "normalised": "Your grid is normalised to 0..1 (recovery); return the raw probability "
    "p(target).",
    "noising": "Your grid runs the clean prompt with the corrupted activation at each cell "
    "(noising); restore the clean activation in the corrupted run (denoising).",
    "no window": "Your grid restores only layer L: restore every layer of the window around L.",
    "window from layer": "Your window starts at L; it is centred on L: range(max(0, L - w // 2),"
    " min(n_layers, L - (-w // 2))).",
    "window too short": "Your window is one layer short: its end is L - (-w // 2) (ceil), not "
    "L + w // 2.",
    "window wraps": "Your window reaches below layer 0 and wraps around to the last layers "
    "(negative indices): clip its start at max(0, L - w // 2).",
    "swapped site": "Your grid matches the other module (attention for 'mlp', MLP for 'attn').",
    "resid in window": "Your grid restores the residual stream over the window; for 'mlp' and "
    "'attn', restore the module's output (mlp_out, attn_out).",
}
_SITE_MISTAKES = {
    "resid": (
        "next position",
        "site resid_pre",
        "every position",
        "first sample",
        "mean logits",
        "normalised",
        "noising",
    ),
    "mlp": (
        "no window",
        "window from layer",
        "window too short",
        "window wraps",
        "swapped site",
        "resid in window",
        "next position",
        "every position",
        "normalised",
    ),
    "attn": (
        "no window",
        "window from layer",
        "window too short",
        "window wraps",
        "swapped site",
        "resid in window",
        "next position",
        "every position",
        "normalised",
    ),
}


@check("Exercise 2.5: the restoration grid", points=5, timeout=60)
def check_restoration_grid(restoration_grid: Callable, t: Checker) -> None:
    family = t.choice(("llama", "gpt2", "qwen2", "gpt_neox"))
    text, span = t.choice(_SUBJECTS)
    n_samples = t.choice((3, 2, 4))
    with _one_thread():
        lm = t.watch(_model(family), f"the tiny {family} model")
        tokens = _ids(lm, text)
        subject = _positions(text, span)
        n_layers, n_pos = lm.n_layers, tokens.shape[1]
        clean_embeds = lm.embed(tokens).detach()  # (1, pos, d_model)
        generator = torch.Generator().manual_seed(t.seed(0))
        noise = torch.randn(n_samples, len(subject), lm.d_model, generator=generator)
        corrupted = clean_embeds.repeat(n_samples, 1, 1)
        corrupted[:, subject] += 3 * lm.embed.weight.std() * noise
        with torch.no_grad():
            target_id = int(lm.model(tokens).logits[0, -1].argmax())
        grid_of = _grid_problem(lm, tokens, corrupted, target_id)
        windows = {"resid": 1, "mlp": 2, "attn": 3}
        expected = {site: grid_of(site, w) for site, w in windows.items()}
        mistakes = {
            site: _Mistakes(
                lambda site=site, names=names: [
                    (grid_of(site, windows[site], m), _GRID_MISTAKES[m]) for m in names
                ]
            )
            for site, names in _SITE_MISTAKES.items()
        }
        flat = torch.full((n_layers, n_pos), grid_of.p_clean)
        shape = (n_layers, n_pos)

        def grid(site: str, window: int, embeds: torch.Tensor, what: str = "") -> tuple:
            call = f"restoration_grid(lm, tokens, corrupted, target_id, {site!r}, {window}){what}"
            got = t.call(restoration_grid, lm, tokens, embeds, target_id, site, window)
            return t.tensor(
                got, call, shape=shape, hint="One value per (layer, position): (n_layers, pos)."
            ), call

        with t.part("the noise is given, not drawn: same input, same grid", points=1):
            first, call = grid("resid", 1, corrupted)
            again, _ = grid("resid", 1, corrupted, " (a second time)")
            t.close(
                again,
                first,
                f"{call} twice gives the same grid",
                atol=1e-6,
                hint="Use the corrupted embeddings you were given for every restored run; draw "
                "no noise inside restoration_grid.",
            )

        with t.part("the residual-stream grid, every cell", points=1):
            got, call = grid("resid", 1, corrupted)
            t.close(
                got,
                expected["resid"],
                f"{call}: every cell against a reference restoration of that one cell",
                atol=2e-5,
                rtol=1e-4,
                mistakes=mistakes["resid"],
                hint="Cell (L, p): run the corrupted embeddings with the clean resid_post[L] put "
                "back at position p only, and average p(target) over the noise samples.",
            )
            got, call = grid("resid", 3, corrupted)
            t.close(
                got,
                expected["resid"],
                f"{call}: the window is ignored for 'resid' (ROME restores one layer of the "
                "residual stream)",
                atol=2e-5,
                rtol=1e-4,
                hint="Use the window only for 'mlp' and 'attn'.",
            )

        for site in ("mlp", "attn"):
            module = "MLP" if site == "mlp" else "attention"
            with t.part(
                f"the {module} grid with a window of {windows[site]} layers, every cell", points=1
            ):
                got, call = grid(site, windows[site], corrupted)
                t.close(
                    got,
                    expected[site],
                    f"{call}: every cell against a reference restoration of that cell",
                    atol=2e-5,
                    rtol=1e-4,
                    mistakes=mistakes[site],
                    hint=f"Cell (L, p): restore the clean {_SITE_OF[site]} at position p in "
                    "every layer of range(max(0, L - w // 2), min(n_layers, L - (-w // 2))), "
                    "all in the same run.",
                )

        with t.part("with no noise, every cell is the clean probability", points=1):
            unnoised = clean_embeds.repeat(2, 1, 1)
            got, call = grid("resid", 1, unnoised, " with noise-free embeddings")
            t.close(
                got,
                flat,
                f"{call}: with no noise at all, every cell gives the clean probability",
                atol=2e-5,
                rtol=1e-4,
                hint="Run the embeddings you were given (lm.model(inputs_embeds=...)), and add "
                "no noise of your own; return raw probabilities (not normalised).",
            )


# ----- Exercise 2.7 ------------------------------------------------------------------------------
def _aie(grids, corrupted_probs, subjects, mistake: str = "") -> torch.Tensor:
    """The reference average indirect effect (n_layers, 4), or a known mistake's."""
    n_layers = grids[0].shape[0]
    per_role: list[list[torch.Tensor]] = [[] for _ in ROLES]
    for grid, low, subject in zip(grids, corrupted_probs, subjects, strict=True):
        grid = grid.double()
        effect = grid if mistake == "no subtraction" else grid - low
        last_subject, last = subject[-1], grid.shape[1] - 1
        if mistake == "last subject off by one":
            last_subject += 1
        roles = [list(subject[:-1]), [last_subject], list(range(last_subject + 1, last)), [last]]
        if mistake == "whole subject":
            roles[0] = list(subject)
        if mistake == "after includes last":
            roles[2] = list(range(last_subject + 1, last + 1))
        if mistake == "includes prefix":
            roles[0] = list(range(0, last_subject))
        for column, positions in enumerate(roles):
            if mistake == "pooled":
                per_role[column] += [effect[:, p] for p in positions]
            elif positions:
                per_role[column].append(effect[:, positions].mean(1))
            elif mistake == "counts every prompt":
                per_role[column].append(torch.zeros(n_layers, dtype=torch.float64))
    out = torch.zeros(n_layers, len(ROLES), dtype=torch.float64)
    for column, effects in enumerate(per_role):
        if effects:
            out[:, column] = torch.stack(effects).mean(0)
    return out


_AIE_MISTAKES = {
    "no subtraction": "You averaged the restored probabilities; the indirect effect is the "
    "restored probability minus that prompt's corrupted probability.",
    "pooled": "You averaged over all tokens of a role at once, so prompts with longer subjects "
    "weigh more: average within each prompt first, then over prompts.",
    "counts every prompt": "You divided by the number of all prompts; average only over the "
    "prompts that have tokens in that role (a one-token subject has no 'subject' tokens).",
    "last subject off by one": "Your 'last subject token' is the token after the subject: it is "
    "subject[-1].",
    "whole subject": "Your 'subject' column includes the last subject token; it is the subject "
    "tokens before the last one.",
    "after includes last": "Your 'after subject' includes the last token; it stops before it.",
    "includes prefix": "Your 'subject' column includes the tokens before the subject; they "
    "belong to no role.",
}


def _aie_problem(t: Checker) -> tuple[list, list, list]:
    """Random grids: 3 layers, prompts with subjects of 1-3 tokens, some with no tokens between
    the subject and the last token."""
    rng = torch.Generator().manual_seed(t.seed(5))
    grids, lows, subjects = [], [], []
    for i, (start, size, after) in enumerate([(2, 3, 2), (1, 1, 3), (3, 2, 0), (1, 2, 1)]):
        n_pos = start + size + after + 1
        grids.append(torch.rand(3, n_pos, generator=rng) * 0.8 + 0.1 * i)
        lows.append(round(0.05 + 0.1 * torch.rand(1, generator=rng).item(), 4))
        subjects.append(list(range(start, start + size)))
    return grids, lows, subjects


@check("Exercise 2.7: average indirect effect", points=2, timeout=30)
def check_average_indirect_effect(average_indirect_effect: Callable, t: Checker) -> None:
    # Hand-made: two prompts, 2 layers. A: 7 tokens, subject 1..3. B: 5 tokens, subject 2.
    grid_a = torch.tensor(
        [[0.1, 0.2, 0.3, 0.5, 0.4, 0.2, 0.6], [0.1, 0.1, 0.2, 0.9, 0.3, 0.5, 0.8]]
    )
    grid_b = torch.tensor([[0.2, 0.2, 0.7, 0.3, 0.5], [0.2, 0.2, 0.4, 0.6, 0.9]])
    hand = ([grid_a, grid_b], [0.1, 0.2], [[1, 2, 3], [2]])
    random = _aie_problem(t)
    problems = [
        ("two hand-made grids (prompt B has a one-token subject)", hand),
        (
            "four random grids (3 layers; subjects of 1-3 tokens; one prompt with no token "
            "between subject and last token)",
            random,
        ),
    ]
    expected = [
        (_aie(*p), [(_aie(*p, m), h) for m, h in _AIE_MISTAKES.items()]) for _, p in problems
    ]

    def compare(what: str, args: tuple, want: torch.Tensor, mistakes: list) -> None:
        got = t.call(average_indirect_effect, *args)
        got = t.tensor(
            got,
            f"average_indirect_effect on {what}",
            shape=tuple(want.shape),
            hint=f"One row per layer and one column per role, in the order {ROLES}.",
        )
        for column, role in enumerate(ROLES):
            t.close(
                got[:, column],
                want[:, column],
                f"the {role!r} column on {what}: indirect effect = restored minus corrupted "
                "probability, averaged within each prompt, then over the prompts that have "
                "tokens in that role",
                atol=1e-6,
                mistakes=[(m[:, column], h) for m, h in mistakes],
                hint=_role_hint(role),
            )

    with t.part("two hand-made grids", points=1):
        (what, args), (want, mistakes) = problems[0], expected[0]
        compare(what, args, want, mistakes)
        single = ([grid_a], [0.1], [[1, 2, 3]])
        compare("a single prompt", single, _aie(*single), [])
    with t.part("random grids", points=1):
        (what, args), (want, mistakes) = problems[1], expected[1]
        compare(what, args, want, mistakes)


def _role_hint(role: str) -> str:
    return {
        "subject": "'subject' means the subject tokens before its last one (tokens before "
        "the subject are not counted anywhere).",
        "last subject token": "The last subject token is subject_positions[-1].",
        "after subject": "'after subject' is every token after the subject except the last.",
        "last token": "The last token is position -1 of each prompt.",
    }[role]


# ----- Exercise 2.3 ------------------------------------------------------------------------------
# Pairs of prompts of different lengths: (recipient, donor).
_CROSS = (
    ("The cat sat", "A dog ran far."),
    ("Cats nap.", "Big dogs run!"),
    ("Red sun up", "An owl flew by"),
)
_CROSS_MISTAKES = {
    "every position": "Your curve matches overwriting every position of the recipient with the "
    "donor's last vector (labkit.hooks.patch with positions=None patches all of them): patch "
    "the last position only.",
    "swapped": "Your curve matches patching the recipient's vector into the donor's run: the "
    "run is the recipient's, the patched vector is the donor's.",
    "resid_pre": "Your curve is shifted by one layer: it matches patching resid_pre[L] (the "
    "input of block L); patch resid_post[L], the output of block L.",
    "hidden_states": "Your donor vector at layer L is the donor's hidden_states[L], the input "
    "of block L (hidden_states[0] is the embedding): take hidden_states[L + 1] or a hook.",
    "same index": "Your donor vector is taken at the recipient's last index, which is not the "
    "donor's last position when the prompts differ in length: take the donor's position -1.",
    "every row": "Every batch row has every layer patched: row L must patch layer L only.",
    "logits": "You returned logits: return probabilities (softmax over the vocabulary).",
}


def _cross_problem(lm: LabModel, recipient: torch.Tensor, donor: torch.Tensor, target_id: int):
    """The expected curve (n_layers,) and a function giving each known mistake's curve."""
    n_layers = lm.n_layers
    cache = _acts(lm, ["resid_pre", "resid_post"], input_ids=donor)
    post = cache.stack("resid_post")[:, 0]  # (n_layers, pos_d, d_model)
    pre = cache.stack("resid_pre")[:, 0]
    rows = recipient.repeat(n_layers, 1)

    def curve(mistake: str = "") -> torch.Tensor:
        site, vectors, at, tokens = "resid_post", post[:, -1], -1, rows
        if mistake == "resid_pre":
            site, vectors = "resid_pre", pre[:, -1]
        if mistake == "hidden_states":
            vectors = pre[:, -1]
        if mistake == "same index":
            vectors = post[:, recipient.shape[1] - 1]
        if mistake == "every position":
            at = None
        if mistake == "swapped":
            other = _acts(lm, ["resid_post"], input_ids=recipient).stack("resid_post")[:, 0, -1]
            vectors, tokens = other, donor.repeat(n_layers, 1)
        if mistake == "every row":
            edits = [[(site, L, at, vectors[L], False) for L in range(n_layers)]] * n_layers
        else:
            edits = [[(site, L, at, vectors[L], False)] for L in range(n_layers)]
        logits = _run(lm, edits, input_ids=tokens)  # (n_layers, vocab)
        if mistake == "logits":
            return logits[:, target_id]
        return logits.softmax(-1)[:, target_id]

    return curve


def _cross_target(donor_probs: torch.Tensor, own_probs: torch.Tensor) -> int:
    """The token most likely in both runs: the tiny models' distributions are peaked, and a
    target with p = 1e-12 in one run would make many mistakes look alike."""
    return int(torch.minimum(donor_probs, own_probs).argmax())


def _close_log(t: Checker, got: torch.Tensor, expected: torch.Tensor, what: str, **kw) -> None:
    """Compare probabilities as log-probabilities: relative precision at every size."""
    mistakes = kw.pop("mistakes", ())
    if not bool((got > 0).all()):
        t.close(got, expected, what, atol=1e-6, rtol=1e-4, mistakes=mistakes, **kw)
        t.fail(what, "Some of your values are not positive: return probabilities.", kw["hint"])
    log_mistakes = _Mistakes(
        lambda: [(wrong.log(), hint) for wrong, hint in mistakes if bool((wrong > 0).all())]
    )
    t.close(
        got.double().log(),
        expected.double().log(),
        what + " (compared as log-probabilities)",
        atol=2e-4,
        rtol=1e-4,
        mistakes=log_mistakes,
        **kw,
    )


@check("Exercise 2.3: cross-context patching at every layer", points=3, timeout=30)
def check_cross_context_curve(cross_context_curve: Callable, t: Checker) -> None:
    family = t.choice(("llama", "gpt2", "qwen2", "gpt_neox"))
    recipient_text, donor_text = t.choice(_CROSS)
    with _one_thread():
        lm = t.watch(_model(family), f"the tiny {family} model")
        recipient, donor = _ids(lm, recipient_text), _ids(lm, donor_text)
        with torch.no_grad():
            donor_probs = lm.model(donor).logits[0, -1].double().softmax(-1)  # (vocab,)
            own_probs = lm.model(recipient).logits[0, -1].double().softmax(-1)
        target_id = _cross_target(donor_probs, own_probs)
        forward = _cross_problem(lm, recipient, donor, target_id)
        backward = _cross_problem(lm, donor, recipient, target_id)
        expected = {"forward": forward(), "backward": backward()}
        shape = (lm.n_layers,)

        def curve(run_tokens, donor_tokens, what: str) -> torch.Tensor:
            got = t.call(cross_context_curve, lm, run_tokens, donor_tokens, target_id)
            return t.tensor(
                got,
                what,
                shape=shape,
                hint="One probability per layer: p(target) in the recipient's run with layer L "
                "patched, shape (n_layers,).",
            )

        cases = [
            ("forward", recipient, donor, forward, "a donor longer than the recipient"),
            ("backward", donor, recipient, backward, "a donor shorter than the recipient"),
        ]
        for key, run_tokens, donor_tokens, problem, words in cases:
            with t.part(f"every layer, {words}", points=1):
                what = (
                    f"cross_context_curve(lm, recipient, donor, target_id) with {words}: every "
                    "layer against a reference patch of that one layer"
                )
                names = [m for m in _CROSS_MISTAKES if key == "forward" or m != "same index"]
                _close_log(
                    t,
                    curve(run_tokens, donor_tokens, what),
                    expected[key],
                    what,
                    mistakes=_Mistakes(
                        lambda problem=problem, names=names: [
                            (problem(m), _CROSS_MISTAKES[m]) for m in names
                        ]
                    ),
                    hint="Row L: run the recipient with its last position's resid_post[L] "
                    "replaced by the donor's last position's resid_post[L]; return softmax of "
                    "the last logits at target_id.",
                )

        with t.part("a prompt patched with itself gives its own probability everywhere", points=1):
            what = "cross_context_curve(lm, tokens, tokens, target_id): donor = recipient"
            _close_log(
                t,
                curve(recipient, recipient, what),
                own_probs[target_id].expand(shape),
                what,
                hint="Patching a run's own vector back in must change nothing; check that you "
                "patch the last position of a fresh run of the recipient.",
            )
            _close_log(
                t,
                curve(recipient, donor, what + " (then the donor again)")[-1:],
                donor_probs[target_id].reshape(1),
                "at the last layer the patched vector is the final residual stream, so the "
                "recipient predicts what the donor predicts",
                hint="At layer n_layers - 1 the curve must end on the donor run's p(target).",
            )


# ----- Exercise 2.6 ------------------------------------------------------------------------------
_RECOVERY_MISTAKES = {
    "no subtraction": "You divided the raw probability by the total effect: subtract p_corrupted "
    "first, (probs - p_corrupted) / (p_clean - p_corrupted).",
    "over clean": "You divided by p_clean; divide by the total effect p_clean - p_corrupted.",
    "ratio": "You returned probs / p_clean: recovery measures the part of the lost "
    "probability that came back, (probs - p_corrupted) / (p_clean - p_corrupted).",
    "reversed": "Your values are 1 - recovery: the clean probability must map to 1 and the "
    "corrupted one to 0.",
    "clipped": "You clipped to 0..1; keep values outside it: above 1 means the restored run "
    "beats the clean run, below 0 that the restoration hurts.",
    "min-max": "You normalised by the grid's own minimum and maximum; use the clean and "
    "corrupted runs' probabilities as the two ends of the scale.",
    "abs": "You took the absolute value of the total effect; keep its sign (when the corruption "
    "raises p(target), p_clean - p_corrupted is negative).",
    "percent": "You returned percentages: recovery is a fraction (1 = clean).",
    "log": "You normalised log-probabilities; normalise the probabilities themselves.",
}


def _recovery(probs: torch.Tensor, high: float, low: float, mistake: str = "") -> torch.Tensor:
    probs = probs.double()
    if mistake == "no subtraction":
        return probs / (high - low)
    if mistake == "over clean":
        return (probs - low) / high
    if mistake == "ratio":
        return probs / high
    if mistake == "min-max":
        return (probs - probs.min()) / (probs.max() - probs.min())
    if mistake == "abs":
        return (probs - low) / abs(high - low)
    if mistake == "log":
        return (probs.log() - math.log(low)) / (math.log(high) - math.log(low))
    value = (probs - low) / (high - low)
    return {
        "reversed": 1 - value,
        "clipped": value.clamp(0, 1),
        "percent": 100 * value,
    }.get(mistake, value)


@check("Exercise 2.6: recovery, normalised", points=2, timeout=10)
def check_recovery(recovery: Callable, t: Checker) -> None:
    rng = torch.Generator().manual_seed(t.seed(6))
    high, low = t.choice(((0.62, 0.08), (0.47, 0.02), (0.9, 0.31)))
    grid = 0.01 + 0.85 * torch.rand(4, 6, generator=rng)  # (n_layers, pos): some beyond high
    grid[0, 0], grid[1, 1] = high, low
    curve = 0.05 + 0.6 * torch.rand(5, generator=rng)  # (n_layers,)
    problems = [
        ("a (4, 6) grid", grid, high, low, "the clean run's p(target) is the larger"),
        (
            "a curve (5,) where the corruption raises p(target)",
            curve,
            round(low + 0.1, 4),
            round(high - 0.05, 4),
            "a negative total effect",
        ),
    ]
    for what, probs, p_clean, p_corrupted, note in problems:
        with t.part(f"{what} ({note})", points=1):
            call = f"recovery(probs, p_clean={p_clean}, p_corrupted={p_corrupted}) on {what}"
            expected = _recovery(probs, p_clean, p_corrupted)
            mistakes = [
                (_recovery(probs, p_clean, p_corrupted, m), h)
                for m, h in _RECOVERY_MISTAKES.items()
            ]
            got = t.call(recovery, probs, p_clean, p_corrupted)
            got = t.tensor(got, call, shape=tuple(probs.shape), hint="Same shape as probs.")
            t.close(
                got,
                expected,
                call,
                atol=1e-5,
                rtol=1e-4,
                mistakes=mistakes,
                hint="(probs - p_corrupted) / (p_clean - p_corrupted), element-wise.",
            )
            ends = torch.tensor([p_clean, p_corrupted])
            got = t.call(recovery, ends, p_clean, p_corrupted)
            t.close(
                t.tensor(got, "recovery of [p_clean, p_corrupted]", shape=(2,)),
                torch.tensor([1.0, 0.0]),
                f"recovery(tensor([p_clean, p_corrupted]), {p_clean}, {p_corrupted}) is [1, 0]",
                atol=1e-5,
                hint="The clean probability maps to 1, the corrupted one to 0.",
            )


# ----- Exercise 2.8 ------------------------------------------------------------------------------
_AVERAGE_RECOVERY_MISTAKES = {
    "no threshold": "You kept prompts whose total effect is below min_effect: their recovery "
    "divides by almost nothing. Leave out every prompt with p_clean - p_corrupted < min_effect.",
    "zeroed": "You counted the prompts below min_effect as zero recovery; leave them out of the "
    "average altogether (a zero would pull every role towards 'no effect').",
    "abs threshold": "You kept a prompt whose corruption raised p(target) (negative total "
    "effect): the threshold is on p_clean - p_corrupted itself, not its absolute value.",
    "clean threshold": "You filtered on the clean probability; filter on the total effect "
    "p_clean - p_corrupted.",
    "ratio of means": "You divided the average indirect effect by the average total effect; "
    "normalise each prompt's grid first, then average the recoveries.",
    "raw": "You averaged raw indirect effects: normalise each prompt's grid to recovery first.",
    "clipped": "You clipped recoveries to 0..1; keep them as they are.",
    "fixed threshold": "You ignored the min_effect argument.",
}


def _average_recovery(grids, highs, lows, subjects, min_effect, mistake: str = ""):
    keep = []
    for i, (high, low) in enumerate(zip(highs, lows, strict=True)):
        effect = high - low
        if mistake == "abs threshold":
            effect = abs(effect)
        if mistake == "clean threshold":
            effect = high
        threshold = 0.05 if mistake == "fixed threshold" else min_effect
        if effect >= threshold or mistake in ("no threshold", "zeroed"):
            keep.append(i)
    recs = []
    for i in keep:
        rec = _recovery(grids[i], highs[i], lows[i], "clipped" if mistake == "clipped" else "")
        if mistake == "zeroed" and highs[i] - lows[i] < min_effect:
            rec = torch.zeros_like(rec)
        if mistake in ("raw", "ratio of means"):
            rec = grids[i].double() - lows[i]
        recs.append(rec)
    out = _aie(recs, [0.0] * len(recs), [subjects[i] for i in keep])
    if mistake == "ratio of means":
        out = out / (sum(highs[i] - lows[i] for i in keep) / len(keep))
    return out


def _average_recovery_problem(t: Checker) -> tuple[list, list, list, list]:
    """Six prompts (3 layers; (start, size, after) of the subject): two with a clear total effect,
    one with a tiny one, one whose corruption raises p(target), one between the two thresholds
    the check uses, one with a clean probability below them."""
    rng = torch.Generator().manual_seed(t.seed(8))
    shapes = [(2, 3, 2), (1, 1, 2), (2, 2, 1), (1, 2, 2), (3, 1, 1), (1, 2, 1)]
    ends = [(0.71, 0.09), (0.52, 0.21), (0.33, 0.31), (0.12, 0.34), (0.4, 0.32), (0.03, 0.001)]
    grids, highs, lows, subjects = [], [], [], []
    for (start, size, after), (high, low) in zip(shapes, ends, strict=True):
        n_pos = start + size + after + 1
        grids.append(low + (high - low + 0.1) * torch.rand(3, n_pos, generator=rng))
        highs.append(high)
        lows.append(low)
        subjects.append(list(range(start, start + size)))
    return grids, highs, lows, subjects


@check("Exercise 2.8: average recovery over prompts", points=2, timeout=10)
def check_average_recovery(average_recovery: Callable, t: Checker) -> None:
    grids, highs, lows, subjects = _average_recovery_problem(t)
    shape = (3, len(ROLES))
    for min_effect, points in ((0.05, 1), (0.15, 1)):
        with t.part(f"six prompts, min_effect={min_effect}", points=points):
            what = (
                f"average_recovery(grids, clean_probs, corrupted_probs, subjects, {min_effect}) "
                "on six random grids (one with a tiny total effect, one whose corruption "
                "raises p(target))"
            )
            expected = _average_recovery(grids, highs, lows, subjects, min_effect)
            names = [
                m for m in _AVERAGE_RECOVERY_MISTAKES if min_effect != 0.05 or "fixed" not in m
            ]
            mistakes = [
                (
                    _average_recovery(grids, highs, lows, subjects, min_effect, m),
                    _AVERAGE_RECOVERY_MISTAKES[m],
                )
                for m in names
            ]
            got = t.call(average_recovery, grids, highs, lows, subjects, min_effect)
            got = t.tensor(
                got,
                what,
                shape=shape,
                hint=f"One row per layer and one column per role, in the order {ROLES}.",
            )
            t.close(
                got,
                expected,
                what,
                atol=1e-5,
                rtol=1e-4,
                mistakes=mistakes,
                hint="Keep the prompts with p_clean - p_corrupted >= min_effect; turn each kept "
                "grid into recovery (exercise 2.6); average by role as in exercise 2.7, with "
                "a corrupted level of 0.",
            )


# The grader's map: the name of each exercise's function in the notebook -> its check.
EXERCISES = {
    "collect_activations": check_collect_activations,
    "patch_position": check_patch_position,
    "cross_context_curve": check_cross_context_curve,
    "corrupt_subject": check_corrupt_subject,
    "restoration_grid": check_restoration_grid,
    "recovery": check_recovery,
    "average_indirect_effect": check_average_indirect_effect,
    "average_recovery": check_average_recovery,
}
