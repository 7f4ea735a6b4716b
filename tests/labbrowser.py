"""JupyterLab in headless Chromium, for the browser tests: a server, a browser, a notebook page.

The server listens on loopback with a random token in a temporary root folder; the browser is
Debian's chromium driven by Playwright (never a browser that Playwright downloads). Both are
context managers that stop what they started, kernels included.

Every wait is for a state, never for a time: the server exposes JupyterLab's application object
to the page (``expose_app_in_browser``), and :class:`NotebookPage` reads the notebook's model
through it (kernel status, cell execution counts and states, the dirty flag, the metadata). A
busy machine then makes a test slower, not flaky.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ENABLE = (
    "browser tests need Debian's chromium and Playwright: apt-get install -y chromium, "
    "then make setup (or: pip install -c constraints.txt playwright)"
)
# The flags that keep Chromium off the network here (it would try Google's services).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# JupyterLab user settings: no news or update checks (no network), every cell in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """Why the browser tests cannot run here (one line), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ENABLE
    if chromium_path() is None:
        return ENABLE
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server on 127.0.0.1 with a token, serving ``root``."""

    def __init__(self, root: Path, settings_dir: Path, env: dict[str, str] | None = None):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        for name, values in LAB_SETTINGS.items():
            path = settings_dir / "user-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.env = {
            **os.environ,
            **(env or {}),
            "JUPYTERLAB_SETTINGS_DIR": str(settings_dir / "user-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(settings_dir / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(settings_dir / "runtime"),
        }
        self.log = settings_dir / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        self.pages = 0

    def __enter__(self) -> LabServer:
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: waits read the model
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log.read_text()[-2000:]}")
            try:
                self.api("status")
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"JupyterLab did not answer in 120 s: {self.log.read_text()[-2000:]}")

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(
            f"{self.url}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def page_url(self, notebook: str) -> str:
        """The notebook alone in a new, empty workspace.

        JupyterLab restores the last workspace on every page load: without this, notebooks
        opened by earlier tests reopen as hidden tabs, and a selector can match their cells.
        """
        self.pages += 1
        workspace = f"test-{self.pages}"
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def shut_down_kernels(self) -> None:
        """Stop every kernel, so that one test's kernel does not slow the next."""
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def __exit__(self, *exc) -> None:
        import psutil

        if self.process is None:
            return
        try:  # kernels first, through the server, so that none is left behind
            self.shut_down_kernels()
        except OSError:
            pass
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        for child in children:  # a kernel that outlived its server
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.process = None


