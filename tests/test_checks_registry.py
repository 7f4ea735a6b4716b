"""What holds for every lab's checks at once: one registry, honest points, current recordings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.checks import LabHarness

from labkit.checks.core import run_check
from labkit.grading.answers import write_recordings
from labkit.grading.scoring import structure
from labkit.notebooks import read_nbformat

ROOT = Path(__file__).resolve().parents[1]
LABS = ("01", "02", "03")


@pytest.fixture(scope="module", params=LABS)
def harness(request) -> LabHarness:
    return LabHarness(request.param)


def test_exercises_are_registered_once_in_notebook_order(harness: LabHarness) -> None:
    lab = harness.module.LAB
    numbers = [check.number for check in lab.exercises.values()]
    assert numbers == sorted(numbers, key=lambda n: tuple(int(p) for p in n.split(".")))
    assert all(n.startswith(f"{int(harness.lab)}.") for n in numbers)
    assert sorted(harness.module.__all__) == sorted(set(harness.module.__all__))
    assert set(lab.check_names()) <= set(harness.module.__all__)
    notebook = next((ROOT / "labs").glob(f"{harness.lab}_*.ipynb"))
    called = set(re.findall(r"checks\.(check_\w+)\(", notebook.read_text()))
    assert called == set(lab.check_names())  # every check is called, and only those


def test_a_checks_points_are_the_sum_of_its_parts(harness: LabHarness) -> None:
    """The maximum a student sees before an attempt equals the maximum after it."""
    for check in harness.exercises.values():
        parts = structure(check, harness.answers)
        assert sum(p for _, p in parts) == pytest.approx(check.points), check.number


def test_an_unattempted_check_shows_the_same_maximum_as_a_passed_one(harness: LabHarness) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name, check in harness.exercises.items():
        before = run_check(check, stub)
        after = run_check(check, harness.solution[name])
        assert not before.attempted and after.passed, (name, after.report())
        assert before.max_score == after.max_score, name


def test_the_recorded_answers_are_current() -> None:
    """Rebuilt from the solution notebooks, every lab's recording is unchanged."""
    assert write_recordings(ROOT / "solutions", check_only=True) == []


def test_every_exercise_stub_in_the_labs_has_a_check() -> None:
    for path in sorted((ROOT / "labs").glob("*.ipynb")):
        lab = LabHarness(path.name[:2])
        stubs = {
            m.group(1)
            for cell in read_nbformat(path).cells
            if cell.cell_type == "code" and "NotImplementedError" in cell.source
            for m in re.finditer(r"^def (\w+)\(", cell.source, re.MULTILINE)
        }
        assert stubs <= set(lab.exercises), stubs - set(lab.exercises)


def _none(*args, **kwargs):
    return None


def _first(*args, **kwargs):
    return args[0] if args else None


def _zero(*args, **kwargs):
    return 0.0


def _zeros(*args, **kwargs):
    import torch

    shaped = [a for a in args if isinstance(a, torch.Tensor)]
    return torch.zeros_like(shaped[0], dtype=torch.float32) if shaped else torch.zeros(1)


def _copy_inputs(*args, **kwargs):
    return tuple(args)


@pytest.mark.parametrize("trivial", [_none, _first, _zero, _zeros, _copy_inputs])
def test_a_trivial_answer_earns_nothing(harness: LabHarness, trivial) -> None:
    """No part of any check passes for an answer that computes nothing."""
    earned = {}
    for name, check in harness.exercises.items():
        result = run_check(check, trivial)
        if result.score > 0:
            earned[name] = [p.name for p in result.parts if p.passed]
    assert earned == {}, earned
