"""The student labs in a real browser: JupyterLab in headless Chromium, driven like a student.

For each lab: open a copy in JupyterLab, type the answer to one exercise into its cell, Run All,
and check that no cell shows an error and that the check says "passed". Then work every
control of the lab's explorer and check that the picture changes (PNG bytes of a screenshot),
printing how long each took; a control that must not change the picture must be disabled.

Adding a lab's explorer is one entry in ``LABS``. The tests need Debian's chromium and
Playwright; without them they are skipped with one line that says how to enable them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import labbrowser
import pytest

from labkit.build import MARKERS

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL_TIMEOUT = 900  # seconds; a 2-core laptop runs each lab in 1-4 minutes
CONTROL_BUDGET = 180.0  # seconds for one control to redraw; printed next to each measurement

pytestmark = [pytest.mark.browser, pytest.mark.notebook]


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
            time.sleep(1.5)
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
    message: str = ""
    disabled: list[str] = field(default_factory=list)  # slider labels disabled afterwards


@dataclass
class Lab:
    notebook: str
    typed: str  # the exercise whose answer is typed into its cell before Run All
    explorer: str  # CSS class of the explorer's outer box
    explorer_cell: str  # text of the cell that shows the explorer
    steps: list[Step]
    # exercises the explorer needs: typed into their cells after Run All, before the explorer
    # cell is run again (as a student who comes back to play with the explorer)
    needs: list[str] = field(default_factory=list)


LABS = [
    Lab(
        "01_attribution.ipynb",
        typed="saliency",
        explorer="labkit-attribution-explorer",
        explorer_cell="explorer = AttributionExplorer(",
        steps=[
            Step(select("method", "inseq saliency")),
            # a pun and its literal sentence share the target ' current'
            Step(select("prompt", "literal: current")),
            Step(select("prompt", "pun: current")),
            Step(type_and_enter("target", " water", keystrokes=True)),
            Step(select("method", "inseq input x gradient")),
            Step(type_and_enter("target", " currant"), expect="hidden", message="single token"),
        ],
    ),
    Lab(
        "02_causal_tracing.ipynb",
        typed="corrupt_subject",
        needs=["restoration_grid"],
        explorer="labkit-tracing-explorer",
        explorer_cell="TracingExplorer(lm,",
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
            Step(type_and_enter("target", " Paris")),
            Step(type_and_enter("subject", " Rome"), expect="hidden", message="not a run"),
        ],
    ),
    Lab(
        "03_attribution_patching.ipynb",
        typed="normalised_metric",
        needs=[
            "activations_and_grads",
            "attribution_patching",
            "head_attribution",
            "patch_grid",
            "patch_heads",
        ],
        explorer="labkit-patching-explorer",
        explorer_cell="PatchingExplorer(lm, {",
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


# ----- the test --------------------------------------------------------------------------------
def _picture(explorer) -> bytes:
    """The explorer's picture as PNG bytes (b"" while none is shown)."""
    picture = explorer.locator(".labkit-picture")
    if not picture.is_visible() or picture.bounding_box()["height"] < 2:
        return b""
    return picture.screenshot(animations="disabled")


def _status(explorer) -> str:
    return explorer.locator(".labkit-status").inner_text()


def _busy(explorer) -> bool:
    status = _status(explorer)
    return "computing" in status or "tracing…" in status


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    return float("inf")


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: Path(lab.notebook).stem)
def test_lab_in_the_browser(lab_server, lab: Lab, tmp_path: Path) -> None:
    server, browser = lab_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    notebook = labbrowser.NotebookPage(page, server, lab.notebook)
    try:
        notebook.open()
        sources = _sources(server.root / lab.notebook)
        solution = _sources(ROOT / "solutions" / lab.notebook)

        def answer(name: str) -> int:
            cell = notebook.find_cell(_defines(name), sources)
            solved = next(s for s in solution if _defines(name)(s))
            notebook.replace_cell_text(cell, _solution_source(solved))
            return cell

        # a student answers one exercise in its cell, then runs everything
        cell = answer(lab.typed)
        seconds = notebook.run_all(RUN_ALL_TIMEOUT)
        print(f"\n{lab.notebook}: Run All took {seconds:.0f} s")

        check = notebook.output_text(cell + 1)
        assert "passed" in check and "failed" not in check, check

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

        for name in lab.needs:
            notebook.run_cell(answer(name), RUN_ALL_TIMEOUT)
        if lab.needs:
            notebook.run_cell(
                notebook.find_cell(lambda s: lab.explorer_cell in s, sources), RUN_ALL_TIMEOUT
            )
        _explore(page, lab)
    except Exception:
        page.screenshot(path=tmp_path / "page.png", full_page=False)
        print(f"screenshot of the page: {tmp_path / 'page.png'}")
        raise
    finally:
        page.close()
        server.shut_down_kernels()


def _explore(page, lab: Lab) -> None:
    explorer = page.locator(f".{lab.explorer}")
    assert explorer.count() == 1, f"expected one {lab.explorer} on the page"
    explorer.scroll_into_view_if_needed()
    _wait_for(lambda: not _busy(explorer), CONTROL_BUDGET)
    rows = []
    for step in lab.steps:
        before = _picture(explorer)
        step.act(explorer)
        if step.expect == "changes":
            took = _wait_for(
                lambda before=before: (
                    not _busy(explorer) and _picture(explorer) not in (b"", before)
                ),
                CONTROL_BUDGET,
            )
            rows.append((step.act.__name__, took))
            assert took < CONTROL_BUDGET, (
                f"{lab.notebook}: after {step.act.__name__} the picture did not change within "
                f"{CONTROL_BUDGET:.0f} s; status: {_status(explorer)!r}"
            )
        else:
            took = _wait_for(
                lambda step=step: not _busy(explorer) and step.message in _status(explorer),
                CONTROL_BUDGET,
            )
            rows.append((step.act.__name__, took))
            assert took < CONTROL_BUDGET, f"no message {step.message!r}: {_status(explorer)!r}"
            assert _picture(explorer) == b"", "an old picture stays next to the message"
        for label in step.disabled:
            slider = explorer.locator(".widget-slider").filter(
                has=page.locator(".widget-label", has_text=label)
            )
            assert slider.locator(".widget-readout").get_attribute("contenteditable") == "false"
            assert slider.locator(".noUi-target").get_attribute("disabled") is not None
            rows.append((f"{label} slider disabled", 0.0))
    print(
        f"{lab.notebook} explorer: seconds from the control to the new picture "
        f"(budget {CONTROL_BUDGET:.0f} s each)"
    )
    for name, took in rows:
        print(f"  {name:55} {took:6.1f} s")


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
