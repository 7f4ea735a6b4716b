"""The student labs in a real browser: JupyterLab in headless Chromium, driven like a student.

For each lab, a student's first hour:

1. open the lab in a 1280 px window with the file browser open: it is not marked modified
   (no dot on its tab) and no dialog (such as "Select Kernel") appears;
2. Run All on the fresh lab, every exercise a stub: no cell shows an error, and the explorer
   names the exercise it needs (its number from the checks' registry) and says that its own
   cell need not run again;
3. attempt the first exercise wrongly, then rightly, running its check each time: the points
   shown have the same maximum unattempted, failed and passed;
4. finish the exercises the explorer needs, one cell at a time, never re-running the explorer's
   cell: after each, the explorer names the next unfinished one, or draws;
5. work every control: the picture changes (PNG bytes of a screenshot) or gives way to a
   message, and the explorer fits the page. Printed per control: seconds until the explorer
   answers (a busy line, a message or the picture) and until the new picture.

Screenshots of the explorer at each stage are left in the test's temporary folder
(``explorer-*.png``), the whole page as well where a test fails.

Every wait is for a state (the notebook model read through JupyterLab, the explorer's status
line), never a fixed time. Adding a lab's explorer is one entry in ``LABS``. The tests need
Debian's chromium and Playwright; without them they are skipped with one line that says how to
enable them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import labbrowser
import pytest

from labkit.build import MARKERS, STUB_MESSAGE

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL_TIMEOUT = 900  # seconds; a 2-core laptop runs each lab in 1-4 minutes
CONTROL_BUDGET = 180.0  # seconds for one control to redraw; printed next to each measurement
VIEWPORT = {"width": 1280, "height": 900}  # JupyterLab opens with its file browser shown
PICTURE = "picture"  # what the explorer shows once it has all it needs

pytestmark = [pytest.mark.browser, pytest.mark.notebook]


def exercise(name: str) -> str:
    """How the explorers name an exercise: "exercise 2.5 (restoration_grid)", numbered by the
    checks' registry."""
    import labkit.checks.lab01
    import labkit.checks.lab02
    import labkit.checks.lab03  # noqa: F401 -- fill the registry
    from labkit.checks.core import exercise_number

    return f"exercise {exercise_number(name)} ({name})"


# ----- what a student does with each explorer ------------------------------------------------
def _labelled(explorer, kind: str, label: str):
    """The widget of class ``widget-{kind}`` whose label reads ``label``."""
    return explorer.locator(f".widget-{kind}").filter(
        has=explorer.page.locator(".widget-label", has_text=label)
    )


def select(label: str, option: str) -> Callable:
    def act(explorer) -> None:
        _labelled(explorer, "dropdown", label).locator("select").select_option(option)

    act.__name__ = f"{label} = {option!r}"
    return act


def type_and_enter(label: str, text: str, keystrokes: bool = False) -> Callable:
    """Replace a text box's content and press Enter (``keystrokes``: one key at a time)."""

    def act(explorer) -> None:
        box = _labelled(explorer, "text", label).locator("input")
        if keystrokes:  # nothing may happen before Enter: no redraw, no "2 tokens" message
            status, picture = _status(explorer), _picture(explorer)
            box.fill("")
            box.press_sequentially(text, delay=80)
            time.sleep(1.5)  # a check that nothing happens can only wait
            assert (_status(explorer), _picture(explorer)) == (status, picture), (
                f"typing {text!r} into {label} changed the explorer before Enter"
            )
        else:
            box.fill(text)
        box.press("Enter")

    act.__name__ = f"{label} = {text!r} + Enter"
    return act


def type_then_click(label: str, text: str, button: str) -> Callable:
    def act(explorer) -> None:
        _labelled(explorer, "text", label).locator("input").fill(text)
        explorer.get_by_role("button", name=button).click()

    act.__name__ = f"{label} = {text!r}, then the {button} button"
    return act


def click_suggestion(text: str) -> Callable:
    """Click the button that offers the model's word (" Paris" for "Paris")."""

    def act(explorer) -> None:
        button = explorer.locator(".labkit-suggestion")
        assert button.inner_text().strip() == f"use {text!r}", button.inner_text()
        button.click()

    act.__name__ = f"click 'use {text!r}'"
    return act


