"""Reliability of submit/poll (issue 4, tests 1, 2 and 5): never a second paid batch.

1. 429/500 bursts on every endpoint, and POSTs whose response is lost after the server acted on
   them: everything completes and the server holds exactly one live batch and one file per shard.
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
from portfolio_batch.registry import registry_path


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
    # The lost response did create an extra batch (and upload): it was cancelled (deleted).
    everything = list(local_server.client().batches.list(limit=100))
    assert len(everything) == len(manifest) + 1
    assert sum(b.status in ("cancelling", "cancelled") for b in everything) == 1
    assert final["status"].eq("completed").all()
    assert final["completed"].sum() == len(requests)
    observer = local_server.client()
    live = _live_batches_per_shard(observer)
    assert live == {("run-faults", str(s)): 1 for s in range(len(manifest))}
    # The duplicates the retried POSTs made were cancelled and the kept one is the recorded one.
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
    recorded = pb.jobs("run-child")
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
    assert pb.jobs("run-int")["batch_id"].isna().all()
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


CREATOR = textwrap.dedent(
    """
    import sys, openai, pandas as pd, portfolio_batch as pb
    base_url, manifest_path = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    pb.submit(pd.read_pickle(manifest_path), client=client, run_id="run-killed")
    """
)


@pytest.mark.slow
def test_a_creation_claim_left_by_a_killed_process_is_taken_over_without_the_lease(
    local_server, manifest, tmp_path, monkeypatch
) -> None:
    # A kernel restarted while submit() was uploading or creating: the shard's creation claim
    # is signed by a process that no longer exists, so the next poll takes over once a request
    # it had in flight could have landed, not after the 15-minute lease, and makes no second
    # batch.
    from portfolio_batch import create
    from portfolio_batch.registry import open_registry

    monkeypatch.setattr(create, "DEAD_OWNER_GRACE_SECONDS", 2.0)
    local_server.configure(latency=1.0)  # every call takes a second: the kill lands mid-creation
    manifest_path = tmp_path / "manifest.pkl"
    manifest.iloc[:1].to_pickle(manifest_path)
    script = tmp_path / "creator.py"
    script.write_text(CREATOR)
    child = subprocess.Popen(
        [sys.executable, str(script), str(local_server.base_url), str(manifest_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        claimed = None
        while claimed is None and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            if registry_path().exists():
                with open_registry() as reg:
                    row = reg.shard("run-killed", 0)
                claimed = row if row and row["creating"] and row["batch_id"] is None else None
        assert claimed is not None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert pb.jobs("run-killed")["batch_id"].isna().all()

    local_server.configure(latency=0.0)
    client = local_server.client()
    started = time.monotonic()
    final = pb.poll(
        pb.resume("run-killed", client=client), client=client, progress=False, timeout=60
    )
    assert time.monotonic() - started < 60
    assert final["status"].eq("completed").all()
    time.sleep(1.5)  # a create the dead process had in flight has landed by now
    assert _live_batches_per_shard(client) == {("run-killed", "0"): 1}


class TakeoverDuringCreate(httpx2.BaseTransport):
    """While our create POST is in flight, another caller takes the shard over (our claim has
    outlived its lease) and makes and records its own batch."""

    def __init__(self, observer: Any) -> None:
        self.inner = httpx2.HTTPTransport()
        self.observer = observer
        self.theirs: str | None = None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.theirs is None and request.method == "POST" and request.url.path == "/v1/batches":
            from portfolio_batch.registry import open_registry

            with open_registry() as reg:
                shard = reg.shard("run-slow", 0)
                other = "elsewhere/x/0:1:beef"
                reg.conn.execute(
                    "UPDATE shards SET creating_owner = ? WHERE run_id = 'run-slow'", (other,)
                )
                theirs = self.observer.batches.create(
                    input_file_id=shard["input_file_id"],
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    metadata={"pb_run_id": "run-slow", "pb_shard": "0"},
                )
                reg.record_batch(
                    theirs.model_dump(),
                    backend=shard["backend"],
                    run_id="run-slow",
                    shard=0,
                    idem_key=shard["idem_key"],
                    sha256=shard["sha256"],
                    only_if_free=True,
                )
                self.theirs = theirs.id
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_batch_made_after_losing_the_claim_is_cancelled_not_kept(local_server, manifest) -> None:
    local_server.configure(request_delay=0.2)  # both batches still running when ours is cancelled
    observer = local_server.client()
    transport = TakeoverDuringCreate(observer)
    client = _through(transport, local_server)
    jobs = pb.submit(manifest.iloc[:1], client=client, run_id="run-slow")
    assert transport.theirs is not None
    assert jobs["batch_id"].tolist() == [transport.theirs]
    statuses = {b.id: b.status for b in observer.batches.list(limit=100)}
    assert len(statuses) == 2
    ours = next(b for b in statuses if b != transport.theirs)
    assert statuses[ours] in ("cancelling", "cancelled")
    assert _live_batches_per_shard(observer) == {("run-slow", "0"): 1}


# -- two callers of one shard whose claim outlived its lease (a holder slower than 15 minutes,
# -- here a 1 s lease): whatever the interleaving, the shard ends with one live batch.
def _queued_shard(client: Any, manifest: pd.DataFrame, monkeypatch) -> dict[str, Any]:
    import importlib

    from portfolio_batch.registry import open_registry

    submit_module = importlib.import_module("portfolio_batch.submit")  # pb.submit is the function
    monkeypatch.setattr(submit_module, "submit_ready", lambda *a, **k: 0)  # registered only
    jobs = pb.submit(manifest.iloc[:1], client=client)
    with open_registry() as reg:
        return reg.shard(jobs["run_id"].iloc[0], 0)


def _race(client: Any, shard: dict[str, Any], a_first: Any, b_go: Any) -> dict[str, Any]:
    """Caller A starts; once ``a_first`` is set and the lease has passed, caller B starts."""
    from portfolio_batch import create
    from portfolio_batch.registry import open_registry

    out: dict[str, Any] = {}

    def work(name: str) -> None:
        with open_registry() as reg:
            out[name] = create.create_shard_batch(reg, client, create.ServerIndex(client), shard)
        if name == "B":
            b_go.set()

    a = threading.Thread(target=work, args=("A",), name="A")
    a.start()
    assert a_first.wait(10)
    time.sleep(1.1)  # A's claim is past its lease
    b = threading.Thread(target=work, args=("B",), name="B")
    b.start()
    a.join(30)
    b.join(30)
    with open_registry() as reg:
        out["attached"] = reg.shard(shard["run_id"], 0)["batch_id"]
    return out


def _a_creates(request: httpx2.Request) -> bool:
    """The request is caller A's (its thread is named "A") create POST."""
    return (
        threading.current_thread().name == "A"
        and request.method == "POST"
        and request.url.path == "/v1/batches"
    )


