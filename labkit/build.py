"""Build student notebooks (``labs/``) from the solution notebooks (``solutions/``).

Authors edit only ``solutions/NN_name.ipynb``. In those notebooks:

* code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` is the answer. The student version
  gets ``raise NotImplementedError(...)`` at the same indentation, or, if the region holds lines
  ``# STUB: <code>``, that code instead (for answers that are values, not functions);
* in markdown, text between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` becomes
  "*Your answer here.*";
* cells tagged ``instructor`` are dropped.

The student notebooks are written with no outputs, no execution counts and no stray metadata.
``labkit build --check`` fails when ``labs/`` is not what a fresh build would write.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat

CODE_BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
CODE_END = re.compile(r"^\s*# END SOLUTION\s*$")
STUB_LINE = re.compile(r"^\s*# STUB: ?(.*)$")
MARKDOWN_REGION = re.compile(r"<!-- BEGIN SOLUTION -->.*?<!-- END SOLUTION -->", flags=re.DOTALL)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "# STUB:")
INSTRUCTOR_TAG = "instructor"
STUB_MESSAGE = 'raise NotImplementedError("Exercise: replace this line with your code.")'
MARKDOWN_STUB = "*Your answer here.*"
_KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "colab", "widgets_off")


class BuildError(ValueError):
    """A solution notebook's markers are malformed."""


def strip_code_solution(source: str, where: str = "a cell") -> str:
    """Replace every solution region in one code cell's source by its stub."""
    out: list[str] = []
    region: list[str] | None = None
    indent = ""
    for line in source.splitlines():
        begin, end = CODE_BEGIN.match(line), CODE_END.match(line)
        if region is None:
            if end:
                raise BuildError(f"{where}: '# END SOLUTION' without a BEGIN.")
            if begin:
                region, indent = [], begin.group(1)
            else:
                out.append(line)
        elif begin:
            raise BuildError(f"{where}: nested '# BEGIN SOLUTION'.")
        elif end:
            stubs = [m.group(1) for m in map(STUB_LINE.match, region) if m]
            out.extend(indent + stub for stub in stubs or [STUB_MESSAGE])
            region = None
        else:
            region.append(line)
    if region is not None:
        raise BuildError(f"{where}: '# BEGIN SOLUTION' is never closed by '# END SOLUTION'.")
    return "\n".join(out)


def strip_markdown_solution(source: str) -> str:
    return MARKDOWN_REGION.sub(MARKDOWN_STUB, source)


def student_notebook(solution: nbformat.NotebookNode, source_name: str) -> nbformat.NotebookNode:
    """The student version of a solution notebook (a new object; the input is unchanged)."""
    cells = []
    for i, cell in enumerate(solution.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if INSTRUCTOR_TAG in tags:
            continue
        metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            source = strip_code_solution(cell.source, where=f"{source_name} cell {i}")
            new = nbformat.v4.new_code_cell(source, metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(strip_markdown_solution(cell.source))
            new.metadata = metadata
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata)
        new.pop("id", None)
        cells.append(new)
    banner = nbformat.v4.new_markdown_cell(
        f"<!-- Generated from solutions/{source_name} by `labkit build`. "
        "Edit the solution notebook, not this file. -->"
    )
    banner.pop("id", None)
    metadata = {k: v for k, v in solution.metadata.items() if k in _KEEP_NOTEBOOK_METADATA}
    if "language_info" in metadata:  # the executing Python's version would make builds differ
        metadata["language_info"] = {"name": metadata["language_info"].get("name", "python")}
    notebook = nbformat.v4.new_notebook(metadata=metadata)
    notebook.nbformat_minor = 4  # no cell ids: stable, diff-friendly files
    notebook.cells = [banner, *cells]
    return notebook


def render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def build(solutions_dir: Path, labs_dir: Path, check_only: bool = False) -> list[str]:
    """Write (or, with ``check_only``, compare) every lab; return the out-of-date lab paths."""
    stale = []
    sources = sorted(Path(solutions_dir).glob("*.ipynb"))
    if not sources:
        raise BuildError(f"No solution notebooks in {solutions_dir}.")
    settings = _release_settings(Path(solutions_dir))
    for src in sources:
        notebook = student_notebook(nbformat.read(src, as_version=4), src.name)
        stamp_release(notebook, src.name, settings)
        text = render(notebook)
        target = Path(labs_dir) / src.name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(str(target))
            if not check_only:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale


def _release_settings(solutions_dir: Path):
    """Where the student release lives: ``[tool.labkit]`` of the repository's pyproject.toml
    (see labkit.release); the labs' Colab cell and badge are stamped with it."""
    from labkit.release import release_settings

    return release_settings(Path(solutions_dir).resolve().parent)


def stamp_release(notebook: nbformat.NotebookNode, name: str, settings) -> None:
    from labkit.release import stamp_release as stamp

    stamp(notebook, name, settings)


def solution_functions(path: Path) -> dict:
    """The imports, functions, classes and UPPER_CASE constants a solution notebook defines.

    Only those top-level statements run (no model loading, no plots), so tests, benchmarks and
    the grader can use the reference solution without executing the notebook.
    """
    namespace: dict = {"__name__": f"solution:{Path(path).stem}"}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python_source(cell.source))
        except SyntaxError:
            continue
        keep = [node for node in tree.body if _is_definition(node)]
        if keep:
            module = ast.Module(body=keep, type_ignores=[])
            exec(compile(module, f"{path}", "exec"), namespace)  # noqa: S102
    return namespace


def _python_source(source: str) -> str:
    """Cell source as plain Python: IPython's ``!cmd`` and ``%magic`` lines become calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    return TransformerManager().transform_cell(source)


def _is_definition(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)
    return False
