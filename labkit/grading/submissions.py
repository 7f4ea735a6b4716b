"""Handed-in notebooks: one :class:`Submission` per student, from a folder or a zip as an LMS or
Gradescope exports them. Reading one notebook is ``labkit.notebooks.read_notebook``.

Who is who:

* a folder (or a zip) of folders: each top-level folder is one student (Gradescope's and
  Moodle's exports), with every notebook inside it;
* loose files: the file name is the student, except for Canvas-style names
  ``name_12345_67890_anything.ipynb`` (or ``name_LATE_12345_...``), where ``name_12345`` is, so
  two files from one student stay together.

Every file and archive entry is accounted for (:attr:`Submission.files`, ``others`` and
``refused``, and :func:`discover`'s inventory): names that are not UTF-8 are kept as bytes and
shown escaped; names are compared after Unicode normalisation (NFC), so ``José`` typed two ways
is one student; symlinks, devices and FIFOs are refused with a note, never followed; archive
entries that climb out of the archive (``../``), use backslashes or start with a dot are
unpacked safely and listed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.notebooks import (  # noqa: F401 -- read_notebook is part of this module's API
    NOTEBOOK_SUFFIXES,
    SCRIPT_SUFFIXES,
    Cell,
    Notebook,
    NotebookError,
    read_notebook,
)

MAX_ZIP_MB = 8192  # uncompressed, the whole archive
MAX_ZIP_MEMBERS = 100_000
MAX_FILES_PER_STUDENT = 5  # more notebooks than this: the rest are listed, not graded
_CANVAS = re.compile(r"^(?P<name>[^_\s]+)_(?:late_)?(?P<id>\d+)_\d+_", re.IGNORECASE)
_JUNK = ("__MACOSX", ".ipynb_checkpoints", "__pycache__", ".DS_Store")


def shown(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 shown as \\xNN."""
    raw = os.fsencode(name)
    text = raw.decode("utf-8", errors="backslashreplace")
    return unicodedata.normalize("NFC", text)


@dataclass
class SubmittedFile:
    name: str  # as the student knows it: the path inside their submission, shown safely
    path: Path


