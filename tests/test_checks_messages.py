"""Every outcome of labkit.checks.core, word for word, against a recorded snapshot.

tests/test_checks_core.py asserts what each outcome must contain. This file pins the whole of
it: for each scenario (a small check and a student function) the result's pass/fail, score,
points per part, every message and the report a student reads are compared with
``tests/data/check_messages.json``, so a changed word, a lost hint or a point given where none
is due shows up as a diff to review. Record again after a deliberate change:
    LABKIT_RECORD_MESSAGES=1 pytest tests/test_checks_messages.py
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.checks import one_exercise
from support.snapshots import stored_snapshots

from labkit.checks.core import DEFAULT_TIMEOUT, Checker, Results, run_check, skip_if_unattempted
from labkit.checks.results import CheckFailed, CheckResult, NotAttempted, TimedOut

check = one_exercise

SNAPSHOTS = Path(__file__).parent / "data" / "check_messages.json"
RECORD = os.environ.get("LABKIT_RECORD_MESSAGES") == "1"
X = torch.arange(4.0)  # (4,)


# ----- checks that use every comparison ----------------------------------------------------------
@check("close", points=2)
def check_close(fn, t: Checker) -> None:
    t.close(
        t.call(fn, X),
        2 * X,
        "doubling arange(4)",
        hint="multiply by two",
        mistakes=[(X**2, "You squared."), (torch.zeros(4), "You returned zeros.")],
    )


@check("close, scaled")
def check_scaled(fn, t: Checker) -> None:
    t.close(t.call(fn), torch.tensor([1000.0]), "a big number", atol=1e-3, rtol=0.0, scale=100)


@check("scalar")
def check_scalar(fn, t: Checker) -> None:
    t.close(t.scalar(t.call(fn), "one number"), 1.5, "one number")


@check("true and fail", points=3)
def check_true(fn, t: Checker) -> None:
    got = t.call(fn)
    with t.part("is positive", points=1):
        t.true(got > 0, "the number is positive")
    with t.part("is small", points=2):
        t.true(got < 10, "the number is below 10", hint="divide by ten")
    t.fail("nothing else", "this line fails after the parts") if got == 5 else None
    if got == 6:
        t.fail("nothing else", "with a hint", hint="six is wrong")


@check("parts", points=5)
def check_parts(fn, t: Checker) -> None:
    with t.part("small", points=1):
        t.close(t.call(fn, torch.tensor([1.0])), torch.tensor([2.0]), "fn([1])")
    with t.part("large", points=3):
        t.close(t.call(fn, torch.tensor([100.0])), torch.tensor([200.0]), "fn([100])")
    with t.part("never", points=0.5):
        pass


@check("slow", timeout=0.3)
def check_slow(fn, t: Checker) -> None:
    with t.part("first", points=1):
        t.call(fn, 0.0)
    with t.part("second", points=2):
        t.call(fn, 1.0)
    with t.part("third", points=4):
        t.call(fn, 0.0)


@check("no parts, fails outside")
def check_outside(fn, t: Checker) -> None:
    with t.part("fine", points=2):
        t.call(fn)
    t.true(False, "a condition after the parts")


@check("broken import")
def check_import(fn, t: Checker) -> None:
    import labkit_no_such_package  # noqa: F401


@check("broken body")
def check_broken(fn, t: Checker) -> None:
    raise ZeroDivisionError("oops")


@check("not attempted in a part", points=2)
def check_stub_part(fn, t: Checker) -> None:
    with t.part("one", points=1):
        t.true(True, "always")
    with t.part("two", points=3):
        t.call(fn)


def stub():
    raise NotImplementedError("Exercise: replace this line with your code.")


@check("relative tolerance")
def check_relative(fn, t: Checker) -> None:
    t.close(
        t.call(fn),
        torch.tensor([1000.0]),
        "about 1000",
        mistakes=[(torch.tensor([2000.0]), "doubled")],
    )


@check("tensor without a hint")
def check_tensor(fn, t: Checker) -> None:
    t.tensor(t.call(fn), "a tensor of shape (2,)", shape=(2,))


@check("slow, then outside any part", timeout=0.3)
def check_slow_outside(fn, t: Checker) -> None:
    with t.part("slow", points=1):
        t.call(fn)
    t.call(fn)


@check("seeded")
def check_seeded(fn, t: Checker) -> None:
    expected = torch.randn(3, generator=torch.Generator().manual_seed(0))
    t.true(torch.equal(torch.randn(3), expected), "torch is seeded with 0 in the notebook")
    t.true(t.variant == 0, "a notebook check runs variant 0")


@check("times out as a whole", points=3)
def check_times_out(fn, t: Checker) -> None:
    raise TimedOut()


@check("broken after a part", points=2)
def check_broken_late(fn, t: Checker) -> None:
    with t.part("fine", points=2):
        t.call(fn)
    raise ZeroDivisionError("late")


@check("import error without a name")
def check_import_message(fn, t: Checker) -> None:
    raise ImportError("DLL load failed while importing _C")


@check("import of a submodule")
def check_import_submodule(fn, t: Checker) -> None:
    import labkit.no_such_module  # noqa: F401


@check("variant")
def check_variant(fn, t: Checker) -> None:
    t.true(t.seed(1) == 1, "seed 1 is 1 in the notebook")


# name -> (check, student function), and run_check's own argument handling
SCENARIOS: dict[str, Callable[[], CheckResult]] = {
    "close: right": lambda: check_close(lambda x: x * 2, quiet=True),
    "close: wrong, hint": lambda: check_close(lambda x: x * 3, quiet=True),
    "close: a named mistake": lambda: check_close(lambda x: x**2, quiet=True),
    "close: a mistake within atol only": lambda: check_close(
        lambda x: torch.full((4,), 5e-5), quiet=True
    ),
    "close: one entry off": lambda: check_close(lambda x: x * 2 + (x == 2).float(), quiet=True),
    "close: shape": lambda: check_close(lambda x: (x * 2)[:3], quiet=True),
    "close: 0-d for 4": lambda: check_close(lambda x: torch.tensor(2.0), quiet=True),
    "close: int tensor": lambda: check_close(lambda x: (x * 2).long(), quiet=True),
    "close: complex": lambda: check_close(lambda x: (x * 2).to(torch.complex64), quiet=True),
    "close: float16": lambda: check_close(lambda x: (x * 2).half(), quiet=True),
    "close: bfloat16": lambda: check_close(lambda x: (x * 2).bfloat16(), quiet=True),
    "close: nan": lambda: check_close(lambda x: x * float("nan"), quiet=True),
    "close: list": lambda: check_close(lambda x: (x * 2).tolist(), quiet=True),
    "close: int": lambda: check_close(lambda x: 3, quiet=True),
    "close: subclass": lambda: check_close(lambda x: torch.nn.Parameter(x * 2), quiet=True),
    "close: meta": lambda: check_close(lambda x: torch.empty(4, device="meta"), quiet=True),
    "close: sparse": lambda: check_close(lambda x: (x * 2).to_sparse(), quiet=True),
    "close: numpy": lambda: check_close(lambda x: (x * 2).numpy(), quiet=True),
    "close: numpy ints": lambda: check_close(lambda x: np.array([0, 2, 4, 6]), quiet=True),
    "close: numpy strings": lambda: check_close(lambda x: np.array(["a"]), quiet=True),
    "close: None": lambda: check_close(lambda x: None, quiet=True),
    "scaled: within 0.1": lambda: check_scaled(lambda: torch.tensor([1000.05]), quiet=True),
    "scaled: off by 0.2": lambda: check_scaled(lambda: torch.tensor([1000.2]), quiet=True),
    "scaled: a 0-d tensor": lambda: check_scaled(lambda: torch.tensor(1000.0), quiet=True),
    "scaled: a float": lambda: check_scaled(lambda: 1000.0, quiet=True),
    "scaled: True": lambda: check_scaled(lambda: True, quiet=True),
    "scalar: float": lambda: check_scalar(lambda: 1.5, quiet=True),
    "scalar: int": lambda: check_scalar(lambda: 1, quiet=True),
    "scalar: tensor": lambda: check_scalar(lambda: torch.tensor([1.5]), quiet=True),
    "scalar: numpy float32": lambda: check_scalar(lambda: np.float32(1.5), quiet=True),
    "scalar: numpy complex": lambda: check_scalar(lambda: np.complex64(1.5), quiet=True),
    "scalar: complex tensor": lambda: check_scalar(lambda: torch.tensor(1.5j), quiet=True),
    "scalar: two values": lambda: check_scalar(lambda: torch.tensor([1.5, 2.0]), quiet=True),
    "scalar: inf": lambda: check_scalar(lambda: float("inf"), quiet=True),
    "scalar: string": lambda: check_scalar(lambda: "1.5", quiet=True),
    "scalar: bool": lambda: check_scalar(lambda: True, quiet=True),
    "true: right": lambda: check_true(lambda: 3, quiet=True),
    "true: first part fails": lambda: check_true(lambda: -1, quiet=True),
    "true: second part fails, hint": lambda: check_true(lambda: 11, quiet=True),
    "true: fails after the parts": lambda: check_true(lambda: 5, quiet=True),
    "true: fails after the parts, hint": lambda: check_true(lambda: 6, quiet=True),
    "parts: right": lambda: check_parts(lambda x: x * 2, quiet=True),
    "parts: half right": lambda: check_parts(lambda x: torch.where(x < 10, 2 * x, x), quiet=True),
    "parts: all wrong": lambda: check_parts(lambda x: x, quiet=True),
    "slow: the second call": lambda: check_slow(lambda s: time.sleep(s * 5), quiet=True),
    "slow: the first call": lambda: check_slow(lambda s: time.sleep(5), quiet=True),
    "outside: fails": lambda: check_outside(lambda: None, quiet=True),
    "outside: student raises": lambda: check_outside(lambda: 1 / 0, quiet=True),
    "import: missing package": lambda: check_import(lambda: None, quiet=True),
    "broken: its own error": lambda: check_broken(lambda: None, quiet=True),
    "stub: whole check": lambda: check_close(lambda x: stub(), quiet=True),
    "stub: in a part": lambda: check_stub_part(stub, quiet=True),
    "arguments: none": lambda: check_close(quiet=True),
    "arguments: two": lambda: check_close(lambda x: x, 3, quiet=True),
    "arguments: keyword": lambda: check_close(lambda x: x, extra=3, quiet=True),
    "arguments: a number": lambda: check_close(42, quiet=True),
    "arguments: a class": lambda: check_close(torch.Tensor, quiet=True),
    "relative: within rtol": lambda: check_relative(lambda: torch.tensor([1000.5]), quiet=True),
    "relative: a mistake within rtol": lambda: check_relative(
        lambda: torch.tensor([2001.0]), quiet=True
    ),
    "scaled: (1, 1) for (1,)": lambda: check_scaled(lambda: torch.tensor([[1000.0]]), quiet=True),
    "tensor: a list": lambda: check_tensor(lambda: [1.0, 2.0], quiet=True),
    "tensor: wrong shape": lambda: check_tensor(lambda: torch.zeros(3), quiet=True),
    "tensor: nan": lambda: check_tensor(lambda: torch.tensor([1.0, float("nan")]), quiet=True),
    "tensor: meta": lambda: check_tensor(lambda: torch.empty(2, device="meta"), quiet=True),
    "slow, then outside": lambda: check_slow_outside(lambda: time.sleep(5), quiet=True),
    "seeded: notebook": lambda: check_seeded(lambda: None, quiet=True),
    "times out as a whole": lambda: check_times_out(lambda: None, quiet=True),
    "broken after a part": lambda: check_broken_late(lambda: None, quiet=True),
    "import error without a name": lambda: check_import_message(lambda: None, quiet=True),
    "import of a submodule": lambda: check_import_submodule(lambda: None, quiet=True),
    "run_check: no function": lambda: run_check(check_close, None),
    "run_check: variant": lambda: run_check(check_variant, lambda: None, variant=3),
}


def snapshot(result: CheckResult) -> dict:
    """Everything a result says, as JSON (the time it took left out)."""
    assert isinstance(result, CheckResult)
    return {
        "name": result.name,
        "passed": result.passed,
        "attempted": result.attempted,
        "score": result.score,
        "max_score": result.max_score,
        "messages": [_no_line_numbers(m) for m in result.messages],
        "parts": [[p.name, p.points, p.passed, _no_line_numbers(p.message)] for p in result.parts],
        "report": _no_line_numbers(result.report()),
    }


def _no_line_numbers(text: str) -> str:
    """A student's traceback names a line of this file: keep the words, not the number."""
    return re.sub(r"line \d+", "line N", text)


