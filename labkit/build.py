"""Build student notebooks (``labs/``) from the solution notebooks (``solutions/``).

Authors edit only ``solutions/NN_name.ipynb``. In those notebooks:

* code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` is the answer. The student version
  gets ``raise NotImplementedError(...)`` at the same indentation, or, if the region holds lines
  ``# STUB: <code>``, that code instead (for answers that are values, not functions);
* in markdown, text between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` becomes
  "*Your answer here.*";
* cells tagged ``instructor`` (in any case) are dropped.

Markers are strict. Anything that looks like one but is not exactly one (``#BEGIN SOLUTION``,
nbgrader's ``### BEGIN SOLUTION``, lowercase, trailing words, a marker in a raw cell or in a
fenced code block) is a :class:`BuildError` that names the notebook, the cell and the line: a
marker the builder did not recognise would copy the answer into ``labs/``.

Student notebooks are nbformat 4.5 with stable cell ids (the solution cell's id, or one derived
from the cell's position and source), no outputs, no execution counts and no stray metadata.
``labkit build --check`` fails when ``labs/`` is not what a fresh build would write, including
generated labs whose solution no longer exists (a build removes those).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from labkit.notebooks import (  # noqa: F401 -- the marker grammar, re-exported for authors
    CODE_BEGIN,
    CODE_END,
    INSTRUCTOR_TAG,
    LOOKS_LIKE_MARKER,
    MARKDOWN_BEGIN,
    MARKDOWN_END,
    MARKDOWN_MARKER,
    MARKERS,
    STUB_LINE,
    NotebookError,
    read_nbformat,
)
from labkit.publish import release_settings, stamp_release

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
STUB_MESSAGE = 'raise NotImplementedError("Exercise: replace this line with your code.")'
MARKDOWN_STUB = "*Your answer here.*"
BANNER_ID = "generated-banner"
BANNER = (
    "<!-- Generated from solutions/{name} by `labkit build`. "
    "Edit the solution notebook, not this file. -->"
)
_KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "colab", "widgets_off")
_VALID_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MARKER_RULES = {
    "code": "In code cells the markers are exactly '# BEGIN SOLUTION', '# END SOLUTION' and "
    "'# STUB: <code>', each on a line of its own.",
    "markdown": f"In markdown cells the markers are exactly '{MARKDOWN_BEGIN}' and "
    f"'{MARKDOWN_END}', outside code blocks.",
    "raw": "Raw cells cannot hold solution markers: use a code or a markdown cell.",
}


class BuildError(NotebookError):
    """A solution notebook cannot be built safely; the message names notebook, cell and line."""


def _not_a_marker(where: str, number: int, line: str, cell_type: str) -> BuildError:
    return BuildError(
        f"{where}, line {number}: {line.strip()!r} looks like a solution marker but is not "
        f"one. {_MARKER_RULES.get(cell_type, _MARKER_RULES['raw'])}"
    )


# ----- one cell --------------------------------------------------------------------------------
def strip_code_solution(source: str, where: str = "a cell") -> str:
    """Replace every solution region in one code cell's source by its stub."""
    out: list[str] = []
    region: list[str] | None = None
    indent, opened = "", 0
    for number, line in enumerate(source.splitlines(), start=1):
        begin, end, stub = CODE_BEGIN.match(line), CODE_END.match(line), STUB_LINE.match(line)
        rest = stub.group(1) if stub else "" if begin or end else line
        if LOOKS_LIKE_MARKER.search(rest):
            raise _not_a_marker(where, number, line, "code")
        if region is None:
            if end:
                raise BuildError(f"{where}, line {number}: '# END SOLUTION' without a BEGIN.")
            if stub:
                raise BuildError(
                    f"{where}, line {number}: '# STUB:' outside a solution region; put it "
                    "between '# BEGIN SOLUTION' and '# END SOLUTION'."
                )
            if begin:
                region, indent, opened = [], begin.group(1), number
            else:
                out.append(line)
        elif begin:
            raise BuildError(
                f"{where}, line {number}: nested '# BEGIN SOLUTION' (the region opened on "
                f"line {opened} is not closed)."
            )
        elif end:
            stubs = [m.group(1) for m in map(STUB_LINE.match, region) if m]
            out.extend(indent + stub for stub in stubs or [STUB_MESSAGE])
            region = None
        else:
            region.append(line)
    if region is not None:
        raise BuildError(
            f"{where}, line {opened}: '# BEGIN SOLUTION' is never closed by '# END SOLUTION'."
        )
    return "\n".join(out)


