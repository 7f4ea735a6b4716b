"""The ``labkit`` command: ``doctor``, ``prepare``, ``build``; for instructors ``grade``,
``gradescope`` and ``release``."""

from __future__ import annotations

import argparse
import sys


def _prepare(args: argparse.Namespace) -> int:
    """Convert the default model if needed (checking every byte of an existing conversion),
    then load it and run one forward pass; "ready" only after that."""
    try:
        from labkit import models
        from labkit.doctor import verify_default_model
    except ImportError as err:
        print(
            f"labkit prepare needs torch and transformers ({err}). Run `labkit doctor`: it "
            "names what is missing and the command that installs it.",
            file=sys.stderr,
        )
        return 1
    try:
        path = models.prepare_default_model(force=args.force, full_check=True)
        result = verify_default_model()
    except Exception as err:  # noqa: BLE001 (one line, never a traceback)
        text = str(err).strip().splitlines()
        print(f"labkit prepare: {text[0] if text else type(err).__name__}", file=sys.stderr)
        if isinstance(err, models.ModelUnavailableError) and len(text) > 1:
            print("\n".join(text[1:]), file=sys.stderr)
        return 1
    print(f"Default model ready in {path}: {result}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from labkit.doctor import main

    return main()


def _build(args: argparse.Namespace) -> int:
    """Write labs/ from solutions/, and record the checks' answers for the notebooks' own
    problems (labkit/checks/expected/) when the solutions are this labkit's repository's."""
    from pathlib import Path

    from labkit.build import build
    from labkit.notebooks import NotebookError
    from labkit.publish import ReleaseError

    try:
        changes = build(Path(args.solutions), Path(args.labs), check_only=args.check)
    except (NotebookError, ReleaseError, OSError) as err:
        print(f"labkit build: {err}", file=sys.stderr)
        return 1
    recorded: list[str] = []
    import labkit

    ours = (
        Path(labkit.__file__).resolve().parent
        == (Path(args.solutions).resolve().parent / "labkit").resolve()
    )
    try:
        from labkit.grading.answers import RecordingError, write_recordings
    except ImportError:  # the student release has no grader: nothing to record
        ours = False
    if ours:  # the answers go into the labkit next to these solutions, and only that one
        try:
            recorded = write_recordings(Path(args.solutions), check_only=args.check)
        except (RecordingError, NotebookError) as err:
            print(f"labkit build: {err}", file=sys.stderr)
            return 1
    if args.check and (changes or recorded):
        stale = [str(c) for c in changes] + recorded
        print("Out of date (run `labkit build`): " + ", ".join(stale), file=sys.stderr)
        return 1
    written = [str(c.path) for c in changes if c.action == "write"] + recorded
    removed = [str(c) for c in changes if c.action == "remove"]
    if written:
        print("Wrote " + ", ".join(written))
    if removed:
        print("Removed " + ", ".join(removed))
    if not changes and not recorded:
        print("Up to date.")
    return 0


def _limits(args: argparse.Namespace):
    from labkit.grading.config import Limits

    return Limits(
        memory_mb=args.memory_mb,
        seconds_per_call=args.seconds_per_call,
        seconds_per_exercise=args.seconds_per_exercise,
        seconds_per_submission=args.seconds_per_submission,
    )


def _seed(args: argparse.Namespace) -> str | None:
    """The hidden seed: --seed-file, else $LABKIT_GRADING_SEED (where --seed put it)."""
    import os
    from pathlib import Path

    if getattr(args, "seed_file", None):
        return Path(args.seed_file).read_text(encoding="utf-8").strip() or None
    return os.environ.get("LABKIT_GRADING_SEED") or None


def hide_seed_from_argv(argv: list[str]) -> None:
    """A seed on the command line can be read by any process on the machine (/proc/PID/cmdline).
    Start again without it, passing it in the environment, which only this user can read."""
    import os

    for i, arg in enumerate(argv):
        value = None
        if arg == "--seed" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--seed="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        if value is not None:
            os.environ["LABKIT_GRADING_SEED"] = value
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "labkit.cli", *rest])


