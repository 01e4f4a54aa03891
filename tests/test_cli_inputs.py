"""Paths a user gets wrong: an --out, PORTFOLIO_BATCH_HOME or out_dir that is a file or cannot be
written, and portfolio files the CLI must explain in one line (exit 2), never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from portfolio_batch import InputError
from portfolio_batch._home import home, writable_dir

ROOT = Path(__file__).resolve().parent.parent
PORTFOLIO = ROOT / "testdata" / "portfolio.csv"


def run_cli(*args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ)  # the autouse fixture's PORTFOLIO_BATCH_HOME, no credentials
    environ.pop("PORTFOLIO_BATCH_DEBUG", None)
    environ.update(PYTHONPATH=str(ROOT), COLUMNS="200", NO_COLOR="1", **env)
    return subprocess.run(
        [sys.executable, "-m", "portfolio_batch.cli", *map(str, args)],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), proc.stderr
    return lines[-1]


# -- --out ----------------------------------------------------------------------------------------


def test_out_that_is_a_file_is_one_line_and_nothing_is_sent(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text("not a directory")
    proc = run_cli("analyze-risk", PORTFOLIO, "--yes", "--out", out, cwd=tmp_path)
    line = one_error_line(proc)
    assert f"--out '{out}' is a file, not a directory" in line
    assert "give --out a directory you can write to" in line
    assert "Cost estimate" not in proc.stderr  # refused before any work
    assert out.read_text() == "not a directory"


def test_out_under_a_file_names_the_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("x")
    proc = run_cli(
        "analyze-risk", PORTFOLIO, "--sync", "--yes", "--out", blocker / "run1", cwd=tmp_path
    )
    line = one_error_line(proc)
    assert f"--out '{blocker / 'run1'}' cannot be created: '{blocker}' is a file" in line


def test_jobs_resume_checks_out_before_waiting(tmp_path: Path) -> None:
    import portfolio_batch as pb
    from portfolio_batch.local import serve

    # 3 requests at 2 s each: a resume that polled first would wait, then fail on --out.
    with serve(engine="rules", data_dir=tmp_path / "server-data", request_delay=2) as server:
        client = server.client()
        requests = pb.build_requests(pb.load_portfolio(PORTFOLIO).head(3))
        jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "shards"), client=client)
        out = tmp_path / "taken"
        out.write_text("x")
        proc = run_cli(
            "jobs",
            "resume",
            jobs["run_id"].iloc[0],
            "--out",
            out,
            cwd=tmp_path,
            OPENAI_BASE_URL=str(server.base_url),
            OPENAI_API_KEY=server.api_key,
        )
        assert f"--out '{out}' is a file, not a directory" in one_error_line(proc)
        assert "Resuming run" not in proc.stderr
        pb.cancel(jobs, client=client)


def test_serve_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("x")
    line = one_error_line(run_cli("serve", "--port", "0", "--data-dir", data, cwd=tmp_path))
    assert f"--data-dir '{data}' is a file, not a directory" in line


# -- PORTFOLIO_BATCH_HOME ---------------------------------------------------------------------------


def test_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_file = tmp_path / "pb-home-file"
    home_file.write_text("x")
    proc = run_cli("jobs", "list", cwd=tmp_path, PORTFOLIO_BATCH_HOME=str(home_file))
    line = one_error_line(proc)
    assert f"PORTFOLIO_BATCH_HOME '{home_file}' is a file, not a directory" in line
    assert "set PORTFOLIO_BATCH_HOME to a directory you can write to" in line

    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(home_file / "sub"))
    with pytest.raises(
        InputError, match=r"PORTFOLIO_BATCH_HOME .*sub' cannot be created: .* is a file"
    ):
        home()


def test_home_is_created_and_default_is_project_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(tmp_path / "a" / "b"))
    assert home() == tmp_path / "a" / "b" and home().is_dir()
    monkeypatch.delenv("PORTFOLIO_BATCH_HOME")
    monkeypatch.chdir(tmp_path)
    assert home() == tmp_path / ".portfolio_batch" and home().is_dir()
    (tmp_path / ".portfolio_batch").rmdir()
    (tmp_path / ".portfolio_batch").write_text("x")
    with pytest.raises(InputError, match=r"the home directory .* is a file.*PORTFOLIO_BATCH_HOME"):
        home()


# -- Python out_dir ---------------------------------------------------------------------------------


def test_to_jsonl_out_dir_that_is_a_file(tmp_path: Path) -> None:
    import portfolio_batch as pb

    requests = pb.build_requests(pd.DataFrame({"ticker": ["A"], "weight": [1.0]}))
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(InputError, match=r"to_jsonl\(out_dir=\.\.\.\) '.*out' is a file"):
        pb.to_jsonl(requests, target)


# -- not writable: permission bits do not stop root, so the check runs as nobody -------------------


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    """A directory nobody (uid 65534) can read but not write, outside pytest's root-only tmp."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    base = Path(tempfile.mkdtemp(prefix="pb-ro-"))
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        (base / "ro").chmod(0o555)
        yield base / "ro"
    finally:
        shutil.rmtree(base)


