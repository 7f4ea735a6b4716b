"""Notebooks as labkit reads them: the solution markers, reading a notebook of any vintage, and
the one rule for *a notebook's definitions*.

One module, used by the build, the release, the grader and the tests alike:

* **Markers.** Authors mark answers in ``solutions/`` with ``# BEGIN SOLUTION`` /
  ``# END SOLUTION`` (optionally ``# STUB: <code>`` lines) in code, and
  ``<!-- BEGIN SOLUTION -->`` / ``<!-- END SOLUTION -->`` in markdown.
  :func:`solution_regions` lists every marked region of a notebook.
* **Reading.** :func:`read_notebook` reads a handed-in ``.ipynb`` (nbformat 4 or 3, any text
  encoding, outputs ignored) or a ``.py`` script defensively: what it cannot read raises
  :class:`NotebookError` with a message for the student. :func:`read_nbformat` reads one of our
  own notebooks as an ``nbformat`` node (for the build).
* **Definitions.** :func:`run_definitions` runs what a notebook *defines*, the way Run All
  would leave it, without running what it *computes* (loading the default model, loops over
  prompts, plots). See its docstring for the rule.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import json
import linecache
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ----- markers ---------------------------------------------------------------------------------
CODE_BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
CODE_END = re.compile(r"^\s*# END SOLUTION\s*$")
STUB_LINE = re.compile(r"^\s*# STUB: ?(.*)$")
MARKDOWN_BEGIN, MARKDOWN_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
MARKDOWN_MARKER = re.compile(f"{re.escape(MARKDOWN_BEGIN)}|{re.escape(MARKDOWN_END)}")
MARKDOWN_REGION = re.compile(f"{re.escape(MARKDOWN_BEGIN)}.*?{re.escape(MARKDOWN_END)}", re.DOTALL)
# Whatever an author may have meant as a marker: any case, any number of '#', any spacing.
LOOKS_LIKE_MARKER = re.compile(r"\b(?:begin|end)[\s_-]*solutions?\b|#+\s*stub\s*:", re.I)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "# STUB:")
INSTRUCTOR_TAG = "instructor"


def code_regions(source: str) -> Iterator[str]:
    """The text of every ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region of a code cell
    (``# STUB:`` lines left out)."""
    region: list[str] | None = None
    for line in source.splitlines():
        if CODE_BEGIN.match(line):
            region = []
        elif CODE_END.match(line) and region is not None:
            yield "\n".join(region)
            region = None
        elif region is not None and not STUB_LINE.match(line):
            region.append(line)


def markdown_regions(source: str) -> Iterator[str]:
    """The text between the markers of every solution region of a markdown cell."""
    for match in MARKDOWN_REGION.finditer(source):
        yield match.group(0).removeprefix(MARKDOWN_BEGIN).removesuffix(MARKDOWN_END)


def solution_regions(path: Path) -> list[tuple[int, str, str]]:
    """(cell index from 0, cell type, text) of every solution region of a solution notebook."""
    found = []
    for i, cell in enumerate(read_nbformat(path).cells):
        if cell.cell_type == "markdown":
            found += [(i, "markdown", text) for text in markdown_regions(cell.source)]
        elif cell.cell_type == "code":
            found += [(i, "code", text) for text in code_regions(cell.source)]
    return found


# ----- reading -----------------------------------------------------------------------------------
NOTEBOOK_SUFFIXES = (".ipynb",)
SCRIPT_SUFFIXES = (".py",)  # graded only when a student handed in no notebook
MAX_NOTEBOOK_MB = 512


class NotebookError(ValueError):
    """A file that cannot be read as a notebook; the message is for the student (or author)."""


@dataclass
class Cell:
    kind: str  # "code", "markdown" or "raw"
    source: str
    index: int  # position in the notebook, from 1 (what Jupyter users count)


@dataclass
class Notebook:
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)  # what the student should know

    @property
    def code(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code"]


def read_nbformat(path: Path):
    """One of the course's own notebooks as an ``nbformat`` node; a broken file is a one-line
    :class:`NotebookError` naming it."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 (JSON, nbformat and OS errors alike)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NotebookError(
            f"{path}: not a readable notebook ({reason}). Fix or restore it."
        ) from err


def read_notebook(path: Path, name: str = "") -> Notebook:
    """The cells of a handed-in notebook (or a .py script, as one code cell), outputs ignored.

    Accepts nbformat 4 and 3 and any text encoding (UTF-8 first; otherwise Windows-1252, with a
    note). Never runs anything.
    """
    path = Path(path)
    name = name or path.name
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_MB * 2**20:
        raise NotebookError(
            f"{name} is {size / 2**20:.0f} MB, more than the {MAX_NOTEBOOK_MB} MB the grader "
            "reads. Clear its outputs (Edit > Clear All Outputs), save, and hand it in again."
        )
    text, notes = _decode(path.read_bytes(), name)
    if path.suffix.lower() in SCRIPT_SUFFIXES:
        notes.append(f"{name} is a Python script, not a notebook: graded as one code cell.")
        return Notebook([Cell("code", text, 1)], notes)
    if not text.strip():
        raise NotebookError(f"{name} is empty. Save the notebook in Jupyter and hand it in again.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise NotebookError(
            f"{name} is not a valid notebook file: its JSON breaks at line {err.lineno}, column "
            f"{err.colno} ({err.msg}). It was probably cut off or edited outside Jupyter. Open "
            "it in Jupyter or Colab: if it opens, save it and hand it in again; if not, hand in "
            "an earlier copy."
        ) from None
    except RecursionError:
        raise NotebookError(f"{name} is not a notebook: its JSON is nested too deeply.") from None
    cells, more = _cells(data, name)
    return Notebook(cells, notes + more)


def _decode(data: bytes, name: str) -> tuple[str, list[str]]:
    for bom, encoding in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding), []
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as err:
        where = f"byte {err.start}"
    for encoding in ("cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text, [
            f"{name} is not UTF-8 text (first bad {where}); it was read as {encoding}. Accented "
            "letters in it may show wrongly. Save notebooks from Jupyter, which writes UTF-8."
        ]
    raise NotebookError(f"{name} is not text.")  # unreachable: latin-1 decodes any bytes


def _cells(data: object, name: str) -> tuple[list[Cell], list[str]]:
    if not isinstance(data, dict):
        raise NotebookError(
            f"{name} is JSON but not a Jupyter notebook (it holds a {type(data).__name__}). Hand "
            "in the .ipynb file that Jupyter saves (File > Download in Colab)."
        )
    major = data.get("nbformat")
    notes: list[str] = []
    if isinstance(major, int) and major < 3:
        raise NotebookError(
            f"{name} uses notebook format {major}, which is too old to read. Open it in a "
            "current Jupyter, save it, and hand it in again."
        )
    if "worksheets" in data or major == 3:
        raw = [c for ws in _list(data.get("worksheets")) for c in _list(_get(ws, "cells"))]
        notes.append(f"{name} is in the old notebook format 3; it was read and graded anyway.")
    elif isinstance(data.get("cells"), list):
        raw = data["cells"]
        if major is None:
            notes.append(f"{name} has no 'nbformat' field; its cells were read anyway.")
    else:
        raise NotebookError(
            f"{name} is not a Jupyter notebook (no list of cells). Hand in the .ipynb file that "
            "Jupyter saves."
        )
    cells = []
    for index, cell in enumerate(raw, start=1):
        if not isinstance(cell, dict):
            notes.append(f"Cell {index} of {name} is not a cell; it was skipped.")
            continue
        kind = cell.get("cell_type")
        source = cell.get("input", cell.get("source")) if kind == "code" else cell.get("source")
        if kind == "heading":  # nbformat 3
            kind, source = "markdown", "#" * _level(cell.get("level")) + " " + (_text(source) or "")
        text = _text(source)
        if text is None or kind not in ("code", "markdown", "raw"):
            notes.append(f"Cell {index} of {name} could not be read; it was skipped.")
            continue
        cells.append(Cell(kind, text, index))
    return cells, notes


def _level(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 6 else 1


def _text(source: object) -> str | None:
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    return None


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _get(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None


# ----- the definitions rule ----------------------------------------------------------------------
_RUN_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")  # cell magics around ordinary Python
# Names that a Jupyter kernel provides without an import.
IPYTHON_NAMES = frozenset(
    {"get_ipython", "display", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii",
     "_iii", "_oh", "_dh", "__IPYTHON__"}
)  # fmt: skip
_FUTURE_FLAGS = {
    name: getattr(__future__, name).compiler_flag for name in __future__.all_feature_names
}


def python_source(source: str) -> str | None:
    """A cell as plain Python (``!cmd`` and ``%magic`` lines become calls), or None for a cell
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
    except Exception:  # noqa: BLE001 -- a transformer bug on odd input: parse the raw text
        return source


@dataclass
class Definitions:
    """What :func:`run_definitions` left: the namespace, notes for the student, and where Run
    All would have stopped (``(cell, line)``, or None)."""

    namespace: dict
    notes: list[str] = field(default_factory=list)
    stopped_at: tuple[int, int] | None = None


_STATIC = (ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Tuple, ast.List, ast.Set,
           ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.unaryop, ast.operator,
           ast.boolop, ast.cmpop, ast.Subscript, ast.Slice)  # fmt: skip


def _static(node: ast.AST) -> bool:
    """A value that calls nothing: constants, names, attributes (``softmax = torch.softmax``),
    lambdas, and containers, subscripts and arithmetic of those."""
    if isinstance(node, ast.Lambda):
        return all(_static(d) for d in node.args.defaults + node.args.kw_defaults if d)
    if not isinstance(node, _STATIC):
        return False
    return all(_static(child) for child in ast.iter_child_nodes(node))


def is_definition(node: ast.stmt) -> bool:
    """Whether a top-level statement *defines* (and so runs when definitions are run):
    imports, ``def``, ``class``, ``del`` of names, assignments to plain names of values that
    call nothing (``eps = 1e-6``, ``softmax = torch.softmax``, a lambda), and assignments to
    UPPER_CASE names, the notebook's constants, whatever they compute."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef)):
        return True
    if isinstance(node, ast.ClassDef):
        return True
    if isinstance(node, ast.Delete):
        return all(isinstance(t, ast.Name) for t in node.targets)
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not all(isinstance(t, ast.Name) for t in targets):
            return False
        return _static(node.value) or _constant_names(targets)
    return False


def _constant_names(targets: list) -> bool:
    """UPPER_CASE names: the notebook's constants (``PATTERN = re.compile(...)``) run even when
    they compute."""
    return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)


def _bound_names(node: ast.AST) -> set[str]:
    """Every name a statement may bind anywhere inside it (targets, imports, defs, walrus...)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in sub.names)
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            names.add(sub.name)
    return names


