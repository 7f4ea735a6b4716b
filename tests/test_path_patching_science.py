"""Path patching, checked against an independent implementation computed the slow way.

The solution's ``path_patching`` (lab 03, exercise 3.13) adds a head's change (clean minus
corrupted output, through its slice of W_O) to the final residual stream (the direct path), or
patches the head and takes its change back out of the final stream (the indirect path). Here
both paths are computed another way, one full run per head, by freezing components instead of
adding vectors:

* direct: patch the head's clean output, and give every component after it (its own layer's
  MLP, every later attention and MLP) its corrupted output, so only the residual stream carries
  the change to the final norm;
* indirect: run once with the head patched and record every later component's output; then run
  again with the head corrupted and those later outputs patched in, so the final stream holds
  everything the head changed downstream, but not its own contribution.

On tiny models of two families (one with grouped key/value heads) and on a few heads of the
default model, the two agree. Direct + indirect - corrupted = total holds only where the model
is linear in its activations, so it is not tested here (the check tests it on such a model).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from labkit.checks import kit
from labkit.hooks import capture, patch
from labkit.notebooks import notebook_definitions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sol():
    return notebook_definitions(ROOT / "solutions" / "03_attribution_patching.ipynb")


def slow_paths(lm, clean, corrupted, metric, heads, path):
    """Path patching by freezing components: one or two full runs per head."""
    later_sites = ["attn_out", "mlp_out"]
    with torch.no_grad():
        with capture(lm, ["head_out", *later_sites]) as c_cache:
            lm.model(clean)
        with capture(lm, ["head_out", *later_sites]) as k_cache:
            lm.model(corrupted)
        found = []
        for layer, head in heads:
            head_patch = patch(lm, "head_out", layer, c_cache["head_out", layer], heads=[head])
            downstream = [("mlp_out", layer)] + [
                (site, later) for later in range(layer + 1, lm.n_layers) for site in later_sites
            ]
            with ExitStack() as stack:
                if path == "direct":
                    stack.enter_context(head_patch)
                    for site, at in downstream:
                        stack.enter_context(patch(lm, site, at, k_cache[site, at]))
                else:
                    with head_patch, capture(lm, later_sites) as moved:
                        lm.model(corrupted)
                    for site, at in downstream:
                        stack.enter_context(patch(lm, site, at, moved[site, at]))
                found.append(metric(lm.model(corrupted).logits[:, -1]))
    return torch.stack(found)


def ioi_like(lm, batch: int, n_pos: int, seed: int):
    """Random prompt pairs that differ at two positions before the last, and ids to compare."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, lm.model.config.vocab_size, (batch, n_pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [1, n_pos - 3]] = torch.randint(
        3, lm.model.config.vocab_size, (batch, 2), generator=gen
    )
    targets = torch.randint(3, lm.model.config.vocab_size, (batch,), generator=gen)
    foils = (targets + 1 + torch.arange(batch)) % lm.model.config.vocab_size
    return clean, corrupted, targets.tolist(), foils.tolist()


@pytest.mark.parametrize(
    "family, settings",
    [
        ("gpt2", {"n_layers": 4, "scale": 4.0, "random_norms": True}),
        ("llama", {"n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "d_model": 48, "scale": 4.0}),
    ],
)
@pytest.mark.parametrize("path", ["direct", "indirect"])
def test_path_patching_equals_the_slow_way_on_tiny_models(sol, family, settings, path) -> None:
    lm = kit.tiny(family, **settings)
    clean, corrupted, targets, foils = ioi_like(lm, batch=2, n_pos=7, seed=5)
    metric = sol["normalised_metric"](lm, clean, corrupted, targets, foils)
    heads = [(lm.n_layers - 1, 1), (0, 0), (1, lm.n_heads - 1), (0, 0)]
    fast = sol["path_patching"](lm, clean, corrupted, metric, heads, path)
    slow = slow_paths(lm, clean, corrupted, metric, heads, path)
    assert torch.allclose(torch.as_tensor(fast).double(), slow.double(), atol=1e-4, rtol=1e-3), (
        fast,
        slow,
    )
    baseline = float(metric(lm.model(corrupted).logits[:, -1]))
    assert (slow - baseline).abs().max() > 1e-3, "the problem is too easy: no head has an effect"
    other = slow_paths(
        lm, clean, corrupted, metric, heads, "indirect" if path == "direct" else "direct"
    )
    assert not torch.allclose(slow, other, atol=1e-3), "the two paths cannot be told apart here"


@pytest.mark.default_model
@pytest.mark.parametrize("path", ["direct", "indirect"])
def test_path_patching_equals_the_slow_way_on_the_default_model(sol, lm, path) -> None:
    from labkit.data import patching_pairs

    pairs = patching_pairs("ioi")[:2]
    clean = torch.cat([lm.to_tokens(p["clean"], prepend_anchor=True) for p in pairs])
    corrupted = torch.cat([lm.to_tokens(p["corrupted"], prepend_anchor=True) for p in pairs])
    targets = [lm.token_id(p["target"]) for p in pairs]
    foils = [lm.token_id(p["foil"]) for p in pairs]
    metric = sol["normalised_metric"](lm, clean, corrupted, targets, foils)
    heads = [(23, 3), (20, 0), (29, 1)]  # the name mover, the head that moves it, a late head
    fast = sol["path_patching"](lm, clean, corrupted, metric, heads, path)
    slow = slow_paths(lm, clean, corrupted, metric, heads, path)
    assert torch.allclose(torch.as_tensor(fast).double(), slow.double(), atol=2e-3), (fast, slow)
