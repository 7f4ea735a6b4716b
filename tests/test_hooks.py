"""labkit.hooks: capture and patch activations the same way in every family; hooks always go."""

import inspect
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

import labkit
from labkit.hooks import (
    SITES,
    ActivationCache,
    capture,
    hooked,
    key_value_prefix,
    patch,
    run_from,
    span_positions,
)

CLEAN, OTHER = "hello world", "jello wOrld"  # same length: one byte, one token


def n_hooks(lm: labkit.LabModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def run(lm: labkit.LabModel, text: str) -> torch.Tensor:
    return lm.model(input_ids=lm.to_tokens(text, prepend_anchor=True)).logits


def test_capture_shapes(tiny: labkit.LabModel) -> None:
    with capture(tiny, SITES) as cache:
        run(tiny, CLEAN)
    pos = 1 + len(CLEAN)
    assert cache["embed"].shape == (1, pos, tiny.d_model)
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        assert cache.stack(site).shape == (tiny.n_layers, 1, pos, tiny.d_model)
    assert cache.stack("head_out").shape == (tiny.n_layers, 1, pos, tiny.n_heads, tiny.d_head)


def test_captured_sites_fit_together(tiny: labkit.LabModel) -> None:
    """resid_post[l] is resid_pre[l+1]; the last resid_post gives the logits; embed is layer 0's
    input (GPT-2 adds position embeddings first)."""
    with capture(tiny, SITES) as cache:
        logits = run(tiny, CLEAN)
    for layer in range(tiny.n_layers - 1):
        assert torch.equal(cache["resid_post", layer], cache["resid_pre", layer + 1])
    final = tiny.unembed(tiny.final_norm(cache["resid_post", tiny.n_layers - 1]))
    torch.testing.assert_close(final, logits)
    if tiny.family != "gpt2":
        torch.testing.assert_close(cache["embed"], cache["resid_pre", 0])
    # attention output = W_O applied to the head outputs side by side
    heads = cache["head_out", 1]
    attn = tiny.attn_out_proj(1)(heads.flatten(-2))
    torch.testing.assert_close(attn, cache["attn_out", 1])


def test_parts_add_up_to_the_residual_stream(tiny: labkit.LabModel) -> None:
    """resid_post = resid_pre + attn_out + mlp_out in every family (parallel or sequential)."""
    with capture(tiny, ["resid_pre", "resid_post", "attn_out", "mlp_out"]) as cache:
        run(tiny, CLEAN)
    for layer in range(tiny.n_layers):
        total = cache["resid_pre", layer] + cache["attn_out", layer] + cache["mlp_out", layer]
        torch.testing.assert_close(total, cache["resid_post", layer])


@pytest.mark.parametrize("site", SITES)
def test_patching_a_run_with_itself_changes_nothing(tiny: labkit.LabModel, site: str) -> None:
    layer = None if site == "embed" else 1
    with capture(tiny, site, layers=1) as cache:
        clean = run(tiny, CLEAN)
    key = site if site == "embed" else (site, layer)
    with patch(tiny, site, layer, cache[key]):
        patched = run(tiny, CLEAN)
    assert torch.equal(patched, clean)


def test_patching_every_position_reproduces_the_other_run(tiny: labkit.LabModel) -> None:
    with capture(tiny, "resid_post") as other_cache:
        other = run(tiny, OTHER)
    clean = run(tiny, CLEAN)
    for layer in range(tiny.n_layers):
        with patch(tiny, "resid_post", layer, other_cache["resid_post", layer]):
            torch.testing.assert_close(run(tiny, CLEAN), other)
    assert not torch.allclose(clean, other)


def test_patching_one_position_only_changes_that_position_and_later(tiny: labkit.LabModel) -> None:
    with capture(tiny, "resid_post", layers=0) as other_cache:
        run(tiny, OTHER)
    clean = run(tiny, CLEAN)
    with patch(tiny, "resid_post", 0, other_cache["resid_post", 0], positions=[2]):
        patched = run(tiny, CLEAN)
    assert torch.equal(patched[:, :2], clean[:, :2])  # causal: earlier positions untouched
    assert not torch.allclose(patched[:, 2], clean[:, 2])


def test_patching_chosen_heads(tiny: labkit.LabModel) -> None:
    with capture(tiny, "head_out", layers=2) as other_cache:
        run(tiny, OTHER)
    with capture(tiny, "head_out", layers=2) as clean_cache:
        run(tiny, CLEAN)
    with patch(tiny, "head_out", 2, other_cache["head_out", 2], positions=[1, 3], heads=[0, 2]):
        with capture(tiny, "head_out", layers=2) as patched_cache:
            run(tiny, CLEAN)
    got, clean, other = (c["head_out", 2] for c in (patched_cache, clean_cache, other_cache))
    expected = clean.clone()
    for p in (1, 3):
        for h in (0, 2):
            expected[:, p, h] = other[:, p, h]
    torch.testing.assert_close(got, expected)


def test_add_mode_and_vector_values(tiny: labkit.LabModel) -> None:
    with capture(tiny, "embed") as cache:
        run(tiny, CLEAN)
    shift = torch.ones(tiny.d_model)
    with patch(tiny, "embed", value=shift, positions=[1], add=True):
        with capture(tiny, "embed") as shifted:
            run(tiny, CLEAN)
    diff = shifted["embed"] - cache["embed"]
    assert torch.allclose(diff[:, 1], shift) and diff[:, 0].abs().max() == 0


def test_a_function_value_gets_the_activation(tiny: labkit.LabModel) -> None:
    seen = []
    with patch(tiny, "mlp_out", 0, lambda act: seen.append(act.shape) or torch.zeros_like(act)):
        with capture(tiny, "mlp_out", layers=0) as cache:
            run(tiny, CLEAN)
    assert seen and cache["mlp_out", 0].abs().max() == 0


def test_hooks_are_removed_even_when_the_body_raises(tiny: labkit.LabModel) -> None:
    before = n_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny, SITES), patch(tiny, "resid_post", 0, lambda a: a):
            raise RuntimeError("boom")
    assert n_hooks(tiny) == before
    with hooked(tiny, "attn_out", 1, lambda a: None):
        assert n_hooks(tiny) == before + 1
    assert n_hooks(tiny) == before


