"""Prose that tells the truth: a number in a solution notebook's markdown is printed by the
notebook itself (by a claim next to it, or an output), or it is a definition on the allow-list.

Claims (labkit.claims) check every sentence that states a number, a sign or an ordering when the
solution notebooks run under nbval (LABKIT_STRICT_CLAIMS=1): a claim that drifts fails there.
This test closes the other door: a number typed into markdown that no output backs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labkit.checks import lab01, lab02, lab03
from labkit.notebooks import read_nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_attribution", "02_causal_tracing", "03_attribution_patching")
LABS = {
    "01_attribution": lab01.LAB,
    "02_causal_tracing": lab02.LAB,
    "03_attribution_patching": lab03.LAB,
}
DECIMAL = re.compile(r"(?<![\w.])[-−]?\d+\.\d+(?![\w.])")
# Numbers that are definitions, not results (a formula's constant, a setting the text explains).
ALLOWED: dict[str, set[str]] = {
    "01_attribution": set(),
    "02_causal_tracing": set(),
    "03_attribution_patching": set(),
}


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts.append(cell.source)  # a number set in code (a setting) backs itself
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            for mime in ("text/plain", "text/html", "text/markdown"):
                value = data.get(mime, "")
                parts.append("".join(value) if isinstance(value, list) else value)
    return "\n".join(parts).replace("−", "-")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_number_in_the_prose_is_computed(name: str) -> None:
    notebook = read_nbformat(ROOT / "solutions" / f"{name}.ipynb")
    backed = outputs_text(notebook)
    # "Exercise 3.11" is a label from the one registry, not a result.
    exercise_numbers = {check.number for check in LABS[name].exercises.values()}
    unbacked = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"\$[^$]*\$", " ", cell.source)  # formulas define, they do not report
        for number in DECIMAL.findall(text):
            number = number.replace("−", "-")
            if number in ALLOWED[name] or number in exercise_numbers:
                continue
            if number.lstrip("-") in backed:
                continue
            unbacked.append((i, number))
    assert unbacked == [], f"{name}: numbers in markdown that no output prints: {unbacked}"
