"""Shared fixtures: the default model (loaded once per session) and tiny models per family."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import labkit  # noqa: E402
from labkit import models  # noqa: E402
from labkit.tiny import TINY_FAMILIES, tiny_model  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lm() -> labkit.LabModel:
    """The embedded default model (SmolLM2-135M), offline."""
    return labkit.load_model()


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny(request) -> labkit.LabModel:
    """A tiny random model of each supported family."""
    return tiny_model(request.param)


@pytest.fixture
def fake_default(monkeypatch, tmp_path: Path) -> SimpleNamespace:
    """A temporary LABKIT_CACHE whose "conversion" saves a tiny llama plus a 3 MiB file (so the
    quick check and the full check differ); counts conversions."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "wheel" / "fake.gguf"  # not the wheel's file name: no checksum to compare
    gguf.parent.mkdir()
    gguf.write_bytes(b"not read by the fake conversion")
    monkeypatch.setattr(models, "find_default_gguf", lambda: gguf)
    calls = []

    def convert(source: Path, out: Path) -> None:
        calls.append(out)
        tiny = tiny_model("llama")
        tiny.model.save_pretrained(out)
        tiny.tokenizer.save_pretrained(out)
        (out / "extra.bin").write_bytes(bytes(range(256)) * (3 << 12))

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return SimpleNamespace(calls=calls, folder=models.default_checkpoint_dir(), gguf=gguf)
