"""labkit.widgets.attribution: the explorer follows its controls; inseq on the lab's inputs."""

import pytest
import torch

from labkit.tiny import tiny_model
from labkit.widgets.attribution import AttributionExplorer, default_prompts, inseq_attribution


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


def _input_x_gradient(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    lm.model(inputs_embeds=x).logits[0, -1, target_id].backward()
    return (x * x.grad)[0].sum(-1)


def _position(lm, tokens, target_id):
    return torch.arange(tokens.shape[1], dtype=torch.float)


def _not_done(lm, tokens, target_id):
    raise NotImplementedError


PROMPTS = {"one": ("abc", ["d", "e"]), "two": ("hello", ["o"])}


def test_default_prompts_cover_puns_literals_and_facts() -> None:
    prompts = default_prompts()
    assert prompts["pun: current"] == (
        "Why do electricians make good swimmers? Because they know the",
        [" current", " water"],
    )
    assert any(k.startswith("literal: ") for k in prompts)
    assert any(k.startswith("fact: ") for k in prompts)


def test_explorer_updates_when_controls_change(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position, "ixg": _input_x_gradient}, PROMPTS)
    first = explorer.html.value
    assert first.count("<span") == 3  # 'abc' without the anchor
    assert "position" in explorer.status.value and "p(&#x27;d&#x27;)" in explorer.status.value
    explorer.method.value = "ixg"
    assert explorer.html.value != first
    explorer.prompt.value = "two"
    assert explorer.target.value == "o" and explorer.html.value.count("<span") == 5
    assert "o" in explorer.target.options and len(explorer.target.options) >= 2  # + top tokens


def test_explorer_reports_problems_without_crashing(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"todo": _not_done, "position": _position}, PROMPTS)
    assert "not implemented yet" in explorer.status.value and explorer.html.value == ""
    explorer.method.value = "position"
    explorer.target.value = "xy"  # two tokens
    assert "single token" in explorer.status.value
    with pytest.raises(ValueError, match="at least one method"):
        AttributionExplorer(tiny, {}, PROMPTS)


def test_show_anchor_keeps_position_zero(tiny) -> None:
    explorer = AttributionExplorer(tiny, {"position": _position}, PROMPTS, show_anchor=True)
    assert explorer.html.value.count("<span") == 4


def test_inseq_input_x_gradient_matches_ours(tiny) -> None:
    tokens = tiny.to_tokens("abc", prepend_anchor=True)
    target = tiny.token_id("d")
    theirs = inseq_attribution(tiny, tokens, target, "input_x_gradient")
    assert theirs.shape == (tokens.shape[1],)
    torch.testing.assert_close(theirs, _input_x_gradient(tiny, tokens, target).detach())


def test_inseq_baseline_is_restored_after_the_call(tiny) -> None:
    tokens = tiny.to_tokens("abc", prepend_anchor=True)
    unk = tiny.tokenizer.unk_token_id
    scores = inseq_attribution(
        tiny, tokens, tiny.token_id("d"), "occlusion", baseline_id=tiny.token_id(" ")
    )
    assert scores.shape == (tokens.shape[1],)
    assert scores[0] == 0  # the anchor is its own baseline: occluding it changes nothing
    assert tiny.tokenizer.unk_token_id == unk
