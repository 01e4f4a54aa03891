"""aggregate_df, summarize, retry_failed, merge_results on batch files written to the contract."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._cost import cost_usd
from portfolio_batch._download import download_file
from portfolio_batch._requests import RISK_SCHEMA, custom_id_for
from portfolio_batch._validate import validator_for
from portfolio_batch.errors import DownloadError, InputError
from tests import readme

ANSWER = {
    "risk_score": 72,
    "risk_level": "high",
    "drivers": ["beta 1.75", "volatility 52%"],
    "rationale": "Big and volatile.",
}
ECHOED = {"position_key": "NVDA", **ANSWER}


def key_of(cid: str) -> str:
    """The key of a build_requests custom_id, risk-<key>-<prompt_version>; a key that does not
    fit an id (BRK.B) is hashed into it, so it is looked up among the test portfolio's keys."""
    version = cid.rsplit("-", 1)[-1]
    hashed = {custom_id_for(t, version): t for t in _TICKERS if not t.isalnum()}
    return hashed.get(cid) or cid[cid.index("-") + 1 : cid.rindex("-")]


_TICKERS = pd.read_csv(Path(__file__).parent.parent / "testdata" / "portfolio.csv")["ticker"]


def ok_line(
    cid: str,
    answer: Any = ANSWER,
    *,
    finish: str = "stop",
    pt: int = 200,
    ct: int = 60,
    cached: int = 0,
) -> dict[str, Any]:
    """A 200 line; an answer of the default schema without ``position_key`` echoes the key of
    ``cid`` first, as a model given RISK_SCHEMA does (pass ``position_key`` to answer another)."""
    if isinstance(answer, dict) and "drivers" in answer and "position_key" not in answer:
        answer = {"position_key": key_of(cid), **answer}
    content = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": f"req_{cid}",
            "body": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": pt,
                    "completion_tokens": ct,
                    "total_tokens": pt + ct,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            },
        },
        "error": None,
    }


def http_error_line(cid: str, status: int, code: str, message: str = "boom") -> dict[str, Any]:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": "req_x", "body": body},
        "error": None,
    }


def null_line(cid: str, code: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": None,
        "error": {"code": code, "message": f"{code} happened"},
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else orjson.dumps(line))
            fh.write(b"\n")
    return path


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:8]


@pytest.fixture
def files(tmp_path: Path, requests: pd.DataFrame) -> tuple[Path, Path]:
    """Out of order: two successes, one answer cut at max_tokens, one schema violation; errors: a
    429, a 400, an expired and a cancelled request; ids[7] is in neither file; one stranger."""
    ids = requests.index.tolist()
    out = write_jsonl(
        tmp_path / "output.jsonl",
        [
            ok_line(ids[1], pt=300, ct=80, cached=100),
            ok_line(ids[0]),
            ok_line(ids[2], '{"risk_score": 50, "risk_level": "med', finish="length"),
            ok_line(ids[3], {**ANSWER, "risk_score": 150}),
            ok_line("risk-ZZZZ-00000000"),
        ],
    )
    err = write_jsonl(
        tmp_path / "errors.jsonl",
        [
            http_error_line(ids[4], 429, "rate_limit_exceeded"),
            http_error_line(ids[5], 400, "context_length_exceeded", "too long"),
            null_line(ids[6], "batch_expired"),
        ],
    )
    return out, err


def test_one_row_per_request_in_request_order_with_every_status(
    requests: pd.DataFrame, files: tuple[Path, Path]
) -> None:
    before = requests.copy(deep=True)
    res = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    ids = requests.index.tolist()
    assert res.index.tolist() == ids and res.index.name == "custom_id"
    assert res["custom_id"].tolist() == ids
    assert res["ticker"].tolist() == requests["ticker"].tolist()
    status = dict(zip(ids, res["status"], strict=True))
    assert [status[i] for i in ids] == [
        "succeeded",
        "succeeded",
        "invalid_output",
        "invalid_output",
        "failed",
        "failed",
        "expired",
        "missing",
    ]
    assert res.attrs["unknown_custom_ids"] == 1 and res.attrs["malformed_lines"] == 0
    assert [f["lines"] for f in res.attrs["files"]] == [5, 3]
    pd.testing.assert_frame_equal(requests, before)  # the caller's frame is untouched


def test_columns_follow_the_contract(requests: pd.DataFrame, files: tuple[Path, Path]) -> None:
    res = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    data_cols = [c for c in requests.columns if c not in ("custom_id", "method", "url", "body")]
    assert res.columns.tolist() == [
        "custom_id",
        *data_cols,
        "status",
        "http_status",
        "error_code",
        "error_message",
        "finish_reason",
        "content",
        "position_key",
        "risk_score",
        "risk_level",
        "drivers",
        "rationale",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_usd",
        "batch_id",
        "model",
        "requested_model",
    ]