class HeldCreateReply(httpx2.BaseTransport):
    """A's create POST reaches the server; its reply is held until B has listed the server."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.posted, self.release = threading.Event(), threading.Event()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        if _a_creates(request):
            response.read()
            self.posted.set()
            self.release.wait(10)
        return response


def test_a_taker_that_adopts_the_slow_holders_batch_keeps_it_live(
    local_server, manifest, monkeypatch
) -> None:
    from portfolio_batch import create

    local_server.configure(request_delay=0.5)
    transport = HeldCreateReply()
    client = _through(transport, local_server)
    shard = _queued_shard(client, manifest, monkeypatch)
    monkeypatch.setattr(create, "CREATE_LEASE_SECONDS", 1.0)
    listed = create.ServerIndex.batches_for

    def batches_for(self: Any, *args: Any, **kwargs: Any) -> Any:
        found = listed(self, *args, **kwargs)
        if threading.current_thread().name == "B":
            transport.release.set()  # A's reply arrives now: it records, B adopts
            time.sleep(0.5)
        return found

    monkeypatch.setattr(create.ServerIndex, "batches_for", batches_for)
    out = _race(client, shard, transport.posted, threading.Event())
    statuses = {b.id: b.status for b in client.batches.list()}
    assert len(statuses) == 1
    assert statuses[out["attached"]] not in ("cancelling", "cancelled")


class LateLostCreate(httpx2.BaseTransport):
    """A's create POST reaches the server only after B recorded its batch, and its reply is lost,
    so the SDK retries it and A looks for the copies it made."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.in_post, self.b_recorded = threading.Event(), threading.Event()
        self.lost = False

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        a_post = _a_creates(request)
        if a_post and not self.lost:
            self.in_post.set()
            self.b_recorded.wait(10)
        response = self.inner.handle_request(request)
        if a_post and not self.lost:
            self.lost = True
            response.read()
            response.close()
            raise httpx2.ReadTimeout("reply lost", request=request)
        return response


