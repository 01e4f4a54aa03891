"""submit / resume / cancel against the real local server through the real openai SDK."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._contract import JOBS_COLUMNS
from portfolio_batch._download import download_file
from portfolio_batch._home import home
from portfolio_batch._registry import open_registry, registry_path
from portfolio_batch.errors import BudgetExceededError, InputError, RegistryError, SubmitError
from tests import readme


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    portfolio = pd.read_csv(testdata / "portfolio.csv").head(12)
    return pb.build_requests(portfolio)


@pytest.fixture
def manifest(requests: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return pb.to_jsonl(requests, tmp_path / "jsonl", max_requests=4)


def _server_batches(client: Any) -> list[Any]:
    return list(client.batches.list(limit=100))


def test_submit_returns_one_row_per_shard_with_metadata(openai_client, manifest) -> None:
    before = manifest.copy(deep=True)
    jobs = pb.submit(manifest, client=openai_client, metadata={"desk": "equities"}, run_id="run-1")
    pd.testing.assert_frame_equal(manifest, before)  # the caller's frame is untouched
    assert list(jobs.columns) == list(JOBS_COLUMNS)
    assert jobs["shard"].tolist() == [0, 1, 2]
    assert jobs["n_requests"].tolist() == [4, 4, 4]
    assert jobs["batch_id"].str.startswith("batch").all()
    assert jobs["input_file_id"].str.startswith("file").all()
    assert (jobs["sha256"] == manifest["sha256"]).all()
    assert (jobs["est_cost_usd"] > 0).all()
    assert jobs["run_id"].eq("run-1").all()
    for row in jobs.itertuples():
        batch = openai_client.batches.retrieve(row.batch_id)
        assert batch.metadata == {
            "desk": "equities",
            "pb_sha256": row.sha256,
            "pb_version": pb.__version__,
            "pb_run_id": "run-1",
            "pb_shard": str(row.shard),
        }
        assert batch.input_file_id == row.input_file_id
        assert batch.endpoint == "/v1/chat/completions"
    assert pb.jobs(run_id="run-1")["batch_id"].tolist() == jobs["batch_id"].tolist()


def test_resubmitting_the_same_manifest_returns_the_same_batches(openai_client, manifest) -> None:
    first = pb.submit(manifest, client=openai_client)
    second = pb.submit(manifest, client=openai_client)
    assert second["batch_id"].tolist() == first["batch_id"].tolist()
    assert second["run_id"].tolist() == first["run_id"].tolist()
    assert len(_server_batches(openai_client)) == 3
    assert len(list(openai_client.files.list(purpose="batch"))) == 3
    # force=True is the explicit way to pay again.
    forced = pb.submit(manifest, client=openai_client, force=True)
    assert set(forced["batch_id"]).isdisjoint(first["batch_id"])
    assert len(_server_batches(openai_client)) == 6
    # The upload is reused: same content, same file.
    assert forced["input_file_id"].tolist() == first["input_file_id"].tolist()


def test_a_failed_or_cancelled_shard_is_submitted_again(
    local_server, openai_client, manifest
) -> None:
    local_server.configure(request_delay=0.2)
    first = pb.submit(manifest.iloc[:1], client=openai_client)
    pb.cancel(first, client=openai_client)
    again = pb.submit(manifest.iloc[:1], client=openai_client)
    assert again["batch_id"].iloc[0] != first["batch_id"].iloc[0]


def test_submit_takes_a_requests_frame_and_writes_the_jsonl_into_the_home(
    openai_client, requests
) -> None:
    jobs = pb.submit(requests.head(3), client=openai_client)
    assert len(jobs) == 1 and jobs["n_requests"].iloc[0] == 3
    path = Path(jobs["path"].iloc[0])
    assert path.is_file() and path.is_relative_to(home())


def test_budget_refusal_uploads_nothing(openai_client, manifest) -> None:
    with pytest.raises(BudgetExceededError, match=r"over budget_usd=\$0\.0000") as info:
        pb.submit(manifest, client=openai_client, budget_usd=0.0)
    assert info.value.estimate_usd > 0 and info.value.budget_usd == 0.0
    assert f"${info.value.estimate_usd:.4f}" in str(info.value)
    assert list(openai_client.files.list()) == []
    assert _server_batches(openai_client) == []
    assert pb.jobs().empty


def test_budget_allows_a_submission_under_it(openai_client, manifest) -> None:
    jobs = pb.submit(manifest, client=openai_client, budget_usd=10.0)
    assert len(jobs) == 3


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({f"k{i}": "v" for i in range(13)}, "at most 12"),
        ({"pb_sha256": "mine"}, "reserved"),
        ({"x" * 65: "v"}, "1-64 characters"),
        ({"note": "y" * 513}, "limit is 512"),
    ],
)
def test_bad_metadata_is_refused_before_anything_is_sent(
    openai_client, manifest, metadata, message
) -> None:
    with pytest.raises(InputError, match=message):
        pb.submit(manifest, client=openai_client, metadata=metadata)
    assert list(openai_client.files.list()) == []


def test_a_changed_shard_file_is_refused(openai_client, manifest) -> None:
    path = Path(manifest["path"].iloc[0])
    path.write_bytes(path.read_bytes().replace(b"gpt-4o-mini", b"gpt-4o-MINI", 1))
    with pytest.raises(InputError, match=r"changed since to_jsonl\(\)"):
        pb.submit(manifest.iloc[:1], client=openai_client)


def test_not_a_manifest_names_the_missing_columns(openai_client) -> None:
    with pytest.raises(InputError, match="missing"):
        pb.submit(pd.DataFrame({"shard": [0]}), client=openai_client)


def test_a_batch_that_cannot_be_recorded_is_cancelled(
    local_server, openai_client, manifest
) -> None:
    local_server.configure(request_delay=0.2)
    with open_registry() as reg:
        reg.conn.execute(
            "CREATE TRIGGER no_batches BEFORE INSERT ON batches "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(
        RegistryError,
        match=r"they were cancelled \(or had already ended\), so nothing runs untracked",
    ):
        pb.submit(manifest.iloc[:1], client=openai_client)
    batches = _server_batches(openai_client)
    assert len(batches) == 1
    assert batches[0].status in ("cancelling", "cancelled")


def test_the_api_key_is_never_stored(local_server, manifest, monkeypatch, caplog) -> None:
    secret = "sk-" + "test-NEVER-STORE-ME-4242"  # split: no key-shaped literal in the repo
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    client = local_server.client(api_key=secret)
    caplog.set_level(logging.DEBUG, logger="portfolio_batch")
    jobs = pb.poll(pb.submit(manifest, client=client), client=client, progress=False)
    assert (jobs["status"] == "completed").all()
    for path in registry_path().parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


def test_resume_by_run_and_by_batch_id(openai_client, manifest) -> None:
    jobs = pb.submit(manifest, client=openai_client, run_id="run-r")
    by_run = pb.resume("run-r", client=openai_client)
    assert by_run["batch_id"].tolist() == jobs["batch_id"].tolist()
    by_batch = pb.resume(list(jobs["batch_id"].iloc[1:]), client=openai_client)
    assert by_batch["shard"].tolist() == [1, 2]


def test_resume_unknown_id_says_where_it_looked(openai_client) -> None:
    with pytest.raises(RegistryError, match=r"pb\.jobs\(\) lists"):
        pb.resume("run-does-not-exist", client=openai_client)


def test_resume_finds_a_batch_known_only_to_the_server(openai_client, manifest) -> None:
    jobs = pb.submit(manifest, client=openai_client, run_id="run-s")
    registry_path().unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(registry_path()) + suffix).unlink(missing_ok=True)
    again = pb.resume("run-s", client=openai_client)
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert sorted(again["shard"]) == [0, 1, 2]


def test_cancel_stops_running_batches(local_server, openai_client, manifest) -> None:
    local_server.configure(request_delay=0.2)
    jobs = pb.submit(manifest, client=openai_client)
    cancelled = pb.cancel(jobs, client=openai_client)
    assert set(cancelled["status"]) <= {"cancelling", "cancelled"}
    final = pb.poll(cancelled, client=openai_client, progress=False)
    assert (final["status"] == "cancelled").all()


@pytest.mark.slow
def test_readme_sending_example_runs_and_prints_what_it_says(
    testdata, tmp_path, monkeypatch
) -> None:
    import shutil

    from portfolio_batch._backend import reset_client

    blocks = readme.python_blocks(
        readme.section("pipeline").split("<!-- aggregate docs below -->")[0]
    )
    assert len(blocks) == 1
    shutil.copytree(testdata, tmp_path / "testdata")
    monkeypatch.chdir(tmp_path)
    try:
        printed = readme.run_block(blocks[0])
    finally:
        reset_client()
    assert printed == readme.expected_output(blocks[0])


def test_after_a_failed_batch_creation_submit_again_creates_it(local_server, manifest) -> None:
    client = local_server.client(max_retries=0)
    local_server.configure(fault_rate_500=1.0, fault_endpoints=frozenset({"batches.create"}))
    with pytest.raises(SubmitError, match=r"run submit\(\) again"):
        pb.submit(manifest.iloc[:1], client=client)
    assert _server_batches(client) == []
    local_server.configure(fault_rate_500=0.0)
    again = pb.submit(manifest.iloc[:1], client=client)  # what the error said to do
    assert again["batch_id"].notna().all() and (again["status"] != "queued").all()
    assert len(_server_batches(client)) == 1


def test_a_batch_made_but_never_recorded_is_found_not_made_again(local_server, manifest) -> None:
    # A process killed between the create POST and the record: the next creation of the shard
    # looks on the server first and records the batch it finds.
    from portfolio_batch._create import submit_ready

    client = local_server.client(max_retries=0)
    local_server.configure(fault_rate_500=1.0, fault_endpoints=frozenset({"batches.create"}))
    with pytest.raises(SubmitError):
        pb.submit(manifest.iloc[:1], client=client, run_id="run-crash")
    local_server.configure(fault_rate_500=0.0)
    with open_registry() as reg:
        shard = reg.shard("run-crash", 0)
        made = client.batches.create(
            input_file_id=next(iter(client.files.list())).id,
            endpoint=shard["endpoint"],
            completion_window="24h",
            metadata={"pb_sha256": shard["sha256"], "pb_run_id": "run-crash", "pb_shard": "0"},
        )
        assert submit_ready(reg, client, ["run-crash"]) == 1
        assert reg.shard("run-crash", 0)["batch_id"] == made.id
    assert [b.id for b in _server_batches(client)] == [made.id]


def _complete(client: Any, manifest: pd.DataFrame) -> pd.DataFrame:
    return pb.poll(pb.submit(manifest, client=client), client=client, interval=0.05, progress=False)


def test_a_completed_batch_whose_results_the_server_deleted_is_sent_again(
    openai_client, manifest, requests, caplog
) -> None:
    # A portfolio re-run more than 30 days later: OpenAI has deleted the old batch's output and
    # it was never downloaded here. Its rows are kept, missing with the reason, and sent again
    # either by retry_failed or by submitting the same requests: never handed the dead batch.
    done = _complete(openai_client, manifest.iloc[:2])
    gone_batch, gone_file = done["batch_id"].iloc[0], done["output_file_id"].iloc[0]
    openai_client.files.delete(gone_file)
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        results = pb.aggregate_df(done, requests.iloc[:8], client=openai_client)
    assert results["status"].tolist() == ["missing"] * 4 + ["succeeded"] * 4
    lost = results.iloc[:4]
    assert lost["error_code"].eq("result_file_gone").all()
    assert lost["error_message"].str.contains(gone_file).all()
    assert lost["batch_id"].eq(gone_batch).all()
    assert gone_file in caplog.text
    assert [f.get("gone", False) for f in results.attrs["files"]] == [False, True]

    retry = pb.retry_failed(results, requests.iloc[:8])
    assert retry.index.tolist() == lost.index.tolist()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        again = _complete(openai_client, manifest.iloc[:2])
    assert again["batch_id"].iloc[0] != gone_batch  # sent again
    assert again["batch_id"].iloc[1] == done["batch_id"].iloc[1]  # still has its results
    assert "is gone from the server" in caplog.text and gone_batch in caplog.text
    final = pb.aggregate_df(again, requests.iloc[:8], client=openai_client)
    assert final["status"].eq("succeeded").all()
    # The new batch is the live one now: a third submit reuses it.
    third = pb.submit(manifest.iloc[:2], client=openai_client)
    assert third["batch_id"].tolist() == again["batch_id"].tolist()


def test_results_already_downloaded_keep_the_batch_reused(
    openai_client, manifest, requests
) -> None:
    first = _complete(openai_client, manifest.iloc[:1])
    pb.aggregate_df(first, requests.iloc[:4], client=openai_client)  # caches the files
    openai_client.files.delete(first["output_file_id"].iloc[0])
    again = pb.submit(manifest.iloc[:1], client=openai_client)
    assert again["batch_id"].tolist() == first["batch_id"].tolist()
    assert len(_server_batches(openai_client)) == 1
    results = pb.aggregate_df(again, requests.iloc[:4], client=openai_client)
    assert results["status"].eq("succeeded").all()


def test_a_registry_entry_never_polled_again_is_refreshed_before_reuse(
    openai_client, manifest
) -> None:
    # Submitted, never polled (the registry still says validating), a month passes and the
    # server's result file is gone: submit asks the server, sees it, and sends the shard again.
    first = pb.submit(manifest.iloc[:1], client=openai_client)
    batch_id = first["batch_id"].iloc[0]
    done = pb.poll(first, client=openai_client, interval=0.05, progress=False)  # server side
    with open_registry() as reg:
        reg.conn.execute(
            "UPDATE batches SET status = 'validating', output_file_id = NULL, updated_at = 0 "
            "WHERE batch_id = ?",
            (batch_id,),
        )
        reg.conn.execute("UPDATE shards SET status = 'validating' WHERE batch_id = ?", (batch_id,))
    openai_client.files.delete(done["output_file_id"].iloc[0])
    again = pb.submit(manifest.iloc[:1], client=openai_client)
    assert again["batch_id"].iloc[0] != batch_id
    assert pb.jobs().set_index("batch_id").loc[batch_id, "status"] == "completed"


def test_a_month_later_the_same_portfolio_is_sent_again_and_its_results_come_back(
    local_server, openai_client, manifest, requests
) -> None:
    # The server's clock jumps past OpenAI's 30-day retention: the input and output files of
    # the first run are gone. Submitting the same shard again must upload it again and make a
    # batch whose results can be read, not hand back the old batch or the old upload.
    first = _complete(openai_client, manifest.iloc[:1])
    local_server.configure(clock_offset=31 * 24 * 3600)
    old = pb.aggregate_df(first, requests.iloc[:4], client=openai_client)
    assert old["error_code"].eq("result_file_gone").all()
    again = _complete(openai_client, manifest.iloc[:1])
    assert again["batch_id"].iloc[0] != first["batch_id"].iloc[0]
    assert again["input_file_id"].iloc[0] != first["input_file_id"].iloc[0]
    results = pb.aggregate_df(again, requests.iloc[:4], client=openai_client)
    assert results["status"].eq("succeeded").all()


def _half_failing(local_server, openai_client, testdata: Path, tmp_path: Path):
    """A completed batch with both files: 3 of 8 requests fail (context length)."""
    portfolio = pd.read_csv(testdata / "portfolio.csv").head(8)
    portfolio["notes"] = ["x " * 3000 if i < 3 else "" for i in range(8)]
    requests = pb.build_requests(portfolio)
    manifest = pb.to_jsonl(requests, tmp_path / "half", max_requests=8)
    local_server.configure(context_tokens=2500)
    done = _complete(openai_client, manifest)
    assert done[["completed", "failed"]].values.tolist() == [[5, 3]]
    return requests, manifest, done


def test_both_result_files_gone_mark_each_request_once_naming_both(
    local_server, openai_client, testdata, tmp_path
) -> None:
    requests, _, done = _half_failing(local_server, openai_client, testdata, tmp_path)
    out_id, err_id = done["output_file_id"].iloc[0], done["error_file_id"].iloc[0]
    openai_client.files.delete(out_id)
    openai_client.files.delete(err_id)
    results = pb.aggregate_df(done, requests, client=openai_client)
    assert len(results) == 8
    assert results["error_code"].eq("result_file_gone").all()
    assert results["error_message"].str.contains(out_id).all()
    assert results["error_message"].str.contains(err_id).all()
    gone = [(f["kind"], f["requests_marked"]) for f in results.attrs["files"]]
    assert gone == [("output", 8), ("error", 8)]


def test_only_a_lost_output_file_makes_submit_send_the_shard_again(
    local_server, openai_client, testdata, tmp_path
) -> None:
    # The error file holds failures, which retry_failed resends: losing it alone must not pay
    # again for the five answers already had.
    requests, manifest, done = _half_failing(local_server, openai_client, testdata, tmp_path)
    download_file(done["output_file_id"].iloc[0], client=openai_client)
    openai_client.files.delete(done["error_file_id"].iloc[0])
    again = pb.submit(manifest, client=openai_client)
    assert again["batch_id"].tolist() == done["batch_id"].tolist()
    results = pb.aggregate_df(again, requests, client=openai_client)
    assert results["status"].value_counts().to_dict() == {"succeeded": 5, "missing": 3}
    assert pb.retry_failed(results, requests).index.tolist() == requests.index[:3].tolist()


def test_a_client_that_cannot_see_the_batch_is_an_error_not_a_lost_result(
    manifest, requests, tmp_path
) -> None:
    # With another key or project every file is a 404: that must not read as "the results are
    # gone" (rows to resend, a batch to pay again). Here: the same address, another server.
    from portfolio_batch.local import serve

    with serve(engine="rules", data_dir=tmp_path / "first") as first:
        port = first.port
        done = _complete(first.client(), manifest.iloc[:1])
    with serve(engine="rules", port=port, data_dir=tmp_path / "second") as second:
        stranger = second.client()
        with pytest.raises(pb.DownloadError, match="not visible with this client"):
            pb.aggregate_df(done, requests.iloc[:4], client=stranger)
        with pytest.raises(SubmitError, match="not visible with this client"):
            pb.submit(manifest.iloc[:1], client=stranger)
        assert list(stranger.batches.list()) == []


def test_a_failing_check_of_a_gone_file_is_the_packages_error_and_sends_nothing(
    local_server, openai_client, manifest, requests
) -> None:
    done = _complete(openai_client, manifest.iloc[:1])
    openai_client.files.delete(done["output_file_id"].iloc[0])
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.retrieve"])
    flaky = local_server.client(max_retries=0)
    with pytest.raises(pb.DownloadError, match="checking the batch itself failed"):
        pb.aggregate_df(done, requests.iloc[:4], client=flaky)
    with pytest.raises(SubmitError, match=r"checking batch \S+ \(shard 0 of run"):
        pb.submit(manifest.iloc[:1], client=flaky)
    local_server.configure(fault_rate_500=0.0)
    assert len(_server_batches(openai_client)) == 1  # nothing was sent meanwhile
    again = _complete(openai_client, manifest.iloc[:1])
    assert again["batch_id"].iloc[0] != done["batch_id"].iloc[0]
