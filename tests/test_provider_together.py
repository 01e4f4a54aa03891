"""The whole pipeline on Together's Batch API: the local server's Together routes
(``/together/v1``) driven by ``_providers/together.py`` through the facade, with only
``TOGETHER_API_KEY`` / ``TOGETHER_BASE_URL`` set (and with no key: the embedded server).
Together keeps no metadata and no counts: they come from the input file's name and the
batch's files."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import httpx2
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import backend_name
from portfolio_batch._home import home
from portfolio_batch._providers import compatible
from portfolio_batch._providers.together import batch_status
from portfolio_batch._registry import registry_path
from portfolio_batch.errors import InputError

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
ANSWER = ["status", "position_key", "risk_score", "risk_level", "drivers", "rationale"]


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    frame = pd.read_csv(testdata / "portfolio.csv")
    return frame[frame["ticker"].str.fullmatch(r"[A-Za-z0-9]+")].head(8)


@pytest.fixture
def on_together(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> httpx2.Client:
    """Only Together's key and base URL, pointed at the local server; a raw client to look."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = local_server.base_url.removesuffix("/v1") + "/together/v1"
    monkeypatch.setenv("TOGETHER_API_KEY", local_server.api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", base)
    return httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {local_server.api_key}"})


def _jobs(raw: httpx2.Client) -> list[dict[str, Any]]:
    answer = raw.get("/batches")
    assert answer.status_code == 200
    return sorted(answer.json(), key=lambda j: j["created_at"], reverse=True)


def _input_name(raw: httpx2.Client, job: dict[str, Any]) -> str:
    return str(raw.get(f"/files/{job['input_file_id']}").json()["filename"])


def test_together_run_gives_the_openai_paths_results(
    on_together: httpx2.Client, openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "together", max_requests=3)
    c = pb.client(provider="together")
    jobs = pb.poll(pb.submit(manifest, client=c), timeout=60)
    assert jobs["backend"].str.startswith("together:").all()
    assert jobs["status"].eq("completed").all()
    on_server = {j["id"]: j for j in _jobs(on_together)}
    assert sorted(on_server) == sorted(jobs["batch_id"])
    # no metadata on Together: the input file's name carries the run hash and the sha256
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    for job in on_server.values():
        assert job["status"] == "COMPLETED" and "metadata" not in job
        assert re.fullmatch(
            rf"pbrun-{run_hash}-pb-[0-9a-f]{{64}}\.jsonl", _input_name(on_together, job)
        )
    # poll and aggregate find Together again from the recorded backend, without a client
    together = pb.aggregate_df(jobs, requests)

    gpt_requests = pb.build_requests(portfolio)
    gpt_manifest = pb.to_jsonl(gpt_requests, tmp_path / "gpt", max_requests=3)
    gpt_jobs = pb.poll(pb.submit(gpt_manifest, client=openai_client), client=openai_client)
    gpt = pb.aggregate_df(gpt_jobs, gpt_requests, client=openai_client)

    assert list(together.columns) == list(gpt.columns)
    pd.testing.assert_frame_equal(
        together.set_index("ticker")[ANSWER], gpt.set_index("ticker")[ANSWER]
    )
    assert together["status"].eq("succeeded").all()
    assert together.attrs["simulated"] is True
    assert (together["prompt_tokens"] > 0).all() and (together["completion_tokens"] > 0).all()
    # submitting again creates nothing
    again = pb.submit(manifest, client=pb.client(provider="together"))
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert len(_jobs(on_together)) == len(on_server)


def test_a_cancelled_job_keeps_its_unrun_requests_as_cancelled_rows(
    on_together: httpx2.Client, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(6), model=MODEL)
    local_server.configure(request_delay=0.5)
    c = pb.client(provider="together")
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "c"), client=c)
    pb.cancel(jobs, client=c)
    jobs = pb.poll(jobs, timeout=60)
    assert jobs["status"].eq("cancelled").all()
    job = _jobs(on_together)[0]
    assert job["status"] == "CANCELLED" and job["progress"] == 100
    out = pb.aggregate_df(jobs, requests)
    assert len(out) == len(requests)
    unrun = out[out["status"] != "succeeded"]
    assert len(unrun) >= 1 and unrun["status"].eq("cancelled").all()
    assert unrun["error_code"].eq("batch_cancelled").all()
    # Together shows no counts: ours are counted from its files
    assert jobs["completed"].sum() == int(out["status"].eq("succeeded").sum())


