"""Mutation testing of labkit's core with mutmut: how many small planted bugs do the fast tests
catch?

mutmut changes one thing at a time in a module (``<`` into ``<=``, ``+ 1`` into ``+ 2``, a
string into ``"XXXX"``, an argument into ``None``...) and runs the tests that call the changed
function (it records, once, which test calls which function). A mutant is *killed* when a test
fails. Survivors are either gaps in the tests or *equivalent* mutants: changes that cannot alter
behaviour (listed, each with a reason, in ``benchmarks/mutation_equivalents.md``).

Modules run one at a time, each against its own fast unit tests only (no notebook, browser,
grading or release tests), in a copy of the checkout under ``.mutation/<module>/`` (git-ignored;
inspect a survivor there with ``../../.venv/bin/mutmut show NAME``). mutmut does not mutate
decorated functions, so in that copy ``@contextmanager`` and ``@property`` functions are
rewritten as ``f = contextmanager(f)`` after the definition (same behaviour, now mutated).

Printed: per module the mutants, killed (a timeout counts as killed: the tests noticed), survived,
equivalent, not covered by the selected tests, the score killed / (mutants - equivalent) and the
time taken; then the survivors that are not listed as equivalent. Run:
    make mutation                      (all modules; sets up the environment first)
    python benchmarks/mutation.py [--modules hooks metrics] [--jobs 2]
    python benchmarks/mutation.py --resume --modules plot   (go on with a stopped run)
    python benchmarks/mutation.py --survivors --modules plot (after new tests: test again
                                                    the last run's survivors only)
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.md"
GOAL = 0.90

# module -> (files to mutate, the fast tests that exercise them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "hooks": (["labkit/hooks.py"], ["tests/test_hooks.py"]),
    "build": (["labkit/build.py"], ["tests/test_build.py"]),
    "metrics": (["labkit/metrics.py"], ["tests/test_metrics.py"]),
    "models": (
        ["labkit/models/adapter.py", "labkit/models/default.py", "labkit/models/loading.py"],
        ["tests/test_models.py", "tests/test_models_messages.py", "tests/test_models_parts.py"],
    ),
    "plot": (
        [
            "labkit/plot/figure.py",
            "labkit/plot/grids.py",
            "labkit/plot/patching.py",
            "labkit/plot/tokens.py",
        ],
        [
            "tests/test_plot_grids.py",
            "tests/test_plot_patching.py",
            "tests/test_plot_tokens.py",
            "tests/test_plot_snapshots.py",
        ],
    ),
    "checks.core": (
        ["labkit/checks/core.py"],
        ["tests/test_checks_core.py", "tests/test_checks_messages.py"],
    ),
}
# What each copy needs: the package, its tests, and what the build tests read.
COPIED = ("labkit", "tests", "solutions", "labs", "pyproject.toml")
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
UNDECORATED = ("contextmanager", "property")
# Imported once by mutmut's fork server, so that each mutant's test run (a fork of it) starts
# warm: transformers imports each model family's code lazily, which alone costs seconds.
PRELOAD = (
    "pytest",
    "torch",
    "numpy",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.gpt_neox.modeling_gpt_neox",
    "tokenizers",
    "safetensors.torch",
    "matplotlib.pyplot",
    "nbformat",
    "IPython",
    "labkit",
    "labkit.build",
    "labkit.checks.core",
    "labkit.hooks",
    "labkit.metrics",
    "labkit.models",
    "labkit.plot",
    "labkit.tiny",
)
# mutmut's exit codes per mutant (see mutmut.stats.status_by_exit_code).
KILLED_CODES = {1, 3}
TIMEOUT_CODES = {36, -24, 24, 152, 255}
SURVIVED_CODES = {0}
NO_TEST_CODES = {5, 33}


@dataclass
class Equivalent:
    name: str
    line: str  # the mutated line, as mutmut writes it
    reason: str


@dataclass
class Score:
    module: str
    mutants: int = 0
    killed: int = 0
    timeout: int = 0
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    no_tests: list[str] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        counted = self.mutants - len(self.equivalent)
        return (self.killed + self.timeout) / counted if counted else 1.0


# ----- the copy mutmut works in -------------------------------------------------------------
def undecorate(source: str) -> str:
    """``@contextmanager def f`` -> ``def f ... f = contextmanager(f)`` (same for property), at
    module and class level, so that mutmut mutates those functions too."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line, last line, replacement), 1-based

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            if not isinstance(node, ast.FunctionDef) or len(node.decorator_list) != 1:
                continue
            decorator = node.decorator_list[0]
            if not (isinstance(decorator, ast.Name) and decorator.id in UNDECORATED):
                continue
            indent = " " * node.col_offset
            after = f"{indent}{node.name} = {decorator.id}({node.name})\n"
            edits.append((decorator.lineno, decorator.lineno, ""))
            edits.append((node.end_lineno + 1, node.end_lineno, after))  # insert after the body

    visit(tree.body)
    for first, last, text in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[first - 1 : last] = [text] if text else []
    return "".join(lines)


