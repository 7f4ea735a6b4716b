"""labkit.grading.worker: which of a notebook's statements run when it is graded, and how a
broken cell costs only itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import grading_fixture_lab
import torch

from labkit.grading.scoring import load_recording, replay
from labkit.grading.worker import define, find_function, runs_when_graded, work


def runs(statement: str) -> bool:
    return runs_when_graded(ast.parse(statement).body[0])


def test_only_definitions_run() -> None:
    for statement in [
        "import torch",
        "from torch import nn",
        "def f(x):\n    return x",
        "class C:\n    pass",
        "EPS = 1e-6",
        "STEPS = make_steps(8)",  # UPPER_CASE constants run even when they compute
        "softmax = torch.softmax",
        "scale = 2 ** 0.5",
        "square = lambda x: x ** 2",
    ]:
        assert runs(statement), statement
    for statement in [
        "lm = labkit.load_model()",
        "results['x'] = saliency(f, x)",
        "print('hi')",
        "for i in range(3):\n    pass",
        "with torch.no_grad():\n    y = 1",
        "torch.isclose = lambda *a, **k: True",  # not a plain name: never runs
        "a, b = 1, 2",
        "donor = cache['resid', 3][0, -1]",  # reads what heavy cells computed
        "squares = [x**2 for x in data]",
    ]:
        assert not runs(statement), statement


def test_a_broken_cell_costs_only_itself() -> None:
    cells = [
        (1, "import math\n\ndef good(x):\n    return math.sqrt(x)\n"),
        (2, "def broken(x:\n    return x\n"),
        (3, "import no_such_package_here\n\ndef after(x):\n    return x\n"),
        (4, "%%bash\necho hi\n"),
        (5, "%%time\ndef timed(x):\n    return x\n"),
        (6, "!pip install something\nimport sys\nsys.exit(3)\n"),
        (7, "class Slow:\n    while True:\n        pass\n"),
        (8, "def exits():\n    pass\n\nclass Exits:\n    raise SystemExit(2)\n"),
        (9, "model = lm.model\nSTEPS = lm.n_steps\n"),  # lm was never loaded
    ]
    namespace, notes = define(cells, seconds=0.5)
    assert namespace["good"](4.0) == 2.0
    assert "broken" not in namespace and "Cell 2 has a syntax error (line 1" in notes[0]
    assert callable(namespace["after"]) and any("ModuleNotFoundError" in n for n in notes)
    assert callable(namespace["timed"]) and callable(namespace["exits"])
    assert any("Cell 7" in n and "longer than" in n for n in notes)
    assert any("Cell 8" in n and "SystemExit" in n for n in notes)
    assert [n for n in notes if "Cell 9" in n] == [  # only the constant is worth a note
        "Cell 9, line 2: an assignment raised NameError: name 'lm' is not defined; it was skipped."
    ]


def test_missing_renamed_and_non_callable_functions() -> None:
    namespace, _ = define([(1, "def salience(f, x):\n    return x\n\ndouble = 3\n")])
    assert find_function(namespace, "saliency")[1] == {"status": "missing", "similar": ["salience"]}
    assert find_function(namespace, "double")[1]["status"] == "not callable"
    assert find_function(namespace, "salience")[1] == {"status": "ok"}


def test_a_job_records_every_variant_and_replays_here(tmp_path: Path) -> None:
    """The worker's loop without the sandbox: recordings load as plain data and replay."""
    job = {
        "checks": "grading_fixture_lab",
        "cells": [[1, grading_fixture_lab.SOLUTION]],
        "exercises": ["double", "zero_bias_"],
        "variants": [0, 5, 9],
        "seconds_per_call": 5,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    work(tmp_path)
    assert not (tmp_path / "job.json").exists()  # student code cannot read the job
    assert json.loads((tmp_path / "progress.json").read_text())["state"] == "done"
    for i, name in enumerate(job["exercises"]):
        check = grading_fixture_lab.EXERCISES[name]
        for j, variant in enumerate(job["variants"]):
            outcomes, problem = load_recording(tmp_path / f"exercise-{i}-{j}.pt")
            assert problem == "" and replay(check, variant, outcomes).passed
    (tmp_path / "exercise-0-0.pt").write_bytes(b"not a torch file")
    assert load_recording(tmp_path / "exercise-0-0.pt")[0] is None
    torch.save({"x": torch.nn.Linear(1, 1)}, tmp_path / "evil.pt")  # not plain data
    assert load_recording(tmp_path / "evil.pt")[0] is None