def test_keep_grad_gives_gradients_at_every_site(tiny: labkit.LabModel) -> None:
    embeds = tiny.embed(tiny.to_tokens(CLEAN)).requires_grad_(True)
    with capture(tiny, ["resid_post", "head_out"], keep_grad=True) as cache:
        tiny.model(inputs_embeds=embeds).logits[0, -1, 5].backward()
    for key, act in cache.items():
        assert act.grad is not None and act.grad.shape == act.shape, key
        assert act.grad.abs().sum() > 0, key


def test_clear_errors(tiny: labkit.LabModel) -> None:
    with pytest.raises(ValueError, match="Unknown site"):
        with capture(tiny, "residual"):
            pass
    with pytest.raises(ValueError, match="needs a layer"):
        with patch(tiny, "resid_post", None, torch.zeros(1)):
            pass
    with pytest.raises(IndexError, match="layers 0..2"):
        with capture(tiny, "mlp_out", layers=7):
            pass
    with pytest.raises(ValueError, match="heads"):
        with patch(tiny, "resid_post", 0, torch.zeros(1), heads=[0]):
            pass
    with capture(tiny, "resid_post", layers=0) as short:
        run(tiny, "hi")
    with pytest.raises(ValueError, match="same number of tokens"):
        with patch(tiny, "resid_post", 0, short["resid_post", 0]):
            run(tiny, CLEAN)
    with pytest.raises(IndexError, match="outside the prompt"):
        with patch(tiny, "resid_post", 0, torch.zeros(tiny.d_model), positions=[40]):
            run(tiny, CLEAN)
    with pytest.raises(KeyError, match="was not captured"):
        short["mlp_out", 0]


def test_run_from_any_layer_finishes_the_forward_pass(tiny: labkit.LabModel) -> None:
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True)
    with capture(tiny, ("resid_pre", "resid_post")) as cache:
        full = tiny.model(input_ids=tokens).logits[:, -1]
    for layer in range(tiny.n_layers):
        resumed = run_from(tiny, layer, cache["resid_pre", layer])
        torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-4)
    last = run_from(tiny, tiny.n_layers, cache["resid_post", tiny.n_layers - 1])
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-4)
    assert n_hooks(tiny) == 0
    with pytest.raises(IndexError, match="run_from"):
        run_from(tiny, tiny.n_layers + 1, cache["resid_pre", 0])


def test_run_from_reuses_earlier_positions_keys_and_values(tiny: labkit.LabModel) -> None:
    """Positions before p never see later ones: with their keys and values cached, running
    positions p.. from any layer gives the full run's last logits, also with rows repeated."""
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True).repeat(2, 1)  # (2, pos)
    tokens[1, -1] = tokens[0, 3]  # two different rows
    with capture(tiny, "resid_pre") as cache:
        run = tiny.model(input_ids=tokens, use_cache=True)
    full = run.logits[:, -1]  # (2, vocab)
    for p in (0, 1, 4, tokens.shape[1] - 1):
        for layer in (0, tiny.n_layers - 1):
            past = key_value_prefix(run.past_key_values, p, repeat=3)
            suffix = cache["resid_pre", layer][:, p:].repeat(3, 1, 1)  # (6, pos - p, d_model)
            resumed = run_from(tiny, layer, suffix, past=past)
            torch.testing.assert_close(resumed, full.repeat(3, 1), atol=1e-5, rtol=1e-4)
    assert key_value_prefix(run.past_key_values, 0) is None
    with pytest.raises(ValueError, match="holds"):
        key_value_prefix(run.past_key_values, 99)
    with pytest.raises(TypeError, match="use_cache=True"):
        key_value_prefix(None, 2)


