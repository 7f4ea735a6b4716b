"""Student text, made safe for where the grader writes it.

Everything that comes back from a submission (answers, names of files, messages of its code)
is data: capped, stripped of control characters, and escaped for the format it lands in, so
it can never act as markdown, HTML, a spreadsheet formula or a terminal escape.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "|", "%")


def plain(text: object, limit: int = 4000) -> str:
    """``text`` as printable text of at most ``limit`` characters (newlines and tabs kept)."""
    text = _CONTROL.sub("?", str(text))
    return text if len(text) <= limit else text[:limit] + " [... cut]"


def csv_cell(text: object, limit: int = 32_000) -> str:
    """A CSV cell a spreadsheet shows as text: never a formula (OWASP's rule: a leading
    ``'`` before = + - @ and friends)."""
    text = plain(text, limit)
    return "'" + text if text.startswith(_FORMULA_START) else text


def markdown_block(text: object, limit: int = 20_000) -> str:
    """Student text inside a fenced block: markdown shows it verbatim (no links, images,
    HTML or headings of its own)."""
    text = plain(text, limit)
    longest = max((len(m) for m in re.findall(r"~+", text)), default=0)
    fence = "~" * max(4, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def name(text: object, limit: int = 200) -> str:
    """A file or folder name as one safe line."""
    return " ".join(plain(text, limit).split())


def cap_utf8(text: str, max_bytes: int, note: str = "\n[... cut: too long]\n") -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(note.encode())
    return data[:room].decode("utf-8", errors="ignore") + note
