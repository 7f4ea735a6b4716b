"""labkit.claims: prose checked against its numbers; strict for the solutions, polite for
students."""

from __future__ import annotations

import pytest

from labkit.claims import ClaimFailed, claim, interval


class FakeCheck:
    number = "1.13"


def test_a_claim_that_holds_prints_its_values(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABKIT_STRICT_CLAIMS", raising=False)
    result = claim("occlusion beats random", 0.41 < 0.55, "AUC 0.41 vs 0.55")
    assert (
        result.holds and capsys.readouterr().out == "✓ occlusion beats random (AUC 0.41 vs 0.55)\n"
    )


def test_a_drifted_claim_fails_a_solution_run(monkeypatch) -> None:
    """CI's guard: perturb the result and the solution's claim stops the notebook."""
    monkeypatch.setenv("LABKIT_STRICT_CLAIMS", "1")
    auc_occlusion, auc_random = 0.41, 0.55
    claim("occlusion beats random", auc_occlusion < auc_random)
    auc_occlusion += 0.2  # the result drifts, the sentence does not
    with pytest.raises(ClaimFailed, match="occlusion beats random"):
        claim("occlusion beats random", auc_occlusion < auc_random, f"{auc_occlusion:.2f}")


def test_students_get_a_polite_line_that_names_the_exercise(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABKIT_STRICT_CLAIMS", raising=False)
    result = claim("occlusion beats random", False, "AUC 0.61 vs 0.55", needs=FakeCheck())
    out = capsys.readouterr().out
    assert result.holds is False and "comes out the other way" in out and "exercise 1.13" in out


def test_an_unfinished_exercise_skips_in_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_STRICT_CLAIMS", "1")

    def needs_exercise() -> bool:
        raise NotImplementedError

    result = claim("x beats y", needs_exercise, needs=FakeCheck())
    assert result.holds is None
    assert capsys.readouterr().out == "(skipped) x beats y: finish exercise 1.13 first.\n"


def test_interval_brackets_the_mean() -> None:
    mean, low, high = interval([0.2, 0.9, 0.4, 0.5, 0.7])
    assert low <= mean <= high and low < high
    assert interval([3.0]) == (3.0, 3.0, 3.0)
