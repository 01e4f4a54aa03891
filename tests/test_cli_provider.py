"""``--provider`` (analyze-risk, estimate): the provider follows the model name unless given, and
a claude model runs end to end on Anthropic's batch API (the local server's Anthropic routes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_cli import N_POSITIONS, PORTFOLIO, cli_env, error_lines, read_results, run_cli


def answers(out: Path) -> pd.DataFrame:
    """What a reader compares between providers: each ticker's status, score and level."""
    csv = read_results(out / "results.csv")
    return csv.set_index("ticker")[["status", "risk_score", "risk_level"]].sort_index()


def openai_answers(tmp_path: Path, server: Any) -> pd.DataFrame:
    """The same portfolio through the OpenAI path (``--model gpt-4o-mini``) on the same local
    server, in a home of its own so the provider's registry holds only the provider's run."""
    out = tmp_path / "openai-out"
    env = cli_env(
        OPENAI_API_KEY=server.api_key,
        OPENAI_BASE_URL=server.base_url,
        PORTFOLIO_BATCH_HOME=str(tmp_path / "openai-home"),
    )
    proc = run_cli(
        "analyze-risk", PORTFOLIO, "--batch", "--model", "gpt-4o-mini", "--yes",
        "--out", out, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return answers(out)


@pytest.mark.slow
def test_a_claude_model_runs_on_anthropic_end_to_end(tmp_path: Path, local_server: Any) -> None:
    """ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL set (at the local server): --model claude-* picks
    Anthropic, and the run writes the same results and report as the OpenAI path. A Gemini key
    is set too, so the key alone does not decide: the model name does."""
    out = tmp_path / "out"
    env = cli_env(
        ANTHROPIC_API_KEY=local_server.api_key,
        ANTHROPIC_BASE_URL=local_server.base_url.removesuffix("/v1"),
        GEMINI_API_KEY="never-used",
    )
    proc = run_cli(
        "analyze-risk", PORTFOLIO, "--batch", "--model", "claude-haiku-4-5", "--yes",
        "--out", out, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Input tokens (approx.)" in proc.stderr  # no offline Claude tokenizer
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS and set(csv["status"]) == {"succeeded"}
    assert csv["custom_id"].str.fullmatch(r"[A-Za-z0-9_-]{1,64}").all()  # Anthropic's id rule
    assert "BRK.B" in set(csv["ticker"])  # joined back by key although its id is hashed
    assert csv["risk_score"].between(0, 100).all()
    assert csv["cost_usd"].gt(0).all()
    assert (out / "report.html").is_file() and "Summary" in proc.stdout

    import portfolio_batch as pb

    jobs = pb.jobs()
    assert len(jobs) == 1 and str(jobs["backend"].iloc[0]).startswith("anthropic")
    # `report` of the run later says the simulated costs are Anthropic's, as the run did
    again = run_cli("report", str(jobs["run_id"].iloc[0]), "--out", tmp_path / "rep",
                    cwd=tmp_path, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    flat = " ".join(again.stdout.split())
    assert "at Anthropic batch prices" in flat and "OpenAI batch prices" not in flat
    # its provenance says where the requests went, not only the line format they were written in
    report = (out / "report.html").read_text()
    assert (
        "/v1/chat/completions; sent to Anthropic Message Batches (/v1/messages/batches)" in report
    )
    pd.testing.assert_frame_equal(answers(out), openai_answers(tmp_path, local_server))


@pytest.mark.slow
def test_a_gemini_model_runs_on_gemini_end_to_end(tmp_path: Path, local_server: Any) -> None:
    """Only GEMINI_API_KEY / GOOGLE_GEMINI_BASE_URL set (at the local server): --model gemini-*
    runs on Gemini's batch API (file mode) and writes the same results and report as the OpenAI
    path on the same server."""
    out = tmp_path / "out"
    env = cli_env(
        GEMINI_API_KEY=local_server.api_key,
        GOOGLE_GEMINI_BASE_URL=local_server.base_url.removesuffix("/v1"),
    )
    proc = run_cli(
        "analyze-risk", PORTFOLIO, "--batch", "--model", "gemini-2.5-flash", "--yes",
        "--out", out, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Input tokens (approx.)" in proc.stderr  # no offline Gemini tokenizer
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS and set(csv["status"]) == {"succeeded"}
    assert csv["custom_id"].str.fullmatch(r"[A-Za-z0-9_-]{1,64}").all()
    assert "BRK.B" in set(csv["ticker"])  # joined back by key
    assert csv["risk_score"].between(0, 100).all()
    assert csv["cost_usd"].gt(0).all()
    assert (out / "report.html").is_file() and "Summary" in proc.stdout

    import portfolio_batch as pb

    jobs = pb.jobs()
    assert len(jobs) == 1 and str(jobs["backend"].iloc[0]).startswith("gemini")
    # simulated answers are priced, and said to be priced, at the provider's rates, not OpenAI's
    report = (out / "report.html").read_text()
    assert "at Gemini batch prices" in report and "at OpenAI batch prices" not in report
    pd.testing.assert_frame_equal(answers(out), openai_answers(tmp_path, local_server))


def test_provider_flag_is_checked_and_sync_is_batch_only_for_claude(tmp_path: Path) -> None:
    sync = run_cli(
        "analyze-risk", PORTFOLIO, "--sync", "--model", "claude-haiku-4-5", "--yes", cwd=tmp_path
    )
    assert sync.returncode == 2
    assert "--sync" in sync.stderr and "anthropic" in sync.stderr and "--batch" in sync.stderr
    bad = run_cli("analyze-risk", PORTFOLIO, "--provider", "cohere", "--yes", cwd=tmp_path)
    assert bad.returncode == 2 and "--provider" in bad.stderr
    azure = run_cli(
        "analyze-risk", PORTFOLIO, "--provider", "azure", "--yes", "--out", tmp_path / "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert azure.returncode == 2, azure.stderr
    assert "--provider azure" in error_lines(azure.stderr)[-1]
    assert "AZURE_OPENAI_ENDPOINT" in error_lines(azure.stderr)[-1]


def test_estimate_prices_each_provider_and_marks_approximate_counts(tmp_path: Path) -> None:
    proc = run_cli(
        "estimate", PORTFOLIO, "--model", "gpt-4o-mini,claude-haiku-4-5,gemini-2.5-flash",
        "--format", "json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)}
    assert rows["gpt-4o-mini"]["token_count"] == "exact"
    assert rows["claude-haiku-4-5"]["token_count"] == "approx"
    assert rows["gemini-2.5-flash"]["token_count"] == "approx"
    tokens, out = rows["claude-haiku-4-5"]["input_tokens"], N_POSITIONS * 400
    # claude-haiku-4-5: $1 in / $5 out per million, half at batch
    assert rows["claude-haiku-4-5"]["batch_cost_usd"] == pytest.approx(
        (tokens * 1.00 + out * 5.00) * 0.5 / 1e6
    )
    # gemini-2.5-flash: $0.30 in / $2.50 out per million, half at batch
    assert rows["gemini-2.5-flash"]["batch_cost_usd"] == pytest.approx(
        (tokens * 0.30 + out * 2.50) * 0.5 / 1e6
    )
    table = run_cli("estimate", PORTFOLIO, "--model", "claude-haiku-4-5", cwd=tmp_path)
    assert table.returncode == 0 and "approximate" in table.stdout
    # --provider overrides the model name: OpenAI has no price for a claude model
    wrong = run_cli(
        "estimate", PORTFOLIO, "--model", "claude-haiku-4-5", "--provider", "openai",
        cwd=tmp_path, env=cli_env(),
    )  # fmt: skip
    assert wrong.returncode == 2 and "claude-haiku-4-5" in wrong.stderr and "openai" in wrong.stderr


@pytest.mark.slow
def test_together_runs_from_the_cli_with_a_prices_file(tmp_path: Path, local_server: Any) -> None:
    """No price table has Together's batch rates: without --prices the run stops before sending
    anything and says so; with a --prices CSV it runs end to end, priced at those rates."""
    env = cli_env(
        TOGETHER_API_KEY=local_server.api_key,
        TOGETHER_BASE_URL=local_server.base_url.removesuffix("/v1") + "/together/v1",
    )
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    args = ("analyze-risk", PORTFOLIO, "--batch", "--provider", "together", "--model", model,
            "--yes")  # fmt: skip
    refused = run_cli(*args, "--out", tmp_path / "no", cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "Together" in error_lines(refused.stderr)[-1]
    assert "--prices" in refused.stderr

    prices = tmp_path / "prices.csv"
    prices.write_text(f"model,input,output,batch_input,batch_output\n{model},0.88,0.88,0.44,0.44\n")
    out = tmp_path / "out"
    proc = run_cli(*args, "--prices", prices, "--out", out, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    csv = read_results(out / "results.csv")
    assert len(csv) == N_POSITIONS and set(csv["status"]) == {"succeeded"}
    # every answer at $0.44 per million tokens in and out, from the usage returned
    tokens = csv["prompt_tokens"] + csv["completion_tokens"]
    assert csv["cost_usd"].to_numpy() == pytest.approx((tokens * 0.44 / 1e6).to_numpy())
    assert "at Together AI batch prices" in (out / "report.html").read_text()
