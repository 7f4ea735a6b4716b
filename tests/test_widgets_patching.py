"""labkit.widgets.patching: the explorer calls the student's functions (as the notebook defines
them now), redraws, keeps what it computed, degrades with a message that says what to do."""

import base64

import pytest
import torch
from test_widgets_display import STUB, FakeNotebook

import labkit.checks.lab03  # noqa: F401 -- the registry the messages read
from labkit.checks.core import exercise_number
from labkit.tiny import tiny_model
from labkit.widgets.patching import ALL_PAIRS, PatchingExplorer

pytest.importorskip("ipywidgets")


# The tiny model's tokenizer is byte-level: one-byte targets, same-length prompts.
PAIRS = {
    "ioi": [
        {
            "id": f"ioi-{i}",
            "clean": f"Al and Bo {i}: Al to",
            "corrupted": f"Al and Bo {i}: Bo to",
            "target": "B",
            "foil": "A",
        }
        for i in range(3)
    ],
    "fact": [
        {"id": "f", "clean": "The cat is", "corrupted": "The dog is", "target": "s", "foil": "t"}
    ],
    "pun": [{"id": "p", "clean": "Why so?", "corrupted": "Why no?", "target": "a", "foil": "b"}],
}


@pytest.fixture
def lm():
    return tiny_model("llama")


class Calls:
    """Stand-ins for the student's functions that remember how they were called."""

    def __init__(self):
        self.calls = []

    def metric(self, lm, clean, corrupted, targets, foils):
        self.calls.append(("metric", tuple(clean.shape)))
        return lambda logits: logits[:, 0].mean()

    def attribution(self, lm, clean, corrupted, metric, site):
        self.calls.append(("attribution", site))
        return torch.rand(lm.n_layers, clean.shape[1])

    def heads(self, lm, clean, corrupted, metric):
        self.calls.append(("heads",))
        return torch.rand(lm.n_layers, lm.n_heads, clean.shape[1])

    def grid(self, lm, clean, corrupted, metric, site):
        self.calls.append(("grid", site))
        return torch.rand(lm.n_layers, clean.shape[1])

    def patch_heads(self, lm, clean, corrupted, metric):
        self.calls.append(("patch_heads",))
        return torch.rand(lm.n_layers, lm.n_heads)

    def functions(self):
        return {
            "normalised_metric": self.metric,
            "attribution_patching": self.attribution,
            "head_attribution": self.heads,
            "patch_grid": self.grid,
            "patch_heads": self.patch_heads,
        }


def test_draws_on_start_and_follows_the_controls(lm) -> None:
    calls = Calls()
    explorer = PatchingExplorer(lm, calls.functions(), task="fact", pairs=PAIRS)
    assert bytes(explorer.heatmaps.value[:4]) == b"\x89PNG"
    assert bytes(explorer.scatter.value[:4]) == b"\x89PNG"
    assert explorer.heatmaps.layout.display is None
    assert ("attribution", "resid_pre") in calls.calls and ("grid", "resid_pre") in calls.calls
    first = explorer.heatmaps.value
    explorer.site.value = "heads"
    assert calls.calls[-1] == ("patch_heads",) and explorer.estimate.shape == (lm.n_layers, 4)
    assert explorer.heatmaps.value != first
    explorer.task.value = "ioi"
    assert explorer.pair.value == ALL_PAIRS
    assert "Pearson r" in explorer.status.value
    # a saved notebook shows the first heatmaps (base64 PNG text) next to the live widget
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == bytes(first)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("PatchingExplorer")


def test_saved_exact_results_are_used_for_the_batch(lm) -> None:
    calls = Calls()
    ids = [p["id"] for p in PAIRS["ioi"]]
    n_pos = lm.to_tokens(PAIRS["ioi"][0]["clean"], prepend_anchor=True).shape[1]
    saved = {"ioi": {"pairs": ids, "exact": {"attn_out": torch.ones(lm.n_layers, n_pos).tolist()}}}
    explorer = PatchingExplorer(lm, calls.functions(), exact=saved, site="attn_out", pairs=PAIRS)
    assert ("grid", "attn_out") not in calls.calls  # read from the saved results
    assert torch.equal(explorer.exact_grid, torch.ones(lm.n_layers, n_pos, dtype=torch.float64))
    explorer.pair.value = ids[1]  # a single pair is not saved: computed with patch_grid
    assert calls.calls[-1] == ("grid", "attn_out")


