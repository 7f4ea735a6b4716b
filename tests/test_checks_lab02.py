"""Lab 02's checks (activation patching, causal tracing): one table of correct and wrong answers.

Every correct implementation passes the notebook's check (recorded answers) and hidden variants
(answers computed by the solution and the answer key); every wrong one fails both, with a
message that names its mistake (``hint``: words the message must contain). ``new=True`` marks
wrong answers of kinds no issue listed: caches keyed on sizes or the model, module paths of one
family, ignored arguments and defaults, sizes past 9, repeated tokens, state kept between calls.

The solution itself comes from solutions/02_causal_tracing.ipynb; the alternative and the wrong
implementations live only here.
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

import labkit
from labkit.hooks import capture, hooked, patch
from tests.support.checks import ROOT, Correct, LabHarness, Wrong, stub, table_counts

H = LabHarness("02")
ROLES = H.module.ROLES
SITE_OF = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
VARIANTS = H.variants(3)


def sol(name: str):
    return H.solution[name]


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
    """nnsight on a copy: nnsight instruments the modules it wraps in place (their ``forward``),
    and the check's models are shared with every other test."""
    from nnsight import TransformersModel

    return TransformersModel(copy.deepcopy(lm.model), tokenizer=lm.tokenizer)


def first(output):
    return output[0] if isinstance(output, tuple) else output


# ----- 2.1 collect_activations -------------------------------------------------------------------
def collect_per_layer(lm, tokens, site="resid_post"):
    acts = []
    for layer in range(lm.n_layers):  # one forward per layer, on purpose
        with torch.no_grad(), capture(lm, site, layer) as cache:
            lm.model(tokens)
        acts.append(cache[site, layer][0])
    return torch.stack(acts)


def collect_float64(lm, tokens, site="resid_post"):
    return sol("collect_activations")(float64(lm), tokens, site)


def collect_nnsight(lm, tokens, site="resid_post"):
    model = nnsight_model(lm)
    saved = []
    with torch.no_grad(), model.trace(tokens):
        for layer in range(lm.n_layers):
            out = module_at(model, lm, layer, site).output
            saved.append((out[0] if site == "attn_out" else out).save())
    return torch.stack(saved)[:, 0]


def collect_plain_hooks(lm, tokens, site="resid_post"):
    """torch's own forward hooks on lm.block / lm.mlp / lm.attn, removed in a finally."""
    module_of = {"resid_post": lm.block, "mlp_out": lm.mlp, "attn_out": lm.attn}[site]
    saved = {}
    handles = [
        module_of(layer).register_forward_hook(
            lambda m, args, out, layer=layer: saved.__setitem__(layer, first(out).detach())
        )
        for layer in range(lm.n_layers)
    ]
    try:
        with torch.no_grad():
            lm.model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([saved[layer][0] for layer in range(lm.n_layers)])


def collect_final_norm(lm, tokens, site="resid_post"):
    hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[1:])[:, 0]


def collect_resid_pre(lm, tokens, site="resid_post"):
    hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[:-1])[:, 0]


def collect_ignores_site(lm, tokens, site="resid_post"):
    return sol("collect_activations")(lm, tokens, "resid_post")


def collect_with_batch_dim(lm, tokens, site="resid_post"):
    return sol("collect_activations")(lm, tokens, site)[:, None]


def collect_module_inputs(lm, tokens, site="resid_post"):
    """Records what goes *into* the MLP or the output projection."""
    if site == "resid_post":
        return sol("collect_activations")(lm, tokens, site)
    saved = []
    modules = [lm.mlp(i) if site == "mlp_out" else lm.attn_out_proj(i) for i in range(lm.n_layers)]
    handles = [m.register_forward_pre_hook(lambda m, args: saved.append(args[0])) for m in modules]
    try:
        lm.model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(saved)[:, 0]


def collect_head_outputs(lm, tokens, site="resid_post"):
    """The attention output projection's input for attn_out (the right MLP output otherwise)."""
    if site != "attn_out":
        return sol("collect_activations")(lm, tokens, site)
    return collect_module_inputs(lm, tokens, site)


def collect_resid_mid(lm, tokens, site="resid_post"):
    if site != "attn_out":
        return sol("collect_activations")(lm, tokens, site)
    with torch.no_grad(), capture(lm, ["resid_pre", "attn_out"]) as cache:
        lm.model(tokens)
    return (cache.stack("resid_pre") + cache.stack("attn_out"))[:, 0]


def collect_leaves_hooks(lm, tokens, site="resid_post"):
    saved = []
    for layer in range(lm.n_layers):
        module = {"resid_post": lm.block, "mlp_out": lm.mlp, "attn_out": lm.attn}[site](layer)
        module.register_forward_hook(lambda m, a, out: saved.append(first(out)))
    lm.model(tokens)
    return torch.stack(saved)[:, 0]


def collect_half(lm, tokens, site="resid_post"):
    return sol("collect_activations")(lm, tokens, site).half()


def collect_sorted_by_name(lm, tokens, site="resid_post"):
    """Keyed by module name, stacked in sorted name order: layers 0, 1, 10, 11, 2, ..."""
    names = {m: n for n, m in lm.model.named_modules()}
    saved = {}
    handles = [
        module_at(lm.model, lm, layer, site).register_forward_hook(
            lambda m, a, out: saved.__setitem__(names[m], first(out).detach())
        )
        for layer in range(lm.n_layers)
    ]
    try:
        lm.model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([saved[name][0] for name in sorted(saved)])


def collect_llama_paths(lm, tokens, site="resid_post"):
    """Module paths of Llama-like models only (model.layers, .mlp, .self_attn)."""
    saved = []
    blocks = lm.model.model.layers
    modules = {"resid_post": blocks, "mlp_out": [b.mlp for b in blocks],
               "attn_out": [b.self_attn for b in blocks]}[site]  # fmt: skip
    handles = [m.register_forward_hook(lambda m, a, out: saved.append(first(out))) for m in modules]
    try:
        lm.model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(saved)[:, 0]


_BY_SIZE: dict = {}


