# ruff: noqa: E501 -- the attacks are code in strings, kept as a student would write them
"""A hostile class, graded as an instructor would grade it: every cheat scores exactly what its
honest part earns, no secret reaches a student-visible file, no process outlives the run, and no
classmate is affected.

The class (built here from the lab 01 solution notebook) is one zip, in a folder next to the
grader's secrets, graded once with two jobs as root. Each hostile submission is the solution
with one kind of attack added; ``LOST`` says which exercises the attack itself costs (its honest
part is everything else). Two honest controls are graded among them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from labkit.grading.config import Limits, load_lab
from labkit.grading.gradebook import Gradebook
from labkit.grading.grader import Options, grade
from labkit.grading.sandbox import processes_of, slot_uid

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attribution.ipynb"
EXERCISES = list(load_lab("01").exercises)
LIMITS = Limits(memory_mb=4096, seconds_per_call=4.0, seconds_per_exercise=30.0,
                seconds_per_submission=300.0, processes=128)  # fmt: skip
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux"),
    pytest.mark.skipif(os.geteuid() != 0, reason="grades as root, as an instructor's container"),
]
TAG = secrets.token_hex(6)
SEED = f"seed-{TAG}"
SOLUTION_MARK = f"SOLUTION-MARK-{TAG}"
CLASSMATE_MARK = f"CLASSMATE-MARK-{TAG}"
BESIDE_MARK = f"BESIDE-THE-ZIP-{TAG}"
MARKS = (SEED, SOLUTION_MARK, CLASSMATE_MARK, BESIDE_MARK, TAG)

# What every snoop does with what it finds: raise it, so that it lands in the feedback.
LEAK = """
_SEEN = []


def _snoop_once():  # a snoop costs seconds: once per worker
    if not _SEEN:
        _SEEN.append(_snoop())
    return _SEEN[0]


def _leak(found):
    found = [str(f) for f in found if f]
    if found:
        raise RuntimeError("FOUND: " + " | ".join(found)[:5000])
"""
SNOOPS = {
    "snoop_proc": """
import os
def _snoop():
    seen = []
    for pid in os.listdir('/proc'):
        for what in ('cmdline', 'environ'):
            try:
                text = open(f'/proc/{pid}/{what}', 'rb').read().decode(errors='replace')
            except OSError:
                continue
            if 'seed' in text or 'grades' in text or 'MARK' in text:
                seen.append(text)
    return seen
""",
    "snoop_files": """
import os, re, time
SECRET = re.compile(r'(SOLUTION|CLASSMATE)-MARK-[0-9a-f]{12}|BESIDE-THE-ZIP-[0-9a-f]{12}|seed-[0-9a-f]{12}')
def _snoop():
    seen, started = [], time.monotonic()
    for top in ('/', '/root', '/work', '/tmp', '/home', '/srv', '/autograder'):
        for folder, dirs, files in os.walk(top):
            if time.monotonic() - started > 3 or folder.startswith(('/proc', '/sys', '/usr', '/lib')):
                dirs[:] = []
                continue
            for name in files:
                if name.endswith(('.ipynb', '.json', '.txt', '.csv', '.py', '.zip', '.st', '.toml')):
                    try:
                        text = open(os.path.join(folder, name), 'rb').read(400_000).decode(errors='replace')
                    except OSError:
                        continue
                    solution = name.endswith('.ipynb') and '# BEGIN SOLUTION' in text
                    if solution or SECRET.search(text):
                        seen.append(os.path.join(folder, name) + ': ' + text[:300])
    return seen
""",
    "snoop_git": """
import subprocess
def _snoop():
    seen = []
    for where in ('/work/main', '.', '/', '/root'):
        try:
            out = subprocess.run(['git', '-C', where, 'show', 'HEAD:solutions/01_attribution.ipynb'],
                                 capture_output=True, text=True, timeout=5)
        except Exception:
            continue
        if out.returncode == 0:
            seen.append(out.stdout[:2000])
    return seen
""",
    "snoop_archive": """
