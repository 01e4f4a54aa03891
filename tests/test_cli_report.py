"""The CLI's review: `analyze-risk` prints the headline and the changes since the last run,
`report RUN_ID [--compare-to RUN_ID] [--pdf]`, `jobs list`/`jobs show` readable at 80 columns,
and ids taken by any unique prefix. Driven in subprocesses against the embedded local server."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_cli import PORTFOLIO, cli_env, run_cli

import portfolio_batch as pb

CHANGED = {"AAPL", "JNJ", "XOM"}


def _analyze(tmp_path: Path, portfolio: Path, *extra: str) -> tuple[str, str]:
    proc = run_cli(
        "analyze-risk", portfolio, "--yes", "--max-requests", "15", "--out", tmp_path / "out",
        *extra, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run_id = re.search(r"Run (run-\S+): \d+ batch", proc.stderr)
    assert run_id, proc.stderr
    return run_id.group(1), proc.stdout


def _two_runs(tmp_path: Path) -> tuple[str, str, str]:
    """The sample portfolio, then the same with two weights and a volatility changed."""
    portfolio = tmp_path / "sample.csv"
    shutil.copy(PORTFOLIO, portfolio)
    first, _ = _analyze(tmp_path, portfolio, "--as-of", "2026-11-13")
    frame = pd.read_csv(portfolio)
    frame.loc[frame["ticker"] == "AAPL", "weight"] = 0.040
    frame.loc[frame["ticker"] == "JNJ", "weight"] = 0.053
    frame.loc[frame["ticker"] == "XOM", "volatility"] = 0.55
    frame.to_csv(portfolio, index=False)
    second, stdout = _analyze(
        tmp_path, portfolio, "--currency", "EUR", "--fx-rate", "0.5", "--fx-date", "2026-11-13"
    )
    return first, second, stdout


def _changes(stdout: str) -> set[str]:
    """The tickers of the printed "Changes since ..." table."""
    block = stdout.split("Changes since", 1)[1].split("Positions by risk", 1)[0]
    rows = re.findall(
        r"^\s*([A-Z.]+)\s+(?:new|dropped|upgraded|downgraded|moved|reweighted)\s", block, re.M
    )
    return set(rows)


@pytest.mark.slow
def test_second_run_prints_the_changes_and_report_compares_runs(tmp_path: Path) -> None:
    first, second, stdout = _two_runs(tmp_path)
    # analyze-risk: the headline, then exactly the changed positions
    assert re.search(r"Weighted risk score \d+\.\d/100 \((low|medium|high)\)\.", stdout)
    flat = " ".join(stdout.split())
    assert f"3 positions changed since run {first} (2026-11-13)" in flat, flat[:1500]
    assert _changes(stdout) == CHANGED
    out = tmp_path / "out"
    doc = (out / "report.html").read_text(encoding="utf-8")
    assert "€" in doc and "EUR at 0.5 per USD (rate of 2026-11-13, given by the user)" in doc
    assert (out / "results.xlsx").is_file()
    raw = (out / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf# Simulated:") and b'["' not in raw  # no JSON lists

    # report by a prefix of the run id, compared with the first run given by its short id
    proc = run_cli(
        "report", second[:-3], "--compare-to", first[-6:], "--pdf",
        "--out", tmp_path / "rep", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"Run {second}" in proc.stdout
    assert _changes(proc.stdout + "Positions by risk") == CHANGED
    for name in ("report.html", "report.pdf", "results.xlsx"):
        assert (tmp_path / "rep" / name).is_file(), name
    assert (tmp_path / "rep" / "report.pdf").read_bytes().startswith(b"%PDF-")
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert html.index('id="simulated"') < html.index('<section id="summary">')
    assert "EUR at 0.5 per USD" in html  # the run's currency, from its run.json

    # comparing the other way round: the first run against the second
    back = run_cli(
        "report", first, "--compare-to", second, "--out", tmp_path / "back", cwd=tmp_path
    )
    assert back.returncode == 0, back.stderr
    assert _changes(back.stdout + "Positions by risk") == CHANGED

    # a prefix both runs share is refused, naming both
    both = run_cli("report", "run-", cwd=tmp_path)
    assert both.returncode == 2
    assert first in both.stderr and second in both.stderr and "give more of the id" in both.stderr


@pytest.mark.slow
def test_jobs_list_fits_80_columns_with_every_column_readable(tmp_path: Path) -> None:
    portfolio = tmp_path / "p.csv"
    shutil.copy(PORTFOLIO, portfolio)
    run_id, _ = _analyze(tmp_path, portfolio)
    env = {**cli_env(), "COLUMNS": "80"}
    listing = run_cli("jobs", "list", cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, listing.stdout
    assert "…" not in listing.stdout  # nothing cut
    jobs = pb.jobs()
    header = next(line for line in lines if line.split()[:2] == ["run", "created"])
    assert header.split() == [
        "run",
        "created",
        "#",
        "batch",
        "status",
        "requests",
        "est.",
        "backend",
    ]
    rows = [line.split() for line in lines if re.match(r"^(\S{6}  )?\s*\d\d-\d\d \d\d:\d\d ", line)]
    assert len(rows) == len(jobs) == 3
    assert rows[0][0] == run_id[-6:]  # the short run id, on the run's first line
    for row, job in zip(rows, jobs.sort_values("shard").itertuples(), strict=True):
        cells = row[1:] if row[0] == run_id[-6:] else row
        assert cells[2] == str(job.shard)
        assert job.batch_id.startswith("batch_" + cells[3]) and len(cells[3]) == 8
        assert cells[4] == "completed"
        assert cells[5] == f"{job.completed}/{job.failed}/{job.n_requests}"
        assert re.fullmatch(r"\$0\.\d{4}", cells[6])
        assert cells[7] == "local:rules"

    # jobs show by the short id, and by a batch id's short form: the same run, at 80 columns
    for ident in (run_id[-6:], run_id[:-3], rows[0][4][:5]):
        show = run_cli("jobs", "show", ident, cwd=tmp_path, env=env)
        assert show.returncode == 0, show.stderr
        assert max(len(line) for line in show.stdout.splitlines()) <= 80
        assert f"run {run_id}" in show.stdout and "…" not in show.stdout
        for job in jobs.itertuples():
            assert f"batch {job.batch_id}" in show.stdout  # full ids, to copy
            assert f"output file {job.output_file_id}" in show.stdout
    unknown = run_cli("jobs", "show", "zzzz", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "no run or batch 'zzzz'" in unknown.stderr


@pytest.mark.slow
def test_a_rerun_without_changes_says_so_once(tmp_path: Path) -> None:
    portfolio = tmp_path / "sample.csv"
    shutil.copy(PORTFOLIO, portfolio)
    first, _ = _analyze(tmp_path, portfolio, "--as-of", "2026-11-13")
    # a new run (its requests differ) whose answers move less than the change thresholds
    frame = pd.read_csv(portfolio)
    frame.loc[frame["ticker"] == "AAPL", "weight"] += 0.0001
    frame.to_csv(portfolio, index=False)
    second, stdout = _analyze(tmp_path, portfolio, "--as-of", "2026-11-14")
    proc = run_cli("report", second, "--compare-to", first, "--out", tmp_path / "rep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for printed in (stdout, proc.stdout):
        flat = " ".join(printed.split())
        assert f"No change since run {first} (2026-11-13)." in flat, flat[:1500]
        # not also an empty "Changes since ...: none." right under it
        assert "Changes since" not in flat


def test_a_failed_batch_tells_the_cli_command_to_retry(monkeypatch, capsys) -> None:
    """The Python advice (submit() the manifest again) is the CLI command in a terminal."""
    import contextlib

    from portfolio_batch._poll import RETRY_ADVICE
    from portfolio_batch.cli import _pipeline
    from portfolio_batch.errors import BatchFailedError

    jobs = pd.DataFrame({"run_id": ["run-1"], "status": ["failed"]})

    def failed(*args: object, **kwargs: object) -> None:
        raise BatchFailedError("1 batch(es) failed:\nbatch b1: boom\n" + RETRY_ADVICE, jobs=jobs)

    class Quiet(contextlib.nullcontext):  # no live table: only the error line is looked at
        def update(self, jobs: pd.DataFrame) -> None:
            pass

    monkeypatch.setattr(pb, "poll", failed)
    monkeypatch.setattr(_pipeline, "BatchProgress", lambda console: Quiet(Quiet()))
    assert _pipeline.poll_run(jobs, client=None, out_dir=None) is jobs
    stderr = " ".join(capsys.readouterr().err.split())
    assert "submit()" not in stderr and "batch b1: boom" in stderr
    assert "Run the same `portfolio-batch analyze-risk` command again to retry" in stderr
