"""labkit.widgets.display: what the explorers share. The student's functions are looked up as the
notebook defines them now, unfinished exercises are named by the checks' registry, a target
without its leading space is caught, and a notebook cell that ran empties the caches.

:class:`FakeNotebook` (also used by the explorers' tests) runs code as a notebook cell does:
functions get ``__module__ == "__main__"``, and IPython's ``post_run_cell`` event fires after.
"""

from __future__ import annotations

import types

import pytest
import torch

import labkit.checks.lab01  # noqa: F401 -- the registry the messages read
import labkit.checks.lab02  # noqa: F401
from labkit.checks.core import exercise_number
from labkit.widgets import display
from labkit.widgets.display import (
    Cache,
    NotebookWatch,
    current,
    exercise_on_traceback,
    missing_space,
    unfinished_message,
)

STUB = 'raise NotImplementedError("Exercise: replace this line with your code.")'


class FakeNotebook:
    """A stand-in for IPython: ``run(code)`` runs a cell in the user namespace, then fires
    ``post_run_cell``; explorers built meanwhile see it as their shell."""

    def __init__(self, monkeypatch) -> None:
        from IPython.core.events import EventManager, available_events

        self.user_ns: dict = {"__name__": "__main__"}
        self.events = EventManager(self, available_events)
        self.execution_count = 1
        monkeypatch.setattr(display, "_shell", lambda: self)

    def run(self, code: str) -> None:
        count = self.execution_count
        self.execution_count += 1  # IPython counts a cell before running it
        exec(compile(code, f"<cell {count}>", "exec"), self.user_ns)
        self.events.trigger("post_run_cell", types.SimpleNamespace(execution_count=count))

    def __getitem__(self, name: str):
        return self.user_ns[name]


@pytest.fixture
def notebook(monkeypatch) -> FakeNotebook:
    return FakeNotebook(monkeypatch)


# ----- current(): the student's functions as defined now ----------------------------------------
def test_outside_ipython_functions_are_used_as_given() -> None:
    def saliency():
        return 1

    assert current(saliency) is saliency


def test_a_notebook_function_is_looked_up_again(notebook) -> None:
    notebook.run(f"def saliency(f, x):\n    {STUB}")
    stub = notebook["saliency"]
    notebook.run("def saliency(f, x):\n    return 'done'")
    assert current(stub) is notebook["saliency"] and current(stub)(0, 0) == "done"
    notebook.run("saliency = 3")  # not a function any more: keep what was given
    assert current(stub) is stub


def test_a_closure_over_notebook_functions_uses_their_current_versions(notebook) -> None:
    """lab 01 wraps exercises as methods: gradient_method(saliency) captures the stub."""
    notebook.run(
        f"def saliency(f, x):\n    {STUB}\n\n"
        "def gradient_method(attribute):\n"
        "    return lambda lm, tokens, t: attribute(lm, tokens)\n\n"
        "method = gradient_method(saliency)"
    )
    method = notebook["method"]
    assert current(method) is method
    with pytest.raises(NotImplementedError):
        current(method)(None, 1, 2)
    notebook.run("def saliency(f, x):\n    return x + 1")
    assert current(method)(None, 1, 2) == 2
    assert current(method) is current(method), "one rebuilt function, so caches recognise it"


def test_library_and_nested_functions_are_left_alone(notebook) -> None:
    notebook.run(
        "def outer():\n    def saliency():\n        return 'inner'\n    return saliency\n\n"
        "inner = outer()\n\ndef saliency():\n    return 'top level'"
    )
    assert current(notebook["inner"])() == "inner"  # a nested function is not the global
    assert current(torch.zeros) is torch.zeros


# ----- unfinished exercises ----------------------------------------------------------------------
def space_baseline(lm, tokens):
    raise NotImplementedError("Exercise: replace this line with your code.")


def integrated_gradients(f, x, baseline, n_steps):
    return baseline


