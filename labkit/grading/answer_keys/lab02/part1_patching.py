"""Part 1 of lab 02's answer key, activation patching (2.1-2.3): the unpatched run and the
final residual stream as references, and the mistakes of collecting, patching one position and
cross-context patching."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab02.key import KEY, Edit, NotHere, acts, run
from labkit.models import LabModel


# ----- values the checks compare with (definitions, not exercises) -------------------------------
@KEY.reference("next_token_probs")
def next_token_probs(sol, lm: LabModel, tokens: Tensor) -> Tensor:
    """The unpatched run's next-token probabilities at the last position, (vocab,)."""
    return run(lm, [[]], input_ids=tokens).softmax(-1)[0]


@KEY.reference("clean_prob")
def clean_prob(sol, lm: LabModel, tokens: Tensor, target_id: int) -> float:
    """p(target) at the last position of an unpatched run of ``tokens`` (1, pos)."""
    return float(run(lm, [[]], input_ids=tokens).softmax(-1)[0, target_id])


@KEY.reference("final_resid_probs")
def final_resid_probs(sol, lm: LabModel, vector: Tensor) -> Tensor:
    """Next-token probabilities when ``vector`` is the last block's output at the last
    position: softmax(unembed(final_norm(vector)))."""
    with torch.no_grad():
        return lm.unembed(lm.final_norm(vector[None, None]))[0, 0].double().softmax(-1)


@KEY.mistake(
    "final_resid_probs",
    "Your result skips the final norm: the model applies it to the "
    "last block's output before the unembedding.",
)
def final_resid_unnormed(sol, lm, vector):
    with torch.no_grad():
        return lm.unembed(vector).double().softmax(-1)


# ----- 2.1 collect_activations -------------------------------------------------------------------
def _stacked(lm, tokens, site):
    return acts(lm, [site], input_ids=tokens).stack(site)[:, 0]


def _only(site: str, *allowed: str) -> None:
    if site not in allowed:
        raise NotHere(site)


def _module_inputs(lm, tokens, modules) -> Tensor:
    found = []
    with ExitStack() as stack, torch.no_grad():
        for module in modules:
            handle = module.register_forward_pre_hook(lambda m, args: found.append(args[0]))
            stack.callback(handle.remove)
        lm.model(tokens)
    return torch.stack(found)[:, 0]


@KEY.mistake(
    "collect_activations",
    "Your last layer has the final norm applied: "
    "output_hidden_states' last entry is norm(resid_post), not resid_post. Take the "
    "blocks' outputs (hooks).",
)
def collect_final_norm(sol, lm, tokens, site="resid_post"):
    _only(site, "resid_post")
    with torch.no_grad():
        hidden = lm.model(tokens, output_hidden_states=True).hidden_states
    return torch.stack(hidden[1:])[:, 0]


@KEY.mistake(
    "collect_activations",
    "These are the blocks' inputs (resid_pre): hidden_states[0] "
    "is the embedding, so hidden_states[i + 1] is the output of block i.",
)
def collect_resid_pre(sol, lm, tokens, site="resid_post"):
    _only(site, "resid_post")
    return _stacked(lm, tokens, "resid_pre")