def collect_cached_by_sizes(lm, tokens, site="resid_post"):
    key = (lm.n_layers, tokens.shape[1], site)
    if key not in _BY_SIZE:
        _BY_SIZE[key] = sol("collect_activations")(lm, tokens, site)
    return _BY_SIZE[key]


_BY_MODEL: dict = {}


def collect_cached_by_model(lm, tokens, site="resid_post"):
    key = (id(lm.model), tokens.shape[1], site)
    if key not in _BY_MODEL:
        _BY_MODEL[key] = sol("collect_activations")(lm, tokens, site)
    return _BY_MODEL[key]


def collect_default_mlp(lm, tokens, site="mlp_out"):
    return sol("collect_activations")(lm, tokens, site)


COLLECT = "collect_activations"
CASES = [
    Correct(COLLECT, collect_per_layer, "one forward per layer"),
    Correct(COLLECT, collect_float64, "a float64 copy of the model"),
    Correct(COLLECT, collect_nnsight, "nnsight"),
    Correct(COLLECT, collect_plain_hooks, "torch hooks on labkit's module names"),
    Wrong(COLLECT, collect_final_norm, hint="final norm"),
    Wrong(COLLECT, collect_resid_pre, hint="blocks' inputs (resid_pre)"),
    Wrong(COLLECT, collect_ignores_site, hint="use the `site` argument"),
    Wrong(COLLECT, collect_with_batch_dim, hint="Expected shape"),
    Wrong(COLLECT, collect_module_inputs, hint="MLPs' inputs"),
    Wrong(COLLECT, collect_head_outputs, hint="before the output projection"),
    Wrong(COLLECT, collect_resid_mid, hint="residual stream after attention"),
    Wrong(COLLECT, collect_leaves_hooks, hint="hook(s) registered"),
    Wrong(COLLECT, collect_half, hint="float16"),
    Wrong(COLLECT, collect_sorted_by_name, hint="is the output of block `layer`", new=True),
    Wrong(COLLECT, collect_llama_paths, hint="AttributeError", new=True),
    Wrong(COLLECT, collect_cached_by_sizes, hint="other weights", new=True),
    Wrong(COLLECT, collect_cached_by_model, hint="another prompt", new=True),
    Wrong(COLLECT, collect_default_mlp, hint="collect_activations(lm, tokens) on", new=True),
]


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
        logits = model.output.logits.save()
    return logits[0, -1].softmax(-1)


def patch_in_place(lm, tokens, layer, position, vector):
    """Writes into the block's output tensor and returns None from the hook."""

    def write(module, args, output):
        first(output)[:, position] = vector

    handle = lm.block(layer).register_forward_hook(write)
    try:
        with torch.no_grad():
            return lm.model(tokens).logits[0, -1].softmax(-1)
    finally:
        handle.remove()


def patch_next_block_input(lm, tokens, layer, position, vector):
    """resid_post[layer] is resid_pre[layer + 1], or the final norm's input after the last."""

    def put(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, position] = vector
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    module = lm.final_norm if layer == lm.n_layers - 1 else lm.block(layer + 1)
    handle = module.register_forward_pre_hook(put, with_kwargs=True)
    try:
        with torch.no_grad():
            return torch.softmax(lm.model(tokens).logits[0, -1], dim=0)
    finally:
        handle.remove()


def _patched(lm, tokens, site, layer, value, positions, add=False, logits=False):
    with torch.no_grad(), patch(lm, site, layer, value, positions=positions, add=add):
        out = lm.model(tokens).logits[0, -1]
    return out if logits else out.softmax(-1)


def patch_off_by_one(lm, tokens, layer, position, vector):
    return patch_with_labkit(lm, tokens, layer, min(position + 1, tokens.shape[1] - 1), vector)


def patch_resid_pre(lm, tokens, layer, position, vector):
    return _patched(lm, tokens, "resid_pre", layer, vector, [position])


def patch_every_position(lm, tokens, layer, position, vector):
    return _patched(lm, tokens, "resid_post", layer, vector, None)


def patch_adds(lm, tokens, layer, position, vector):
    return _patched(lm, tokens, "resid_post", layer, vector, [position], add=True)


def patch_returns_logits(lm, tokens, layer, position, vector):
    return _patched(lm, tokens, "resid_post", layer, vector, [position], logits=True)


def patch_log_softmax(lm, tokens, layer, position, vector):
    logits = _patched(lm, tokens, "resid_post", layer, vector, [position], logits=True)
    return logits.log_softmax(-1)


def patch_no_final_norm(lm, tokens, layer, position, vector):
    """Reads the last block's output and unembeds it, skipping the final norm."""
    last = lm.n_layers - 1
    with torch.no_grad(), patch(lm, "resid_post", layer, vector, positions=[position]):
        with capture(lm, "resid_post", last) as cache:
            lm.model(tokens)
    return lm.unembed(cache["resid_post", last][0, -1]).softmax(-1)


def patch_leaves_hook(lm, tokens, layer, position, vector):
    def put(module, args, output):
        output = first(output).clone()
        output[:, position] = vector
        return output

    lm.block(layer).register_forward_hook(put)
    return lm.model(tokens).logits[0, -1].softmax(-1)


def patch_next_block_only(lm, tokens, layer, position, vector):
    """Patches the input of block layer + 1, forgetting the case of the last block."""
    if layer + 1 == lm.n_layers:
        return lm.model(tokens).logits[0, -1].softmax(-1)
    return _patched(lm, tokens, "resid_pre", layer + 1, vector, [position])


def patch_llama_paths(lm, tokens, layer, position, vector):
    def put(module, args, output):
        output = first(output).clone()
        output[:, position] = vector
        return output

    handle = lm.model.model.layers[layer].register_forward_hook(put)
    try:
        return lm.model(tokens).logits[0, -1].softmax(-1)
    finally:
        handle.remove()


def patch_same_token(lm, tokens, layer, position, vector):
    """Finds the position by its token: every occurrence of that token is patched."""
    where = (tokens[0] == tokens[0, position]).nonzero().flatten()
    return _patched(lm, tokens, "resid_post", layer, vector, where)


