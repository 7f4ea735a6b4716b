"""JupyterLab in headless Chromium, for the browser tests: a server, a browser, a notebook page.

The server listens on loopback with a random token in a temporary root folder; the browser is
Debian's chromium driven by Playwright (never a browser that Playwright downloads). Both are
context managers that stop what they started, kernels included.
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
class NotebookPage:
    """One notebook open in JupyterLab: run cells, type into them, read their outputs."""

    def __init__(self, page, server: LabServer, name: str) -> None:
        self.page, self.server, self.name = page, server, name

    def open(self, timeout: float = 180) -> None:
        self.page.goto(self.server.page_url(self.name))
        self.cells().first.wait_for(timeout=timeout * 1000)
        self.wait_for_kernel_idle(timeout)

    def cells(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index: int):
        return self.cells().nth(index)

    def kernel_status(self) -> str:
        status = self.page.locator(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator"
        ).first
        return status.get_attribute("data-status") or ""

    def wait_for_kernel_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kernel_status() == "idle":
                return
            time.sleep(0.5)
        raise TimeoutError(f"the kernel of {self.name} is not idle after {timeout:.0f} s")

    def menu(self, top: str, item: str) -> None:
        self.page.locator("#jp-MainMenu").get_by_role("menuitem", name=top, exact=True).click()
        self.page.get_by_role("menuitem", name=item, exact=True).first.click()

    def run_all(self, timeout: float) -> float:
        """Run > Run All Cells; wait until every cell has run. Returns the seconds it took."""
        start = time.monotonic()
        self.menu("Run", "Run All Cells")
        time.sleep(1.0)
        self.wait_until_done(timeout)
        return time.monotonic() - start

    def busy_prompts(self) -> int:
        return self.page.evaluate(
            """() => [...document.querySelectorAll(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt')]
                .filter(e => e.textContent.includes('*')).length"""
        )

    def wait_until_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.busy_prompts() == 0 and self.kernel_status() == "idle":
                return
            time.sleep(1.0)
        raise TimeoutError(f"{self.name}: cells still running after {timeout:.0f} s")

    def find_cell(self, predicate: Callable[[str], bool], source: list[str]) -> int:
        """The index of the first cell whose source (from the .ipynb) satisfies ``predicate``."""
        return next(i for i, text in enumerate(source) if predicate(text))

    def replace_cell_text(self, index: int, text: str) -> None:
        """Click into cell ``index``, select its text and type ``text`` in its place."""
        editor = self.cell(index).locator(".cm-content")
        editor.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.press("Delete")
        # insert_text types the text as one input event: the editor's auto-indent and bracket
        # completion (which fire per key) leave it as it is.
        self.page.keyboard.insert_text(text)

    def run_cell(self, index: int, timeout: float) -> None:
        self.cell(index).locator(".jp-InputArea-prompt").click()
        self.page.keyboard.press("Control+Enter")
        time.sleep(0.5)
        self.wait_until_done(timeout)

    def output_text(self, index: int) -> str:
        return self.cell(index).locator(".jp-OutputArea").inner_text()

    def save(self) -> None:
        self.page.keyboard.press("Control+s")
        time.sleep(1.0)
