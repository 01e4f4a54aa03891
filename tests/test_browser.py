"""The real browser checks: JupyterLab on 127.0.0.1 with a token, in headless Debian Chromium
(Playwright).

- 01_quickstart.ipynb, every cell run from the Run menu: the run card renders as a live widget,
  charts are displayed and no cell fails (reports/browser_01_quickstart.png).
- A run started in one cell keeps its card updating while the next cell runs and after it; the
  kernel is restarted mid-run and ``pb.attach`` shows the same batches completing; then
  ``pb.dashboard`` is filtered and sorted with the mouse and keyboard
  (reports/browser_run_card_before.png, _after.png, browser_dashboard.png).

Skipped when /usr/bin/chromium is missing, unless PB_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
    with _lab(tmp_path) as lab:
        yield lab


@contextlib.contextmanager
def _lab(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """JupyterLab (its kernels get ``extra_env``), serving a copy of notebooks/ and testdata/."""
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
    env.update(extra_env or {})
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
# a cell has started when its prompt shows [*] or an execution count
_ANY_STARTED = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
  .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""
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
            # The toolbar names the kernel before its session is connected; a Run All sent then is
            # dropped (seen on a loaded machine: every prompt still empty, kernel idle). Wait for
            # the idle indicator, and send Run All again if no cell has started after a while.
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=60_000
            )
            for _attempt in range(3):
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                started = time.monotonic() + 20
                while time.monotonic() < started and not page.evaluate(_ANY_STARTED):
                    page.wait_for_timeout(250)
                if page.evaluate(_ANY_STARTED):
                    break
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not page.evaluate(_ALL_RAN):
                if page.evaluate(_FAILED) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(500)
            page.wait_for_timeout(1000)  # let the last outputs paint

            card = page.locator(".jp-OutputArea-output .widget-vbox.pb-run-card")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            if card.count():
                # the card at the top, the results and the first chart below it
                card.first.evaluate("e => e.closest('.jp-Cell').scrollIntoView({block: 'start'})")
            page.screenshot(path=str(SCREENSHOT))

            errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
            assert errors.count() == 0, errors.first.inner_text()[-3000:]
            assert page.evaluate(_ALL_RAN), "not every cell ran within the time limit"

            # the run card is a live widget: its views are rendered, not a placeholder
            assert card.count() == 1
            assert card.first.is_visible()
            assert card.locator(".widget-hprogress").count() >= 2  # a shard bar + the overall bar
            text = card.first.inner_text()
            assert "completed" in text and "40 of 40 reviewed" in text and "Simulated" in text
            body = page.locator(".jp-NotebookPanel").first.inner_text()
            assert "Loading widget" not in body
            assert "Error displaying widget" not in body and "Error rendering" not in body

            # charts are images that actually decoded
            images = page.locator(".jp-NotebookPanel .jp-RenderedImage img")
            assert images.count() >= 3
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert all(w > 100 for w in widths), widths
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


# -- a live run: the next cell, a kernel restart, attach, the dashboard ---------------------------

SHOTS = ROOT / "reports"
LIVE_CELLS = [
    # 0: the run; the cell returns at once
    "import portfolio_batch as pb\n"
    'requests = pb.build_requests(pb.load_portfolio("../testdata/portfolio.csv"))\n'
    "run = pb.start(requests, budget_usd=1.0)",
    # 1: another cell while the run goes on
    'import time\nprint("next cell ran at", time.strftime("%H:%M:%S"))',
    # 2: after a kernel restart: the runs in the registry, and the newest one attached again
    'import portfolio_batch as pb\nlisted = pb.runs()\nrun = pb.attach(listed["run_id"].iloc[0])',
    # 3: the dashboard of its results
    "dash = pb.dashboard(run.wait().results())\ndash",
]


def _live_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(src) for src in LIVE_CELLS]
    nbformat.write(nb, path)


def _run_cell(page: Any, index: int) -> None:
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def _cell_done(page: Any, index: int, timeout_s: float = 60) -> None:
    prompt = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(index).locator(".jp-InputPrompt")
    deadline = time.monotonic() + timeout_s
    while not re.search(r"\[\d+\]", prompt.inner_text()):
        assert time.monotonic() < deadline, f"cell {index} did not finish"
        page.wait_for_timeout(200)


def _kernel_idle(page: Any) -> None:
    page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text="Python 3").wait_for(
        timeout=60_000
    )
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=60_000
    )


def _card_text(card: Any) -> str:
    return str(card.inner_text())


def _batch_ids(text: str) -> list[str]:
    return re.findall(r"batch_[0-9a-f]+", text)


def _column(page: Any, name: str) -> list[str]:
    table = page.locator(".pb-dashboard table.pb-dash").first
    heads = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    i = heads.index(name)
    return [t.strip() for t in table.locator(f"tbody tr td:nth-child({i + 1})").all_inner_texts()]


def test_live_card_keeps_updating_survives_a_restart_and_the_dashboard_filters(
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    from portfolio_batch.local import serve

    _require_browser()
    # a server outside the kernel, as OpenAI is: the batches run on while the kernel restarts
    with serve(engine="rules", data_dir=tmp_path / "server", any_key=True) as server:
        server.configure(request_delay=0.3)  # 40 requests: about 12 s
        extra = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": server.base_url,
            "PORTFOLIO_BATCH_HOME": str(tmp_path / "pb-home"),
        }
        with _lab(tmp_path, extra) as lab, sync_playwright() as pw:
            _live_notebook(lab["root"] / "notebooks" / "live.ipynb")
            url = f"{lab['base']}/lab/tree/notebooks/live.ipynb?token={lab['token']}"
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.goto(url)
                page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=60_000)
                _kernel_idle(page)

                # 1. the run's cell returns at once, the card shows the run going
                _run_cell(page, 0)
                _cell_done(page, 0)
                card = page.locator(".jp-CodeCell").nth(0).locator(".widget-vbox.pb-run-card")
                card.wait_for(timeout=30_000)
                # 2. the next cell runs while the run is still going
                _run_cell(page, 1)
                _cell_done(page, 1)
                next_cell = page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea-output")
                assert "next cell ran at" in next_cell.inner_text()
                page.wait_for_function(
                    "() => /\\b[1-9]\\d* done/.test(document.querySelector("
                    "'.pb-run-card .pb-progress-text')?.textContent || '')",
                    timeout=30_000,
                )
                before = _card_text(card)
                assert "40 done" not in before, before  # still running after both cells
                card.scroll_into_view_if_needed()
                page.screenshot(path=str(SHOTS / "browser_run_card_before.png"))
                # 3. the card goes on updating with no cell running
                done_before = int(re.search(r"(\d+) done", before).group(1))  # type: ignore[union-attr]
                page.wait_for_function(
                    f"() => {{ const m = (document.querySelector('.pb-run-card .pb-progress-text')"
                    f"?.textContent || '').match(/(\\d+) done/); return m && +m[1] > {done_before}; }}",
                    timeout=30_000,
                )
                batches = _batch_ids(_card_text(card))
                assert len(batches) == 1

                # 4. restart the kernel mid-run
                mid = _card_text(card)
                assert "40 done" not in mid, "the run ended before the restart: make it slower"
                page.get_by_role("menuitem", name="Kernel", exact=True).click()
                page.get_by_role("menuitem", name=re.compile(r"^Restart Kernel…")).first.click()
                page.locator(".jp-Dialog .jp-mod-accept").click()
                page.wait_for_timeout(1000)
                _kernel_idle(page)

                # 5. attach: the same batch, and the card completes
                _run_cell(page, 2)
                _cell_done(page, 2)
                attached = page.locator(".jp-CodeCell").nth(2).locator(".widget-vbox.pb-run-card")
                attached.wait_for(timeout=30_000)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.pb-run-card')].some("
                    "e => e.textContent.includes('40 of 40 reviewed'))",
                    timeout=90_000,
                )
                after = _card_text(attached)
                assert "completed" in after and "40 done, 0 failed of 40 requests" in after
                assert _batch_ids(after) == batches
                assert len(list(server.client().batches.list())) == 1  # nothing sent again
                attached.scroll_into_view_if_needed()
                page.screenshot(path=str(SHOTS / "browser_run_card_after.png"))

                # 6. the dashboard: filter by sector, search, sort
                _run_cell(page, 3)
                _cell_done(page, 3, timeout_s=120)
                dash = page.locator(".widget-vbox.pb-dashboard")
                dash.wait_for(timeout=30_000)
                assert len(_column(page, "ticker")) == 25  # a page of the 40
                sector = dash.get_by_label("Sector", exact=True)
                sector.select_option("Energy")
                page.wait_for_function(
                    "() => document.querySelector('.pb-dashboard table.pb-dash caption')"
                    "?.textContent.includes('of 2 selected')",
                    timeout=30_000,
                )
                assert set(_column(page, "sector")) == {"Energy"}
                assert "2</b>" in dash.locator(".pb-dash-summary").inner_html()
                sector.select_option("(all)")
                page.wait_for_function(
                    "() => document.querySelector('.pb-dashboard table.pb-dash caption')"
                    "?.textContent.includes('of 40 selected')",
                    timeout=30_000,
                )
                order = dash.get_by_label("Sort by", exact=True)
                order.select_option("weight (gross)")
                page.wait_for_function(
                    "() => document.querySelector('.pb-dashboard table.pb-dash caption')"
                    "?.textContent.includes('by weight (gross)')",
                    timeout=30_000,
                )
                weights = [float(w.rstrip("%")) for w in _column(page, "weight")]
                assert weights == sorted(weights, reverse=True) and len(weights) == 25
                search = dash.locator(".widget-text input")
                search.fill("bank")
                search.press("Enter")
                page.wait_for_function(
                    "() => document.querySelector('.pb-dashboard table.pb-dash caption')"
                    "?.textContent.includes('of 1 selected')",
                    timeout=30_000,
                )
                assert _column(page, "ticker") == ["BAC"]
                search.fill("")
                search.press("Enter")
                page.wait_for_timeout(1500)
                dash.scroll_into_view_if_needed()
                page.screenshot(path=str(SHOTS / "browser_dashboard.png"))
                body = page.locator(".jp-NotebookPanel").first.inner_text()
                assert "Traceback" not in body and "Error displaying widget" not in body
            finally:
                browser.close()
    for name in ("before", "after"):
        assert (SHOTS / f"browser_run_card_{name}.png").stat().st_size > 10_000
