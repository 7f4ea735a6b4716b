"""Every student-facing code path works with the model on a GPU, tested on a CPU.

On a Colab GPU runtime ``load_model()`` puts the model on CUDA, and a lab cell, a check or an
explorer that combines a tensor made without ``device=`` (a CPU tensor there) with the model's
tensors fails. Each solution notebook (its exercise answers, its cells, the checks they call)
runs here under :class:`device_guard.DeviceGuard`, which records such operations; extra cells
then work the explorers' controls. The test lists every offending line with its cell.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CELL_TIMEOUT = 1200

SETUP = """
import sys
sys.path.insert(0, {tests!r})
import labkit, labkit.models
from device_guard import DeviceGuard

_device_guard = DeviceGuard(log={log!r})
_load_model = labkit.load_model

def _guarded_load_model(*args, **kwargs):
    lm = _load_model(*args, **kwargs)
    _device_guard.watch(lm.model)  # as if this model sat on a GPU
    return lm

labkit.load_model = labkit.models.load_model = _guarded_load_model
get_ipython().events.register("pre_run_cell", lambda info: setattr(_device_guard, "cell", info.raw_cell))
_device_guard.__enter__()
"""  # noqa: E501
# After the notebook: every explorer control, with the notebook's own functions.
EXPLORE = {
    "01_attribution": """
explorer.prompt.value = "literal: current"
explorer.target.value = " water"
for name in explorer.methods:
    explorer.method.value = name
""",
    "02_causal_tracing": """
_explorer = TracingExplorer(lm, restoration_grid, corrupt_subject)
for site in ["mlp", "attn", "resid"]:
    _explorer.site.value = site
_explorer.noise.value, _explorer.samples.value = 1.0, 2
""",
}


def run_guarded(path: Path, tmp_path: Path) -> tuple[list[dict], list[str], list[str]]:
    """Run a notebook under the guard: (mixes, cell sources, errors)."""
    notebook = nbformat.read(path, as_version=4)
    sources = [cell.source for cell in notebook.cells]
    log = tmp_path / "mixes.jsonl"  # written as they are found: survives a dead kernel
    notebook.cells.insert(
        0, nbformat.v4.new_code_cell(SETUP.format(tests=str(TESTS), log=str(log)))
    )
    notebook.cells.append(nbformat.v4.new_code_cell(EXPLORE.get(path.stem, "")))
    try:
        NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        lines = log.read_text().splitlines() if log.exists() else []
        mixes = [json.loads(line) for line in lines]
        if mixes:
            print("\n".join(describe(mixes, sources, path.name)))
    errors = [
        f"cell {i - 1}: {out['ename']}: {out['evalue']}"
        for i, cell in enumerate(notebook.cells)
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    return mixes, sources, errors


def describe(mixes: list[dict], sources: list[str], name: str) -> list[str]:
    lines = []
    for mix in {json.dumps(m, sort_keys=True): m for m in mixes}.values():  # unique
        cell = sources.index(mix["cell"]) if mix["cell"] in sources else "explorer check"
        where = mix["where"].replace(str(ROOT) + "/", "")
        code = mix["code"] or mix["cell"].strip().splitlines()[0]
        lines.append(f"{name} cell {cell}: {mix['op']} at {where}: {code}")
    return lines


@pytest.mark.notebook
@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_lab_code_works_with_the_model_on_another_device(path: Path, tmp_path: Path) -> None:
    mixes, sources, errors = run_guarded(path, tmp_path)
    assert not errors, f"{path.name} failed under the device guard: {errors}"
    found = describe(mixes, sources, path.name)
    if not found:
        print(f"{path.name}: no CPU tensor meets the model's tensors")
    assert not found, (
        "These lines combine a tensor made without device= with the model's tensors; on a GPU "
        "they fail. Create the tensor on the model's device (device=lm.device, or "
        "x.to(embeddings.device)):\n" + "\n".join(found)
    )


def test_the_guard_finds_a_cpu_tensor_mixed_with_model_tensors() -> None:
    import torch
    from device_guard import DeviceGuard

    from labkit.tiny import tiny_model

    lm = tiny_model("llama")
    guard = DeviceGuard()
    guard.watch(lm.model)
    with guard:
        embeddings = lm.embed(lm.to_tokens("abc"))  # (1, 3, d_model), on the model's device
        alphas = torch.linspace(0, 1, 4)  # made without device=: CPU on a GPU machine
        alphas[:, None, None] * embeddings  # fails on a GPU
        alphas.to(embeddings.device)[:, None, None] * embeddings  # fine
        embeddings * torch.tensor(2.0)  # a 0-d CPU tensor is fine on CUDA too
        embeddings[:, torch.arange(2)]  # so is indexing with CPU indices
        lm.model(inputs_embeds=embeddings)  # the model's own code
        torch.tensor([1.0, 2.0]) + torch.zeros(2)  # CPU only: fine
        torch.as_tensor(embeddings) * embeddings  # as_tensor keeps the device: fine
        torch.randn(3) * embeddings.std()  # a 0-d CUDA tensor times a CPU tensor fails
    assert [asdict(m)["op"] for m in guard.mixes] == ["TensorBase.mul", "TensorBase.mul"]