def patch_from_position_on(lm, tokens, layer, position, vector):
    with torch.no_grad(), hooked(lm, "resid_post", layer, lambda a: torch.cat(
        [a[:, :position], vector.expand_as(a[:, position:])], dim=1
    )):  # fmt: skip
        return lm.model(tokens).logits[0, -1].softmax(-1)


_BY_CELL: dict = {}


def patch_cached_by_cell(lm, tokens, layer, position, vector):
    key = (lm.n_layers, layer, position)
    if key not in _BY_CELL:
        _BY_CELL[key] = patch_with_labkit(lm, tokens, layer, position, vector)
    return _BY_CELL[key]


PATCH = "patch_position"
CASES += [
    Correct(PATCH, patch_with_labkit, "labkit.hooks.patch"),
    Correct(PATCH, patch_float64, "a float64 copy of the model"),
    Correct(PATCH, patch_nnsight, "nnsight"),
    Correct(PATCH, patch_in_place, "writes into the block's output in a hook"),
    Correct(PATCH, patch_next_block_input, "the next block's input, or the final norm's"),
    Wrong(PATCH, patch_off_by_one, hint="next position"),
    Wrong(PATCH, patch_resid_pre, hint="block's input (resid_pre)"),
    Wrong(PATCH, patch_every_position, hint="every position;"),
    Wrong(PATCH, patch_adds, hint="added the vector"),
    Wrong(PATCH, patch_returns_logits, hint="logits"),
    Wrong(PATCH, patch_log_softmax, hint="log-probabilities"),
    Wrong(PATCH, patch_no_final_norm, hint="final norm"),
    Wrong(PATCH, patch_leaves_hook, hint="hook(s) registered"),
    Wrong(PATCH, patch_next_block_only, hint="patch the output of block `layer`"),
    Wrong(PATCH, patch_llama_paths, hint="AttributeError", new=True),
    Wrong(PATCH, patch_same_token, hint="holds the same token", new=True),
    Wrong(PATCH, patch_from_position_on, hint="to the end", new=True),
    Wrong(PATCH, patch_cached_by_cell, hint="must change nothing", new=True),
]


# ----- 2.3 cross_context_curve -------------------------------------------------------------------
def _last_resid(lm, tokens, site="resid_post"):
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    return cache.stack(site)[:, 0, -1]  # (n_layers, d_model)


def cross_looped(lm, recipient, donor, target_id):
    """One forward per layer, with labkit.hooks.patch at position -1."""
    vectors = _last_resid(lm, donor)
    probs = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            probs.append(lm.model(recipient).logits[0, -1].softmax(-1)[target_id])
    return torch.stack(probs)


def cross_float64(lm, recipient, donor, target_id):
    return sol("cross_context_curve")(float64(lm), recipient, donor, target_id)


def cross_nnsight(lm, recipient, donor, target_id):
    model = nnsight_model(lm)
    vectors = _last_resid(lm, donor)
    probs = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), model.trace(recipient):
            module_at(model, lm, layer, "resid_post").output[:, -1, :] = vectors[layer]
            logits = model.output.logits.save()
        probs.append(logits[0, -1].softmax(-1)[target_id])
    return torch.stack(probs)


def _cross_with(vectors_of, *, site="resid_post", positions=(-1,), swap=False, every=False):
    def cross(lm, recipient, donor, target_id):
        if swap:
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


def _hidden_states_last(lm, donor, recipient):
    with torch.no_grad():
        hidden = lm.model(donor, output_hidden_states=True).hidden_states
    return torch.stack(hidden[:-1])[:, 0, -1]  # hidden_states[L]: the input of block L


def _same_index(lm, donor, recipient):
    with torch.no_grad(), capture(lm, "resid_post") as cache:
        lm.model(donor)
    return cache.stack("resid_post")[:, 0, recipient.shape[1] - 1]


def _donor(lm, donor, recipient):
    return _last_resid(lm, donor)


def cross_every_position(lm, recipient, donor, target_id):
    return _cross_with(_donor, positions=None)(lm, recipient, donor, target_id)


def cross_swapped(lm, recipient, donor, target_id):
    return _cross_with(_donor, swap=True)(lm, recipient, donor, target_id)


def cross_resid_pre(lm, recipient, donor, target_id):
    pre = _cross_with(lambda lm, d, r: _last_resid(lm, d, "resid_pre"), site="resid_pre")
    return pre(lm, recipient, donor, target_id)


def cross_hidden_states(lm, recipient, donor, target_id):
    return _cross_with(_hidden_states_last)(lm, recipient, donor, target_id)


def cross_same_index(lm, recipient, donor, target_id):
    return _cross_with(_same_index)(lm, recipient, donor, target_id)


def cross_every_row(lm, recipient, donor, target_id):
    return _cross_with(_donor, every=True)(lm, recipient, donor, target_id)


def cross_logits(lm, recipient, donor, target_id):
    vectors = _last_resid(lm, donor)
    out = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            out.append(lm.model(recipient).logits[0, -1, target_id])
    return torch.stack(out)


def cross_top_token(lm, recipient, donor, target_id):
    """Ignores target_id: the probability of each row's most likely token."""
    vectors = _last_resid(lm, donor)
    probs = []
    for layer in range(lm.n_layers):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            probs.append(lm.model(recipient).logits[0, -1].softmax(-1).max())
    return torch.stack(probs)


def cross_llama_paths(lm, recipient, donor, target_id):
    vectors = _last_resid(lm, donor)
    probs = []
    for layer in range(lm.n_layers):

        def put(module, args, output, layer=layer):
            output = first(output).clone()
            output[:, -1] = vectors[layer]
            return output

        handle = lm.model.model.layers[layer].register_forward_hook(put)
        try:
            with torch.no_grad():
                probs.append(lm.model(recipient).logits[0, -1].softmax(-1)[target_id])
        finally:
            handle.remove()
    return torch.stack(probs)


def cross_three_layers(lm, recipient, donor, target_id):
    """The tiny models' usual depth, hard-coded."""
    vectors = _last_resid(lm, donor)
    probs = []
    for layer in range(3):
        with torch.no_grad(), patch(lm, "resid_post", layer, vectors[layer], positions=[-1]):
            probs.append(lm.model(recipient).logits[0, -1].softmax(-1)[target_id])
    return torch.stack(probs)