@pytest.fixture(scope="module")
def stored():
    yield from stored_snapshots(SNAPSHOTS, RECORD)


@pytest.mark.parametrize("name", SCENARIOS)
def test_outcome_as_recorded(name: str, stored: dict) -> None:
    got = json.loads(json.dumps(snapshot(SCENARIOS[name]())))
    if RECORD:
        stored[name] = got
    assert got == stored.get(name), f"{name}: {json.dumps(got, indent=1)}"


def test_the_snapshot_holds_every_scenario_and_no_other(stored: dict) -> None:
    assert sorted(stored) == sorted(SCENARIOS)


# ----- what a snapshot cannot show ------------------------------------------------------------
def test_the_decorator_keeps_its_settings() -> None:
    assert check_close.check_name.endswith(": close") and check_close.points == 2
    assert check_slow.timeout == 0.3 and check_close.timeout == 10.0
    assert check_close.body.__name__ == "check_close" and check_close.name == "close"


def test_slowest_call_is_the_longest_call() -> None:
    t = Checker("timing")
    assert t.slowest_call == 0.0
    t.call(lambda: None)
    assert 0.0 < t.slowest_call < 0.5
    t.call(lambda: time.sleep(0.2))
    t.call(lambda: None)
    assert 0.2 <= t.slowest_call < 1.5