def _loaded_now(node: ast.AST) -> Iterator[ast.Name]:
    """Names an expression statement reads when it runs (not inside lambdas or functions,
    whose bodies run later)."""
    stack = [node]
    while stack:
        sub = stack.pop()
        if isinstance(sub, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(sub, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            stack.append(sub.generators[0].iter)  # only the first iterable runs in this scope
            continue
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
            yield sub
        stack.extend(ast.iter_child_nodes(sub))


def _future_flags(tree: ast.Module) -> int:
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                flags |= _FUTURE_FLAGS.get(alias.name, 0)
    return flags


def run_definitions(
    cells: Iterable[tuple[int, str]],
    *,
    module_name: str = "__main__",
    time_limit: Callable[[float], Any] | None = None,
    statement_seconds: float = 10.0,
) -> Definitions:
    """Run a notebook's definitions in order, the way Run All would leave them.

    ``cells`` are (cell number, source) pairs in notebook order. The rule:

    * Cells run in order; in each, every top-level statement that :func:`is_definition`
      accepts runs, in order, compiled on its own with no compiler flags but the notebook's own
      ``from __future__`` imports. So a name deleted or redefined later is what Run All leaves.
      A computed constant that fails here (it needs the model a heavy cell loaded) is left
      undefined, with a note, and the definitions go on.
    * Statements that compute (calls, loops, ``with`` blocks, plots) do not run. A name they
      would bind becomes unknown: a later definition that reads it does not run either, and an
      exercise function it rebinds is no longer defined.
    * Where Run All would stop, definitions stop too, with a note: a syntax error, a definition
      that raises (a failed import only costs its own names), a top-level ``raise``, or a
      statement that reads a name that no cell above has defined.

    ``time_limit(seconds)`` (a context manager) bounds each statement, if given.
    """
    namespace: dict[str, Any] = {"__name__": module_name, "__builtins__": builtins}
    result = Definitions(namespace)
    unknown: set[str] = set()  # bound by statements that did not run
    flags = 0
    known_builtins = set(dir(builtins)) | IPYTHON_NAMES

    def stop(index: int, line: int, why: str) -> Definitions:
        result.notes.append(
            f"Cell {index}, line {line}: {why} Run All stops there, so nothing below it was "
            "graded. Check your notebook with Kernel > Restart Kernel and Run All Cells."
        )
        result.stopped_at = (index, line)
        return result

    for index, source in cells:
        text = python_source(source)
        if text is None:
            continue
        try:
            tree = ast.parse(text, filename=f"<cell {index}>")
        except SyntaxError as err:
            return stop(index, err.lineno or 0, f"a syntax error ({err.msg}).")
        except (ValueError, RecursionError, MemoryError) as err:
            return stop(index, 0, f"the cell cannot be read as Python ({type(err).__name__}).")
        flags |= _future_flags(tree)
        for node in tree.body:
            if isinstance(node, ast.Raise):
                return stop(index, node.lineno, "the cell raises an exception.")
            if not is_definition(node):
                if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    for name in _loaded_now(node):
                        if (
                            name.id not in namespace
                            and name.id not in unknown
                            and name.id not in known_builtins
                        ):
                            return stop(
                                index,
                                node.lineno,
                                f"`{name.id}` is used before any cell above defines it.",
                            )
                for name in _bound_names(node):
                    namespace.pop(name, None)
                    unknown.add(name)
                continue
            reads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and reads & unknown - set(namespace):
                for name in _bound_names(node):  # reads what a skipped statement computed
                    namespace.pop(name, None)
                    unknown.add(name)
                continue
            if isinstance(node, ast.Delete):
                missing = [t.id for t in node.targets if t.id not in namespace]
                if any(name not in unknown for name in missing):
                    return stop(
                        index, node.lineno, f"`del {missing[0]}` deletes a name no cell defined."
                    )
            module = ast.Module(body=[node], type_ignores=[])
            guard = time_limit(statement_seconds) if time_limit else nullcontext()
            # The cell's source where tracebacks (and nnsight, which reads a trace's body) look.
            linecache.cache[f"<cell {index}>"] = (len(text), None, text.splitlines(True), "")
            try:
                code = compile(module, f"<cell {index}>", "exec", flags=flags, dont_inherit=True)
                with guard:
                    exec(code, namespace)  # noqa: S102 -- a worker runs student code here
            except BaseException as err:  # noqa: BLE001 -- SystemExit, KeyboardInterrupt too
                detail = f": {err}" if str(err) else ""
                computed = isinstance(node, (ast.Assign, ast.AnnAssign)) and not _static(node.value)
                if computed:  # a constant that needs what only the whole notebook computes
                    why = "took too long" if type(err).__name__ == "TimedOut" else (
                        f"raised {type(err).__name__}{detail}")  # fmt: skip
                    result.notes.append(
                        f"Cell {index}, line {node.lineno}: the constant could not be computed "
                        f"when grading ({why}); it is undefined there."
                    )
                    for name in _bound_names(node):
                        namespace.pop(name, None)
                        unknown.add(name)
                    continue
                if type(err).__name__ == "TimedOut":
                    return stop(index, node.lineno, f"{_what(node)} took longer than "
                                f"{statement_seconds:g} s.")  # fmt: skip
                if isinstance(err, NameError) and getattr(err, "name", None) in unknown:
                    for name in _bound_names(node):  # needs what a skipped statement computed
                        namespace.pop(name, None)
                        unknown.add(name)
                    continue
                if isinstance(node, (ast.Import, ast.ImportFrom)) and isinstance(err, ImportError):
                    result.notes.append(
                        f"Cell {index}, line {node.lineno}: an import failed "
                        f"({type(err).__name__}{detail}); the names it imports are undefined."
                    )
                    for name in _bound_names(node):
                        namespace.pop(name, None)
                        unknown.add(name)
                    continue
                return stop(
                    index, node.lineno, f"{_what(node)} raised {type(err).__name__}{detail}."
                )
            if isinstance(node, ast.Delete):
                unknown.difference_update(t.id for t in node.targets)
            else:
                unknown.difference_update(_bound_names(node))
    return result


def _what(node: ast.stmt) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return f"defining '{node.name}'"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "an import"
    return "an assignment"


def notebook_definitions(path: Path, module_name: str | None = None) -> dict:
    """The definitions of one of the course's notebooks (for tests, benchmarks and the grader's
    references): :func:`run_definitions` on its code cells. Raises if Run All would stop."""
    notebook = read_nbformat(path)
    cells = [(i + 1, c.source) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    found = run_definitions(cells, module_name=module_name or f"notebook:{Path(path).stem}")
    if found.stopped_at is not None:
        raise NotebookError(f"{path}: " + found.notes[-1])
    return found.namespace
