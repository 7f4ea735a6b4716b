"""Lab 03, part 4 (exercises 3.7-3.8): validation's references and mistakes."""

from __future__ import annotations

from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem


# ----- 3.7 agreement -----------------------------------------------------------------------------
def _flat(estimate, exact) -> tuple[Tensor, Tensor]:
    return exact.flatten().double(), estimate.flatten().double()


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _topk_recall(x: Tensor, y: Tensor, k: int, signed_x=False, signed_y=False) -> float:
    top_x = set((x if signed_x else x.abs()).topk(k).indices.tolist())
    top_y = set((y if signed_y else y.abs()).topk(k).indices.tolist())
    return len(top_x & top_y) / k


def _agreement_with(sol, estimate, exact, k, **changes) -> dict:
    out = dict(sol.agreement(estimate, exact, k))
    x, y = _flat(estimate, exact)
    for key, value in changes.items():
        out[key] = value(x, y)
    return out


_BY_SIZE = (
    "Rank by size (absolute value) on both sides: a large negative effect is a top effect too."
)


@KEY.mistake(
    "agreement",
    "You regressed exact on the estimate. The slope is of the estimate (y) against exact "
    "patching (x): cov(x, y) / var(x).",
)
def agreement_slope_swapped(sol, estimate, exact, k=10):
    def slope(x, y):
        yc = y - y.mean()
        return float((yc * (x - x.mean())).sum() / (yc * yc).sum())

    return _agreement_with(sol, estimate, exact, k, slope=slope)


@KEY.mistake(
    "agreement",
    "That is the slope of a line through the origin. Fit the least-squares line with an "
    "intercept: cov(x, y) / var(x).",
)
def agreement_slope_origin(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, slope=lambda x, y: float((x * y).sum() / (x * x).sum())
    )


@KEY.mistake(
    "agreement",
    "That is Pearson's r of the values. Spearman's rho is Pearson's r of the ranks.",
)
def agreement_spearman_values(sol, estimate, exact, k=10):
    return _agreement_with(sol, estimate, exact, k, spearman=_corr)


@KEY.mistake(
    "agreement",
    "That is Spearman's rho of the absolute values. Rank the signed values.",
)
def agreement_spearman_abs(sol, estimate, exact, k=10):
    def rho(x, y):
        return _corr(x.abs().argsort().argsort().double(), y.abs().argsort().argsort().double())

    return _agreement_with(sol, estimate, exact, k, spearman=rho)


@KEY.mistake(
    "agreement",
    "That is the cosine similarity: Pearson's r subtracts each tensor's mean first.",
)
def agreement_cosine(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, pearson=lambda x, y: float((x * y).sum() / (x.norm() * y.norm()))
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: _topk_recall(x, y, k, True, True)}
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk_exact(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"top-k recall": lambda x, y: _topk_recall(x, y, k, signed_x=True)},
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk_estimate(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"top-k recall": lambda x, y: _topk_recall(x, y, k, signed_y=True)},
    )


@KEY.mistake("agreement", "Return top-k recall as a fraction of k (0 to 1), not a count.")
def agreement_recall_count(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: k * _topk_recall(x, y, k)}
    )


@KEY.mistake(
    "agreement",
    "Top-k recall used k = 10 whatever k you were given: use the argument k.",
)
def agreement_recall_k10(sol, estimate, exact, k=10):
    if k == 10 or exact.numel() < 10:
        raise NotThisProblem
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: _topk_recall(x, y, 10)}
    )


@KEY.mistake("agreement", "Return sign agreement as a fraction (0 to 1), not a count.")
def agreement_sign_count(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"sign agreement": lambda x, y: float((x.sign() == y.sign()).sum())},
    )


@KEY.mistake(
    "agreement",
    "Sign agreement is the fraction of components whose estimate and exact effect have the "
    "same sign, not the fraction of positive estimates.",
)
def agreement_sign_positive(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"sign agreement": lambda x, y: float((y > 0).double().mean())}
    )


# ----- 3.8 patches_to_find_top_k -----------------------------------------------------------------
def _needed(
    estimate, exact, k, *, signed_exact=False, signed_estimate=False, ascending=False, last=True
) -> int:
    x, y = exact.flatten(), estimate.flatten()
    top = (x if signed_exact else x.abs()).topk(k).indices
    key = y if signed_estimate else y.abs()
    rank = key.argsort(descending=not ascending).argsort()
    found = rank[top]
    return int(found.max() if last else found.min()) + 1


@KEY.mistake("patches_to_find_top_k", "Off by one: count the patches, starting at 1.")
def find_off_by_one(sol, estimate, exact, k=10):
    return sol.patches_to_find_top_k(estimate, exact, k) - 1


@KEY.mistake(
    "patches_to_find_top_k",
    "Patch in order of |estimate| (its absolute value), not of the signed estimate.",
)
def find_signed_estimate(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_estimate=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "The exact top-k are the largest effects by absolute value: a large negative effect "
    "counts too.",
)
def find_signed_exact(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_exact=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "You patched in increasing order of |estimate|. Patch the largest estimates first.",
)
def find_ascending(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, ascending=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "You stopped at the first exact top-k component found. Go on until all k are found.",
)
def find_first(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, last=False)


@KEY.mistake(
    "patches_to_find_top_k",
    "That is the overlap of the two top-k sets. Count the patches made, in order of "
    "|estimate|, until every exact top-k component is among them.",
)
def find_overlap(sol, estimate, exact, k=10):
    x, y = exact.flatten().abs(), estimate.flatten().abs()
    return len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist()))
