"""The creation rule (create.py): a shard's batch is created only under the shard's lock and only
after a successful look-up on the server found none; the create POST has no SDK retries; after
any error the server is looked at again; a failed look-up never leads to a create.

The first three tests are the reproductions of issue 11, each of which left a shard paid for
twice before the rule: they must end with exactly one batch per shard on the server.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
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
from portfolio_batch import _create as create
from portfolio_batch._registry import open_registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def manifest(testdata: Path, tmp_path: Path) -> pd.DataFrame:
    requests = pb.build_requests(pd.read_csv(testdata / "portfolio.csv").head(12))
    return pb.to_jsonl(requests, tmp_path / "jsonl", max_requests=3)  # 4 shards


@pytest.fixture(autouse=True)
def _quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The local server has acted on a request before its reply is lost: no need to wait 2 s.
    monkeypatch.setattr(create, "UNANSWERED_SETTLE_SECONDS", 0.1)


def _batches_per_sha(client: Any) -> tuple[collections.Counter[str], int]:
    """Live batches per shard content on the server, and how many batches it holds in all."""
    live: collections.Counter[str] = collections.Counter()
    every = list(client.batches.list(limit=100))
    for b in every:
        if b.status not in create.DEAD:
            live[(b.metadata or {}).get("pb_sha256")] += 1
    return live, len(every)


def _assert_one_batch_per_shard(client: Any, manifest: pd.DataFrame, jobs: pd.DataFrame) -> None:
    live, total = _batches_per_sha(client)
    assert live == {sha: 1 for sha in manifest["sha256"]}
    assert total == len(manifest)  # none was ever made twice, not even to be cancelled
    assert sorted(jobs["batch_id"]) == sorted(b.id for b in client.batches.list(limit=100))


def test_faults_on_create_and_list_then_list_down_then_none(local_server, manifest) -> None:
    # Issue 11, first reproduction: three submits leave exactly one batch per shard.
    client = local_server.client()
    before = create.extra_copies_cancelled()
    local_server.configure(
        fault_rate_500=0.5, fault_endpoints=["batches.create", "batches.list"], seed=86
    )
    _raised(lambda: pb.submit(manifest, client=client))
    local_server.configure(fault_rate_500=0.0)
    made = _batches_per_sha(client)[1]
    assert made < len(manifest)  # the faults did stop some creations: the case under test

    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.list"])
    refused = _raised(lambda: pb.submit(manifest, client=client))
    local_server.configure(fault_rate_500=0.0)
    assert _batches_per_sha(client)[1] == made  # no look-up, no create

    jobs = pb.submit(manifest, client=client)
    _assert_one_batch_per_shard(client, manifest, jobs)
    assert create.extra_copies_cancelled() == before  # the rule did it, not the safety net
    assert isinstance(refused, pb.SubmitError), refused
    assert "nothing was created" in str(refused).lower()


def _raised(call: Any) -> BaseException | None:
    try:
        call()
    except Exception as exc:  # checked by the caller, after what matters more
        return exc
    return None


HOLDER = textwrap.dedent(
    """
    import sys, time, httpx2, openai, pandas as pd, portfolio_batch as pb
    base_url, manifest_path, when = sys.argv[1:4]

    class Hold(httpx2.BaseTransport):
        # Stops this process inside the create POST: before it reaches the server, or after
        # the server made the batch and before anything is recorded.
        def __init__(self):
            self.inner = httpx2.HTTPTransport()
        def handle_request(self, request):
            create = request.method == "POST" and request.url.path == "/v1/batches"
            if create and when == "before":
                print("CREATING", flush=True); time.sleep(600)
            response = self.inner.handle_request(request)
            if create and when == "after":
                response.read(); print("CREATING", flush=True); time.sleep(600)
            return response

    client = openai.OpenAI(base_url=base_url, api_key="test", http_client=httpx2.Client(transport=Hold()))
    pb.submit(pd.read_pickle(manifest_path), client=client, run_id="run-kill")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after", "before"])
