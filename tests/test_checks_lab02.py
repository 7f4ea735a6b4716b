"""Lab 02 checks accept the solution and other correct implementations, and reject mistakes.

The solution functions come from solutions/02_causal_tracing.ipynb itself. The alternative
correct implementations (looped, batched, nnsight) and the plausible wrong ones live here, not
in the notebook or in labkit.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from labkit.build import solution_functions
from labkit.checks import lab02
from labkit.hooks import capture, hooked, patch

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = solution_functions(ROOT / "solutions" / "02_causal_tracing.ipynb")
SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code.")


def passes(check, fn) -> bool:
    result = check(fn, quiet=True)
    assert result.attempted, result.report()
    return result.passed


def fails(check, fn) -> bool:
    result = check(fn, quiet=True)
    return result.attempted and not result.passed


def test_stubs_are_not_attempted() -> None:
    for check in (
        lab02.check_collect_activations,
        lab02.check_patch_position,
        lab02.check_corrupt_subject,
        lab02.check_restoration_grid,
        lab02.check_average_indirect_effect,
    ):
        result = check(stub, quiet=True)
        assert not result.attempted and result.status == "not attempted"


# ----- 2.1 collect_activations ---------------------------------------------------------------
def collect_nnsight(lm, tokens, site="resid_post"):
    from nnsight import TransformersModel

    model = TransformersModel(lm.model, tokenizer=lm.tokenizer)
    saved = []
    with torch.no_grad(), model.trace(tokens):
        for layer in range(lm.n_layers):
            block = lm.blocks[layer]
            module = {"resid_post": block, "mlp_out": block.mlp}.get(site)
            if site == "attn_out":
                envoy = model.transformer.h[layer].attn if lm.family == "gpt2" else None
                envoy = envoy or model.model.layers[layer].self_attn
                saved.append(envoy.output[0].save())
                continue
            path = "transformer.h" if lm.family == "gpt2" else "model.layers"
            envoy = model.transformer.h[layer] if path == "transformer.h" else None
            envoy = envoy or model.model.layers[layer]
            envoy = envoy if module is block else envoy.mlp
            saved.append(envoy.output.save())
    return torch.stack([s[0] if s.dim() == 3 else s for s in saved])


def collect_per_layer_hooks(lm, tokens, site="resid_post"):
    acts = []
    for layer in range(lm.n_layers):  # one forward per layer, on purpose
        with torch.no_grad(), capture(lm, site, layer) as cache:
            lm.model(tokens)
        acts.append(cache[site, layer][0])
    return torch.stack(acts)


def collect_hidden_states_wrong(lm, tokens, site="resid_post"):
    # hidden_states[-1] has the final norm applied: wrong at the last layer.
    out = lm.model(tokens, output_hidden_states=True)
    return torch.stack(out.hidden_states[1:])[:, 0]


def collect_resid_pre(lm, tokens, site="resid_post"):
    out = lm.model(tokens, output_hidden_states=True)
    return torch.stack(out.hidden_states[:-1])[:, 0]


def collect_ignores_site(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](lm, tokens, "resid_post")


def collect_with_batch_dim(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](lm, tokens, site)[:, None]


def test_collect_activations_check() -> None:
    check = lab02.check_collect_activations
    assert passes(check, SOLUTION["collect_activations"])
    assert passes(check, collect_per_layer_hooks)
    assert passes(check, collect_nnsight)
    for wrong in (
        collect_hidden_states_wrong,
        collect_resid_pre,
        collect_ignores_site,
        collect_with_batch_dim,
    ):
        assert fails(check, wrong), wrong.__name__


# ----- 2.2 patch_position --------------------------------------------------------------------
def patch_with_labkit_patch(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_with_nnsight(lm, tokens, layer, position, vector):
    from nnsight import TransformersModel

    model = TransformersModel(lm.model, tokenizer=lm.tokenizer)
    with torch.no_grad(), model.trace(tokens):
        model.model.layers[layer].output[:, position, :] = vector
        logits = model.lm_head.output.save()
    return logits[0, -1].softmax(-1)


def patch_off_by_one(lm, tokens, layer, position, vector):
    return patch_with_labkit_patch(lm, tokens, layer, position + 1, vector)


def patch_resid_pre(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_pre", layer, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_every_position(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector):
        return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_adds(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position], add=True):
        return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_returns_logits(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1]


def test_patch_position_check() -> None:
    check = lab02.check_patch_position
    assert passes(check, SOLUTION["patch_position"])
    assert passes(check, patch_with_labkit_patch)
    assert passes(check, patch_with_nnsight)
    for wrong in (
        patch_off_by_one,
        patch_resid_pre,
        patch_every_position,
        patch_adds,
        patch_returns_logits,
    ):
        assert fails(check, wrong), wrong.__name__


# ----- 2.3 corrupt_subject -------------------------------------------------------------------
def corrupt_full_noise_then_mask(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    clean = lm.embed(tokens).detach()
    noise = torch.randn(n_samples, *clean.shape[1:], generator=generator)
    mask = torch.zeros(clean.shape[1], 1)
    mask[subject] = 1.0
    return clean + noise_scale * lm.embed.weight.std() * noise * mask


def corrupt_global_seed(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clean = lm.embed(tokens).detach()[0]
        rows = []
        for _ in range(n_samples):  # one sample at a time
            row = clean.clone()
            for p in subject:
                row[p] += noise_scale * lm.embed.weight.std() * torch.randn(lm.d_model)
            rows.append(row)
    return torch.stack(rows)


def corrupt_every_position(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    n_pos = tokens.shape[1]
    return SOLUTION["corrupt_subject"](lm, tokens, list(range(n_pos)), n_samples, noise_scale, seed)


def corrupt_unit_std(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    out[:, subject] += noise_scale * torch.randn(
        n_samples, len(subject), lm.d_model, generator=generator
    )
    return out


def corrupt_redrawn(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    sigma = lm.embed.weight.std()
    out[:, subject] += noise_scale * sigma * torch.randn(n_samples, len(subject), lm.d_model)
    return out


def corrupt_same_noise_every_sample(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    one = SOLUTION["corrupt_subject"](lm, tokens, subject, 1, noise_scale, seed)
    return one.repeat(n_samples, 1, 1)


def corrupt_hard_coded_three(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return SOLUTION["corrupt_subject"](lm, tokens, subject, n_samples, 3.0, seed)


def test_corrupt_subject_check() -> None:
    check = lab02.check_corrupt_subject
    assert passes(check, SOLUTION["corrupt_subject"])
    assert passes(check, corrupt_full_noise_then_mask)
    assert passes(check, corrupt_global_seed)
    for wrong in (
        corrupt_every_position,
        corrupt_unit_std,
        corrupt_redrawn,
        corrupt_same_noise_every_sample,
        corrupt_hard_coded_three,
    ):
        assert fails(check, wrong), wrong.__name__


# ----- 2.4 restoration_grid ------------------------------------------------------------------
def _window(layer, window, n_layers):
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def grid_looped(
    lm,
    tokens,
    corrupted_embeds,
    target_id,
    site="resid",
    window=1,
    *,
    shift=0,
    layer_of=None,
    every_position=False,
    fresh_noise=False,
    first_sample_only=False,
    name=None,
):
    """One forward pass per cell (the seed's loop), with switches for plausible mistakes."""
    name = name or SITE_OF[site]
    n_pos = tokens.shape[1]
    with torch.no_grad(), capture(lm, name) as clean:
        lm.model(tokens)
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else list(_window(layer, window, lm.n_layers))
        if layer_of is not None:
            layers = layer_of(layer)
        for position in range(n_pos):
            embeds = corrupted_embeds
            if fresh_noise:
                embeds = embeds + 0.1 * torch.randn_like(embeds)
            if first_sample_only:
                embeds = embeds[:1]
            target = None if every_position else [min(position + shift, n_pos - 1)]
            with ExitStack() as stack, torch.no_grad():
                for restored in layers:
                    value = clean[name, restored]
                    stack.enter_context(patch(lm, name, restored, value, positions=target))
                probs = lm.model(inputs_embeds=embeds).logits[:, -1].softmax(-1)
            grid[layer, position] = probs[:, target_id].mean()
    return grid


def grid_batched_by_layer(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """One forward per layer: batch row (position, sample) restores its own position."""
    name = SITE_OF[site]
    n_samples, n_pos, _ = corrupted_embeds.shape
    with torch.no_grad(), capture(lm, name) as clean:
        lm.model(tokens)
    positions = torch.arange(n_pos).repeat_interleave(n_samples)
    rows = torch.arange(len(positions))
    batch = corrupted_embeds.repeat(n_pos, 1, 1)
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else _window(layer, window, lm.n_layers)
        with ExitStack() as stack, torch.no_grad():
            for restored in layers:

                def fn(act, restored=restored):
                    act = act.clone()
                    act[rows, positions] = clean[name, restored][0, positions]
                    return act

                stack.enter_context(hooked(lm, name, restored, fn))
            probs = lm.model(inputs_embeds=batch).logits[:, -1].softmax(-1)[:, target_id]
        grid[layer] = probs.view(n_pos, n_samples).mean(1)
    return grid


def grid_nnsight(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """Per cell with nnsight: clean values saved in one trace, restored in another."""
    from nnsight import TransformersModel

    model = TransformersModel(lm.model, tokenizer=lm.tokenizer)

    def envoy(layer):
        block = model.model.layers[layer]
        return {"resid": block, "mlp": block.mlp, "attn": block.self_attn}[site]

    def output(layer):
        out = envoy(layer).output
        return out[0] if site == "attn" else out

    saved = []
    with torch.no_grad(), model.trace(tokens):
        for layer in range(lm.n_layers):
            saved.append(output(layer).save())
    n_pos = tokens.shape[1]
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else _window(layer, window, lm.n_layers)
        for position in range(n_pos):
            with torch.no_grad(), model.trace(inputs_embeds=corrupted_embeds):
                for restored in layers:
                    output(restored)[:, position, :] = saved[restored][0, position, :]
                logits = model.lm_head.output.save()
            grid[layer, position] = logits[:, -1].softmax(-1)[:, target_id].mean()
    return grid


WRONG_GRIDS = {
    "restores the next position": dict(shift=1),
    "restores resid_pre (the block's input)": dict(name="resid_pre"),
    "restores every position of the layer": dict(every_position=True),
    "redraws noise for every run": dict(fresh_noise=True),
    "uses only the first noise sample": dict(first_sample_only=True),
    "ignores the window": dict(layer_of=lambda layer: [layer]),
    "window starts at the layer": dict(layer_of=lambda layer: list(range(layer, layer + 2))),
}


def grid_wrong_site(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    swapped = {"resid": "resid", "mlp": "attn", "attn": "mlp"}[site]
    return grid_looped(lm, tokens, corrupted_embeds, target_id, swapped, window)


def grid_mean_logits(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """Averages logits over samples before the softmax (ROME averages probabilities)."""
    name = SITE_OF[site]
    with torch.no_grad(), capture(lm, name) as clean:
        lm.model(tokens)
    grid = torch.zeros(lm.n_layers, tokens.shape[1])
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else _window(layer, window, lm.n_layers)
        for position in range(tokens.shape[1]):
            with ExitStack() as stack, torch.no_grad():
                for restored in layers:
                    stack.enter_context(
                        patch(lm, name, restored, clean[name, restored], positions=[position])
                    )
                logits = lm.model(inputs_embeds=corrupted_embeds).logits[:, -1].mean(0)
            grid[layer, position] = logits.softmax(-1)[target_id]
    return grid


def test_restoration_grid_check_accepts_correct_implementations() -> None:
    check = lab02.check_restoration_grid
    assert passes(check, SOLUTION["restoration_grid"])
    assert passes(check, grid_looped)
    assert passes(check, grid_batched_by_layer)
    assert passes(check, grid_nnsight)


@pytest.mark.parametrize("mistake", sorted(WRONG_GRIDS))
def test_restoration_grid_check_rejects_mistakes(mistake: str) -> None:
    options = WRONG_GRIDS[mistake]

    def wrong(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
        return grid_looped(lm, tokens, corrupted_embeds, target_id, site, window, **options)

    assert fails(lab02.check_restoration_grid, wrong)


@pytest.mark.parametrize("wrong", [grid_wrong_site, grid_mean_logits])
def test_restoration_grid_check_rejects_wrong_site_and_averaging(wrong) -> None:
    assert fails(lab02.check_restoration_grid, wrong)


def test_fast_grid_matches_the_loop_on_the_default_model(lm) -> None:
    tokens = lm.to_tokens("The capital of France is", prepend_anchor=True)
    corrupted = SOLUTION["corrupt_subject"](lm, tokens, [4], n_samples=2)
    target = lm.token_id(" Paris")
    for site, window in [("resid", 1), ("mlp", 10)]:
        fast = SOLUTION["restoration_grid"](lm, tokens, corrupted, target, site, window)
        slow = grid_batched_by_layer(lm, tokens, corrupted, target, site, window)
        assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


# ----- 2.5 average_indirect_effect -----------------------------------------------------------
ROLES = lab02.ROLES


def _roles(subject, n_pos):
    last_subject, last = subject[-1], n_pos - 1
    return [subject[:-1], [last_subject], list(range(last_subject + 1, last)), [last]]


def aie_loops(grids, corrupted_probs, subjects):
    n_layers = grids[0].shape[0]
    out = torch.zeros(n_layers, len(ROLES))
    for column in range(len(ROLES)):
        per_prompt = []
        for grid, corrupted, subject in zip(grids, corrupted_probs, subjects, strict=True):
            positions = _roles(subject, grid.shape[1])[column]
            if positions:
                per_prompt.append(torch.stack([grid[:, p] - corrupted for p in positions]).mean(0))
        if per_prompt:
            out[:, column] = torch.stack(per_prompt).mean(0)
    return out


def aie_masks(grids, corrupted_probs, subjects):
    columns = []
    for column in range(len(ROLES)):
        effects = []
        for grid, corrupted, subject in zip(grids, corrupted_probs, subjects, strict=True):
            mask = torch.zeros(grid.shape[1], dtype=torch.bool)
            mask[_roles(subject, grid.shape[1])[column]] = True
            if mask.any():
                effects.append(((grid - corrupted) * mask).sum(1) / mask.sum())
        columns.append(torch.stack(effects).mean(0) if effects else torch.zeros(len(grids[0])))
    return torch.stack(columns, dim=1)


def aie_no_subtraction(grids, corrupted_probs, subjects):
    return aie_loops(grids, [0.0] * len(grids), subjects)


def aie_pooled_tokens(grids, corrupted_probs, subjects):
    n_layers = grids[0].shape[0]
    out = torch.zeros(n_layers, len(ROLES))
    for column in range(len(ROLES)):
        pooled = [
            grid[:, p] - corrupted
            for grid, corrupted, subject in zip(grids, corrupted_probs, subjects, strict=True)
            for p in _roles(subject, grid.shape[1])[column]
        ]
        if pooled:
            out[:, column] = torch.stack(pooled).mean(0)
    return out


def aie_last_subject_off_by_one(grids, corrupted_probs, subjects):
    return aie_loops(grids, corrupted_probs, [[*s, s[-1] + 1] for s in subjects])


def aie_includes_prefix(grids, corrupted_probs, subjects):
    return aie_loops(grids, corrupted_probs, [list(range(0, s[-1] + 1)) for s in subjects])


def test_average_indirect_effect_check() -> None:
    check = lab02.check_average_indirect_effect
    assert passes(check, SOLUTION["average_indirect_effect"])
    assert passes(check, aie_loops)
    assert passes(check, aie_masks)
    for wrong in (
        aie_no_subtraction,
        aie_pooled_tokens,
        aie_last_subject_off_by_one,
        aie_includes_prefix,
    ):
        assert fails(check, wrong), wrong.__name__


def test_failures_name_what_was_tested_and_never_show_code() -> None:
    result = lab02.check_patch_position(patch_off_by_one, quiet=True)
    text = result.report()
    assert "Tested:" in text and "Hint:" in text
    assert "def " not in text and "hooked(" not in text
