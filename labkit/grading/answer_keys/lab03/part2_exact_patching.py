"""Lab 03, part 2 (exercises 3.2-3.3): exact patching's references and mistakes."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _corrupted_metric, _loop_grid, _loop_heads


# ----- 3.2 patch_grid ----------------------------------------------------------------------------
@KEY.mistake(
    "patch_grid",
    "This is the noising direction (corrupted activations patched into the clean run). "
    "Patch the clean activation into the corrupted run.",
)
def grid_noising(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return sol.patch_grid(lm, corrupted, clean, metric, site)


@KEY.mistake(
    "patch_grid",
    "This is resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def grid_resid_post(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, "resid_post")


@KEY.mistake(
    "patch_grid",
    "This is the resid_pre grid, whatever the site: patch the site you are given.",
)
def grid_always_resid_pre(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site == "resid_pre":
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "patch_grid",
    "You patched the other block output: attn_out is what the attention adds, mlp_out what "
    "the MLP adds.",
)
def grid_other_output(sol, lm, clean, corrupted, metric, site="resid_pre"):
    other = {"attn_out": "mlp_out", "mlp_out": "attn_out"}.get(site)
    if other is None:
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, other)


@KEY.mistake(
    "patch_grid",
    "Cell (L, p) patched every position up to p. Patch position p only.",
)
def grid_leaks_backward(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(p + 1)))


@KEY.mistake(
    "patch_grid",
    "Cell (L, p) patched position p and every position after it. Patch position p only "
    "(inside a hook that runs from position p, that is index 0 of the position axis).",
)
def grid_leaks_forward(sol, lm, clean, corrupted, metric, site="resid_pre"):
    n_pos = clean.shape[1]
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(p, n_pos)))


@KEY.mistake(
    "patch_grid",
    "Every cell of a layer has the same value: you patched every position at once. Cell "
    "(L, p) patches position p only.",
)
def grid_all_positions(sol, lm, clean, corrupted, metric, site="resid_pre"):
    n_pos = clean.shape[1]
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(n_pos)))


@KEY.mistake(
    "patch_grid",
    "Only the first prompt of the batch was patched. Patch the clean activation into every "
    "prompt of the batch (the metric averages over them).",
)
def grid_first_prompt(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if clean.shape[0] == 1:
        raise NotThisProblem
    mixed = corrupted.clone()
    mixed[0] = clean[0]
    return sol.patch_grid(lm, mixed, corrupted, metric, site)


@KEY.mistake(
    "patch_grid",
    "The rows are shifted by one layer: row L must patch layer L (layers count from 0).",
)
def grid_shifted_layer(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return torch.cat([grid[1:], grid[-1:]])


@KEY.mistake(
    "patch_grid",
    "The rows are shifted by one layer: row L must patch layer L (layers count from 0).",
)
def grid_shifted_layer_down(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return torch.cat([grid[:1], grid[:-1]])


@KEY.mistake(
    "patch_grid",
    "A cell is the metric of the patched run itself, not its change from the corrupted run's "
    "metric: do not subtract the corrupted run's value.",
)
def grid_change(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return grid - _corrupted_metric(lm, corrupted, metric)


# ----- 3.3 patch_heads ---------------------------------------------------------------------------
@KEY.mistake(
    "patch_heads",
    "You split the residual stream (the attention's input) into chunks. A head's output is its "
    "slice of the input of the attention output projection (site 'head_out').",
)
def heads_resid_split(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, site="resid_pre")


@KEY.mistake(
    "patch_heads",
    "You split the attention output (after W_O has mixed the heads) into chunks. Use the input "
    "of W_O (site 'head_out').",
)
def heads_attn_out_split(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, site="attn_out")


@KEY.mistake(
    "patch_heads",
    "You patched each head at the last position only. Patch its clean output at every position.",
)
def heads_last_position(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, positions=[clean.shape[1] - 1])


@KEY.mistake(
    "patch_heads",
    "You patched each head only where the prompts differ. A head's output changes at later "
    "positions too (attention moves information): patch every position.",
)
def heads_changed_positions(sol, lm, clean, corrupted, metric):
    changed = (clean != corrupted).any(0).nonzero().flatten().tolist()
    return _loop_heads(lm, clean, corrupted, metric, positions=changed)


@KEY.mistake(
    "patch_heads",
    "This is the noising direction (corrupted head outputs patched into the clean run). Patch "
    "the clean output into the corrupted run.",
)
def heads_noising(sol, lm, clean, corrupted, metric):
    return sol.patch_heads(lm, corrupted, clean, metric)


@KEY.mistake(
    "patch_heads",
    "You patched every query head that shares a key/value head at once. Each query head has "
    "its own output: patch one at a time.",
)
def heads_kv_group(sol, lm, clean, corrupted, metric):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    if kv == lm.n_heads:
        raise NotThisProblem
    size = lm.n_heads // kv
    return _loop_heads(
        lm,
        clean,
        corrupted,
        metric,
        heads=lambda h: list(range(h // size * size, (h // size + 1) * size)),
    )


@KEY.mistake(
    "patch_heads",
    "The heads of each layer are in reverse order: column h must patch head h.",
)
def heads_reversed(sol, lm, clean, corrupted, metric):
    return sol.patch_heads(lm, clean, corrupted, metric).flip(1)


@KEY.mistake(
    "patch_heads",
    "A cell is the metric of the patched run itself, not its change from the corrupted run's "
    "metric: do not subtract the corrupted run's value.",
)
def heads_change(sol, lm, clean, corrupted, metric):
    grid = sol.patch_heads(lm, clean, corrupted, metric)
    return grid - _corrupted_metric(lm, corrupted, metric)