def toggle(option: str) -> Callable:
    def act(explorer) -> None:
        explorer.locator(".widget-toggle-buttons").get_by_role("button", name=option).click()

    act.__name__ = f"site = {option}"
    return act


def slide(label: str, value: float) -> Callable:
    """Type a value into a slider's readout, as a student who wants an exact value does."""

    def act(explorer) -> None:
        readout = _labelled(explorer, "slider", label).locator(".widget-readout")
        readout.click()
        readout.press("Control+A")
        readout.press_sequentially(str(value))
        readout.press("Enter")

    act.__name__ = f"{label} = {value}"
    return act


@dataclass
class Step:
    """Do ``act``; then the picture must change, or (expect="hidden") give way to a message."""

    act: Callable
    expect: str = "changes"  # or "hidden": a message containing `message`, no picture
    message: str | Callable[[], str] = ""
    disabled: list[str] = field(default_factory=list)  # slider labels disabled afterwards

    def text(self) -> str:
        return self.message() if callable(self.message) else self.message


@dataclass
class Lab:
    notebook: str
    explorer: str  # CSS class of the explorer's outer box
    # After Run All: the exercise the explorer names first. Then, in order, each exercise the
    # student finishes (the first one attempted wrongly first, its check run each time) and
    # what the explorer shows after its cell has run: the exercise it names next, or PICTURE.
    waits_for: str
    answers: list[tuple[str, str]]
    steps: list[Step]


LABS = [
    Lab(
        "01_attribution.ipynb",
        explorer="labkit-attribution-explorer",
        waits_for="input_x_gradient",  # the first method: "my input x gradient"
        answers=[("saliency", "input_x_gradient"), ("input_x_gradient", PICTURE)],
        steps=[
            Step(select("method", "inseq saliency")),
            # a pun and its literal sentence share the target ' current'
            Step(select("prompt", "literal: current")),
            Step(select("prompt", "pun: current")),
            Step(type_and_enter("target", " water", keystrokes=True)),
            # IG is unfinished, and its baseline too: the baseline is what it names first
            Step(
                select("method", "my integrated gradients"),
                expect="hidden",
                message=lambda: exercise("space_baseline"),
            ),
            # saliency was finished after the explorer was built, inside a wrapper lambda
            Step(select("method", "my saliency")),
            Step(select("method", "inseq input x gradient")),
            Step(type_and_enter("target", "water"), expect="hidden", message="leading space"),
            Step(click_suggestion(" water")),
            Step(type_and_enter("target", " currant"), expect="hidden", message="single token"),
        ],
    ),
    Lab(
        "02_causal_tracing.ipynb",
        explorer="labkit-tracing-explorer",
        waits_for="corrupt_subject",
        answers=[("corrupt_subject", "restoration_grid"), ("restoration_grid", PICTURE)],
        steps=[
            Step(toggle("mlp")),
            Step(slide("window", 4)),
            Step(toggle("attn")),
            Step(toggle("resid"), disabled=["window"]),
            Step(slide("noise (x std)", 1.5)),
            Step(slide("samples", 2)),
            Step(type_and_enter("prompt", "The capital city of France is")),
            Step(type_then_click("subject", " city", "trace")),
            Step(type_and_enter("target", "Paris"), expect="hidden", message="leading space"),
            Step(click_suggestion(" Paris")),
            Step(type_and_enter("subject", " Rome"), expect="hidden", message="not a run"),
        ],
    ),
    Lab(
        "03_attribution_patching.ipynb",
        explorer="labkit-patching-explorer",
        waits_for="normalised_metric",
        answers=[
            ("normalised_metric", "attribution_patching"),
            ("activations_and_grads", "attribution_patching"),  # not awaited: no redraw
            ("attribution_patching", PICTURE),  # the fact's exact grids are saved
            ("head_attribution", PICTURE),
            ("patch_grid", PICTURE),
            ("patch_heads", PICTURE),
        ],
        steps=[
            Step(select("site", "attn_out")),
            Step(select("site", "heads")),
            Step(select("site", "mlp_out")),
            Step(select("task", "ioi")),  # the explorer opens on the fact
            Step(select("pair", "ioi-2")),  # not the saved batch: exact patching runs live
            Step(select("task", "fact")),
        ],
    ),
]