def test_failed_requests_are_rows_with_their_error(
    on_together: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    # a request the engine refuses (max_tokens 0): Together's error file carries it
    bad = requests.copy()
    first = dict(bad.at[bad.index[0], "body"])
    bad.at[bad.index[0], "body"] = {**first, "max_tokens": 0}
    jobs = pb.poll(
        pb.submit(pb.to_jsonl(bad, tmp_path / "f"), client=pb.client(provider="together")),
        timeout=60,
    )
    assert jobs["status"].eq("completed").all()
    job = _jobs(on_together)[0]
    assert job["status"] == "COMPLETED" and job["error_file_id"]
    assert jobs["failed"].sum() == 1 and jobs["completed"].sum() == 3
    out = pb.aggregate_df(jobs, bad).set_index("custom_id")
    failed = out.loc[bad["custom_id"].iloc[0]]
    assert failed["status"] == "failed" and "max_tokens" in str(failed["error_message"])
    assert out["status"].eq("succeeded").sum() == 3


def test_a_lost_create_is_found_by_its_metadata_not_sent_again(
    on_together: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Together makes the batch but its answer is lost (a timeout after sending): the creation
    rule looks on Together, finds the batch by the sha256 its input file's name carries (shown
    as metadata['pb_sha256']) and adopts it."""
    lost: list[str] = []

    class LoseCreateReply(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            answer = super().handle_request(request)
            if request.method == "POST" and request.url.path.endswith("/batches"):
                answer.read()
                lost.append(answer.json()["job"]["id"])
                raise httpx2.ReadTimeout("reply lost", request=request)
            return answer

    monkeypatch.setattr(compatible, "TRANSPORT", LoseCreateReply())
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "lost")
    jobs = pb.submit(manifest, client=pb.client(provider="together"))
    assert len(lost) == 1  # posted once: after the lost reply it looked instead
    assert jobs["batch_id"].tolist() == lost
    assert [j["id"] for j in _jobs(on_together)] == lost
    monkeypatch.setattr(compatible, "TRANSPORT", None)
    out = pb.aggregate_df(pb.poll(jobs, timeout=60), requests)
    assert out["status"].eq("succeeded").all()


def test_resume_by_run_hash_finds_the_batches_from_their_file_names(
    on_together: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    c = pb.client(provider="together")
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "r", max_requests=2), client=c)
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    # found on Together by the input files' names alone, running or ended
    assert sorted(c.discover(run_hash)) == sorted(jobs["batch_id"])
    assert c.discover("0000000") == []


def test_statuses_map_to_ours() -> None:
    assert [
        batch_status(s)
        for s in (
            "VALIDATING",
            "IN_PROGRESS",
            "COMPLETED",
            "FAILED",
            "EXPIRED",
            "CANCELING",
            "CANCELLED",
        )
    ] == [
        "validating",
        "in_progress",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    ]
    with pytest.raises(pb.PortfolioBatchError, match=r"Together batch b-1 .*'PAUSED'.*Upgrade"):
        batch_status("PAUSED", batch_id="b-1")


def test_no_key_runs_on_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    for var in ("OPENAI_API_KEY", "TOGETHER_API_KEY", "TOGETHER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PORTFOLIO_BATCH_ENGINE", "rules")
    with warnings.catch_warnings():
        # said once per process (SimulatedBackendWarning); the run is marked simulated below
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        c = pb.client(provider="together")
    assert c.simulated_engine == "rules"
    assert str(c.base_url).rstrip("/").endswith("/together/v1")
    assert backend_name(c) == "together:local:embedded:rules"
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "e"), client=c), timeout=60)
    out = pb.aggregate_df(jobs, requests)
    assert out["status"].eq("succeeded").all() and out.attrs["simulated"] is True


def test_other_endpoints_are_refused_naming_the_request() -> None:
    from portfolio_batch._providers.together import backend

    b = backend(api_key="k", base_url="http://127.0.0.1:9/together/v1")
    line = {"custom_id": "risk-A-1", "url": "/v1/embeddings", "body": {"model": MODEL}}
    with pytest.raises(InputError, match=r"custom_id 'risk-A-1'.*'/v1/embeddings'"):
        b.prepare(line)


def test_together_is_chosen_only_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from portfolio_batch._providers import provider_of

    assert provider_of(MODEL) == "openai"
    # a lone TOGETHER_API_KEY does not select Together, and OpenAI configured is not a fallback
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(InputError, match="needs TOGETHER_API_KEY"):
        pb.client(provider="together")


def test_together_batch_price_is_unknown_never_guessed() -> None:
    from portfolio_batch._cost import price_for

    with pytest.raises(pb.PricingError, match=r"No batch price is known .* Together AI.*prices="):
        price_for(MODEL, provider="together")
    given = price_for(MODEL, provider="together", prices={MODEL: {"input": 0.8, "output": 0.8}})
    assert given.batch_input == pytest.approx(0.4)


def test_submit_after_resume_with_no_home_records_creates_nothing_again(
    on_together: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    """The home lost (registry and the facade's records): resume rebuilds the records, and a
    submit of the same manifest still finds each shard's batch by the sha256 its input file's
    name carries instead of paying for it twice."""
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "again", max_requests=2)
    jobs = pb.poll(pb.submit(manifest, client=pb.client(provider="together")), timeout=60)
    registry_path().unlink()
    shutil.rmtree(home() / "providers")
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    found = pb.resume(run_hash, client=pb.client(provider="together"))
    assert sorted(found["batch_id"]) == sorted(jobs["batch_id"])
    again = pb.submit(manifest, client=pb.client(provider="together"))
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert len(_jobs(on_together)) == len(manifest)


def test_a_completed_batch_without_its_files_yet_caches_no_failed_rows(
    on_together: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """COMPLETED before its files are attached: nothing is kept as failed (nor counted), and a
    later aggregate_df reads the answers."""
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    c = pb.client(provider="together")
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "u"), client=c), timeout=60)
    real = compatible.Rest.json

    def unattached(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        answer = real(self, method, path, **kwargs)
        if method == "GET" and path.startswith("/batches/"):
            answer = {**answer, "output_file_id": None, "error_file_id": None}
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(compatible.Rest, "json", unattached)
        early = pb.aggregate_df(jobs, requests)
    assert not early["status"].isin(["failed", "succeeded"]).any()
    assert not early["error_code"].eq("batch_failed").any()
    later = pb.aggregate_df(jobs, requests)
    assert later["status"].eq("succeeded").all()


def test_the_upload_streams_through_a_temporary_file(
    on_together: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lines go to a temporary file (closed after), not one bytes object of the whole
    upload held in memory; every request arrives."""
    from portfolio_batch._providers import together

    real, made = together.tempfile.TemporaryFile, []

    def recorded() -> Any:
        made.append(real())
        return made[-1]

    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    with monkeypatch.context() as patch:
        patch.setattr(together.tempfile, "TemporaryFile", recorded)
        c = pb.client(provider="together")
        jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "t"), client=c)
    assert len(made) == 1 and made[0].closed
    out = pb.aggregate_df(pb.poll(jobs, timeout=60), requests)
    assert out["status"].eq("succeeded").all() and len(out) == len(requests)


def test_an_unknown_status_stops_poll_naming_the_batch_and_what_to_do(
    on_together: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = pb.build_requests(portfolio.head(2), model=MODEL)
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "s"), client=pb.client(provider="together"))
    real = compatible.Rest.json

    def paused(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        answer = real(self, method, path, **kwargs)
        if method == "GET" and path.startswith("/batches/"):
            answer = {**answer, "status": "PAUSED"}
        return answer

    monkeypatch.setattr(compatible.Rest, "json", paused)
    batch_id = jobs["batch_id"].iloc[0]
    with pytest.raises(
        pb.PortfolioBatchError, match=rf"Together batch {batch_id} .*'PAUSED'.*Upgrade"
    ):
        pb.poll(jobs, timeout=30, progress=False)
