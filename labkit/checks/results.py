"""What a check found: :class:`CheckResult` (shown in the notebook, read by the grader) and
its independent parts, plus the exceptions a check raises inside itself."""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass, field

__all__ = ["CheckFailed", "CheckResult", "NotAttempted", "PartResult"]


# ----- results -----------------------------------------------------------------------------------
@dataclass
class PartResult:
    """One independent part of a check: what it tested and how it went."""

    name: str
    points: float
    passed: bool | None  # None: not run (an earlier call timed out, or nothing was attempted)
    message: str = ""

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0


@dataclass
class CheckResult:
    """What one check found. The instructor's grader reuses these fields.

    In a notebook the result shows itself once, as a short coloured report (HTML), or as plain
    text in a terminal.
    """

    name: str
    passed: bool
    score: float
    max_score: float
    messages: list[str] = field(default_factory=list)
    attempted: bool = True
    parts: list[PartResult] = field(default_factory=list)
    seconds: float = 0.0
    notebook: bool = True  # checked on the notebook's own problems (not the grader's)

    @property
    def status(self) -> str:
        if not self.attempted:
            return "not attempted"
        return "passed" if self.passed else "failed"

    def __repr__(self) -> str:
        return f"<CheckResult {self.name}: {self.status}, {self.score:g}/{self.max_score:g}>"

    def _scope_note(self) -> str:
        return ", on the notebook's tests (grading adds hidden ones)" if self.notebook else ""

    def _summary(self) -> str:
        """'2 of 3 parts passed: ...' for a partly right answer; '' otherwise."""
        if len(self.parts) < 2 or not self.attempted or self.passed:
            return ""
        ok = [p.name for p in self.parts if p.passed]
        return f"{len(ok)} of {len(self.parts)} parts passed" + (
            f" ({'; '.join(ok)})." if ok else "."
        )

    def report(self, color: bool = False) -> str:
        """The report as text; ``color`` adds terminal colours."""
        tag = {"passed": "32", "failed": "31", "not attempted": "33"}[self.status]
        badge = f"[{self.status}]"
        if color:
            badge = f"\033[{tag}m{badge}\033[0m"
        head = f"{badge} {self.name} ({self.score:g}/{self.max_score:g})"
        if self.passed:
            return head + self._scope_note()
        if not self.attempted:
            return f"{head}: " + " ".join(self.messages)
        lines = [line for m in self.messages for line in m.splitlines()]
        if summary := self._summary():
            lines.append(summary)
        return head + "".join("\n    " + line for line in lines)

    # Badges with white text on a saturated background read on light and dark themes alike
    # (contrast 4.6:1 or more).
    _BADGE = {"passed": "#1a7f37", "failed": "#c62828", "not attempted": "#8a5a00"}

    def _repr_html_(self) -> str:
        badge = (
            f'<span style="background:{self._BADGE[self.status]};color:#fff;padding:1px 6px;'
            f'border-radius:4px;font-weight:600">{self.status}</span>'
        )
        head = f"{badge} <b>{html.escape(self.name)}</b> ({self.score:g}/{self.max_score:g})"
        if self.passed:
            return f"<div>{head}{html.escape(self._scope_note())}</div>"
        text = " ".join(self.messages) if not self.attempted else "\n".join(self.messages)
        if summary := self._summary():
            text += "\n" + summary
        body = (
            f'<pre style="white-space:pre-wrap;margin:4px 0 0 12px;background:transparent;'
            f'color:inherit">{html.escape(text)}</pre>'
        )
        return f"<div>{head}{body}</div>"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.report())

    def _ipython_display_(self) -> None:
        """Show the report, unless this check already showed it in the same cell."""
        ipython = ipython_shell()
        if ipython is not None and getattr(self, "_shown_in", None) == ipython.execution_count:
            return
        from IPython.display import display

        display({"text/plain": self.report(), "text/html": self._repr_html_()}, raw=True)

    def show(self) -> None:
        """Show the report once: rich in a notebook, plain text elsewhere."""
        ipython = ipython_shell()
        if ipython is None:
            print(self.report(color=sys.stdout.isatty()))
            return
        self._shown_in = None
        self._ipython_display_()
        self._shown_in = ipython.execution_count


def ipython_shell():
    shell = sys.modules.get("IPython")
    if shell is None:
        return None
    try:
        return shell.get_ipython()
    except AttributeError:
        return None


# ----- what can go wrong -------------------------------------------------------------------------
class CheckFailed(AssertionError):
    """Raised by a comparison that did not hold; its message is shown to the student."""


class NotAttempted(Exception):
    """The student's function still raises NotImplementedError."""


class TimedOut(BaseException):
    """Raised inside the student's code by the alarm: a BaseException, so that a student's
    ``except Exception`` cannot swallow it."""


class StopChecking(CheckFailed):
    """An earlier call timed out: the remaining parts are not run."""
