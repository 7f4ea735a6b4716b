"""The ``labkit`` command: ``labkit doctor``, ``labkit prepare``, ``labkit build``."""

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
    from pathlib import Path

    from labkit.build import BuildError, build

    try:
        changes = build(Path(args.solutions), Path(args.labs), check_only=args.check)
    except (BuildError, OSError) as err:
        print(f"labkit build: {err}", file=sys.stderr)
        return 1
    if args.check and changes:
        print("Out of date (run `labkit build`): " + ", ".join(map(str, changes)), file=sys.stderr)
        return 1
    written = [str(c.path) for c in changes if c.action == "write"]
    removed = [str(c) for c in changes if c.action == "remove"]
    if written:
        print("Wrote " + ", ".join(written))
    if removed:
        print("Removed " + ", ".join(removed))
    if not changes:
        print("Up to date.")
    return 0


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
    handlers = {"doctor": _doctor, "prepare": _prepare, "build": _build}
    args = parser.parse_args(argv)
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