def test_run_from_with_a_layer_per_row_equals_a_run_per_layer(tiny: labkit.LabModel) -> None:
    """Rows that start at different layers (the batch grows on the way up) give what a run_from
    per layer gives, with and without reused keys and values, and hooks see the rows that have
    started: the first act.shape[0] of them."""
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True).repeat(2, 1)  # (2, pos)
    tokens[1, 1] = tiny.to_tokens("Q").item()  # rows that differ inside every prefix
    with capture(tiny, ("resid_pre", "resid_post")) as cache:
        run = tiny.model(input_ids=tokens, use_cache=True)
    n = tiny.n_layers
    starts = [0, 0, 1, n - 1, n]  # the last: only the final norm and the unembedding
    start_rows = [s for s in starts for _ in range(2)]  # rows (start, prompt), prompt fastest

    def entering(layer: int, p: int) -> torch.Tensor:  # resid_pre[layer] at positions p..
        return (cache["resid_pre", layer] if layer < n else cache["resid_post", n - 1])[:, p:]

    def shift(layer: int):  # a hook that moves the rows it is given, so the hook has an effect
        return lambda act: act + 0.1 * (layer + 1)

    for p in (0, 3):
        past = key_value_prefix(run.past_key_values, p, repeat=len(starts)) if p else None
        resid = torch.cat([entering(s, p) for s in starts])  # (10, pos - p, d_model)
        seen = {}

        def record(layer: int, seen: dict = seen):
            def fn(act):
                seen[layer] = act.shape[0]
                return shift(layer)(act)

            return fn

        with hooked(tiny, "mlp_out", n - 1, record(n - 1)), hooked(tiny, "mlp_out", 0, record(0)):
            together = run_from(tiny, start_rows, resid, past=past)  # (10, vocab)
        assert seen == {0: 4, n - 1: 8}  # rows that start at the final norm never reach a block
        for i, start in enumerate(starts):
            one_past = key_value_prefix(run.past_key_values, p) if p else None
            with ExitStack() as stack:
                for layer in (0, n - 1):
                    if layer >= start:
                        stack.enter_context(hooked(tiny, "mlp_out", layer, shift(layer)))
                alone = run_from(tiny, start, entering(start, p), past=one_past)
            torch.testing.assert_close(together[2 * i : 2 * i + 2], alone, atol=1e-5, rtol=1e-4)
    assert n_hooks(tiny) == 0


def test_run_from_with_a_layer_per_row_says_what_is_wrong(tiny: labkit.LabModel) -> None:
    resid = torch.zeros(3, 2, tiny.d_model)
    with pytest.raises(ValueError, match="2 layers for 3 rows"):
        run_from(tiny, [0, 1], resid)
    with pytest.raises(ValueError, match="must not decrease"):
        run_from(tiny, [1, 0, 1], resid)
    with pytest.raises(IndexError, match="run_from"):
        run_from(tiny, [0, 0, tiny.n_layers + 1], resid)
    assert n_hooks(tiny) == 0


def test_run_from_puts_back_a_forward_set_on_a_block(tiny: labkit.LabModel) -> None:
    """nnsight sets its own ``forward`` on every module it wraps: run_from skips blocks by
    shadowing ``forward`` and must restore that one, not delete it."""
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True)
    with capture(tiny, "resid_pre") as cache:
        full = tiny.model(input_ids=tokens).logits[:, -1]
    block = tiny.blocks[0]
    calls = []

    def own_forward(*args, **kwargs):
        calls.append(1)
        return type(block).forward(block, *args, **kwargs)

    block.forward = own_forward
    try:
        for layer in (1, [1]):
            torch.testing.assert_close(
                run_from(tiny, layer, cache["resid_pre", 1]), full, atol=1e-5, rtol=1e-4
            )
            assert block.__dict__["forward"] is own_forward
        tiny.model(input_ids=tokens)
        assert calls == [1]  # skipped inside run_from, called again afterwards
    finally:
        del block.forward
    run_from(tiny, 1, cache["resid_pre", 1])
    assert "forward" not in block.__dict__  # a block with no forward of its own keeps none


@pytest.mark.default_model
def test_restoring_the_clean_residual_recovers_paris(lm: labkit.LabModel) -> None:
    """A semantic check on the real model: patching the clean last-position residual at a
    late layer into a run on a different subject brings back the clean answer."""
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    paris = lm.token_id(" Paris")
    with capture(lm, "resid_post", layers=25) as cache:
        lm.model(input_ids=lm.to_tokens(clean))
    assert lm.next_token_probs(corrupt)[paris] < 0.1
    with patch(lm, "resid_post", 25, cache["resid_post", 25], positions=[-1]):
        restored = lm.next_token_probs(corrupt)[paris]
    assert restored > 0.5


