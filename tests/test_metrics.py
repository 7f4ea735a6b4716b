"""labkit.metrics: probabilities and logit differences on hand-computable logits."""

import math

import pytest
import torch

from labkit.metrics import logit_diff, target_prob


def test_target_prob_is_the_softmax_entry() -> None:
    logits = torch.tensor([0.0, math.log(3.0)])  # softmax = [1/4, 3/4]
    assert target_prob(logits, 1).item() == pytest.approx(0.75)


def test_target_prob_works_on_batches() -> None:
    logits = torch.zeros(4, 10)
    assert target_prob(logits, 3).shape == (4,)
    assert torch.allclose(target_prob(logits, 3), torch.full((4,), 0.1))


def test_logit_diff_is_target_minus_foil() -> None:
    logits = torch.tensor([[1.0, 4.0, -2.0]])
    assert logit_diff(logits, 1, 2).tolist() == [6.0]
    assert logit_diff(logits, 2, 1).tolist() == [-6.0]


@pytest.mark.parametrize("bad", [-1, 3, 1.0])
def test_bad_ids_get_a_clear_error(bad) -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        target_prob(torch.zeros(3), bad)


@pytest.mark.parametrize("bad", [-1, 3, 2.0, True])
def test_logit_diff_rejects_a_bad_target_or_foil(bad) -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        logit_diff(logits, 0, bad)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        logit_diff(logits, bad, 0)


def test_the_first_and_last_ids_are_in_the_vocabulary() -> None:
    logits = torch.arange(5.0)
    assert torch.isclose(target_prob(logits, 0), logits.softmax(-1)[0])
    assert logit_diff(logits, 0, 4) == -4.0


def test_the_error_gives_the_range_and_how_to_get_an_id() -> None:
    with pytest.raises(ValueError) as error:
        target_prob(torch.zeros(7), 7)
    assert str(error.value) == (
        "Token id 7 is not in the vocabulary (0..6). Get ids with lm.token_id(' Paris')."
    )
