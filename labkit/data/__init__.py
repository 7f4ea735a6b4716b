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


PATCHING_TASKS = ("ioi", "fact", "pun")


def patching_pairs(task: str = "ioi") -> list[dict]:
    """Clean/corrupted prompt pairs for lab 03: id, clean, corrupted, target, foil.

    ``task`` is "ioi" (indirect object identification, names swapped), "fact" (a subject
    swapped for one of the same token length) or "pun". Both prompts of a pair have the same
    number of tokens; the target answers the clean prompt, the foil the corrupted one.
    """
    text = resources.files("labkit.data").joinpath("patching.json").read_text(encoding="utf-8")
    tasks = json.loads(text)["tasks"]
    if task not in tasks:
        raise KeyError(f"No task {task!r}. Tasks: {', '.join(tasks)}.")
    return [dict(item) for item in tasks[task]]
