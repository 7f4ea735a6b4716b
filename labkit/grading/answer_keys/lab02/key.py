"""Lab 02's answer key (instructor-only): one ``KEY`` that every part's module adds to, and
what the parts share: runs of a model with edited activations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import Tensor

from labkit.grading.answers import AnswerKey
from labkit.hooks import capture, hooked
from labkit.models import LabModel

KEY = AnswerKey("02")


class NotHere(ValueError):
    """This mistake gives nothing different on these inputs: it is left out."""


# ----- shared: runs with edited activations ------------------------------------------------------
# An edit of one batch row: (site, layer, position or None for all, value, add instead of set).
Edit = tuple[str, int, "int | list[int] | None", Tensor, bool]


def run(lm: LabModel, edits: Sequence[Sequence[Edit]], *, unnormed: bool = False, **inputs):
    """Last-position logits (rows, vocab), float64, where batch row r gets ``edits[r]``.

    ``inputs`` (input_ids or inputs_embeds) has one row per edit list. With ``unnormed``, the
    logits skip the final norm.
    """
    by_site: dict[tuple[str, int], list] = defaultdict(list)
    for row, row_edits in enumerate(edits):
        for site, layer, position, value, add in row_edits:
            by_site[site, layer % lm.n_layers].append((row, position, value, add))
    last = lm.n_layers - 1
    with ExitStack() as stack, torch.no_grad():
        for (site, layer), items in by_site.items():

            def edit(act: Tensor, items=items) -> Tensor:  # (rows, pos, d_model)
                act = act.clone()
                for row, position, value, add in items:
                    where = (row, slice(None) if position is None else position)
                    act[where] = act[where] + value if add else value.to(act.dtype)
                return act

            stack.enter_context(hooked(lm, site, layer, edit))
        final = stack.enter_context(capture(lm, "resid_post", last))
        logits = lm.model(**inputs).logits[:, -1]
    if unnormed:
        logits = lm.unembed(final["resid_post", last][:, -1])
    return logits.double()


def acts(lm: LabModel, sites: Sequence[str], **inputs: Tensor):
    with torch.no_grad(), capture(lm, list(sites)) as cache:
        lm.model(**inputs)
    return cache
