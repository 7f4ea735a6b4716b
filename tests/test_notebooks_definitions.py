"""labkit.notebooks.run_definitions: a notebook's definitions, exactly as Run All leaves them.

The one rule that the grader's workers, the tests and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.checks.guards import time_limit
from labkit.notebooks import is_definition, notebook_definitions, run_definitions

ROOT = Path(__file__).resolve().parents[1]


def defs(*cells: str, **kwargs):
    return run_definitions(list(enumerate(cells, start=1)), **kwargs)


def runs(statement: str) -> bool:
    import ast

    return is_definition(ast.parse(statement).body[0])


def test_only_definitions_run() -> None:
    for statement in [
        "import torch",
        "from torch import nn",
        "def f(x):\n    return x",
        "class C:\n    pass",
        "EPS = 1e-6",
        "softmax = torch.softmax",
        "scale = 2 ** 0.5",
        "square = lambda x: x ** 2",
        "del f",
        "STEPS = make_steps(8)",  # an UPPER_CASE constant runs even when it computes
        "PATTERN = re.compile('x')",
    ]:
        assert runs(statement), statement
    for statement in [
        "lm = labkit.load_model()",
        "results['x'] = saliency(f, x)",
        "print('hi')",
        "for i in range(3):\n    pass",
        "with torch.no_grad():\n    y = 1",
        "torch.isclose = lambda *a, **k: True",  # not a plain name
        "a, b = 1, 2",
        "del results['x']",
        "squares = [x**2 for x in data]",
    ]:
        assert not runs(statement), statement


def test_a_name_deleted_or_redefined_later_is_what_run_all_leaves() -> None:
    found = defs(
        "def f(x):\n    return 1\n",
        "def g(x):\n    return 2\n",
        "def f(x):\n    return 3\n",
        "del g\n",
        "h = 4\n",
        "def compute():\n    return 5\n",
        "h = compute()\n",  # rebinds h to what only Run All knows
    )
    assert found.stopped_at is None
    assert found.namespace["f"](0) == 3
    assert "g" not in found.namespace and "h" not in found.namespace


def test_no_compiler_flags_come_from_the_grader() -> None:
    """This module has no `from __future__ import annotations`, but the worker's module had
    one: an annotation naming something undefined fails at definition, as in Jupyter."""
    found = defs("def f(x: Undefined) -> None:\n    return x\n", "def g():\n    pass\n")
    assert found.stopped_at == (1, 1) and "g" not in found.namespace
    ok = defs("from __future__ import annotations\n", "def f(x: Undefined):\n    return x\n")
    assert ok.stopped_at is None and callable(ok.namespace["f"])  # the notebook's own flag


def test_run_all_stops_where_a_cell_fails_in_order() -> None:
    used_early = defs(
        "import math\n",
        "value = answer(4)\n",  # answer is defined below: Run All stops here
        "def answer(x):\n    return math.sqrt(x)\n",
    )
    assert used_early.stopped_at == (2, 1) and "answer" not in used_early.namespace
    assert "`answer` is used before" in used_early.notes[-1]

    raising = defs("def a():\n    pass\n", "raise RuntimeError('stop')\n", "def b():\n    pass\n")
    assert raising.stopped_at == (2, 1) and "a" in raising.namespace
    assert "b" not in raising.namespace

    syntax = defs("def a():\n    pass\n", "def broken(x:\n", "def b():\n    pass\n")
    assert syntax.stopped_at == (2, 1) and "syntax error" in syntax.notes[-1]
    assert "b" not in syntax.namespace


def test_computed_names_make_later_definitions_skip_not_stop() -> None:
    found = defs(
        "lm = load_model()\n",  # load_model is not defined: but this cell is a call...
        "model = lm.model\n",
        "def uses(x=lm):\n    return x\n",
        "def fine():\n    return 1\n",
    )
    # `lm = load_model()` reads an undefined name, so Run All would stop there too.
    assert found.stopped_at == (1, 1)
    found = defs(
        "import labkit\n",
        "lm = labkit.tiny.tiny_model()\n",
        "model = lm.model\n",
        "def uses(x=lm):\n    return x\n",
        "def fine():\n    return 1\n",
    )
    assert found.stopped_at is None
    assert "model" not in found.namespace and "uses" not in found.namespace
    assert found.namespace["fine"]() == 1


def test_a_constant_that_cannot_be_computed_is_left_undefined_not_a_stop() -> None:
    found = defs(
        "import re\n\ndef load():\n    raise RuntimeError('needs the default model')\n",
        "PATTERN = re.compile('a+')\nMODEL = load()\n",  # computes; the second one fails
        "lm = load()\nN_LAYERS = lm.n_layers\n",  # lm: only Run All knows it
        "def f(x):\n    return PATTERN.match(x) is not None\n",
    )
    assert found.stopped_at is None and found.namespace["f"]("aa")
    assert "MODEL" not in found.namespace and "N_LAYERS" not in found.namespace
    assert "could not be computed" in found.notes[0] and "RuntimeError" in found.notes[0]


def test_magics_other_languages_and_failed_imports() -> None:
    found = defs(
        "%%bash\necho hi\n",
        "%%time\ndef timed(x):\n    return x\n",
        "!pip install something\nimport sys\n",
        "import no_such_package_here\n\ndef after(x):\n    return x\n",
        "%matplotlib inline\ndisplay(1)\n",
    )
    assert found.stopped_at is None
    assert callable(found.namespace["timed"]) and callable(found.namespace["after"])
    assert any("ModuleNotFoundError" in n for n in found.notes)


def test_a_statement_that_never_ends_stops_definitions() -> None:
    found = defs(
        "class Slow:\n    while True:\n        pass\n", time_limit=time_limit, statement_seconds=0.3
    )
    assert found.stopped_at == (1, 1) and "longer than" in found.notes[-1]


@pytest.mark.parametrize("name", ["01_attribution", "02_causal_tracing", "03_attribution_patching"])
def test_every_solution_notebook_defines_cleanly(name: str) -> None:
    namespace = notebook_definitions(ROOT / "solutions" / f"{name}.ipynb")
    assert namespace["__name__"].startswith("notebook:")
