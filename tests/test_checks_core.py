"""labkit.checks.core: what a student sees when a check passes, fails or is not attempted, and
what no student function can do to a check (raise through it, hang it, fool it with a tensor
subclass, or damage its inputs, models or gradient mode unnoticed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from support.checks import one_exercise

from labkit.checks.core import Checker, Results, exercise_number, skip_if_unattempted
from labkit.checks.results import CheckResult

check = one_exercise


@check("Exercise 0.1: doubling", points=2)
def check_double(fn, t: Checker) -> None:
    x = torch.arange(4.0)
    t.close(
        t.call(fn, x),
        2 * x,
        "doubling arange(4)",
        hint="multiply by two",
        mistakes=[(x**2, "You squared instead of doubling.")],
    )


@check("Exercise 0.2: two parts")
def check_parts(fn, t: Checker) -> None:
    with t.part("small input", points=1):
        t.close(t.call(fn, torch.tensor([1.0])), torch.tensor([2.0]), "fn([1])")
    with t.part("large input", points=3):
        t.close(t.call(fn, torch.tensor([100.0])), torch.tensor([200.0]), "fn([100])")


def doubled(x):
    return x * 2


# ----- reports ---------------------------------------------------------------------------------
def test_success_shows_one_line(capsys) -> None:
    result = check_double(doubled)
    out = capsys.readouterr().out
    assert result.passed and result.score == result.max_score == 2
    assert out.count("\n") == 1 and "[passed]" in out and "Exercise 0.1: doubling" in out


def test_not_attempted_does_not_raise(capsys) -> None:
    def stub(x):
        raise NotImplementedError("Exercise: replace this line with your code.")

    result = check_double(stub)
    assert not result.attempted and result.status == "not attempted" and result.score == 0
    assert "[not attempted]" in capsys.readouterr().out


def test_mismatch_reports_index_values_and_tolerance_with_four_digits() -> None:
    result = check_double(lambda x: x * 2 + (x == 3).float() / 3, quiet=True)
    text = result.messages[0]
    assert not result.passed and result.attempted
    assert "doubling arange(4)" in text and "index (3,)" in text
    assert "expected 6," in text and "got 6.333 " in text and "tolerance" in text
    assert "Hint: multiply by two" in text


def test_a_hint_that_names_a_mistake_shows_only_for_that_mistake() -> None:
    squared = check_double(lambda x: x**2, quiet=True).messages[0]
    assert "You squared" in squared and "multiply by two" not in squared
    other = check_double(lambda x: x * 3, quiet=True).messages[0]
    assert "You squared" not in other and "multiply by two" in other


def test_shape_dtype_type_and_nan_are_reported() -> None:
    assert "shape (4,)" in check_double(lambda x: x[:3] * 2, quiet=True).messages[0]
    assert "float tensor" in check_double(lambda x: (x * 2).long(), quiet=True).messages[0]
    assert "torch.Tensor" in check_double(lambda x: (x * 2).tolist(), quiet=True).messages[0]
    assert "NaN" in check_double(lambda x: x * float("nan"), quiet=True).messages[0]
    half = check_double(lambda x: (x * 2).half(), quiet=True).messages[0]
    assert "float16" in half and "float32" in half


def test_numpy_results_and_float64_are_accepted() -> None:
    assert check_double(lambda x: (x * 2).numpy(), quiet=True).passed
    assert check_double(lambda x: (x * 2).numpy().astype(np.float32), quiet=True).passed
    assert check_double(lambda x: (x * 2).double(), quiet=True).passed

    @check("scalar")
    def check_scalar(fn, t: Checker) -> None:
        t.close(t.scalar(t.call(fn), "a number"), 1.5, "a number")

    for value in (1.5, np.float32(1.5), np.float64(1.5), torch.tensor(1.5), np.array(1.5)):
        assert check_scalar(lambda v=value: v, quiet=True).passed, type(value)


def test_student_exception_is_one_line_at_the_students_own_line() -> None:
    def buggy(x):
        return x @ torch.ones(3, 4)  # (4,) @ (3, 4): a shape error inside torch

    message = check_double(buggy, quiet=True).messages[0]
    assert message.startswith("Your function raised RuntimeError") and "in buggy" in message

    def calls_networkx(x):
        import networkx as nx

        nx.maximum_flow_value(nx.DiGraph(), 0, 1)  # raises deep inside networkx

    message = check_double(calls_networkx, quiet=True).messages[0]
    assert "in calls_networkx" in message and "argmap" not in message


def test_passing_something_that_is_not_a_function() -> None:
    result = check_double(42, quiet=True)
    assert not result.passed and "function itself" in result.messages[0]
    assert "needs your function" in check_double(quiet=True).messages[0]


def test_rich_display_is_one_report_not_a_print_plus_a_repr() -> None:
    result = check_double(lambda x: x * 3, quiet=True)
    html = result._repr_html_()
    assert "failed" in html and "Exercise 0.1" in html and "\033[" not in html
    assert "\033[" not in result.report() and "[failed]" in result.report()
    assert "<CheckResult" in repr(result)


def test_partial_credit_per_part() -> None:
    result = check_parts(lambda x: torch.where(x < 10, 2 * x, x), quiet=True)
    assert not result.passed and result.score == 1 and result.max_score == 4
    assert [p.passed for p in result.parts] == [True, False]
    assert "fn([100])" in result.messages[0] and "1 of 2 parts passed" in result.report()
    assert check_parts(doubled, quiet=True).score == 4


def test_checks_are_seeded_and_leave_the_global_rng_alone() -> None:
    draws = []

    @check("seeded")
    def check_seeded(fn, t: Checker) -> None:
        draws.append(torch.randn(3))

    torch.manual_seed(123)
    before = torch.randn(1)
    torch.manual_seed(123)
    check_seeded(lambda: None, quiet=True)
    check_seeded(lambda: None, quiet=True)
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.randn(1), before)


def test_hidden_variants_change_seeds_and_choices() -> None:
    notebook, hidden = Checker("x"), Checker("x", variant=17)
    assert notebook.seed(3) == 3 and notebook.choice(["a", "b", "c"]) == "a"
    assert hidden.seed(3) != 3
    picks = {Checker("x", variant=v).choice(["a", "b", "c"]) for v in range(1, 30)}
    assert picks == {"a", "b", "c"}


# ----- never raises -----------------------------------------------------------------------------
class LyingTensor(torch.Tensor):
    """A Tensor subclass whose every operation answers 'close enough'."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.isclose, torch.Tensor.__eq__, torch.equal, torch.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_subclass_is_rejected_without_calling_it() -> None:
    result = check_double(lambda x: (x * 5).as_subclass(LyingTensor), quiet=True)
    assert not result.passed and "subclass" in result.messages[0]
    assert not check_double(lambda x: torch.nn.Parameter(x * 2), quiet=True).passed


