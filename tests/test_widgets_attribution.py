"""labkit.widgets.attribution: the explorer follows its controls and the notebook; inseq on the
lab's inputs."""

import pytest
import torch
from test_widgets_display import STUB, FakeNotebook

from labkit.checks.core import exercise_number
from labkit.tiny import tiny_model
from labkit.widgets.attribution import AttributionExplorer, default_prompts, inseq_attribution


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


def _input_x_gradient(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    lm.model(inputs_embeds=x).logits[0, -1, target_id].backward()
    return (x * x.grad)[0].sum(-1)


def _position(lm, tokens, target_id):
    return torch.arange(tokens.shape[1], dtype=torch.float)


def _not_done(lm, tokens, target_id):
    raise NotImplementedError


PROMPTS = {"one": ("abc", ["d", "e"]), "two": ("hello", ["o"]), "one, literal": ("xbc", ["d"])}


class Counting:
    """A method that counts its calls and remembers what the status line said meanwhile."""

    def __init__(self, explorer_ref: list) -> None:
        self.calls, self.status_during, self.explorer_ref = 0, [], explorer_ref

    def __call__(self, lm, tokens, target_id):
        self.calls += 1
        if self.explorer_ref:
            self.status_during.append(self.explorer_ref[0].status.value)
        return tokens[0].float() * (target_id + 1)


def test_default_prompts_cover_puns_literals_and_facts() -> None:
    prompts = default_prompts()
    assert prompts["pun: current"] == (
        "Why do electricians make good swimmers? Because they know the",
        [" current", " water"],
    )
    assert any(k.startswith("literal: ") for k in prompts)
    assert any(k.startswith("fact: ") for k in prompts)


def test_explorer_updates_when_controls_change(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position, "ixg": _input_x_gradient}, PROMPTS)
    first = explorer.html.value
    assert first.count("<span") == 3  # 'abc' without the anchor
    assert "position" in explorer.status.value and "p(&#x27;d&#x27;)" in explorer.status.value
    explorer.method.value = "ixg"
    assert explorer.html.value != first
    explorer.prompt.value = "two"
    assert explorer.target.value == "o" and explorer.html.value.count("<span") == 5
    assert "o" in explorer.target.options and len(explorer.target.options) >= 2  # + top tokens


def test_explorer_reports_problems_without_crashing(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"todo": _not_done, "position": _position}, PROMPTS)
    assert "NotImplementedError" in explorer.status.value and explorer.html.value == ""
    assert "re-run" in explorer.status.value
    explorer.method.value = "position"
    explorer.target.value = "xy"  # two tokens
    assert "single token" in explorer.status.value
    with pytest.raises(ValueError, match="at least one method"):
        AttributionExplorer(tiny, {}, PROMPTS)


def test_switching_to_a_prompt_with_the_same_target_redraws_once(tiny) -> None:
    """A pun and its literal sentence share the target: the heatmap must still follow."""
    ref: list = []
    method = Counting(ref)
    explorer = AttributionExplorer(tiny, {"count": method}, PROMPTS)
    ref.append(explorer)
    first, calls = explorer.html.value, method.calls
    explorer.prompt.value = "one, literal"  # same first target 'd'
    assert explorer.target.value == "d"
    assert method.calls == calls + 1, "one redraw per prompt change, not zero or two"
    assert explorer.html.value != first
    assert "x" in explorer.html.value
    explorer.prompt.value = "one"
    assert explorer.html.value == first and method.calls == calls + 1  # kept from before


def test_target_box_waits_for_enter_and_shows_busy_state(tiny) -> None:
    ref: list = []
    method = Counting(ref)
    explorer = AttributionExplorer(tiny, {"count": method}, PROMPTS)
    ref.append(explorer)
    assert explorer.target.continuous_update is False  # no redraw per keystroke
    explorer.target.value = "e"  # what the browser sends on Enter
    assert "computing" in method.status_during[-1]
    assert "computing" not in explorer.status.value and "p(&#x27;e&#x27;)" in explorer.status.value


def test_saved_notebooks_get_the_first_view_and_a_text_line(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position, "ixg": _input_x_gradient}, PROMPTS)
    first = explorer.html.value
    explorer.method.value = "ixg"
    bundle = explorer._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view == {"version_major": 2, "version_minor": 0, "model_id": explorer.widget.model_id}
    assert first in bundle["text/html"]  # the first view, not the current one
    assert "took" not in bundle["text/html"]  # no timings: a re-run notebook stays the same
    assert bundle["text/plain"].startswith("AttributionExplorer")
    assert "VBox" not in bundle["text/plain"]


def test_show_anchor_keeps_position_zero(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position}, PROMPTS, show_anchor=True)
    assert explorer.html.value.count("<span") == 4