def test_success_fields_tokens_and_batch_cost(
    requests: pd.DataFrame, files: tuple[Path, Path]
) -> None:
    res = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    row = res.iloc[1]
    assert (row["risk_score"], row["risk_level"], row["drivers"], row["rationale"]) == (
        72,
        "high",
        ["beta 1.75", "volatility 52%"],
        "Big and volatile.",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (300, 80, 100)
    assert row["http_status"] == 200 and row["finish_reason"] == "stop"
    assert row["cost_usd"] == pytest.approx(
        cost_usd("gpt-4o-mini-2024-07-18", 300, 80, 100, batch=True)
    )
    assert row["cost_usd"] < cost_usd("gpt-4o-mini", 300, 80, 100, batch=False)
    assert res["risk_score"].dtype == "Int64"
    # no usage, no cost; no model answered, the requested one is in its own column
    assert res.iloc[7]["cost_usd"] == 0 and res.iloc[7]["model"] is None
    assert res.iloc[7]["requested_model"] == "gpt-4o-mini"


def test_failures_keep_their_code_and_reason(
    requests: pd.DataFrame, files: tuple[Path, Path]
) -> None:
    res = pb.aggregate_df(
        None, requests, output_files=[files[0]], error_files=[files[1]]
    ).reset_index(drop=True)
    cut, bad, r429, r400, expired, missing = (res.iloc[i] for i in (2, 3, 4, 5, 6, 7))
    assert cut["error_code"] == "invalid_json" and cut["finish_reason"] == "length"
    assert "not valid JSON" in cut["error_message"] and "max_tokens" in cut["error_message"]
    assert pd.isna(cut["risk_score"]) and cut["content"].startswith('{"risk_score": 50')
    assert bad["error_code"] == "schema_mismatch" and "risk_score" in bad["error_message"]
    assert (r429["http_status"], r429["error_code"]) == (429, "rate_limit_exceeded")
    assert (r400["http_status"], r400["error_code"], r400["error_message"]) == (
        400,
        "context_length_exceeded",
        "too long",
    )
    assert expired["error_code"] == "batch_expired" and pd.isna(expired["http_status"])
    assert pd.isna(missing["error_code"])


def test_cancelled_and_duplicate_lines(
    tmp_path: Path, requests: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    ids = requests.index.tolist()
    err = write_jsonl(
        tmp_path / "e.jsonl",
        [http_error_line(ids[0], 500, "server_error"), null_line(ids[1], "batch_cancelled")],
    )
    out = write_jsonl(
        tmp_path / "o.jsonl", [ok_line(ids[0]), http_error_line(ids[2], 500, "server_error")]
    )
    out2 = write_jsonl(
        tmp_path / "o2.jsonl",
        [ok_line(ids[2]), http_error_line(ids[0], 429, "rate_limit_exceeded")],
    )
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        res = pb.aggregate_df(None, requests, output_files=[out, out2], error_files=[err])
    # a success wins over a failure whichever comes first
    assert res["status"].iloc[:3].tolist() == ["succeeded", "cancelled", "succeeded"]
    assert res.attrs["duplicate_lines"] == 3
    assert "o2.jsonl line 2" in caplog.text and "another line for" in caplog.text


def test_malformed_lines_are_counted_logged_and_never_stop_the_rest(
    tmp_path: Path, requests: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    ids = requests.index.tolist()
    good = [orjson.dumps(ok_line(i)) for i in ids[:6]]
    broken = good[2][: len(good[2]) // 2]  # truncated, as a flaky writer leaves it
    out = write_jsonl(
        tmp_path / "o.jsonl",
        [
            good[0],
            good[1],
            broken,
            b"",
            b"not json",
            good[3],
            b'{"custom_id": 5}',
            good[4],
            good[5],
        ],
    )
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        res = pb.aggregate_df(None, requests, output_files=[out])
    assert len(res) == len(requests) and res.index.is_unique
    assert res.attrs["malformed_lines"] == 3
    assert res.attrs["files"][0]["lines"] == 8  # the blank line is not a line
    assert (
        res["status"].tolist()
        == ["succeeded"] * 2 + ["missing"] + ["succeeded"] * 3 + ["missing"] * 2
    )
    # the truncated line still names its request, so the reason is on the row
    assert "o.jsonl line 3" in res["error_message"].iloc[2]
    for n in (3, 5, 7):
        assert f"o.jsonl line {n}: malformed" in caplog.text


def test_lines_spanning_chunks_and_many_lines(
    tmp_path: Path, requests: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    import portfolio_batch._aggregate as agg

    monkeypatch.setattr(agg, "_CHUNK", 700)  # smaller than one line: every read ends mid-line
    ids = requests.index.tolist()
    out = write_jsonl(
        tmp_path / "o.jsonl", [ok_line(i, {**ANSWER, "risk_score": n}) for n, i in enumerate(ids)]
    )
    res = pb.aggregate_df(None, requests, output_files=[out])
    assert res["risk_score"].tolist() == list(range(len(ids)))


def test_schema_from_request_bodies_and_a_custom_schema(tmp_path: Path, testdata: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["buy", "hold", "sell"]},
            "detail": {
                "type": "object",
                "properties": {"why": {"type": "string"}},
                "required": ["why"],
                "additionalProperties": False,
            },
        },
        "required": ["verdict", "detail"],
        "additionalProperties": False,
    }
    req = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"), schema=schema).iloc[:3]
    req.attrs.pop("schema")  # the schema then comes from each body's response_format
    ids = req.index.tolist()
    out = write_jsonl(
        tmp_path / "o.jsonl",
        [
            ok_line(ids[0], {"verdict": "hold", "detail": {"why": "fine"}}),
            ok_line(ids[1], {"verdict": "hold", "detail": {}}),
            ok_line(ids[2], {"verdict": "short", "detail": {"why": "x"}}),
        ],
    )
    res = pb.aggregate_df(None, req, output_files=[out])
    assert res["status"].tolist() == ["succeeded", "invalid_output", "invalid_output"]
    assert res["verdict"].iloc[0] == "hold" and res["detail"].iloc[0] == {"why": "fine"}
    assert "'why' is a required property" in res["error_message"].iloc[1]
    assert "risk_score" not in res.columns


@pytest.mark.parametrize(
    "answer",
    [
        ECHOED,
        {**ECHOED, "risk_score": 0, "drivers": []},
        {**ECHOED, "risk_score": 100},
        {**ECHOED, "risk_score": 101},
        {**ECHOED, "risk_score": -1},
        {**ECHOED, "risk_score": "72"},
        {**ECHOED, "risk_level": "severe"},
        {**ECHOED, "drivers": ["a", "b", "c", "d"]},
        {**ECHOED, "drivers": [1]},
        {**ECHOED, "extra": 1},
        {**ECHOED, "position_key": 7},
        ANSWER,  # no key echo
        {k: v for k, v in ECHOED.items() if k != "rationale"},
        [1, 2],
        "just text",
    ],
)
def test_fast_path_agrees_with_jsonschema(answer: Any) -> None:
    import jsonschema

    fast = validator_for(RISK_SCHEMA)
    assert type(fast).__name__ == "_StructValidator"  # the default schema takes the msgspec path
    content = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
    try:
        jsonschema.validate(orjson.loads(content), RISK_SCHEMA)
        valid = True
    except (jsonschema.ValidationError, orjson.JSONDecodeError):
        valid = False
    result = fast.check(content)
    assert isinstance(result, tuple) == valid, result


def test_bad_input_is_named(tmp_path: Path, requests: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="does not exist"):
        pb.aggregate_df(None, requests, output_files=[tmp_path / "nope.jsonl"])
    twice = pd.concat([requests, requests.iloc[:1]])
    with pytest.raises(InputError, match="appears more than once"):
        pb.aggregate_df(None, twice, output_files=[])
    with pytest.raises(InputError, match="no custom_id"):
        pb.aggregate_df(None, requests.reset_index(drop=True).drop(columns="custom_id"))


# -- summarize, retry_failed, merge_results -------------------------------------------------------


def test_summarize(requests: pd.DataFrame, files: tuple[Path, Path]) -> None:
    res = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    costs = pb.estimate_cost(requests)
    s = pb.summarize(res, costs=costs)
    assert (s.items, s.successes) == (8, 2)
    assert s.by_status == {
        "succeeded": 2,
        "invalid_output": 2,
        "failed": 2,
        "expired": 1,
        "missing": 1,
    }
    table = {(r.status, r.error_code): r.count for r in s.failures.itertuples()}
    assert table == {
        ("invalid_output", "invalid_json"): 1,
        ("invalid_output", "schema_mismatch"): 1,
        ("failed", "rate_limit_exceeded"): 1,
        ("failed", "context_length_exceeded"): 1,
        ("expired", "batch_expired"): 1,
        ("missing", None): 1,
    }
    assert (
        len(s.errors) == 6 and "ticker" in s.errors.columns and "error_message" in s.errors.columns
    )
    assert s.actual_cost_usd == pytest.approx(res["cost_usd"].sum())
    assert s.est_cost_usd == pytest.approx(costs["batch_cost_usd"].sum())
    frame = s.to_frame().set_index("metric")["value"]
    assert frame["items"] == 8 and frame["status: missing"] == 1
    assert "<table" in s._repr_html_() and "2/8 succeeded" in str(s)


def test_retry_failed_picks_only_what_a_resend_can_fix(
    requests: pd.DataFrame, files: tuple[Path, Path]
) -> None:
    res = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    bodies = [dict(b) for b in requests["body"]]
    again = pb.retry_failed(res, requests, max_tokens=900)
    ids = requests.index.tolist()
    # not the successes, not the 400 context_length_exceeded
    assert again.index.tolist() == [ids[2], ids[3], ids[4], ids[6], ids[7]]
    # plus retry_of: the batches the results came from (none: these files were given by hand)
    assert again.columns.tolist() == [*requests.columns, "retry_of"]
    assert again.attrs == requests.attrs and again["retry_of"].isna().all()
    assert again.loc[ids[2], "body"]["max_tokens"] == 900  # invalid_output: raised
    assert again.loc[ids[4], "body"]["max_tokens"] == requests.loc[ids[4], "body"]["max_tokens"]
    assert [dict(b) for b in requests["body"]] == bodies  # the caller's bodies are untouched
    assert pb.retry_failed(res.iloc[:2], requests).empty


def test_merge_results_keeps_the_latest_attempt(
    tmp_path: Path, requests: pd.DataFrame, files: tuple[Path, Path]
) -> None:
    first = pb.aggregate_df(None, requests, output_files=[files[0]], error_files=[files[1]])
    again = pb.retry_failed(first, requests)
    out = write_jsonl(
        tmp_path / "retry.jsonl",
        [ok_line(i, {**ANSWER, "risk_score": 9}) for i in again.index[:-1]],
    )
    second = pb.aggregate_df(None, again, output_files=[out])  # the last one is missing again
    merged = pb.merge_results(first, second)
    assert merged.index.tolist() == first.index.tolist()
    assert merged["status"].tolist() == ["succeeded"] * 5 + ["failed", "succeeded", "missing"]
    assert merged["risk_score"].iloc[2] == 9 and merged["risk_score"].iloc[0] == 72
    assert merged["attempt"].tolist() == [1, 1, 2, 2, 2, 1, 2, 1]
    assert merged.attrs["malformed_lines"] == 0
    # merging again: attempts add up, nothing is duplicated
    assert pb.merge_results(merged, second)["attempt"].tolist() == [1, 1, 3, 3, 3, 1, 3, 1]


# -- download ----------------------------------------------------------------------------------


def _upload(client: Any, tmp_path: Path, n: int = 200) -> tuple[str, bytes]:
    data = b"".join(orjson.dumps(ok_line(f"id-{i}")) + b"\n" for i in range(n))
    path = tmp_path / "up.jsonl"
    path.write_bytes(data)
    return client.files.create(file=path.open("rb"), purpose="batch").id, data


def test_download_is_cached_and_a_cut_download_is_resumed(
    local_server: Any, openai_client: Any, tmp_path: Path
) -> None:
    file_id, data = _upload(openai_client, tmp_path)
    local_server.configure(cut_download_after_bytes=len(data) // 3)
    path = download_file(file_id, client=openai_client, backoff=0.01)
    assert path.read_bytes() == data and path.parent.name == "files"
    assert not list(path.parent.glob("*.part"))
    openai_client.files.delete(file_id)  # a re-run must not need the server
    assert download_file(file_id, client=openai_client) == path


class _Response:
    """An explicit fake of the SDK's streamed response: always 10 bytes short."""

    status_code = 200

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def iter_bytes(self, chunk_size: int) -> Any:
        yield b"x" * 90


class _ShortClient:
    class files:
        calls = 0

        class with_streaming_response:
            @staticmethod
            def content(file_id: str, extra_headers: Any = None) -> _Response:
                _ShortClient.files.calls += 1
                return _Response()

        @staticmethod
        def retrieve(file_id: str) -> Any:
            return type("F", (), {"bytes": 100})()


def test_download_that_stays_short_fails_clearly() -> None:
    with pytest.raises(
        DownloadError, match=r"file-short.*after 3 attempts.*got 90 bytes, the file object says 100"
    ):
        download_file("file-short", client=_ShortClient(), attempts=3, backoff=0)
    assert _ShortClient.files.calls == 3
    with pytest.raises(InputError):
        download_file("../etc/passwd", client=_ShortClient())


def test_golden_batch_files(testdata: Path) -> None:
    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"))
    res = pb.aggregate_df(
        None,
        requests,
        output_files=[testdata / "batch" / "output.jsonl"],
        error_files=[testdata / "batch" / "errors.jsonl"],
    )
    assert len(res) == 40 and res.index.tolist() == requests.index.tolist()
    by_ticker = res.set_index("ticker")
    assert res["status"].value_counts().to_dict() == {
        "succeeded": 36,
        "failed": 2,
        "invalid_output": 1,
        "expired": 1,
    }
    assert (
        by_ticker.loc["AMD", "status"] == "invalid_output"
        and by_ticker.loc["AMD", "finish_reason"] == "length"
    )
    assert by_ticker.loc["TSLA", "error_code"] == "context_length_exceeded"
    assert (by_ticker.loc["INTC", "http_status"], by_ticker.loc["INTC", "error_code"]) == (
        500,
        "server_error",
    )
    assert by_ticker.loc["GE", "status"] == "expired"
    ok = res[res["status"].eq("succeeded")]
    assert ok["risk_score"].between(0, 100).all() and ok["cost_usd"].gt(0).all()
    assert set(pb.retry_failed(res, requests)["ticker"]) == {"AMD", "INTC", "GE"}


def test_last_line_without_newline(tmp_path: Path, requests: pd.DataFrame) -> None:
    ids = requests.index.tolist()
    path = tmp_path / "o.jsonl"
    path.write_bytes(orjson.dumps(ok_line(ids[0])) + b"\n" + orjson.dumps(ok_line(ids[1])))
    res = pb.aggregate_df(None, requests, output_files=[path])
    assert res["status"].iloc[:3].tolist() == ["succeeded", "succeeded", "missing"]
    assert res.attrs["files"][0]["lines"] == 2


@pytest.mark.slow
def test_readme_results_examples_run_and_print_what_they_say(
    testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from portfolio_batch._backend import reset_client

    mine = readme.section("pipeline").split("<!-- aggregate docs below -->")[1]
    blocks = readme.python_blocks(mine)
    assert len(blocks) == 2
    shutil.copytree(testdata, tmp_path / "testdata")
    monkeypatch.chdir(tmp_path)
    try:
        for block in blocks:
            assert readme.run_block(block) == readme.expected_output(block)
    finally:
        reset_client()


def test_requests_with_different_schemas_get_the_union_of_fields(
    tmp_path: Path, testdata: Path
) -> None:
    portfolio = pb.load_portfolio(testdata / "portfolio.csv")
    other = {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["buy", "sell"]},
            "risk_score": {"type": "integer"},
        },
        "required": ["verdict", "risk_score"],
        "additionalProperties": False,
    }
    a = pb.build_requests(portfolio.iloc[:2])
    b = pb.build_requests(portfolio.iloc[2:4], schema=other)
    req = pd.concat([a, b])
    req.attrs = {}  # each body carries its own schema
    ids = req.index.tolist()
    out = write_jsonl(
        tmp_path / "o.jsonl",
        [
            ok_line(ids[0]),
            ok_line(ids[1], {"verdict": "buy", "risk_score": 3}),
            ok_line(ids[2], {"verdict": "sell", "risk_score": 7}),
            ok_line(ids[3], ANSWER),
        ],
    )
    res = pb.aggregate_df(None, req, output_files=[out])
    assert res["status"].tolist() == ["succeeded", "invalid_output", "succeeded", "invalid_output"]
    assert res["risk_score"].tolist()[0] == 72 and res["risk_score"].tolist()[2] == 7
    assert res["verdict"].tolist()[2] == "sell" and pd.isna(res["verdict"].iloc[0])
    assert res["risk_level"].iloc[0] == "high" and pd.isna(res["risk_level"].iloc[2])


def test_results_columns_are_the_ones_build_requests_reserves(testdata: Path) -> None:
    # build_requests refuses input columns named like these; the list must stay the real one.
    from portfolio_batch._contract import RESULT_COLUMNS

    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"))
    results = pb.aggregate_df(
        None,
        requests,
        output_files=[testdata / "batch" / "output.jsonl"],
        error_files=[testdata / "batch" / "errors.jsonl"],
    )
    added = [c for c in results.columns if c not in requests.columns]
    fields = list(requests.attrs["schema"]["properties"])
    assert [c for c in added if c not in fields] == [c for c in RESULT_COLUMNS if c != "attempt"]
    merged = pb.merge_results(results, results)
    assert "attempt" in merged.columns
