"""Lab 03 checks accept the solution and other correct implementations, and reject mistakes.

The solution functions come from solutions/03_attribution_patching.ipynb itself. Alternative
correct implementations (loops, float64, nnsight-free hooks, autograd.grad vs .backward) and
plausible wrong ones live here, not in the notebook or in labkit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labkit.build import solution_functions
from labkit.checks import lab03
from labkit.hooks import capture, patch

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = solution_functions(ROOT / "solutions" / "03_attribution_patching.ipynb")
SOL = {name: SOLUTION[name] for name in lab03.EXERCISES}


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code.")


def passes(check, fn) -> bool:
    result = check(fn, quiet=True)
    assert result.attempted, result.report()
    if not result.passed:
        print(result.report())
    return result.passed


def fails(check, fn) -> str:
    """The failure message ('' if the check passed or was not attempted)."""
    result = check(fn, quiet=True)
    return "" if not result.attempted or result.passed else result.report()


VARIANTS = (0, 1, 2, 3)  # the notebook's problem and three hidden ones


def on_variant(check, fn, variant: int):
    """The check's result on one variant (0: the notebook's problem; others: hidden)."""
    from labkit.checks.core import run_check

    return run_check(
        check.body, check.check_name, check.points, fn, variant=variant, timeout=check.timeout
    )


def rejects(check, fn, variant: int) -> str:
    """The failure message on a variant; fails the test if the check passed or did not run."""
    result = on_variant(check, fn, variant)
    text = result.report()
    assert result.attempted and not result.passed, (fn.__name__, variant, text)
    assert "check itself stopped" not in text, text
    return text


def test_every_exercise_has_a_check_and_stubs_are_not_attempted() -> None:
    assert set(lab03.EXERCISES) <= set(SOLUTION)
    for name, check in lab03.EXERCISES.items():
        assert check.check_name.startswith("Exercise 3."), name
        result = check(stub, quiet=True)
        assert not result.attempted and result.status == "not attempted", name


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_solution_passes_hidden_variants(variant: int) -> None:
    from labkit.checks.core import run_check

    for name, check in lab03.EXERCISES.items():
        result = run_check(check.body, check.check_name, check.points, SOL[name], variant=variant)
        assert result.passed, (name, result.report())


# ----- 3.1 normalised_metric ------------------------------------------------------------------
def _diffs(logits, targets, foils):
    rows = torch.arange(logits.shape[0])
    return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]


def metric_float64(lm, clean, corrupted, targets, foils):
    with torch.no_grad():
        high = _diffs(lm.model(clean).logits[:, -1].double(), targets, foils).mean()
        low = _diffs(lm.model(corrupted).logits[:, -1].double(), targets, foils).mean()
    return lambda logits: (_diffs(logits.double(), targets, foils).mean() - low) / (high - low)


def metric_looped(lm, clean, corrupted, targets, foils):
    def mean_diff(logits):
        return sum(logits[i, targets[i]] - logits[i, foils[i]] for i in range(len(targets))) / len(
            targets
        )

    with torch.no_grad():
        high = mean_diff(lm.model(clean).logits[:, -1])
        low = mean_diff(lm.model(corrupted).logits[:, -1])
    return lambda logits: (mean_diff(logits) - low) / (high - low)


def metric_raw(lm, clean, corrupted, targets, foils):
    return lambda logits: _diffs(logits, targets, foils).mean()


def metric_flipped(lm, clean, corrupted, targets, foils):
    good = SOL["normalised_metric"](lm, clean, corrupted, targets, foils)
    return lambda logits: 1 - good(logits)


def metric_per_prompt(lm, clean, corrupted, targets, foils):
    with torch.no_grad():
        high = _diffs(lm.model(clean).logits[:, -1], targets, foils)
        low = _diffs(lm.model(corrupted).logits[:, -1], targets, foils)
    return lambda logits: ((_diffs(logits, targets, foils) - low) / (high - low)).mean()


def metric_item(lm, clean, corrupted, targets, foils):
    good = SOL["normalised_metric"](lm, clean, corrupted, targets, foils)
    return lambda logits: torch.tensor(good(logits).item())


def metric_first_target(lm, clean, corrupted, targets, foils):
    return SOL["normalised_metric"](lm, clean, corrupted, [targets[0]] * 3, [foils[0]] * 3)


def metric_probs(lm, clean, corrupted, targets, foils):
    with torch.no_grad():
        high = _diffs(lm.model(clean).logits[:, -1].softmax(-1), targets, foils).mean()
        low = _diffs(lm.model(corrupted).logits[:, -1].softmax(-1), targets, foils).mean()
    return lambda logits: (_diffs(logits.softmax(-1), targets, foils).mean() - low) / (high - low)


def metric_returns_value(lm, clean, corrupted, targets, foils):
    return SOL["normalised_metric"](lm, clean, corrupted, targets, foils)(
        lm.model(clean).logits[:, -1]
    )


def test_normalised_metric_check() -> None:
    check = lab03.check_normalised_metric
    for good in (SOL["normalised_metric"], metric_float64, metric_looped):
        assert passes(check, good), good.__name__
    for wrong, word in [
        (metric_raw, "raw logit difference"),
        (metric_flipped, "sign"),
        (metric_per_prompt, "each prompt separately"),
        (metric_item, "gradient"),
        (metric_first_target, ""),
        (metric_probs, ""),
        (metric_returns_value, "function"),
    ]:
        message = fails(check, wrong)
        assert message, wrong.__name__
        assert word in message, (wrong.__name__, message)


# ----- 3.2 patch_grid ---------------------------------------------------------------------------
def grid_loop(lm, clean, corrupted, metric, site="resid_pre"):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        for pos in range(clean.shape[1]):
            with torch.no_grad(), patch(lm, site, layer, cache[site, layer], positions=[pos]):
                grid[layer, pos] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def grid_float64(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, clean, corrupted, lambda logits: metric(logits.double()), site).double()


def grid_leaks_forward(lm, clean, corrupted, metric, site="resid_pre"):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        for pos in range(clean.shape[1]):  # positions 0..pos: leaks across positions
            with (
                torch.no_grad(),
                patch(lm, site, layer, cache[site, layer], positions=slice(0, pos + 1)),
            ):
                grid[layer, pos] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def grid_all_positions(lm, clean, corrupted, metric, site="resid_pre"):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, site, layer, cache[site, layer]):
            grid[layer] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def grid_noising(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, corrupted, clean, metric, site)


def grid_resid_post(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, clean, corrupted, metric, "resid_post" if site == "resid_pre" else site)


def grid_first_prompt_only(lm, clean, corrupted, metric, site="resid_pre"):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, clean.shape[1])
    for layer in range(lm.n_layers):
        for pos in range(clean.shape[1]):
            value = cache[site, layer].clone()
            with torch.no_grad(), capture(lm, site, layer) as own:
                lm.model(corrupted)
            value[1:] = own[site, layer][1:]  # only prompt 0 patched
            with torch.no_grad(), patch(lm, site, layer, value, positions=[pos]):
                grid[layer, pos] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def grid_ignores_site(lm, clean, corrupted, metric, site="resid_pre"):
    return grid_loop(lm, clean, corrupted, metric, "resid_pre")


def grid_off_by_one_layer(lm, clean, corrupted, metric, site="resid_pre"):
    grid = grid_loop(lm, clean, corrupted, metric, site)
    return torch.cat([grid[1:], grid[-1:]])


def test_patch_grid_check() -> None:
    check = lab03.check_patch_grid
    for good in (SOL["patch_grid"], grid_loop, grid_float64):
        assert passes(check, good), good.__name__
    for wrong in (
        grid_leaks_forward,
        grid_all_positions,
        grid_noising,
        grid_resid_post,
        grid_first_prompt_only,
        grid_ignores_site,
        grid_off_by_one_layer,
    ):
        assert fails(check, wrong), wrong.__name__
    assert "noising" in fails(check, grid_noising)
    assert "resid_post" in fails(check, grid_resid_post)


# ----- 3.3 patch_heads --------------------------------------------------------------------------
def heads_loop(lm, clean, corrupted, metric):
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):
            with (
                torch.no_grad(),
                patch(lm, "head_out", layer, cache["head_out", layer], heads=head),
            ):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_o_proj_hook(lm, clean, corrupted, metric):
    """Patch the flat input of W_O by hand (no labkit site names)."""
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.float64)
    d = lm.d_head
    for layer in range(lm.n_layers):
        source = cache["head_out", layer].flatten(-2)
        for head in range(lm.n_heads):

            def pre(mod, args, head=head, source=source):
                x = args[0].clone()
                x[..., head * d : (head + 1) * d] = source[..., head * d : (head + 1) * d]
                return (x,)

            handle = lm.attn_out_proj(layer).register_forward_pre_hook(pre)
            try:
                with torch.no_grad():
                    grid[layer, head] = float(metric(lm.model(corrupted).logits[:, -1]))
            finally:
                handle.remove()
    return grid


def heads_kv(lm, clean, corrupted, metric):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    return heads_loop(lm, clean, corrupted, metric)[:, :kv]


def heads_resid_split(lm, clean, corrupted, metric):
    with torch.no_grad(), capture(lm, "resid_pre") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    d = lm.d_model // lm.n_heads
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):

            def put(act, layer=layer, head=head):
                act = act.clone()
                act[..., head * d : (head + 1) * d] = cache["resid_pre", layer][
                    ..., head * d : (head + 1) * d
                ]
                return act

            with torch.no_grad(), patch(lm, "resid_pre", layer, put):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_attn_out_split(lm, clean, corrupted, metric):
    with torch.no_grad(), capture(lm, "attn_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    d = lm.d_model // lm.n_heads
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):

            def put(act, layer=layer, head=head):
                act = act.clone()
                act[..., head * d : (head + 1) * d] = cache["attn_out", layer][
                    ..., head * d : (head + 1) * d
                ]
                return act

            with torch.no_grad(), patch(lm, "attn_out", layer, put):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_last_position_only(lm, clean, corrupted, metric):
    with torch.no_grad(), capture(lm, "head_out") as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    last = clean.shape[1] - 1
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):
            value = cache["head_out", layer]
            with torch.no_grad(), patch(lm, "head_out", layer, value, heads=head, positions=[last]):
                grid[layer, head] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def heads_noising(lm, clean, corrupted, metric):
    return heads_loop(lm, corrupted, clean, metric)


def heads_whole_layer(lm, clean, corrupted, metric):
    grid = heads_loop(lm, clean, corrupted, metric)
    return grid.mean(1, keepdim=True).expand_as(grid).clone()


def heads_transposed_order(lm, clean, corrupted, metric):
    grid = heads_loop(lm, clean, corrupted, metric)
    return grid.flip(1)


def test_patch_heads_check() -> None:
    check = lab03.check_patch_heads
    for good in (SOL["patch_heads"], heads_loop, heads_o_proj_hook):
        assert passes(check, good), good.__name__
    for wrong in (
        heads_kv,
        heads_resid_split,
        heads_attn_out_split,
        heads_last_position_only,
        heads_noising,
        heads_whole_layer,
        heads_transposed_order,
    ):
        assert fails(check, wrong), wrong.__name__
    assert "key/value heads" in fails(check, heads_kv)


# ----- 3.4 activations_and_grads ----------------------------------------------------------------
def grads_backward(lm, tokens, metric, site):
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        metric(lm.model(inputs_embeds=embeds).logits[:, -1]).backward()
    acts = cache.stack(site)
    return acts.detach(), torch.stack([cache[site, i].grad for i in range(lm.n_layers)])


def grads_one_layer_at_a_time(lm, tokens, metric, site):
    """One forward and backward pass per layer, with that layer's activation made a leaf."""
    from labkit.hooks import hooked

    acts, grads = [], []
    for layer in range(lm.n_layers):
        leaf = {}

        def make_leaf(act, leaf=leaf):
            leaf["x"] = act.detach().requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad(), hooked(lm, site, layer, make_leaf):
            value = metric(lm.model(tokens).logits[:, -1])
            grads.append(torch.autograd.grad(value, leaf["x"])[0])
        acts.append(leaf["x"].detach())
    return torch.stack(acts), torch.stack(grads)


