"""``labkit doctor``: is this environment ready for the labs? Each problem comes with its fix."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass

from labkit import models

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


def _device() -> Finding:
    import torch

    if torch.cuda.is_available():
        return Finding("device", f"cuda ({torch.cuda.get_device_name(0)})")
    return Finding("device", f"cpu ({os.cpu_count()} cores)")


def _default_model() -> Finding:
    status = models.default_model_status()
    if status == "cached":
        where = models.default_checkpoint_dir()
        return Finding("default model", f"{models.DEFAULT_MODEL}: ready ({where})")
    if status == "embedded":
        return Finding(
            "default model",
            f"{models.DEFAULT_MODEL}: installed, converted on first load (about 30 s)",
        )
    return Finding("default model", "missing", fix=models.INSTALL_DEFAULT_MODEL)


def diagnose() -> list[Finding]:
    """Everything doctor reports, as data (tested, and printed by :func:`main`)."""
    findings = [
        Finding("python", platform.python_version()),
        Finding("labkit", _version("labkit") or "not installed (imported from source)"),
        Finding("colab", "yes" if in_colab() else "no"),
    ]
    for package, fix in {**REQUIRED, **OPTIONAL}.items():
        version = _version(package)
        needed = package in REQUIRED or not in_colab()
        findings.append(
            Finding(package, version or "missing", fix=None if version or not needed else fix)
        )
    if _version("torch"):
        findings.append(_device())
    findings.append(_default_model())
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