@dataclass
class Submission:
    student: str  # the key in the gradebook (a folder name, or a name from the file names)
    files: list[SubmittedFile] = field(default_factory=list)  # notebooks (or scripts) to grade
    others: list[str] = field(default_factory=list)  # other files handed in, not graded
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, why) never read
    source: str = ""  # the folder or file name the student's row came from

    def input_hash(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(os.fsencode(f.name) + b"\0")
            with open(f.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        for name, why in self.refused:
            digest.update(f"refused:{name}:{why}".encode() + b"\0")
        return digest.hexdigest()[:16]


# ----- finding the students ----------------------------------------------------------------------
def discover(
    source: Path, unpack_to: Path, single: bool = False, inventory: list | None = None
) -> list[Submission]:
    """Every student's submission in a folder or a zip (unpacked under ``unpack_to``).

    ``single``: the whole folder is one student's submission (Gradescope's
    /autograder/submission). ``inventory``, if given, receives one (entry, what became of it)
    pair per file or archive entry seen.
    """
    source = Path(source)
    seen = inventory if inventory is not None else []
    if source.is_symlink():
        raise FileNotFoundError(f"{source} is a symbolic link: give the folder or .zip itself.")
    if not source.exists():
        raise FileNotFoundError(f"No submissions at {source}: give a folder or a .zip file.")
    refused: list[tuple[str, str]] = []  # archive entries never unpacked: (path, why)
    if source.is_file():
        if source.suffix.lower() != ".zip":
            return _group([source], seen) if not single else [_one(source.parent, seen)]
        source = unpack(source, unpack_to, seen, refused)
    if single:
        return [_one(source, seen)]
    students: dict[str, Submission] = {}
    entries = sorted(source.iterdir(), key=lambda p: os.fsencode(p.name))
    for entry in entries:
        if entry.name in _JUNK:
            _ignore_tree(entry, source, seen, f"ignored ({entry.name} is not a submission)")
            continue
        if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
            seen.append((shown(entry.name), "refused: not a regular file or folder"))
            key = _student_key(entry.stem)
            sub = students.setdefault(key, Submission(key, source=shown(entry.name)))
            sub.refused.append((shown(entry.name), _refusal(entry)))
            continue
        if entry.is_dir():
            key = _student_key(entry.name)
            sub = students.setdefault(key, Submission(key, source=shown(entry.name)))
            _collect_into(sub, entry, shown(entry.name), seen)
    top_prefix = "" if source == Path(unpack_to) else source.name + "/"
    for path, why in refused:  # a refused entry still gets its student a row, and a note
        inside = path[len(top_prefix) :] if path.startswith(top_prefix) else path
        head, _, rest = inside.partition("/")
        key = _student_key(head if rest else Path(head).stem)
        sub = students.setdefault(key, Submission(key, source=head))
        sub.refused.append((rest or head, why))
    loose = [p for p in entries if p.is_file() and not p.is_symlink() and p.name not in _JUNK]
    for sub in _group(loose, seen):
        if sub.student in students:  # a loose file named like a folder: same student
            students[sub.student].files += sub.files
            students[sub.student].others += sub.others
        else:
            students[sub.student] = sub
    result = []
    used: set[str] = set()
    for key in sorted(students):
        sub = _finish(students[key])
        sub.student = _unique(_safe_key(key), used)
        result.append(sub)
    return result


def _refusal(path: Path) -> str:
    if path.is_symlink():
        return "a symbolic link, which the grader never follows: hand in the file itself"
    return "not a regular file (a device, socket or pipe): hand in the notebook file itself"


def _student_key(name: str) -> str:
    return unicodedata.normalize("NFC", shown(name))


def _ignore_tree(entry: Path, root: Path, seen: list, why: str) -> None:
    if entry.is_dir() and not entry.is_symlink():
        for path in sorted(entry.rglob("*")):
            if not path.is_dir():
                seen.append((shown(str(path.relative_to(root))), why))
    else:
        seen.append((shown(str(entry.relative_to(root))), why))


def _one(folder: Path, seen: list) -> Submission:
    sub = Submission("submission", source=shown(folder.name))
    _collect_into(sub, folder, "", seen)
    return _finish(sub)


def _collect_into(sub: Submission, folder: Path, prefix: str, seen: list) -> None:
    for path in sorted(_walk(folder), key=lambda p: os.fsencode(str(p))):
        name = shown(str(path.relative_to(folder)))
        where = f"{prefix}/{name}" if prefix else name
        parts = path.relative_to(folder).parts
        if any(p in _JUNK for p in parts):
            sub.others.append(f"{name} (ignored: an editor's or system's copy)")
            seen.append((where, f"{sub.student}: ignored (an editor's or system's copy)"))
        elif path.is_symlink() or not path.is_file():
            sub.refused.append((name, _refusal(path)))
            seen.append((where, f"{sub.student}: refused ({_refusal(path)})"))
        else:
            _add(sub, path, name)
            seen.append((where, f"{sub.student}: {name}"))


def _walk(folder: Path):
    """Every entry below ``folder`` that is not a folder, never following a symlink."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                yield Path(root) / d
        for f in files:
            yield Path(root) / f


def _group(files: list[Path], seen: list) -> list[Submission]:
    students: dict[str, Submission] = {}
    for path in files:
        text = _student_key(path.name)
        match = _CANVAS.match(text)
        key = f"{match['name']}_{match['id']}" if match else _student_key(Path(text).stem)
        sub = students.setdefault(key, Submission(key, source=shown(path.name)))
        _add(sub, path, shown(path.name))
        seen.append((shown(path.name), f"{key}: {shown(path.name)}"))
    return list(students.values())


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


def _safe_key(key: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9._@+-]+", "_", ascii_).strip("._")
    if safe != key or not safe:  # a key that lost characters gets a short, stable tag
        tag = hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:6]
        safe = f"{safe or 'student'}-{tag}"
    return safe


def _unique(key: str, used: set[str]) -> str:
    candidate, n = key, 2
    while candidate.lower() in used:
        candidate, n = f"{key}-{n}", n + 1
    used.add(candidate.lower())
    return candidate


def unpack(
    archive: Path, target: Path, seen: list | None = None, refused: list | None = None
) -> Path:
    """Unpack a zip safely (no paths outside ``target``, no links, bounded size); returns its
    top folder. Every entry is listed in ``seen``; links and special files, never unpacked,
    in ``refused`` as (path, why)."""
    seen = seen if seen is not None else []
    refused = refused if refused is not None else []
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
            taken: set[str] = set()
            for member in members:
                text = member.filename if member.flag_bits & 0x800 else _cp437(member)
                text = text.replace("\\", "/")  # backslashes: a zip made on Windows
                name = shown(text)  # for the inventory; the file keeps its own name
                parts = [p for p in text.split("/") if p not in ("", ".", "..")]
                mode = member.external_attr >> 16
                if member.is_dir() or not parts:
                    continue
                kind = stat.S_IFMT(mode)  # 0 when the archive does not say (zipfile's own)
                if kind and kind != stat.S_IFREG:
                    why = (
                        "a symbolic link, which the grader never follows: hand in the file itself"
                        if kind == stat.S_IFLNK
                        else "not a regular file: hand in the notebook file itself"
                    )
                    seen.append((name, "refused: " + why))
                    refused.append(("/".join(parts), why))
                    continue
                relative = "/".join(parts)  # as written: names NFC-equal stay two files
                if relative in taken:
                    seen.append((name, "refused: a second entry with the same name"))
                    continue
                taken.add(relative)
                if ".." in member.filename.replace("\\", "/").split("/"):
                    seen.append((name, f"unpacked as {relative} (its '..' removed)"))
                destination = target.joinpath(*relative.split("/"))
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(destination, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a readable zip file ({err}).") from err
    top = [p for p in target.iterdir() if p.name not in _JUNK]
    if len(top) == 1 and top[0].is_dir():
        return top[0]
    return target


def _cp437(member: zipfile.ZipInfo) -> str:
    """An entry's name without the UTF-8 flag, as the bytes it was written with."""
    try:
        raw = member.filename.encode("cp437")
    except UnicodeEncodeError:
        return member.filename
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(raw)