@pytest.mark.parametrize(
    "returns",
    [
        lambda x: torch.empty(4, device="meta"),
        lambda x: (x * 2).to_sparse(),
        lambda x: (x * 2).to(torch.complex64),
        lambda x: object(),
        lambda x: None,
    ],
    ids=["meta", "sparse", "complex", "object", "None"],
)
def test_odd_results_fail_cleanly(returns) -> None:
    result = check_double(returns, quiet=True)
    assert isinstance(result, CheckResult) and result.attempted and not result.passed


@pytest.mark.parametrize(
    "raise_it",
    [SystemExit(3), KeyboardInterrupt(), RecursionError("deep"), MemoryError(), ValueError("v")],
    ids=lambda e: type(e).__name__,
)
def test_anything_the_student_raises_becomes_a_result(raise_it) -> None:
    def hostile(x):
        raise raise_it

    result = check_double(hostile, quiet=True)
    assert not result.passed and type(raise_it).__name__ in result.messages[0]


def test_an_extra_argument_or_a_broken_check_body_is_a_result() -> None:
    result = check_double(doubled, 3, quiet=True)
    assert not result.passed and "takes one argument" in result.messages[0]

    @check("needs a missing library")
    def check_missing(fn, t: Checker) -> None:
        import labkit_no_such_package  # noqa: F401

    result = check_missing(doubled, quiet=True)
    assert not result.passed and "not installed" in result.messages[0]

    @check("buggy check")
    def check_buggy(fn, t: Checker) -> None:
        raise ZeroDivisionError("oops")

    result = check_buggy(doubled, quiet=True)
    assert not result.passed and "not your fault" in result.messages[0]


# ----- the time limit ---------------------------------------------------------------------------
def test_an_infinite_loop_times_out_with_a_clear_message() -> None:
    @check("loops", timeout=0.5)
    def check_loops(fn, t: Checker) -> None:
        with t.part("first"):
            t.call(fn, torch.ones(2))
        with t.part("second"):
            t.call(fn, torch.ones(2))

    def forever(x):
        while True:
            try:
                x = x + 1
            except BaseException:  # even a bare except cannot swallow the limit
                pass

    started = time.perf_counter()
    result = check_loops(forever, quiet=True)
    assert time.perf_counter() - started < 5
    assert not result.passed and "stopped after 0.5 s" in result.messages[0]
    assert result.parts[1].passed is None and "Not run" in result.parts[1].message


# ----- side effects -----------------------------------------------------------------------------
@check("Exercise 0.3: gradient")
def check_gradient(fn, t: Checker) -> None:
    x = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(2):  # twice: state kept between calls shows
        t.close(t.call(fn, x), 2 * x, "the gradient of sum(x**2)")


def gradient_right(x):
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((x**2).sum(), x)
    return grad