def test_killed_during_creation_then_resumed_while_listing_answers_429(
    local_server, manifest, tmp_path, when
) -> None:
    # Issue 11, second reproduction: SIGKILL inside the create POST (after the server made the
    # batch, or before it got the request), then resume while batches.list answers 429.
    two = manifest.iloc[:2]
    two.to_pickle(tmp_path / "manifest.pkl")
    (tmp_path / "holder.py").write_text(HOLDER)
    child = subprocess.Popen(
        [
            sys.executable,
            tmp_path / "holder.py",
            local_server.base_url,
            tmp_path / "manifest.pkl",
            when,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "CREATING", child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    client = local_server.client(max_retries=0)
    made = 1 if when == "after" else 0
    assert _batches_per_sha(client)[1] == made
    assert pb.jobs(run_id="run-kill")["batch_id"].isna().all()  # nothing recorded

    # The dead process's lock is free at once; the look-up fails, so nothing is created.
    local_server.configure(fault_rate_429=1.0, fault_endpoints=["batches.list"], retry_after=0.01)
    refused = _raised(
        lambda: pb.poll(
            pb.resume("run-kill", client=client), client=client, progress=False, timeout=60
        )
    )
    local_server.configure(fault_rate_429=0.0)
    assert _batches_per_sha(client)[1] == made
    assert isinstance(refused, pb.SubmitError) and "Nothing was created" in str(refused), refused

    final = pb.poll(pb.resume("run-kill", client=client), client=client, progress=False)
    assert final["status"].eq("completed").all()
    _assert_one_batch_per_shard(client, two, final)


class LostReplies(httpx2.BaseTransport):
    """Forwards every request; the reply of a POST the server accepted is lost at ``rate``
    (seeded): the server acted, the client never heard."""

    def __init__(self, rate: float, seed: int) -> None:
        import random

        self.inner = httpx2.HTTPTransport()
        self.rate, self.rng = rate, random.Random(seed)
        self.lost: list[str] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        lose = request.method == "POST" and response.status_code == 200
        if lose and self.rng.random() < self.rate:
            response.read()
            response.close()
            self.lost.append(request.url.path)
            raise httpx2.ReadTimeout("reply lost (test transport)", request=request)
        return response


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_random_fault_run_ends_with_one_batch_per_shard(local_server, manifest, seed) -> None:
    # Issue 11, third reproduction: 429s, 500s and lost replies everywhere, a user re-running
    # submit and poll until it goes through.
    transport = LostReplies(0.3, seed)
    client = openai.OpenAI(
        base_url=local_server.base_url,
        api_key="test",
        max_retries=1,
        http_client=httpx2.Client(transport=transport),
    )
    local_server.configure(fault_rate_429=0.2, fault_rate_500=0.2, seed=seed, retry_after=0.01)
    jobs = None
    for _ in range(12):
        with contextlib.suppress(pb.PortfolioBatchError, openai.APIError):
            jobs = pb.submit(manifest, client=client)
            jobs = pb.poll(jobs, client=client, progress=False, timeout=60)
            if jobs["status"].eq("completed").all():
                break
    local_server.configure(fault_rate_429=0.0, fault_rate_500=0.0)
    assert "/v1/batches" in transport.lost  # a create's reply was lost: the case under test
    jobs = pb.poll(pb.submit(manifest, client=client), client=client, progress=False)
    assert jobs["status"].eq("completed").all()
    _assert_one_batch_per_shard(local_server.client(), manifest, jobs)


def test_a_failed_look_up_creates_nothing_and_names_the_shard(local_server, manifest) -> None:
    client = local_server.client(max_retries=0)
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.create"])
    with pytest.raises(pb.SubmitError):
        pb.submit(manifest.iloc[:1], client=client, run_id="run-look")
    local_server.configure(fault_endpoints=["batches.list"])
    with pytest.raises(pb.SubmitError, match=r"batch of shard 0 of run run-look failed") as err:
        pb.submit(manifest.iloc[:1], client=client)
    assert "pb.poll(pb.resume('run-look'))" in str(err.value)
    local_server.configure(fault_rate_500=0.0)
    assert list(client.batches.list()) == []


def _queued(local_server: Any, manifest: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """A registered shard whose creation failed: queued, its file uploaded, no batch."""
    client = local_server.client(max_retries=0)
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.create"])
    with pytest.raises(pb.SubmitError):
        pb.submit(manifest.iloc[:1], client=client, run_id=run_id)
    local_server.configure(fault_rate_500=0.0)
    with open_registry() as reg:
        return reg.shard(run_id, 0)


def _copy_on_server(client: Any, shard: dict[str, Any]) -> str:
    """A batch for the shard made behind its back (another home, a lagging listing)."""
    files = [f for f in client.files.list() if f.filename == f"pb-{shard['sha256']}.jsonl"]
    made = client.batches.create(
        input_file_id=files[0].id,
        endpoint=shard["endpoint"],
        completion_window="24h",
        metadata={"pb_sha256": shard["sha256"], "pb_run_id": shard["run_id"], "pb_shard": "0"},
    )
    time.sleep(1.05)  # created_at has whole seconds: the copies are told apart by age
    return str(made.id)


def test_extra_copies_found_by_the_look_up_are_cancelled_counted_and_logged(
    local_server, manifest, caplog
) -> None:
    local_server.configure(request_delay=2.0)  # both still running when found
    shard = _queued(local_server, manifest, "run-extra")
    observer = local_server.client()
    older, newer = _copy_on_server(observer, shard), _copy_on_server(observer, shard)
    before = create.extra_copies_cancelled()
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        jobs = pb.submit(manifest.iloc[:1], client=observer)
    assert jobs["batch_id"].tolist() == [older]  # adopted, not created
    assert observer.batches.retrieve(newer).status in ("cancelling", "cancelled")
    assert create.extra_copies_cancelled() == before + 1
    assert f"1 extra copy on the server ({newer})" in caplog.text
    assert len(list(observer.batches.list())) == 2


def test_an_extra_copy_that_cannot_be_cancelled_is_named_with_the_way_out(
    local_server, manifest, monkeypatch
) -> None:
    shard = _queued(local_server, manifest, "run-stuck")
    observer = local_server.client()
    older, newer = _copy_on_server(observer, shard), _copy_on_server(observer, shard)

    def cannot_cancel(c: Any, batch_id: str) -> Any:
        raise openai.APIConnectionError(request=httpx2.Request("POST", "http://x/v1/batches"))

    monkeypatch.setattr(create, "cancel_batch", cannot_cancel)
    with pytest.raises(pb.SubmitError, match="extra copies of shard 0 of run run-stuck") as err:
        pb.submit(manifest.iloc[:1], client=observer)
    assert f"client.batches.cancel('{newer}')" in str(err.value)
    assert pb.jobs(run_id="run-stuck")["batch_id"].tolist() == [older]  # the shard has its batch


def test_a_claim_left_in_an_old_registry_does_not_hold_the_shard(local_server, manifest) -> None:
    # A registry written by the claim-based release, with a claim by a live process (this one):
    # the claim columns are ignored now, so the shard is created at once, not in 15 minutes.
    _queued(local_server, manifest, "run-old")
    with open_registry() as reg:
        reg.update_shard(
            "run-old", 0, creating=time.time(), creating_owner=f"host/x/1:{os.getpid()}:ab"
        )
    jobs = pb.submit(manifest.iloc[:1], client=local_server.client())
    assert jobs["batch_id"].notna().all() and jobs["run_id"].tolist() == ["run-old"]


SUBMITTER = textwrap.dedent(
    """
    import sys, time, openai, pandas as pd, portfolio_batch as pb
    from pathlib import Path
    base_url, manifest_path, go, out = sys.argv[1:5]
    client = openai.OpenAI(base_url=base_url, api_key="test")
    manifest = pd.read_pickle(manifest_path)
    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    pb.submit(manifest, client=client).to_pickle(out)
    """
)


@pytest.mark.slow
def test_two_processes_submitting_one_manifest_at_once_make_one_batch_per_shard(
    local_server, manifest, tmp_path
) -> None:
    local_server.configure(latency=0.05)  # widens the window between a look-up and a create
    manifest.to_pickle(tmp_path / "manifest.pkl")
    (tmp_path / "submitter.py").write_text(SUBMITTER)
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                tmp_path / "submitter.py",
                local_server.base_url,
                tmp_path / "manifest.pkl",
                go,
                f"{tmp_path / f'jobs{i}.pkl'}",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"jobs{i}.pkl.ready").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.02)
    go.touch()  # both imported and waiting: they start together
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    first, second = (pd.read_pickle(tmp_path / f"jobs{i}.pkl") for i in range(2))
    assert first["batch_id"].tolist() == second["batch_id"].tolist()
    _assert_one_batch_per_shard(local_server.client(), manifest, first)


def test_many_threads_taking_shard_locks_on_a_fresh_home_all_get_them(
    tmp_path, monkeypatch
) -> None:
    # The first use of a home creates locks/ from several threads at once (two submits, two
    # aggregations): none may take the directory another just made for "a file in the way".
    for round_ in range(20):
        monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(tmp_path / f"home{round_}"))
        barrier, errors = threading.Barrier(6), []

        def take(i: int, barrier: Any = barrier, errors: list[Any] = errors) -> None:
            barrier.wait()
            try:
                with create.shard_lock(f"{i:064x}", "local:test", what=f"shard {i}"):
                    pass
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, (round_, errors)