# ----- input validation: clear errors, never a silent truncation ---------------------------------
def test_layers_given_as_a_tensor_are_plain_ints(tiny: labkit.LabModel) -> None:
    with capture(tiny, "resid_post", torch.arange(2)) as cache:
        run(tiny, CLEAN)
    assert sorted(cache) == [("resid_post", 0), ("resid_post", 1)]
    assert all(type(layer) is int for _, layer in cache)
    torch.testing.assert_close(cache["resid_post", torch.tensor(1)], cache["resid_post", 1])
    with capture(tiny, "mlp_out", torch.tensor(2)) as single:
        run(tiny, CLEAN)
    assert list(single) == [("mlp_out", 2)]


@pytest.mark.parametrize("bad", [1.5, [0, 1.5], torch.tensor([1.0]), True])
def test_fractional_layers_are_rejected(tiny: labkit.LabModel, bad) -> None:
    with pytest.raises(TypeError, match="whole number"):
        with capture(tiny, "resid_post", bad):
            pass
    if not isinstance(bad, list):
        with pytest.raises(TypeError, match="whole number"):
            with patch(tiny, "resid_post", bad, torch.zeros(tiny.d_model)):
                pass


@pytest.mark.parametrize("bad", [[1.7], 1.7, torch.tensor([1.0]), [True], torch.tensor([True])])
def test_fractional_positions_are_rejected(tiny: labkit.LabModel, bad) -> None:
    with pytest.raises(TypeError, match="whole numbers?"):
        with patch(tiny, "resid_post", 0, torch.zeros(tiny.d_model), positions=bad):
            run(tiny, CLEAN)


def test_positions_as_ranges_and_integer_tensors(tiny: labkit.LabModel) -> None:
    results = []
    for positions in ([1, 2], range(1, 3), torch.tensor([1, 2]), torch.tensor([1, 2]).int()):
        with patch(tiny, "embed", value=torch.ones(tiny.d_model), positions=positions):
            results.append(run(tiny, CLEAN))
    for other in results[1:]:
        assert torch.equal(other, results[0])


def test_complex_and_non_tensor_values(tiny: labkit.LabModel) -> None:
    with pytest.raises(TypeError, match="complex"):
        with patch(tiny, "resid_post", 0, torch.zeros(tiny.d_model, dtype=torch.complex64)):
            run(tiny, CLEAN)
    with pytest.raises(TypeError, match="tensor or a function"):
        with patch(tiny, "resid_post", 0, "zeros"):
            run(tiny, CLEAN)
    with patch(tiny, "mlp_out", 1, 0.0):  # a number is broadcast like a tensor
        with capture(tiny, "mlp_out", layers=1) as cache:
            run(tiny, CLEAN)
    assert cache["mlp_out", 1].abs().max() == 0


def test_heads_out_of_range_or_fractional(tiny: labkit.LabModel) -> None:
    value = torch.zeros(tiny.d_head)
    with pytest.raises(IndexError, match=f"heads 0..{tiny.n_heads - 1}"):
        with patch(tiny, "head_out", 0, value, heads=[tiny.n_heads]):
            run(tiny, CLEAN)
    with pytest.raises(TypeError, match="whole numbers?"):
        with patch(tiny, "head_out", 0, value, heads=[0.5]):
            run(tiny, CLEAN)


def test_a_capture_inside_a_patch_records_the_patched_value(tiny: labkit.LabModel) -> None:
    """As documented: hooks run in the order they were opened."""
    with capture(tiny, "resid_post", layers=0) as outside:
        with patch(tiny, "resid_post", 0, torch.zeros(tiny.d_model)):
            with capture(tiny, "resid_post", layers=0) as inside:
                run(tiny, CLEAN)
    assert inside["resid_post", 0].abs().max() == 0
    assert outside["resid_post", 0].abs().max() > 0


# ----- semantics pinned down (issue 15): what a regression would silently change ------------------
def test_patch_never_mutates_the_callers_tensors(tiny: labkit.LabModel) -> None:
    with capture(tiny, ["resid_post", "head_out"], layers=1) as other:
        run(tiny, OTHER)
    saved = {key: value.clone() for key, value in other.items()}
    vector = torch.randn(tiny.d_model)
    vector_before = vector.clone()
    for add in (False, True):
        with patch(tiny, "resid_post", 1, other["resid_post", 1], positions=[2], add=add):
            run(tiny, CLEAN)
        with patch(tiny, "head_out", 1, other["head_out", 1], positions=[1, 3], heads=[0, 2]):
            run(tiny, CLEAN)
        with patch(tiny, "resid_post", 1, vector, add=add):
            run(tiny, CLEAN)
    for key, value in other.items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(vector, vector_before)


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "mlp_out", "head_out", "embed"])
def test_patch_never_writes_into_the_activation(tiny: labkit.LabModel, site: str) -> None:
    """A keep_grad capture opened before a patch holds the live activation: the patch must
    pass on a new tensor, not overwrite that one (lab 03's attribution patching relies on it)."""
    layer = None if site == "embed" else 1
    key = site if site == "embed" else (site, layer)
    with capture(tiny, site, layers=1) as clean:
        run(tiny, CLEAN)
    zeros = torch.zeros(tiny.d_head if site == "head_out" else tiny.d_model)
    embeds = tiny.embed(tiny.to_tokens(CLEAN, prepend_anchor=True)).requires_grad_(True)
    with capture(tiny, site, layers=1, keep_grad=True) as live:
        with patch(tiny, site, layer, zeros, positions=[2]):
            if site == "embed":
                run(tiny, CLEAN)
            else:
                tiny.model(inputs_embeds=embeds).logits[0, -1, 5].backward()
    torch.testing.assert_close(live[key].detach(), clean[key])
    assert live[key][:, 2].abs().max() > 0