def strip_markdown_solution(source: str, where: str = "a cell") -> str:
    """Replace every ``<!-- BEGIN SOLUTION -->`` ... ``<!-- END SOLUTION -->`` by the stub."""
    out: list[str] = []
    opened = 0  # line of the open region's BEGIN, 0 outside a region
    in_fence = False
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        markers = list(MARKDOWN_MARKER.finditer(line))
        if len(markers) != len(LOOKS_LIKE_MARKER.findall(line)):
            raise _not_a_marker(where, number, line, "markdown")
        if FENCE.match(line):
            in_fence = not in_fence
        if markers and in_fence:
            raise BuildError(
                f"{where}, line {number}: a solution marker inside a fenced code block. "
                f"{_MARKER_RULES['markdown']}"
            )
        start = 0
        for marker in markers:
            if marker.group() == MARKDOWN_BEGIN:
                if opened:
                    raise BuildError(
                        f"{where}, line {number}: nested '{MARKDOWN_BEGIN}' (the region opened "
                        f"on line {opened} is not closed)."
                    )
                out.append(line[start : marker.start()])
                opened = number
            else:
                if not opened:
                    raise BuildError(f"{where}, line {number}: '{MARKDOWN_END}' without a BEGIN.")
                out.append(MARKDOWN_STUB)
                opened = 0
            start = marker.end()
        if not opened:
            out.append(line[start:])
    if opened:
        raise BuildError(
            f"{where}, line {opened}: '{MARKDOWN_BEGIN}' is never closed by '{MARKDOWN_END}'."
        )
    return "".join(out)


def _check_raw_cell(source: str, where: str) -> None:
    for number, line in enumerate(source.splitlines(), start=1):
        if LOOKS_LIKE_MARKER.search(line):
            raise _not_a_marker(where, number, line, "raw")