import os, zipfile
def _snoop():
    seen = []
    for folder, dirs, files in os.walk('/'):
        if folder.startswith(('/proc', '/sys', '/usr', '/lib', '/dev')):
            dirs[:] = []
            continue
        for name in files:
            if name.endswith('.zip'):
                try:
                    names = zipfile.ZipFile(os.path.join(folder, name)).namelist()
                except Exception:
                    continue
                if any(n.endswith('.ipynb') for n in names):  # a class's hand-ins
                    seen.append(name + ': ' + ', '.join(names[:50]))
    return seen
""",
    "snoop_memory": """
import gc, sys
def _snoop():
    seen = [name for name in sys.modules if name.startswith('labkit.grading')]
    for obj in gc.get_objects():
        kind = type(obj).__name__
        if kind in ('ComputedAnswers', 'AnswerKey', 'RunConfig', 'Grading'):
            seen.append(kind)
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if type(value).__name__ in ('Checker', 'ComputedAnswers', 'RunConfig'):
                seen.append(repr(value))
        frame = frame.f_back
    return seen
""",
    "snoop_import": """
def _snoop():
    seen = []
    for name in ('labkit.grading.answer_keys.lab01', 'labkit.grading.answers', 'labkit.grading'):
        try:
            __import__(name)
            seen.append('imported ' + name)
        except ImportError:
            pass
    return seen
""",
    "snoop_network": """
import socket
def _snoop():
    seen = []
    for host, port in (('1.1.1.1', 53), ('127.0.0.1', 22), ('127.0.0.1', 8888)):
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            seen.append(f'connected to {host}:{port}')
        except OSError:
            pass
    return []  # connecting is not a leak; the tests below check the data
""",
    "snoop_jobs": """
import os
def _snoop():
    seen = []
    for base in ('/tmp', os.path.dirname(os.getcwd()), '/labkit-worker/..'):
        try:
            for name in os.listdir(base):
                path = os.path.join(base, name)
                if os.path.isdir(path) and path != os.getcwd():
                    for inner in os.listdir(path):
                        seen.append(os.path.join(path, inner))
        except OSError:
            pass
    return [s for s in seen if 'job-' in s]
""",
}

HOSTILE_FUNCTIONS = {  # exercise -> code that replaces it (each costs that exercise only)
    "patch_checker": (
        "saliency",
        """
import torch
import labkit.checks.core as core

class _Patch:  # runs while the notebook's definitions are made
    torch.isclose = lambda *a, **k: torch.ones((), dtype=torch.bool)
    torch.allclose = lambda *a, **k: True
    core.Checker.close = lambda self, got, *a, **k: got
    core.Checker.true = lambda *a, **k: None

def saliency(f, embeddings):
    return torch.zeros(embeddings.shape[1])
""",
    ),
    "liar_tensor": (
        "saliency",
        """
import torch

class LyingTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.isclose, torch.allclose, torch.equal, torch.Tensor.__eq__):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

def saliency(f, embeddings):
    return torch.zeros(embeddings.shape[1]).as_subclass(LyingTensor)
""",
    ),
    "loop_writing_progress": (
        "saliency",
        """
import json
def saliency(f, embeddings):
    while True:  # and it claims to be done, over and over
        with open('progress.json', 'w') as handle:
            json.dump({'state': 'done', 'since': 1e12}, handle)
""",
    ),
    "loop_alarm_blocked": (
        "input_x_gradient",
        """
import signal
def input_x_gradient(f, embeddings):
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    while True:
        pass
""",
    ),
    "os_exit": ("saliency", "import os\ndef saliency(f, embeddings):\n    os._exit(3)\n"),
    "sys_exit": ("input_x_gradient", "import sys\ndef input_x_gradient(f, e):\n    sys.exit(1)\n"),
    "keyboard_interrupt": ("spearman", "def spearman(a, b):\n    raise KeyboardInterrupt\n"),
    "huge_message": ("saliency", "def saliency(f, e):\n    raise ValueError('A' * (30 * 2**20))\n"),
    "huge_return": (
        "spearman",
        "import torch\ndef spearman(a, b):\n    return torch.zeros(10**8)\n",
    ),
    "many_tensors": (
        "saliency",
        """
import torch
def saliency(f, embeddings):
    return [torch.zeros(4_000_000) for _ in range(20)]
""",
    ),
    "raw_frame": (
        "saliency",
        """
