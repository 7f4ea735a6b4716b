"""Part 5: the contrastive function's reference values and mistakes."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab01.key import KEY


@KEY.reference("logit_difference")
def logit_difference(sol, lm, target_id, foil_id, embeddings):
    """What the solution's function returns on these embeddings."""
    return sol.logit_difference_fn(lm, target_id, foil_id)(embeddings)


def _logits(lm, embeddings) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(inputs_embeds=embeddings.detach()).logits  # (batch, pos, vocab)


def _mistake(hint: str, make) -> None:
    @KEY.mistake("logit_difference", hint)
    def mistake(sol, lm, target_id, foil_id, embeddings):
        return make(lm, _logits(lm, embeddings), target_id, foil_id)


_mistake("Wrong sign: logit(target) - logit(foil).", lambda lm, z, t, f: z[:, -1, f] - z[:, -1, t])
_mistake(
    "Use logits, not probabilities.",
    lambda lm, z, t, f: z[:, -1].softmax(-1)[:, t] - z[:, -1].softmax(-1)[:, f],
)
_mistake("Subtract the foil's logit.", lambda lm, z, t, f: z[:, -1, t])
_mistake(
    "Use the LAST position (-1), not the one before it.",
    lambda lm, z, t, f: z[:, -2, t] - z[:, -2, f],
)
_mistake("Use the LAST position (-1), not 0.", lambda lm, z, t, f: z[:, 0, t] - z[:, 0, f])
_mistake(
    "Use the logits at the last position only, not their mean over positions.",
    lambda lm, z, t, f: z[:, :, t].mean(1) - z[:, :, f].mean(1),
)
_mistake(
    "Each row of the batch gets its own difference: you used the first row's for all.",
    lambda lm, z, t, f: (z[:1, -1, t] - z[:1, -1, f]).expand(z.shape[0]),
)


@KEY.mistake(
    "logit_difference",
    "You unembedded the residual stream without the final norm: use the model's logits.",
)
def without_final_norm(sol, lm, target_id, foil_id, embeddings):
    from labkit.hooks import capture

    last = lm.n_layers - 1
    with torch.no_grad(), capture(lm, "resid_post", last) as cache:
        lm.model(inputs_embeds=embeddings.detach())
    logits = lm.unembed(cache["resid_post", last][:, -1])
    return logits[:, target_id] - logits[:, foil_id]
