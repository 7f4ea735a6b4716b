"""Lab 03, part 8 (exercise 3.13): path patching's references and mistakes."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import (
    _final_scale,
    _head_vectors,
    _is_layer_norm,
    _run_cache,
)
from labkit.hooks import patch


# ----- 3.13 path_patching ------------------------------------------------------------------------
def _paths(lm, clean, corrupted, metric, heads, path="direct", *, how="right") -> Tensor:
    """Path patching head by head, one forward pass each (the slow, obvious way) and its wrong
    versions. ``how``: "right"; "leak" (patched as usual: every later layer sees it);
    "frozen" (direct, with the final norm's scale of the corrupted run); "whole" (direct: the
    clean head output added, not the change); "block" (indirect: the change removed right after
    the head's layer); "last" (the head patched at the last position only)."""
    last = lm.n_layers - 1
    with torch.no_grad():
        c_cache = _run_cache(lm, clean, "head_out")
        k_cache = _run_cache(lm, corrupted, ["head_out", "resid_post"])
    final = k_cache["resid_post", last][:, -1]
    found = []
    for layer, head in heads:
        layer, head = int(layer), int(head)
        step = c_cache["head_out", layer][:, -1] - k_cache["head_out", layer][:, -1]
        change = _head_vectors(lm, step, layer)[:, head]
        with torch.no_grad():
            if path == "direct" and how in ("right", "whole", "frozen"):
                if how == "whole":
                    change = _head_vectors(lm, c_cache["head_out", layer][:, -1], layer)[:, head]
                if how == "frozen":
                    scale = _final_scale(lm, final)
                    x = final + change
                    centred = x - x.mean(-1, keepdim=True) if _is_layer_norm(lm) else x
                    normed = lm.final_norm.weight * centred / scale
                    if _is_layer_norm(lm):
                        normed = normed + lm.final_norm.bias
                    logits = lm.unembed(normed)
                else:
                    logits = lm.unembed(lm.final_norm(final + change))
            else:
                positions = [clean.shape[1] - 1] if how == "last" else None
                stack = [patch(lm, "head_out", layer, c_cache["head_out", layer],
                               heads=[head], positions=positions)]  # fmt: skip
                if path == "indirect" and how not in ("leak",):
                    where = layer if how == "block" else last

                    def remove(act, change=change):
                        act = act.clone()
                        act[:, -1] -= change
                        return act

                    stack.append(patch(lm, "resid_post", where, remove))
                with stack[0], stack[1] if len(stack) > 1 else torch.no_grad():
                    logits = lm.model(corrupted).logits[:, -1]
            found.append(float(metric(logits)))
    return torch.tensor(found)


@KEY.mistake(
    "path_patching",
    "Your direct path leaks: the head's clean output reached the later layers too (that is "
    "patching the head as usual, its total effect). On the direct path only the final "
    "residual stream gets it; every later layer must read the corrupted output.",
)
def paths_leak(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="leak")


@KEY.mistake(
    "path_patching",
    "Your indirect path still reaches the logits directly (that is patching the head as "
    "usual, its total effect). Take the head's change back out of the final residual stream "
    "at the last position.",
)
def paths_indirect_total(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="leak")


@KEY.mistake(
    "path_patching",
    "You froze the final norm's scale (as direct logit attribution does). Path patching runs "
    "the model: the final norm recomputes its scale on the patched stream.",
)
def paths_frozen_norm(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="frozen")


@KEY.mistake(
    "path_patching",
    "You added the head's whole clean output to the final residual stream, which already "
    "holds its corrupted output: add the change, clean minus corrupted.",
)
def paths_whole_output(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="whole")


@KEY.mistake(
    "path_patching",
    "Your answers follow the sorted heads. Return one value per entry of heads, in its order "
    "(repeats included).",
)
def paths_sorted(sol, lm, clean, corrupted, metric, heads, path="direct"):
    pairs = [(int(layer), int(head)) for layer, head in heads]
    if pairs == sorted(pairs):
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, sorted(pairs), path)


@KEY.mistake(
    "path_patching",
    "You took the head's change out right after its own layer, so no later layer saw it "
    "either. On the indirect path every later layer reads the clean output; only the final "
    "residual stream (what the logits read) must not.",
)
def paths_blocked(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="block")


@KEY.mistake(
    "path_patching",
    "You patched the head at the last position only. Its clean output goes in at every "
    "position; the later layers read the other positions too.",
)
def paths_last_position(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="last")


@KEY.mistake(
    "path_patching",
    "This is the noising direction (the corrupted output taking the path in the clean run). "
    "Path-patch the clean output into the corrupted run.",
)
def paths_noising(sol, lm, clean, corrupted, metric, heads, path="direct"):
    return sol.path_patching(lm, corrupted, clean, metric, heads, path)
