"""Lab 01's gradient methods agree with captum and inseq on the default model.

Saliency, input x gradient and integrated gradients from the solution notebook (the reference
the checks and the grader use), against captum's and inseq's implementations of the same
method, on the lab's own prompts: the fact ("The capital of France is" -> " Paris") and the pun
("... Because they know the" -> " current"), with the anchor token in front. Integrated
gradients use the same quadrature everywhere (the midpoint rule, captum's "riemann_middle"),
the same baseline (the " " token at every position but the anchor) and the same step count.

inseq passes its own ``method`` argument to its method registry, so captum's quadrature cannot
be chosen through ``inseq_model.attribute``; the test makes ``riemann_middle`` captum's default
for the duration of the call (inseq's default, Gauss-Legendre, differs from the midpoint rule
by about 0.09 at 32 steps on the fact).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

import labkit
from labkit.data import facts, pun
from labkit.notebooks import notebook_definitions as solution_functions
from labkit.widgets.attribution import inseq_attribution

pytestmark = pytest.mark.default_model

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "01_attribution.ipynb"
N_STEPS = 32
# float32 through 30 layers: the libraries batch and reduce in another order than the lab,
# which moves scores by about 1e-6 of their size; 1e-4 of the largest score is tight enough
# that a wrong reduction, sign, step or baseline fails by orders of magnitude.
RTOL = 1e-4


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_functions(SOLUTION)


@pytest.fixture(scope="module", params=["fact", "pun"])
def problem(request, lm: labkit.LabModel, solution: dict) -> dict:
    prompt, target = {
        "fact": (facts()[0]["prompt"], facts()[0]["target"]),
        "pun": (pun("current")["pun"], pun("current")["target"]),
    }[request.param]
    tokens = lm.to_tokens(prompt, prepend_anchor=True)  # (1, pos)
    target_id = lm.token_id(target)
    with torch.no_grad():
        embeddings = lm.embed(tokens)  # (1, pos, d_model)
    return {
        "tokens": tokens,
        "target_id": target_id,
        "embeddings": embeddings,
        "f": solution["target_logit"](lm, target_id),
        "baseline": solution["space_baseline"](lm, tokens),
        "space_id": lm.token_id(" "),
    }


def assert_agree(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    ours, theirs = ours.detach().cpu().double(), theirs.detach().cpu().double()
    assert ours.shape == theirs.shape, f"{what}: shapes {ours.shape} and {theirs.shape}"
    scale = ours.abs().max().item()
    assert scale > 1e-3, f"{what}: the scores are all about zero, nothing is compared"
    difference = (ours - theirs).abs().max().item()
    assert difference <= RTOL * scale, (
        f"{what}: max |difference| {difference:.3g}, scale {scale:.3g}"
    )


def test_saliency_agrees_with_captum_and_inseq(lm, solution, problem) -> None:
    from captum.attr import Saliency

    ours = solution["saliency"](problem["f"], problem["embeddings"])
    x = problem["embeddings"].clone().requires_grad_(True)
    captum = Saliency(problem["f"]).attribute(x, abs=True)[0].norm(dim=-1)
    assert_agree(ours, captum, "saliency vs captum")
    inseq = inseq_attribution(lm, problem["tokens"], problem["target_id"], "saliency")
    assert_agree(ours, inseq, "saliency vs inseq")


def test_input_x_gradient_agrees_with_captum_and_inseq(lm, solution, problem) -> None:
    from captum.attr import InputXGradient

    ours = solution["input_x_gradient"](problem["f"], problem["embeddings"])
    x = problem["embeddings"].clone().requires_grad_(True)
    captum = InputXGradient(problem["f"]).attribute(x)[0].sum(-1)
    assert_agree(ours, captum, "input x gradient vs captum")
    inseq = inseq_attribution(lm, problem["tokens"], problem["target_id"], "input_x_gradient")
    assert_agree(ours, inseq, "input x gradient vs inseq")


def test_integrated_gradients_agree_with_captum_and_inseq(
    lm, solution, problem, monkeypatch
) -> None:
    from captum.attr import IntegratedGradients

    x, baseline = problem["embeddings"], problem["baseline"]
    ours = solution["integrated_gradients"](problem["f"], x, baseline, N_STEPS)
    captum = (
        IntegratedGradients(problem["f"])
        .attribute(x.clone(), baselines=baseline.clone(), n_steps=N_STEPS, method="riemann_middle")[
            0
        ]
        .sum(-1)
    )
    assert_agree(ours, captum, "integrated gradients vs captum")

    original = IntegratedGradients.attribute

    @functools.wraps(original)
    def midpoint(self, *args, **kwargs):
        kwargs.setdefault("method", "riemann_middle")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IntegratedGradients, "attribute", midpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inseq = inseq_attribution(
            lm,
            problem["tokens"],
            problem["target_id"],
            "integrated_gradients",
            baseline_id=problem["space_id"],
            n_steps=N_STEPS,
        )
    assert_agree(ours, inseq, "integrated gradients vs inseq")
    # and the agreement is not an accident of a degenerate problem: IG is complete here
    f = problem["f"]
    with torch.no_grad():
        gap = (f(x) - f(baseline)).item()
    assert ours.sum().item() == pytest.approx(gap, rel=0.2)
