"""poll: to the end, with progress that never calls `finalizing` done, failures that name the line,
timeouts and Ctrl-C that leave everything resumable, and queue-aware submission."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._contract import ACTIVE, TERMINAL
from portfolio_batch._poll import progress_state
from portfolio_batch._registry import open_registry
from portfolio_batch.errors import BatchFailedError, PollTimeoutError


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pd.read_csv(testdata / "portfolio.csv").head(12))


@pytest.fixture
def manifest(requests: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return pb.to_jsonl(requests, tmp_path / "jsonl", max_requests=4)


def _hand_manifest(
    tmp_path: Path, lines: list[bytes], *, model: str = "gpt-4o-mini"
) -> pd.DataFrame:
    """A one-shard manifest over lines written as given (to make the server reject one)."""
    path = tmp_path / "hand.jsonl"
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(data)
    return pd.DataFrame(
        {
            "shard": [0],
            "path": [str(path)],
            "n_requests": [len(lines)],
            "n_bytes": [len(data)],
            "sha256": [hashlib.sha256(data).hexdigest()],
            "est_input_tokens": [100 * len(lines)],
            "max_output_tokens": [400 * len(lines)],
            "first_custom_id": ["a"],
            "last_custom_id": ["z"],
            "model": [model],
            "endpoint": ["/v1/chat/completions"],
        }
    )


def _line(custom_id: str) -> bytes:
    return orjson.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 20,
            },
        }
    )


def test_progress_state_counts_a_batch_done_only_when_terminal() -> None:
    frame = pd.DataFrame(
        {
            "status": ["finalizing", "completed", "in_progress", "queued"],
            "n_requests": [4, 4, 4, 4],
            "completed": [4, 3, 2, 0],
            "failed": [0, 1, 0, 0],
        }
    )
    done, total, postfix = progress_state(frame)
    assert total == 4 * 5
    assert done == 4 + 5 + 2 + 0
    assert "finalizing=1" in postfix and "completed=1" in postfix and "queued=1" in postfix
    done, total, _ = progress_state(frame.assign(status="finalizing"))
    assert done < total


def test_poll_runs_every_batch_to_completion(openai_client, manifest) -> None:
    jobs = pb.submit(manifest, client=openai_client)
    final = pb.poll(jobs, client=openai_client, progress=False)
    assert final["status"].tolist() == ["completed"] * 3
    assert final["completed"].tolist() == final["n_requests"].tolist()
    assert final["failed"].sum() == 0
    assert final["output_file_id"].str.startswith("file").all()
    assert final["batch_id"].tolist() == jobs["batch_id"].tolist()
    # The registry holds the same final state.
    stored = pb.jobs(run_id=jobs["run_id"].iloc[0])
    assert stored["status"].tolist() == ["completed"] * 3
    assert stored["output_file_id"].tolist() == final["output_file_id"].tolist()
    # Actual cost from each batch's usage at batch prices, next to the estimate.
    with open_registry() as reg:
        costs = [reg.batch(b)["actual_cost_usd"] for b in final["batch_id"]]
        run = reg.run(final["run_id"].iloc[0])
    assert all(0 < c <= e for c, e in zip(costs, final["est_cost_usd"], strict=True))
    assert run["actual_cost_usd"] == pytest.approx(sum(costs))


def test_finalizing_is_never_reported_as_done(
    local_server, openai_client, manifest, capsys
) -> None:
    local_server.configure(request_delay=0.25)
    snapshots: list[pd.DataFrame] = []
    final = pb.poll(
        pb.submit(manifest, client=openai_client),
        client=openai_client,
        on_update=snapshots.append,
        progress=True,
    )
    assert final["status"].eq("completed").all()
    seen = set().union(*(set(s["status"]) for s in snapshots))
    assert "in_progress" in seen  # the polls did watch the batches run
    for snap in snapshots[:-1]:
        assert not snap["status"].isin(TERMINAL).all()
        done, total, _ = progress_state(snap)
        assert done < total
        for row in snap[snap["status"] == "finalizing"].itertuples():
            one = progress_state(snap.loc[[row.Index]])
            assert one[0] < one[1]
    assert progress_state(snapshots[-1])[0] == progress_state(snapshots[-1])[1]
    err = capsys.readouterr().err
    # tqdm's text bar: 100 % only on its last refresh, with the statuses in the postfix.
    refreshes = [r for r in err.replace("\n", "\r").split("\r") if "batches" in r]
    assert "100%" in refreshes[-1] and "completed=3" in refreshes[-1]
    assert not any("100%" in r for r in refreshes if "completed=3" not in r)
    if "finalizing" in seen:
        assert any("finalizing=" in r for r in refreshes)


def test_a_validation_failure_names_the_line(openai_client, tmp_path) -> None:
    manifest = _hand_manifest(tmp_path, [_line("a"), b'{"custom_id": "b", broken', _line("c")])
    jobs = pb.submit(manifest, client=openai_client)
    with pytest.raises(BatchFailedError, match="line 2: invalid_json_line") as info:
        pb.poll(jobs, client=openai_client, progress=False)
    assert str(manifest["path"].iloc[0]) in str(info.value)
    assert any(e["line"] == 2 and e["code"] == "invalid_json_line" for e in info.value.errors)
    assert info.value.jobs["status"].tolist() == ["failed"]
    frame = pb.poll(jobs, client=openai_client, progress=False, raise_on_failed=False)
    assert frame["status"].tolist() == ["failed"]


def test_token_limit_without_a_queue_suggests_smaller_shards(
    local_server, openai_client, manifest
) -> None:
    local_server.configure(max_enqueued_tokens=50)
    jobs = pb.submit(manifest.iloc[:1], client=openai_client)
    with pytest.raises(BatchFailedError, match="token_limit_exceeded") as info:
        pb.poll(jobs, client=openai_client, progress=False)
    assert "max_input_tokens=" in str(info.value)
    assert "max_enqueued_tokens=" in str(info.value)


def test_queue_aware_submission_completes_every_shard(
    local_server, openai_client, requests, tmp_path
) -> None:
    manifest = pb.to_jsonl(requests, tmp_path / "q", max_requests=3, max_input_tokens=10_000)
    per_shard = int(manifest["est_input_tokens"].max())
    limit = int(per_shard * 1.5)  # room for one shard at a time
    local_server.configure(max_enqueued_tokens=limit, request_delay=0.02)
    jobs = pb.submit(manifest, client=openai_client, max_enqueued_tokens=limit)
    assert jobs["status"].iloc[0] != "queued"
    assert (jobs["status"].iloc[1:] == "queued").all()
    assert jobs["batch_id"].iloc[1:].isna().all()
    snapshots: list[pd.DataFrame] = []
    final = pb.poll(jobs, client=openai_client, progress=False, on_update=snapshots.append)
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    # Never more than one shard enqueued at a time.
    for snap in snapshots:
        assert snap["status"].isin(ACTIVE).sum() <= 1
    batches = list(openai_client.batches.list(limit=100))
    assert len(batches) == len(manifest)  # no failed attempts: each shard waited its turn


def test_token_limit_failures_are_requeued_not_lost(
    local_server, openai_client, requests, tmp_path
) -> None:
    manifest = pb.to_jsonl(requests, tmp_path / "q", max_requests=4, max_input_tokens=10_000)
    per_shard = int(manifest["est_input_tokens"].max())
    # The server's real limit is tighter than the one we were told.
    local_server.configure(max_enqueued_tokens=int(per_shard * 1.5), request_delay=0.02)
    jobs = pb.submit(manifest, client=openai_client, max_enqueued_tokens=per_shard * 10)
    final = pb.poll(jobs, client=openai_client, progress=False)
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    statuses = [b.status for b in openai_client.batches.list(limit=100)]
    assert statuses.count("completed") == len(manifest)


def test_timeout_says_the_batches_keep_running_and_how_to_resume(
    local_server, openai_client, manifest
) -> None:
    local_server.configure(request_delay=0.5)
    jobs = pb.submit(manifest, client=openai_client, run_id="run-slow")
    with pytest.raises(PollTimeoutError, match="keep running") as info:
        pb.poll(jobs, client=openai_client, timeout=0.3, progress=False)
    assert 'pb.poll(pb.resume("run-slow"))' in str(info.value)
    assert not info.value.jobs["status"].isin(TERMINAL).all()
    pb.cancel(jobs, client=openai_client)


def test_ctrl_c_prints_how_to_resume_and_loses_nothing(
    local_server, openai_client, manifest, capsys
) -> None:
    local_server.configure(request_delay=0.05)
    jobs = pb.submit(manifest, client=openai_client, run_id="run-k")

    def interrupt(_: pd.DataFrame) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pb.poll(jobs, client=openai_client, progress=False, on_update=interrupt)
    err = capsys.readouterr().err
    assert 'pb.poll(pb.resume("run-k"))' in err
    assert "portfolio-batch jobs resume run-k" in err
    local_server.configure(request_delay=0.0)
    final = pb.poll(pb.resume("run-k", client=openai_client), client=openai_client, progress=False)
    assert final["batch_id"].tolist() == jobs["batch_id"].tolist()
    assert final["status"].eq("completed").all()


def test_expired_and_cancelled_are_terminal_not_errors(
    local_server, openai_client, manifest
) -> None:
    local_server.configure(request_delay=0.3, completion_window_seconds=0.5)
    first = pb.submit(manifest.iloc[:1], client=openai_client)
    local_server.configure(completion_window_seconds=3600)
    second = pb.submit(manifest.iloc[1:2], client=openai_client)
    pb.cancel(second, client=openai_client)
    final = pb.poll(pd.concat([first, second]), client=openai_client, progress=False)
    assert final["status"].tolist() == ["expired", "cancelled"]


def test_interval_must_be_auto_or_seconds(openai_client, manifest) -> None:
    jobs = pb.submit(manifest.iloc[:1], client=openai_client)
    with pytest.raises(pb.InputError, match="interval"):
        pb.poll(jobs, client=openai_client, interval="fast")