_CURVES: dict = {}


def cross_cached_by_sizes(lm, recipient, donor, target_id):
    key = (lm.n_layers, recipient.shape[1], donor.shape[1])
    if key not in _CURVES:
        _CURVES[key] = cross_looped(lm, recipient, donor, target_id)
    return _CURVES[key]


CROSS = "cross_context_curve"
CASES += [
    Correct(CROSS, cross_looped, "one forward per layer"),
    Correct(CROSS, cross_float64, "a float64 copy of the model"),
    Correct(CROSS, cross_nnsight, "nnsight"),
    Wrong(CROSS, cross_every_position, hint="every position"),
    Wrong(CROSS, cross_swapped, hint="recipient's vector into the donor's run"),
    Wrong(CROSS, cross_resid_pre, hint="shifted by one layer"),
    Wrong(CROSS, cross_hidden_states, hint="hidden_states[L]"),
    Wrong(CROSS, cross_same_index, hint="recipient's last index"),
    Wrong(CROSS, cross_every_row, hint="row L must patch layer L only"),
    Wrong(CROSS, cross_logits, hint="You returned logits"),
    Wrong(CROSS, cross_top_token, hint="top token", new=True),
    Wrong(CROSS, cross_llama_paths, hint="AttributeError", new=True),
    Wrong(CROSS, cross_three_layers, hint="Expected shape", new=True),
    Wrong(CROSS, cross_cached_by_sizes, hint="must change nothing", new=True),
]