def test_defaults_of_the_decorator_and_the_checker() -> None:
    @check("defaults")
    def check_defaults(fn, t: Checker) -> None:
        with t.part("one"):
            t.true(t.seed() == 0, "seed() is 0 in the notebook")

    assert check_defaults.check_name.endswith(": defaults") and check_defaults.points == 1.0
    assert check_defaults.timeout == DEFAULT_TIMEOUT
    assert check_defaults.body.__name__ == "check_defaults"
    result = check_defaults(lambda: None, quiet=True)
    assert result.passed and result.parts[0].points == 1.0 and result.max_score == 1.0


def test_hidden_variants_have_fixed_seeds_and_picks() -> None:
    # The grader records hidden variants; their seeds must never change between versions.
    assert [Checker("x", variant=v).seed(o) for v, o in [(1, 0), (1, 3), (5000, 7)]] == [
        1_000_003,
        1_023_760,
        705_103_139,
    ]
    picks = [Checker("x", variant=9).choice(range(1000)) for _ in range(2)]
    assert picks[0] == picks[1] == random.Random(9).choice(list(range(1000)))


def test_the_time_a_check_took_is_measured() -> None:
    started = time.perf_counter()
    result = check_close(lambda x: (time.sleep(0.1), x * 2)[1], quiet=True)
    assert 0.1 <= result.seconds <= time.perf_counter() - started


