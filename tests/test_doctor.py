"""labkit doctor, labkit prepare and the labkit command line: "ready" only after a real load and
forward pass; a clear finding and fix, never a traceback, also without torch or transformers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cli, doctor, models

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.default_model
def test_doctor_reports_versions_colab_device_and_model(capsys) -> None:
    names = {f.name for f in doctor.diagnose()}
    assert {"python", "torch", "transformers", "inseq", "colab", "device", "default model"} <= names
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "-> ' Paris'" in out


def test_doctor_gives_the_fix_for_a_missing_model(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models.default, "find_default_gguf", lambda: None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert models.INSTALL_DEFAULT_MODEL in out and "!!" in out


def test_doctor_gives_the_fix_for_a_missing_package(monkeypatch, capsys, fake_default) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda p: None if p == "captum" else real(p))
    assert doctor.main() == 1
    assert doctor.REQUIRED["captum"] in capsys.readouterr().out


def test_prepare_reports_a_missing_model(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models.default, "find_default_gguf", lambda: None)
    assert cli.main(["prepare"]) == 1
    assert "--no-deps" in capsys.readouterr().err


def test_unknown_command_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


# ----- the default model: ready only after a forward pass ----------------------------------------
def model_finding() -> doctor.Finding:
    return next(f for f in doctor.diagnose() if f.name == "default model")


def test_not_converted_yet_is_not_ready_and_not_a_problem(fake_default) -> None:
    finding = model_finding()
    assert finding.fix is None and "not converted yet" in finding.value
    assert "ready" not in finding.value
    assert fake_default.calls == [], "doctor does not convert"


def test_ready_means_loaded_and_run(fake_default, monkeypatch) -> None:
    models.prepare_default_model()
    monkeypatch.setattr(doctor, "EXPECTED", None)  # a tiny model predicts nonsense
    finding = model_finding()
    assert finding.fix is None and "ready" in finding.value and "-> " in finding.value


def test_a_wrong_prediction_is_not_ready(fake_default) -> None:
    models.prepare_default_model()
    finding = model_finding()  # the tiny model does not say ' Paris'
    assert finding.fix and "ready" not in finding.value and "expected ' Paris'" in finding.value


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "extra.bin"])
def test_doctor_finds_a_damaged_cache_and_prepare_heals_it(
    fake_default,
    monkeypatch,
    capsys,
    name: str,
) -> None:
    models.prepare_default_model()
    path = fake_default.folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size; in extra.bin only the full check sees it
    path.write_bytes(bytes(data))
    finding = model_finding()
    assert finding.fix and finding.fix.startswith("labkit prepare")
    assert f"{name} does not match its manifest" in finding.value and "ready" not in finding.value
    monkeypatch.setattr(doctor, "EXPECTED", None)
    assert cli.main(["prepare"]) == 0
    assert "Default model ready" in capsys.readouterr().out
    assert len(fake_default.calls) == 2
    assert model_finding().fix is None


def test_a_damaged_gguf_is_found_by_doctor_and_prepare(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / models.SMOLLM2_GGUF
    gguf.write_bytes(b"GGUF" + bytes(4096))
    monkeypatch.setattr(models.default, "find_default_gguf", lambda: gguf)  # status, prepare
    monkeypatch.setattr(models, "find_default_gguf", lambda: gguf)  # doctor's own call
    finding = model_finding()
    assert finding.fix == models.REINSTALL_DEFAULT_MODEL and "damaged" in finding.value
    assert cli.main(["prepare"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("labkit prepare: The embedded model file") and "Traceback" not in (
        captured.err
    )


# ----- without torch or transformers -------------------------------------------------------------
def run_blocked(blocked: str, command: str) -> subprocess.CompletedProcess:
    """Run `labkit <command>` in a fresh Python where importing ``blocked`` fails."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from labkit.cli import main\n"
        f"sys.exit(main([{command!r}]))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("blocked", ["torch", "transformers"])
def test_doctor_works_without_torch_or_transformers(blocked: str) -> None:
    result = run_blocked(blocked, "doctor")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == [blocked])
    assert line.startswith("!!") and f"`import {blocked}` fails" in line
    assert "--force-reinstall" in result.stdout
    assert re.search(r"default model +not checked", result.stdout)


def test_prepare_without_torch_says_what_to_do() -> None:
    result = run_blocked("torch", "prepare")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "labkit prepare needs torch and transformers" in result.stderr
