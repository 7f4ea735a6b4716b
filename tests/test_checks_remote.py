"""labkit.checks.remote: a check runs here while the student's code runs in a worker process,
and nothing the student's code does there (lying, peeking, exiting, looping) fools the check."""

from __future__ import annotations

import textwrap
import time

import pytest
import torch

from labkit.checks import remote
from labkit.checks.core import Checker, check, run_check
from labkit.tiny import tiny_model


@check("Exercise 0.1: doubling")
def check_double(fn, t: Checker) -> None:
    with t.part("arange(4)"):
        x = torch.arange(4.0)
        expected = 2 * x  # computed before the call, as every check does
        t.close(t.call(fn, x), expected, "doubling arange(4)")
    with t.part("a second call"):
        t.close(t.call(fn, torch.ones(2)), torch.full((2,), 2.0), "doubling ones(2)")


@check("Exercise 0.2: a function that returns a function")
def check_maker(fn, t: Checker) -> None:
    made = t.call(fn, 3.0)
    t.true(callable(made), "it returns a function")
    t.close(t.call(made, torch.ones(2)), torch.full((2,), 3.0), "the returned function")


@check("Exercise 0.3: a model", timeout=60)
def check_model(fn, t: Checker) -> None:
    lm = t.watch(tiny_model("llama"))
    ids = lm.to_tokens("abc")
    with torch.no_grad():
        expected = lm.model(ids).logits[0, -1]
    t.close(t.call(fn, lm, ids), expected, "the last logits", atol=1e-5)


@check("Exercise 0.4: randomise in place")
def check_inplace(fn, t: Checker) -> None:
    net = torch.nn.Linear(4, 4)
    t.call(fn, net)
    t.true(bool((net.weight == 7).all()), "every weight is now 7")


def grade(check_, source: str, name: str, timeout: float | None = None):
    """Grade ``name`` from ``source`` in a worker; returns (result, runner) after stopping it."""
    runner = remote.start_worker([textwrap.dedent(source)])
    runner.started_grading = time.monotonic()
    try:
        body_timeout = timeout if timeout is not None else check_.timeout
        return run_check(
            check_.body,
            check_.check_name,
            1,
            runner.function(name),
            runner=runner,
            timeout=body_timeout,
        ), runner
    finally:
        runner.close()


def test_right_and_wrong_answers_grade_as_in_the_notebook() -> None:
    result, _ = grade(check_double, "def double(x):\n    return 2 * x", "double")
    assert result.passed and result.score == 2
    result, _ = grade(check_double, "def double(x):\n    return 3 * x", "double")
    assert not result.passed and "expected 0, got 0" not in result.messages[0]
    assert "doubling arange(4)" in result.messages[0]


def test_monkeypatching_torch_in_the_worker_changes_nothing() -> None:
    source = """
    import torch
    torch.isclose = lambda *a, **k: torch.ones(4, dtype=torch.bool)
    torch.allclose = lambda *a, **k: True
    def double(x):
        return 3 * x
    """
    result, _ = grade(check_double, source, "double")
    assert not result.passed


def test_peeking_at_the_callers_frames_finds_no_expected_value() -> None:
    source = """
    import inspect, torch
    def double(x):
        for frame in inspect.stack():
            for name, value in frame.frame.f_locals.items():
                if name == "expected" and isinstance(value, torch.Tensor):
                    return value.clone()
        return torch.zeros_like(x)
    """
    result, _ = grade(check_double, source, "double")
    assert not result.passed  # the expected values live in the grader's process only


def test_a_lying_tensor_subclass_is_rejected() -> None:
    source = """
    import torch
    class Liar(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.isclose, torch.allclose, torch.equal):
                return True
            return super().__torch_function__(func, types, args, kwargs or {})
    def double(x):
        return (5 * x).as_subclass(Liar)
    """
    result, _ = grade(check_double, source, "double")
    assert not result.passed and "subclass" in result.messages[0]


def test_exiting_ends_only_this_submissions_worker() -> None:
    result, runner = grade(check_double, "import os\ndef double(x):\n    os._exit(3)", "double")
    assert not result.passed and "ended its grading process" in result.messages[0]
    assert "exit code 3" in result.messages[0]
    assert "Not run" in result.parts[1].message
    assert runner.process.poll() is not None


def test_an_infinite_loop_is_stopped_even_if_it_ignores_the_alarm(monkeypatch) -> None:
    monkeypatch.setattr(remote, "GRACE_SECONDS", 1.0)
    source = """
    import signal
    def double(x):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    """
    result, runner = grade(check_double, source, "double", timeout=0.5)
    assert time.monotonic() - runner.started_grading < 10
    assert not result.passed and "stopped after 0.5 s" in result.messages[0]
    assert runner.process.poll() is not None


def test_returned_functions_are_called_in_the_worker() -> None:
    source = "def make(c):\n    return lambda x: c * x"
    assert grade(check_maker, source, "make")[0].passed
    source = "def make(c):\n    return lambda x: (c + 1) * x"
    assert not grade(check_maker, source, "make")[0].passed


def test_models_are_sent_and_watched() -> None:
    source = """
    import torch
    def last_logits(lm, ids):
        with torch.no_grad():
            return lm.model(ids).logits[0, -1]
    """
    assert grade(check_model, source, "last_logits")[0].passed
    source = """
    import torch
    def last_logits(lm, ids):
        lm.blocks[0].register_forward_hook(lambda m, i, o: None)
        with torch.no_grad():
            return lm.model(ids).logits[0, -1]
    """
    result, _ = grade(check_model, source, "last_logits")
    assert not result.passed and "hook(s) registered" in result.messages[0]


def test_a_module_changed_in_place_comes_back() -> None:
    source = """
    import torch
    def set_seven(net):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(7.0)
    """
    assert grade(check_inplace, source, "set_seven")[0].passed


def test_missing_functions_and_broken_cells_are_named() -> None:
    runner = remote.start_worker(["def double(x)\n    return 2 * x", "def other():\n    pass"])
    try:
        assert "other" in runner.defined and "SyntaxError" in runner.cell_errors[0]
        result = run_check(check_double.body, "d", 1, runner.function("double"), runner=runner)
        assert not result.passed and "does not define `double`" in result.messages[0]
    finally:
        runner.close()


@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)", "raise KeyboardInterrupt"])
def test_a_cell_that_exits_at_import_time_does_not_stop_the_worker(source) -> None:
    runner = remote.start_worker([source, "def double(x):\n    return 2 * x"])
    try:
        assert "double" in runner.defined
        result = run_check(check_double.body, "d", 1, runner.function("double"), runner=runner)
        assert result.passed
    finally:
        runner.close()
