"""labkit.widgets.tracing: the explorer calls the student's functions (as the notebook defines
them now), redraws on change, shows progress and keeps what does not change."""

import base64

import pytest
import torch
from test_widgets_display import STUB, FakeNotebook

from labkit.checks.core import exercise_number
from labkit.tiny import tiny_model
from labkit.widgets import display
from labkit.widgets.tracing import TracingExplorer

pytest.importorskip("ipywidgets")


def fake_corrupt(lm, tokens, subject, n_samples, noise_scale, seed):
    embeds = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    embeds[:, subject] += noise_scale
    return embeds


class Recorder:
    """A stand-in restoration_grid that remembers how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, lm, tokens, corrupted, target_id, site, window):
        self.calls.append((tokens.shape[1], corrupted.shape[0], target_id, site, window))
        return torch.rand(lm.n_layers, tokens.shape[1])


@pytest.fixture
def tiny_lm():
    return tiny_model("llama")


def submit(box) -> None:
    """What the browser sends when Enter is pressed in a text box."""
    box._handle_string_msg(None, {"event": "submit"}, [])


def test_explorer_draws_on_start_and_redraws_on_change(tiny_lm) -> None:
    lm = tiny_lm
    grid_fn = Recorder()
    explorer = TracingExplorer(
        lm,
        grid_fn,
        fake_corrupt,
        prompt="The cat",
        subject="cat",
        target="s",
        site="mlp",
        window=4,
        n_samples=2,
    )
    assert grid_fn.calls == [(8, 2, lm.token_id("s"), "mlp", 4)]
    assert explorer.grid.shape == (lm.n_layers, 8)
    assert explorer.png[:4] == b"\x89PNG" and bytes(explorer.image.value) == explorer.png
    explorer.site.value = "resid"  # resid ignores the window
    explorer.samples.value = 3
    assert grid_fn.calls[-1] == (8, 3, lm.token_id("s"), "resid", 1)
    assert "clean" in explorer.status.value
    explorer.noise.value = 5.0
    assert len(grid_fn.calls) == 4
    for slider in (explorer.window, explorer.noise, explorer.samples):
        assert slider.continuous_update is False  # one grid per release, not per step


def test_window_is_disabled_and_ignored_for_the_residual_stream(tiny_lm) -> None:
    grid_fn = Recorder()
    explorer = TracingExplorer(tiny_lm, grid_fn, fake_corrupt, "The cat", "cat", "s")
    assert explorer.site.value == "resid" and explorer.window.disabled
    explorer.window.value = 3
    assert len(grid_fn.calls) == 1, "the window slider at resid must not recompute"
    explorer.site.value = "attn"
    assert not explorer.window.disabled and grid_fn.calls[-1][3:] == ("attn", 3)
    explorer.window.value = 5
    assert grid_fn.calls[-1][3:] == ("attn", 5)
    explorer.site.value = "resid"  # the first grid, kept from before
    assert explorer.window.disabled and len(grid_fn.calls) == 3
    assert "kept from before" in explorer.status.value


def test_typing_marks_the_grid_stale_and_enter_traces(tiny_lm) -> None:
    grid_fn = Recorder()
    explorer = TracingExplorer(tiny_lm, grid_fn, fake_corrupt, "The cat", "cat", "s")
    for box, text in [(explorer.prompt, "The cat sat"), (explorer.subject, "sat")]:
        calls = len(grid_fn.calls)
        box.value = text  # each keystroke arrives like this
        assert len(grid_fn.calls) == calls and "press Enter" in explorer.status.value
        submit(box)
        assert len(grid_fn.calls) == calls + 1 and "edited" not in explorer.status.value
    assert grid_fn.calls[-1][0] == 12
    explorer.target.value = "t"
    submit(explorer.target)
    assert grid_fn.calls[-1][2] == tiny_lm.token_id("t")
    assert "Enter" in explorer.hint.value


def test_busy_state_while_computing(tiny_lm) -> None:
    seen = []

    def grid_fn(lm, tokens, corrupted, target_id, site, window):
        seen.append((explorer.button.disabled, explorer.status.value))
        return torch.rand(lm.n_layers, tokens.shape[1])

    explorer = None
    explorer = TracingExplorer(tiny_lm, grid_fn, fake_corrupt, "The cat", "cat", "s")
    explorer.button.click()
    assert seen[-1][0] is True and "tracing" in seen[-1][1]
    assert explorer.button.disabled is False and explorer.button.description == "trace"


def test_bad_input_hides_the_old_grid(tiny_lm) -> None:
    explorer = TracingExplorer(tiny_lm, Recorder(), fake_corrupt, "The cat", "cat", "s")
    assert explorer.image.layout.display is None and explorer.image.value
    explorer.subject.value = "dog"
    submit(explorer.subject)
    assert "not a run of whole tokens" in explorer.status.value
    assert explorer.image.layout.display == "none"  # not the previous prompt's grid
    explorer.subject.value = "cat"
    explorer.button.click()
    assert explorer.image.layout.display is None


def test_unfinished_exercises_show_a_message_not_a_broken_image(tiny_lm) -> None:
    def restoration_grid(*args):
        raise NotImplementedError

    explorer = TracingExplorer(tiny_lm, restoration_grid, fake_corrupt, "The cat", "cat", "s")
    number = exercise_number("restoration_grid")  # from the checks' registry, never a literal
    assert f"exercise {number} (restoration_grid)" in explorer.status.value
    assert "no need to re-run" in explorer.status.value
    assert explorer.image.layout.display == "none" and not explorer.image.value
    bundle = explorer._repr_mimebundle_()
    assert "image/png" not in bundle and "text/plain" in bundle
    explorer.target.value = "ss"
    explorer.button.click()
    assert "single token" in explorer.status.value


NOTEBOOK = f"""
import torch

