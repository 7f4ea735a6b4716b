"""Small numbers the labs measure a model's behaviour with.

Both take logits whose last dimension is the vocabulary, so they work on one position
``(vocab,)`` or on a batch ``(batch, vocab)`` alike.

* :func:`target_prob` -- the probability of one answer token (what causal tracing plots);
* :func:`logit_diff` -- the logit of the answer minus the logit of a foil (what patching on
  contrastive pairs usually measures; it ignores every other token).
"""

from __future__ import annotations

import torch

__all__ = ["logit_diff", "target_prob"]


def target_prob(logits: torch.Tensor, target_id: int) -> torch.Tensor:
    """Softmax probability of ``target_id``: logits (..., vocab) -> probabilities (...)."""
    _check_id(logits, target_id)
    return logits.float().softmax(-1)[..., target_id]


def logit_diff(logits: torch.Tensor, target_id: int, foil_id: int) -> torch.Tensor:
    """Logit of ``target_id`` minus logit of ``foil_id``: logits (..., vocab) -> (...)."""
    _check_id(logits, target_id)
    _check_id(logits, foil_id)
    return logits[..., target_id] - logits[..., foil_id]


def _check_id(logits: torch.Tensor, token_id: int) -> None:
    vocab = logits.shape[-1]
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab:
        raise ValueError(
            f"Token id {token_id!r} is not in the vocabulary (0..{vocab - 1}). Get ids with "
            "lm.token_id(' Paris')."
        )
