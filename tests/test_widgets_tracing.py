"""labkit.widgets.tracing: the explorer calls the student's functions and redraws on change."""

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
def lm():
    return tiny_model("llama")


def test_explorer_draws_on_start_and_redraws_on_change(lm) -> None:
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
    assert explorer.image.value[:4] == b"\x89PNG"
    explorer.site.value = "resid"  # resid ignores the window
    explorer.samples.value = 3
    assert grid_fn.calls[-1] == (8, 3, lm.token_id("s"), "resid", 1)
    assert "clean" in explorer.status.value


def test_bad_input_and_unfinished_exercises_give_messages(lm) -> None:
    explorer = TracingExplorer(
        lm, Recorder(), fake_corrupt, prompt="The cat", subject="dog", target="s"
    )
    assert "not a run of whole tokens" in explorer.status.value

    def unfinished(*args):
        raise NotImplementedError

    explorer = TracingExplorer(
        lm, unfinished, fake_corrupt, prompt="The cat", subject="cat", target="s"
    )
    assert "Finish exercises" in explorer.status.value
    explorer.target.value = "ss"
    explorer.button.click()
    assert "single token" in explorer.status.value