def corrupt_subject(lm, tokens, subject, n_samples, noise_scale, seed):
    {STUB}

def restoration_grid(lm, tokens, corrupted, target_id, site, window):
    {STUB}
"""


def test_the_explorer_follows_the_notebook_exercise_by_exercise(tiny_lm, monkeypatch) -> None:
    """Built on stubs (Run All), the explorer names each unfinished exercise in turn and draws
    as soon as the last one's cell has run, without its own cell being run again."""
    notebook = FakeNotebook(monkeypatch)
    notebook.run(NOTEBOOK)
    explorer = TracingExplorer(
        tiny_lm, notebook["restoration_grid"], notebook["corrupt_subject"], "The cat", "cat", "s"
    )
    assert f"exercise {exercise_number('corrupt_subject')} (corrupt_subject)" in (
        explorer.status.value
    )
    notebook.run(
        "def corrupt_subject(lm, tokens, subject, n_samples, noise_scale, seed):\n"
        "    return lm.embed(tokens).detach().repeat(n_samples, 1, 1) + noise_scale"
    )
    assert f"exercise {exercise_number('restoration_grid')} (restoration_grid)" in (
        explorer.status.value
    )
    notebook.run(
        "def restoration_grid(lm, tokens, corrupted, target_id, site, window):\n"
        "    lm.model(inputs_embeds=corrupted)\n"
        "    return torch.ones(lm.n_layers, tokens.shape[1])"
    )
    assert explorer.image.layout.display is None and explorer.grid.shape == (3, 8)
    assert "grid in" in explorer.status.value


def test_a_wrong_answer_is_reported_and_its_fix_followed(tiny_lm, monkeypatch) -> None:
    notebook = FakeNotebook(monkeypatch)
    notebook.run(NOTEBOOK.replace(STUB, "return None", 1))  # corrupt_subject returns None
    explorer = TracingExplorer(
        tiny_lm, notebook["restoration_grid"], notebook["corrupt_subject"], "The cat", "cat", "s"
    )
    status = explorer.status.value
    assert "Your corrupt_subject" in status and "returned NoneType, not a tensor" in status
    assert "draws by itself" in status and explorer.image.layout.display == "none"
    notebook.run(
        "def corrupt_subject(lm, tokens, subject, n_samples, noise_scale, seed):\n"
        "    return lm.embed(tokens).detach().repeat(n_samples, 1, 1) + noise_scale"
    )
    assert exercise_number("restoration_grid") in explorer.status.value  # the next one