def gradient_mutates_input(x):
    x.requires_grad_(True)
    (x**2).sum().backward()
    return x.grad


def gradient_writes_into_input(x):
    x.mul_(2)
    return x.clone()


def gradient_leaves_grad_off(x):
    result = gradient_right(x)
    torch.set_grad_enabled(False)
    return result


def test_mutating_inputs_or_the_grad_mode_fails_with_a_named_problem() -> None:
    assert check_gradient(gradient_right, quiet=True).passed
    message = check_gradient(gradient_mutates_input, quiet=True).messages[0]
    assert "requires_grad on its input" in message
    message = check_gradient(gradient_writes_into_input, quiet=True).messages[0]
    assert "changed its input" in message
    message = check_gradient(gradient_leaves_grad_off, quiet=True).messages[0]
    assert "switched gradients off" in message
    assert torch.is_grad_enabled()  # and the check put it back


def test_the_callers_tensors_are_never_touched() -> None:
    x = torch.arange(3.0)

    @check("keeps x")
    def check_keeps(fn, t: Checker) -> None:
        t.call(fn, x)

    check_keeps(lambda y: y.add_(1), quiet=True)
    assert torch.equal(x, torch.arange(3.0))


def test_leaked_hooks_and_changed_weights_are_caught_and_repaired() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)).requires_grad_(False)
    weights = net[0].weight.clone()

    @check("uses the model")
    def check_model(fn, t: Checker) -> None:
        t.watch(net, "the tiny network")
        expected = net(torch.ones(1, 3))  # computed before any student code runs
        t.close(t.call(fn, net), expected, "net(ones)")

    def leaks_hook(model):
        model[0].register_forward_hook(lambda m, i, o: o * 0)
        return model(torch.ones(1, 3))

    def writes_weights(model):
        with torch.no_grad():
            model[0].weight.add_(1)
        return model(torch.ones(1, 3))

    def unfreezes(model):
        model.requires_grad_(True)
        return model(torch.ones(1, 3)).detach()

    message = check_model(leaks_hook, quiet=True).messages[0]
    assert "hook(s) registered on the tiny network" in message
    assert not net[0]._forward_hooks  # removed again
    message = check_model(writes_weights, quiet=True).messages[0]
    assert "changed the weights of the tiny network" in message
    assert torch.equal(net[0].weight, weights)  # restored
    assert "requires_grad" in check_model(unfreezes, quiet=True).messages[0]
    assert not any(p.requires_grad for p in net.parameters())
    assert check_model(lambda model: model(torch.ones(1, 3)), quiet=True).passed


# ----- cells that use exercises -----------------------------------------------------------------
def test_skip_names_the_missing_function(capsys) -> None:
    def saliency(*args):
        raise NotImplementedError("Exercise: replace this line with your code.")

    with skip_if_unattempted("the plot"):
        saliency()
    out = capsys.readouterr().out
    assert "(skipped) the plot" in out and "not implemented yet" in out
    number = exercise_number("saliency")  # lab 01's, once its checks are imported
    assert (f"exercise {number} (saliency)" if number else "saliency()") in out


def test_skip_names_a_result_that_was_never_computed(capsys) -> None:
    results = Results()
    with skip_if_unattempted("the table"):
        results["pun", "saliency"]
    out = capsys.readouterr().out
    assert "results[('pun', 'saliency')]" in out and "run the cell that computes it" in out


def test_skip_explains_a_cell_run_out_of_order(capsys) -> None:
    with skip_if_unattempted("the grid"):
        undefined_name_from_an_earlier_cell  # noqa: B018, F821
    out = capsys.readouterr().out
    assert "undefined_name_from_an_earlier_cell is not defined yet" in out


def test_a_leaked_hook_is_removed_exactly_beside_transformers_own_hooks() -> None:
    """transformers adds output-capturing hooks on a model's first run (here inside the
    student's call); the grader removes the student's leaked hook and keeps those."""
    from labkit.tiny import tiny_model

    lm = tiny_model("llama", seed=3)
    ids = torch.tensor([[5, 6, 7, 8]])

    @check("leaks on a fresh model")
    def check_fresh(fn, t: Checker) -> None:
        with t.part("a"):
            watched = t.watch(lm, "the tiny model")
            t.call(fn, watched)

    def leaks(model):
        model.block(0).register_forward_hook(lambda m, a, out: out)
        return model.model(ids, output_attentions=True).logits

    result = check_fresh(leaks, quiet=True)
    assert not result.passed and "left 1 hook(s)" in result.messages[0]
    assert all(
        (getattr(fn, "__module__", "") or "").startswith("transformers.")
        for m in lm.model.modules()
        for fn in m._forward_hooks.values()
    ), "only transformers' own hooks remain"
    clean = tiny_model("llama", seed=3).model(ids).logits
    assert torch.allclose(lm.model(ids).logits, clean)