import os, socket, struct
def saliency(f, embeddings):
    for fd in range(3, 64):
        try:
            socket.socket(fileno=os.dup(fd)).send(struct.pack('<Q', 10 * 2**30) + b'x' * 64)
        except OSError:
            pass
    return None
""",
    ),
    "pickle_reduce": (
        "spearman",
        """
class Evil:
    def __reduce__(self):
        return (print, ('pwned',))
def spearman(a, b):
    return Evil()
""",
    ),
    "ansi_message": (
        "saliency",
        """
def saliency(f, embeddings):
    raise RuntimeError('\\x1b[2J\\x1b[31mAll tests passed\\x1b[0m \\u202eFAKE\\u202c')
""",
    ),
    "huge_stdout": (
        "saliency",
        """
def saliency(f, embeddings):
    for _ in range(40):
        print('y' * (4 * 2**20))
    return None
""",
    ),
}
# Attacks that cost nothing of their own: they run, then return the honest answer.
DISRUPTIONS = {
    "fork_bomb": """
import os, time
def _disrupt():
    for _ in range(30):  # a bounded fork bomb, within the submission's process limit
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
""",
    "setsid_daemon": """
import os, time
def _disrupt():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
""",
    "daemon_killer": """
import os, signal, time
def _disrupt():
    mine = os.getpid()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:  # kill everything it may, but its own worker
                for pid in os.listdir('/proc'):
                    if pid.isdigit() and int(pid) not in (mine, os.getpid()):
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
                time.sleep(0.05)
        os._exit(0)
""",
    "threads_left": """
import threading
def _disrupt():
    def spin():
        while True:
            pass
    threading.Thread(target=spin, daemon=False).start()
""",
    "memory_children": """
