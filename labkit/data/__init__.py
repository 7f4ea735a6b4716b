"""Prompt sets shipped with labkit: puns with literal counterparts, and factual-recall prompts.

>>> from labkit.data import puns, facts
>>> puns()[0]["pun"], puns()[0]["target"]
('Why do electricians make good swimmers? Because they know the', ' current')
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def _load(name: str) -> tuple[dict, ...]:
    text = resources.files("labkit.data").joinpath(f"{name}.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["items"])


def puns() -> list[dict]:
    """Pun prompts: id, pun, target, foil, literal, type (homograph/homophone), pun_span."""
    return [dict(item) for item in _load("puns")]


def facts() -> list[dict]:
    """Factual prompts: id, prompt, subject (span to corrupt), target."""
    return [dict(item) for item in _load("facts")]


def pun(pun_id: str) -> dict:
    """One pun by id, e.g. ``pun("current")``."""
    for item in _load("puns"):
        if item["id"] == pun_id:
            return dict(item)
    ids = ", ".join(item["id"] for item in _load("puns"))
    raise KeyError(f"No pun {pun_id!r}. Available: {ids}.")
