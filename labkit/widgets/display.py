"""What the explorers share: how they show themselves, and how they stay current.

A notebook cell that ends with an explorer stores one output with three representations:

* ``application/vnd.jupyter.widget-view+json``: the live controls (JupyterLab, Colab, VS Code);
* a picture of what the explorer drew first (``image/png`` or ``text/html``), which viewers
  without a kernel or without the widget's saved state (GitHub, nbconvert, nbviewer) show
  instead;
* ``text/plain``: one line naming the explorer, for terminals.

The first view is the one computed when the cell ran, so a saved notebook shows the picture its
author saw.

An explorer runs the student's own functions, and a student often builds it before finishing
them (Run All on a fresh lab). So at every update an explorer looks each function up again
(:func:`current`): finishing an exercise is enough, the explorer cell need not run again. When
a function is unfinished, the message names the exercise by its number in the checks' registry
(:func:`exercise_on_traceback`, :func:`unfinished_message`), and :class:`NotebookWatch` redraws
once the student has run that exercise's cell. What an explorer computed is kept in a
:class:`Cache` until the student runs another cell (which may redefine any function).
"""

from __future__ import annotations

import asyncio
import base64
import html
import time
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "ERROR_COLOUR",
    "Cache",
    "NotebookWatch",
    "Spacing",
    "current",
    "error_html",
    "exercise_on_traceback",
    "explorer_bundle",
    "failure_message",
    "format_probability",
    "forward_passes",
    "missing_space",
    "picture_layout",
    "row_layout",
    "unfinished_message",
]

# JupyterLab's own error colour (follows the light/dark theme); a red readable on white elsewhere.
ERROR_COLOUR = "var(--jp-error-color1, #c62828)"


def explorer_bundle(widget, first_view: dict[str, bytes | str], text: str) -> dict:
    """A display bundle: ``widget``'s live view, ``first_view`` (mime type -> data), ``text``.

    Works with ipywidgets 7 and 8 (both speak version 2 of the widget view format).
    """
    bundle: dict = {
        "text/plain": text,
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2,
            "version_minor": 0,
            "model_id": widget.model_id,
        },
    }
    for mime, data in first_view.items():
        if data:  # an explorer whose first view is an error message has no picture
            binary = isinstance(data, (bytes, bytearray, memoryview))  # widgets keep memoryviews
            bundle[mime] = base64.b64encode(bytes(data)).decode() if binary else data
    return bundle


def format_probability(p: float) -> str:
    """A probability with the digits that matter: 0.749, 0.012, 4.1e-04, 0."""
    if p == 0:
        return "0"
    if p >= 0.01:
        return f"{p:.3f}"
    return f"{p:.1e}"


def error_html(text: str) -> str:
    """``text`` as a status line in the error colour."""
    return f'<span style="color: {ERROR_COLOUR}">{html.escape(text)}</span>'


# ----- layout: fit JupyterLab with its sidebar open, and Colab's narrower output ---------------
def row_layout():
    """A row of controls that wraps onto the next line where the output area is too narrow."""
    import ipywidgets as widgets

    return widgets.Layout(flex_flow="row wrap", align_items="center", width="100%")


def picture_layout(display: str | None = None):
    """A picture that shrinks (keeping its aspect ratio) to the width of the output area."""
    import ipywidgets as widgets

    return widgets.Layout(
        max_width="100%", height="auto", object_fit="contain", min_width="0", display=display
    )


