"""labkit.widgets.tracing: the explorer calls the student's functions and redraws on change."""

import base64

import pytest
import torch

from labkit.tiny import tiny_model
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
    explorer.site.value = "resid"
    assert explorer.window.disabled and grid_fn.calls[-1][3:] == ("resid", 1)


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
    def unfinished(*args):
        raise NotImplementedError

    explorer = TracingExplorer(tiny_lm, unfinished, fake_corrupt, "The cat", "cat", "s")
    assert "finish exercises 2.3 and 2.4" in explorer.status.value
    assert explorer.image.layout.display == "none" and not explorer.image.value
    bundle = explorer._repr_mimebundle_()
    assert "image/png" not in bundle and "text/plain" in bundle
    explorer.target.value = "ss"
    explorer.button.click()
    assert "single token" in explorer.status.value


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
    explorer.target.value = " Paris"
    submit(explorer.target)
    assert len(grid_fn.calls) == 1 and "clean 0.7" in explorer.status.value
