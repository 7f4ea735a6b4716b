"""Lab 03, part 5 (exercise 3.9): the QK fix's references and mistakes."""

from __future__ import annotations

from labkit.grading.answer_keys.lab03.key import KEY


# ----- 3.9 qk_fix --------------------------------------------------------------------------------
@KEY.mistake(
    "qk_fix",
    "That is the plain linear estimate through the softmax (gradient w.r.t. the scores times "
    "the change in scores). The fix recomputes the pattern exactly: softmax(clean scores) - "
    "softmax(corrupted scores).",
)
def qk_plain(sol, scores_clean, scores_corrupted, pattern_grad):
    pattern = scores_corrupted.softmax(-1)
    score_grad = pattern * (pattern_grad - (pattern * pattern_grad).sum(-1, keepdim=True))
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return (score_grad * delta).sum((-2, -1))


@KEY.mistake("qk_fix", "The sign is flipped: the new pattern minus the corrupted pattern.")
def qk_sign(sol, scores_clean, scores_corrupted, pattern_grad):
    return -sol.qk_fix(scores_clean, scores_corrupted, pattern_grad)


@KEY.mistake("qk_fix", "Softmax over the keys (the last dimension), not over the queries.")
def qk_queries(sol, scores_clean, scores_corrupted, pattern_grad):
    new = scores_clean.softmax(-2) - scores_corrupted.softmax(-2)
    return (new.nan_to_num(0.0) * pattern_grad).sum((-2, -1))


@KEY.mistake("qk_fix", "Subtract the corrupted pattern: softmax(new) - softmax(old).")
def qk_no_subtraction(sol, scores_clean, scores_corrupted, pattern_grad):
    return (scores_clean.softmax(-1) * pattern_grad).sum((-2, -1))


@KEY.mistake(
    "qk_fix",
    "That is the change of the scores times the gradient. Take the softmax of each first: the "
    "fix compares attention patterns.",
)
def qk_raw_scores(sol, scores_clean, scores_corrupted, pattern_grad):
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return (delta * pattern_grad).sum((-2, -1))


@KEY.mistake(
    "qk_fix",
    "Masked scores are -inf, so that the softmax gives them 0. Replacing -inf by 0 before the "
    "softmax lets a query attend to future keys.",
)
def qk_unmasked(sol, scores_clean, scores_corrupted, pattern_grad):
    clean = scores_clean.nan_to_num(0.0, posinf=0.0, neginf=0.0)
    corrupted = scores_corrupted.nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return sol.qk_fix(clean, corrupted, pattern_grad)
