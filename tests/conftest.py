"""Shared fixtures: the default model (loaded once per session) and tiny models per family."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import labkit  # noqa: E402
from labkit.tiny import TINY_FAMILIES, tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def lm() -> labkit.LabModel:
    """The embedded default model (SmolLM2-135M), offline."""
    return labkit.load_model()


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny(request) -> labkit.LabModel:
    """A tiny random model of each supported family."""
    return tiny_model(request.param)