_ACCUMULATED: dict = {}


def grads_accumulate(lm, tokens, metric, site):
    acts, grads = grads_backward(lm, tokens, metric, site)
    key = (id(lm), site)
    _ACCUMULATED[key] = _ACCUMULATED.get(key, 0) + grads
    return acts, _ACCUMULATED[key]


def grads_at_other_run(lm, tokens, metric, site):
    other = tokens.roll(1, dims=0)  # the other prompt of the batch: a different run
    return grads_backward(lm, other, metric, site)


def grads_negated(lm, tokens, metric, site):
    acts, grads = grads_backward(lm, tokens, metric, site)
    return acts, -grads


def grads_of_logit_diff(lm, tokens, metric, site):
    """Differentiates the last logit of the first prompt instead of the metric."""
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        lm.model(inputs_embeds=embeds).logits[0, -1].sum().backward()
    return cache.stack(site).detach(), torch.stack(
        [cache[site, i].grad for i in range(lm.n_layers)]
    )


def grads_squeezed_layers(lm, tokens, metric, site):
    acts, grads = grads_backward(lm, tokens, metric, site)
    return acts[-1], grads[-1]


def grads_only_resid(lm, tokens, metric, site):
    return grads_backward(lm, tokens, metric, "resid_pre")


def grads_sum_over_batch(lm, tokens, metric, site):
    acts, grads = grads_backward(lm, tokens, metric, site)
    return acts, grads.sum(1, keepdim=True).expand_as(grads).clone()


