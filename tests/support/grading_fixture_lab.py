"""A two-exercise lab for the grader's tests: small, fast, and with hidden variants that change
the problem (so an answer that recognises the notebook's inputs fails when graded)."""

from __future__ import annotations

import torch

from labkit.checks import kit
from labkit.checks.core import Checker, Lab

LAB = Lab("09", "09_fixture.ipynb")


@LAB.exercise("9.1", "doubling", points=2)
def check_double(double, t: Checker) -> None:
    n = t.choice([4, 7, 3])
    gen = kit.generator(t, 0)
    x = torch.randn(n, generator=gen)
    m = torch.randn(2, n, generator=gen)
    with t.part("a vector", points=1):
        t.close(t.call(double, x), t.expected("double", x), f"double(x) for a vector of {n}")
    with t.part("a matrix", points=1):
        want = t.expected("double", m)
        t.close(t.call(double, m), want, f"double(m) for a (2, {n}) matrix",
                mistakes=t.mistakes("double", m))  # fmt: skip


@LAB.exercise("9.2", "zero the bias in place", points=1)
def check_zero_bias_(zero_bias_, t: Checker) -> None:
    torch.manual_seed(t.seed(1))
    net = torch.nn.Linear(3, 2)
    weight = net.weight.detach().clone()
    t.call(zero_bias_, net)
    t.true(bool((net.bias == 0).all()), "the bias is zero after zero_bias_(net)")
    t.true(torch.equal(net.weight, weight), "the weight is unchanged")


EXERCISES = LAB.exercises

SOLUTION = """\
import torch


def double(x):
    return 2 * x


def zero_bias_(net):
    with torch.no_grad():
        net.bias.zero_()
"""
