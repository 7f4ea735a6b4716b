"""Where the student release is published, and stamping it into the labs.

Where the release lives is ONE setting, in the repository's pyproject.toml::

    [tool.labkit]
    release_url = "https://github.com/your-course/labs"   # the git repository of the release
    release_ref = "v1.0"                                  # the tag students install

``labkit build`` stamps it into every lab: the Colab install cell and the "Open in Colab" badge.
Until it is set, the install cell stops on Colab with a message that says what to do, and no
badge is shown: a lab never points at a repository that may not exist.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat

_PIP_LINE = re.compile(
    r'^(?P<indent>\s*)!pip install (?:-q )?"?(?:labkit @ |git\+file:)[^\n]*$', re.MULTILINE
)
_NOT_SET = "# labkit's release URL is not set"
_NOT_SET_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)raise RuntimeError\(  " + re.escape(_NOT_SET) + r"\n.*?^[ \t]*\)$",
    re.MULTILINE | re.DOTALL,
)
_BADGE = re.compile(
    r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\([^)]*\)"
)
_BADGE_NOT_SET = re.compile(r"<!-- Open in Colab: [^>]*-->")
_GITHUB = re.compile(
    r"^(?:https://|ssh://git@)github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$"
)


class ReleaseError(RuntimeError):
    """The release cannot be written (or would leak solutions)."""


@dataclass(frozen=True)
class ReleaseSettings:
    """Where the student release is published (``[tool.labkit]`` in pyproject.toml)."""

    url: str = ""
    ref: str = ""

    @property
    def is_set(self) -> bool:
        return bool(self.url)

    def install_line(self, indent: str) -> str:
        if not self.is_set:
            lines = [
                f"raise RuntimeError(  {_NOT_SET}",
                '    "This copy of the lab does not say where to install labkit from: ask "',
                '    "your instructor for the course\'s install command, and put it here in "',
                '    "place of this raise. (Instructors: set release_url and release_ref "',
                '    "under [tool.labkit] in pyproject.toml, then run `labkit build`.)"',
                ")",
            ]
            return "\n".join(indent + line for line in lines)
        return f'{indent}!pip install -q "{self.requirement}"'

    @property
    def requirement(self) -> str:
        """What pip installs: ``labkit @ git+URL@REF``. A ``file://`` URL goes without the name
        (pip before 24 refuses ``name @ git+file:...``, and reads the name from the project)."""
        if self.url.startswith("file://"):
            return f"git+{self.url}@{self.ref}"
        return f"labkit @ git+{self.url}@{self.ref}"

    def badge(self, notebook: str) -> str:
        github = _GITHUB.match(self.url)
        if not github:
            reason = "not set" if not self.is_set else "only for repositories on GitHub"
            return f"<!-- Open in Colab: badge {reason} (release_url in pyproject.toml) -->"
        path = f"{github['owner']}/{github['repo']}/blob/{self.ref}/labs/{notebook}"
        return (
            "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path})"
        )


ACCEPTED_URLS = (
    "https://HOST/PATH (e.g. https://github.com/ORG/REPO)",
    "git+ssh://git@HOST/PATH or ssh://git@HOST/PATH",
    "git@HOST:PATH (converted to ssh://git@HOST/PATH)",
    "file:///ABSOLUTE/PATH (a local clone, for testing)",
)
_SCP_LIKE = re.compile(r"^(?P<user>[\w.-]+)@(?P<host>[\w.-]+):(?!//)(?P<path>[^\s]+)$")
_URL = re.compile(r"^(?P<scheme>https|http|ssh|file)://(?P<rest>[^\s\"'@]*(@[^\s\"'@]+)?)$")


def normalise_url(url: str, where: str = "release_url") -> str:
    """``url`` as pip takes it after ``git+`` (https://, ssh:// or file://), or a
    :class:`ReleaseError` that names the accepted forms. An scp-like ``git@host:org/repo``
    becomes ``ssh://git@host/org/repo``; a ``git+`` prefix is dropped (the install line adds
    it)."""
    url = url.strip().rstrip("/").removeprefix("git+")
    scp = _SCP_LIKE.match(url)
    if scp:
        url = f"ssh://{scp['user']}@{scp['host']}/{scp['path'].lstrip('/')}"
    match = _URL.match(url)
    if not match or match["scheme"] == "http" or not match["rest"].strip("/"):
        raise ReleaseError(
            f"{where} = {url!r} is not a git URL that pip can install from. Use one of: "
            + "; ".join(ACCEPTED_URLS)
            + "."
        )
    if match["scheme"] == "file" and not match["rest"].startswith("/"):
        raise ReleaseError(
            f"{where} = {url!r}: a file:// URL needs an absolute path (file:///...). Use one "
            "of: " + "; ".join(ACCEPTED_URLS) + "."
        )
    return url


def release_settings(root: Path) -> ReleaseSettings:
    """The settings in ``root/pyproject.toml`` (empty when unset)."""
    path = Path(root) / "pyproject.toml"
    if not path.exists():
        return ReleaseSettings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ReleaseError(f"{path} is not valid TOML: {err}.") from None
    table = data.get("tool", {}).get("labkit", {})
    url = str(table.get("release_url", "")).strip()
    ref = str(table.get("release_ref", "")).strip()
    if url and not ref:
        raise ReleaseError(
            f"{path}: release_url is set but release_ref is empty. Set release_ref to the tag "
            "students install (e.g. v1.0), so every student gets the same labkit."
        )
    if ref and not re.match(r"^[\w][\w.+/-]*$", ref):
        raise ReleaseError(f"{path}: release_ref = {ref!r} is not a git tag or branch name.")
    return ReleaseSettings(normalise_url(url, f"{path}: release_url") if url else "", ref)


def stamp_release(notebook: nbformat.NotebookNode, name: str, settings: ReleaseSettings) -> None:
    """Write the release's install line and Colab badge into a student notebook, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for pattern in (_PIP_LINE, _NOT_SET_BLOCK):
                cell.source = pattern.sub(
                    lambda m: settings.install_line(m.group("indent")), cell.source
                )
        elif cell.cell_type == "markdown":
            for pattern in (_BADGE, _BADGE_NOT_SET):
                cell.source = pattern.sub(lambda m: settings.badge(name), cell.source)