@contextmanager
def chromium() -> Iterator:
    """A headless Debian chromium under Playwright; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


# ----- a notebook page -------------------------------------------------------------------------
# JavaScript run in the page: the notebook panel of a path, through JupyterLab's application.
_PANEL = """(path) => {
    const app = window.jupyterapp;
    if (!app) return null;
    for (const w of app.shell.widgets('main')) {
        if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
    }
    return null;
}"""
_STATE = f"""async (path) => {{
    const panel = ({_PANEL})(path);
    if (!panel || !panel.context.isReady) return null;
    const session = panel.sessionContext;
    const kernel = session.session ? session.session.kernel : null;
    const cells = panel.content.widgets.map(c => ({{
        type: c.model.type,
        count: c.model.type === 'code' ? c.model.executionCount : null,
        state: c.model.type === 'code' ? c.model.executionState : null,
        source: c.model.sharedModel.getSource(),
    }}));
    let spec = null;
    if (kernel) {{ try {{ spec = await kernel.spec; }} catch (e) {{ spec = null; }} }}
    return {{
        dirty: panel.context.model.dirty,
        kernel: kernel ? kernel.status : null,
        kernelDisplayName: spec ? spec.display_name : null,
        metadata: panel.context.model.toJSON().metadata,
        cells: cells,
        dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText),
    }};
}}"""


class NotebookPage:
    """One notebook open in JupyterLab: run cells, type into them, read their outputs.

    Waits are for states of the notebook's model (see :meth:`state`), never for a time.
    """

    def __init__(self, page, server: LabServer, name: str) -> None:
        self.page, self.server, self.name = page, server, name

    # ----- state ---------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """The notebook as JupyterLab holds it: ``dirty``, ``kernel`` (status), the kernel's
        ``kernelDisplayName``, ``metadata``, ``cells`` (type, count, state, source) and the
        texts of open ``dialogs``; None until the notebook has loaded."""
        return self.page.evaluate(_STATE, self.name)

    def wait_until(self, condition: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Poll :meth:`state` until ``condition`` holds; the state it held in."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and condition(state):
                return state
            time.sleep(0.2)
        brief = {k: v for k, v in (state or {}).items() if k not in ("cells", "metadata")}
        raise TimeoutError(f"{self.name}: not {what} after {timeout:.0f} s; state: {brief}")

    def open(self, timeout: float = 180) -> dict:
        """Open the notebook; wait until its kernel is idle and JupyterLab has written the
        kernel's kernelspec and language_info into the model (what marks a notebook modified
        when they differ from the file's). Returns the state at that moment."""
        self.page.goto(self.server.page_url(self.name))
        self.cells().first.wait_for(timeout=timeout * 1000)

        def settled(state: dict) -> bool:
            info = state["metadata"].get("language_info", {})
            spec = state["metadata"].get("kernelspec", {})
            return (
                state["kernel"] == "idle"
                and "version" in info  # the kernel's info reply has been applied
                and state["kernelDisplayName"] is not None
                and spec.get("display_name") == state["kernelDisplayName"]
            )

        return self.wait_until(settled, timeout, "open with an idle kernel")

    def cells(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index: int):
        return self.cells().nth(index)

    def tab_modified(self) -> bool:
        """Whether the notebook's tab shows the "modified" dot."""
        return self.page.evaluate(
            """(name) => [...document.querySelectorAll('.lm-TabBar-tab.jp-mod-dirty')]
                .some(tab => tab.innerText.includes(name))""",
            self.name,
        )

    def menu(self, top: str, item: str) -> None:
        self.page.locator("#jp-MainMenu").get_by_role("menuitem", name=top, exact=True).click()
        self.page.get_by_role("menuitem", name=item, exact=True).first.click()

    # ----- running -------------------------------------------------------------------------------
    def _counts(self) -> list:
        return [c["count"] for c in self.state()["cells"]]

    def _wait_for_run(self, before: list, started: Callable[[list], bool], timeout: float):
        """Wait until the run has started (``started`` on the new execution counts) and ended
        (no code cell running, the kernel idle)."""

        def done(state: dict) -> bool:
            counts = [c["count"] for c in state["cells"]]
            running = any(c["state"] == "running" for c in state["cells"])
            return started(counts) and not running and state["kernel"] == "idle"

        self.wait_until(done, timeout, "done running")

    def run_all(self, timeout: float) -> float:
        """Run > Run All Cells; wait until every cell has run. Returns the seconds it took."""
        start = time.monotonic()
        before = self._counts()
        self.menu("Run", "Run All Cells")
        # started: some code cell has a new execution count (all are queued at once)
        self._wait_for_run(
            before,
            lambda counts: any(
                new is not None and new != old for new, old in zip(counts, before, strict=True)
            ),
            timeout,
        )
        return time.monotonic() - start

    def run_cell(self, index: int, timeout: float) -> None:
        """Run cell ``index`` (Ctrl+Enter) and wait until it has run."""
        before = self._counts()
        self.cell(index).locator(".jp-InputArea-prompt").click()
        self.page.keyboard.press("Control+Enter")
        self._wait_for_run(
            before,
            lambda counts: counts[index] is not None and counts[index] != before[index],
            timeout,
        )

    def find_cell(self, predicate: Callable[[str], bool], source: list[str]) -> int:
        """The index of the first cell whose source (from the .ipynb) satisfies ``predicate``."""
        return next(i for i, text in enumerate(source) if predicate(text))

    def replace_cell_text(self, index: int, text: str) -> None:
        """Click into cell ``index``, select its text and type ``text`` in its place."""
        editor = self.cell(index).locator(".cm-editor")
        editor.locator(".cm-content").click()
        # Ctrl+A in command mode would select every cell: first wait for the editor's focus
        self.page.wait_for_function(
            "e => e.classList.contains('cm-focused')", arg=editor.element_handle()
        )
        self.page.keyboard.press("Control+A")
        self.page.keyboard.press("Delete")
        # insert_text types the text as one input event: the editor's auto-indent and bracket
        # completion (which fire per key) leave it as it is.
        self.page.keyboard.insert_text(text)
        self.wait_until(
            lambda state: state["cells"][index]["source"] == text, 30, f"cell {index} typed"
        )

    def output_text(self, index: int) -> str:
        return self.cell(index).locator(".jp-OutputArea").inner_text()

    def save(self) -> None:
        """Save (Ctrl+S) and wait until JupyterLab has written the file."""
        self.page.keyboard.press("Control+s")
        self.wait_until(lambda state: not state["dirty"], 60, "saved")
