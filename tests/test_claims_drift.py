"""CI catches prose that drifts from its numbers, end to end: lab 03's solution notebook is run
as nbval runs it (strict claims), on the default model with one head switched off (L23H3, the
head its text is about). The results move, the sentences do not, and a claim stops the run.

This is the proof the truthful-prose issue asks for: the same mechanism that keeps the solution
notebooks honest in tests/test_notebooks.py fails when a result changes under a sentence.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
ABLATE = textwrap.dedent(
    """
    import torch
    import labkit

    _load_model = labkit.load_model

    def load_model(*args, **kwargs):  # the default model with head 3 of layer 23 switched off
        lm = _load_model(*args, **kwargs)
        with torch.no_grad():
            lm.attn_out_proj(23).weight[:, 3 * lm.d_head : 4 * lm.d_head] = 0
        return lm

    labkit.load_model = load_model
    """
)


@pytest.mark.notebook
@pytest.mark.default_model
def test_a_drifted_result_stops_the_solution_at_its_claim(tmp_path, monkeypatch) -> None:
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-ablate.py").write_text(ABLATE)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LABKIT_STRICT_CLAIMS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    path = ROOT / "solutions" / "03_attribution_patching.ipynb"
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    with pytest.raises(CellExecutionError) as stopped:
        client.execute()
    error = stopped.value
    assert error.ename == "ClaimFailed", str(error)[-3000:]
    assert "the prose no longer matches the numbers" in error.evalue, error.evalue
    print(error.evalue)
