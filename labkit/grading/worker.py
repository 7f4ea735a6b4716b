"""What runs inside a sandboxed worker: the submission's definitions, then every exercise's
check, with each call of student code recorded as plain data.

Only a notebook's *definitions* run (imports, functions, classes, UPPER_CASE constants, and
simple assignments such as ``eps = 1e-6``, ``softmax = torch.softmax`` or a lambda): never
the cells that load the default model, loop over prompts or draw plots. The exercise functions
are then called by the checks on tiny models and short prompts. Each statement runs on its own,
with a time limit: a syntax error or a crash in one cell costs only what that cell defines.

The worker reports through files in its job folder, each written atomically:

``definitions.json``   notes about the notebook (syntax errors, statements that failed)
``progress.json``      the exercise and variant in progress, and since when
``exercise-I.json``    whether exercise I's function exists and is callable
``exercise-I-J.pt``    the recorded outcomes of exercise I on variant J (saved as each part of
                       the check starts, so a crash keeps the parts before it)

It never decides a grade: the grader replays the recordings in its own process.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from labkit.checks.core import run_check
from labkit.checks.guards import describe, time_limit
from labkit.checks.results import TimedOut
from labkit.checks.transport import Recorder

JOB_FILE = "job.json"
STATEMENT_SECONDS = 10.0  # one top-level definition (a class body, a constant)
_RUN_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")  # cell magics around ordinary Python


# ----- the notebook's definitions ----------------------------------------------------------------
def runs_when_graded(node: ast.stmt) -> bool:
    """Whether a top-level statement is a definition that the grader runs."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return True
    if isinstance(node, ast.AsyncFunctionDef):
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not all(isinstance(t, ast.Name) for t in targets):
            return False
        return _is_constant_name(node) or _static(node.value)
    return False


def _is_constant_name(node: ast.stmt) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)


_STATIC = (ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Tuple, ast.List, ast.Set,
           ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.unaryop, ast.operator,
           ast.boolop, ast.cmpop)  # fmt: skip


def _static(node: ast.AST) -> bool:
    """A value that computes nothing from the notebook's state: constants, names and attributes
    (``softmax = torch.softmax``), lambdas, and containers and arithmetic of those."""
    if isinstance(node, ast.Lambda):
        return all(_static(d) for d in node.args.defaults + node.args.kw_defaults if d)
    if not isinstance(node, _STATIC):
        return False
    return all(_static(child) for child in ast.iter_child_nodes(node))


def python_source(source: str) -> str | None:
    """A cell as plain Python (``!cmd`` and ``%magic`` lines become calls), or None for cells
    in another language (``%%bash``...)."""
    stripped = source.lstrip()
    if stripped.startswith("%%"):
        first, _, rest = stripped.partition("\n")
        if first.split()[0] not in _RUN_CELL_MAGICS:
            return None
        source = rest
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # a transformer bug on odd input: parse the raw text instead
        return source


def define(cells: list[tuple[int, str]], seconds: float = STATEMENT_SECONDS):
    """Run the definitions of ``cells`` ((notebook index, source) pairs) in a fresh namespace.

    Returns the namespace and notes for the student about what could not be defined.
    """
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    notes: list[str] = []
    for index, source in cells:
        text = python_source(source)
        if text is None:
            continue
        try:
            tree = ast.parse(text, filename=f"<cell {index}>")
        except SyntaxError as err:
            notes.append(
                f"Cell {index} has a syntax error (line {err.lineno}: {err.msg}), so nothing in "
                "it was graded. Fix it and run the cell to make sure."
            )
            continue
        except (ValueError, RecursionError, MemoryError) as err:
            notes.append(f"Cell {index} could not be read as Python ({type(err).__name__}).")
            continue
        for node in tree.body:
            if not runs_when_graded(node):
                continue
            module = ast.Module(body=[node], type_ignores=[])
            try:
                code = compile(module, f"<cell {index}>", "exec")
                with time_limit(seconds):
                    exec(code, namespace)  # noqa: S102 -- student code, inside the sandbox
            except TimedOut:
                notes.append(
                    f"Cell {index}, line {node.lineno}: defining {_what(node)} took longer than "
                    f"{seconds:g} s, so it was skipped."
                )
            except BaseException as err:  # noqa: BLE001 -- SystemExit, KeyboardInterrupt too
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and not _is_constant_name(node):
                    continue  # `x = y.z` needs cells that did not run: that is expected
                detail = f": {err}" if str(err) else ""
                notes.append(
                    f"Cell {index}, line {node.lineno}: {_what(node)} raised "
                    f"{type(err).__name__}{detail}; it was skipped."
                )
    return namespace, notes


