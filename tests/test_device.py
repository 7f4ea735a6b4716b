"""Every student-facing code path works with the model on a GPU, tested on a CPU.

On a Colab GPU runtime ``load_model()`` puts the model on CUDA, and a lab cell, a check or an
explorer that combines a tensor made without ``device=`` (a CPU tensor there) with the model's
tensors fails. :class:`device_guard.DeviceGuard` records such operations on a CPU-only machine.

* Every cell of each solution notebook (its exercise answers, the checks they call) runs under
  the guard in tests/test_notebooks.py, during its nbval run.
* Here: each notebook's explorer, built from the solution's own functions, with every control
  worked; and the guard itself.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest
from support.device_guard import ADVICE, DeviceGuard, describe

import labkit
from labkit.notebooks import notebook_definitions as solution_functions

ROOT = Path(__file__).resolve().parents[1]
# Each notebook's explorer cell (found by this text), then every control worked.
EXPLORERS = {
    "01_attribution": (
        "explorer = AttributionExplorer(",
        """
explorer.prompt.value = "literal: current"
explorer.target.value = " water"
for name in explorer.methods:
    explorer.method.value = name
""",
    ),
    "02_causal_tracing": (
        "TracingExplorer(lm,",
        """
explorer = TracingExplorer(lm, restoration_grid, corrupt_subject)
for site in ["mlp", "attn", "resid"]:
    explorer.site.value = site
explorer.noise.value, explorer.samples.value = 1.0, 2
""",
    ),
    "03_attribution_patching": (
        "PatchingExplorer(lm, {",
        """
for site in ["attn_out", "heads", "mlp_out", "resid_pre"]:
    explorer.site.value = site
explorer.task.value = "ioi"
explorer.pair.value = explorer.pair.options[-1]
""",
    ),
}


def _free_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def notebook_globals(cells: list[str], names: set[str], namespace: dict) -> None:
    """Run, in order, the top-level statements of ``cells`` that assign ``names`` (and what
    those statements need in turn), so that the explorer cell finds the globals it reads."""
    wanted, statements = set(names), []
    for source in reversed(cells):  # later assignments win: walk back and resolve
        try:
            body = ast.parse(source).body
        except SyntaxError:  # IPython magics: not where these globals are made
            continue
        for node in reversed(body):
            targets = {
                t.id
                for t in getattr(node, "targets", [getattr(node, "target", None)])
                if isinstance(t, ast.Name)
            }
            if targets & wanted:
                wanted -= targets
                wanted |= _free_names(node) - set(namespace) - set(dir(builtins))
                statements.append(node)
    for node in reversed(statements):
        exec(compile(ast.Module(body=[node], type_ignores=[]), "<notebook>", "exec"), namespace)  # noqa: S102


@pytest.mark.default_model
@pytest.mark.parametrize("name", sorted(EXPLORERS))
def test_explorers_work_with_the_model_on_another_device(name: str) -> None:
    path = ROOT / "solutions" / f"{name}.ipynb"
    marker, controls = EXPLORERS[name]
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    index = next(i for i, source in enumerate(cells) if marker in source)
    explorer_cell = cells[index].replace(marker, "explorer = " + marker, 1)
    if marker.startswith("explorer ="):
        explorer_cell = cells[index]
    namespace = solution_functions(path)
    guard = DeviceGuard()
    lm = labkit.load_model()
    guard.watch(lm.model)
    namespace["lm"] = lm
    tree = ast.parse(explorer_cell)
    needed = _free_names(tree) - set(namespace) - set(dir(builtins)) - {"explorer"}
    with guard:
        guard.cell = explorer_cell
        notebook_globals(cells[:index], needed, namespace)
        exec(explorer_cell, namespace)  # noqa: S102
        guard.cell = controls
        exec(controls, namespace)  # noqa: S102
    found = describe([asdict(m) for m in guard.mixes], cells, path.name, str(ROOT))
    assert not found, ADVICE + "\n".join(found)


def test_the_guard_finds_a_cpu_tensor_mixed_with_model_tensors() -> None:
    import torch
    from support.device_guard import DeviceGuard

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
