"""Checks for lab 02: activation patching and ROME-style causal tracing.

Each check takes your function, runs it on tiny random models (``labkit.tiny``) where every
forward pass takes milliseconds, and tests what must hold for *any* correct implementation:
invariants of patching (a clean-into-clean patch changes nothing, restoring the last residual
stream gives the clean run back), hand-computable cases, determinism under a fixed seed, and
spot checks of single cells against ``labkit.hooks``. Loops, batches, labkit hooks and nnsight
are all accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import torch

from labkit.checks.core import Checker, check, skip_if_unattempted
from labkit.hooks import capture, patch
from labkit.models import LabModel
from labkit.tiny import tiny_model

__all__ = [
    "EXERCISES",
    "ROLES",
    "check_average_indirect_effect",
    "check_collect_activations",
    "check_corrupt_subject",
    "check_patch_position",
    "check_restoration_grid",
    "skip_if_unattempted",
]

ROLES = ("subject", "last subject token", "after subject", "last token")
_SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
_PROMPT, _OTHER = "The cat sat on", "A dog ran by!"  # same length: 14 bytes = 14 tokens
_SUBJECT = [2, 3, 4]  # the tokens of "cat" (after "<anchor>The ")


def _tiny(family: str = "llama") -> LabModel:
    """A tiny random model with its weight matrices scaled up 25x.

    At their initial scale, tiny models predict an almost uniform distribution that hardly
    depends on the input, so patching would move probabilities by 1e-7. Scaled up, they make
    confident, input-dependent predictions, and a wrong restoration shows.
    """
    lm = tiny_model(family, seed=1)
    with torch.no_grad():
        for param in lm.model.parameters():
            if param.dim() == 2:
                param.mul_(25.0)
    return lm


def _ids(lm: LabModel, text: str) -> torch.Tensor:
    return lm.to_tokens(text, prepend_anchor=True)


def _probs(lm: LabModel, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(**inputs).logits[:, -1].float().softmax(-1)


# ----- Exercise 2.1 -------------------------------------------------------------------------
@check("2.1 collect_activations", points=1)
def check_collect_activations(collect_activations: Callable, t: Checker) -> None:
    for family in ("llama", "gpt2"):
        lm = _tiny(family)
        tokens = _ids(lm, _PROMPT)
        n_pos = tokens.shape[1]
        for site in ("resid_post", "mlp_out", "attn_out"):
            with torch.no_grad(), capture(lm, site) as cache:
                lm.model(tokens)
            expected = cache.stack(site)[:, 0]  # (n_layers, pos, d_model)
            got = t.call(collect_activations, lm, tokens, site)
            got = t.tensor(
                got,
                f"collect_activations(lm, tokens, {site!r}) on a tiny {family} model",
                shape=(lm.n_layers, n_pos, lm.d_model),
                hint="One row per layer, for the single prompt: (n_layers, pos, d_model).",
            )
            t.close(
                got,
                expected,
                f"the {site} activations of every layer of a tiny {family} model",
                atol=1e-5,
                hint=_collect_hint(site),
            )


def _collect_hint(site: str) -> str:
    if site == "resid_post":
        return (
            "resid_post[layer] is the output of block `layer`. Careful with "
            "output_hidden_states: hidden_states[0] is the embedding, and the last entry "
            "has the final norm applied."
        )
    return f"Record the output of each layer's {site.split('_')[0]} module, not the block's."


# ----- Exercise 2.2 -------------------------------------------------------------------------
@check("2.2 patch_position", points=1)
def check_patch_position(patch_position: Callable, t: Checker) -> None:
    lm = _tiny("llama")
    clean, other = _ids(lm, _PROMPT), _ids(lm, _OTHER)
    n_pos = clean.shape[1]
    with torch.no_grad(), capture(lm, "resid_post") as cache:
        lm.model(clean)
    with torch.no_grad(), capture(lm, "resid_post") as other_cache:
        lm.model(other)
    clean_probs = _probs(lm, input_ids=clean)[0]
    last = lm.n_layers - 1

    for layer, position in [(0, 3), (1, n_pos - 1), (last, 5)]:
        own = cache["resid_post", layer][0, position]
        got = t.call(patch_position, lm, clean, layer, position, own.clone())
        got = t.tensor(got, "the next-token probabilities", shape=(lm.vocab_size,))
        t.close(
            got,
            clean_probs,
            f"patching a prompt's own activation back in (layer {layer}, position {position}) "
            "changes nothing",
            atol=1e-5,
            hint="Return the softmax probabilities at the last position, shape (vocab,).",
        )

    vector = other_cache["resid_post", last][0, 5]
    got = t.call(patch_position, lm, clean, last, 5, vector.clone())
    t.close(
        t.tensor(got, "probabilities", shape=(lm.vocab_size,)),
        clean_probs,
        "patching the last layer at position 5 cannot change the prediction at the last "
        "position (nothing runs after the last layer)",
        atol=1e-5,
        hint="Replace the activation at the given position only, not at every position.",
    )

    vector = other_cache["resid_post", last][0, 3]
    expected = lm.unembed(lm.final_norm(vector)).float().softmax(-1)
    got = t.call(patch_position, lm, clean, last, n_pos - 1, vector.clone())
    t.close(
        t.tensor(got, "probabilities", shape=(lm.vocab_size,)),
        expected,
        "patching vector v into the last layer at the last position gives "
        "softmax(unembed(final_norm(v)))",
        atol=1e-5,
        hint="Overwrite the activation (do not add to it), at the output of block `layer`.",
    )

    for layer, position in [(0, 4), (1, 2), (1, 9)]:
        vector = other_cache["resid_post", layer][0, position]
        with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
            expected = _probs(lm, input_ids=clean)[0]
        got = t.call(patch_position, lm, clean, layer, position, vector.clone())
        t.close(
            t.tensor(got, "probabilities", shape=(lm.vocab_size,)),
            expected,
            f"patching another prompt's activation at layer {layer}, position {position}, "
            "compared with labkit.hooks.patch",
            atol=1e-5,
            hint="The site is resid_post: the output of block `layer` (not its input). "
            "Positions count from 0, anchor token included.",
        )


# ----- Exercise 2.3 -------------------------------------------------------------------------
@check("2.3 corrupt_subject", points=1)
def check_corrupt_subject(corrupt_subject: Callable, t: Checker) -> None:
    lm = _tiny("llama")
    tokens = _ids(lm, _PROMPT)
    n_pos, sigma = tokens.shape[1], lm.embed.weight.std().item()
    clean = lm.embed(tokens)[0].detach()  # (pos, d_model)
    shape = (200, n_pos, lm.d_model)

    first = t.call(corrupt_subject, lm, tokens, _SUBJECT, n_samples=200, seed=0)
    first = t.tensor(
        first,
        "corrupt_subject(lm, tokens, subject, n_samples=200)",
        shape=shape,
        hint="Return the corrupted embeddings, one row per noise sample.",
    )
    outside = [p for p in range(n_pos) if p not in _SUBJECT]
    t.close(
        first[:, outside],
        clean[outside].expand(200, -1, -1),
        "tokens outside the subject keep their clean embeddings",
        atol=1e-6,
        hint="Add noise only at the subject positions.",
    )
    noise = first[:, _SUBJECT] - clean[_SUBJECT]
    t.close(
        noise.std(),
        3 * sigma,
        "the noise's standard deviation is 3x the std of the embedding matrix (ROME's level)",
        rtol=0.05,
        hint="Scale standard normal noise by noise_scale * lm.embed.weight.std().",
    )
    t.close(noise.mean(), 0.0, "the noise has mean zero", atol=0.05 * sigma, hint="Use randn.")
    t.true(
        (noise[0] - noise[1]).abs().max() > 1e-3,
        "each sample gets its own noise (sample 0 and sample 1 differ)",
        hint="Draw noise of shape (n_samples, n_subject_tokens, d_model), not one draw reused.",
    )

    again = t.tensor(t.call(corrupt_subject, lm, tokens, _SUBJECT, n_samples=200, seed=0), "")
    t.true(
        torch.equal(first, again),
        "the same seed gives exactly the same noise (called twice with seed=0)",
        hint="Draw from torch.Generator().manual_seed(seed), not from the global random state.",
    )
    other = t.tensor(t.call(corrupt_subject, lm, tokens, _SUBJECT, n_samples=200, seed=1), "")
    t.true(
        not torch.equal(first, other),
        "a different seed gives different noise",
        hint="Use the `seed` argument to seed your generator.",
    )
    half = t.call(corrupt_subject, lm, tokens, _SUBJECT, n_samples=200, noise_scale=1.5, seed=0)
    half = t.tensor(half, "corrupt_subject(..., noise_scale=1.5)", shape=shape)
    t.close(
        (half[:, _SUBJECT] - clean[_SUBJECT]).std(),
        1.5 * sigma,
        "noise_scale=1.5 gives noise of std 1.5x the embedding std",
        rtol=0.05,
        hint="Use the noise_scale argument instead of a hard-coded 3.",
    )


# ----- Exercise 2.4 -------------------------------------------------------------------------
def _window(layer: int, window: int, n_layers: int) -> range:
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _one_cell(lm, clean, corrupted, target_id, site, window, layer, position) -> float:
    """A single restoration with labkit.hooks, for spot checks (one forward pass)."""
    name = _SITE_OF[site]
    layers = [layer] if site == "resid" else list(_window(layer, window, lm.n_layers))
    with torch.no_grad(), capture(lm, name, layers) as cache:
        lm.model(clean)
    with ExitStack() as stack:
        for restored in layers:
            value = cache[name, restored]
            stack.enter_context(patch(lm, name, restored, value, positions=[position]))
        probs = _probs(lm, inputs_embeds=corrupted)
    return probs[:, target_id].mean().item()


@check("2.4 restoration_grid", points=2)
def check_restoration_grid(restoration_grid: Callable, t: Checker) -> None:
    lm = _tiny("llama")
    tokens = _ids(lm, _PROMPT)
    n_pos, n_layers = tokens.shape[1], lm.n_layers
    clean_embeds = lm.embed(tokens).detach()  # (1, pos, d_model)
    target_id = int(_probs(lm, input_ids=tokens)[0].argmax())
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(3, len(_SUBJECT), lm.d_model, generator=generator)
    corrupted = clean_embeds.repeat(3, 1, 1)
    corrupted[:, _SUBJECT] += 3 * lm.embed.weight.std() * noise
    backup = corrupted.clone()
    clean_p = _probs(lm, input_ids=tokens)[0, target_id].item()
    corrupted_p = _probs(lm, inputs_embeds=corrupted)[:, target_id].mean().item()
    shape = (n_layers, n_pos)

    for site, window in [("resid", 1), ("mlp", 2), ("attn", 3)]:
        call = f"restoration_grid(lm, tokens, corrupted, target_id, {site!r}, window={window})"
        grid = t.call(restoration_grid, lm, tokens, corrupted, target_id, site, window)
        grid = t.tensor(grid, call, shape=shape, hint="One value per (layer, position).")
        t.true(
            torch.equal(corrupted, backup),
            f"{call} leaves the corrupted embeddings unchanged",
            hint="Do not modify corrupted_embeds in place; clone what you change.",
        )
        again = t.tensor(
            t.call(restoration_grid, lm, tokens, corrupted, target_id, site, window), ""
        )
        t.close(
            again,
            grid,
            f"{call} twice gives the same grid (the noise is given, not redrawn)",
            atol=1e-6,
            hint="Use the corrupted embeddings you were given for every restored run.",
        )
        t.close(
            grid[:, : _SUBJECT[0]],
            torch.full((n_layers, _SUBJECT[0]), corrupted_p),
            f"{site}: restoring a position before the subject (where clean and corrupted runs "
            "agree) gives the corrupted probability",
            atol=1e-5,
            hint="Restore exactly one position per cell, the column's position, and average "
            "p(target) over the noise samples. Restoring a whole layer is not a cell.",
        )
        for layer, position in [(0, 4), (1, 2), (1, 4), (2, 6), (n_layers - 1, n_pos - 1)]:
            expected = _one_cell(lm, tokens, corrupted, target_id, site, window, layer, position)
            t.close(
                grid[layer, position],
                expected,
                f"{site} grid cell (layer {layer}, position {position}) against a single "
                f"restoration with labkit.hooks",
                atol=1e-5,
                hint=_grid_hint(site),
            )
        unnoised = clean_embeds.repeat(2, 1, 1)
        flat = t.call(restoration_grid, lm, tokens, unnoised, target_id, site, window)
        t.close(
            t.tensor(flat, f"{site} grid without noise", shape=shape),
            torch.full(shape, clean_p),
            f"{site}: with no noise at all, every cell gives the clean probability",
            atol=1e-5,
        )
    resid = t.call(restoration_grid, lm, tokens, corrupted, target_id, "resid", 1)
    t.close(
        t.tensor(resid, "resid grid", shape=shape)[-1, -1],
        clean_p,
        "restoring the residual stream after the last layer at the last position gives the "
        "clean probability",
        atol=1e-5,
    )


def _grid_hint(site: str) -> str:
    if site == "resid":
        return (
            "For 'resid', restore the clean output of block `layer` (resid_post) at one "
            "position; average the probabilities (not the logits) over noise samples."
        )
    return (
        f"For {site!r}, restore the clean {_SITE_OF[site]} at one position in every layer of "
        "the window range(max(0, L - w // 2), min(n_layers, L - (-w // 2))), all in one run."
    )


# ----- Exercise 2.5 -------------------------------------------------------------------------
@check("2.5 average_indirect_effect", points=1)
def check_average_indirect_effect(average_indirect_effect: Callable, t: Checker) -> None:
    # Two prompts, 2 layers. A: 7 tokens, subject 1..3. B: 5 tokens, subject 2.
    grid_a = torch.tensor(
        [[0.1, 0.2, 0.3, 0.5, 0.4, 0.2, 0.6], [0.1, 0.1, 0.2, 0.9, 0.3, 0.5, 0.8]]
    )
    grid_b = torch.tensor([[0.2, 0.2, 0.7, 0.3, 0.5], [0.2, 0.2, 0.4, 0.6, 0.9]])
    corrupted, subjects = [0.1, 0.2], [[1, 2, 3], [2]]
    # Indirect effect = grid - corrupted; average within a prompt's role, then over the
    # prompts that have that role (B has no "subject" tokens before its last one).
    expected = torch.tensor(
        [
            [0.15, (0.4 + 0.5) / 2, (0.2 + 0.1) / 2, (0.5 + 0.3) / 2],
            [0.05, (0.8 + 0.2) / 2, (0.3 + 0.4) / 2, (0.7 + 0.7) / 2],
        ]
    )
    got = t.call(average_indirect_effect, [grid_a, grid_b], corrupted, subjects)
    got = t.tensor(
        got,
        "average_indirect_effect on two hand-made grids",
        shape=(2, len(ROLES)),
        hint=f"One column per role, in the order {ROLES}.",
    )
    for column, role in enumerate(ROLES):
        t.close(
            got[:, column],
            expected[:, column],
            f"the {role!r} column on two hand-made grids (indirect effect = restored "
            "probability minus corrupted probability, averaged within each prompt, then over "
            "the prompts that have tokens in that role)",
            atol=1e-5,
            hint=_role_hint(role),
        )
    single = t.call(average_indirect_effect, [grid_a], [0.1], [[1, 2, 3]])
    t.close(
        t.tensor(single, "one prompt", shape=(2, len(ROLES))),
        torch.stack(
            [grid_a[:, 1:3].mean(1), grid_a[:, 3], grid_a[:, 4:6].mean(1), grid_a[:, 6]], dim=1
        )
        - 0.1,
        "a single prompt: the effects are that prompt's own role averages",
        atol=1e-5,
    )


def _role_hint(role: str) -> str:
    return {
        "subject": "'subject' means the subject tokens before its last one (tokens before "
        "the subject are not counted anywhere).",
        "last subject token": "The last subject token is subject_positions[-1].",
        "after subject": "'after subject' is every token after the subject except the last.",
        "last token": "The last token is position -1 of each prompt.",
    }[role]


# The grader's map: the name of each exercise's function in the notebook -> its check.
EXERCISES = {
    "collect_activations": check_collect_activations,
    "patch_position": check_patch_position,
    "corrupt_subject": check_corrupt_subject,
    "restoration_grid": check_restoration_grid,
    "average_indirect_effect": check_average_indirect_effect,
}
