"""``python -m portfolio_batch.local``: starts, prints its base URL to stderr, serves the SDK,
keeps its data dir across restarts and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
from test_local_support import create_batch, default_sigint, read_lines, risk_line, wait


def _start(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portfolio_batch.local",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=default_sigint,  # stopped by SIGINT below, even when pytest runs under nohup
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
    assert match, f"no base URL in {line!r}"
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=20)


def test_module_cli_serves_and_stops(tmp_path: Path) -> None:
    proc, base_url = _start(
        tmp_path / "data", "--request-delay", "0", env={"PORTFOLIO_BATCH_SERVER_KEY": "sk-cli-key"}
    )
    try:
        client: Any = openai.OpenAI(base_url=base_url, api_key="sk-cli-key")
        batch, _ = wait(client, create_batch(client, [risk_line(0), risk_line(1)]).id)
        assert batch["status"] == "completed"
        assert len(read_lines(client, batch["output_file_id"])) == 2
        try:
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).files.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        assert _stop(proc) == 0
    proc, base_url = _start(tmp_path / "data")
    try:
        again: Any = openai.OpenAI(base_url=base_url, api_key="any")
        assert again.batches.retrieve(batch["id"]).status == "completed"
    finally:
        assert _stop(proc) == 0


def test_module_cli_rejects_bad_flags(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portfolio_batch.local", "--engine", "gpt9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--engine" in result.stderr and "rules" in result.stderr
