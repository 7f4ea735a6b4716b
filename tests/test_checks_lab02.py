"""Lab 02 checks accept correct implementations and reject plausible mistakes, by name.

The solution functions come from solutions/02_causal_tracing.ipynb itself. The alternative
correct implementations (looped, batched, float64, nnsight) and the plausible wrong ones live
here, not in the notebook or in labkit. Every wrong one must fail with a message that names its
mistake; every check also runs on hidden variants (other model families, prompts and seeds).
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

import labkit
from labkit.build import solution_functions
from labkit.checks import lab02
from labkit.checks.core import run_check
from labkit.hooks import capture, hooked, patch

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = solution_functions(ROOT / "solutions" / "02_causal_tracing.ipynb")
SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
VARIANTS = (1, 2, 3)


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code.")


def run(check, fn, variant: int = 0):
    return run_check(
        check.body, check.check_name, check.points, fn, variant=variant, timeout=check.timeout
    )


def assert_passes(check, fn, variant: int = 0) -> None:
    result = run(check, fn, variant)
    assert result.attempted and result.passed, result.report()


def assert_rejects(check, fn, needle: str, variant: int = 0) -> None:
    result = run(check, fn, variant)
    text = result.report()
    assert result.attempted and not result.passed, text
    assert needle in text, text
    assert "def " not in text and "check itself stopped" not in text, text


def float64(lm: labkit.LabModel) -> labkit.LabModel:
    """A float64 copy of the model (the original is left alone)."""
    return labkit.LabModel(copy.deepcopy(lm.model).double(), lm.tokenizer, lm.name)


def module_at(root, lm: labkit.LabModel, layer: int, site: str):
    """The module (or nnsight envoy) whose output is ``site`` at ``layer``, by attribute path."""
    for name in lm.spec.blocks.split("."):
        root = getattr(root, name)
    block = root[layer]
    if site == "resid_post":
        return block
    for name in (lm.spec.mlp if site == "mlp_out" else lm.spec.attn).split("."):
        block = getattr(block, name)
    return block


def nnsight_model(lm: labkit.LabModel):
    from nnsight import TransformersModel

    return TransformersModel(lm.model, tokenizer=lm.tokenizer)


def test_stubs_are_not_attempted() -> None:
    for check in lab02.EXERCISES.values():
        result = check(stub, quiet=True)
        assert not result.attempted and result.status == "not attempted", check.check_name


def test_check_names_follow_the_exercise_format() -> None:
    for name, check in lab02.EXERCISES.items():
        assert check.check_name.startswith("Exercise 2."), name
        assert ": " in check.check_name, name


# ----- 2.1 collect_activations -------------------------------------------------------------------
def collect_per_layer(lm, tokens, site="resid_post"):
    acts = []
    for layer in range(lm.n_layers):  # one forward per layer, on purpose
        with torch.no_grad(), capture(lm, site, layer) as cache:
            lm.model(tokens)
        acts.append(cache[site, layer][0])
    return torch.stack(acts)


def collect_float64(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](float64(lm), tokens, site)


def collect_nnsight(lm, tokens, site="resid_post"):
    model = nnsight_model(lm)
    saved = []
    with torch.no_grad(), model.trace(tokens):
        for layer in range(lm.n_layers):
            out = module_at(model, lm, layer, site).output
            saved.append((out[0] if site == "attn_out" else out).save())
    return torch.stack(saved)[:, 0]


def collect_hidden_states_plus_hook(lm, tokens, site="resid_post"):
    """hidden_states for all but the last block, whose output comes from a hook."""
    if site != "resid_post":
        return SOLUTION["collect_activations"](lm, tokens, site)
    last = lm.n_layers - 1
    with torch.no_grad(), capture(lm, "resid_post", last) as cache:
        hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.cat([torch.stack(hidden[1 : last + 1])[:, 0], cache["resid_post", last]])


def collect_final_norm(lm, tokens, site="resid_post"):
    hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[1:])[:, 0]


def collect_resid_pre(lm, tokens, site="resid_post"):
    hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[:-1])[:, 0]


def collect_ignores_site(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](lm, tokens, "resid_post")


def collect_with_batch_dim(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](lm, tokens, site)[:, None]


def collect_module_inputs(lm, tokens, site="resid_post"):
    """Records what goes *into* the MLP or the output projection."""
    if site == "resid_post":
        return SOLUTION["collect_activations"](lm, tokens, site)
    saved = []
    modules = [lm.mlp(i) if site == "mlp_out" else lm.attn_out_proj(i) for i in range(lm.n_layers)]
    handles = [m.register_forward_pre_hook(lambda m, args: saved.append(args[0])) for m in modules]
    try:
        lm.model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(saved)[:, 0]


def collect_resid_mid(lm, tokens, site="resid_post"):
    if site != "attn_out":
        return SOLUTION["collect_activations"](lm, tokens, site)
    with torch.no_grad(), capture(lm, ["resid_pre", "attn_out"]) as cache:
        lm.model(tokens)
    return (cache.stack("resid_pre") + cache.stack("attn_out"))[:, 0]


_KEPT: list[torch.Tensor] = []


def collect_accumulates(lm, tokens, site="resid_post"):
    """Appends to a list that outlives the call."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    _KEPT.extend(cache[site, layer][0] for layer in range(lm.n_layers))
    return torch.stack(_KEPT[-lm.n_layers :]) * (len(_KEPT) // lm.n_layers)


def collect_leaves_hooks(lm, tokens, site="resid_post"):
    saved = []
    for layer in range(lm.n_layers):
        module = {"resid_post": lm.block, "mlp_out": lm.mlp, "attn_out": lm.attn}[site](layer)
        module.register_forward_hook(
            lambda m, a, out: saved.append(out[0] if isinstance(out, tuple) else out)
        )
    lm.model(tokens)
    return torch.stack(saved)[:, 0]


def collect_half(lm, tokens, site="resid_post"):
    return SOLUTION["collect_activations"](lm, tokens, site).half()


COLLECT_CORRECT = [
    SOLUTION["collect_activations"],
    collect_per_layer,
    collect_float64,
    collect_nnsight,
    collect_hidden_states_plus_hook,
]
COLLECT_WRONG = [
    (collect_final_norm, "final norm"),
    (collect_resid_pre, "blocks' inputs (resid_pre)"),
    (collect_ignores_site, "use the `site` argument"),
    (collect_with_batch_dim, "Expected shape"),
    (collect_module_inputs, "MLPs' inputs"),
    (collect_resid_mid, "residual stream after attention"),
    (collect_accumulates, "second call"),
    (collect_leaves_hooks, "hook(s) registered"),
    (collect_half, "float16"),
]


@pytest.mark.parametrize("fn", COLLECT_CORRECT, ids=lambda f: f.__name__)
def test_collect_activations_accepts(fn) -> None:
    assert_passes(lab02.check_collect_activations, fn)


@pytest.mark.parametrize("fn, needle", COLLECT_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_collect_activations_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_collect_activations, fn, needle)


def test_collect_activations_rejects_the_attention_output_projection_input() -> None:
    def attn_inputs(lm, tokens, site="resid_post"):
        return collect_module_inputs(lm, tokens, site if site != "mlp_out" else "resid_post")

    result = run(lab02.check_collect_activations, attn_inputs)
    assert not result.passed and "output projection" in result.parts[2].message


@pytest.mark.parametrize("variant", VARIANTS)
def test_collect_activations_hidden_variants(variant) -> None:
    check = lab02.check_collect_activations
    assert_passes(check, SOLUTION["collect_activations"], variant)
    assert_passes(check, collect_nnsight, variant)
    assert_rejects(check, collect_final_norm, "final norm", variant)
    assert_rejects(check, collect_module_inputs, "MLPs' inputs", variant)


# ----- 2.2 patch_position ------------------------------------------------------------------------
def patch_with_labkit(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_float64(lm, tokens, layer, position, vector):
    return patch_with_labkit(float64(lm), tokens, layer, position, vector.double())


def patch_nnsight(lm, tokens, layer, position, vector):
    model = nnsight_model(lm)
    with torch.no_grad(), model.trace(tokens):
        module_at(model, lm, layer, "resid_post").output[:, position, :] = vector
        logits = model.lm_head.output.save()
    return logits[0, -1].softmax(-1)


def patch_in_place(lm, tokens, layer, position, vector):
    """Writes into the block's output tensor and returns None from the hook."""

    def write(module, args, output):
        output[:, position] = vector

    handle = lm.block(layer).register_forward_hook(write)
    try:
        with torch.no_grad():
            return lm.model(tokens).logits[0, -1].softmax(-1)
    finally:
        handle.remove()


def patch_next_block_input(lm, tokens, layer, position, vector):
    """resid_post[layer] is resid_pre[layer + 1], or the final norm's input after the last."""

    def put(module, args):
        hidden = args[0].clone()
        hidden[:, position] = vector
        return (hidden, *args[1:])

    module = lm.final_norm if layer == lm.n_layers - 1 else lm.block(layer + 1)
    handle = module.register_forward_pre_hook(put)
    try:
        with torch.no_grad():
            return torch.softmax(lm.model(tokens).logits[0, -1], dim=0)
    finally:
        handle.remove()


def patch_off_by_one(lm, tokens, layer, position, vector):
    return patch_with_labkit(lm, tokens, layer, min(position + 1, tokens.shape[1] - 1), vector)


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


def patch_log_softmax(lm, tokens, layer, position, vector):
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1].log_softmax(-1)


def patch_no_final_norm(lm, tokens, layer, position, vector):
    """Reads the last block's output and unembeds it, skipping the final norm."""
    last = lm.n_layers - 1
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        with capture(lm, "resid_post", last) as cache:
            lm.model(tokens)
    return lm.unembed(cache["resid_post", last][0, -1]).softmax(-1)


def patch_leaves_hook(lm, tokens, layer, position, vector):
    def put(module, args, output):
        output = output.clone()
        output[:, position] = vector
        return output

    lm.block(layer).register_forward_hook(put)
    return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_next_block_only(lm, tokens, layer, position, vector):
    """Patches the input of block layer + 1, forgetting the case of the last block."""
    if layer + 1 == lm.n_layers:
        return lm.model(tokens).logits[0, -1].softmax(-1)
    with torch.no_grad(), patch(lm, "resid_pre", layer + 1, vector, positions=[position]):
        return lm.model(tokens).logits[0, -1].softmax(-1)


PATCH_CORRECT = [
    SOLUTION["patch_position"],
    patch_with_labkit,
    patch_float64,
    patch_nnsight,
    patch_in_place,
    patch_next_block_input,
]
PATCH_WRONG = [
    (patch_off_by_one, "next position"),
    (patch_resid_pre, "block's input (resid_pre)"),
    (patch_every_position, "every position"),
    (patch_adds, "added the vector"),
    (patch_returns_logits, "logits"),
    (patch_log_softmax, "log-probabilities"),
    (patch_no_final_norm, "final norm"),
    (patch_leaves_hook, "hook(s) registered"),
    (patch_next_block_only, "input of block layer + 1"),
]


@pytest.mark.parametrize("fn", PATCH_CORRECT, ids=lambda f: f.__name__)
def test_patch_position_accepts(fn) -> None:
    assert_passes(lab02.check_patch_position, fn)


@pytest.mark.parametrize("fn, needle", PATCH_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_patch_position_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_patch_position, fn, needle)


def test_patch_position_expected_values_ignore_hooks_the_student_left() -> None:
    """A leaked hook fails that call, is removed, and later parts still grade correctly."""
    result = run(lab02.check_patch_position, patch_leaves_hook)
    assert [p.passed for p in result.parts] == [False, False, False]
    calls = []

    def leak_once(lm, tokens, layer, position, vector):
        if not calls:
            calls.append(1)
            return patch_leaves_hook(lm, tokens, layer, position, vector)
        return SOLUTION["patch_position"](lm, tokens, layer, position, vector)

    result = run(lab02.check_patch_position, leak_once)
    assert [p.passed for p in result.parts] == [False, True, True], result.report()


@pytest.mark.parametrize("variant", VARIANTS)
def test_patch_position_hidden_variants(variant) -> None:
    check = lab02.check_patch_position
    assert_passes(check, SOLUTION["patch_position"], variant)
    assert_passes(check, patch_next_block_input, variant)
    assert_rejects(check, patch_resid_pre, "resid_pre", variant)
    assert_rejects(check, patch_no_final_norm, "final norm", variant)


# ----- 2.4 corrupt_subject -----------------------------------------------------------------------
def corrupt_full_noise_then_mask(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    clean = lm.embed(tokens).detach()
    noise = torch.randn(n_samples, *clean.shape[1:], generator=generator)
    mask = torch.zeros(clean.shape[1], 1)
    mask[subject] = 1.0
    return clean + noise_scale * lm.embed.weight.std() * noise * mask


def corrupt_global_seed_loop(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clean = lm.embed(tokens).detach()[0]
        rows = []
        for _ in range(n_samples):  # one sample, one position at a time
            row = clean.clone()
            for p in subject:
                row[p] += noise_scale * lm.embed.weight.std() * torch.randn(lm.d_model)
            rows.append(row)
    return torch.stack(rows)


def corrupt_float64(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    clean = lm.embed(tokens).detach().double()
    sigma = lm.embed.weight.double().std()
    noise = torch.randn(
        lm.d_model, len(subject), n_samples, generator=generator, dtype=torch.float64
    )
    out = clean.repeat(n_samples, 1, 1)
    out[:, subject] += noise_scale * sigma * noise.permute(2, 1, 0)  # another draw order
    return out


def corrupt_generator_per_sample(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    clean = lm.embed(tokens).detach()[0]
    rows = []
    for i in range(n_samples):
        generator = torch.Generator().manual_seed(seed * 10_007 + i)
        row = clean.clone()
        row[subject] += (
            noise_scale
            * lm.embed.weight.std()
            * torch.randn(len(subject), lm.d_model, generator=generator)
        )
        rows.append(row)
    return torch.stack(rows)


def corrupt_every_position(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    every = list(range(tokens.shape[1]))
    return SOLUTION["corrupt_subject"](lm, tokens, every, n_samples, noise_scale, seed)


def corrupt_shifted(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    shifted = [p + 1 for p in subject]
    return SOLUTION["corrupt_subject"](lm, tokens, shifted, n_samples, noise_scale, seed)


def _with_sigma(sigma_of):
    def corrupt(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
        generator = torch.Generator().manual_seed(seed)
        out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
        noise = torch.randn(n_samples, len(subject), lm.d_model, generator=generator)
        out[:, subject] += noise_scale * sigma_of(lm, tokens) * noise
        return out

    return corrupt


corrupt_unit_std = _with_sigma(lambda lm, tokens: 1.0)
corrupt_prompt_std = _with_sigma(lambda lm, tokens: lm.embed(tokens).std())
corrupt_column_std = _with_sigma(lambda lm, tokens: lm.embed.weight.std(0).mean())
corrupt_variance = _with_sigma(lambda lm, tokens: lm.embed.weight.var())


def corrupt_hard_coded_three(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return SOLUTION["corrupt_subject"](lm, tokens, subject, n_samples, 3.0, seed)


def corrupt_uniform(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.rand(n_samples, len(subject), lm.d_model, generator=generator)
    out[:, subject] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_uniform_same_std(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = (torch.rand(n_samples, len(subject), lm.d_model, generator=generator) - 0.5) * 12**0.5
    out[:, subject] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_same_noise_every_sample(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    one = SOLUTION["corrupt_subject"](lm, tokens, subject, 1, noise_scale, seed)
    return one.repeat(n_samples, 1, 1)


def corrupt_reseeded_per_position(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    for p in subject:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(n_samples, lm.d_model, generator=generator)
        out[:, p] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_one_number_per_token(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.randn(n_samples, len(subject), 1, generator=generator)
    out[:, subject] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_redrawn(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    sigma = lm.embed.weight.std()
    out[:, subject] += noise_scale * sigma * torch.randn(n_samples, len(subject), lm.d_model)
    return out


_ONE_GENERATOR = torch.Generator().manual_seed(0)


def corrupt_generator_kept_between_calls(
    lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0
):
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.randn(n_samples, len(subject), lm.d_model, generator=_ONE_GENERATOR)
    out[:, subject] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_ignores_seed(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return SOLUTION["corrupt_subject"](lm, tokens, subject, n_samples, noise_scale, 0)


def corrupt_adds_positions(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    """Adds GPT-2's position embeddings, which the model adds again to inputs_embeds."""
    out = SOLUTION["corrupt_subject"](lm, tokens, subject, n_samples, noise_scale, seed)
    wpe = getattr(getattr(lm.model, "transformer", None), "wpe", None)
    if wpe is not None:
        out = out + wpe.weight[: tokens.shape[1]]
    return out


CORRUPT_CORRECT = [
    SOLUTION["corrupt_subject"],
    corrupt_full_noise_then_mask,
    corrupt_global_seed_loop,
    corrupt_float64,
    corrupt_generator_per_sample,
]
CORRUPT_WRONG = [
    (corrupt_every_position, "outside the subject"),
    (corrupt_shifted, "outside the subject"),
    (corrupt_adds_positions, "outside the subject"),
    (corrupt_unit_std, "std noise_scale"),
    (corrupt_prompt_std, "this prompt's embeddings"),
    (corrupt_column_std, "std per dimension"),
    (corrupt_variance, "variance"),
    (corrupt_hard_coded_three, "ignores noise_scale"),
    (corrupt_uniform, "mean zero"),
    (corrupt_uniform_same_std, "Gaussian"),
    (corrupt_same_noise_every_sample, "consecutive samples"),
    (corrupt_reseeded_per_position, "consecutive subject positions"),
    (corrupt_one_number_per_token, "consecutive dimensions"),
    (corrupt_redrawn, "twice gives exactly the same"),
    (corrupt_generator_kept_between_calls, "twice gives exactly the same"),
    (corrupt_ignores_seed, "`seed` argument"),
]


@pytest.mark.parametrize("fn", CORRUPT_CORRECT, ids=lambda f: f.__name__)
def test_corrupt_subject_accepts(fn) -> None:
    assert_passes(lab02.check_corrupt_subject, fn)


@pytest.mark.parametrize("fn, needle", CORRUPT_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_corrupt_subject_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_corrupt_subject, fn, needle)


def test_corrupt_subject_accepts_many_valid_noise_streams() -> None:
    """The statistical tests use 5 standard errors: valid noise fails about once in a million."""
    for offset in range(40):

        def shifted_seed(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0, k=offset):
            return corrupt_full_noise_then_mask(
                lm, tokens, subject, n_samples, noise_scale, seed + 7919 * k
            )

        assert_passes(lab02.check_corrupt_subject, shifted_seed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_corrupt_subject_hidden_variants(variant) -> None:
    check = lab02.check_corrupt_subject
    assert_passes(check, SOLUTION["corrupt_subject"], variant)
    assert_passes(check, corrupt_global_seed_loop, variant)
    assert_rejects(check, corrupt_prompt_std, "prompt's embeddings", variant)
    assert_rejects(check, corrupt_reseeded_per_position, "subject positions", variant)


# ----- 2.6 restoration_grid ----------------------------------------------------------------------
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
    layers_of=None,
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
        if layers_of is not None and site != "resid":  # a mistake in the window's formula
            layers = layers_of(layer, window, lm.n_layers)
        for position in range(n_pos):
            embeds = corrupted_embeds
            if fresh_noise:
                embeds = embeds + 0.1 * torch.randn_like(embeds)
            if first_sample_only:
                embeds = embeds[:1]
            target = None if every_position else [min(position + shift, n_pos - 1)]
            with ExitStack() as stack, torch.no_grad():
                for restored in layers:
                    value = clean[name, restored % lm.n_layers]
                    stack.enter_context(patch(lm, name, restored, value, positions=target))
                probs = lm.model(inputs_embeds=embeds).logits[:, -1].softmax(-1)
            grid[layer, position] = probs[:, target_id].mean()
    return grid


def grid_float64(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    return grid_looped(float64(lm), tokens, corrupted_embeds.double(), target_id, site, window)


def grid_batched_by_layer(
    lm,
    tokens,
    corrupted_embeds,
    target_id,
    site="resid",
    window=1,
    *,
    mixed_rows=False,
    only_layers=None,
):
    """One forward per layer: batch row (position, sample) restores its own position.
    ``only_layers``: compute only these layers' rows (the others stay 0)."""
    name = SITE_OF[site]
    n_samples, n_pos, _ = corrupted_embeds.shape
    with torch.no_grad(), capture(lm, name) as clean:
        lm.model(tokens)
    positions = torch.arange(n_pos).repeat_interleave(n_samples)
    rows = torch.arange(len(positions))
    batch = corrupted_embeds.repeat(n_pos, 1, 1)  # row p * n_samples + s: position p, sample s
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers) if only_layers is None else only_layers:
        layers = [layer] if site == "resid" else _window(layer, window, lm.n_layers)
        with ExitStack() as stack, torch.no_grad():
            for restored in layers:

                def fn(act, restored=restored):
                    act = act.clone()
                    act[rows, positions] = clean[name, restored][0, positions]
                    return act

                stack.enter_context(hooked(lm, name, restored, fn))
            # only the last position's logits: the unembedding of every position costs most
            logits = lm.model(inputs_embeds=batch, logits_to_keep=1).logits
            probs = logits[:, -1].softmax(-1)[:, target_id]
        if mixed_rows:  # rows are position-major: this averages the wrong rows together
            grid[layer] = probs.view(n_samples, n_pos).mean(0)
        else:
            grid[layer] = probs.view(n_pos, n_samples).mean(1)
    return grid


def grid_nnsight(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """nnsight, one trace per layer: batch row (position, sample) restores its position."""
    name = SITE_OF[site]
    model = nnsight_model(lm)
    n_samples, n_pos, _ = corrupted_embeds.shape

    def output(layer):
        out = module_at(model, lm, layer, name).output
        return out[0] if name == "attn_out" else out

    saved = []
    with torch.no_grad(), model.trace(tokens):
        for layer in range(lm.n_layers):
            saved.append(output(layer).save())
    positions = torch.arange(n_pos).repeat_interleave(n_samples)
    rows = torch.arange(len(positions))
    batch = corrupted_embeds.repeat(n_pos, 1, 1)
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else list(_window(layer, window, lm.n_layers))
        with torch.no_grad(), model.trace(inputs_embeds=batch):
            for restored in layers:
                output(restored)[rows, positions] = saved[restored][0, positions]
            logits = model.lm_head.output.save()
        grid[layer] = logits[:, -1].softmax(-1)[:, target_id].view(n_pos, n_samples).mean(1)
    return grid


def _looped_with(**options):
    def grid(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
        return grid_looped(lm, tokens, corrupted_embeds, target_id, site, window, **options)

    return grid


def grid_swapped_site(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
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
                    value = clean[name, restored]
                    stack.enter_context(patch(lm, name, restored, value, positions=[position]))
                logits = lm.model(inputs_embeds=corrupted_embeds).logits[:, -1].mean(0)
            grid[layer, position] = logits.softmax(-1)[target_id]
    return grid


def grid_normalised(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    grid = SOLUTION["restoration_grid"](lm, tokens, corrupted_embeds, target_id, site, window)
    with torch.no_grad():
        high = lm.model(tokens).logits[0, -1].softmax(-1)[target_id]
        low = lm.model(inputs_embeds=corrupted_embeds).logits[:, -1].softmax(-1)[:, target_id]
    return (grid - low.mean()) / (high - low.mean())


def grid_noising(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """Runs the clean prompt and puts the *corrupted* activation in at each cell."""
    name = SITE_OF[site]
    with torch.no_grad(), capture(lm, name) as noisy:
        lm.model(inputs_embeds=corrupted_embeds)
    n_samples = corrupted_embeds.shape[0]
    clean_embeds = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    grid = torch.zeros(lm.n_layers, tokens.shape[1])
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else _window(layer, window, lm.n_layers)
        for position in range(tokens.shape[1]):
            with ExitStack() as stack, torch.no_grad():
                for restored in layers:
                    value = noisy[name, restored]
                    stack.enter_context(patch(lm, name, restored, value, positions=[position]))
                probs = lm.model(inputs_embeds=clean_embeds).logits[:, -1].softmax(-1)
            grid[layer, position] = probs[:, target_id].mean()
    return grid


def grid_restores_resid_in_window(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    return grid_looped(lm, tokens, corrupted_embeds, target_id, site, window, name="resid_post")


def grid_mixed_rows(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    return grid_batched_by_layer(
        lm, tokens, corrupted_embeds, target_id, site, window, mixed_rows=True
    )


def grid_in_place(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    corrupted_embeds[:, :, 0] += 0.0 * corrupted_embeds[:, :, 0] + 1e-3  # "normalising" it
    return SOLUTION["restoration_grid"](lm, tokens, corrupted_embeds, target_id, site, window)


def grid_leaves_hooks(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    grid = SOLUTION["restoration_grid"](lm, tokens, corrupted_embeds, target_id, site, window)
    lm.mlp(0).register_forward_hook(lambda module, args, out: None)
    return grid


GRID_CORRECT = [
    SOLUTION["restoration_grid"],
    grid_looped,
    grid_float64,
    grid_batched_by_layer,
    grid_nnsight,
]
GRID_WRONG = [
    (_looped_with(shift=1), "position p + 1"),
    (_looped_with(name="resid_pre"), "resid_pre"),
    (_looped_with(every_position=True), "every position"),
    (_looped_with(fresh_noise=True), "twice gives the same grid"),
    (_looped_with(first_sample_only=True), "only the first noise sample"),
    (_looped_with(layers_of=lambda L, w, n: [L]), "restores only layer L"),
    (_looped_with(layers_of=lambda L, w, n: range(L, min(n, L + w))), "starts at L"),
    (
        _looped_with(layers_of=lambda L, w, n: range(max(0, L - w // 2), min(n, L + w // 2))),
        "one layer short",
    ),
    (
        _looped_with(layers_of=lambda L, w, n: range(L - w // 2, min(n, L - (-w // 2)))),
        "wraps around",
    ),
    (grid_swapped_site, "the other module"),
    (grid_mean_logits, "averages the logits"),
    (grid_normalised, "normalised to 0..1"),
    (grid_noising, "noising"),
    (grid_restores_resid_in_window, "restores the residual stream over the window"),
    (grid_mixed_rows, "every cell"),
    (grid_in_place, "changed its input"),
    (grid_leaves_hooks, "hook(s) registered"),
]


@pytest.mark.parametrize("fn", GRID_CORRECT, ids=lambda f: f.__name__)
def test_restoration_grid_accepts(fn) -> None:
    assert_passes(lab02.check_restoration_grid, fn)


@pytest.mark.parametrize("fn, needle", GRID_WRONG, ids=lambda x: x if isinstance(x, str) else "")
def test_restoration_grid_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_restoration_grid, fn, needle)


@pytest.mark.parametrize("variant", VARIANTS)
def test_restoration_grid_hidden_variants(variant) -> None:
    check = lab02.check_restoration_grid
    assert_passes(check, SOLUTION["restoration_grid"], variant)
    assert_passes(check, grid_batched_by_layer, variant)
    assert_rejects(check, _looped_with(shift=1), "position p + 1", variant)
    assert_rejects(check, grid_swapped_site, "the other module", variant)


def test_the_reference_grid_equals_a_per_cell_loop() -> None:
    """The check's batched reference is the plain one-forward-per-cell loop."""
    for family in ("llama", "gpt_neox"):
        lm = lab02._model(family)
        tokens = lab02._ids(lm, "A cat sat.")
        generator = torch.Generator().manual_seed(3)
        corrupted = lm.embed(tokens).detach().repeat(2, 1, 1)
        corrupted[:, 3:6] += 2 * torch.randn(2, 3, lm.d_model, generator=generator)
        grid_of = lab02._grid_problem(lm, tokens, corrupted, 7)
        for site, window in [("resid", 1), ("mlp", 2), ("attn", 3)]:
            loop = grid_looped(lm, tokens, corrupted, 7, site, window).double()
            assert torch.allclose(grid_of(site, window), loop, atol=1e-6), (family, site)


def test_fast_grid_matches_the_loop_on_the_default_model(lm) -> None:
    """Rows at both ends, the middle, and where the MLP window is cut by the first and last
    layer (the other rows are compared on tiny models of every family above)."""
    tokens = lm.to_tokens("The capital of France is", prepend_anchor=True)
    corrupted = SOLUTION["corrupt_subject"](lm, tokens, [4], n_samples=2)
    target = lm.token_id(" Paris")
    rows = [0, 3, 15, lm.n_layers - 2, lm.n_layers - 1]
    for site, window in [("resid", 1), ("mlp", 10)]:
        fast = SOLUTION["restoration_grid"](lm, tokens, corrupted, target, site, window)[rows]
        slow = grid_batched_by_layer(lm, tokens, corrupted, target, site, window, only_layers=rows)
        slow = slow[rows]
        assert torch.allclose(fast, slow, atol=1e-6), (fast - slow).abs().max()


# ----- 2.7 average_indirect_effect ---------------------------------------------------------------
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


def aie_nanmean(grids, corrupted_probs, subjects):
    """float64, NaN for a role a prompt lacks, then nanmean over prompts."""
    per_prompt = []
    for grid, corrupted, subject in zip(grids, corrupted_probs, subjects, strict=True):
        effect = grid.double() - corrupted
        per_prompt.append(
            torch.stack(
                [
                    effect[:, p].mean(1) if p else torch.full((grid.shape[0],), torch.nan)
                    for p in _roles(subject, grid.shape[1])
                ],
                dim=1,
            )
        )
    return torch.stack(per_prompt).nanmean(0)


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
    out = aie_loops(grids, corrupted_probs, subjects)
    effects = [
        g[:, s[-1] + 1] - c for g, c, s in zip(grids, corrupted_probs, subjects, strict=True)
    ]
    out[:, 1] = torch.stack(effects).mean(0)
    return out


def aie_includes_prefix(grids, corrupted_probs, subjects):
    return aie_loops(grids, corrupted_probs, [list(range(0, s[-1] + 1)) for s in subjects])


def aie_counts_every_prompt(grids, corrupted_probs, subjects):
    n_layers = grids[0].shape[0]
    out = torch.zeros(n_layers, len(ROLES))
    for grid, corrupted, subject in zip(grids, corrupted_probs, subjects, strict=True):
        for column, positions in enumerate(_roles(subject, grid.shape[1])):
            if positions:
                out[:, column] += (grid[:, positions] - corrupted).mean(1)
    return out / len(grids)


def aie_whole_subject(grids, corrupted_probs, subjects):
    out = aie_loops(grids, corrupted_probs, subjects)
    whole = [
        (g[:, s] - c).mean(1) for g, c, s in zip(grids, corrupted_probs, subjects, strict=True)
    ]
    out[:, 0] = torch.stack(whole).mean(0)
    return out


def aie_after_includes_last(grids, corrupted_probs, subjects):
    out = aie_loops(grids, corrupted_probs, subjects)
    after = [
        (g[:, s[-1] + 1 :] - c).mean(1)
        for g, c, s in zip(grids, corrupted_probs, subjects, strict=True)
    ]
    out[:, 2] = torch.stack(after).mean(0)
    return out


def aie_in_place(grids, corrupted_probs, subjects):
    for grid, corrupted in zip(grids, corrupted_probs, strict=True):
        grid -= corrupted  # changes the caller's grids
    return aie_loops(grids, [0.0] * len(grids), subjects)


def aie_transposed(grids, corrupted_probs, subjects):
    return aie_loops(grids, corrupted_probs, subjects).T


AIE_CORRECT = [SOLUTION["average_indirect_effect"], aie_loops, aie_masks, aie_nanmean]
AIE_WRONG = [
    (aie_no_subtraction, "minus that prompt's corrupted probability"),
    (aie_pooled_tokens, "weigh more"),
    (aie_last_subject_off_by_one, "token after the subject"),
    (aie_includes_prefix, "tokens before the subject"),
    (aie_counts_every_prompt, "number of all prompts"),
    (aie_whole_subject, "includes the last subject token"),
    (aie_after_includes_last, "includes the last token"),
    (aie_in_place, "changed its input"),
    (aie_transposed, "One row per layer"),
]


@pytest.mark.parametrize("fn", AIE_CORRECT, ids=lambda f: f.__name__)
def test_average_indirect_effect_accepts(fn) -> None:
    assert_passes(lab02.check_average_indirect_effect, fn)


@pytest.mark.parametrize("fn, needle", AIE_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_average_indirect_effect_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_average_indirect_effect, fn, needle)


@pytest.mark.parametrize("variant", VARIANTS)
def test_average_indirect_effect_hidden_variants(variant) -> None:
    check = lab02.check_average_indirect_effect
    assert_passes(check, SOLUTION["average_indirect_effect"], variant)
    assert_passes(check, aie_nanmean, variant)
    for wrong, needle in AIE_WRONG[:5]:
        assert_rejects(check, wrong, needle, variant)


# ----- 2.3 cross_context_curve -------------------------------------------------------------------
def _donor_last(lm, donor):
    with torch.no_grad(), capture(lm, "resid_post") as cache:
        lm.model(donor)
    return cache.stack("resid_post")[:, 0, -1]  # (n_layers, d_model)


def cross_looped(lm, recipient, donor, target_id):
    """One forward per layer, with labkit.hooks.patch at position -1."""
    vectors = _donor_last(lm, donor)
    probs = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            probs.append(lm.model(recipient).logits[0, -1].softmax(-1)[target_id])
    return torch.stack(probs)


def cross_float64(lm, recipient, donor, target_id):
    return SOLUTION["cross_context_curve"](float64(lm), recipient, donor, target_id)


def cross_nnsight(lm, recipient, donor, target_id):
    model = nnsight_model(lm)
    vectors = _donor_last(lm, donor)
    probs = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), model.trace(recipient):
            module_at(model, lm, layer, "resid_post").output[:, -1, :] = vectors[layer]
            logits = model.lm_head.output.save()
        probs.append(logits[0, -1].softmax(-1)[target_id])
    return torch.stack(probs)


def _cross_with(vectors_of, *, site="resid_post", positions=(-1,), run_donor=False, every=False):
    def cross(lm, recipient, donor, target_id):
        if run_donor:
            recipient, donor = donor, recipient
        vectors = vectors_of(lm, donor, recipient)
        probs = []
        for layer in range(lm.n_layers):
            with ExitStack() as stack, torch.no_grad():
                for other in range(lm.n_layers) if every else [layer]:
                    stack.enter_context(patch(lm, site, other, vectors[other], positions=positions))
                probs.append(lm.model(recipient).logits[0, -1].softmax(-1)[target_id])
        return torch.stack(probs)

    return cross


def _pre_last(lm, donor, recipient):
    with torch.no_grad(), capture(lm, "resid_pre") as cache:
        lm.model(donor)
    return cache.stack("resid_pre")[:, 0, -1]


def _hidden_states_last(lm, donor, recipient):
    with torch.no_grad():
        hidden = lm.model(donor, output_hidden_states=True).hidden_states
    return torch.stack(hidden[:-1])[:, 0, -1]  # hidden_states[L]: the input of block L


def _same_index(lm, donor, recipient):
    with torch.no_grad(), capture(lm, "resid_post") as cache:
        lm.model(donor)
    return cache.stack("resid_post")[:, 0, recipient.shape[1] - 1]


cross_every_position = _cross_with(lambda lm, d, r: _donor_last(lm, d), positions=None)
cross_swapped = _cross_with(lambda lm, d, r: _donor_last(lm, d), run_donor=True)
cross_resid_pre = _cross_with(_pre_last, site="resid_pre")
cross_hidden_states = _cross_with(_hidden_states_last)
cross_same_index = _cross_with(_same_index)
cross_every_row = _cross_with(lambda lm, d, r: _donor_last(lm, d), every=True)


def cross_logits(lm, recipient, donor, target_id):
    vectors = _donor_last(lm, donor)
    out = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            out.append(lm.model(recipient).logits[0, -1, target_id])
    return torch.stack(out)


CROSS_CORRECT = [SOLUTION["cross_context_curve"], cross_looped, cross_float64, cross_nnsight]
CROSS_WRONG = [
    (cross_every_position, "every position"),
    (cross_swapped, "recipient's vector into the donor's run"),
    (cross_resid_pre, "shifted by one layer"),
    (cross_hidden_states, "hidden_states[L]"),
    (cross_same_index, "recipient's last index"),
    (cross_every_row, "row L must patch layer L only"),
    (cross_logits, "You returned logits"),
]


@pytest.mark.parametrize("fn", CROSS_CORRECT, ids=lambda f: f.__name__)
def test_cross_context_curve_accepts(fn) -> None:
    assert_passes(lab02.check_cross_context_curve, fn)


@pytest.mark.parametrize("fn, needle", CROSS_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_cross_context_curve_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_cross_context_curve, fn, needle)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_context_curve_hidden_variants(variant) -> None:
    check = lab02.check_cross_context_curve
    assert_passes(check, SOLUTION["cross_context_curve"], variant)
    assert_passes(check, cross_looped, variant)
    for wrong, needle in CROSS_WRONG[:4]:
        assert_rejects(check, wrong, needle, variant)


def test_cross_context_mistakes_differ_from_the_answer() -> None:
    """Every shortcut gives another curve on the notebook's problem (so each can be named)."""
    lm = lab02._model("llama")
    recipient, donor = (lab02._ids(lm, text) for text in lab02._CROSS[0])
    with torch.no_grad():
        donor_probs, own_probs = (
            lm.model(ids).logits[0, -1].softmax(-1) for ids in (donor, recipient)
        )
    target = lab02._cross_target(donor_probs, own_probs)
    curve = lab02._cross_problem(lm, recipient, donor, target)
    right = curve()
    wrong = {m: curve(m) for m in lab02._CROSS_MISTAKES}
    for name, values in wrong.items():
        assert not torch.allclose(values.log(), right.log(), atol=1e-3), name
    names = [m for m in wrong if m != "logits"]  # logits are compared as they are
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(wrong[a].log(), wrong[b].log(), atol=1e-3), (a, b)


# ----- 2.6 recovery ------------------------------------------------------------------------------
def recovery_float64(probs, p_clean, p_corrupted):
    return (probs.double() - p_corrupted) / (p_clean - p_corrupted)


def recovery_lerp_inverse(probs, p_clean, p_corrupted):
    """Solve lerp(p_corrupted, p_clean, r) = probs for r, with numpy."""
    import numpy as np

    lo, hi = np.float64(p_corrupted), np.float64(p_clean)
    return torch.from_numpy((probs.numpy().astype(np.float64) - lo) / (hi - lo))


def recovery_looped(probs, p_clean, p_corrupted):
    out = torch.empty_like(probs)
    flat, dest = probs.reshape(-1), out.view(-1)
    for i in range(flat.numel()):
        dest[i] = (flat[i] - p_corrupted) / (p_clean - p_corrupted)
    return out


def recovery_no_subtraction(probs, p_clean, p_corrupted):
    return probs / (p_clean - p_corrupted)


def recovery_over_clean(probs, p_clean, p_corrupted):
    return (probs - p_corrupted) / p_clean


def recovery_ratio(probs, p_clean, p_corrupted):
    return probs / p_clean


def recovery_reversed(probs, p_clean, p_corrupted):
    return (p_clean - probs) / (p_clean - p_corrupted)


def recovery_clipped(probs, p_clean, p_corrupted):
    return recovery_float64(probs, p_clean, p_corrupted).clamp(0, 1)


def recovery_min_max(probs, p_clean, p_corrupted):
    return (probs - probs.min()) / (probs.max() - probs.min())


def recovery_abs(probs, p_clean, p_corrupted):
    return (probs - p_corrupted) / abs(p_clean - p_corrupted)


def recovery_percent(probs, p_clean, p_corrupted):
    return 100 * recovery_float64(probs, p_clean, p_corrupted)


def recovery_log(probs, p_clean, p_corrupted):
    import math

    return (probs.log() - math.log(p_corrupted)) / (math.log(p_clean) - math.log(p_corrupted))


def recovery_in_place(probs, p_clean, p_corrupted):
    probs -= p_corrupted
    probs /= p_clean - p_corrupted
    return probs


RECOVERY_CORRECT = [
    SOLUTION["recovery"],
    recovery_float64,
    recovery_lerp_inverse,
    recovery_looped,
]
RECOVERY_WRONG = [
    (recovery_no_subtraction, "subtract p_corrupted first"),
    (recovery_over_clean, "You divided by p_clean"),
    (recovery_ratio, "probs / p_clean"),
    (recovery_reversed, "1 - recovery"),
    (recovery_clipped, "You clipped"),
    (recovery_min_max, "grid's own minimum"),
    (recovery_abs, "absolute value of the total effect"),
    (recovery_percent, "percentages"),
    (recovery_log, "log-probabilities"),
    (recovery_in_place, "changed its input"),
]


@pytest.mark.parametrize("fn", RECOVERY_CORRECT, ids=lambda f: f.__name__)
def test_recovery_accepts(fn) -> None:
    assert_passes(lab02.check_recovery, fn)


@pytest.mark.parametrize("fn, needle", RECOVERY_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_recovery_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_recovery, fn, needle)


@pytest.mark.parametrize("variant", VARIANTS)
def test_recovery_hidden_variants(variant) -> None:
    check = lab02.check_recovery
    assert_passes(check, SOLUTION["recovery"], variant)
    assert_passes(check, recovery_looped, variant)
    for wrong, needle in RECOVERY_WRONG:
        assert_rejects(check, wrong, needle, variant)


# ----- 2.8 average_recovery ----------------------------------------------------------------------
def _kept(grids, clean, corrupted, subjects, min_effect, rule=lambda hi, lo: hi - lo):
    return [
        (g, hi, lo, s)
        for g, hi, lo, s in zip(grids, clean, corrupted, subjects, strict=True)
        if rule(hi, lo) >= min_effect
    ]


def avg_recovery_loops(grids, clean, corrupted, subjects, min_effect=0.05):
    kept = _kept(grids, clean, corrupted, subjects, min_effect)
    normalised = [recovery_looped(g.clone(), hi, lo) for g, hi, lo, _ in kept]
    return aie_loops(normalised, [0.0] * len(kept), [s for *_, s in kept])


def avg_recovery_float64_nanmean(grids, clean, corrupted, subjects, min_effect=0.05):
    """Normalise every prompt, NaN out the ones below the threshold, nanmean per role."""
    per_prompt = []
    for g, hi, lo, s in zip(grids, clean, corrupted, subjects, strict=True):
        rec = (g.double() - lo) / (hi - lo)
        if hi - lo < min_effect:
            rec = torch.full_like(rec, torch.nan)
        per_prompt.append(
            torch.stack(
                [
                    rec[:, p].mean(1) if p else torch.full((g.shape[0],), torch.nan)
                    for p in _roles(s, g.shape[1])
                ],
                dim=1,
            )
        )
    return torch.stack(per_prompt).nanmean(0)


def _avg_recovery_wrong(
    rule=lambda hi, lo: hi - lo, normalise=None, zero_dropped=False, fixed=None, after=None
):
    def fn(grids, clean, corrupted, subjects, min_effect=0.05):
        threshold = fixed if fixed is not None else min_effect
        recs, subs, totals = [], [], []
        for g, hi, lo, s in zip(grids, clean, corrupted, subjects, strict=True):
            if rule(hi, lo) < threshold and not zero_dropped:
                continue
            rec = normalise(g, hi, lo) if normalise else recovery_float64(g, hi, lo)
            if zero_dropped and hi - lo < threshold:
                rec = torch.zeros_like(rec)
            recs.append(rec)
            subs.append(s)
            totals.append(hi - lo)
        out = aie_loops(recs, [0.0] * len(recs), subs)
        return after(out, totals) if after else out

    return fn


avg_recovery_no_threshold = _avg_recovery_wrong(rule=lambda hi, lo: 1.0)
avg_recovery_zeroed = _avg_recovery_wrong(zero_dropped=True)
avg_recovery_abs = _avg_recovery_wrong(rule=lambda hi, lo: abs(hi - lo))
avg_recovery_clean_threshold = _avg_recovery_wrong(rule=lambda hi, lo: hi)
avg_recovery_raw = _avg_recovery_wrong(normalise=lambda g, hi, lo: g.double() - lo)
avg_recovery_ratio_of_means = _avg_recovery_wrong(
    normalise=lambda g, hi, lo: g.double() - lo,
    after=lambda out, totals: out / (sum(totals) / len(totals)),
)
avg_recovery_clipped = _avg_recovery_wrong(
    normalise=lambda g, hi, lo: recovery_float64(g, hi, lo).clamp(0, 1)
)
avg_recovery_fixed_threshold = _avg_recovery_wrong(fixed=0.05)


def avg_recovery_transposed(grids, clean, corrupted, subjects, min_effect=0.05):
    return avg_recovery_loops(grids, clean, corrupted, subjects, min_effect).T


AVG_RECOVERY_CORRECT = [
    SOLUTION["average_recovery"],
    avg_recovery_loops,
    avg_recovery_float64_nanmean,
]
AVG_RECOVERY_WRONG = [
    (avg_recovery_no_threshold, "below min_effect"),
    (avg_recovery_zeroed, "counted the prompts below min_effect as zero"),
    (avg_recovery_abs, "negative total effect"),
    (avg_recovery_clean_threshold, "filtered on the clean probability"),
    (avg_recovery_raw, "averaged raw indirect effects"),
    (avg_recovery_ratio_of_means, "average total effect"),
    (avg_recovery_clipped, "You clipped"),
    (avg_recovery_fixed_threshold, "ignored the min_effect argument"),
    (avg_recovery_transposed, "One row per layer"),
]


@pytest.mark.parametrize("fn", AVG_RECOVERY_CORRECT, ids=lambda f: f.__name__)
def test_average_recovery_accepts(fn) -> None:
    assert_passes(lab02.check_average_recovery, fn)


@pytest.mark.parametrize("fn, needle", AVG_RECOVERY_WRONG, ids=lambda x: getattr(x, "__name__", ""))
def test_average_recovery_rejects(fn, needle) -> None:
    assert_rejects(lab02.check_average_recovery, fn, needle)


@pytest.mark.parametrize("variant", VARIANTS)
def test_average_recovery_hidden_variants(variant) -> None:
    check = lab02.check_average_recovery
    assert_passes(check, SOLUTION["average_recovery"], variant)
    assert_passes(check, avg_recovery_float64_nanmean, variant)
    for wrong, needle in AVG_RECOVERY_WRONG:
        assert_rejects(check, wrong, needle, variant)


# ----- the test problems themselves --------------------------------------------------------------
def test_problem_models_have_norm_weights_other_than_one_and_are_rebuilt_when_damaged() -> None:
    lm = lab02._model("llama")
    assert not torch.allclose(lm.final_norm.weight, torch.ones_like(lm.final_norm.weight))
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(2.0)  # a student's function writes into the cached model
    fresh = lab02._model("llama")
    assert fresh is not lm
    assert lab02._model("llama") is fresh  # untouched: reused


def test_prompt_pairs_have_equal_lengths() -> None:
    for text, other in lab02._PAIRS:
        assert len(text) == len(other), (text, other)
    for text, span in lab02._SUBJECTS:
        positions = lab02._positions(text, span)
        assert positions[0] > 1 and positions[-1] < len(text) - 1, text