def test_unfinished_exercises_and_errors_give_messages_not_broken_images(lm) -> None:
    def normalised_metric(*args):
        raise NotImplementedError

    def attribution_patching(*args):
        raise NotImplementedError

    explorer = PatchingExplorer(
        lm, {"normalised_metric": normalised_metric}, task="pun", pairs=PAIRS
    )
    assert f"exercise {exercise_number('normalised_metric')} (normalised_metric)" in (
        explorer.status.value
    )
    assert "no need to re-run" in explorer.status.value
    assert explorer.heatmaps.layout.display == "none"
    calls = Calls()
    functions = calls.functions()
    functions["attribution_patching"] = attribution_patching
    explorer = PatchingExplorer(lm, functions, task="pun", pairs=PAIRS)
    assert f"exercise {exercise_number('attribution_patching')} (attribution_patching)" in (
        explorer.status.value
    )
    del functions["attribution_patching"]  # not given to the explorer at all
    explorer = PatchingExplorer(lm, functions, task="pun", pairs=PAIRS)
    assert f"exercise {exercise_number('attribution_patching')}" in explorer.status.value

    def broken(*args):
        raise ValueError("oops")

    functions["attribution_patching"] = broken
    explorer = PatchingExplorer(lm, functions, task="pun", pairs=PAIRS)
    number = exercise_number("attribution_patching")
    assert f"Your attribution_patching (exercise {number}) raised ValueError: oops" in (
        explorer.status.value
    )
    assert "draws by itself" in explorer.status.value


NOTEBOOK = f"""
import torch

def normalised_metric(lm, clean, corrupted, targets, foils):
    return lambda logits: logits[:, 0].mean()

def activations_and_grads(lm, tokens, metric, site):
    {STUB}

def attribution_patching(lm, clean, corrupted, metric, site):
    return activations_and_grads(lm, clean, metric, site)

def patch_grid(lm, clean, corrupted, metric, site):
    return torch.ones(lm.n_layers, clean.shape[1])
"""


def test_the_explorer_follows_the_notebook(lm, monkeypatch) -> None:
    """An exercise finished after the explorer was built is used, and named exactly before."""
    notebook = FakeNotebook(monkeypatch)
    notebook.run(NOTEBOOK)
    functions = {
        name: notebook[name] for name in ["normalised_metric", "attribution_patching", "patch_grid"]
    }
    explorer = PatchingExplorer(lm, functions, task="fact", pairs=PAIRS)
    number = exercise_number("activations_and_grads")  # called by attribution_patching
    assert f"exercise {number} (activations_and_grads)" in explorer.status.value
    notebook.run(
        "def activations_and_grads(lm, tokens, metric, site):\n"
        "    return torch.full((lm.n_layers, tokens.shape[1]), 0.5)"
    )
    assert explorer.heatmaps.layout.display is None and "Pearson" in explorer.status.value
    assert torch.equal(explorer.estimate, torch.full_like(explorer.exact_grid, 0.5))


def test_results_are_kept_until_a_notebook_cell_runs(lm, monkeypatch) -> None:
    notebook = FakeNotebook(monkeypatch)
    calls = Calls()
    explorer = PatchingExplorer(lm, calls.functions(), task="fact", pairs=PAIRS)
    explorer.site.value = "attn_out"
    explorer.site.value = "resid_pre"  # back: kept
    assert [c[0] for c in calls.calls].count("metric") == 2
    notebook.run("x = 1")
    explorer.site.value = "attn_out"
    assert [c[0] for c in calls.calls].count("metric") == 3


def test_pictures_shrink_and_wrap_to_fit(lm) -> None:
    explorer = PatchingExplorer(lm, Calls().functions(), task="fact", pairs=PAIRS)
    pictures = explorer.widget.children[-1]
    assert pictures.layout.flex_flow == "row wrap"
    for image in (explorer.heatmaps, explorer.scatter):
        assert image.layout.max_width == "100%" and image.layout.height == "auto"
    assert explorer.widget.children[0].layout.flex_flow == "row wrap"
    assert explorer.pair.layout.width == "100%"


def test_progress_counts_forward_passes(lm, monkeypatch) -> None:
    from labkit.widgets import display

    monkeypatch.setattr(display, "PROGRESS_EVERY", 0.0)
    notebook = FakeNotebook(monkeypatch)
    calls, seen, ref = Calls(), [], []

    def grid(lm, clean, corrupted, metric, site):
        for _ in range(2):
            lm.model(clean)
            if ref:
                seen.append(ref[0].status.value)
        return torch.rand(lm.n_layers, clean.shape[1])

    functions = {**calls.functions(), "patch_grid": grid}
    ref.append(PatchingExplorer(lm, functions, task="fact", pairs=PAIRS))
    explorer = ref[0]
    explorer.site.value = "attn_out"
    assert "computing… forward pass 2," in seen[-1] and "about" not in seen[-1]
    notebook.run("x = 1")  # results forgotten; how many passes it takes is not
    explorer.site.value = "resid_pre"
    explorer.site.value = "attn_out"
    assert "computing… forward pass 2 of about 2" in seen[-1]
