"""Lab 03, part 1 (exercise 3.1): the normalised metric's references and mistakes."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _last, _rows_diff


# ----- 3.1 normalised_metric ---------------------------------------------------------------------
@KEY.reference("normalised_metric@coefficients")
def metric_coefficients(sol, lm, clean, corrupted, targets, foils):
    """The solution's metric is linear in the logits: its gradient and its value at 0."""
    metric = sol.normalised_metric(lm, clean, corrupted, targets, foils)
    logits = torch.zeros(clean.shape[0], lm.vocab_size, requires_grad=True)
    value = metric(logits)
    (weights,) = torch.autograd.grad(value, logits)
    return weights.detach(), float(value.detach())


@KEY.reference("normalised_metric@logits")
def metric_of_logits(sol, lm, clean, corrupted, targets, foils, logits):
    """The solution's metric of ``logits`` (batch, vocab)."""
    return sol.normalised_metric(lm, clean, corrupted, targets, foils)(logits).detach()


def _normalised(
    lm,
    clean,
    corrupted,
    targets,
    foils,
    logits,
    *,
    per_row=False,
    transform=None,
    diff=_rows_diff,
):
    """(diff(x) - diff(corrupted)) / (diff(clean) - diff(corrupted)), the wrong ways."""
    transform = transform or (lambda x: x)
    high = diff(transform(_last(lm, clean)), targets, foils)
    low = diff(transform(_last(lm, corrupted)), targets, foils)
    now = diff(transform(logits), targets, foils)
    if per_row:
        return ((now - low) / (high - low)).mean()
    return (now.mean() - low.mean()) / (high.mean() - low.mean())


@KEY.mistake(
    "normalised_metric@logits",
    "This is the raw mean logit difference. Normalise it: subtract the corrupted run's value "
    "and divide by (clean - corrupted).",
)
def metric_raw(sol, lm, clean, corrupted, targets, foils, logits):
    return _rows_diff(logits, targets, foils).mean()


@KEY.mistake(
    "normalised_metric@logits",
    "The metric is flipped: it must be 1 on the clean run and 0 on the corrupted one, "
    "(x - corrupted) / (clean - corrupted).",
)
def metric_flipped(sol, lm, clean, corrupted, targets, foils, logits):
    return 1 - metric_of_logits(sol, lm, clean, corrupted, targets, foils, logits)


@KEY.mistake(
    "normalised_metric@logits",
    "You normalised each prompt separately and then averaged. Average the logit differences "
    "over the batch first, then normalise once.",
)
def metric_per_prompt(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _normalised(lm, clean, corrupted, targets, foils, logits, per_row=True)


@KEY.mistake(
    "normalised_metric@logits",
    "You used probabilities (softmax) instead of logits: the metric is a logit difference.",
)
def metric_probabilities(sol, lm, clean, corrupted, targets, foils, logits):
    return _normalised(
        lm, clean, corrupted, targets, foils, logits, transform=lambda x: x.softmax(-1)
    )


@KEY.mistake(
    "normalised_metric@logits",
    "Every row used the first prompt's target and foil. Row i has its own ids: target_ids[i] "
    "and foil_ids[i].",
)
def metric_first_ids(sol, lm, clean, corrupted, targets, foils, logits):
    batch = clean.shape[0]
    first_t, first_f = (
        [int(torch.as_tensor(targets)[0])] * batch,
        [int(torch.as_tensor(foils)[0])] * batch,
    )
    return _normalised(lm, clean, corrupted, first_t, first_f, logits)


@KEY.mistake(
    "normalised_metric@logits",
    "Your metric reads the first prompt only (row 0). The metric averages the logit "
    "differences of every row of the batch.",
)
def metric_first_row(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    first = slice(0, 1)
    one = [int(torch.as_tensor(targets)[0])], [int(torch.as_tensor(foils)[0])]
    return sol.normalised_metric(lm, clean[first], corrupted[first], *one)(logits[first]).detach()


def _every_pair(logits, targets, foils):
    return logits[:, torch.as_tensor(targets)] - logits[:, torch.as_tensor(foils)]  # (b, b)


@KEY.mistake(
    "normalised_metric@logits",
    "logits[:, target_ids] reads every target in every row. Pick row i's own target: "
    "logits[torch.arange(batch), target_ids].",
)
def metric_every_pair(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _normalised(lm, clean, corrupted, targets, foils, logits, diff=_every_pair)


@KEY.mistake(
    "normalised_metric@logits",
    "You divided by the clean value only. Subtract the corrupted baseline as well: "
    "(x - corrupted) / (clean - corrupted).",
)
def metric_clean_only(sol, lm, clean, corrupted, targets, foils, logits):
    high = _rows_diff(_last(lm, clean), targets, foils).mean()
    return _rows_diff(logits, targets, foils).mean() / high


@KEY.mistake(
    "normalised_metric@logits",
    "You used the largest logit of each row instead of its target's: read the target id you "
    "were given.",
)
def metric_argmax(sol, lm, clean, corrupted, targets, foils, logits):
    def diff(x, targets, foils):
        rows = torch.arange(x.shape[0])
        return x.max(-1).values - x[rows, torch.as_tensor(foils)]

    return _normalised(lm, clean, corrupted, targets, foils, logits, diff=diff)
