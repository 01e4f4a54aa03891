"""The run card in a real kernel, on ipykernel 7 (the venv's) and 6.x: the cell that starts a run
returns at once, and while the kernel sits idle (the user reading, or running other cells) the
card's widgets keep receiving values from the background watcher until the run completes. Nothing
else comes out of that thread: no stream, no display, no error. Only a later cell (the kernel's
main thread) refreshes the card's saved HTML.

ipykernel 7 changed how output from threads is routed (ipywidgets #4001/#4020, ipykernel #1450):
this is checked on both majors. 6.x is installed once with pip into the venv
(``<venv>/pb-test-kernels/ipykernel6``, no dependencies: the venv's own are used) and put first
on the kernel's PYTHONPATH. PB_SKIP_IPYKERNEL6=1 skips that case (e.g. offline, no pip cache).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IPYKERNEL6 = Path(sys.prefix) / "pb-test-kernels" / "ipykernel6"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def _ipykernel6() -> Path:
    if (IPYKERNEL6 / "ipykernel").is_dir():
        return IPYKERNEL6
    if os.environ.get("PB_SKIP_IPYKERNEL6") == "1":
        pytest.skip("PB_SKIP_IPYKERNEL6=1")
    tmp = IPYKERNEL6.with_name(f"ipykernel6.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(tmp),
            "ipykernel>=6.29,<7",
            "nest_asyncio>=1.5",  # ipykernel 6 needs it; 7 does not
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(
            "Installing ipykernel 6 for this test failed (it needs PyPI or a pip cache once; "
            f"PB_SKIP_IPYKERNEL6=1 skips it):\n{proc.stderr[-2000:]}"
        )
    tmp.rename(IPYKERNEL6)
    return IPYKERNEL6


class Kernel:
    """A kernel spoken to over ZMQ, every iopub message kept (nbclient keeps only the messages of
    the cell it runs, and the watcher's come while no cell runs)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(cwd))

    def run(
        self,
        code: str,
        *,
        listen: float = 0.0,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 120,
    ) -> list[dict[str, Any]]:
        """Execute ``code``; the messages until it is idle, then ``listen`` seconds more (or
        until a message matches ``until``, and one second after it)."""
        msg_id = self.kc.execute(code)
        out: list[dict[str, Any]] = []
        deadline, idle_at, stop_at = time.monotonic() + timeout, None, None
        while True:
            now = time.monotonic()
            if idle_at is not None and now >= min(idle_at + listen, stop_at or now + 1):
                return out
            if now > deadline:
                raise AssertionError(f"kernel did not finish {code!r} in {timeout} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            msg["_t"] = time.monotonic()
            msg["_idle"] = idle_at is not None
            out.append(msg)
            if idle_at is not None and stop_at is None and until is not None and until(msg):
                stop_at = time.monotonic() + 1.0  # and a second more: nothing else may come
            done = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            if done and msg["parent_header"].get("msg_id") == msg_id:
                idle_at = time.monotonic()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _reviewed_all(msg: dict[str, Any]) -> bool:
    state = msg["content"].get("data", {}).get("state", {}) if msg["msg_type"] == "comm_msg" else {}
    return "40 of 40 reviewed" in str(state.get("value", ""))


def _texts(msgs: list[dict[str, Any]]) -> list[str]:
    return [m["content"]["text"] for m in msgs if m["msg_type"] == "stream"]


def _errors(msgs: list[dict[str, Any]]) -> list[str]:
    return ["\n".join(m["content"]["traceback"])[-2000:] for m in msgs if m["msg_type"] == "error"]


@pytest.mark.parametrize("major", ["7", "6"])
def test_card_keeps_updating_from_the_background_while_the_kernel_is_idle(
    major: str, local_server: Any, tmp_path: Path
) -> None:
    extra = str(_ipykernel6()) if major == "6" else ""
    local_server.configure(request_delay=0.08)  # about 4 s for the 40 requests
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
    env.update(
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=local_server.base_url,
        PORTFOLIO_BATCH_HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join(p for p in (extra, str(ROOT)) if p),
        MPLBACKEND="Agg",
    )
    kernel = Kernel(env, tmp_path)
    try:
        first = kernel.run(
            "import ipykernel, portfolio_batch as pb\n"
            "print('ipykernel', ipykernel.__version__)\n"
            f"requests = pb.build_requests(pb.load_portfolio({str(ROOT / 'testdata' / 'portfolio.csv')!r}))\n"
            "run = pb.start(requests, budget_usd=1.0)\n"
        )
        assert not _errors(first), _errors(first)
        assert _texts(first)[0].startswith(f"ipykernel {major}.")
        shown = [m for m in first if m["msg_type"] == "display_data"]
        assert len(shown) == 1, "start() shows one card"
        data = shown[0]["content"]["data"]
        assert WIDGET_MIME in data and "pb-run-card" in data["text/html"]
        # the cell returned before the run ended
        assert "[completed]" not in data["text/plain"]

        # another cell runs at once; then the kernel sits idle while the run goes on
        later = kernel.run("x = 1 + 1", listen=30, until=_reviewed_all)
        idle = [m for m in later if m["_idle"]]
        updates = [
            m["content"]["data"]["state"]
            for m in idle
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"
        ]
        values = [s["value"] for s in updates if isinstance(s.get("value"), str)]
        assert any("40 of 40 reviewed" in v for v in values), "the results table filled in"
        assert any("40 done, 0 failed of 40 requests" in v for v in values)
        assert 40 in [s.get("value") for s in updates], "the overall bar reached 40 requests"
        # the watcher sent widget values and nothing else
        others = {m["msg_type"] for m in idle} - {"comm_msg", "comm_open", "status"}
        assert others == set(), [m for m in idle if m["msg_type"] in others][:3]

        # the next cell (main thread) refreshes the card's saved HTML: a saved notebook or an
        # nbconvert export shows the end, not the start
        third = kernel.run("print(run.status, len(run.results()))")
        assert not _errors(third), _errors(third)
        assert _texts(third) == ["completed 40\n"]
        refreshed = [m for m in third if m["msg_type"] == "update_display_data"]
        assert refreshed, "the saved card was not refreshed"
        final = refreshed[-1]["content"]["data"]
        assert "[completed]" in final["text/plain"] and "40 of 40 reviewed" in final["text/html"]
        assert refreshed[-1]["content"]["transient"]["display_id"]
    finally:
        kernel.close()