# ----- fixtures --------------------------------------------------------------------------------
def _solution_source(cell_source: str) -> str:
    """A solution cell as a student would have written it: the markers removed."""
    return "\n".join(
        line for line in cell_source.splitlines() if not any(m in line for m in MARKERS)
    )


def _defines(name: str) -> Callable[[str], bool]:
    return lambda source: f"def {name}(" in source


def _sources(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    reason = labbrowser.missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "labs"
    root.mkdir()
    for lab in LABS:
        shutil.copy(ROOT / "labs" / lab.notebook, root)
    with labbrowser.LabServer(root, tmp / "jupyter") as server, labbrowser.chromium() as browser:
        yield server, browser


# ----- reading the explorer ----------------------------------------------------------------------
def _picture(explorer) -> bytes:
    """The explorer's picture as PNG bytes (b"" while none is shown).

    The picture can be hidden between the look and the screenshot (a control's answer is a
    message): then look again, rather than wait for a picture that is not coming.
    """
    from playwright.sync_api import Error as PlaywrightError

    picture = explorer.locator(".labkit-picture")
    for _ in range(5):
        box = picture.bounding_box() if picture.is_visible() else None
        if box is None or box["height"] < 2:
            return b""
        try:
            return picture.screenshot(animations="disabled", timeout=5_000)
        except PlaywrightError:  # hidden or resized meanwhile
            continue
    return b""


def _status(explorer) -> str:
    return explorer.locator(".labkit-status").inner_text()


def _busy(explorer) -> bool:
    status = _status(explorer)
    return "computing" in status or "tracing…" in status


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held (polled), inf if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    return float("inf")


def _settled(explorer) -> str:
    """Wait until the explorer is not busy and shows a picture or a message; its status."""
    took = _wait_for(
        lambda: not _busy(explorer) and (_picture(explorer) != b"" or _status(explorer)),
        CONTROL_BUDGET,
    )
    assert took < CONTROL_BUDGET, f"the explorer is still busy: {_status(explorer)!r}"
    return _status(explorer)


def _expect(explorer, shows: str, when: str) -> None:
    """The explorer names exercise ``shows`` and how to go on, or (PICTURE) draws."""
    if shows == PICTURE:
        took = _wait_for(lambda: not _busy(explorer) and _picture(explorer), CONTROL_BUDGET)
        assert took < CONTROL_BUDGET, f"{when}: no picture; status {_status(explorer)!r}"
        return
    wanted = exercise(shows)
    took = _wait_for(lambda: not _busy(explorer) and wanted in _status(explorer), CONTROL_BUDGET)
    status = _status(explorer)
    assert took < CONTROL_BUDGET, f"{when}: expected {wanted!r} in the status, got {status!r}"
    assert "no need to re-run this cell" in status, status
    assert _picture(explorer) == b"", f"{when}: a picture next to the message"


def _fits(page, explorer, when: str) -> None:
    """Nothing of the explorer sticks out of the notebook's output area (no cut-off, no
    horizontal scrollbar)."""
    out = page.evaluate(
        """box => {
            const area = box.closest('.jp-OutputArea-output') || box.parentElement;
            const right = area.getBoundingClientRect().right + 1;
            const wide = [...box.querySelectorAll('*')]
                .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > right)
                .map(e => `${e.tagName.toLowerCase()}.${[...e.classList].join('.')}`);
            return {wide, scroll: area.scrollWidth - area.clientWidth,
                    width: area.clientWidth};
        }""",
        explorer.element_handle(),
    )
    assert not out["wide"] and out["scroll"] <= 1, f"{when}: cut off in {out['width']} px: {out}"


_POINTS = re.compile(r"\((\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)\)")


def _points(text: str) -> tuple[float, float]:
    found = _POINTS.search(text)
    assert found, f"no points (x/y) in the check's output: {text!r}"
    return float(found.group(1)), float(found.group(2))


# ----- the test ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lab", LABS, ids=lambda lab: Path(lab.notebook).stem)
def test_lab_in_the_browser(lab_server, lab: Lab, tmp_path: Path) -> None:
    server, browser = lab_server
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(120_000)
    notebook = labbrowser.NotebookPage(page, server, lab.notebook)
    try:
        _open_unmodified(notebook, server.root / lab.notebook)
        sources = _sources(server.root / lab.notebook)
        solution = _sources(ROOT / "solutions" / lab.notebook)

        seconds = notebook.run_all(RUN_ALL_TIMEOUT)
        print(f"\n{lab.notebook}: Run All (every exercise unattempted) took {seconds:.0f} s")
        notebook.save()
        saved = json.loads((server.root / lab.notebook).read_text())
        errors = [
            (i, out.get("ename"), out.get("evalue"))
            for i, c in enumerate(saved["cells"])
            for out in c.get("outputs", [])
            if out["output_type"] == "error"
        ]
        assert not errors, f"cells with errors: {errors}"
        shown = page.locator(".jp-Notebook").inner_text()
        assert "Error displaying widget" not in shown
        broken = page.evaluate(
            "() => [...document.querySelectorAll('.jp-OutputArea img')]"
            ".filter(i => i.getClientRects().length && i.complete && !i.naturalWidth).length"
        )
        assert broken == 0, f"{broken} broken image(s) shown in the outputs"

        explorer = page.locator(f".{lab.explorer}")
        assert explorer.count() == 1, f"expected one {lab.explorer} on the page"
        _expect(explorer, lab.waits_for, "after Run All")
        explorer.screenshot(path=tmp_path / "explorer-0-after-run-all.png")

        def answer(name: str, text: str | None = None) -> int:
            cell = notebook.find_cell(_defines(name), sources)
            if text is None:
                text = _solution_source(next(s for s in solution if _defines(name)(s)))
            notebook.replace_cell_text(cell, text)
            notebook.run_cell(cell, RUN_ALL_TIMEOUT)
            return cell

        first, _ = lab.answers[0]
        check = notebook.find_cell(lambda s: f"check_{first}(" in s, sources)
        unattempted = notebook.output_text(check)
        wrong = sources[notebook.find_cell(_defines(first), sources)].replace(
            STUB_MESSAGE, "return None"
        )
        answer(first, wrong)
        notebook.run_cell(check, RUN_ALL_TIMEOUT)
        failed = notebook.output_text(check)
        for name, shows in lab.answers:
            answer(name)
            if name == first:
                notebook.run_cell(check, RUN_ALL_TIMEOUT)
                passed = notebook.output_text(check)
            explorer.scroll_into_view_if_needed()
            _expect(explorer, shows, f"after finishing {name}")
            explorer.screenshot(path=tmp_path / f"explorer-1-after-{name}.png")
        points = [_points(text) for text in (unattempted, failed, passed)]
        print(f"{lab.notebook}: {first} points unattempted, failed, passed: {points}")
        assert "passed" in passed and "failed" not in passed, passed
        assert points[0][0] == points[1][0] == 0 and points[2][0] == points[2][1] > 0, points
        assert points[0][1] == points[1][1] == points[2][1], f"maximum changed: {points}"

        _explore(page, lab, explorer)
        explorer.screenshot(path=tmp_path / "explorer-2-after-the-controls.png")
    except Exception:
        page.screenshot(path=tmp_path / "page.png", full_page=False)
        print(f"screenshot of the page: {tmp_path / 'page.png'}")
        raise
    finally:
        page.close()
        server.shut_down_kernels()


def _open_unmodified(notebook, path: Path) -> None:
    """Open the lab; it must not be marked modified and no dialog may appear.

    JupyterLab writes the kernel's kernelspec and language_info into the notebook once the
    kernel has started, and marks the notebook modified when they differ. The labs carry what
    ipykernel reports, with the Python version of the solution notebooks: on another Python
    that version is the one difference, and the only one tolerated.
    """
    state = notebook.open()
    assert not state["dialogs"], f"a dialog on opening {notebook.name}: {state['dialogs']}"
    stored = json.loads(path.read_text())["metadata"]
    held = state["metadata"]
    version = held.get("language_info", {}).get("version")
    if stored.get("language_info", {}).get("version") != version:
        stored = {**stored, "language_info": {**stored["language_info"], "version": version}}
        print(f"{notebook.name}: the kernel's Python {version} is not the lab's: modified")
    else:
        assert not state["dirty"] and not notebook.tab_modified(), (
            f"{notebook.name} is marked modified on opening: file {stored}, now {held}"
        )
    assert held == stored, f"opening {notebook.name} changed its metadata: {stored} -> {held}"


def _explore(page, lab: Lab, explorer) -> None:
    explorer.scroll_into_view_if_needed()
    _settled(explorer)
    _fits(page, explorer, "first picture")
    rows = []
    for step in lab.steps:
        before, status = _picture(explorer), _status(explorer)
        if step.expect == "changes":

            def done(before=before) -> bool:
                return not _busy(explorer) and _picture(explorer) not in (b"", before)
        else:

            def done(step=step) -> bool:
                return not _busy(explorer) and step.text() in _status(explorer)

        start = time.monotonic()
        step.act(explorer)
        answered = took = float("inf")  # first change of the status line; the end state
        while time.monotonic() - start < CONTROL_BUDGET:
            now = time.monotonic() - start
            if answered == float("inf") and _status(explorer) != status:
                answered = now
            if done():
                took = time.monotonic() - start
                break
            time.sleep(0.1)
        assert took < CONTROL_BUDGET, (
            f"{lab.notebook}: after {step.act.__name__}, no "
            + ("new picture" if step.expect == "changes" else f"message {step.text()!r}")
            + f" within {CONTROL_BUDGET:.0f} s; status: {_status(explorer)!r}"
        )
        if step.expect != "changes":
            assert _picture(explorer) == b"", "an old picture stays next to the message"
        rows.append((step.act.__name__, min(answered, took), took))
        for label in step.disabled:
            slider = explorer.locator(".widget-slider").filter(
                has=page.locator(".widget-label", has_text=label)
            )
            assert slider.locator(".widget-readout").get_attribute("contenteditable") == "false"
            assert slider.locator(".noUi-target").get_attribute("disabled") is not None
            rows.append((f"{label} slider disabled", 0.0, 0.0))
    _fits(page, explorer, "after the last control")
    print(
        f"{lab.notebook} explorer: seconds from the control to its first answer and to the new "
        f"picture or message (budget {CONTROL_BUDGET:.0f} s each)"
    )
    for name, answered, took in rows:
        print(f"  {name:55} {answered:5.1f} s {took:6.1f} s")


# ----- a saved notebook, opened without running it ---------------------------------------------
SAVED = """
import torch
from labkit.tiny import tiny_model
from labkit.widgets.tracing import TracingExplorer

def corrupt(lm, tokens, subject, n_samples, noise_scale, seed):
    embeds = lm.embed(tokens).detach().repeat(n_samples, 1, 1)
    embeds[:, subject] += noise_scale
    return embeds

def grid(lm, tokens, corrupted, target_id, site, window):
    return torch.rand(lm.n_layers, tokens.shape[1], generator=torch.Generator().manual_seed(0))

TracingExplorer(tiny_model("llama"), grid, corrupt, "The cat", "cat", "s")
"""


def test_saved_notebook_shows_the_explorers_picture(lab_server, tmp_path: Path) -> None:
    """Opened without a kernel, a saved explorer shows its first picture, not 'VBox(...)'.

    The same holds without the widget state in the notebook's metadata (then nbconvert, and so
    nbviewer, fall back to the PNG as well).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    server, browser = lab_server
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SAVED)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    assert "widgets" in notebook.metadata  # nbclient stores the widget state
    stateless = nbformat.reads(nbformat.writes(notebook), as_version=4)
    del stateless.metadata["widgets"]
    html, _ = HTMLExporter().from_notebook_node(stateless)
    assert 'src="data:image/png;base64,' in html and "VBox(" not in html

    for name, saved in [("saved_with_state", notebook), ("saved_without_state", stateless)]:
        nbformat.write(saved, server.root / f"{name}.ipynb")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(120_000)
        try:
            page.goto(server.page_url(f"{name}.ipynb"))
            output = page.locator(
                ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output"
            ).first
            output.wait_for()
            picture = output.locator("img")
            picture.wait_for()
            assert page.evaluate(
                "img => img.complete && img.naturalWidth > 0", picture.element_handle()
            ), f"{name}: the picture does not load"
            assert "VBox(" not in output.inner_text()
        except Exception:
            page.screenshot(path=tmp_path / f"{name}.png")
            print(f"screenshot: {tmp_path / name}.png")
            raise
        finally:
            page.close()