# ----- 2.4 corrupt_subject -----------------------------------------------------------------------
def corrupt_noise_then_mask(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
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
        noise = torch.randn(len(subject), lm.d_model, generator=generator)
        row[subject] += noise_scale * lm.embed.weight.std() * noise
        rows.append(row)
    return torch.stack(rows)


def corrupt_every_position(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    every = list(range(tokens.shape[1]))
    return sol("corrupt_subject")(lm, tokens, every, n_samples, noise_scale, seed)


def corrupt_shifted(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    shifted = [min(p + 1, tokens.shape[1] - 1) for p in subject]
    return sol("corrupt_subject")(lm, tokens, shifted, n_samples, noise_scale, seed)


def _with_sigma(sigma_of):
    def corrupt(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
        generator = torch.Generator().manual_seed(seed)
        out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
        noise = torch.randn(n_samples, len(subject), lm.d_model, generator=generator)
        out[:, subject] += noise_scale * sigma_of(lm, tokens) * noise
        return out

    return corrupt


def corrupt_unit_std(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return _with_sigma(lambda lm, ids: 1.0)(lm, tokens, subject, n_samples, noise_scale, seed)


def corrupt_prompt_std(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    sigma = _with_sigma(lambda lm, ids: lm.embed(ids).std())
    return sigma(lm, tokens, subject, n_samples, noise_scale, seed)


def corrupt_column_std(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    sigma = _with_sigma(lambda lm, ids: lm.embed.weight.std(0).mean())
    return sigma(lm, tokens, subject, n_samples, noise_scale, seed)


def corrupt_variance(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    sigma = _with_sigma(lambda lm, ids: lm.embed.weight.var())
    return sigma(lm, tokens, subject, n_samples, noise_scale, seed)


def corrupt_hard_coded_three(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return sol("corrupt_subject")(lm, tokens, subject, n_samples, 3.0, seed)


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
    one = sol("corrupt_subject")(lm, tokens, subject, 1, noise_scale, seed)
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


def corrupt_global_generator(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    """Draws from the global generator, unseeded."""
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    sigma = lm.embed.weight.std()
    out[:, subject] += noise_scale * sigma * torch.randn(n_samples, len(subject), lm.d_model)
    return out


_ONE_GENERATOR = torch.Generator().manual_seed(0)


def corrupt_generator_kept(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.randn(n_samples, len(subject), lm.d_model, generator=_ONE_GENERATOR)
    out[:, subject] += noise_scale * lm.embed.weight.std() * noise
    return out


def corrupt_ignores_seed(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    return sol("corrupt_subject")(lm, tokens, subject, n_samples, noise_scale, 0)


def corrupt_same_token(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    """Finds the subject by its tokens: every occurrence of a subject token gets noise."""
    where = torch.isin(tokens[0], tokens[0, subject]).nonzero().flatten().tolist()
    return sol("corrupt_subject")(lm, tokens, where, n_samples, noise_scale, seed)


def corrupt_llama_paths(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    embed = lm.model.model.embed_tokens
    generator = torch.Generator().manual_seed(seed)
    out = embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.randn(n_samples, len(subject), lm.d_model, generator=generator)
    out[:, subject] += noise_scale * embed.weight.std() * noise
    return out


def corrupt_default_one_sample(lm, tokens, subject, n_samples=1, noise_scale=3.0, seed=0):
    return sol("corrupt_subject")(lm, tokens, subject, n_samples, noise_scale, seed)


_BY_OPTIONS: dict = {}


def corrupt_cached_by_options(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    key = (n_samples, noise_scale, seed)
    if key not in _BY_OPTIONS:
        _BY_OPTIONS[key] = sol("corrupt_subject")(lm, tokens, subject, *key)
    return _BY_OPTIONS[key]


def corrupt_slice_end(lm, tokens, subject, n_samples=10, noise_scale=3.0, seed=0):
    """subject[0]:subject[-1], the end left out."""
    span = list(range(subject[0], subject[-1]))
    generator = torch.Generator().manual_seed(seed)
    out = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    noise = torch.randn(n_samples, len(span), lm.d_model, generator=generator)
    out[:, span] += noise_scale * lm.embed.weight.std() * noise
    return out


CORRUPT = "corrupt_subject"
CASES += [
    Correct(CORRUPT, corrupt_noise_then_mask, "noise everywhere, masked"),
    Correct(CORRUPT, corrupt_global_seed_loop, "the seeded global generator, in loops"),
    Correct(CORRUPT, corrupt_float64, "float64, another draw order"),
    Correct(CORRUPT, corrupt_generator_per_sample, "one seeded generator per sample"),
    Wrong(CORRUPT, corrupt_every_position, hint="outside the subject"),
    Wrong(CORRUPT, corrupt_shifted, hint="outside the subject"),
    Wrong(CORRUPT, corrupt_unit_std, hint="std noise_scale"),
    Wrong(CORRUPT, corrupt_prompt_std, hint="this prompt's embeddings"),
    Wrong(CORRUPT, corrupt_column_std, hint="std per dimension"),
    Wrong(CORRUPT, corrupt_variance, hint="variance"),
    Wrong(CORRUPT, corrupt_hard_coded_three, hint="ignores noise_scale"),
    Wrong(CORRUPT, corrupt_uniform, hint="mean zero"),
    Wrong(CORRUPT, corrupt_uniform_same_std, hint="Gaussian"),
    Wrong(CORRUPT, corrupt_same_noise_every_sample, hint="consecutive samples"),
    Wrong(CORRUPT, corrupt_reseeded_per_position, hint="consecutive subject positions"),
    Wrong(CORRUPT, corrupt_one_number_per_token, hint="consecutive dimensions"),
    Wrong(CORRUPT, corrupt_generator_kept, hint="twice"),
    Wrong(CORRUPT, corrupt_ignores_seed, hint="`seed` argument"),
    Wrong(CORRUPT, corrupt_global_generator, hint="twice (with another call between)", new=True),
    Wrong(CORRUPT, corrupt_same_token, hint="outside the subject", new=True),
    Wrong(CORRUPT, corrupt_llama_paths, hint="AttributeError", new=True),
    Wrong(CORRUPT, corrupt_default_one_sample, hint="Expected shape", new=True),
    Wrong(CORRUPT, corrupt_cached_by_options, hint="Expected shape", new=True),
    Wrong(CORRUPT, corrupt_slice_end, hint="every subject position", new=True),
]


# ----- 2.5 restoration_grid ----------------------------------------------------------------------
def _window(layer, window, n_layers):
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def grid_looped(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """One forward pass per cell."""
    name = SITE_OF[site]
    n_pos = tokens.shape[1]
    with torch.no_grad(), capture(lm, name) as clean:
        lm.model(tokens)
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers):
        layers = [layer] if site == "resid" else list(_window(layer, window, lm.n_layers))
        for position in range(n_pos):
            with ExitStack() as stack, torch.no_grad():
                for restored in layers:
                    value = clean[name, restored]
                    stack.enter_context(patch(lm, name, restored, value, positions=[position]))
                probs = lm.model(inputs_embeds=corrupted_embeds).logits[:, -1].softmax(-1)
            grid[layer, position] = probs[:, target_id].mean()
    return grid


def grid_by_layer(
    lm,
    tokens,
    corrupted_embeds,
    target_id,
    site="resid",
    window=1,
    *,
    name=None,
    layers_of=_window,
    shift=0,
    every_position=False,
    mean_logits=False,
    samples=None,
    mixed_rows=False,
    only_layers=None,
    target_of=None,
):
    """One forward per layer: batch row (position, sample) restores its own position. The
    keyword arguments switch on plausible mistakes."""
    name = name or SITE_OF[site]
    embeds = corrupted_embeds if samples is None else corrupted_embeds[:samples]
    n_samples, n_pos, _ = embeds.shape
    with torch.no_grad(), capture(lm, name) as clean:
        clean_logits = lm.model(tokens).logits[0, -1]
    target_id = target_id if target_of is None else target_of(clean_logits)
    positions = torch.arange(n_pos).repeat_interleave(n_samples)
    sources = (positions + shift).clamp(max=n_pos - 1)
    rows = torch.arange(len(positions))
    batch = embeds.repeat(n_pos, 1, 1)  # row p * n_samples + s: position p, sample s
    grid = torch.zeros(lm.n_layers, n_pos)
    for layer in range(lm.n_layers) if only_layers is None else only_layers:
        layers = [layer] if site == "resid" else list(layers_of(layer, window, lm.n_layers))
        with ExitStack() as stack, torch.no_grad():
            for restored in layers:

                def fn(act, restored=restored):
                    act = act.clone()
                    if every_position:
                        act[:] = clean[name, restored][0]
                    else:
                        act[rows, sources] = clean[name, restored][0, sources]
                    return act

                stack.enter_context(hooked(lm, name, restored, fn))
            logits = lm.model(inputs_embeds=batch).logits[:, -1]
        if mean_logits:
            grid[layer] = logits.view(n_pos, n_samples, -1).mean(1).softmax(-1)[:, target_id]
            continue
        probs = logits.softmax(-1)[:, target_id]
        if mixed_rows:  # rows are position-major: this averages the wrong rows together
            grid[layer] = probs.view(n_samples, n_pos).mean(0)
        else:
            grid[layer] = probs.view(n_pos, n_samples).mean(1)
    return grid


def grid_float64(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    return sol("restoration_grid")(
        float64(lm), tokens, corrupted_embeds.double(), target_id, site, window
    )


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
            logits = model.output.logits.save()
        grid[layer] = logits[:, -1].softmax(-1)[:, target_id].view(n_pos, n_samples).mean(1)
    return grid


def _grid_with(**mistake):
    def grid(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
        return grid_by_layer(lm, tokens, corrupted_embeds, target_id, site, window, **mistake)

    grid.__name__ = "grid_" + "_".join(mistake)
    return grid


def grid_swapped_site(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    swapped = {"resid": "resid", "mlp": "attn", "attn": "mlp"}[site]
    return grid_by_layer(lm, tokens, corrupted_embeds, target_id, swapped, window)


def grid_normalised(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    grid = sol("restoration_grid")(lm, tokens, corrupted_embeds, target_id, site, window)
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


def grid_fresh_noise(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    noisy = corrupted_embeds + 0.1 * torch.randn_like(corrupted_embeds)
    return sol("restoration_grid")(lm, tokens, noisy, target_id, site, window)


def grid_in_place(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    corrupted_embeds[:, :, 0] += 1e-3  # "normalising" it
    return sol("restoration_grid")(lm, tokens, corrupted_embeds, target_id, site, window)


def grid_leaves_hooks(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    grid = sol("restoration_grid")(lm, tokens, corrupted_embeds, target_id, site, window)
    lm.mlp(0).register_forward_hook(lambda module, args, out: None)
    return grid


def grid_first_ten_layers(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    """Batches layers in groups of 10 but fills the first group only (rows 10.. stay at 0)."""
    only = range(min(10, lm.n_layers))
    return grid_by_layer(lm, tokens, corrupted_embeds, target_id, site, window, only_layers=only)


def grid_llama_paths(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    blocks = lm.model.model.layers
    return grid_by_layer(lm, tokens, corrupted_embeds, target_id, site, window) + 0 * len(blocks)


def grid_default_mlp(lm, tokens, corrupted_embeds, target_id, site="mlp", window=1):
    return sol("restoration_grid")(lm, tokens, corrupted_embeds, target_id, site, window)


def grid_default_window_three(lm, tokens, corrupted_embeds, target_id, site="resid", window=3):
    return sol("restoration_grid")(lm, tokens, corrupted_embeds, target_id, site, window)


_BY_SITE: dict = {}


def grid_cached_by_site(lm, tokens, corrupted_embeds, target_id, site="resid", window=1):
    key = (id(lm.model), site)
    if key not in _BY_SITE:
        _BY_SITE[key] = sol("restoration_grid")(
            lm, tokens, corrupted_embeds, target_id, site, window
        )
    return _BY_SITE[key]


GRID = "restoration_grid"
CASES += [
    Correct(GRID, grid_looped, "one forward per cell"),
    Correct(GRID, grid_by_layer, "one forward per layer"),
    Correct(GRID, grid_float64, "the solution on a float64 copy"),
    Correct(GRID, grid_nnsight, "nnsight"),
    Wrong(GRID, _grid_with(shift=1), hint="position p + 1"),
    Wrong(GRID, _grid_with(name="resid_pre"), hint="resid_pre"),
    Wrong(GRID, _grid_with(every_position=True), hint="every position"),
    Wrong(GRID, _grid_with(samples=1), hint="only the first noise sample"),
    Wrong(GRID, _grid_with(mean_logits=True), hint="averages the logits"),
    Wrong(GRID, _grid_with(layers_of=lambda L, w, n: [L]), hint="restores only layer L"),
    Wrong(GRID, _grid_with(layers_of=lambda L, w, n: range(L, min(n, L + w))), hint="starts at L"),
    Wrong(
        GRID,
        _grid_with(layers_of=lambda L, w, n: range(max(0, L - w // 2), min(n, L + w // 2))),
        hint="one layer short",
    ),
    Wrong(
        GRID,
        _grid_with(layers_of=lambda L, w, n: range(L - w // 2, min(n, L - (-w // 2)))),
        hint="wraps around",
    ),
    Wrong(GRID, _grid_with(name="resid_post"), hint="restores the residual stream over"),
    Wrong(GRID, _grid_with(mixed_rows=True), hint="average p(target) over the noise samples"),
    Wrong(GRID, grid_swapped_site, hint="the other module"),
    Wrong(GRID, grid_normalised, hint="normalised to 0..1"),
    Wrong(GRID, grid_noising, hint="noising"),
    Wrong(GRID, grid_fresh_noise, hint="run the corrupted embeddings"),
    Wrong(GRID, grid_in_place, hint="changed its input"),
    Wrong(GRID, grid_leaves_hooks, hint="hook(s) registered"),
    Wrong(GRID, grid_first_ten_layers, hint="put back at position p only", new=True),
    Wrong(GRID, grid_llama_paths, hint="AttributeError", new=True),
    Wrong(
        GRID, _grid_with(target_of=lambda logits: int(logits.argmax())), hint="top token", new=True
    ),
    Wrong(GRID, grid_default_mlp, hint="put back at position p only", new=True),
    Wrong(GRID, grid_default_window_three, hint="(the default window)", new=True),
    Wrong(GRID, grid_cached_by_site, hint="the same model, another window", new=True),
]


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
    return (probs.log() - math.log(p_corrupted)) / (math.log(p_clean) - math.log(p_corrupted))


def recovery_in_place(probs, p_clean, p_corrupted):
    probs -= p_corrupted
    probs /= p_clean - p_corrupted
    return probs


_BY_SHAPE: dict = {}


def recovery_cached_by_shape(probs, p_clean, p_corrupted):
    key = tuple(probs.shape)
    if key not in _BY_SHAPE:
        _BY_SHAPE[key] = recovery_float64(probs, p_clean, p_corrupted)
    return _BY_SHAPE[key]


def recovery_assumes_2d(probs, p_clean, p_corrupted):
    grid = probs.reshape(probs.shape[0], -1)  # (n_layers, pos), the notebook's grids
    return (grid - p_corrupted) / (p_clean - p_corrupted)


def recovery_floored_effect(probs, p_clean, p_corrupted):
    """Guards the division with a floor on the total effect, which also drops its sign."""
    return (probs - p_corrupted) / max(p_clean - p_corrupted, 1e-6)


_ENDS: list = []


def recovery_first_ends(probs, p_clean, p_corrupted):
    """Keeps the first call's p_clean and p_corrupted."""
    if not _ENDS:
        _ENDS.append((p_clean, p_corrupted))
    high, low = _ENDS[0]
    return (probs - low) / (high - low)


RECOVERY = "recovery"
CASES += [
    Correct(RECOVERY, recovery_float64, "float64"),
    Correct(RECOVERY, recovery_lerp_inverse, "numpy, as the inverse of lerp"),
    Correct(RECOVERY, recovery_looped, "element by element"),
    Wrong(RECOVERY, recovery_no_subtraction, hint="subtract p_corrupted"),
    Wrong(RECOVERY, recovery_over_clean, hint="You divided by p_clean"),
    Wrong(RECOVERY, recovery_ratio, hint="probs / p_clean"),
    Wrong(RECOVERY, recovery_reversed, hint="1 - recovery"),
    Wrong(RECOVERY, recovery_clipped, hint="You clipped"),
    Wrong(RECOVERY, recovery_min_max, hint="grid's own minimum"),
    Wrong(RECOVERY, recovery_abs, hint="absolute value of the total effect"),
    Wrong(RECOVERY, recovery_percent, hint="percentages"),
    Wrong(RECOVERY, recovery_log, hint="log-probabilities"),
    Wrong(RECOVERY, recovery_in_place, hint="changed its input"),
    Wrong(RECOVERY, recovery_cached_by_shape, hint="fraction of the lost probability", new=True),
    Wrong(RECOVERY, recovery_assumes_2d, hint="Expected shape", new=True),
    Wrong(RECOVERY, recovery_floored_effect, hint="fraction of the lost probability", new=True),
    Wrong(RECOVERY, recovery_first_ends, hint="fraction of the lost probability", new=True),
]


# ----- 2.7 average_indirect_effect ---------------------------------------------------------------
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
        nan = torch.full((grid.shape[0],), torch.nan, dtype=torch.float64)
        per_prompt.append(
            torch.stack(
                [effect[:, p].mean(1) if p else nan for p in _roles(subject, grid.shape[1])], dim=1
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


def aie_stacked(grids, corrupted_probs, subjects):
    """Stacks the grids: every prompt must have the same length."""
    stacked = torch.stack(grids) - torch.tensor(corrupted_probs)[:, None, None]
    return aie_loops(list(stacked), [0.0] * len(grids), subjects)


def aie_first_subject(grids, corrupted_probs, subjects):
    return aie_loops(grids, corrupted_probs, [subjects[0]] * len(grids))


def aie_three_layers(grids, corrupted_probs, subjects):
    out = torch.zeros(3, len(ROLES))
    out[: grids[0].shape[0]] = aie_loops(grids, corrupted_probs, subjects)[:3]
    return out


def aie_mean_corrupted(grids, corrupted_probs, subjects):
    low = sum(corrupted_probs) / len(corrupted_probs)
    return aie_loops(grids, [low] * len(grids), subjects)


AIE = "average_indirect_effect"
CASES += [
    Correct(AIE, aie_loops, "loops"),
    Correct(AIE, aie_masks, "masks"),
    Correct(AIE, aie_nanmean, "float64, nanmean"),
    Wrong(AIE, aie_no_subtraction, hint="minus that prompt's corrupted probability"),
    Wrong(AIE, aie_pooled_tokens, hint="weigh more"),
    Wrong(AIE, aie_last_subject_off_by_one, hint="token after the subject"),
    Wrong(AIE, aie_includes_prefix, hint="tokens before the subject"),
    Wrong(AIE, aie_counts_every_prompt, hint="number of all prompts"),
    Wrong(AIE, aie_whole_subject, hint="includes the last subject token"),
    Wrong(AIE, aie_after_includes_last, hint="includes the last token"),
    Wrong(AIE, aie_in_place, hint="changed its input"),
    Wrong(AIE, aie_transposed, hint="One row per layer"),
    Wrong(AIE, aie_stacked, hint="raised RuntimeError", new=True),
    Wrong(AIE, aie_first_subject, hint="the 'subject' column on two hand-made grids", new=True),
    Wrong(AIE, aie_three_layers, hint="Expected shape", new=True),
    Wrong(AIE, aie_mean_corrupted, hint="averaged over all prompts", new=True),
]


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


def avg_recovery_nanmean(grids, clean, corrupted, subjects, min_effect=0.05):
    """Normalise every prompt, NaN out the ones below the threshold, nanmean per role."""
    per_prompt = []
    for g, hi, lo, s in zip(grids, clean, corrupted, subjects, strict=True):
        rec = (g.double() - lo) / (hi - lo)
        if hi - lo < min_effect:
            rec = torch.full_like(rec, torch.nan)
        nan = torch.full((g.shape[0],), torch.nan, dtype=torch.float64)
        per_prompt.append(
            torch.stack([rec[:, p].mean(1) if p else nan for p in _roles(s, g.shape[1])], dim=1)
        )
    return torch.stack(per_prompt).nanmean(0)


def _avg_recovery_with(rule=lambda hi, lo: hi - lo, normalise=None, zero_dropped=False,
                       fixed=None, after=None):  # fmt: skip
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


def avg_recovery_no_threshold(grids, clean, corrupted, subjects, min_effect=0.05):
    return _avg_recovery_with(rule=lambda hi, lo: 1.0)(grids, clean, corrupted, subjects, -1.0)


def avg_recovery_zeroed(grids, clean, corrupted, subjects, min_effect=0.05):
    return _avg_recovery_with(zero_dropped=True)(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_abs(grids, clean, corrupted, subjects, min_effect=0.05):
    fn = _avg_recovery_with(rule=lambda hi, lo: abs(hi - lo))
    return fn(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_clean_threshold(grids, clean, corrupted, subjects, min_effect=0.05):
    fn = _avg_recovery_with(rule=lambda hi, lo: hi)
    return fn(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_raw(grids, clean, corrupted, subjects, min_effect=0.05):
    fn = _avg_recovery_with(normalise=lambda g, hi, lo: g.double() - lo)
    return fn(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_ratio_of_means(grids, clean, corrupted, subjects, min_effect=0.05):
    fn = _avg_recovery_with(
        normalise=lambda g, hi, lo: g.double() - lo,
        after=lambda out, totals: out / (sum(totals) / len(totals)),
    )
    return fn(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_clipped(grids, clean, corrupted, subjects, min_effect=0.05):
    fn = _avg_recovery_with(normalise=lambda g, hi, lo: recovery_float64(g, hi, lo).clamp(0, 1))
    return fn(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_fixed_threshold(grids, clean, corrupted, subjects, min_effect=0.05):
    return _avg_recovery_with(fixed=0.05)(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_transposed(grids, clean, corrupted, subjects, min_effect=0.05):
    return avg_recovery_loops(grids, clean, corrupted, subjects, min_effect).T


def avg_recovery_default_zero(grids, clean, corrupted, subjects, min_effect=0.0):
    return avg_recovery_loops(grids, clean, corrupted, subjects, min_effect)


def avg_recovery_subjects_unfiltered(grids, clean, corrupted, subjects, min_effect=0.05):
    kept = _kept(grids, clean, corrupted, subjects, min_effect)
    normalised = [recovery_float64(g, hi, lo) for g, hi, lo, _ in kept]
    return aie_loops(normalised, [0.0] * len(kept), subjects[: len(kept)])


def avg_recovery_pooled_ends(grids, clean, corrupted, subjects, min_effect=0.05):
    kept = _kept(grids, clean, corrupted, subjects, min_effect)
    high = sum(hi for _, hi, _, _ in kept) / len(kept)
    low = sum(lo for _, _, lo, _ in kept) / len(kept)
    normalised = [recovery_float64(g, high, low) for g, *_ in kept]
    return aie_loops(normalised, [0.0] * len(kept), [s for *_, s in kept])


_THRESHOLD: list = []


def avg_recovery_first_threshold(grids, clean, corrupted, subjects, min_effect=0.05):
    """Remembers the first call's min_effect."""
    if not _THRESHOLD:
        _THRESHOLD.append(min_effect)
    return avg_recovery_loops(grids, clean, corrupted, subjects, _THRESHOLD[0])


AVG = "average_recovery"
CASES += [
    Correct(AVG, avg_recovery_loops, "loops"),
    Correct(AVG, avg_recovery_nanmean, "float64, NaN for the prompts left out, nanmean"),
    Wrong(AVG, avg_recovery_no_threshold, hint="below min_effect"),
    Wrong(AVG, avg_recovery_zeroed, hint="as zero recovery"),
    Wrong(AVG, avg_recovery_abs, hint="negative total effect"),
    Wrong(AVG, avg_recovery_clean_threshold, hint="filtered on the clean probability"),
    Wrong(AVG, avg_recovery_raw, hint="averaged raw indirect effects"),
    Wrong(AVG, avg_recovery_ratio_of_means, hint="average total effect"),
    Wrong(AVG, avg_recovery_clipped, hint="You clipped"),
    Wrong(AVG, avg_recovery_fixed_threshold, hint="ignored the min_effect argument"),
    Wrong(AVG, avg_recovery_transposed, hint="One row per layer"),
    Wrong(
        AVG,
        avg_recovery_default_zero,
        hint="Keep the prompts with p_clean - p_corrupted >= min_effect",
        new=True,
    ),
    Wrong(AVG, avg_recovery_subjects_unfiltered, hint="wrong subjects", new=True),
    Wrong(AVG, avg_recovery_pooled_ends, hint="averaged over the prompts", new=True),
    Wrong(AVG, avg_recovery_first_threshold, hint="ignored the min_effect argument", new=True),
]

CORRECT = [c for c in CASES if isinstance(c, Correct)]
WRONG = [c for c in CASES if isinstance(c, Wrong)]


# ----- the table, run ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORRECT, ids=lambda c: c.id)
def test_correct_answer_passes(case: Correct) -> None:
    H.assert_passes(case, VARIANTS)


@pytest.mark.parametrize("case", WRONG, ids=lambda c: c.id)
def test_wrong_answer_fails_and_names_its_mistake(case: Wrong) -> None:
    H.assert_fails(case, VARIANTS[:2])


def test_stubs_are_not_attempted() -> None:
    for name in H.exercises:
        result = H.notebook(name, stub)
        assert not result.attempted and result.status == "not attempted", name


def test_the_table_has_enough_answers_of_every_kind() -> None:
    counts = table_counts(CASES, list(H.exercises))
    for name, (correct, wrong, new) in counts.items():
        assert correct >= 2, f"{name}: {correct} correct alternatives"
        assert wrong >= 6, f"{name}: {wrong} wrong answers"
        assert new >= 3, f"{name}: {new} wrong answers of new kinds"


def test_the_solution_passes_every_check_in_the_notebook() -> None:
    for name in H.exercises:
        result = H.notebook(name, sol(name))
        assert result.passed and result.score == result.max_score, result.report()


def _assert_every_correct_answer_passes(variants: list[int]) -> None:
    for name in H.exercises:
        for fn in [sol(name), *(c.fn for c in CORRECT if c.exercise == name)]:
            for variant in variants:
                result = H.hidden(name, fn, variant)
                assert result.passed, f"{fn.__name__} on variant {variant}:\n{result.report()}"


def test_the_solution_and_every_correct_answer_pass_a_few_more_hidden_variants() -> None:
    _assert_every_correct_answer_passes(H.variants(5, seed="a few more"))


@pytest.mark.variants
def test_the_solution_and_every_correct_answer_pass_200_hidden_variants(request) -> None:
    if "variants" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("200 hidden variants: run with -m variants")
    _assert_every_correct_answer_passes(H.variants(200, seed="property"))


# ----- the checks' own rules ---------------------------------------------------------------------
def _solution_lines(length: int = 25) -> set[str]:
    from labkit.notebooks import code_regions, markdown_regions, read_nbformat

    notebook = read_nbformat(ROOT / "solutions" / "02_causal_tracing.ipynb")
    lines = set()
    for cell in notebook.cells:
        regions = (code_regions if cell.cell_type == "code" else markdown_regions)(cell.source)
        for region in regions:
            lines |= {" ".join(line.split()).lower() for line in region.splitlines()}
    return {line for line in lines if len(line) >= length}


def test_what_students_get_holds_no_line_of_the_solution() -> None:
    """No solution line of 25 characters or more appears in the check package or in the hints
    recorded for the notebook (both ship in the student release)."""
    from labkit.checks.answers import RecordedAnswers

    texts = {p.name: p.read_text() for p in Path(H.module.__file__).parent.glob("*.py")}

    def strings(value) -> list[str]:
        if isinstance(value, str):
            return [value]
        items = value.values() if isinstance(value, dict) else value
        return (
            [s for v in items for s in strings(v)] if isinstance(value, list | tuple | dict) else []
        )

    texts["the recorded hints"] = " ".join(strings(RecordedAnswers("02").table))
    lines = _solution_lines()
    for name, text in texts.items():
        text = " ".join(text.split()).lower()
        assert not [line for line in lines if line in text], name
