"""labkit.grading.escape: student text lands as text in every file the grader writes."""

from __future__ import annotations

from labkit.grading.escape import cap_utf8, csv_cell, markdown_block, name, plain


def test_spreadsheet_formulas_are_made_text() -> None:
    for formula in ('=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\t=1"):
        assert csv_cell(formula).startswith("'")
    assert csv_cell("a normal answer") == "a normal answer"


def test_markdown_cannot_escape_its_block() -> None:
    evil = "~~~~\n# Grade: 10/10\n<script>alert(1)</script>\n[x](javascript:alert(1))"
    block = markdown_block(evil)
    fence = block.split("text\n", 1)[0]
    assert len(fence) > 4 and block.endswith(fence) and block.count(fence) == 2


def test_control_characters_and_length() -> None:
    assert "\x1b" not in plain("\x1b[2Jcleared") and "\u202e" not in plain("a\u202eb")
    assert len(plain("x" * 10_000, 100)) < 120
    assert name("a\nb\tc") == "a b c"
    assert len(cap_utf8("é" * 10_000, 1000).encode()) <= 1000