def test_the_innermost_exercise_on_traceback_is_named() -> None:
    """IG passes, its baseline (exercise 1.6) does not: the message names the baseline."""
    with pytest.raises(NotImplementedError) as caught:
        integrated_gradients(None, None, space_baseline(None, None), 32)
    assert exercise_on_traceback(caught.value) == "space_baseline"
    message = unfinished_message("space_baseline", needed_by="'my integrated gradients'")
    number = exercise_number("space_baseline")
    assert number and f"exercise {number} (space_baseline)" in message
    assert "integrated_gradients" not in message and "no need to re-run" in message
    assert exercise_on_traceback(ValueError(), fallback="patch_grid") == "patch_grid"


def test_a_message_without_a_known_exercise_still_says_what_to_do() -> None:
    message = unfinished_message(None, needed_by="'todo'")
    assert "'todo'" in message and "change a control" in message and "re-run" in message


# ----- a target without its leading space -------------------------------------------------------
class SpacedModel:
    """A model whose vocabulary has 'London', ' London' and ' Paris' as single tokens."""

    vocab = {"London": 0, " London": 1, " Paris": 2, "Lon": 3}

    def token_id(self, text: str) -> int:
        if text not in self.vocab:
            raise ValueError(f"{text!r} is not a single token")
        return self.vocab[text]


def test_a_target_without_its_space_is_caught_with_the_fix() -> None:
    lm, probs = SpacedModel(), torch.tensor([1e-9, 0.5, 0.1, 0.0])
    found = missing_space(lm, "The capital of England is", "London", probs)
    assert found.suggestion == " London" and "leading space" in found.message
    assert "' London'" in found.message
    assert missing_space(lm, "The capital of England is", " London", probs) is None
    assert missing_space(lm, "The capital of England is ", "London", probs) is None
    unlikely = torch.tensor([0.5, 1e-9, 0.1, 0.0])  # the model prefers the unspaced word
    assert missing_space(lm, "The capital of England is", "London", unlikely) is None
    several = missing_space(lm, "The capital of France is", "Paris", probs)
    assert several.suggestion == " Paris" and "not a single token" in several.message


# ----- caches and the watch ----------------------------------------------------------------------
def test_cache_keeps_the_latest_entries() -> None:
    cache = Cache(2)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") is None and cache.get("c") == "C" and len(cache) == 2
    cache.clear()
    assert cache.get("c") is None


class Explorer:
    def __init__(self) -> None:
        self.cleared, self.updates = 0, 0
        self.watch = NotebookWatch(self)

    def clear_caches(self) -> None:
        self.cleared += 1

    def update(self) -> None:
        self.updates += 1


def test_the_watch_redraws_once_the_awaited_exercise_is_defined(notebook) -> None:
    notebook.run(f"def corrupt_subject():\n    {STUB}")
    explorer = Explorer()
    explorer.watch.wait_for("corrupt_subject")
    notebook.run("x = 1")  # another cell: caches emptied, no redraw
    assert (explorer.cleared, explorer.updates) == (1, 0)
    notebook.run("def corrupt_subject():\n    return 1")
    assert (explorer.cleared, explorer.updates) == (2, 1)
    notebook.run("def corrupt_subject():\n    return 2")  # no longer waiting
    assert explorer.updates == 1


def test_only_the_latest_explorer_of_a_kind_redraws_by_itself(notebook) -> None:
    old, new = Explorer(), Explorer()
    for explorer in (old, new):
        explorer.watch.wait_for("restoration_grid")
    notebook.run("def restoration_grid():\n    return 1")
    assert (old.updates, new.updates) == (0, 1) and old.cleared == new.cleared == 1


def test_the_cell_that_builds_an_explorer_keeps_its_caches(notebook) -> None:
    notebook.run("from test_widgets_display import Explorer\nexplorer = Explorer()")
    assert notebook["explorer"].cleared == 0
    notebook.run("y = 2")
    assert notebook["explorer"].cleared == 1
