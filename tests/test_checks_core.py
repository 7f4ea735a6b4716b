"""labkit.checks.core: what a student sees when a check passes, fails or is not attempted."""

import torch

from labkit.checks.core import Checker, check, skip_if_unattempted


@check("0.1 doubling", points=2)
def check_double(fn, t: Checker) -> None:
    x = torch.arange(4.0)
    t.close(t.call(fn, x), 2 * x, "doubling arange(4)", hint="multiply by two")


def test_success_prints_one_line(capsys) -> None:
    result = check_double(lambda x: x * 2)
    out = capsys.readouterr().out
    assert result.passed and result.score == result.max_score == 2
    assert out.count("\n") == 1 and "[passed]" in out and "0.1 doubling" in out


def test_not_attempted_does_not_raise(capsys) -> None:
    def stub(x):
        raise NotImplementedError("Exercise: replace this line with your code.")

    result = check_double(stub)
    assert not result.attempted and result.status == "not attempted" and result.score == 0
    assert "[not attempted]" in capsys.readouterr().out


def test_mismatch_reports_first_index_values_and_tolerance() -> None:
    result = check_double(lambda x: x * 2 + (x == 3).float(), quiet=True)
    text = result.messages[0]
    assert not result.passed and result.attempted
    assert "doubling arange(4)" in text and "index (3,)" in text
    assert "expected 6" in text and "got 7" in text and "atol=" in text
    assert "Hint: multiply by two" in text


def test_shape_dtype_type_and_nan_are_reported() -> None:
    assert "shape (4,)" in check_double(lambda x: x[:3] * 2, quiet=True).messages[0]
    assert "float tensor" in check_double(lambda x: (x * 2).long(), quiet=True).messages[0]
    assert "torch.Tensor" in check_double(lambda x: (x * 2).tolist(), quiet=True).messages[0]
    assert "NaN" in check_double(lambda x: x * float("nan"), quiet=True).messages[0]


def test_student_exception_is_one_line_not_a_traceback() -> None:
    def buggy(x):
        return x @ torch.ones(3, 4)  # (4,) @ (3, 4): a shape error

    message = check_double(buggy, quiet=True).messages[0]
    assert message.startswith("Your function raised RuntimeError") and "in buggy" in message


def test_passing_something_that_is_not_a_function() -> None:
    result = check_double(42, quiet=True)
    assert not result.passed and "function itself" in result.messages[0]


def test_checks_are_seeded_and_leave_the_global_rng_alone() -> None:
    draws = []

    @check("0.2 seeded")
    def check_seeded(fn, t: Checker) -> None:
        draws.append(torch.randn(3))

    torch.manual_seed(123)
    before = torch.randn(1)
    torch.manual_seed(123)
    check_seeded(lambda: None, quiet=True)
    check_seeded(lambda: None, quiet=True)
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.randn(1), before)


def test_skip_if_unattempted(capsys) -> None:
    with skip_if_unattempted("the plot"):
        raise NotImplementedError
    assert "the plot" in capsys.readouterr().out