def write_settings(module: str, work: Path) -> None:
    """The copy's pyproject.toml: the checkout's, plus mutmut's settings for ``module`` (written
    again on a resumed run, so a test file added to MODULES since is run too)."""
    files, tests = MODULES[module]
    settings = {
        "source_paths": ["labkit"],
        "only_mutate": files,
        "also_copy": ["solutions", "labs", "preload.txt"],
        "pytest_add_cli_args_test_selection": tests,
        # no --durations, no cache folder, no warnings summary: quiet, repeatable runs
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore"],
        "process_isolation": "forkserver",  # torch is not fork-safe after it has run
        "forkserver_warmup": "import",
        "preload_modules_file": "preload.txt",
        # A mutant's tests get (their measured time + 20 s) x 5 before they count as timed
        # out: the measured time leaves out fixtures (loading the default model) and a shared
        # machine can be slow.
        "timeout_constant": 20.0,
        "timeout_multiplier": 5.0,
        "use_git_change_detection": False,
    }
    (work / "preload.txt").write_text("\n".join(PRELOAD) + "\n", encoding="utf-8")
    table = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "pyproject.toml").write_text(project + table, encoding="utf-8")


def prepare_copy(module: str, work: Path) -> None:
    files = MODULES[module][0]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=NOT_COPIED)
        elif src.exists():
            shutil.copy2(src, work / name)
    for name in files:
        path = work / name
        path.write_text(undecorate(path.read_text(encoding="utf-8")), encoding="utf-8")
    write_settings(module, work)


def resumable(work: Path) -> str:
    """Why the copy of an earlier run cannot be resumed ("" when it can)."""
    return "" if (work / "mutants").is_dir() else f"there is no earlier run in {work}"


def refresh_copy(module: str, work: Path) -> None:
    """Bring the copy's tests and mutated files up to date with the checkout. mutmut keeps
    every verdict of a function whose source is unchanged (it compares a hash per function)
    and tests the mutants that have none."""
    shutil.rmtree(work / "tests")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=NOT_COPIED)
    write_settings(module, work)
    for name in MODULES[module][0]:
        current = undecorate((ROOT / name).read_text(encoding="utf-8"))
        if (work / name).read_text(encoding="utf-8") != current:
            print(f"{module}: {name} changed; its changed functions are tested again", flush=True)
            (work / name).write_text(current, encoding="utf-8")


def run_mutmut(work: Path, jobs: int, names: Sequence[str] = ()) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABKIT_CACHE_TEST")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",  # one thread per worker: --jobs workers share the cores
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    with open(work / "mutmut.log", "w", encoding="utf-8") as log:
        done = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return done.returncode


# ----- reading the results ------------------------------------------------------------------
def load_equivalents() -> dict[str, Equivalent]:
    """Entries ``- `NAME` `mutated line`: reason`` in benchmarks/mutation_equivalents.md."""
    entries = {}
    pattern = re.compile(r"^- `(?P<name>[^`]+)` ``?(?P<line>.+?)``?: (?P<reason>.+)$")
    if EQUIVALENTS.exists():
        for line in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
            match = pattern.match(line.strip())
            if match:
                entries[match["name"]] = Equivalent(**match.groupdict())
    return entries


