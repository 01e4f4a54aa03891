"""The ``portfolio-batch`` command, driven in a subprocess as a user runs it, against the local
server: the embedded one (no key), or a ``serve``d one via OPENAI_BASE_URL for resume tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_local_support import default_sigint

ROOT = Path(__file__).resolve().parent.parent
PORTFOLIO = ROOT / "testdata" / "portfolio.csv"
N_POSITIONS = 40


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # the autouse fixture's PORTFOLIO_BATCH_HOME, no credentials
    env.pop("PORTFOLIO_BATCH_DEBUG", None)
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200", NO_COLOR="1", **extra)
    return env


def cli_args(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "portfolio_batch.cli", *map(str, args)]


def run_cli(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_args(*args),
        cwd=cwd,
        env=env or cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def read_results(path: Path) -> pd.DataFrame:
    """results.csv read as the README says: a simulated run's first line is its notice."""
    with path.open(encoding="utf-8-sig") as fh:  # a BOM first: Excel reads it as UTF-8
        simulated = fh.readline().startswith("# Simulated:")
    return pd.read_csv(path, skiprows=1 if simulated else 0)


def registry_jobs() -> pd.DataFrame:
    import portfolio_batch as pb

    return pb.jobs()


@pytest.mark.slow
def test_full_run_writes_every_output_and_jobs_results_matches(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "analyze-risk",
        PORTFOLIO,
        "--batch",
        "--yes",
        "--max-requests",
        "15",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr

    # stderr: the estimate (with the 3 shards), the live status, the written paths
    assert "Cost estimate" in proc.stderr
    assert "Batch saves" in proc.stderr
    assert "3 shards" in proc.stderr
    assert "completed" in proc.stderr
    assert f"{out / 'report.html'}" in proc.stderr
    # stdout: the report (summary, positions by risk, errors)
    assert "Summary" in proc.stdout
    assert "Positions by risk" in proc.stdout
    assert "No errors." in proc.stdout
    assert "Traceback" not in proc.stderr

    (run_file,) = out.glob("requests/*/run.json")  # one directory per run
    shards = sorted(run_file.parent.glob("*.jsonl"))
    assert len(shards) == 3
    lines = [json.loads(line) for path in shards for line in path.read_text().splitlines()]
    assert len(lines) == N_POSITIONS
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}

    csv = read_results(out / "results.csv")
    parquet = pd.read_parquet(out / "results.parquet")
    assert len(csv) == len(parquet) == N_POSITIONS
    assert set(csv["status"]) == {"succeeded"}
    assert set(csv["ticker"]) == set(pd.read_csv(PORTFOLIO)["ticker"])
    assert csv["risk_score"].between(0, 100).all()
    assert not csv["drivers"].iloc[0].startswith("[")  # lists as "a; b", no JSON in the CSV
    assert list(parquet["custom_id"]) == list(csv["custom_id"])

    html = (out / "report.html").read_text()
    assert "NVDA" in html and "<html" in html.lower()
    run = json.loads(run_file.read_text())
    assert "OPENAI_API_KEY" not in run_file.read_text()
    assert run_file.parent.name == run["run_id"] and run["out"] == str(out)

    jobs = registry_jobs()
    assert set(jobs["run_id"]) == {run["run_id"]}
    assert len(jobs) == 3 and set(jobs["status"]) == {"completed"}

    # positions are printed highest risk first
    top = csv.sort_values("risk_score", ascending=False)["ticker"].iloc[0]
    positions = proc.stdout.split("Positions by risk", 1)[1]
    first_row = next(
        line
        for line in positions.splitlines()
        if line.strip() and line.split()[0] in set(csv["ticker"])
    )
    assert first_row.split()[0] == top

    # another process rebuilds the same results from the registry and the shard files
    again = tmp_path / "again"
    listing = run_cli("jobs", "list", cwd=tmp_path)
    assert listing.returncode == 0 and run["run_id"][-6:] in listing.stdout  # its short id
    proc2 = run_cli("jobs", "results", run["run_id"], "--out", again, cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    assert (again / "report.html").is_file()
    pd.testing.assert_frame_equal(read_results(again / "results.csv"), csv)
    assert len(registry_jobs()) == 3  # no new batch


def test_partial_run_exits_3_and_still_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The rules engine's answers are 73-86 tokens long: with --max-tokens 78 the longer ones are
    # cut (finish_reason "length") and become invalid_output, the others succeed.
    proc = run_cli(
        "analyze-risk", PORTFOLIO, "--yes", "--max-tokens", "78", "--out", out, cwd=tmp_path
    )
    assert proc.returncode == 3, proc.stderr
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS
    assert set(csv["status"]) == {"succeeded", "invalid_output"}
    cut = csv[csv["status"] == "invalid_output"]
    assert (cut["finish_reason"] == "length").all()
    assert csv.loc[csv["status"] == "succeeded", "risk_score"].notna().all()
    assert (out / "report.html").is_file() and (out / "results.parquet").is_file()
    assert "Partial results" in proc.stderr
    assert f"{len(cut)} answer(s) were cut" in proc.stderr and "--max-tokens" in proc.stderr
    errors = proc.stdout.split(f"Errors ({len(cut)})", 1)[1]
    assert all(cid in errors for cid in cut["custom_id"])


def test_budget_refusal_sends_nothing(tmp_path: Path) -> None:
    proc = run_cli(
        "analyze-risk",
        PORTFOLIO,
        "--yes",
        "--budget",
        "0.00001",
        "--out",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Cost estimate" in proc.stderr
    assert "budget" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert len(registry_jobs()) == 0
    assert not (tmp_path / "out" / "results.csv").exists()


def test_non_interactive_without_yes_refuses(tmp_path: Path) -> None:
    proc = run_cli("analyze-risk", PORTFOLIO, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    last = error_lines(proc.stderr)[-1]
    assert "--yes" in last and "terminal" in last
    assert len(registry_jobs()) == 0


def test_sync_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("analyze-risk", PORTFOLIO, "--sync", "--yes", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS and set(csv["status"]) == {"succeeded"}
    assert len(registry_jobs()) == 0  # no batch for a synchronous run


@pytest.mark.slow
def test_two_runs_into_one_out_keep_their_own_shards(tmp_path: Path) -> None:
    # Run A, then run B on other positions into the same default --out: A's results stay A's.
    portfolio = pd.read_csv(PORTFOLIO)
    portfolio.iloc[:4].to_csv(tmp_path / "a.csv", index=False)
    portfolio.iloc[4:9].to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "portfolio-batch-out"
    for name in ("a", "b"):
        proc = run_cli("analyze-risk", f"{name}.csv", "--yes", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    b_results = (out / "results.csv").read_bytes()
    assert set(read_results(out / "results.csv")["ticker"]) == set(portfolio["ticker"].iloc[4:9])

    jobs = registry_jobs()
    assert jobs["run_id"].nunique() == 2
    run_a = jobs.sort_values("created_at")["run_id"].iloc[0]
    again = tmp_path / "again"
    proc = run_cli("jobs", "results", run_a, "--out", again, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    csv = read_results(again / "results.csv")
    assert set(csv["ticker"]) == set(portfolio["ticker"].iloc[:4])
    assert set(csv["status"]) == {"succeeded"}
    assert (out / "results.csv").read_bytes() == b_results

    # A shard rewritten anyway is refused, naming the file, rather than matched to wrong rows.
    (shard,) = jobs.loc[jobs["run_id"] == run_a, "path"]
    Path(shard).write_text(Path(shard).read_text().replace("gpt-4o-mini", "gpt-4o"))
    proc = run_cli("jobs", "results", run_a, "--out", again, cwd=tmp_path)
    assert proc.returncode == 2
    assert shard in proc.stderr.replace("\n", "") and "overwritten" in proc.stderr


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("missing.csv", "ticker,name\nAAPL,Apple\n", "weight"),
        ("dupes.csv", "ticker,weight\nAAPL,0.5\nMSFT,0.3\nAAPL,0.2\n", "AAPL"),
        ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe", "binary.csv"),
        ("empty.csv", "", "empty.csv"),
    ],
    ids=["missing-column", "duplicate-ticker", "not-a-csv", "empty-file"],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, name: str, content: str | bytes, expect: str
) -> None:
    path = _write(tmp_path / name, content)
    proc = run_cli("analyze-risk", path, "--yes", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error:") and expect in lines[0]
    assert proc.stdout == ""


def test_debug_env_shows_the_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path / "missing.csv", "ticker,name\nAAPL,Apple\n")
    proc = run_cli("estimate", path, cwd=tmp_path, env=cli_env(PORTFOLIO_BATCH_DEBUG="1"))
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert error_lines(proc.stderr)[-1].startswith("Error:")


def test_missing_portfolio_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("analyze-risk", tmp_path / "nope.csv", "--yes", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_estimate_compares_models(tmp_path: Path) -> None:
    proc = run_cli(
        "estimate",
        PORTFOLIO,
        "--model",
        "gpt-4o-mini,gpt-4.1-mini",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    from io import StringIO

    frame = pd.read_csv(StringIO(proc.stdout))
    assert len(frame) == 2
    assert set(frame.iloc[:, 0]) == {"gpt-4o-mini", "gpt-4.1-mini"} or set(frame["model"]) == {
        "gpt-4o-mini",
        "gpt-4.1-mini",
    }
    table = run_cli("estimate", PORTFOLIO, "-m", "gpt-4o-mini,gpt-4.1", cwd=tmp_path)
    assert table.returncode == 0 and "gpt-4.1" in table.stdout


def test_unknown_run_id(tmp_path: Path) -> None:
    proc = run_cli("jobs", "show", "run_nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "run_nope" in proc.stderr and "jobs list" in proc.stderr


# -- interrupted runs, against a server that outlives the CLI process -----------------------------


@pytest.fixture
def slow_server(tmp_path: Path) -> Any:
    from portfolio_batch.local import serve

    # Slow enough (about 4 s for 40 requests) to interrupt the CLI while it polls.
    with serve(engine="rules", data_dir=tmp_path / "server-data", request_delay=0.1) as server:
        yield server


def _wait_for_batch(proc: subprocess.Popen[str], timeout: float = 60) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        jobs = registry_jobs()
        if len(jobs) and jobs["batch_id"].notna().all():
            return jobs
        time.sleep(0.1)
    raise AssertionError("the CLI did not submit a batch in time")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_resume_after_interrupt_creates_no_second_batch(
    tmp_path: Path, slow_server: Any, how: str
) -> None:
    env = cli_env(OPENAI_BASE_URL=str(slow_server.base_url), OPENAI_API_KEY=slow_server.api_key)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cli_args("analyze-risk", PORTFOLIO, "--yes", "--engine", "smollm2", "--out", out),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # Ctrl-C must reach it even when pytest runs under nohup or &
    )
    jobs = _wait_for_batch(proc)
    run_id = jobs["run_id"].iloc[0]
    time.sleep(0.5)  # well inside polling
    proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    if how == "ctrl-c":
        assert proc.returncode == 130, stderr
        assert f"portfolio-batch jobs resume {run_id} --out {out}" in stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert "--engine smollm2 is ignored" in stderr
    assert not (out / "results.csv").exists()

    client = slow_server.client()
    assert len(list(client.batches.list())) == 1

    resumed = run_cli("jobs", "resume", run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(client.batches.list())) == 1
    assert set(registry_jobs()["batch_id"]) == set(jobs["batch_id"])
    csv = read_results(out / "results.csv")  # the run's own --out by default
    assert len(csv) == N_POSITIONS and set(csv["status"]) == {"succeeded"}
    assert "Positions by risk" in resumed.stdout


@pytest.mark.slow
def test_jobs_results_cancel_on_a_running_run(tmp_path: Path) -> None:
    from portfolio_batch.local import serve

    # 40 requests at 0.5 s: the run is still going when the CLI cancels it.
    with serve(engine="rules", data_dir=tmp_path / "server-data", request_delay=0.5) as server:
        _results_and_cancel(tmp_path, server)


def _results_and_cancel(tmp_path: Path, slow_server: Any) -> None:
    import portfolio_batch as pb

    # A run submitted from Python (no run.json): the CLI rebuilds its requests from the shards.
    client = slow_server.client()
    requests = pb.build_requests(pb.load_portfolio(PORTFOLIO))
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "shards"), client=client)
    run_id = jobs["run_id"].iloc[0]
    env = cli_env(OPENAI_BASE_URL=str(slow_server.base_url), OPENAI_API_KEY=slow_server.api_key)

    early = run_cli("jobs", "results", run_id, cwd=tmp_path, env=env)
    assert early.returncode == 2
    assert (
        "not finished" in early.stderr and f"portfolio-batch jobs resume {run_id}" in early.stderr
    )

    cancelled = run_cli("jobs", "cancel", run_id, cwd=tmp_path, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "Cancel requested for 1 batch" in cancelled.stderr
    assert "cancelling" in cancelled.stdout or "cancelled" in cancelled.stdout
    pb.poll(pb.resume(run_id, client=client), client=client, progress=False)

    out = tmp_path / "collected"
    proc = run_cli("jobs", "results", run_id, "--out", out, cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr  # the requests that never ran are "cancelled"
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS
    assert "cancelled" in set(csv["status"])
    assert list(csv["custom_id"]) == list(requests.index)
    assert len(list(client.batches.list())) == 1


def test_serve_command_answers_the_openai_sdk(tmp_path: Path) -> None:
    import socket

    import openai

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        cli_args("serve", "--port", str(port), "--data-dir", tmp_path / "data"),
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="test-key", max_retries=0
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                assert list(client.batches.list()) == []
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert (tmp_path / "data").is_dir()
