"""Reliability of submit/poll (issue 4, tests 1, 2 and 5): never a second paid batch. The creation
rule itself, and issue 11's reproductions, are in test_creation_rule.py.

1. 429/500 bursts on every endpoint, and POSTs whose response is lost after the server acted on
   them: everything completes and the server holds exactly one batch and one file per shard.
2. A child process killed with SIGKILL while polling, then resume: same batch ids, complete,
   no second batch.
5. The registry deleted, then the same requests submitted: the batch is found by its metadata.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._registry import registry_path


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pd.read_csv(testdata / "portfolio.csv").head(12))


@pytest.fixture
def manifest(requests: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return pb.to_jsonl(requests, tmp_path / "jsonl", max_requests=4)


def _live_batches_per_shard(client: Any) -> collections.Counter[tuple[str, str]]:
    live = collections.Counter()
    for batch in client.batches.list(limit=100):
        if batch.status not in ("cancelled", "cancelling", "failed"):
            md = batch.metadata or {}
            live[(md.get("pb_run_id"), md.get("pb_shard"))] += 1
    return live


def _through(transport: httpx2.BaseTransport, local_server: Any) -> openai.OpenAI:
    """A client of the local server whose HTTP goes through ``transport`` (faults, races)."""
    return openai.OpenAI(
        base_url=str(local_server.base_url),
        api_key="test",
        http_client=httpx2.Client(transport=transport),
    )


class LostResponses(httpx2.BaseTransport):
    """Forwards every request to the server, then, for the first ``n`` successful POSTs to each
    of ``/files`` and ``/batches``, throws the response away and raises a read timeout: the server
    acted, the client never heard, and the SDK retries the POST (with no idempotency key)."""

    def __init__(self, n: int) -> None:
        self.inner = httpx2.HTTPTransport()
        self.left = {"/files": n, "/batches": n}
        self.lost: list[str] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        path = request.url.path.removeprefix("/v1")
        if request.method == "POST" and response.status_code == 200 and self.left.get(path, 0) > 0:
            self.left[path] -= 1
            response.read()
            response.close()
            self.lost.append(path)
            raise httpx2.ReadTimeout("response lost (test transport)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_1_fault_bursts_and_retried_posts_leave_one_batch_per_shard(
    local_server, manifest, requests
) -> None:
    transport = LostResponses(n=1)
    client = openai.OpenAI(
        base_url=str(local_server.base_url),
        api_key="test",
        max_retries=10,
        http_client=httpx2.Client(transport=transport),
    )
    # Real batches run for minutes: the duplicates are still cancellable when they are found.
    local_server.configure(
        fault_rate_429=0.15, fault_rate_500=0.05, seed=7, retry_after=0.01, request_delay=0.8
    )
    jobs = pb.submit(manifest, client=client, run_id="run-faults")
    final = pb.poll(jobs, client=client, progress=False)
    local_server.configure(fault_rate_429=0.0, fault_rate_500=0.0)

    assert transport.lost == ["/files", "/batches"]
    # The POSTs whose replies were lost were not retried by the SDK: the server was looked at
    # instead and what they made was kept. Nothing was made twice, not even to be cancelled.
    everything = list(local_server.client().batches.list(limit=100))
    assert len(everything) == len(manifest)
    assert not any(b.status in ("cancelling", "cancelled") for b in everything)
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    observer = local_server.client()
    live = _live_batches_per_shard(observer)
    assert live == {("run-faults", str(s)): 1 for s in range(len(manifest))}
    for row in final.itertuples():
        assert observer.batches.retrieve(row.batch_id).status == "completed"
    names = collections.Counter(f.filename for f in observer.files.list(purpose="batch"))
    assert names == {f"pb-{sha}.jsonl": 1 for sha in manifest["sha256"]}


CHILD = textwrap.dedent(
    """
    import sys, openai, pandas as pd, portfolio_batch as pb
    base_url, manifest_path = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="test")
    jobs = pb.submit(pd.read_pickle(manifest_path), client=client, run_id="run-child")
    print("SUBMITTED", flush=True)
    pb.poll(jobs, client=client, progress=False)
    print("FINISHED", flush=True)
    """
)


@pytest.mark.slow
def test_2_killed_while_polling_then_resumed(local_server, manifest, requests, tmp_path) -> None:
    local_server.configure(request_delay=0.2)
    manifest_path = tmp_path / "manifest.pkl"
    manifest.to_pickle(manifest_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(local_server.base_url), str(manifest_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # The same PORTFOLIO_BATCH_HOME: the registry survives the kill.
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "SUBMITTED", child.stderr.read() if child.stderr else ""
        time.sleep(0.5)  # well inside the polling loop
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    client = local_server.client()
    recorded = pb.jobs(run_id="run-child")
    assert recorded["batch_id"].notna().all()
    assert not recorded["status"].isin(["completed"]).all()  # killed before the end

    local_server.configure(request_delay=0.0)
    final = pb.poll(pb.resume("run-child", client=client), client=client, progress=False)
    assert final["batch_id"].tolist() == recorded["batch_id"].tolist()
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    # Submitting again (a user re-running the cell) makes nothing new either.
    again = pb.submit(manifest, client=client)
    assert again["batch_id"].tolist() == recorded["batch_id"].tolist()
    assert len(list(client.batches.list(limit=100))) == len(manifest)


def test_5_registry_deleted_then_the_batch_is_found_by_its_metadata(
    openai_client, manifest
) -> None:
    first = pb.submit(manifest, client=openai_client)
    for suffix in ("", "-wal", "-shm"):
        Path(str(registry_path()) + suffix).unlink(missing_ok=True)
    assert pb.jobs().empty
    second = pb.submit(manifest, client=openai_client)
    assert second["batch_id"].tolist() == first["batch_id"].tolist()
    assert second["run_id"].tolist() == first["run_id"].tolist()
    assert len(list(openai_client.batches.list(limit=100))) == len(manifest)
    assert len(list(openai_client.files.list(purpose="batch"))) == len(manifest)
    # And it is recorded again: the next submit is answered from the registry.
    assert pb.jobs()["batch_id"].tolist() != []
    final = pb.poll(second, client=openai_client, progress=False)
    assert final["status"].eq("completed").all()


class InterruptAfterCreate(httpx2.BaseTransport):
    """Ctrl-C at the worst moment: the server has created the batch, the client never records it."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.armed = True

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        if self.armed and request.method == "POST" and request.url.path == "/v1/batches":
            self.armed = False
            response.read()
            response.close()
            raise KeyboardInterrupt
        return response

    def close(self) -> None:
        self.inner.close()


