"""Part 5: the contrastive function's reference values and mistakes."""

from labkit.grading.answer_keys.lab01.key import KEY


@KEY.reference("logit_difference")
def logit_difference(sol, lm, target_id, foil_id, embeddings):
    """What the solution's function returns on these embeddings."""
    return sol.logit_difference_fn(lm, target_id, foil_id)(embeddings)
