"""``portfolio_batch.testing``: the documented example (docs/testing.md) runs as a user's own test
suite would; the context manager's knobs work; the contract test passes against the local server,
fails against a server that breaks the contract, and runs from the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from test_local_support import create_batch, risk_line

from portfolio_batch.local import serve
from portfolio_batch.testing import local_batch_api
from portfolio_batch.testing.contract import main as contract_main
from portfolio_batch.testing.contract import run_contract

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "testing.md"


def _doc_files() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- file:(\S+) -->\n```python\n(.*?)```", text, re.S))


def test_the_documented_example_runs_as_a_users_test_suite(tmp_path: Path) -> None:
    files = _doc_files()
    assert set(files) == {"my_batches.py", "conftest.py", "test_my_batches.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "PORTFOLIO_BATCH_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_the_context_manager_yields_a_keyed_client_and_its_knobs(tmp_path: Path) -> None:
    with local_batch_api(data_dir=tmp_path / "data", max_retries=0) as api:
        assert api.env() == {"OPENAI_BASE_URL": api.base_url, "OPENAI_API_KEY": api.api_key}
        assert api.client.api_key == api.api_key and api.client.max_retries == 0
        batch = api.wait(create_batch(api.client, [risk_line(0)]).id)
        assert batch.status == "completed"
        api.configure(fault_rate_500=1.0, fault_endpoints=["files.list"])
        with pytest.raises(openai.InternalServerError):
            api.client.files.list()
        api.configure(fault_rate_500=0.0)
        api.advance_clock(31 * 86400)
        assert api.server.config.clock_offset == 31 * 86400
        with pytest.raises(openai.NotFoundError):  # batch files are kept 30 days
            api.client.files.retrieve(batch.output_file_id)


def test_the_contract_passes_against_the_local_server() -> None:
    with local_batch_api(request_delay=0.05) as api:
        results = run_contract(api.base_url, api.api_key, poll=0.2)
    assert [r.name for r in results if r.outcome != "pass"] == []
    assert len(results) == 9


def test_the_contract_fails_a_server_that_breaks_it() -> None:
    with local_batch_api() as api:
        # every poll is a 500: the lifecycle check must fail (and only the checks needing it skip)
        api.configure(fault_rate_500=1.0, fault_endpoints=["batches.retrieve"])
        results = {r.name: r for r in run_contract(api.base_url, api.api_key, wait=5, poll=0.2)}
    lifecycle = results["the batch moves through the lifecycle to an end"]
    assert lifecycle.outcome == "fail" and "500" in lifecycle.detail
    assert results["the output and error files hold one valid line per request"].outcome == "skip"
    assert results["files.create answers an OpenAIFile"].outcome == "pass"


def test_the_contract_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve(data_dir=tmp_path / "data") as server:
        os.environ["PB_CONTRACT_TEST_KEY"] = server.api_key
        try:
            code = contract_main(
                [
                    "--base-url",
                    server.base_url,
                    "--api-key-env",
                    "PB_CONTRACT_TEST_KEY",
                    "--poll",
                    "0.2",
                ]
            )
        finally:
            del os.environ["PB_CONTRACT_TEST_KEY"]
    out = capsys.readouterr().out
    assert code == 0, out
    assert "9 passed, 0 failed" in out and "PASS  batches.create answers a validating Batch" in out
    with pytest.raises(SystemExit) as info:
        contract_main(["--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "PB_NOT_SET"])
    assert info.value.code == 2
    assert "$PB_NOT_SET is not set" in capsys.readouterr().err
