"""Self-hosted models: ``to_jsonl``'s shards are ``vllm run-batch``'s input as they are, and
``aggregate_df(None, requests, output_files=[...])`` reads its single output file (successes
and failures in one file, in input order; vLLM's ``BatchRequestOutput`` lines, read from
vllm/entrypoints/openai/run_batch.py). testdata/vllm/output.jsonl is such a file, hand-written."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb

MODEL = "Qwen/Qwen2.5-7B-Instruct"
VERSION = "c004f10c"  # the prompt_version of the file's custom_ids (its last "-" part)


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    portfolio = pb.load_portfolio(testdata / "portfolio.csv")
    chosen = portfolio[portfolio["ticker"].isin(["AAPL", "NVDA", "BRK.B", "TSLA"])]
    return pb.build_requests(chosen, model=MODEL)


def _output(testdata: Path, requests: pd.DataFrame, where: Path) -> Path:
    """The vLLM output file, its ids on this code's prompt_version (a prompt change must not make
    a golden vLLM file stale: the version is the id's last part, the key's part is unchanged)."""
    text = (testdata / "vllm" / "output.jsonl").read_text()
    path = where / "output.jsonl"
    path.write_text(text.replace(f'-{VERSION}"', f'-{requests.attrs["prompt_version"]}"'))
    return path


def test_shards_are_vllm_run_batch_input(requests: pd.DataFrame, tmp_path: Path) -> None:
    manifest = pb.to_jsonl(requests, tmp_path / "shards")
    lines = [orjson.loads(x) for x in Path(manifest["path"].iloc[0]).read_bytes().splitlines()]
    # BatchRequestInput: custom_id, method, url, body (a ChatCompletionRequest); nothing else
    assert [list(line) for line in lines] == [["custom_id", "method", "url", "body"]] * 4
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    assert {line["body"]["model"] for line in lines} == {MODEL}
    assert [line["custom_id"] for line in lines] == requests["custom_id"].tolist()


def test_vllm_output_file_aggregates_successes_and_failures(
    requests: pd.DataFrame, testdata: Path, tmp_path: Path
) -> None:
    path = _output(testdata, requests, tmp_path)
    free = {MODEL: {"input": 0, "output": 0}}  # your own GPUs: price them as you like
    results = pb.aggregate_df(None, requests, output_files=[path], prices=free)
    assert results.index.tolist() == requests.index.tolist()
    by_key = results.set_index("ticker")
    assert by_key.loc[["AAPL", "BRK.B"], "status"].tolist() == ["succeeded", "succeeded"]
    assert by_key.loc["AAPL", "risk_score"] == 52 and by_key.loc["BRK.B", "risk_level"] == "low"
    assert by_key.loc["AAPL", "prompt_tokens"] == 248
    assert by_key.loc["AAPL", "completion_tokens"] == 61
    assert by_key.loc["AAPL", "model"] == MODEL and by_key.loc["AAPL", "cost_usd"] == 0
    # failures: vLLM's ErrorResponse object, and an exception's plain message string
    assert by_key.loc[["NVDA", "TSLA"], "status"].tolist() == ["failed", "failed"]
    assert by_key.loc["TSLA", "http_status"] == 400
    assert "maximum context length is 4096" in by_key.loc["TSLA", "error_message"]
    assert by_key.loc["NVDA", "http_status"] == 400
    assert "CUDA out of memory" in by_key.loc["NVDA", "error_message"]
    assert by_key.loc["TSLA", "error_code"] == "400"  # vLLM's ErrorInfo.code is the HTTP status