def test_a_slow_holders_retried_copies_are_cancelled_not_the_shards_batch(
    local_server, manifest, monkeypatch
) -> None:
    from portfolio_batch import create

    local_server.configure(request_delay=2.0)
    transport = LateLostCreate()
    client = _through(transport, local_server)
    shard = _queued_shard(client, manifest, monkeypatch)
    monkeypatch.setattr(create, "CREATE_LEASE_SECONDS", 1.0)
    out = _race(client, shard, transport.in_post, transport.b_recorded)
    assert out["A"]["id"] == out["B"]["id"] == out["attached"]
    statuses = {b.id: b.status for b in client.batches.list()}
    assert statuses[out["attached"]] not in ("cancelling", "cancelled")
    assert _live_batches_per_shard(client) == {(shard["run_id"], "0"): 1}


def test_an_extra_batch_that_cannot_be_cancelled_is_named_with_the_way_out(
    local_server, manifest, monkeypatch
) -> None:
    from portfolio_batch import create

    local_server.configure(request_delay=0.2)
    transport = TakeoverDuringCreate(local_server.client())
    client = _through(transport, local_server)

    def cannot_cancel(c: Any, batch_id: str) -> Any:
        raise openai.APIConnectionError(request=httpx2.Request("POST", "http://x/v1/batches"))

    monkeypatch.setattr(create, "cancel_batch", cannot_cancel)
    with pytest.raises(pb.SubmitError, match=r"extra copies of shard 0 of run run-slow") as err:
        pb.submit(manifest.iloc[:1], client=client, run_id="run-slow")
    assert "client.batches.cancel(" in str(err.value)


def test_a_rival_recording_between_the_choice_and_the_record_keeps_its_batch(
    local_server, manifest, monkeypatch
) -> None:
    # A's create reply is lost, the SDK's retry makes a second copy and A chooses one; before
    # A records it, B (A's claim past its lease) adopts the other copy and records it. A must
    # then cancel only what is not the shard's batch.
    from portfolio_batch import create

    class LostThenLate(LostResponses):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            try:
                return super().handle_request(request)
            except httpx2.ReadTimeout:
                time.sleep(1.05)  # the retry's copy is a second younger: A and B choose apart
                raise

    local_server.configure(request_delay=2.0)
    transport = LostThenLate(0)
    client = _through(transport, local_server)
    shard = _queued_shard(client, manifest, monkeypatch)
    transport.left["/batches"] = 1
    monkeypatch.setattr(create, "CREATE_LEASE_SECONDS", 1.0)
    out: dict[str, Any] = {}

    def work(name: str) -> None:
        from portfolio_batch.registry import open_registry

        with open_registry() as reg:
            out[name] = create.create_shard_batch(reg, client, create.ServerIndex(client), shard)

    choose = create._choose

    def choose_then_let_b_in(*args: Any) -> Any:
        chosen = choose(*args)
        if threading.current_thread().name == "A" and "B" not in out:
            time.sleep(1.1)
            b = threading.Thread(target=work, args=("B",), name="B")
            b.start()
            b.join(30)
        return chosen

    monkeypatch.setattr(create, "_choose", choose_then_let_b_in)
    a = threading.Thread(target=work, args=("A",), name="A")
    a.start()
    a.join(60)
    from portfolio_batch.registry import open_registry

    with open_registry() as reg:
        attached = reg.shard(shard["run_id"], 0)["batch_id"]
    assert out["B"]["id"] == attached  # B recorded first and won
    assert out["A"] is None or out["A"]["id"] == attached  # A gave up, or had chosen the same
    statuses = {b.id: b.status for b in client.batches.list()}
    assert len(statuses) == 2  # the lost reply's copy and the retry's
    assert statuses[attached] not in ("cancelling", "cancelled")
    assert _live_batches_per_shard(client) == {(shard["run_id"], "0"): 1}
