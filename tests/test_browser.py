"""The real browser check: JupyterLab on 127.0.0.1 with a token, 01_quickstart.ipynb opened in
headless Debian Chromium (Playwright), every cell run from the Run menu. The progress panel must
render as a live widget, charts must be displayed and no cell may fail. A screenshot is saved to
reports/browser_01_quickstart.png.

Skipped when /usr/bin/chromium is missing, unless PB_REQUIRE_BROWSER=1 (CI), where it fails.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = ROOT / "reports" / "browser_01_quickstart.png"
RUN_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is None:
        return
    if os.environ.get("PB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_settings(settings_dir: Path) -> None:
    """Lab user settings: render every cell (no virtual scrolling, so every output is in the DOM)
    and no news or update checks (no internet)."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for rel, content in files.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab on a random loopback port, serving a copy of notebooks/ and testdata/."""
    _require_browser()
    root = tmp_path / "lab-root"
    shutil.copytree(
        ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("out", ".*")
    )
    (root / "testdata").mkdir(parents=True)
    shutil.copy(ROOT / "testdata" / "portfolio.csv", root / "testdata" / "portfolio.csv")
    jupyter = tmp_path / "jupyter"
    _write_settings(jupyter / "settings")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel must use the inline backend to show charts
    env.update(
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter-lab"),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # never asks PyPI
            "--ServerApp.terminals_enabled=False",
            "--allow-root",  # CI containers run as root
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"jupyter lab exited: {(tmp_path / 'jupyterlab.log').read_text()}"
                )
            try:
                req = urllib.request.Request(
                    f"{base}/api/status", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("jupyter lab did not answer on /api/status within 60 s")
            time.sleep(0.3)
        yield {"base": base, "token": token, "root": root, "log": tmp_path / "jupyterlab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# Every code cell has run: its prompt shows a number, none is queued ("*") or never run (" ").
_ALL_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""
_FAILED = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')]
  .some(o => o.textContent.includes('Traceback'))"""


def test_quickstart_runs_in_jupyterlab_with_widget_and_charts(jupyterlab: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    url = f"{jupyterlab['base']}/lab/tree/notebooks/01_quickstart.ipynb?token={jupyterlab['token']}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.goto(url)
            page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=60_000)
            # the kernel is chosen when the toolbar shows its name; Run All queues until it is up
            page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text="Python 3").wait_for(
                timeout=60_000
            )
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not page.evaluate(_ALL_RAN):
                if page.evaluate(_FAILED) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(500)
            page.wait_for_timeout(1000)  # let the last outputs paint

            panel = page.locator(".jp-OutputArea-output .widget-vbox", has_text="Batch progress")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            if panel.count():
                # the panel at the top, the jobs table, results and first chart below it
                panel.first.evaluate("e => e.closest('.jp-Cell').scrollIntoView({block: 'start'})")
            page.screenshot(path=str(SCREENSHOT))

            errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
            assert errors.count() == 0, errors.first.inner_text()[-3000:]
            assert page.evaluate(_ALL_RAN), "not every cell ran within the time limit"

            # the progress panel is a live widget: its views are rendered, not a placeholder
            assert panel.count() == 1
            assert panel.first.is_visible()
            assert panel.locator(".widget-hprogress").count() >= 2  # a shard bar + the overall bar
            assert "completed" in panel.first.inner_text()
            assert "overall" in panel.first.inner_text()
            body = page.locator(".jp-NotebookPanel").first.inner_text()
            assert "Loading widget" not in body
            assert "Error displaying widget" not in body and "Error rendering" not in body

            # charts are images that actually decoded
            images = page.locator(".jp-NotebookPanel .jp-RenderedImage img")
            assert images.count() >= 4
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert all(w > 100 for w in widths), widths
            # the rich jobs table rendered as HTML
            assert page.locator(".jp-NotebookPanel table.pb-jobs").count() == 1
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