@KEY.mistake(
    "collect_activations",
    "You returned the residual stream (resid_post) for another site: use the `site` argument.",
)
def collect_ignores_site(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out", "attn_out")
    return _stacked(lm, tokens, "resid_post")


@KEY.mistake(
    "collect_activations",
    "You swapped the two modules: this is attn_out for "
    "site='mlp_out', or mlp_out for site='attn_out'.",
)
def collect_swapped(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out", "attn_out")
    return _stacked(lm, tokens, {"mlp_out": "attn_out", "attn_out": "mlp_out"}[site])


@KEY.mistake(
    "collect_activations",
    "These are the MLPs' inputs (after the norm); record what the MLP module returns.",
)
def collect_mlp_inputs(sol, lm, tokens, site="resid_post"):
    _only(site, "mlp_out")
    return _module_inputs(lm, tokens, [lm.mlp(i) for i in range(lm.n_layers)])


@KEY.mistake(
    "collect_activations",
    "These are the heads' outputs before the output projection "
    "W_O; attn_out is what the attention module returns (after W_O).",
)
def collect_head_outputs(sol, lm, tokens, site="resid_post"):
    _only(site, "attn_out")
    return _module_inputs(lm, tokens, [lm.attn_out_proj(i) for i in range(lm.n_layers)])


@KEY.mistake(
    "collect_activations",
    "This is the residual stream after attention (resid_pre + "
    "attn_out), not the attention output alone.",
)
def collect_resid_mid(sol, lm, tokens, site="resid_post"):
    _only(site, "attn_out")
    cache = acts(lm, ["resid_pre", "attn_out"], input_ids=tokens)
    return (cache.stack("resid_pre") + cache.stack("attn_out"))[:, 0]


# ----- 2.2 patch_position ------------------------------------------------------------------------
def _patched_probs(lm, tokens, edits: list[Edit], unnormed: bool = False) -> Tensor:
    logits = run(lm, [edits], unnormed=unnormed, input_ids=tokens)[0]
    return logits.softmax(-1).float()


def _patch_mistake(hint: str):
    def register(fn):
        return KEY.mistake("patch_position", hint)(fn)

    return register


@_patch_mistake(
    "Your probabilities are the unpatched run's: nothing was patched. Patch the output of "
    "block `layer` (resid_post), after the last block too."
)
def patch_nothing(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [])


@_patch_mistake("You returned logits: apply softmax over the vocabulary.")
def patch_logits(sol, lm, tokens, layer, position, vector):
    return run(lm, [[("resid_post", layer, position, vector, False)]], input_ids=tokens)[0].float()


@_patch_mistake("You returned log-probabilities: use softmax, not log_softmax.")
def patch_log_probs(sol, lm, tokens, layer, position, vector):
    logits = run(lm, [[("resid_post", layer, position, vector, False)]], input_ids=tokens)
    return logits[0].log_softmax(-1).float()


@_patch_mistake(
    "You patched the block's input (resid_pre); the site is resid_post, the output "
    "of block `layer`."
)
def patch_resid_pre(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_pre", layer, position, vector, False)])


@_patch_mistake("You overwrote every position; put the vector at `position` only.")
def patch_every_position(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_post", layer, None, vector, False)])


@_patch_mistake(
    "You overwrote every position from `position` to the end (a slice "
    "[position:]); put the vector at `position` only."
)
def patch_from_position_on(sol, lm, tokens, layer, position, vector):
    rest = list(range(position, tokens.shape[1]))
    return _patched_probs(lm, tokens, [("resid_post", layer, rest, vector, False)])


@_patch_mistake(
    "You overwrote every position that holds the same token as `position`; a "
    "position is an index, not a token."
)
def patch_same_token(sol, lm, tokens, layer, position, vector):
    same = (tokens[0] == tokens[0, position]).nonzero().flatten().tolist()
    if same == [position]:
        raise NotHere("the token occurs once")
    return _patched_probs(lm, tokens, [("resid_post", layer, same, vector, False)])


@_patch_mistake("You added the vector to the activation; overwrite it instead.")
def patch_adds(sol, lm, tokens, layer, position, vector):
    return _patched_probs(lm, tokens, [("resid_post", layer, position, vector, True)])


@_patch_mistake(
    "You patched the next position (position + 1): positions count from 0, the "
    "anchor token included."
)
def patch_next_position(sol, lm, tokens, layer, position, vector):
    if position + 1 >= tokens.shape[1]:
        raise NotHere("no next position")
    return _patched_probs(lm, tokens, [("resid_post", layer, position + 1, vector, False)])


@_patch_mistake(
    "You patched the previous position (position - 1): positions count from 0, the "
    "anchor token included."
)
def patch_previous_position(sol, lm, tokens, layer, position, vector):
    if position == 0:
        raise NotHere("no previous position")
    return _patched_probs(lm, tokens, [("resid_post", layer, position - 1, vector, False)])


@_patch_mistake(
    "You patched the input of block layer + 1, or nothing after the last block: patch the "
    "output of block `layer` (resid_post)."
)
def patch_next_block(sol, lm, tokens, layer, position, vector):
    if layer + 1 >= lm.n_layers:
        return _patched_probs(lm, tokens, [])
    return _patched_probs(lm, tokens, [("resid_pre", layer + 1, position, vector, False)])


@_patch_mistake(
    "Your result skips the final norm: the model applies it to the last block's "
    "output before the unembedding."
)
def patch_unnormed(sol, lm, tokens, layer, position, vector):
    edits = [("resid_post", layer, position, vector, False)]
    return _patched_probs(lm, tokens, edits, unnormed=True)


# ----- 2.3 cross_context_curve -------------------------------------------------------------------
def _curve(lm, recipient, donor, target_id, mistake: str = "") -> Tensor:
    """The curve (n_layers,) of p(target), or a known mistake's."""
    n_layers = lm.n_layers
    cache = acts(lm, ["resid_pre", "resid_post"], input_ids=donor)
    post, pre = cache.stack("resid_post")[:, 0], cache.stack("resid_pre")[:, 0]
    site, vectors, at, tokens = "resid_post", post[:, -1], -1, recipient.repeat(n_layers, 1)
    if mistake == "resid_pre":
        site, vectors = "resid_pre", pre[:, -1]
    if mistake == "hidden_states":
        vectors = pre[:, -1]
    if mistake == "same index":
        if recipient.shape[1] >= donor.shape[1]:
            raise NotHere("the donor is not longer")
        vectors = post[:, recipient.shape[1] - 1]
    if mistake == "every position":
        at = None
    if mistake == "swapped":
        own = acts(lm, ["resid_post"], input_ids=recipient).stack("resid_post")[:, 0, -1]
        vectors, tokens = own, donor.repeat(n_layers, 1)
    if mistake == "every row":
        edits = [[(site, L, at, vectors[L], False) for L in range(n_layers)]] * n_layers
    else:
        edits = [[(site, L, at, vectors[L], False)] for L in range(n_layers)]
    logits = run(lm, edits, input_ids=tokens)  # (n_layers, vocab)
    if mistake == "logits":
        return logits[:, target_id]
    if mistake == "top token":
        return logits.softmax(-1).max(-1).values
    return logits.softmax(-1)[:, target_id]


_CROSS_MISTAKES = {
    "every position": "Your curve matches overwriting every position of the recipient with the "
    "donor's last vector (labkit.hooks.patch with positions=None patches all of them): patch "
    "the last position only.",
    "swapped": "Your curve matches patching the recipient's vector into the donor's run: the "
    "run is the recipient's, the patched vector is the donor's.",
    "resid_pre": "Your curve is shifted by one layer: it matches patching resid_pre[L] (the "
    "input of block L); patch resid_post[L], the output of block L.",
    "hidden_states": "Your donor vector at layer L is the donor's hidden_states[L], the input "
    "of block L (hidden_states[0] is the embedding): take hidden_states[L + 1] or a hook.",
    "same index": "Your donor vector is taken at the recipient's last index, which is not the "
    "donor's last position when the prompts differ in length: take the donor's position -1.",
    "every row": "Every batch row has every layer patched: row L must patch layer L only.",
    "logits": "You returned logits: return probabilities (softmax over the vocabulary).",
    "top token": "You returned the probability of each row's top token; return the probability "
    "of target_id.",
}


def _cross_mistake(name: str) -> None:
    @KEY.mistake("cross_context_curve", _CROSS_MISTAKES[name])
    def mistake(sol, lm, recipient, donor, target_id):
        return _curve(lm, recipient, donor, target_id, name)


for _name in _CROSS_MISTAKES:
    _cross_mistake(_name)