def test_a_name_error_inside_a_function_from_another_cell_is_shown() -> None:
    namespace = {"skip_if_unattempted": skip_if_unattempted}
    exec(compile("def uses_a_typo():\n    return typo_name\n", "<cell 1>", "exec"), namespace)
    cell = 'with skip_if_unattempted("the plot"):\n    uses_a_typo()\n'
    with pytest.raises(NameError, match="typo_name"):
        exec(compile(cell, "<cell 2>", "exec"), namespace)


def test_parts_and_calls_are_numbered_from_one() -> None:
    t, keys = Checker("keys"), []
    t.runner.call = lambda checker, fn, args, kwargs: keys.append(checker._call_key())
    t.call(print)
    with t.part("a"):
        t.call(print)
        t.call(print)
    with t.part("b"):
        t.call(print)
    assert keys == ["0/1", "1/1", "1/2", "2/1"]


def test_after_a_timeout_every_later_call_stops_with_the_same_reason() -> None:
    t = Checker("stops", timeout=0.2)
    with t.part("slow"):
        t.call(time.sleep, 2)
    with t.part("later"):
        t.call(print)
    assert [p.passed for p in t.parts] == [False, None]
    assert t.parts[1].message == "Not run: an earlier call took too long."


def test_a_model_is_watched_once_and_other_things_not_at_all() -> None:
    t, net = Checker("watch"), torch.nn.Linear(2, 2)
    assert t.watch(net) is net and t.watch(net) is net and t.watch("not a model") == "not a model"
    assert len(t._watched) == 1 and t._watched[0].module is net
    t.watch(torch.nn.Linear(2, 2), "another")
    assert [w.name for w in t._watched] == ["the model", "another"]