def _grade(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.grading.config import GradingError

    try:
        if args.merge:
            from labkit.grading.gradebook import merge

            problems = merge(Path(args.merge))
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"Merged the written scores into {args.merge}.")
            return 1 if problems else 0
        if not args.lab or not args.submissions or not args.out:
            print(
                "usage: labkit grade LAB SUBMISSIONS --out OUT  (or labkit grade --merge OUT)",
                file=sys.stderr,
            )
            return 2
        from labkit.grading.grader import Options, grade

        summary = grade(
            Options(
                lab=args.lab,
                submissions=Path(args.submissions),
                out=Path(args.out),
                jobs=args.jobs,
                force=args.force,
                seed=_seed(args),
                hidden=args.hidden,
                limits=_limits(args),
                points_file=Path(args.points) if args.points else None,
                solutions=Path(args.solutions),
                labs=Path(args.labs),
                check_reference=not args.skip_reference,
                progress=not args.quiet,
            )
        )
    except (GradingError, FileNotFoundError, ValueError) as err:
        print(f"labkit grade: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "Interrupted: what was graded is saved; run the same command to go on.", file=sys.stderr
        )
        return 130
    print(
        f"Graded {summary.graded} of {summary.students} students "
        f"({summary.skipped} already graded) in {summary.seconds:.0f} s. "
        f"Gradebook: {summary.out / 'gradebook.csv'}"
    )
    for problem in summary.problems:
        print(problem, file=sys.stderr)
    return 0


def _gradescope(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.grading.config import GradingError
    from labkit.grading.gradescope import write_autograder

    try:
        path = write_autograder(
            args.lab,
            Path(args.out) if args.out else None,
            seed=_seed(args),
            hidden=args.hidden,
            limits=_limits(args),
            points_file=Path(args.points) if args.points else None,
            solutions=Path(args.solutions),
            labs=Path(args.labs),
            check_reference=not args.skip_reference,
        )
    except (GradingError, FileNotFoundError) as err:
        print(f"labkit gradescope: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {path}: upload it as the assignment's autograder on Gradescope.")
    return 0


def _release(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labkit.release import ReleaseError, write_release

    try:
        files = write_release(Path(args.dir), Path(args.root), force=args.force)
    except ReleaseError as err:
        print(f"labkit release: {err}", file=sys.stderr)
        return 1
    print(f"Wrote the student release ({len(files)} files) to {args.dir}.")
    return 0


def _limit_options(parser: argparse.ArgumentParser) -> None:
    from labkit.grading.config import Limits

    d = Limits()
    parser.add_argument(
        "--seed",
        help="hidden seed (moved out of the command line at once; default: "
        "$LABKIT_GRADING_SEED, or random)",
    )
    parser.add_argument("--seed-file", help="a file that holds the hidden seed")
    parser.add_argument("--hidden", type=int, default=2, help="hidden variants per check")
    parser.add_argument("--points", help="points file (default: grading.toml if present)")
    parser.add_argument("--solutions", default="solutions", help="solution notebooks folder")
    parser.add_argument("--labs", default="labs", help="student notebooks folder")
    parser.add_argument("--memory-mb", type=int, default=d.memory_mb)
    parser.add_argument("--seconds-per-call", type=float, default=d.seconds_per_call)
    parser.add_argument("--seconds-per-exercise", type=float, default=d.seconds_per_exercise)
    parser.add_argument("--seconds-per-submission", type=float, default=d.seconds_per_submission)
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="do not check that the solution scores full marks on the hidden variants",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="check versions, device and the default model")
    prepare = commands.add_parser("prepare", help="convert and cache the default model")
    prepare.add_argument("--force", action="store_true", help="convert again")
    build = commands.add_parser("build", help="write labs/ from solutions/")
    build.add_argument("--solutions", default="solutions")
    build.add_argument("--labs", default="labs")
    build.add_argument("--check", action="store_true", help="only report stale labs")
    grade = commands.add_parser(
        "grade", help="grade submitted notebooks with hidden tests (instructors)"
    )
    grade.add_argument("lab", nargs="?", help="the lab, e.g. 01")
    grade.add_argument("submissions", nargs="?", help="a folder or a .zip of notebooks")
    grade.add_argument("--out", help="output folder (gradebook, feedback, results)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    grade.add_argument("--force", action="store_true", help="regrade every submission")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")
    grade.add_argument("--merge", metavar="OUT", help="merge the filled-in written scores")
    _limit_options(grade)
    gradescope = commands.add_parser("gradescope", help="write a Gradescope autograder zip")
    gradescope.add_argument("lab", help="the lab, e.g. 01")
    gradescope.add_argument("--out", help="the zip to write (default: autograder-labNN.zip)")
    _limit_options(gradescope)
    release = commands.add_parser("release", help="write the student release (no solutions)")
    release.add_argument("dir", help="where to write it (a new or empty folder)")
    release.add_argument("--root", default=".", help="this repository's root")
    release.add_argument("--force", action="store_true", help="replace DIR's contents")
    handlers = {
        "doctor": _doctor,
        "prepare": _prepare,
        "build": _build,
        "grade": _grade,
        "gradescope": _gradescope,
        "release": _release,
    }
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("grade", "gradescope"):
        hide_seed_from_argv(sys.argv[1:])
    args = parser.parse_args(argv)
    if getattr(args, "seed", None):  # called in-process with a seed (tests): same path
        import os

        os.environ["LABKIT_GRADING_SEED"] = args.seed
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