def _what(node: ast.stmt) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return f"'{node.name}'"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "an import"
    return "an assignment"


def find_function(namespace: dict, name: str) -> tuple[Any, dict]:
    """The student's function ``name`` and what the grader should know about it."""
    if name not in namespace:
        defined = [
            k
            for k, v in namespace.items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", "") == "__main__"
        ]
        similar = difflib.get_close_matches(name, defined, n=3, cutoff=0.6)
        return None, {"status": "missing", "similar": similar}
    fn = namespace[name]
    if not callable(fn) or isinstance(fn, type):
        return None, {"status": "not callable", "detail": describe(fn)}
    return fn, {"status": "ok"}


# ----- reporting ---------------------------------------------------------------------------------
class FileRecorder(Recorder):
    """A Recorder that saves its outcomes whenever a new part of the check starts, so that a
    crash keeps the parts that came before it."""

    def __init__(self, path: Path, trim_output: bool = False) -> None:
        super().__init__()
        self.path = path
        self.trim_output = trim_output
        self._part = ""

    def call(self, t, fn, args, kwargs):
        if self.trim_output:
            _trim_output()
        part = t._call_key().split("/")[0]
        if part != self._part:
            self._part = part
            self.save()
        return super().call(t, fn, args, kwargs)

    def save(self) -> None:
        partial = self.path.with_suffix(".part")
        torch.save(self.outcomes, partial)
        os.replace(partial, self.path)


def write_json(path: Path, data: Any) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(data), encoding="utf-8")
    os.replace(partial, path)


# ----- the job -----------------------------------------------------------------------------------
def work(folder: Path) -> None:
    """Run the job in ``folder`` (see the module docstring for what it writes)."""
    folder = Path(folder).resolve()
    job_path = folder / JOB_FILE
    job = json.loads(job_path.read_text(encoding="utf-8"))
    job_path.unlink()  # nothing of the job stays where student code could read it
    exercises = importlib.import_module(job["checks"]).EXERCISES
    variants = [int(v) for v in job["variants"]]
    progress = folder / "progress.json"

    write_json(progress, {"state": "defining", "since": time.time()})
    cells = [(int(i), str(s)) for i, s in job["cells"]]
    namespace, notes = define(cells, float(job.get("seconds_per_statement", STATEMENT_SECONDS)))
    write_json(folder / "definitions.json", {"notes": notes})

    names = list(job["exercises"])
    for i in range(int(job.get("start", 0)), len(names)):
        name = names[i]
        check = exercises[name]
        write_json(
            progress, {"state": "running", "exercise": i, "variant": 0, "since": time.time()}
        )
        fn, info = find_function(namespace, name)
        write_json(folder / f"exercise-{i}.json", {"name": name, **info})
        if fn is not None:
            timeout = min(float(check.timeout or 1e9), float(job["seconds_per_call"]))
            for j, variant in enumerate(variants):
                write_json(
                    progress,
                    {"state": "running", "exercise": i, "variant": j, "since": _since(progress)},
                )
                recorder = FileRecorder(
                    folder / f"exercise-{i}-{j}.pt", bool(job.get("trim_output"))
                )
                run_check(
                    check.body,
                    check.check_name,
                    check.points,
                    fn,
                    variant=variant,
                    runner=recorder,
                    timeout=timeout,
                )
                recorder.save()
                kinds = {o.get("kind") for o in recorder.outcomes.values()}
                if kinds & {"timeout", "not attempted"} or not recorder.outcomes:
                    break  # hidden variants would tell nothing more, slowly
        write_json(progress, {"state": "finished", "exercise": i, "since": time.time()})
    write_json(progress, {"state": "done", "since": time.time()})


def _trim_output(keep: int = 1 << 20) -> None:
    """Empty the worker's output file (stdout) once it holds more than ``keep`` bytes, so that
    what a function prints counts against the file-size limit one call at a time."""
    try:
        if os.fstat(1).st_size > keep:
            os.ftruncate(1, 0)
    except OSError:
        pass


def _since(progress: Path) -> float:
    try:
        return float(json.loads(progress.read_text())["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return time.time()