def test_inseq_input_x_gradient_matches_ours(tiny) -> None:
    tokens = tiny.to_tokens("abc", prepend_anchor=True)
    target = tiny.token_id("d")
    theirs = inseq_attribution(tiny, tokens, target, "input_x_gradient")
    assert theirs.shape == (tokens.shape[1],)
    torch.testing.assert_close(theirs, _input_x_gradient(tiny, tokens, target).detach())


def test_inseq_baseline_is_restored_after_the_call(tiny) -> None:
    tokens = tiny.to_tokens("abc", prepend_anchor=True)
    unk = tiny.tokenizer.unk_token_id
    scores = inseq_attribution(
        tiny, tokens, tiny.token_id("d"), "occlusion", baseline_id=tiny.token_id(" ")
    )
    assert scores.shape == (tokens.shape[1],)
    assert scores[0] == 0  # the anchor is its own baseline: occluding it changes nothing
    assert tiny.tokenizer.unk_token_id == unk


# ----- the notebook changes under the explorer ---------------------------------------------------
LAB_CELLS = f"""
import torch

def saliency(f, embeddings):
    {STUB}

def space_baseline(lm, tokens):
    {STUB}

def integrated_gradients(f, embeddings, baseline, n_steps=32):
    return (embeddings - baseline)[0].sum(-1)

def gradient_method(attribute):
    return lambda lm, tokens, target_id: attribute(lm, lm.embed(tokens))

def ig_method(lm, tokens, target_id):
    return integrated_gradients(None, lm.embed(tokens), space_baseline(lm, tokens), 32)
"""


def test_finishing_an_exercise_after_building_the_explorer_is_enough(tiny, monkeypatch) -> None:
    """Run All on a fresh lab builds the explorer on stubs; the student finishes the exercise
    and runs its cell: the explorer draws with it, its own cell is not run again."""
    notebook = FakeNotebook(monkeypatch)
    notebook.run(LAB_CELLS)
    methods = {"my saliency": notebook["gradient_method"](notebook["saliency"])}
    methods["my integrated gradients"] = notebook["ig_method"]
    explorer = AttributionExplorer(tiny, methods, PROMPTS)
    number = exercise_number("saliency")
    assert f"exercise {number} (saliency)" in explorer.status.value
    assert "no need to re-run" in explorer.status.value and explorer.html.value == ""
    notebook.run("def saliency(f, embeddings):\n    return embeddings[0].norm(dim=-1)")
    assert explorer.html.value.count("<span") == 3, explorer.status.value  # drawn by itself
    assert "saliency took" in explorer.status.value


def test_the_message_names_what_is_unfinished_not_the_method(tiny, monkeypatch) -> None:
    """Integrated gradients is finished, its baseline is not: name the baseline's exercise."""
    notebook = FakeNotebook(monkeypatch)
    notebook.run(LAB_CELLS)
    methods = {"my integrated gradients": notebook["ig_method"]}
    explorer = AttributionExplorer(tiny, methods, PROMPTS)
    number = exercise_number("space_baseline")
    assert f"exercise {number} (space_baseline)" in explorer.status.value
    assert "integrated_gradients" not in explorer.status.value
    notebook.run("def space_baseline(lm, tokens):\n    return lm.embed(tokens) * 0")
    assert "my integrated gradients took" in explorer.status.value


def test_scores_are_kept_until_a_notebook_cell_runs(tiny, monkeypatch) -> None:
    notebook = FakeNotebook(monkeypatch)
    ref: list = []
    method = Counting(ref)
    explorer = AttributionExplorer(tiny, {"count": method, "position": _position}, PROMPTS)
    assert method.calls == 1
    explorer.method.value = "position"
    explorer.method.value = "count"  # back: kept from before
    assert method.calls == 1 and "kept from before" in explorer.status.value
    notebook.run("x = 1")  # the student ran a cell: anything may have changed
    explorer.method.value = "position"
    explorer.method.value = "count"
    assert method.calls == 2 and "kept" not in explorer.status.value


def test_controls_wrap_and_the_picture_fits_the_output_area(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position}, PROMPTS)
    row = explorer.widget.children[0]
    assert row.layout.flex_flow == "row wrap" and explorer.widget.layout.width == "100%"


@pytest.mark.default_model
def test_a_target_without_its_leading_space_is_refused_with_the_fix(lm) -> None:
    prompts = {"fact": ("The capital of England is", [" London"])}
    explorer = AttributionExplorer(lm, {"position": _position}, prompts)
    assert "p(&#x27; London&#x27;)" in explorer.status.value
    explorer.target.value = "London"
    status = explorer.status.value
    assert "leading space" in status and "&#x27; London&#x27;" in status, status
    assert explorer.html.value == "" and explorer.suggestion.layout.display is None
    assert explorer.suggestion.description == "use ' London'"
    explorer.suggestion.click()
    assert explorer.target.value == " London" and explorer.html.value
    assert explorer.suggestion.layout.display == "none"
