"""Handed-in notebooks: one :class:`Submission` per student, from a folder or a zip as an LMS or
Gradescope exports them, and notebooks read however they were saved.

Who is who:

* a folder (or a zip) of folders: each top-level folder is one student (Gradescope's and
  Moodle's exports), with every notebook inside it;
* loose files: the file name is the student, except for Canvas-style names
  ``name_12345_67890_anything.ipynb`` (or ``name_LATE_12345_...``), where ``name_12345`` is, so
  two files from one student stay together.

Reading a notebook never runs anything. :func:`read_notebook` accepts nbformat 4 and 3, any
text encoding (UTF-8 first; otherwise Windows-1252, with a note) and ignores outputs (a 50 MB
output costs nothing but reading time). What it cannot read raises :class:`NotebookError`
with a message for the student.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOK_SUFFIXES = (".ipynb",)
SCRIPT_SUFFIXES = (".py",)  # graded only when a student handed in no notebook
MAX_NOTEBOOK_MB = 512
MAX_ZIP_MB = 8192  # uncompressed, the whole archive
MAX_ZIP_MEMBERS = 100_000
MAX_FILES_PER_STUDENT = 5  # more notebooks than this: the rest are listed, not graded
_CANVAS = re.compile(r"^(?P<name>[^_\s]+)_(?:late_)?(?P<id>\d+)_\d+_", re.IGNORECASE)
_SKIP = ("__MACOSX", ".ipynb_checkpoints", "__pycache__")


class NotebookError(ValueError):
    """A handed-in file that cannot be read as a notebook; the message is for the student."""


@dataclass
class SubmittedFile:
    name: str  # as the student knows it: the path inside their submission
    path: Path


@dataclass
class Submission:
    student: str  # the key in the gradebook (a folder name, or a name from the file names)
    files: list[SubmittedFile] = field(default_factory=list)  # notebooks (or scripts) to grade
    others: list[str] = field(default_factory=list)  # other files handed in, not graded

    def input_hash(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.name.encode() + b"\0")
            with open(f.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]


# ----- finding the students ----------------------------------------------------------------------
def discover(source: Path, unpack_to: Path, single: bool = False) -> list[Submission]:
    """Every student's submission in a folder or a zip (unpacked under ``unpack_to``).

    ``single``: the whole folder is one student's submission (Gradescope's
    /autograder/submission).
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"No submissions at {source}: give a folder or a .zip file.")
    if source.is_file():
        if source.suffix.lower() != ".zip":
            return _group([source], source.parent) if not single else [_one(source.parent)]
        source = unpack(source, unpack_to)
    if single:
        return [_one(source)]
    students: dict[str, Submission] = {}
    entries = sorted(p for p in source.iterdir() if not _skipped(p))
    folders = [p for p in entries if p.is_dir()]
    for folder in folders:
        students[folder.name] = _collect(folder, folder.name)
    loose = [p for p in entries if p.is_file()]
    for sub in _group(loose, source):
        if sub.student in students:  # a loose file named like a folder: same student
            students[sub.student].files += sub.files
            students[sub.student].others += sub.others
        else:
            students[sub.student] = sub
    result = []
    used: set[str] = set()
    for key in sorted(students):
        sub = students[key]
        sub.student = _unique(_safe_key(key), used)
        result.append(sub)
    return result


def _one(folder: Path) -> Submission:
    return _collect(folder, "submission")


def _collect(folder: Path, student: str) -> Submission:
    sub = Submission(student)
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not _skipped(p, folder))
    for path in paths:
        _add(sub, path, str(path.relative_to(folder)))
    return _finish(sub)


def _group(files: list[Path], root: Path) -> list[Submission]:
    students: dict[str, Submission] = {}
    for path in files:
        match = _CANVAS.match(path.name)
        key = f"{match['name']}_{match['id']}" if match else path.stem
        _add(students.setdefault(key, Submission(key)), path, path.name)
    return [_finish(s) for s in students.values()]


def _add(sub: Submission, path: Path, name: str) -> None:
    if path.suffix.lower() in NOTEBOOK_SUFFIXES + SCRIPT_SUFFIXES:
        sub.files.append(SubmittedFile(name, path))
    else:
        sub.others.append(name)


def _finish(sub: Submission) -> Submission:
    notebooks = [f for f in sub.files if f.path.suffix.lower() in NOTEBOOK_SUFFIXES]
    scripts = [f for f in sub.files if f not in notebooks]
    sub.files = notebooks or scripts
    sub.others += [f.name for f in scripts if f not in sub.files]
    if len(sub.files) > MAX_FILES_PER_STUDENT:
        extra = sub.files[MAX_FILES_PER_STUDENT:]
        sub.others += [f"{f.name} (not graded: too many notebooks)" for f in extra]
        sub.files = sub.files[:MAX_FILES_PER_STUDENT]
    return sub


def _skipped(path: Path, root: Path | None = None) -> bool:
    parts = path.relative_to(root).parts if root else (path.name,)
    return any(p.startswith(".") or p in _SKIP for p in parts)


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", key).strip("._") or "student"


def _unique(key: str, used: set[str]) -> str:
    candidate, n = key, 2
    while candidate.lower() in used:
        candidate, n = f"{key}-{n}", n + 1
    used.add(candidate.lower())
    return candidate


def unpack(archive: Path, target: Path) -> Path:
    """Unpack a zip safely (no paths outside ``target``, bounded size); returns its top folder."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise ValueError(f"{archive} holds {len(members)} files, more than a class has.")
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_MB * 2**20:
                raise ValueError(f"{archive} unpacks to {total / 2**30:.1f} GB; too large.")
            for member in members:
                parts = [p for p in Path(member.filename).parts if p not in ("", ".", "..", "/")]
                if member.is_dir() or not parts:
                    continue
                destination = target.joinpath(*parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(destination, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a readable zip file ({err}).") from err
    top = [p for p in target.iterdir() if not _skipped(p)]
    if len(top) == 1 and top[0].is_dir():
        return top[0]
    return target


# ----- reading one notebook ----------------------------------------------------------------------
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


def read_notebook(path: Path, name: str = "") -> Notebook:
    """The cells of a notebook (or a .py script, as one code cell), outputs ignored."""
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
            kind, source = "markdown", "#" * int(cell.get("level", 1)) + " " + _text(source)
        text = _text(source)
        if text is None or kind not in ("code", "markdown", "raw"):
            notes.append(f"Cell {index} of {name} could not be read; it was skipped.")
            continue
        cells.append(Cell(kind, text, index))
    return cells, notes


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
