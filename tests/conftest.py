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
    # looked up in two places: by the default model's code, and through labkit.models by doctor
    monkeypatch.setattr(models.default, "find_default_gguf", lambda: gguf)
    monkeypatch.setattr(models, "find_default_gguf", lambda: gguf)
    calls = []

    def convert(source: Path, out: Path) -> None:
        calls.append(out)
        tiny = tiny_model("llama")
        tiny.model.save_pretrained(out)
        tiny.tokenizer.save_pretrained(out)
        (out / "extra.bin").write_bytes(bytes(range(256)) * (3 << 12))

    monkeypatch.setattr(models.default, "_convert_gguf", convert)
    return SimpleNamespace(calls=calls, folder=models.default_checkpoint_dir(), gguf=gguf)


# The longest tests, in the order they should start (a prefix of the test's node id). Under
# xdist the work is handed out in collection order, so starting these first keeps one worker
# from being left alone with a five-minute notebook at the end.
LONGEST_FIRST = (
    "tests/test_notebooks.py::test_solution_notebook_passes_nbval",
    "tests/test_browser.py",
    "tests/test_grading_hostile.py",
    "tests/test_grading.py",
    "tests/test_device.py",
    "tests/test_release.py",
    "tests/test_notebooks.py",
    "tests/test_widgets_ipywidgets7.py",
    "tests/test_attribution_libraries.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    for item in items:  # a test that uses the default model is marked so, whatever it says
        if "lm" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "default_model"
        ):
            item.add_marker(pytest.mark.default_model)

    def rank(item) -> int:
        return next(
            (i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)  # stable: the order within each rank is unchanged


# Modules whose tests share an expensive module-level fixture (a JupyterLab server, a graded
# class, a release, the captum/inseq comparison): each runs in one worker, so that fixture is
# built once. Every other test is handed out on its own.
ONE_WORKER_MODULES = (
    "tests/test_browser.py",
    "tests/test_grading_hostile.py",
    "tests/test_grading_sandbox.py",
    "tests/test_grading.py",
    "tests/test_release.py",
    "tests/test_attribution_libraries.py",
)


@pytest.hookimpl(optionalhook=True)  # only xdist knows this hook (absent with -p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with ONE_WORKER_MODULES as the groups.

    pytest-xdist 3.8 marks xdist_group tests by editing a node id attribute that pytest 9 no
    longer has, so its own loadgroup hands those tests to both workers."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModuleGroups(config, log)