def mutant_diff(work: Path, name: str) -> list[str]:
    """The lines a mutant changes, as ``-old`` / ``+new`` (from the mutated module's source)."""
    module, _, function = name.rpartition(".")
    path = work / "mutants" / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    source = path.read_text(encoding="utf-8")
    functions = {
        node.name: node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    original = re.sub(r"__mutmut_\d+$", "__mutmut_orig", function)
    if function not in functions or original not in functions:
        return []

    def body(fn: str) -> list[str]:
        text = (ast.get_source_segment(source, functions[fn]) or "").replace(fn, "f", 1)
        return [line.strip() for line in text.splitlines()]

    diff = difflib.unified_diff(body(original), body(function), lineterm="", n=0)
    return [d for d in diff if d[:1] in "+-" and not d.startswith(("+++", "---"))]


def score_module(module: str, work: Path, equivalents: dict[str, Equivalent]) -> Score:
    score = Score(module)
    for name in MODULES[module][0]:
        meta = work / "mutants" / (name + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        for key, code in sorted(codes.items()):
            score.mutants += 1
            if code in KILLED_CODES:
                score.killed += 1
            elif code in TIMEOUT_CODES:
                score.timeout += 1
            elif code in SURVIVED_CODES or code in NO_TEST_CODES:
                entry = equivalents.get(key)
                if entry and any(
                    entry.line.strip() == d[1:].strip() for d in mutant_diff(work, key)
                ):
                    score.equivalent.append(key)
                elif code in SURVIVED_CODES:
                    score.survived.append(key)
                else:
                    score.no_tests.append(key)
            else:
                score.other[str(code)] = score.other.get(str(code), 0) + 1
    return score


def report(scores: list[Score], total_seconds: float) -> bool:
    header = (
        f"{'module':<12} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} "
        f"{'no test':>7} {'equiv.':>6} {'score':>6} {'time':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for s in scores:
        other = f"  other exit codes: {s.other}" if s.other else ""
        print(
            f"{s.module:<12} {s.mutants:>7} {s.killed:>7} {s.timeout:>7} {len(s.survived):>8} "
            f"{len(s.no_tests):>7} {len(s.equivalent):>6} {s.score:>6.1%} "
            f"{s.seconds / 60:>6.1f} m{other}"
        )
    print(f"total time: {total_seconds / 60:.1f} min")
    print("score = (killed + timeout) / (mutants - equivalent); goal >= 90% per module")
    missed = [(s.module, name) for s in scores for name in s.survived + s.no_tests]
    if missed:
        print(
            "\nSurvivors not listed as equivalent (see the diff with: cd .mutation/MODULE && "
            "../../.venv/bin/mutmut show NAME):"
        )
        for module, name in missed:
            print(f"  {module}: {name}")
    return all(s.score >= GOAL for s in scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES))
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument(
        "--report-only", action="store_true", help="score the last run again, run nothing"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the last run's verdicts and test only the mutants it did not reach",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="keep the last run and test again only its survivors (after adding tests)",
    )
    args = parser.parse_args()
    args.resume = args.resume or args.survivors
    equivalents = load_equivalents()
    scores = []
    started = time.perf_counter()
    for module in args.modules:
        work = WORK / module
        t0 = time.perf_counter()
        if not args.report_only:
            print(f"{module}: mutating {', '.join(MODULES[module][0])} ...", flush=True)
            why_not = resumable(work) if args.resume else "not asked to resume"
            if args.resume and why_not:
                print(f"{module}: cannot resume ({why_not}); starting a fresh run", flush=True)
            if why_not:
                prepare_copy(module, work)
            else:
                refresh_copy(module, work)
            code = run_mutmut(work, args.jobs)  # every mutant without a verdict
            if args.survivors and not why_not and code == 0:
                last = score_module(module, work, equivalents)
                again = last.survived + last.no_tests
                print(f"{module}: testing again {len(again)} survivors", flush=True)
                code = run_mutmut(work, args.jobs, again) if again else 0
            if code != 0:
                print(f"{module}: mutmut stopped with exit code {code}; see {work}/mutmut.log")
        score = score_module(module, work, equivalents)
        score.seconds = time.perf_counter() - t0
        if args.report_only:
            timings = WORK / "timings.json"
            score.seconds = (
                json.loads(timings.read_text()).get(module, 0.0) if timings.exists() else 0
            )
        else:
            timings = WORK / "timings.json"
            saved = json.loads(timings.read_text()) if timings.exists() else {}
            # a resumed run adds its time to the time of the run it went on with
            resumed = args.resume and not why_not
            saved[module] = score.seconds + (saved.get(module, 0.0) if resumed else 0.0)
            score.seconds = saved[module]
            timings.write_text(json.dumps(saved, indent=1))
        print(f"{module}: {score.score:.1%} of {score.mutants} mutants killed", flush=True)
        scores.append(score)
    ok = report(scores, time.perf_counter() - started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
