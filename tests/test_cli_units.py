"""The CLI's pieces in-process: help texts, progress lines, rebuilding requests from shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from portfolio_batch.cli._app import app
from portfolio_batch.cli._progress import BatchProgress, progress_lines, progress_table

COMMANDS = [
    [],
    ["analyze-risk"],
    ["estimate"],
    ["report"],
    ["serve"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "resume"],
    ["jobs", "results"],
    ["jobs", "cancel"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Example:" in text
    example = text.split("Example:", 1)[1]
    assert f"portfolio-batch {' '.join(command)}".strip() in example


def test_cli_import_loads_no_display_or_server_library() -> None:
    # The package imports its API plainly (pandas and openai come with it), but `--help` must not
    # also pay for the report's, the notebook's or the local server's libraries.
    import subprocess
    import sys

    heavy = ("matplotlib", "fastapi", "uvicorn", "ipywidgets", "jinja2", "IPython")
    code = (
        f"import sys, portfolio_batch.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _jobs(status: str, completed: int, failed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["run_1", "run_1"],
            "shard": [0, 1],
            "batch_id": ["batch_a", None],
            "status": [status, "queued"],
            "completed": [completed, 0],
            "failed": [failed, 0],
            "n_requests": [40, 10],
        }
    )


def test_progress_lines_show_finalizing_as_not_done() -> None:
    lines = progress_lines(_jobs("finalizing", 40))
    assert lines[0] == (
        "shard 0 batch_a: finalizing (writing result files, not done yet); 40/40 requests done, 0 failed"
    )
    assert "waiting for capacity" in lines[1] and "queued" in lines[1]


def test_progress_table_renders_each_batch() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(progress_table(_jobs("in_progress", 12, 3), elapsed=5))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert (
        "batch_a" in text
        and "in_progress" in text
        and "12" in text
        and "3" in text
        and "40" in text
    )


def test_plain_progress_prints_only_changes() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    with BatchProgress(console) as progress:
        progress.update(_jobs("in_progress", 10))
        progress.update(_jobs("in_progress", 10))
        progress.update(_jobs("finalizing", 40))
        progress.update(_jobs("completed", 40))
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4  # shard 0: three states; shard 1: once
    assert any("finalizing" in line for line in lines)
    assert lines[-1].startswith("shard 0 batch_a: completed; 40/40 requests done")


def test_requests_rebuilt_from_shards(tmp_path: Path) -> None:
    import portfolio_batch as pb
    from portfolio_batch.cli._runs import requests_from_shards, write_run_info

    portfolio = pb.load_portfolio(Path(__file__).parent.parent / "testdata" / "portfolio.csv")
    requests = pb.build_requests(portfolio)
    manifest = pb.to_jsonl(requests, tmp_path, max_requests=15)
    write_run_info(
        tmp_path, run_id="run_x", requests=requests, mode="batch", portfolio=Path("p.csv")
    )
    info = json.loads((tmp_path / "run.json").read_text())
    rebuilt = requests_from_shards(manifest["path"].tolist(), info=info)

    assert list(rebuilt.columns) == list(requests.columns)
    assert list(rebuilt.index) == list(requests.index)
    assert rebuilt["body"].tolist() == requests["body"].tolist()
    data = [c for c in requests.columns if c not in ("custom_id", "method", "url", "body")]
    pd.testing.assert_frame_equal(
        rebuilt[data], requests[data], check_dtype=False, check_index_type=False
    )
    for key in ("model", "endpoint", "key", "prompt_version", "schema"):
        assert rebuilt.attrs[key] == requests.attrs[key], key
    # without run.json everything is derived from the shard lines alone
    bare = requests_from_shards(manifest["path"].tolist())
    assert bare.attrs["key"] == "ticker" and bare.attrs["schema"] == requests.attrs["schema"]


def test_overwritten_shards_are_refused_before_rebuilding(tmp_path: Path) -> None:
    import portfolio_batch as pb
    from portfolio_batch.cli._pipeline import aggregate_run
    from portfolio_batch.errors import InputError

    portfolio = pb.load_portfolio(Path(__file__).parent.parent / "testdata" / "portfolio.csv")
    first = pb.to_jsonl(pb.build_requests(portfolio.iloc[:4]), tmp_path)
    # A later run into the same directory rewrites requests-00000.jsonl with other positions.
    pb.to_jsonl(pb.build_requests(portfolio.iloc[4:9]), tmp_path)
    jobs = first.assign(run_id="run_a")  # the registry's path and sha256 of the first run

    with pytest.raises(InputError) as caught:
        aggregate_run(jobs, client=None)
    message = str(caught.value)
    assert str(first["path"].iloc[0]) in message
    assert "run run_a" in message and "overwritten" in message and "--out" in message