def test_interrupted_between_create_and_record_adopts_the_batch(
    local_server, manifest, requests
) -> None:
    client = _through(InterruptAfterCreate(), local_server)
    with pytest.raises(KeyboardInterrupt):
        pb.submit(manifest, client=client, run_id="run-int")
    observer = local_server.client()
    assert len(list(observer.batches.list(limit=100))) == 1  # created, not recorded
    assert pb.jobs(run_id="run-int")["batch_id"].isna().all()
    final = pb.poll(pb.resume("run-int", client=client), client=client, progress=False)
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    assert _live_batches_per_shard(observer) == {
        ("run-int", str(s)): 1 for s in range(len(manifest))
    }
    assert len(list(observer.batches.list(limit=100))) == len(manifest)


def test_two_simultaneous_submits_of_one_manifest_make_one_batch_per_shard(
    local_server, manifest
) -> None:
    local_server.configure(latency=0.05)  # widens the window between the check and the create
    barrier = threading.Barrier(2)
    frames: list[pd.DataFrame] = []
    errors: list[BaseException] = []

    def submit() -> None:
        client = local_server.client()
        barrier.wait()
        try:
            frames.append(pb.submit(manifest, client=client))
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    observer = local_server.client()
    assert len(list(observer.batches.list(limit=100))) == len(manifest)
    assert frames[0]["run_id"].tolist() == frames[1]["run_id"].tolist()
    final = pb.poll(frames[1], client=observer, progress=False, timeout=60)
    assert final["status"].eq("completed").all()
    assert len(list(observer.batches.list(limit=100))) == len(manifest)