def test_activations_and_grads_check() -> None:
    check = lab03.check_activations_and_grads
    _ACCUMULATED.clear()  # a fresh kernel
    for good in (SOL["activations_and_grads"], grads_backward, grads_one_layer_at_a_time):
        assert passes(check, good), good.__name__
    for wrong in (
        grads_accumulate,
        grads_at_other_run,
        grads_negated,
        grads_of_logit_diff,
        grads_squeezed_layers,
        grads_only_resid,
        grads_sum_over_batch,
    ):
        assert fails(check, wrong), wrong.__name__
    _ACCUMULATED.clear()
    assert "accumulate" in fails(check, grads_accumulate)


# ----- 3.5 attribution_patching -----------------------------------------------------------------
def _acts(lm, tokens, site):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    return cache.stack(site)


def attr_float64(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return ((_acts(lm, clean, site).double() - acts.double()) * grads.double()).sum((1, 3))


def attr_einsum(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = SOL["activations_and_grads"](lm, corrupted, metric, site)
    return torch.einsum("lbpd,lbpd->lp", _acts(lm, clean, site) - acts, grads)


def _attr(lm, clean, corrupted, metric, site, grad_run="corrupted", sign=1.0):
    if grad_run == "clean":
        _, grads = grads_backward(lm, clean, metric, site)
    else:
        _, grads = grads_backward(lm, corrupted, metric, site)
    delta = _acts(lm, clean, site) - _acts(lm, corrupted, site)
    return sign * (delta * grads).sum((1, 3))


def attr_grad_at_clean(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, "clean")


def attr_sign(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, sign=-1.0)


def attr_noising(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site, "clean", sign=-1.0)


def attr_gradient_only(lm, clean, corrupted, metric, site="resid_pre"):
    _, grads = grads_backward(lm, corrupted, metric, site)
    return grads.sum((1, 3))


def attr_input_x_gradient(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return (acts * grads).sum((1, 3))


def attr_mean_over_batch(lm, clean, corrupted, metric, site="resid_pre"):
    acts, grads = grads_backward(lm, corrupted, metric, site)
    return ((_acts(lm, clean, site) - acts) * grads).sum(-1).mean(1)


def attr_ignores_site(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, "resid_pre")


def attr_abs(lm, clean, corrupted, metric, site="resid_pre"):
    return _attr(lm, clean, corrupted, metric, site).abs()


def test_attribution_patching_check() -> None:
    check = lab03.check_attribution_patching
    for good in (SOL["attribution_patching"], attr_float64, attr_einsum):
        assert passes(check, good), good.__name__
    for wrong in (
        attr_grad_at_clean,
        attr_sign,
        attr_noising,
        attr_gradient_only,
        attr_input_x_gradient,
        attr_mean_over_batch,
        attr_ignores_site,
        attr_abs,
    ):
        assert fails(check, wrong), wrong.__name__
    assert "clean run" in fails(check, attr_grad_at_clean)
    assert "noising" in fails(check, attr_noising)


def test_attribution_patching_is_exact_on_the_linear_model() -> None:
    lm = lab03._linear_model()
    clean, corrupted = lab03._tokens(lm, lab03._CLEAN[:2]), lab03._tokens(lm, lab03._CORRUPTED[:2])
    metric = lab03._reference_metric(lm, clean, corrupted, [70, 81], [105, 77])
    for site in lab03.SITES:
        exact = grid_loop(lm, clean, corrupted, metric, site)
        estimate = SOL["attribution_patching"](lm, clean, corrupted, metric, site)
        torch.testing.assert_close(estimate, exact, atol=1e-4, rtol=1e-3)
        assert exact.abs().max() > 0.05  # not trivially zero
    heads = SOL["head_attribution"](lm, clean, corrupted, metric).sum(-1)
    torch.testing.assert_close(
        heads, heads_loop(lm, clean, corrupted, metric), atol=1e-4, rtol=1e-3
    )


# ----- 3.6 head_attribution ---------------------------------------------------------------------
def head_attr_float64(lm, clean, corrupted, metric):
    acts, grads = grads_backward(lm, corrupted, metric, "head_out")
    per = (_acts(lm, clean, "head_out").double() - acts.double()) * grads.double()
    return per.sum((1, 4)).transpose(1, 2)


def head_attr_from_flat(lm, clean, corrupted, metric):
    """Gradients of the flat o_proj input, split by hand."""
    acts, grads = SOL["activations_and_grads"](lm, corrupted, metric, "head_out")
    delta = (_acts(lm, clean, "head_out") - acts).flatten(-2)
    flat = (delta * grads.flatten(-2)).view(*delta.shape[:-1], lm.n_heads, lm.d_head)
    return flat.sum(-1).sum(1).permute(0, 2, 1)


def head_attr_kv(lm, clean, corrupted, metric):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    per = SOL["head_attribution"](lm, clean, corrupted, metric)
    return per.view(lm.n_layers, kv, -1, per.shape[-1]).sum(2)


def head_attr_resid(lm, clean, corrupted, metric):
    return lab03._resid_heads(lm, clean, corrupted, metric)


def head_attr_attn_out(lm, clean, corrupted, metric):
    return lab03._attn_out_heads(lm, clean, corrupted, metric)


def head_attr_sign(lm, clean, corrupted, metric):
    return -SOL["head_attribution"](lm, clean, corrupted, metric)


def head_attr_grad_clean(lm, clean, corrupted, metric):
    _, grads = grads_backward(lm, clean, metric, "head_out")
    delta = _acts(lm, clean, "head_out") - _acts(lm, corrupted, "head_out")
    return (delta * grads).sum((1, 4)).transpose(1, 2)


def head_attr_unpermuted(lm, clean, corrupted, metric):
    per = SOL["head_attribution"](lm, clean, corrupted, metric)  # (L, H, pos)
    return per.reshape(lm.n_layers, per.shape[2], lm.n_heads).transpose(1, 2)


def head_attr_no_positions(lm, clean, corrupted, metric):
    per = SOL["head_attribution"](lm, clean, corrupted, metric)
    return per.sum(-1, keepdim=True).expand_as(per) / per.shape[-1]


def test_head_attribution_check() -> None:
    check = lab03.check_head_attribution
    for good in (SOL["head_attribution"], head_attr_float64, head_attr_from_flat):
        assert passes(check, good), good.__name__
    for wrong in (
        head_attr_kv,
        head_attr_resid,
        head_attr_attn_out,
        head_attr_sign,
        head_attr_grad_clean,
        head_attr_unpermuted,
        head_attr_no_positions,
    ):
        assert fails(check, wrong), wrong.__name__
    assert "residual stream" in fails(check, head_attr_resid)
    assert "key/value heads" in fails(check, head_attr_kv)


# ----- 3.7 agreement ----------------------------------------------------------------------------
def agreement_numpy(estimate, exact, k=10):
    import numpy as np

    x, y = exact.flatten().numpy().astype(float), estimate.flatten().numpy().astype(float)
    slope = np.polyfit(x, y, 1)[0]
    rx, ry = x.argsort().argsort(), y.argsort().argsort()
    top = set(np.abs(x).argsort()[::-1][:k].tolist()) & set(np.abs(y).argsort()[::-1][:k].tolist())
    return {
        "pearson": np.corrcoef(x, y)[0, 1],
        "spearman": np.corrcoef(rx, ry)[0, 1],
        "slope": slope,
        "sign agreement": float(((x > 0) == (y > 0)).mean()),
        "top-k recall": len(top) / k,
    }


def agreement_corrcoef(estimate, exact, k=10):
    x, y = exact.flatten().double(), estimate.flatten().double()
    r = torch.corrcoef(torch.stack([x, y]))[0, 1]
    rank = torch.corrcoef(
        torch.stack([x.argsort().argsort().double(), y.argsort().argsort().double()])
    )[0, 1]
    slope = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution[0, 0]
    ix = x.abs().topk(k).indices
    iy = y.abs().topk(k).indices
    return {
        "pearson": r,
        "spearman": rank,
        "slope": slope,
        "sign agreement": (torch.sign(x) == torch.sign(y)).float().mean(),
        "top-k recall": torch.isin(ix, iy).float().mean(),
    }


def _with(**changes):
    def fn(estimate, exact, k=10):
        out = dict(SOL["agreement"](estimate, exact, k))
        for key, f in changes.items():
            out[key] = f(estimate, exact, k, out)
        return out

    return fn


def _ols(x, y):
    x, y = x.flatten().double(), y.flatten().double()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


agreement_slope_swapped = _with(slope=lambda e, x, k, o: _ols(e, x))
agreement_slope_through_origin = _with(
    slope=lambda e, x, k, o: float((x.flatten() * e.flatten()).sum() / (x.flatten() ** 2).sum())
)
agreement_spearman_is_pearson = _with(spearman=lambda e, x, k, o: o["pearson"])
agreement_signed_topk = _with(
    **{
        "top-k recall": lambda e, x, k, o: (
            len(
                set(x.flatten().topk(k).indices.tolist())
                & set(e.flatten().topk(k).indices.tolist())
            )
            / k
        )
    }
)
agreement_signed_topk_exact = _with(  # signed on the exact side only
    **{
        "top-k recall": lambda e, x, k, o: (
            len(
                set(x.flatten().topk(k).indices.tolist())
                & set(e.flatten().abs().topk(k).indices.tolist())
            )
            / k
        )
    }
)
agreement_signed_topk_estimate = _with(  # signed on the estimate's side only
    **{
        "top-k recall": lambda e, x, k, o: (
            len(
                set(x.flatten().abs().topk(k).indices.tolist())
                & set(e.flatten().topk(k).indices.tolist())
            )
            / k
        )
    }
)
agreement_sign_count = _with(
    **{"sign agreement": lambda e, x, k, o: float((x.sign() == e.sign()).sum())}
)
agreement_recall_count = _with(**{"top-k recall": lambda e, x, k, o: o["top-k recall"] * k})
agreement_missing_key = _with()


def agreement_no_slope(estimate, exact, k=10):
    out = dict(SOL["agreement"](estimate, exact, k))
    del out["slope"]
    return out


for _name, _fn in list(globals().items()):  # name the wrong versions built by _with
    if _name.startswith("agreement_") and _fn.__name__ == "fn":
        _fn.__name__ = _name


@pytest.mark.parametrize("variant", VARIANTS)
def test_agreement_check(variant: int) -> None:
    check = lab03.check_agreement
    for good in (SOL["agreement"], agreement_numpy, agreement_corrcoef):
        result = on_variant(check, good, variant)
        assert result.passed, (good.__name__, result.report())
    for wrong, named in [
        (agreement_slope_swapped, "regressed exact on the estimate"),
        (agreement_slope_through_origin, "through the origin"),
        (agreement_spearman_is_pearson, "Spearman's rho is Pearson's r of the ranks"),
        (agreement_signed_topk, "absolute value"),
        (agreement_signed_topk_exact, "absolute value"),
        (agreement_signed_topk_estimate, "absolute value"),
        (agreement_sign_count, "not a count"),
        (agreement_recall_count, "not a count"),
        (agreement_no_slope, "slope"),
    ]:
        text = rejects(check, wrong, variant)
        assert named in text, (wrong.__name__, variant, text)


def test_agreement_problem_separates_every_shortcut_for_every_seed() -> None:
    """Hidden variants use any seed: on each, every shortcut is off by > 8 x the tolerance, and
    ranking by signed value gives another top-k recall than ranking by size, for every k."""
    seeds = list(range(60)) + [(v * 1_000_003 + 7 * 7_919) % (2**31 - 1) for v in range(1, 60)]
    for seed in seeds:
        estimate, exact = lab03._agreement_problem(seed)
        for k in lab03.AGREEMENT_KS:
            want = lab03._agreement(estimate, exact, k)
            assert want["top-k recall"] == pytest.approx((k - 1) / k)
            x, y = exact.flatten(), estimate.flatten()
            signed = len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist())) / k
            assert signed <= (k - 2) / k + 1e-9, (seed, k)
            for key, wrong in lab03._agreement_mistakes(estimate, exact, k).items():
                for value, _ in wrong:
                    assert abs(value - want[key]) > 0.005, (seed, k, key)


# ----- 3.8 patches_to_find_top_k ----------------------------------------------------------------
def find_max_rank(estimate, exact, k=10):
    top = exact.flatten().abs().topk(k).indices
    rank = estimate.flatten().abs().argsort(descending=True).argsort()
    return int(rank[top].max()) + 1


def find_cumsum(estimate, exact, k=10):
    top = torch.zeros(exact.numel(), dtype=torch.bool)
    top[exact.flatten().abs().topk(k).indices] = True
    found = top[estimate.flatten().abs().argsort(descending=True)].cumsum(0)
    return int((found < k).sum()) + 1


def find_off_by_one(estimate, exact, k=10):
    return find_max_rank(estimate, exact, k) - 1


def find_signed(estimate, exact, k=10):
    top = exact.flatten().abs().topk(k).indices
    rank = estimate.flatten().argsort(descending=True).argsort()
    return int(rank[top].max()) + 1


def find_signed_exact(estimate, exact, k=10):
    top = exact.flatten().topk(k).indices
    rank = estimate.flatten().abs().argsort(descending=True).argsort()
    return int(rank[top].max()) + 1


def find_ascending(estimate, exact, k=10):
    top = exact.flatten().abs().topk(k).indices
    rank = estimate.flatten().abs().argsort().argsort()
    return int(rank[top].max()) + 1


def find_first(estimate, exact, k=10):
    top = exact.flatten().abs().topk(k).indices
    rank = estimate.flatten().abs().argsort(descending=True).argsort()
    return int(rank[top].min()) + 1


def find_recall(estimate, exact, k=10):
    top_x = set(exact.flatten().abs().topk(k).indices.tolist())
    return len(top_x & set(estimate.flatten().abs().topk(k).indices.tolist()))


def find_always_k(estimate, exact, k=10):
    return k


def find_largest_only(estimate, exact, k=10):
    """Stops when the single largest exact effect is found."""
    return find_max_rank(estimate, exact, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_patches_to_find_top_k_check(variant: int) -> None:
    check = lab03.check_patches_to_find_top_k
    for good in (SOL["patches_to_find_top_k"], find_max_rank, find_cumsum):
        result = on_variant(check, good, variant)
        assert result.passed, (good.__name__, result.report())
    for wrong, named in [
        (find_off_by_one, "Off by one"),
        (find_signed, "not the signed estimate"),
        (find_signed_exact, "large negative effect counts too"),
        (find_ascending, ""),
        (find_first, ""),
        (find_recall, ""),
        (find_always_k, ""),
        (find_largest_only, ""),
    ]:
        text = rejects(check, wrong, variant)
        assert named in text, (wrong.__name__, variant, text)


def test_find_problem_has_the_same_answers_for_every_seed() -> None:
    seeds = list(range(60)) + [(v * 1_000_003 + 8 * 7_919) % (2**31 - 1) for v in range(1, 60)]
    for seed in seeds:
        estimate, exact = lab03._find_problem(seed)
        answers = {k: lab03._patches_needed(estimate, exact, k) for k in (2, 4, 5, 8)}
        assert list(answers.values()) == [3, 5, 7, 11], (seed, answers)
        for k, want in answers.items():
            for signed in ("exact", "estimate"):
                assert lab03._patches_needed(estimate, exact, k, signed) != want, (seed, k)


# ----- 3.9 qk_fix -------------------------------------------------------------------------------
def qk_float64(scores_clean, scores_corrupted, pattern_grad):
    new = torch.softmax(scores_clean.double(), -1) - torch.softmax(scores_corrupted.double(), -1)
    return torch.einsum("...qk,...qk->...", new, pattern_grad.double())


def qk_exp(scores_clean, scores_corrupted, pattern_grad):
    def softmax(s):
        e = (s - s.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    return ((softmax(scores_clean) - softmax(scores_corrupted)) * pattern_grad).sum(-1).sum(-1)


def qk_plain(scores_clean, scores_corrupted, pattern_grad):
    return lab03._atp_scores(scores_clean, scores_corrupted, pattern_grad)


def qk_sign(scores_clean, scores_corrupted, pattern_grad):
    return -SOL["qk_fix"](scores_clean, scores_corrupted, pattern_grad)


def qk_wrong_dim(scores_clean, scores_corrupted, pattern_grad):
    new = (scores_clean.softmax(-2) - scores_corrupted.softmax(-2)).nan_to_num(0.0)
    return (new * pattern_grad).sum((-2, -1))


def qk_no_subtract(scores_clean, scores_corrupted, pattern_grad):
    return (scores_clean.softmax(-1) * pattern_grad).sum((-2, -1))


def qk_only_keys(scores_clean, scores_corrupted, pattern_grad):
    return ((scores_clean.softmax(-1) - scores_corrupted.softmax(-1)) * pattern_grad).sum(-1)


def qk_raw_scores(scores_clean, scores_corrupted, pattern_grad):
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, 0.0, 0.0)
    return (delta * pattern_grad).sum((-2, -1))


def qk_no_mask(scores_clean, scores_corrupted, pattern_grad):
    clean = scores_clean.nan_to_num(0.0, 0.0, 0.0)
    corrupted = scores_corrupted.nan_to_num(0.0, 0.0, 0.0)
    return ((clean.softmax(-1) - corrupted.softmax(-1)) * pattern_grad).sum((-2, -1))


def qk_sum_all(scores_clean, scores_corrupted, pattern_grad):
    return SOL["qk_fix"](scores_clean, scores_corrupted, pattern_grad).sum()


@pytest.mark.parametrize("variant", VARIANTS)
def test_qk_fix_check(variant: int) -> None:
    check = lab03.check_qk_fix
    for good in (SOL["qk_fix"], qk_float64, qk_exp):
        result = on_variant(check, good, variant)
        assert result.passed, (good.__name__, result.report())
    for wrong in (
        qk_plain,
        qk_sign,
        qk_wrong_dim,
        qk_no_subtract,
        qk_only_keys,
        qk_raw_scores,
        qk_no_mask,
        qk_sum_all,
    ):
        rejects(check, wrong, variant)
    assert "plain linear estimate" in rejects(check, qk_plain, variant)


# ----- 3.10 integrated_patching -----------------------------------------------------------------
def ig_looped(lm, clean, corrupted, metric, n_steps=16):
    with torch.no_grad():
        x, b = lm.embed(clean), lm.embed(corrupted)
    total = torch.zeros_like(x)
    alphas = (torch.arange(n_steps) + 0.5) / n_steps
    for alpha in alphas.tolist():
        point = (b + alpha * (x - b)).detach().requires_grad_(True)
        with torch.enable_grad():
            metric(lm.model(inputs_embeds=point).logits[:, -1]).backward()
        total += point.grad
    return ((x - b) * total / n_steps).sum((0, 2))


def ig_float64_sum(lm, clean, corrupted, metric, n_steps=16):
    return SOL["integrated_patching"](lm, clean, corrupted, metric, n_steps).double()


def _ig_rule(rule):
    def fn(lm, clean, corrupted, metric, n_steps=16):
        return lab03._integrated(lm, clean, corrupted, metric, n_steps, rule)

    return fn


ig_left, ig_right = _ig_rule("left"), _ig_rule("right")


def ig_sign(lm, clean, corrupted, metric, n_steps=16):
    return -SOL["integrated_patching"](lm, clean, corrupted, metric, n_steps)


def ig_zero_baseline(lm, clean, corrupted, metric, n_steps=16):
    return _ig_from(lm, clean, None, metric, n_steps)


def _ig_from(lm, clean, baseline, metric, n_steps):
    with torch.no_grad():
        x = lm.embed(clean)
    b = torch.zeros_like(x) if baseline is None else baseline
    total = torch.zeros_like(x)
    for k in range(n_steps):
        point = (b + (k + 0.5) / n_steps * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            total += torch.autograd.grad(
                metric(lm.model(inputs_embeds=point).logits[:, -1]), point
            )[0]
    return ((x - b) * total / n_steps).sum((0, 2))


def ig_summed_not_averaged(lm, clean, corrupted, metric, n_steps=16):
    return SOL["integrated_patching"](lm, clean, corrupted, metric, n_steps) * n_steps


def ig_tangent(lm, clean, corrupted, metric, n_steps=16):
    return SOL["attribution_patching"](lm, clean, corrupted, metric, "resid_pre")[0]


def ig_gradient_at_clean(lm, clean, corrupted, metric, n_steps=16):
    return _ig_rule("right")(lm, clean, corrupted, metric, 1)


def ig_fixed_steps(lm, clean, corrupted, metric, n_steps=16):
    return SOL["integrated_patching"](lm, clean, corrupted, metric, 16)


def test_integrated_patching_check() -> None:
    check = lab03.check_integrated_patching
    for good in (SOL["integrated_patching"], ig_looped, ig_float64_sum):
        assert passes(check, good), good.__name__
    for wrong in (
        ig_left,
        ig_right,
        ig_sign,
        ig_zero_baseline,
        ig_summed_not_averaged,
        ig_tangent,
        ig_gradient_at_clean,
        ig_fixed_steps,
    ):
        assert fails(check, wrong), wrong.__name__
    assert "midpoint" in fails(check, ig_left)


# ----- every model-based check, on hidden variants ------------------------------------------------
HIDDEN_MISTAKES = {  # exercise: the most plausible wrong versions, and the words naming each
    "normalised_metric": [(metric_per_prompt, "each prompt separately"), (metric_flipped, "sign")],
    "patch_grid": [(grid_noising, "noising")],
    "patch_heads": [(heads_kv, "key/value heads"), (heads_resid_split, "")],
    "activations_and_grads": [(grads_accumulate, "accumulate"), (grads_at_other_run, "")],
    "attribution_patching": [(attr_grad_at_clean, "clean run"), (attr_noising, "noising")],
    "head_attribution": [(head_attr_resid, "residual stream"), (head_attr_kv, "key/value heads")],
    "integrated_patching": [(ig_left, "midpoint"), (ig_summed_not_averaged, "")],
}


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_plausible_mistakes_fail_on_hidden_variants(variant: int) -> None:
    for name, wrongs in HIDDEN_MISTAKES.items():
        for wrong, named in wrongs:
            _ACCUMULATED.clear()  # a fresh kernel for each
            text = rejects(lab03.EXERCISES[name], wrong, variant)
            assert named in text, (name, wrong.__name__, variant, text)