def test_numpy_results_are_copied_not_shared() -> None:
    array = np.array([0.0, 2.0, 4.0, 6.0])
    got = Checker("copy").tensor(array, "an array")
    array[0] = 99.0
    assert got[0] == 0.0


def test_a_mistake_matches_within_the_tolerance_only() -> None:
    t = Checker("mistakes")
    with pytest.raises(CheckFailed, match="zeros"):
        t.close(torch.full((2,), 5e-5), torch.ones(2), "x", mistakes=[(torch.zeros(2), "zeros")])
    with pytest.raises(CheckFailed) as raised:
        t.close(torch.full((2,), 5e-3), torch.ones(2), "x", mistakes=[(torch.zeros(2), "zeros")])
    assert "zeros" not in str(raised.value)


def test_results_and_skips_say_what_to_run(capsys) -> None:
    results = Results(a=1)
    assert results["a"] == 1
    with skip_if_unattempted("the plot"):
        results["missing"]
    with skip_if_unattempted():
        stub()
    cell = 'with skip_if_unattempted("a cell"):\n    raise NotImplementedError("in a cell")\n'
    exec(compile(cell, "<cell>", "exec"), {"skip_if_unattempted": skip_if_unattempted})
    with skip_if_unattempted("names"):
        undefined_name  # noqa: B018, F821
    assert capsys.readouterr().out.splitlines() == [
        "(skipped) the plot: results['missing'] is not there yet: run the cell that computes it"
        " first (or finish its exercise).",
        "(skipped) this cell: stub() is not implemented yet: finish it above, then rerun this "
        "cell.",
        "(skipped) a cell: an exercise it uses is not done yet: finish it above, then rerun this "
        "cell.",
        "(skipped) names: undefined_name is not defined yet. Run the cells above this one first"
        " (Run > Run All Above Selected Cell).",
    ]


def test_not_attempted_propagates_from_the_body() -> None:
    @check("raises not attempted")
    def check_later(fn, t):
        raise NotAttempted("later")

    result = run_check(check_later, lambda: None)
    assert not result.attempted and result.max_score == 1.0


def test_a_skip_names_the_innermost_unfinished_function(capsys) -> None:
    namespace = {"skip_if_unattempted": skip_if_unattempted}
    cell_1 = (
        "def outer():\n    return middle()\n\n"
        "def middle():\n    return inner()\n\n"
        "def inner():\n    raise NotImplementedError('Exercise')\n"
    )
    exec(compile(cell_1, "<cell 1>", "exec"), namespace)
    cell_2 = 'with skip_if_unattempted("the plot"):\n    outer()\n'
    exec(compile(cell_2, "<cell 2>", "exec"), namespace)
    assert capsys.readouterr().out == (
        "(skipped) the plot: inner() is not implemented yet: finish it above, then rerun this "
        "cell.\n"
    )