class OldestFirst(httpx2.BaseTransport):
    """A server that lists batches oldest first (an OpenAI-compatible proxy or server may)."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        if request.method == "GET" and request.url.path == "/v1/batches":
            body = json.loads(response.read())
            body["data"].reverse()
            return httpx2.Response(200, json=body)
        return response


def test_a_server_listing_oldest_first_still_finds_the_shards_batch(local_server, manifest):
    # The look-up may stop at the first batch older than the shard only once the listing is
    # seen to be newest first: an old batch listed first must not end it with "none found".
    shard = _queued(local_server, manifest, "run-oldest-first")
    observer = local_server.client()
    local_server.configure(clock_offset=-3 * 86400)  # a batch of three days ago, unrelated
    file_id = next(f.id for f in observer.files.list() if f.filename.startswith("pb-"))
    observer.batches.create(
        input_file_id=file_id, endpoint=shard["endpoint"], completion_window="24h"
    )
    local_server.configure(clock_offset=0.0)
    copy = _copy_on_server(observer, shard)  # the shard's batch, whose reply was lost
    client = openai.OpenAI(
        base_url=local_server.base_url,
        api_key="test",
        http_client=httpx2.Client(transport=OldestFirst()),
    )
    jobs = pb.submit(manifest.iloc[:1], client=client)
    assert jobs["batch_id"].tolist() == [copy]  # adopted, not made again
    assert len(list(observer.batches.list())) == 2


def test_the_look_up_stops_at_the_first_older_batch_of_a_newest_first_listing() -> None:
    # Newest first (OpenAI): what follows an older batch is older still, so the reading stops
    # there rather than paging through months of batches; oldest first: it reads on.
    now = time.time()
    ages = [0, 10, 20, 5000, 6000, 7000]  # seconds ago; the cutoff is 1000 s ago
    read: list[str] = []

    class Listing:
        def __init__(self, order: list[int]) -> None:
            self.order = order

        def list(self, limit: int) -> Any:
            for age in self.order:
                read.append(f"b{age}")
                yield {"id": f"b{age}", "created_at": int(now - age), "status": "completed"}

    class Client:
        def __init__(self, order: list[int]) -> None:
            self.batches = Listing(order)

    newest = create.list_batches(Client(ages), since=now - 1000)  # type: ignore[arg-type]
    assert [b["id"] for b in newest] == ["b0", "b10", "b20"]
    assert read == ["b0", "b10", "b20", "b5000"]  # one past the cutoff, then no further
    read.clear()
    oldest = create.list_batches(Client(ages[::-1]), since=now - 1000)  # type: ignore[arg-type]
    assert sorted(b["id"] for b in oldest) == ["b0", "b10", "b20"] and len(read) == len(ages)


def test_a_failed_forced_submit_points_to_its_own_run_not_to_another_force(
    local_server, manifest
) -> None:
    # force=True starts a new run each time: "run submit() again" after a failed forced submit
    # would pay again for the shards it did create. The error names the way that finishes the
    # same run.
    client = local_server.client(max_retries=0)
    pb.submit(manifest, client=client)
    local_server.configure(fault_rate_500=0.6, seed=1, fault_endpoints=["batches.create"])
    with pytest.raises(pb.SubmitError) as err:
        pb.submit(manifest, client=client, force=True)
    local_server.configure(fault_rate_500=0.0)
    message = str(err.value)
    run_id = re.search(r"of run (run-[\w-]+)", message).group(1)  # type: ignore[union-attr]
    assert f"pb.poll(pb.resume({run_id!r}))" in message and "force=True" in message
    forced = pb.poll(pb.resume(run_id, client=client), client=client, progress=False)
    assert forced["status"].eq("completed").all() and len(forced) == len(manifest)
    live, total = _batches_per_sha(client)
    assert live == {sha: 2 for sha in manifest["sha256"]} and total == 2 * len(manifest)


class LateCreate(httpx2.BaseTransport):
    """The first create POST reaches the server ``delay`` s after the client gave up on it (no
    answer within its timeout): a server still acting on it after the client looked. With
    ``sent=False`` it never reaches the server at all (the connection could not be made)."""

    def __init__(self, delay: float, *, sent: bool = True) -> None:
        self.inner = httpx2.HTTPTransport()
        self.delay, self.sent, self.done = delay, sent, False
        self.thread: threading.Thread | None = None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path == "/v1/batches" and not self.done:
            self.done = True
            if not self.sent:
                raise httpx2.ConnectError("connection refused (test transport)", request=request)
            late = httpx2.Request(
                "POST", request.url, headers=request.headers, content=request.read()
            )

            def deliver() -> None:
                time.sleep(self.delay)
                self.inner.handle_request(late).read()

            self.thread = threading.Thread(target=deliver)
            self.thread.start()
            raise httpx2.ReadTimeout("no answer (test transport)", request=request)
        return self.inner.handle_request(request)


def test_a_create_without_an_answer_is_not_sent_again_while_the_server_may_act(
    local_server, manifest
) -> None:
    # The server acts on the unanswered POST after the look-up that followed it: posting again
    # then would make a second batch. The look-up is the last step; the error says what next.
    transport = LateCreate(delay=1.0)
    client = openai.OpenAI(
        base_url=local_server.base_url,
        api_key="test",
        http_client=httpx2.Client(transport=transport),
    )
    one = manifest.iloc[:1]
    with pytest.raises(pb.SubmitError, match="got no answer") as err:
        pb.submit(one, client=client, run_id="run-late")
    assert transport.thread is not None
    transport.thread.join()
    observer = local_server.client()
    assert len(list(observer.batches.list())) == 1  # the late one: nothing was sent again
    assert "pb.poll(pb.resume('run-late'))" in str(err.value)
    jobs = pb.poll(pb.resume("run-late", client=client), client=client, progress=False)
    _assert_one_batch_per_shard(observer, one, jobs)


def test_a_create_that_never_left_is_sent_again_at_once(local_server, manifest) -> None:
    # A connection that could not be made carried no request: the next round posts it.
    client = openai.OpenAI(
        base_url=local_server.base_url,
        api_key="test",
        http_client=httpx2.Client(transport=LateCreate(0.0, sent=False)),
    )
    jobs = pb.submit(manifest.iloc[:1], client=client)
    _assert_one_batch_per_shard(local_server.client(), manifest.iloc[:1], jobs)


def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    # The default home is ./.portfolio_batch: running from two directories is two homes.
    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(tmp_path / name))


def test_two_homes_on_one_key_make_one_batch_per_shard_even_after_a_failed_create(
    local_server, manifest, monkeypatch, tmp_path
) -> None:
    # Issue 11, "two homes": a shard left queued in home H2 by a failed create is created only
    # after a look-up by content, so the batch home H1 made meanwhile is adopted, not paid again.
    client = local_server.client(max_retries=0)
    _home(monkeypatch, tmp_path, "H2")
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.create"])
    with pytest.raises(pb.SubmitError):
        pb.submit(manifest, client=client)
    local_server.configure(fault_rate_500=0.0)
    _home(monkeypatch, tmp_path, "H1")
    first = pb.submit(manifest, client=client)
    _home(monkeypatch, tmp_path, "H2")
    second = pb.submit(manifest, client=client)  # its shards are still queued from the failure
    assert list(second["batch_id"]) == list(first["batch_id"])
    assert second["run_id"].ne(first["run_id"]).all()  # recorded for H2's own shards
    _assert_one_batch_per_shard(client, manifest, second)
    _home(monkeypatch, tmp_path, "H3")  # a third home, registry empty: finds them too
    assert list(pb.submit(manifest, client=client)["batch_id"]) == list(first["batch_id"])
    _assert_one_batch_per_shard(client, manifest, second)


def test_another_homes_batch_is_not_adopted_when_excluded_or_forced(
    local_server, manifest, monkeypatch, tmp_path
) -> None:
    # exclude_batches and force=True keep their meaning across homes: new batches, paid again.
    client = local_server.client(max_retries=0)
    one = manifest.iloc[:1]
    _home(monkeypatch, tmp_path, "H2")
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.create"])
    with pytest.raises(pb.SubmitError):
        pb.submit(one, client=client)
    local_server.configure(fault_rate_500=0.0)
    _home(monkeypatch, tmp_path, "H1")
    theirs = pb.submit(one, client=client)["batch_id"].iloc[0]
    _home(monkeypatch, tmp_path, "H2")
    again = pb.submit(one, client=client, exclude_batches=[theirs])
    assert again["batch_id"].iloc[0] != theirs
    forced = pb.submit(one, client=client, force=True)
    assert forced["batch_id"].iloc[0] not in (theirs, again["batch_id"].iloc[0])
    live, total = _batches_per_sha(client)
    assert live == {one["sha256"].iloc[0]: 3} and total == 3
