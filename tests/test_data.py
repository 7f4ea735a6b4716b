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


def test_patching_pairs_are_well_formed() -> None:
    for task in data.PATCHING_TASKS:
        pairs = data.patching_pairs(task)
        assert pairs
        for pair in pairs:
            assert {"id", "clean", "corrupted", "target", "foil"} <= set(pair)
            assert pair["clean"] != pair["corrupted"] and pair["target"] != pair["foil"]
    assert len(data.patching_pairs("ioi")) >= 6
    with pytest.raises(KeyError, match="Tasks"):
        data.patching_pairs("nope")


@pytest.mark.default_model
def test_patching_pairs_align_on_the_default_model(lm: labkit.LabModel) -> None:
    lengths = set()
    for task in data.PATCHING_TASKS:
        for pair in data.patching_pairs(task):
            clean = lm.to_tokens(pair["clean"], prepend_anchor=True)
            corrupted = lm.to_tokens(pair["corrupted"], prepend_anchor=True)
            assert clean.shape == corrupted.shape, pair["id"]
            lm.token_id(pair["target"]) and lm.token_id(pair["foil"])
            if task == "ioi":
                lengths.add(clean.shape[1])
    assert len(lengths) == 1  # IOI pairs share one template: they batch position by position