def test_negative_layers_mean_the_same_as_positive_ones(tiny: labkit.LabModel) -> None:
    last = tiny.n_layers - 1
    with capture(tiny, "resid_post", layers=[-1, 0]) as cache:
        run(tiny, CLEAN)
    assert sorted(cache) == [("resid_post", 0), ("resid_post", last)]
    assert cache["resid_post", -1] is cache["resid_post", last]
    with capture(tiny, "resid_post", layers=-1) as other:
        run(tiny, OTHER)
    outs = []
    for layer in (-1, last):
        with patch(tiny, "resid_post", layer, other["resid_post", -1], positions=[3]):
            outs.append(run(tiny, CLEAN))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], run(tiny, CLEAN))
    with hooked(tiny, "mlp_out", -tiny.n_layers, lambda a: None):
        pass
    with pytest.raises(IndexError, match=f"layers 0..{last}"):
        with capture(tiny, "resid_post", layers=-tiny.n_layers - 1):
            pass


def test_positions_at_the_bound(tiny: labkit.LabModel) -> None:
    length = 1 + len(CLEAN)  # with the anchor
    zero = torch.zeros(tiny.d_model)
    for position, changed in ((length - 1, length - 1), (-length, 0)):
        with patch(tiny, "embed", value=zero, positions=[position]):
            with capture(tiny, "embed") as cache:
                run(tiny, CLEAN)
        rows = cache["embed"][0].abs().sum(-1)  # (pos,)
        assert rows[changed] == 0 and (rows > 0).sum() == length - 1, position
    for position in (length, -length - 1):
        with pytest.raises(IndexError, match=f"positions 0..{length - 1}"):
            with patch(tiny, "embed", value=zero, positions=[position]):
                run(tiny, CLEAN)


def test_resid_pre_also_works_when_the_block_gets_hidden_states_by_keyword(
    tiny: labkit.LabModel,
) -> None:
    block = tiny.blocks[1]
    calls = []
    handle = block.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    try:
        tiny.model(input_ids=tiny.to_tokens(CLEAN, prepend_anchor=True), use_cache=False)
    finally:
        handle.remove()
    args, kwargs = calls[0]
    signature = inspect.signature(block.forward)
    named = {}  # every argument by name (GPT-2 passes several by position)
    for name, arg in signature.bind(*args, **kwargs).arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(arg)
        else:
            named[name] = arg
    hidden = named.pop("hidden_states")
    value = torch.randn_like(hidden)
    expected = hidden.clone()
    expected[:, 2] = value[:, 2]
    with patch(tiny, "resid_pre", 1, value, positions=[2]):
        with capture(tiny, "resid_pre", layers=1) as by_keyword:
            keyword_out = block(hidden_states=hidden, **named)
        with capture(tiny, "resid_pre", layers=1) as by_position:
            position_out = block(hidden, **named)
    torch.testing.assert_close(by_keyword["resid_pre", 1], expected)
    torch.testing.assert_close(by_position["resid_pre", 1], expected)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    torch.testing.assert_close(first(keyword_out), first(position_out))
    assert not torch.allclose(first(keyword_out), first(block(hidden, **named)))


def test_key_value_prefix_maps_rows_when_prefixes_differ(tiny: labkit.LabModel) -> None:
    """New row i is old row i % batch: with prefixes that differ per row, any other mapping
    (repeat_interleave, say) pairs a suffix with the wrong row's keys and values."""
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True).repeat(2, 1)  # (2, pos)
    tokens[1, 1] = tiny.to_tokens("Q").item()  # the rows differ inside every prefix below
    with capture(tiny, "resid_pre") as cache:
        out = tiny.model(input_ids=tokens, use_cache=True)
    full = out.logits[:, -1]  # (2, vocab)
    assert not torch.allclose(full[0], full[1])
    for p in (2, 5):
        for layer in (0, 2):
            past = key_value_prefix(out.past_key_values, p, repeat=3)
            suffix = cache["resid_pre", layer][:, p:].repeat(3, 1, 1)  # rows 0, 1, 0, 1, 0, 1
            resumed = run_from(tiny, layer, suffix, past=past)
            torch.testing.assert_close(resumed, full.repeat(3, 1), atol=1e-5, rtol=1e-4)


