"""labkit doctor and the labkit command line."""

import pytest

from labkit import cli, doctor, models


def test_doctor_reports_versions_colab_device_and_model(capsys) -> None:
    names = {f.name for f in doctor.diagnose()}
    assert {"python", "torch", "transformers", "inseq", "colab", "device", "default model"} <= names
    assert cli.main(["doctor"]) == 0
    assert "default model" in capsys.readouterr().out


def test_doctor_gives_the_fix_for_a_missing_model(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_default_gguf", lambda: None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert models.INSTALL_DEFAULT_MODEL in out and "!!" in out


def test_doctor_gives_the_fix_for_a_missing_package(monkeypatch, capsys) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda p: None if p == "captum" else real(p))
    assert doctor.main() == 1
    assert doctor.REQUIRED["captum"] in capsys.readouterr().out


def test_prepare_reports_a_missing_model(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "find_default_gguf", lambda: None)
    assert cli.main(["prepare"]) == 1
    assert "--no-deps" in capsys.readouterr().err


def test_unknown_command_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])