def test_what_does_not_change_is_not_computed_again(tiny_lm, monkeypatch) -> None:
    notebook = FakeNotebook(monkeypatch)
    corrupt_calls = []

    def corrupt(*args):
        corrupt_calls.append(args[3:])
        return fake_corrupt(*args)

    grid_fn = Recorder()
    explorer = TracingExplorer(tiny_lm, grid_fn, corrupt, "The cat", "cat", "s", site="mlp")
    explorer.site.value = "attn"
    explorer.site.value = "mlp"  # back: the grid is kept
    assert len(grid_fn.calls) == 2 and len(corrupt_calls) == 1
    assert "kept from before" in explorer.status.value
    explorer.noise.value = 5.0
    explorer.noise.value = 3.0  # back to noise 3: both kept
    assert len(grid_fn.calls) == 3 and len(corrupt_calls) == 2
    notebook.run("x = 1")  # a cell ran: anything may have changed
    explorer.site.value = "attn"
    assert len(grid_fn.calls) == 4 and len(corrupt_calls) == 3


def test_progress_counts_forward_passes(tiny_lm, monkeypatch) -> None:
    monkeypatch.setattr(display, "PROGRESS_EVERY", 0.0)
    seen, ref = [], []

    def grid_fn(lm, tokens, corrupted, target_id, site, window):
        for _ in range(3):
            lm.model(inputs_embeds=corrupted)
            if ref:
                progress = ref[0].progress
                seen.append((ref[0].status.value, progress.value, progress.max))
        return torch.rand(lm.n_layers, tokens.shape[1])

    ref.append(TracingExplorer(tiny_lm, grid_fn, fake_corrupt, "The cat", "cat", "s"))
    explorer = ref[0]
    explorer.site.value = "mlp"  # a new shape of grid: the total is not known yet
    assert "forward pass 3," in seen[-1][0] and "about" not in seen[-1][0]
    explorer.noise.value = 1.0  # same shape: now it is
    assert "forward pass 3 of about 3" in seen[-1][0] and seen[-1][1:] == (3, 3)
    assert explorer.progress.layout.display == "none"  # hidden once the grid is drawn


def test_layout_fits_narrow_output_areas(tiny_lm) -> None:
    explorer = TracingExplorer(tiny_lm, Recorder(), fake_corrupt, "The cat", "cat", "s")
    rows = [w for w in explorer.widget.children if type(w).__name__ == "HBox"]
    assert rows and all(row.layout.flex_flow == "row wrap" for row in rows)
    assert explorer.prompt.layout.width == "100%" and explorer.prompt.layout.max_width
    assert explorer.image.layout.max_width == "100%" and explorer.image.layout.height == "auto"


def test_saved_notebooks_get_the_first_grid_as_png(tiny_lm) -> None:
    explorer = TracingExplorer(tiny_lm, Recorder(), fake_corrupt, "The cat", "cat", "s")
    first = explorer.png
    explorer.site.value = "mlp"
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == first != explorer.png
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == explorer.widget.model_id and view["version_major"] == 2
    assert bundle["text/plain"].startswith("TracingExplorer")


def test_noise_label_has_room() -> None:
    """The description "noise (x std)" is not cut off: labels get a fixed, wide column."""
    lm = tiny_model("llama")
    explorer = TracingExplorer(lm, Recorder(), fake_corrupt, "The cat", "cat", "s")
    assert explorer.noise.style.description_width in ("initial", "110px")


@pytest.mark.default_model
def test_target_without_its_leading_space_is_refused_with_the_fix(lm) -> None:
    grid_fn = Recorder()
    explorer = TracingExplorer(lm, grid_fn, fake_corrupt, target="Paris")
    assert not grid_fn.calls and explorer.image.layout.display == "none"
    status = explorer.status.value
    assert "leading space" in status and "&#x27; Paris&#x27;" in status, status
    assert explorer.suggestion.layout.display is None
    explorer.suggestion.click()  # the button puts ' Paris' in the box and traces
    assert explorer.target.value == " Paris"
    assert len(grid_fn.calls) == 1 and "clean 0.7" in explorer.status.value
    assert explorer.suggestion.layout.display == "none"
    explorer.target.value = "Paris"
    submit(explorer.target)
    assert "leading space" in explorer.status.value and len(grid_fn.calls) == 1