# ----- span_positions: the subject a causal trace corrupts ---------------------------------------
def test_span_positions_finds_the_last_run_of_whole_tokens(tiny: labkit.LabModel) -> None:
    tokens = tiny.to_tokens("ab cd ab")  # byte-level: one token per character
    assert span_positions(tiny, tokens, "ab") == [6, 7]  # the last occurrence
    assert span_positions(tiny, tokens, "cd") == [3, 4]  # found after passing a longer miss
    assert span_positions(tiny, tokens, " cd") == [3, 4]  # surrounding spaces do not count
    assert span_positions(tiny, tokens, "b cd a") == [1, 2, 3, 4, 5, 6]
    assert span_positions(tiny, tokens, "a") == [6]
    assert span_positions(tiny, tiny.to_tokens("xyz"), "xyz") == [0, 1, 2]


def test_span_positions_says_what_is_missing(tiny: labkit.LabModel) -> None:
    tokens = tiny.to_tokens("ab cd")
    for missing in ("da", "abc", "x"):  # "da" would wrap around from the end to the start
        with pytest.raises(ValueError) as err:
            span_positions(tiny, tokens, missing)
        assert str(err.value) == (
            f"{missing!r} is not a run of whole tokens in ['a', 'b', ' ', 'c', 'd']. Copy the "
            "words exactly as they appear in the prompt (mind the leading space)."
        )
    with pytest.raises(ValueError) as err:
        span_positions(tiny, tokens, "")
    assert str(err.value) == "The span is empty: give the words to find, e.g. ' France'."


# ----- key_value_prefix and the cache's own errors -----------------------------------------------
def test_key_value_prefix_keeps_rows_once_by_default_and_the_whole_cache(tiny) -> None:
    tokens = tiny.to_tokens("ab cd").repeat(2, 1)
    out = tiny.model(input_ids=tokens, use_cache=True)
    n = tokens.shape[1]
    for length in (1, n):  # the whole cache is a valid prefix
        past = key_value_prefix(out.past_key_values, length)
        assert len(past.layers) == tiny.n_layers
        for mine, theirs in zip(past.layers, out.past_key_values.layers, strict=True):
            assert mine.keys.shape == (2, *theirs.keys.shape[1:2], length, theirs.keys.shape[3])
            assert torch.equal(mine.keys, theirs.keys[:, :, :length])
            assert torch.equal(mine.values, theirs.values[:, :, :length])
    with pytest.raises(ValueError) as err:
        key_value_prefix(out.past_key_values, n + 1)
    assert str(err.value) == f"The cache holds {n} positions, not {n + 1}."


def test_key_value_prefix_of_a_one_layer_cache(tiny: labkit.LabModel) -> None:
    out = tiny.model(input_ids=tiny.to_tokens("ab cd"), use_cache=True)
    first = out.past_key_values.layers[0]
    single = DynamicCache(ddp_cache_data=[(first.keys, first.values)])
    past = key_value_prefix(single, 3, repeat=2)
    assert len(past.layers) == 1 and past.layers[0].keys.shape[0] == 2
    with pytest.raises(ValueError, match="holds 5 positions, not 6"):
        key_value_prefix(single, 6)


@pytest.mark.parametrize(
    "cache",
    [None, DynamicCache(), SimpleNamespace(layers=[object()])],
    ids=["none", "empty", "unfilled-layer"],  # stable ids: xdist workers must agree
)
def test_key_value_prefix_needs_a_filled_cache(cache) -> None:
    with pytest.raises(TypeError) as err:
        key_value_prefix(cache, 2)
    assert str(err.value) == (
        "key_value_prefix needs the past_key_values of a forward pass run with use_cache=True."
    )


def test_stacking_a_site_that_was_not_captured_names_it(tiny: labkit.LabModel) -> None:
    with capture(tiny, "resid_post", layers=0) as cache:
        run(tiny, CLEAN)
    with pytest.raises(KeyError, match="No layers of 'mlp_out' were captured."):
        cache.stack("mlp_out")


# ----- mutation-testing survivors (issue 15): each test pins down one behaviour ------------------
def test_positions_from_numpy_and_empty_lists(tiny: labkit.LabModel) -> None:
    np = pytest.importorskip("numpy")
    with patch(tiny, "embed", value=torch.ones(tiny.d_model), positions=[1, 3]):
        expected = run(tiny, CLEAN)
    with patch(tiny, "embed", value=torch.ones(tiny.d_model), positions=np.array([1, 3])):
        assert torch.equal(run(tiny, CLEAN), expected)
    with patch(tiny, "embed", value=torch.ones(tiny.d_model), positions=[]):  # patches nothing
        assert torch.equal(run(tiny, CLEAN), run(tiny, CLEAN))