def as_nobody(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "HOME": str(cwd),
        "PORTFOLIO_BATCH_HOME": str(cwd / "home"),
    }
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_out_not_writable_is_one_line(read_only_dir: Path) -> None:
    out = read_only_dir / "out"
    proc = as_nobody(
        "-m",
        "portfolio_batch.cli",
        "analyze-risk",
        PORTFOLIO,
        "--yes",
        "--out",
        out,
        cwd=read_only_dir.parent,
    )
    line = one_error_line(proc)
    assert f"--out '{out}' cannot be created (Permission denied)" in line
    proc = as_nobody(
        "-m",
        "portfolio_batch.cli",
        "analyze-risk",
        PORTFOLIO,
        "--yes",
        "--out",
        read_only_dir,
        cwd=read_only_dir.parent,
    )
    assert f"--out '{read_only_dir}' is not writable (Permission denied)" in one_error_line(proc)


def test_writable_dir_as_nobody_raises_input_error(read_only_dir: Path) -> None:
    script = (
        "from portfolio_batch._home import writable_dir\n"
        "from portfolio_batch.errors import InputError\n"
        "try:\n"
        f"    writable_dir({str(read_only_dir)!r}, what='out_dir')\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
    )
    proc = as_nobody("-c", script, cwd=read_only_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"out_dir '{read_only_dir}' is not writable (Permission denied)")


def test_unreadable_portfolio_is_an_input_error(read_only_dir: Path) -> None:
    secret = read_only_dir.parent / "secret.csv"
    secret.write_text("ticker,weight\nAAPL,1\n")
    secret.chmod(0o600)  # root's, unreadable to nobody
    script = (
        "from portfolio_batch import InputError, load_portfolio\n"
        "try:\n"
        f"    load_portfolio({str(secret)!r})\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
    )
    proc = as_nobody("-c", script, cwd=read_only_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{secret}: cannot be read (Permission denied); check its permissions\n"


def test_writable_dir_returns_an_existing_or_new_directory(tmp_path: Path) -> None:
    assert writable_dir(tmp_path, what="--out") == tmp_path
    new = writable_dir(tmp_path / "x" / "y", what="--out")
    assert new.is_dir() and list(new.iterdir()) == []  # the write probe leaves nothing behind


# -- portfolio files in the CLI ------------------------------------------------------------------


def test_semicolon_file_with_wrong_case_key_names_the_separator(tmp_path: Path) -> None:
    path = tmp_path / "portfolio.csv"
    path.write_text("Ticker;Weight\nAAPL;0,6\nMSFT;0,4\n")
    line = one_error_line(run_cli("estimate", path, cwd=tmp_path))
    assert (
        f"{path}: no column 'ticker' (read with separator ';', decimal comma: columns 'Ticker', "
        "'Weight'); rename the column 'Ticker' to 'ticker'"
    ) in line


def test_semicolon_decimal_comma_file_is_estimated(tmp_path: Path) -> None:
    path = tmp_path / "portfolio.csv"
    pd.read_csv(PORTFOLIO).to_csv(path, sep=";", decimal=",", index=False)
    assert "0,069" in path.read_text()
    proc = run_cli("estimate", path, "--format", "json", cwd=tmp_path)
    reference = run_cli("estimate", PORTFOLIO, "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference.stdout  # the same prompts, to the token


def test_sum_warning_and_shorts_are_one_line_each(tmp_path: Path) -> None:
    partial = tmp_path / "partial.csv"
    partial.write_text("ticker,weight\nAAPL,0.5\nMSFT,0.3\n")
    proc = run_cli("estimate", partial, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if "sum to" in line]
    assert warning.startswith(f"Warning: {partial}: the weights sum to 0.8, not 1")

    book = tmp_path / "long-short.csv"
    book.write_text("ticker,weight\nAAPL,0.8\nMSFT,0.5\nTSLA,-0.3\n")
    proc = run_cli("estimate", book, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 short position (negative weights): gross exposure 1.60, net 1.00." in proc.stderr
    assert "Warning" not in proc.stderr