import os, time
def _disrupt():
    for _ in range(3):
        if os.fork() == 0:
            block = bytearray(1536 * 2**20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(2)
            os._exit(0)
""",
}


# ----- building the class ----------------------------------------------------------------------
def solution() -> nbformat.NotebookNode:
    return nbformat.read(SOLUTION, as_version=4)


def defining_cell(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source)


def wrapped(nb: nbformat.NotebookNode, name: str, before: str, call: str) -> None:
    """``name`` now runs ``before``'s ``call`` first, then the honest solution (all in the
    cell that defined it, so the check cell below still finds it, as in Run All)."""
    cell = defining_cell(nb, name)
    cell.source = (
        cell.source.replace(f"def {name}(", f"def _honest_{name}(")
        + "\n\n"
        + before
        + LEAK
        + f"\n\ndef {name}(*args, **kwargs):\n    {call}\n"
        f"    return _honest_{name}(*args, **kwargs)\n"
    )


def replaced(nb: nbformat.NotebookNode, name: str, source: str) -> None:
    defining_cell(nb, name).source = source


LOST: dict[str, set[str] | None] = {}  # row's source -> exercises the attack costs; None: any
NOT_UTF8 = b"caf\xe9.ipynb"  # a Latin-1 file name, as an old system writes it


def make_class(folder: Path) -> Path:
    """The class as a zip (returned), in a folder that also holds a file no one may read."""
    entries: list[tuple[str, bytes, int]] = []  # (name, data, unix mode)

    def save(nb, student: str, name: str = "lab01.ipynb", lost=frozenset()) -> None:
        entries.append((f"{student}/{name}", nbformat.writes(nb).encode(), 0))
        LOST[student] = set(lost) if lost is not None else None

    nb = solution()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"Notes: {CLASSMATE_MARK}"))
    nb.cells.append(nbformat.v4.new_code_cell(f"# {CLASSMATE_MARK}\nNOTE = '{CLASSMATE_MARK}'\n"))
    save(nb, "control_a")
    for name, code in SNOOPS.items():
        nb = solution()
        wrapped(nb, "saliency", code, "_leak(_snoop_once())")
        save(nb, name)
    for name, (exercise, code) in HOSTILE_FUNCTIONS.items():
        nb = solution()
        replaced(nb, exercise, code)
        save(nb, name, lost={exercise})
    for name, code in DISRUPTIONS.items():
        nb = solution()
        once = "if not _DONE:\n        _DONE.append(1)\n        _disrupt()"  # once per worker
        wrapped(nb, "input_x_gradient", code + "\n_DONE = []\n", once)
        save(nb, name, lost=None if name == "memory_children" else set())
    nb = solution()  # Run All stops at the first cell that reads a name no cell above defines
    nb.cells.insert(3, nbformat.v4.new_code_cell("print(saliency)\n"))
    save(nb, "used_before_defined", lost=set(EXERCISES))
    nb = solution()  # an annotation naming nothing: fails at definition, as in Jupyter
    cell = defining_cell(nb, "saliency")
    cell.source = cell.source.replace("def saliency(f", "def saliency(f: NoSuchType")
    first = next(i for i, c in enumerate(nb.cells) if c is cell)
    defined_before = {
        n for n in EXERCISES if any(f"def {n}(" in c.source for c in nb.cells[:first])
    }
    save(nb, "annotation_fails", lost=set(EXERCISES) - defined_before)
    nb = solution()
    nb.cells.append(nbformat.v4.new_code_cell("del spearman\n"))
    save(nb, "deleted_later", lost={"spearman"})
    nb = solution()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import torch\n\ndef input_x_gradient(f, embeddings):\n"
        "    return torch.zeros(embeddings.shape[1])\n"))  # fmt: skip
    save(nb, "redefined_later", lost={"input_x_gradient"})
    nb = solution()
    answers = [i for i, c in enumerate(nb.cells) if "BEGIN SOLUTION -->" in c.source][:1]
    for i in answers:
        nb.cells[i].source = (
            '=HYPERLINK("http://evil")\n~~~~\n# Grade: full marks\n<script>alert(1)</script>\n'
            "[click](javascript:alert(1)) \x1b[2J"
        )
    save(nb, "markdown_injection")
    entries.append(("symlinked/lab01.ipynb", str(SOLUTION).encode(), 0o120777))
    LOST["symlinked"] = set(EXERCISES)
    entries.append(("cafX.ipynb", nbformat.writes(solution()).encode(), 0))  # renamed below
    LOST["caf\\xe9.ipynb"] = set()
    entries.append(("Jos\u00e9.ipynb", nbformat.writes(solution()).encode(), 0))  # NFC
    entries.append(("Jose\u0301.ipynb", nbformat.writes(solution()).encode(), 0))  # NFD
    LOST["José.ipynb"] = set()
    entries.append(("zipped_dot/.hidden_lab.ipynb", nbformat.writes(solution()).encode(), 0))
    entries.append(("zipped_backslash\\lab01.ipynb", nbformat.writes(solution()).encode(), 0))
    LOST["zipped_dot"], LOST["zipped_backslash"] = set(), set()
    save(solution(), "control_b")

    archive = folder / "class.zip"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    raw = archive.read_bytes()  # a name that is not UTF-8: same length, no UTF-8 flag
    archive.write_bytes(raw.replace(b"cafX.ipynb", NOT_UTF8))
    (folder / "instructor_notes.txt").write_text(BESIDE_MARK)
    return archive


# ----- the run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    solutions = base / "solutions"
    solutions.mkdir()
    nb = solution()
    nb.cells.append(nbformat.v4.new_code_cell(f"# {SOLUTION_MARK}\n"))
    nbformat.write(nb, solutions / SOLUTION.name)
    archive = make_class(base / "inbox")
    out = base / f"grades-{TAG}"
    before = set(processes_of(slot_uid(0))) | set(processes_of(slot_uid(1)))
    summary = grade(
        Options(
            lab="01",
            submissions=archive,
            out=out,
            jobs=2,
            seed=SEED,
            limits=LIMITS,
            solutions=solutions,
            labs=ROOT / "labs",
            progress=False,
        )
    )
    leftover = set(processes_of(slot_uid(0))) | set(processes_of(slot_uid(1)))
    records = {r.source or r.student: r for r in Gradebook(out).records()}
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if os.environ.get("LABKIT_HOSTILE_TABLE"):  # the results table, for a closing note
        lines = ["| submission | score | its honest part | of | flagged |", "|---|---|---|---|---|"]
        for student in LOST:
            record = records[student]
            honest = honest_part(records, student) if LOST[student] is not None else "-"
            lines.append(f"| {student} | {record.score:g} | {honest} | {record.max_score:g} | "
                         f"{'yes' if record.flags else 'no'} |")  # fmt: skip
        Path(os.environ["LABKIT_HOSTILE_TABLE"]).write_text("\n".join(lines) + "\n")
    return out, records, rows, summary, before, leftover


def honest_part(records, student: str) -> float:
    record = records[student]
    return sum(e.max_score for e in record.exercises if e.function not in LOST[student])


def test_the_corpus_is_large_and_every_file_has_a_row(graded) -> None:
    out, records, rows, summary, _, _ = graded
    assert len(LOST) >= 30
    assert set(LOST) <= set(records), set(LOST) - set(records)
    inventory = (out / "inventory.csv").read_text(encoding="utf-8")
    for needle in ("caf\\xe9.ipynb", ".hidden_lab.ipynb", "zipped_backslash/lab01.ipynb",
                   "symlinked/lab01.ipynb"):  # fmt: skip
        assert needle in inventory, needle
    sources = {row["source"] for row in rows}
    assert "caf\\xe9.ipynb" in sources and "José.ipynb" in sources
    assert len(records["José.ipynb"].files) == 2


def test_every_cheat_scores_exactly_its_honest_part(graded) -> None:
    _, records, _, _, _, _ = graded
    wrong = {}
    for student, lost in LOST.items():
        if lost is None:
            continue
        if records[student].score != pytest.approx(honest_part(records, student)):
            failed = [(e.function, e.message[:200]) for e in records[student].exercises
                      if e.score < e.max_score and e.function not in lost]  # fmt: skip
            wrong[student] = (records[student].score, honest_part(records, student), failed)
    assert wrong == {}


def test_controls_are_not_affected_by_classmates(graded) -> None:
    _, records, _, _, _, _ = graded
    for control in ("control_a", "control_b", "José.ipynb", "zipped_dot", "caf\\xe9.ipynb"):
        record = records[control]
        assert record.score == record.max_score > 0, [
            (e.function, e.message[:200]) for e in record.exercises if e.score < e.max_score
        ]


def test_no_secret_in_any_student_visible_file(graded) -> None:
    out, _, _, _, _, _ = graded
    visible = [*(out / "feedback").glob("*.txt"), *(out / "results").rglob("results.json")]
    assert len(visible) >= 2 * 30
    for path in visible:
        text = path.read_text(encoding="utf-8")
        for mark in MARKS:
            assert mark not in text or (mark == CLASSMATE_MARK and "control_a" in str(path)), (
                path, mark)  # fmt: skip
        assert "FOUND:" not in text, (path, text[text.index("FOUND:") : text.index("FOUND:") + 300])
        assert str(out) not in text


def test_what_comes_back_is_capped_and_escaped(graded) -> None:
    out, records, _, _, _, _ = graded
    for path in [*(out / "feedback").glob("*.txt"), *(out / "results").rglob("results.json")]:
        data = path.read_bytes()
        assert len(data) < 1_000_000, path
        assert b"\x1b" not in data and "\u202e".encode() not in data, path
    json.loads((out / "results" / "markdown_injection" / "results.json").read_text())
    for review in (out / "written").glob("*.md"):
        text = review.read_text(encoding="utf-8")
        for block in re.findall(r"~~~~+text\n(.*?)\n~~~~+", text, re.DOTALL):
            assert "# Grade" not in block or True  # inside a fence: shown as text
        assert "<script>" not in text.replace("~~~~", "") or "~~~~~text" in text
    for review in (out / "written").glob("*.csv"):
        for row in csv.reader(review.read_text(encoding="utf-8").splitlines()):
            assert not any(cell.startswith(("=", "+", "@")) for cell in row), row


def test_nothing_outlives_the_run(graded) -> None:
    _, _, _, _, before, leftover = graded
    assert leftover == set() and before == set()


def test_hostile_submissions_are_flagged_for_the_instructor(graded) -> None:
    _, records, _, _, _, _ = graded
    for student in ("snoop_proc", "snoop_memory", "patch_checker", "liar_tensor", "os_exit"):
        assert records[student].flags, student
    assert not records["control_b"].flags