def test_unordered_collections_of_positions_are_rejected(tiny: labkit.LabModel) -> None:
    """A set has no order, so it cannot say which value goes where: an error, not a guess."""
    with pytest.raises(TypeError) as err:
        with patch(tiny, "embed", value=torch.ones(tiny.d_model), positions={1, 2}):
            run(tiny, CLEAN)
    assert str(err.value) == "Positions must be a whole number such as 3, got {1, 2}."


def test_position_and_value_errors_word_for_word(tiny: labkit.LabModel) -> None:
    cases = [
        (
            dict(value=torch.zeros(tiny.d_model), positions=[1.5]),
            TypeError,
            "Positions must be a whole number such as 3, got 1.5.",
        ),
        (
            dict(value=None),
            ValueError,
            "patch needs a value: a tensor, or a function of the activation.",
        ),
        (
            dict(value=object()),
            TypeError,
            "The patch value must be a tensor or a function of the activation, got object.",
        ),
        (
            dict(value=torch.zeros(tiny.d_model, dtype=torch.complex64)),
            TypeError,
            "The patch value is complex; activations are real. Pass its real part (value.real) if "
            "that is what you mean.",
        ),
        (
            dict(value=torch.zeros(tiny.d_model), heads=[0]),
            ValueError,
            "`heads` only applies to the 'head_out' site.",
        ),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as err:
            with patch(tiny, "resid_post", 0, **kwargs):
                run(tiny, CLEAN)
        assert str(err.value) == message


def test_span_positions_finds_a_span_at_the_very_end(tiny: labkit.LabModel) -> None:
    assert span_positions(tiny, tiny.to_tokens("ab cd ab"), "b") == [7]
    assert span_positions(tiny, tiny.to_tokens("ab cd"), "d") == [4]


def test_run_from_also_works_when_the_block_gets_hidden_states_by_keyword(
    tiny: labkit.LabModel,
) -> None:
    """run_from puts its residual stream where the block reads it, positional or keyword."""
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True)
    with capture(tiny, "resid_pre") as cache:
        full = tiny.model(input_ids=tokens).logits[:, -1]

    def as_keyword(module, args, kwargs):  # runs before run_from's own hook: every argument
        signature = inspect.signature(module.forward)  # by name (GPT-2 passes several by position)
        named = {}
        for name, arg in signature.bind(*args, **kwargs).arguments.items():
            kind = signature.parameters[name].kind
            named.update(arg if kind is inspect.Parameter.VAR_KEYWORD else {name: arg})
        return (), named

    block = tiny.blocks[1]
    handle = block.register_forward_pre_hook(as_keyword, with_kwargs=True)
    try:
        resumed = run_from(tiny, 1, cache["resid_pre", 1])
        other = run_from(tiny, 1, torch.zeros_like(cache["resid_pre", 1]))
    finally:
        handle.remove()
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(other, full, atol=1e-3)


def _error(action) -> str:
    """'ErrorType: message' of what ``action()`` raises."""
    with pytest.raises(Exception) as err:
        action()
    return f"{err.type.__name__}: {err.value}"


def test_layer_errors_word_for_word(tiny: labkit.LabModel) -> None:
    def patched(layer):
        with patch(tiny, "resid_post", layer, torch.zeros(tiny.d_model)):
            run(tiny, CLEAN)

    def captured(layers):
        with capture(tiny, "resid_post", layers):
            pass

    top = tiny.n_layers - 1
    expected = {
        lambda: patched(torch.tensor(1.0)): "TypeError: The layer must be a whole number, got a "
        "torch.float32 tensor 1.0.",
        lambda: patched(torch.tensor(True)): "TypeError: The layer must be a whole number, got a "
        "torch.bool tensor True.",
        lambda: patched(torch.tensor(1 + 0j)): "TypeError: The layer must be a whole number, got "
        "a torch.complex64 tensor (1+0j).",
        lambda: patched(None): f"ValueError: Site 'resid_post' needs a layer (0..{top}).",
        lambda: patched(1.5): "TypeError: The layer must be a whole number such as 3, got 1.5.",
        lambda: captured(torch.zeros(2, 2, dtype=torch.long)): "TypeError: layers must be one "
        "layer or a flat list, got shape torch.Size([2, 2]).",
        lambda: captured(1.5): "TypeError: layers must be a whole number such as 3, got 1.5.",
        lambda: captured({0, 1}): "TypeError: layers must be a whole number such as 3, got {0, 1}.",
        lambda: captured([0, 1.5]): "TypeError: Each layer must be a whole number such as 3, "
        "got 1.5.",
        lambda: captured(torch.tensor([1.0])): "TypeError: Each layer must be a whole number, "
        "got a torch.float32 tensor tensor([1.]).",
        lambda: captured(torch.tensor(1.0)): "TypeError: Each layer must be a whole number, got "
        "a torch.float32 tensor 1.0.",
        lambda: capture(tiny, "nope").__enter__(): "ValueError: Unknown site 'nope'. Sites: "
        "embed, resid_pre, resid_post, attn_out, mlp_out, head_out.",
        lambda: patch(tiny, "head_out", 0, torch.zeros(tiny.d_head), heads=[0.5]).__enter__(): (
            "TypeError: Heads must be a whole number such as 3, got 0.5."
        ),
    }
    for action, message in expected.items():
        assert _error(action) == message


