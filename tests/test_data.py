"""labkit.data: the shipped prompt sets are well formed and fit the default model."""

import pytest

import labkit
from labkit import data


def test_puns_and_facts_have_their_fields() -> None:
    for item in data.puns():
        assert {"id", "pun", "target", "foil", "literal", "type", "pun_span"} <= set(item)
        assert item["type"] in {"homograph", "homophone"}
        assert item["pun_span"] in item["pun"]
    for item in data.facts():
        assert item["subject"] in item["prompt"]
    assert data.pun("current")["foil"] == " water"
    with pytest.raises(KeyError, match="Available"):
        data.pun("nope")


def test_returned_items_are_copies() -> None:
    data.puns()[0]["target"] = "changed"
    assert data.puns()[0]["target"] == " current"


@pytest.mark.default_model
def test_targets_are_single_tokens(lm: labkit.LabModel) -> None:
    for item in data.puns():
        lm.token_id(item["target"]) and lm.token_id(item["foil"])
    for item in data.facts():
        lm.token_id(item["target"])