# ----- the student's functions, as the notebook defines them now --------------------------------
def _shell():
    """The running IPython shell, or None (a script, the tests)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return None
    return get_ipython()


def _notebook_function(obj: object) -> bool:
    """A function defined at the top level of a notebook cell (not a lambda, not nested)."""
    return (
        isinstance(obj, types.FunctionType)
        and obj.__module__ == "__main__"
        and obj.__name__ != "<lambda>"
        and obj.__qualname__ == obj.__name__
    )


_REBUILT: OrderedDict = OrderedDict()  # (function, closure values' ids) -> (rebuilt, values)


def current(function: Callable) -> Callable:
    """``function`` as the notebook defines it now.

    A function defined in the notebook (``__module__ == "__main__"``) is replaced by the current
    binding of its name in IPython's user namespace, so a student who finishes an exercise after
    building an explorer does not have to build it again. A closure defined in the notebook (a
    lambda returned by a helper such as ``gradient_method(saliency)``) gets its captured notebook
    functions looked up the same way. Anything else, and everything outside IPython, is returned
    as it is.
    """
    namespace = getattr(_shell(), "user_ns", None)
    if not isinstance(namespace, dict):
        return function
    return _current(function, namespace, depth=0)


def _current(function, namespace: dict, depth: int):
    if not isinstance(function, types.FunctionType) or depth > 4:
        return function
    if _notebook_function(function):
        bound = namespace.get(function.__name__)
        return bound if _notebook_function(bound) else function
    if function.__module__ != "__main__" or not function.__closure__:
        return function
    try:
        values = [cell.cell_contents for cell in function.__closure__]
    except ValueError:  # a closure cell not filled yet: leave the function as it is
        return function
    fresh = [_current(value, namespace, depth + 1) for value in values]
    if all(new is old for new, old in zip(fresh, values, strict=True)):
        return function
    key = (function, *map(id, fresh))
    if key not in _REBUILT:  # one rebuilt function per state, so that caches can recognise it
        rebuilt = types.FunctionType(
            function.__code__,
            function.__globals__,
            function.__name__,
            function.__defaults__,
            tuple(types.CellType(value) for value in fresh),
        )
        rebuilt.__kwdefaults__ = function.__kwdefaults__
        rebuilt.__dict__.update(function.__dict__)
        rebuilt.__qualname__ = function.__qualname__
        _REBUILT[key] = (rebuilt, fresh)  # the values stay alive, so their ids stay theirs
        while len(_REBUILT) > 256:
            _REBUILT.popitem(last=False)
    return _REBUILT[key][0]


# ----- unfinished exercises, named by the checks' registry ---------------------------------------
def exercise_on_traceback(error: BaseException, fallback: str | None = None) -> str | None:
    """The exercise function that raised ``error``: the innermost frame of its traceback that
    runs a function registered as an exercise (``labkit.checks.core.exercise_number``), e.g.
    the stub of an unfinished one; ``fallback`` when there is none."""
    from labkit.checks.core import LABS

    # Only the exercises of the explorer's own lab (the one ``fallback`` belongs to) count.
    labs = [lab for lab in LABS if fallback in lab._checks] or LABS
    found = None
    trace = error.__traceback__
    while trace is not None:
        name = trace.tb_frame.f_code.co_name
        if any(name in lab._checks for lab in labs):
            found = name
        trace = trace.tb_next
    return found or fallback


def failure_message(function: str | None, error: BaseException) -> str:
    """What to say when the student's ``function`` raised ``error``: what happened, and that
    the explorer follows a fix without its cell being run again."""
    from labkit.checks.core import exercise_number

    number = exercise_number(function) if function else None
    who = f"Your {function}" if function else "Your code"
    where = f" (exercise {number})" if number else ""
    follow = (
        "Fix it above and run its cell: this explorer then draws by itself"
        if function
        else "Fix it above and run its cell, then change a control here"
    )
    return (
        f"{who}{where} raised {type(error).__name__}: {error}. {follow} (no need to re-run "
        "this cell)."
    )


def unfinished_message(function: str | None, needed_by: str | None = None) -> str:
    """What to do about an unfinished exercise: which one (its number from the checks'
    registry), and that the explorer follows without its cell being run again."""
    from labkit.checks.core import exercise_number

    who = f"{needed_by} needs" if needed_by else "The explorer runs your code and needs"
    if not function:  # nothing to wait for: a control change is what redraws
        return (
            f"{needed_by or 'The explorer'} raised NotImplementedError: an exercise it needs is "
            "not finished yet. Finish it above and run its cell, then change a control here "
            "(no need to re-run this cell)."
        )
    number = exercise_number(function)
    exercise = f"exercise {number} ({function})" if number else function
    return (
        f"{who} {exercise}, which is not finished yet. Finish it above and run its cell: this "
        "explorer then draws by itself (no need to re-run this cell)."
    )


# ----- a target typed without its leading space ------------------------------------------------
@dataclass(frozen=True)
class Spacing:
    """A target that lacks its leading space: what to say, and the target to offer instead."""

    message: str
    suggestion: str


def missing_space(lm, prompt: str, target: str, probs) -> Spacing | None:
    """A :class:`Spacing` when ``target`` ("London") should be the model's word " London".

    That is: the prompt does not end with a space, the target does not start with one, the
    spaced target is a single token, and the model gives it more probability (or the unspaced
    target is not a single token at all). None otherwise. ``probs``: the model's next-token
    probabilities after the prompt (vocab,).
    """
    if not target or target[0].isspace() or prompt[-1:].isspace():
        return None
    spaced = " " + target
    try:
        spaced_id = lm.token_id(spaced)
    except ValueError:
        return None
    try:
        target_id = lm.token_id(target)
    except ValueError:
        return Spacing(
            f"The target {target!r} is not a single token, but {spaced!r} (with the leading "
            "space the model writes after a word) is: use that.",
            spaced,
        )
    p_spaced, p_target = float(probs[spaced_id]), float(probs[target_id])
    if p_spaced <= p_target:
        return None
    return Spacing(
        f"The target {target!r} has no leading space. After a word the model writes the next "
        f"word with its space: p({spaced!r}) = {format_probability(p_spaced)}, "
        f"p({target!r}) = {format_probability(p_target)}. Type {spaced!r} (with the space) in "
        "the target box, or click the button.",
        spaced,
    )


# ----- progress while the student's code runs ---------------------------------------------------
PROGRESS_EVERY = 0.25  # seconds between two progress messages


@contextmanager
def forward_passes(lm, show: Callable[[int, float], None]) -> Iterator[list[int]]:
    """Count the model's forward passes while the ``with`` block runs (the final norm runs once
    per pass, whichever way the pass was started) and call ``show(passes, seconds)`` at most
    every :data:`PROGRESS_EVERY` seconds. Yields a one-item list: the count so far."""
    count, start, shown = [0], time.perf_counter(), [0.0]

    def seen(module, args) -> None:
        count[0] += 1
        now = time.perf_counter()
        if now - shown[0] >= PROGRESS_EVERY:
            shown[0] = now
            show(count[0], now - start)

    norm = getattr(lm, "final_norm", None)
    handle = norm.register_forward_pre_hook(seen) if norm is not None else None
    try:
        yield count
    finally:
        if handle is not None:
            handle.remove()


# ----- what an explorer computed, until the notebook changes -------------------------------------
class Cache:
    """The last ``size`` results by key; :meth:`clear` forgets them all."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key: Hashable):
        """The value stored under ``key`` (now the most recent), or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class NotebookWatch:
    """Follows the notebook for one explorer: after every cell the student runs, it empties the
    explorer's caches (``explorer.clear_caches()``), and when the explorer is waiting for an
    exercise (:meth:`wait_for`) whose function that cell has just (re)defined, it redraws
    (``explorer.update()``) once the cell has finished.

    Outside IPython it does nothing. Only the explorer of its class built last redraws by itself
    (an explorer cell that ran twice leaves an older, hidden copy behind). The watch holds the
    explorer weakly.
    """

    _latest: dict[type, weakref.ref] = {}

    def __init__(self, explorer) -> None:
        self._explorer = weakref.ref(explorer)
        NotebookWatch._latest[type(explorer)] = self._explorer
        self.waiting: tuple[str, object] | None = None  # (name, the object that raised)
        self._shell = _shell()
        # The cell that builds the explorer (IPython counts it before running it): what the
        # explorer computed while it ran stays cached when it ends.
        count = getattr(self._shell, "execution_count", None)
        self._built_in = count - 1 if isinstance(count, int) else None
        events = getattr(self._shell, "events", None)
        self._events = events
        if events is not None:
            events.register("post_run_cell", self._after_cell)

    def wait_for(self, function: str | None) -> None:
        """Redraw after a cell that defines ``function`` again (None: stop waiting)."""
        namespace = getattr(self._shell, "user_ns", None)
        if function is None or not isinstance(namespace, dict):
            self.waiting = None
            return
        self.waiting = (function, namespace.get(function))

    def _after_cell(self, result=None) -> None:
        explorer = self._explorer()
        if explorer is None:
            self.close()
            return
        if getattr(result, "execution_count", None) != self._built_in:
            explorer.clear_caches()
        if self.waiting is None or NotebookWatch._latest.get(type(explorer)) is not self._explorer:
            return
        namespace = getattr(self._shell, "user_ns", {})
        name, before = self.waiting
        if namespace.get(name) is before:
            return
        self.waiting = None
        _soon(explorer.update)

    def close(self) -> None:
        if self._events is not None:
            try:
                self._events.unregister("post_run_cell", self._after_cell)
            except ValueError:
                pass
            self._events = None


def _soon(action: Callable[[], None]) -> None:
    """Run ``action`` once the kernel has finished the current cell, or now outside a kernel's
    event loop."""

    def run() -> None:
        try:
            action()
        except Exception:  # an explorer reports its own errors; never break the kernel's loop
            pass

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        run()
    else:
        loop.call_soon(run)