def is_instructor_cell(cell: nbformat.NotebookNode) -> bool:
    """Tagged ``instructor`` in any case (``Instructor``, ``INSTRUCTOR``)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return any(str(tag).strip().lower() == INSTRUCTOR_TAG for tag in tags)


def student_cell(cell: nbformat.NotebookNode, where: str) -> nbformat.NotebookNode:
    """The student version of one (non-instructor) cell: stubs, no outputs, only its tags."""
    tags = list(cell.get("metadata", {}).get("tags", []))
    metadata = {"tags": tags} if tags else {}
    if cell.cell_type == "code":
        return nbformat.v4.new_code_cell(strip_code_solution(cell.source, where), metadata=metadata)
    if cell.cell_type == "markdown":
        new = nbformat.v4.new_markdown_cell(strip_markdown_solution(cell.source, where))
    else:
        _check_raw_cell(cell.source, where)
        new = nbformat.v4.new_raw_cell(cell.source)
    new.metadata = metadata
    return new


# ----- cell ids ----------------------------------------------------------------------------------
def stable_cell_id(cell: nbformat.NotebookNode, index: int) -> str:
    """A cell id that depends only on the cell: its own id if valid, else position + source."""
    cell_id = cell.get("id")
    if isinstance(cell_id, str) and _VALID_ID.match(cell_id):
        return cell_id
    digest = hashlib.sha1(f"{index}\0{cell.cell_type}\0{cell.source}".encode()).hexdigest()
    return digest[:8]


def _unique(ids: list[str]) -> list[str]:
    """Make repeated ids unique deterministically (``abc``, ``abc-1``, ...)."""
    seen: set[str] = set()
    out = []
    for cell_id in ids:
        new, k = cell_id, 0
        while new in seen:
            k += 1
            new = f"{cell_id[:60]}-{k}"
        seen.add(new)
        out.append(new)
    return out


# ----- one notebook ------------------------------------------------------------------------------
def student_notebook(solution: nbformat.NotebookNode, source_name: str) -> nbformat.NotebookNode:
    """The student version of a solution notebook (a new object; the input is unchanged)."""
    cells, ids = [], []
    for i, cell in enumerate(solution.cells):
        if is_instructor_cell(cell):
            continue
        where = f"solutions/{source_name}, cell {i + 1} ({cell.cell_type})"
        cells.append(student_cell(cell, where))
        ids.append(stable_cell_id(cell, i))
    banner = nbformat.v4.new_markdown_cell(BANNER.format(name=source_name))
    cells.insert(0, banner)
    for cell, cell_id in zip(cells, _unique([BANNER_ID, *ids]), strict=True):
        cell.id = cell_id
    notebook = nbformat.v4.new_notebook(metadata=_student_metadata(solution.metadata))
    notebook.nbformat, notebook.nbformat_minor = 4, 5
    notebook.cells = cells
    return notebook


def _student_metadata(metadata: dict) -> dict:
    """The notebook metadata of a lab: what the kernel that runs it will report, exactly.

    When JupyterLab starts a notebook's kernel it writes the kernel's ``kernelspec`` and
    ``language_info`` into the notebook, and a value that differs from the stored one marks the
    notebook modified before the student has done anything. So a Python lab names ipykernel's
    kernel as ipykernel names it (``python3``, "Python 3 (ipykernel)": also what spares the
    student a "Select Kernel" dialog) and carries every ``language_info`` field ipykernel sends.
    The Python version comes from the solution notebook (the Python its authors ran it with),
    so a build depends only on its input; a student on another Python sees the lab modified by
    that version alone. Other languages keep their language's name only.
    """
    ipykernel_spec = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    ipykernel_language = {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
    }
    kept = {k: v for k, v in metadata.items() if k in _KEEP_NOTEBOOK_METADATA}
    language = kept.get("language_info") if isinstance(kept.get("language_info"), dict) else {}
    spec = kept.get("kernelspec") if isinstance(kept.get("kernelspec"), dict) else {}
    name = language.get("name") or spec.get("language") or "python"
    if name != "python":
        if "language_info" in kept:
            kept["language_info"] = {"name": name}
        return kept
    kept["language_info"] = dict(ipykernel_language)
    version = language.get("version")
    if isinstance(version, str) and re.fullmatch(r"\d+\.\d+\.\d+", version):
        kept["language_info"]["version"] = version
    if spec.get("name", "python3") == "python3":
        kept["kernelspec"] = dict(ipykernel_spec)
    return kept


def render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


# ----- the folder --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One lab that a build writes (out of date) or removes (its solution is gone)."""

    path: Path
    action: str  # "write" or "remove"

    def __str__(self) -> str:
        if self.action == "remove":
            return f"{self.path} (its solution no longer exists)"
        return str(self.path)


def is_generated_lab(path: Path) -> bool:
    """Whether ``path`` was written by ``labkit build`` (it carries the banner)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "Generated from solutions/" in text and "by `labkit build`" in text


def _check_folders(solutions_dir: Path, labs_dir: Path) -> None:
    solutions, labs = solutions_dir.resolve(), labs_dir.resolve()
    if labs == solutions or solutions in labs.parents:
        raise BuildError(
            f"The output folder {labs_dir} is the solutions folder {solutions_dir} or inside "
            "it: building there would overwrite the solutions. Use --labs labs."
        )


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(solutions_dir: Path, labs_dir: Path, check_only: bool = False) -> list[Change]:
    """Write (or, with ``check_only``, compare) every lab; return what is or was out of date.

    Every solution is converted before anything is written, so a broken one writes nothing.
    """
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    _check_folders(solutions_dir, labs_dir)
    sources = sorted(solutions_dir.glob("*.ipynb"))
    if not sources:
        raise BuildError(f"No solution notebooks in {solutions_dir}.")
    settings = _release_settings(solutions_dir)
    texts = {}
    for src in sources:
        notebook = student_notebook(read_nbformat(src), src.name)
        stamp_release(notebook, src.name, settings)
        texts[src.name] = render(notebook)
    changes = []
    for name, text in texts.items():
        target = labs_dir / name
        if not target.exists() or target.read_text(encoding="utf-8", errors="replace") != text:
            changes.append(Change(target, "write"))
            if not check_only:
                _write_atomically(target, text)
    for lab in sorted(labs_dir.glob("*.ipynb")):
        if lab.name not in texts and is_generated_lab(lab):
            changes.append(Change(lab, "remove"))
            if not check_only:
                lab.unlink()
    return changes


def _release_settings(solutions_dir: Path):
    """``[tool.labkit]`` of the repository's pyproject.toml (see labkit.publish)."""
    return release_settings(Path(solutions_dir).resolve().parent)