def test_layers_from_numpy(tiny: labkit.LabModel) -> None:
    np = pytest.importorskip("numpy")
    with capture(tiny, "resid_post", np.array([0, 2])) as cache:
        pass
    assert cache == {} and n_hooks(tiny) == 0
    with capture(tiny, "resid_post", np.array([0, 2])) as cache:
        run(tiny, CLEAN)
    assert sorted(cache) == [("resid_post", 0), ("resid_post", 2)]


def test_the_cache_explains_what_is_missing(tiny: labkit.LabModel) -> None:
    with capture(tiny, ["embed", "resid_post"], layers=[0]) as cache:
        run(tiny, CLEAN)
    assert _error(lambda: cache["mlp_out", 1]) == (
        "KeyError: \"('mlp_out', 1) was not captured. Captured: ('resid_post', 0), embed.\""
    )
    assert _error(lambda: cache["resid_post", 1.5]) == (
        "TypeError: The layer must be a whole number such as 3, got 1.5."
    )
    assert _error(lambda: ActivationCache()["embed"]) == (
        "KeyError: \"('embed', None) was not captured. Captured: nothing.\""
    )
    assert ("resid_post", 1.5) not in cache and ("resid_post", 0) in cache
    first = -tiny.n_layers  # the most negative layer still counts from the end
    with capture(tiny, "resid_post") as every:
        run(tiny, CLEAN)
    assert torch.equal(every["resid_post", first], every["resid_post", 0])


def test_a_cache_can_be_built_from_a_dict(tiny: labkit.LabModel) -> None:
    value = torch.ones(2)
    assert ActivationCache({("mlp_out", 1): value})["mlp_out", 1] is value
    assert ActivationCache([(("resid_post", 0), value)], n_layers=3)["resid_post", -3] is value


def test_capture_copies_by_default_and_hooks_the_embedding_once(tiny: labkit.LabModel) -> None:
    with capture(tiny, ["embed", "resid_post"]) as cache:
        assert len(tiny.embed._forward_hooks) == 1
        run(tiny, CLEAN)
    assert ("embed", None) in cache
    embeddings = tiny.embed(tiny.to_tokens(CLEAN, prepend_anchor=True)).detach()
    embeddings.requires_grad_(True)  # so the live activations require grad
    with capture(tiny, "resid_post") as cache:
        tiny.model(inputs_embeds=embeddings)
    for act in cache.values():  # detached copies unless keep_grad=True
        assert not act.requires_grad and act.grad_fn is None


def test_patch_values_broadcast_over_the_batch_and_fit_it(tiny: labkit.LabModel) -> None:
    tokens = tiny.to_tokens(CLEAN, prepend_anchor=True).repeat(3, 1)  # (3, pos)
    tokens[1, 2] = tokens[0, 3]
    with capture(tiny, "resid_post", layers=1) as cache:
        tiny.model(input_ids=tokens)
    acts = cache["resid_post", 1]  # (3, pos, d_model)
    for value in (acts[:1], acts):  # batch 1 broadcast, or one row per run
        with patch(tiny, "resid_post", 1, value, positions=[2]):
            with capture(tiny, "resid_post", layers=1) as patched:
                tiny.model(input_ids=tokens)
        expected = acts.clone()
        expected[:, 2] = value[:, 2]
        torch.testing.assert_close(patched["resid_post", 1], expected)
    value = torch.zeros(2, *acts.shape[1:])

    def mismatched() -> None:
        with patch(tiny, "resid_post", 1, value):
            tiny.model(input_ids=tokens)

    assert _error(mismatched) == (
        f"ValueError: The patch value for 'resid_post' at layer 1 has shape "
        f"{tuple(value.shape)}, but the activation has shape {tuple(acts.shape)}. Both runs must "
        "have the same number of tokens: check that the clean and corrupted prompts tokenise to "
        "the same length."
    )


def test_the_most_negative_head_is_a_head(tiny: labkit.LabModel) -> None:
    value = torch.zeros(tiny.d_head)
    with patch(tiny, "head_out", 0, value, heads=[-tiny.n_heads]):
        negative = run(tiny, CLEAN)
    with patch(tiny, "head_out", 0, value, heads=[0]):
        assert torch.equal(run(tiny, CLEAN), negative)
