"""``labkit doctor``: is this environment ready for the labs? Each problem comes with its fix.

It says "ready" for the default model only after loading it and running one forward pass. It
imports nothing heavy at module level, so it also works (and says what to install) when torch
or transformers is missing or broken.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass

# package -> what to run if it is missing
REQUIRED = {
    "torch": 'pip install "torch>=2.3"  (locally: pip install torch==2.13.0)',
    "transformers": 'pip install "transformers>=4.56,<6"',
    "inseq": 'pip install "inseq==0.7.1"',
    "captum": 'pip install "captum>=0.8,<0.10"',
    "nnsight": 'pip install "nnsight>=0.8,<0.9"',
    "ipywidgets": 'pip install "ipywidgets>=8,<9"',
    "matplotlib": "pip install matplotlib",
    "gguf": "pip install gguf",
    "accelerate": "pip install accelerate",
}
OPTIONAL = {"jupyterlab": 'pip install "jupyterlab>=4,<5"'}
# Imported for real (not only looked up): the default model's check needs them to work.
IMPORTED = ("torch", "transformers")
PROMPT, EXPECTED = "The capital of France is", " Paris"


@dataclass
class Finding:
    name: str
    value: str
    fix: str | None = None  # None: all good


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_error(package: str) -> str | None:
    """Why ``import package`` fails, in one line, or None if it works."""
    try:
        importlib.import_module(package)
    except Exception as err:  # noqa: BLE001 (a broken install fails in many ways)
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    return None


def _package(package: str, fix: str, needed: bool) -> Finding:
    version = _version(package)
    if version is None:
        return Finding(package, "missing", fix=fix if needed else None)
    if package in IMPORTED:
        error = _import_error(package)
        if error:
            return Finding(
                package,
                f"{version} installed, but `import {package}` fails ({error})",
                fix=f"{fix.split('  ')[0]} --force-reinstall",
            )
    return Finding(package, version)


def _device() -> Finding:
    import torch

    if torch.cuda.is_available():
        return Finding("device", f"cuda ({torch.cuda.get_device_name(0)})")
    return Finding("device", f"cpu ({os.cpu_count()} cores)")


def verify_default_model() -> str:
    """Load the default model on the CPU and run one forward pass; return what it predicted.

    Raises what loading raises, or RuntimeError if the prediction is not finite or not
    ``EXPECTED`` (None: any finite prediction will do).
    """
    import torch

    from labkit import models

    start = time.perf_counter()
    lm = models.load_model(device="cpu")
    seconds = time.perf_counter() - start
    probs = lm.next_token_probs(PROMPT)
    if not torch.isfinite(probs).all():
        raise RuntimeError("its forward pass gives NaN or infinite probabilities")
    p, top = probs.max(0)
    word = lm.tokenizer.decode([top.item()])
    result = f"{PROMPT!r} -> {word!r} (p {p.item():.2f})"
    if EXPECTED is not None and word != EXPECTED:
        raise RuntimeError(f"{result}, expected {EXPECTED!r}: the weights may be damaged")
    return f"loads in {seconds:.1f} s; {result}"


def _default_model(imports_ok: bool) -> Finding:
    name = "default model"
    if not imports_ok:
        return Finding(name, "not checked: needs torch and transformers (see above)")
    from labkit import models

    status = models.default_model_status()
    where = models.default_checkpoint_dir()
    if status == "missing":
        return Finding(name, "missing", fix=models.INSTALL_DEFAULT_MODEL)
    if status == "embedded":
        problem = models.gguf_problem(models.find_default_gguf())
        if problem:
            return Finding(
                name, f"embedded file damaged: {problem}", fix=models.REINSTALL_DEFAULT_MODEL
            )
        return Finding(
            name,
            f"{models.DEFAULT_MODEL}: installed, not converted yet; the first load_model() "
            f"converts it into {where} (about 30 s), or run `labkit prepare` now",
        )
    problem = models.cache_problem(where, full=True)
    if problem:
        return Finding(
            name,
            f"the cache in {where} is damaged: {problem}",
            fix="labkit prepare  (converts it again, about 30 s)",
        )
    try:
        result = verify_default_model()
    except Exception as err:  # noqa: BLE001 (report, never crash)
        text = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {text[0] if text else ''}"
        return Finding(
            name,
            f"fails its load-and-run check ({where}): {reason}",
            fix="labkit prepare --force  (converts it again, about 30 s)",
        )
    return Finding(name, f"{models.DEFAULT_MODEL}: ready ({where}); {result}")


def diagnose() -> list[Finding]:
    """Everything doctor reports, as data (tested, and printed by :func:`main`)."""
    findings = [
        Finding("python", platform.python_version()),
        Finding("labkit", _version("labkit") or "not installed (imported from source)"),
        Finding("colab", "yes" if in_colab() else "no"),
    ]
    for package, fix in {**REQUIRED, **OPTIONAL}.items():
        findings.append(_package(package, fix, needed=package in REQUIRED or not in_colab()))
    by_name = {f.name: f for f in findings}
    imports_ok = all(by_name[p].fix is None and by_name[p].value != "missing" for p in IMPORTED)
    if by_name["torch"].fix is None and by_name["torch"].value != "missing":
        findings.append(_device())
    findings.append(_default_model(imports_ok))
    return findings


def main() -> int:
    findings = diagnose()
    width = max(len(f.name) for f in findings)
    for f in findings:
        mark = "ok " if f.fix is None else "!! "
        print(f"{mark}{f.name:<{width}}  {f.value}")
    problems = [f for f in findings if f.fix]
    if problems:
        print("\nTo fix:")
        for f in problems:
            print(f"  {f.fix}")
        return 1
    print("\nAll set: open labs/ and run the first cell.")
    return 0
