"""The whole pipeline on Mistral's batch jobs: the local server's Mistral routes
(``/mistral/v1``) driven by ``_providers/mistral.py`` through the facade, with only
``MISTRAL_API_KEY`` / ``MISTRAL_BASE_URL`` set (and with no key: the embedded server)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import backend_name
from portfolio_batch._home import home
from portfolio_batch._providers import compatible
from portfolio_batch._providers.mistral import batch_status
from portfolio_batch._registry import registry_path
from portfolio_batch.errors import InputError

MODEL = "mistral-small-latest"
ANSWER = ["status", "position_key", "risk_score", "risk_level", "drivers", "rationale"]


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    frame = pd.read_csv(testdata / "portfolio.csv")
    return frame[frame["ticker"].str.fullmatch(r"[A-Za-z0-9]+")].head(8)


@pytest.fixture
def on_mistral(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> httpx2.Client:
    """Only Mistral's key and base URL, pointed at the local server; a raw client to look."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = local_server.base_url.removesuffix("/v1") + "/mistral/v1"
    monkeypatch.setenv("MISTRAL_API_KEY", local_server.api_key)
    monkeypatch.setenv("MISTRAL_BASE_URL", base)
    return httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {local_server.api_key}"})


def _jobs(raw: httpx2.Client) -> list[dict[str, Any]]:
    answer = raw.get("/batch/jobs", params={"page_size": 100})
    assert answer.status_code == 200
    return list(answer.json()["data"])


def test_mistral_run_gives_the_openai_paths_results(
    on_mistral: httpx2.Client, openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "mistral", max_requests=3)
    c = pb.client(provider="mistral")
    jobs = pb.poll(pb.submit(manifest, client=c), timeout=60)
    assert jobs["backend"].str.startswith("mistral:").all()
    assert jobs["status"].eq("completed").all()
    on_server = {j["id"]: j for j in _jobs(on_mistral)}
    assert sorted(on_server) == sorted(jobs["batch_id"])
    # pb's metadata is kept on Mistral's side (what finds a lost create), with the run hash
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    for job in on_server.values():
        assert job["status"] == "SUCCESS" and job["metadata"]["pb_sha256"]
        assert job["metadata"]["pb_run_hash"] == run_hash
    # poll and aggregate find Mistral again from the recorded backend, without a client
    mistral = pb.aggregate_df(jobs, requests)

    gpt_requests = pb.build_requests(portfolio)
    gpt_manifest = pb.to_jsonl(gpt_requests, tmp_path / "gpt", max_requests=3)
    gpt_jobs = pb.poll(pb.submit(gpt_manifest, client=openai_client), client=openai_client)
    gpt = pb.aggregate_df(gpt_jobs, gpt_requests, client=openai_client)

    assert list(mistral.columns) == list(gpt.columns)
    pd.testing.assert_frame_equal(
        mistral.set_index("ticker")[ANSWER], gpt.set_index("ticker")[ANSWER]
    )
    assert mistral["status"].eq("succeeded").all()
    assert mistral.attrs["simulated"] is True
    assert (mistral["prompt_tokens"] > 0).all() and (mistral["completion_tokens"] > 0).all()
    # priced at Mistral's batch rates (genai-prices: mistral-small-latest $0.15 in, $0.60 out,
    # $0.015 cached per M; batch half), from the usage returned, not left unknown as an
    # unknown OpenAI model would be
    fresh = mistral["prompt_tokens"] - mistral["cached_tokens"]
    billed = (fresh * 0.075 + mistral["cached_tokens"] * 0.0075
              + mistral["completion_tokens"] * 0.30) / 1e6  # fmt: skip
    assert mistral["cost_usd"].to_numpy() == pytest.approx(billed.to_numpy())
    # the jobs' estimate: each shard's input tokens and its whole max_tokens, at those rates
    upper = (manifest["est_input_tokens"] * 0.075 + manifest["max_output_tokens"] * 0.30) / 1e6
    assert jobs.set_index("shard")["est_cost_usd"].to_numpy() == pytest.approx(upper.to_numpy())
    # submitting again creates nothing
    again = pb.submit(manifest, client=pb.client(provider="mistral"))
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert len(_jobs(on_mistral)) == len(on_server)


def test_a_cancelled_job_keeps_its_unrun_requests_as_cancelled_rows(
    on_mistral: httpx2.Client, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(6), model=MODEL)
    local_server.configure(request_delay=0.5)
    c = pb.client(provider="mistral")
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "c"), client=c)
    pb.cancel(jobs, client=c)
    jobs = pb.poll(jobs, timeout=60)
    assert jobs["status"].eq("cancelled").all()
    job = _jobs(on_mistral)[0]
    assert job["status"] == "CANCELLED"
    out = pb.aggregate_df(jobs, requests)
    assert len(out) == len(requests)
    unrun = out[out["status"] != "succeeded"]
    assert len(unrun) >= 1 and unrun["status"].eq("cancelled").all()
    assert unrun["error_code"].eq("batch_cancelled").all()
    assert job["succeeded_requests"] == int(out["status"].eq("succeeded").sum())


def test_failed_requests_are_rows_with_their_error(
    on_mistral: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    # a request the engine refuses (max_tokens 0): Mistral's error file carries it
    bad = requests.copy()
    first = dict(bad.at[bad.index[0], "body"])
    bad.at[bad.index[0], "body"] = {**first, "max_tokens": 0}
    jobs = pb.poll(
        pb.submit(pb.to_jsonl(bad, tmp_path / "f"), client=pb.client(provider="mistral")),
        timeout=60,
    )
    assert jobs["status"].eq("completed").all()
    job = _jobs(on_mistral)[0]
    assert job["failed_requests"] == 1 and job["succeeded_requests"] == 3
    out = pb.aggregate_df(jobs, bad).set_index("custom_id")
    failed = out.loc[bad["custom_id"].iloc[0]]
    assert failed["status"] == "failed" and "max_tokens" in str(failed["error_message"])
    # kept as OpenAI keeps it: in the error file, with the HTTP status it failed with
    c = pb.client(provider="mistral")
    with c.files.with_streaming_response.content(jobs["error_file_id"].iloc[0]) as raw:
        lines = [json.loads(x) for x in b"".join(raw.iter_bytes()).splitlines()]
    assert [x["custom_id"] for x in lines] == [bad["custom_id"].iloc[0]]
    assert lines[0]["response"]["status_code"] == 400
    assert out["status"].eq("succeeded").sum() == 3


def test_a_lost_create_is_found_by_its_metadata_not_sent_again(
    on_mistral: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mistral makes the job but its answer is lost (a timeout after sending): the creation
    rule looks on Mistral, finds the job by metadata['pb_sha256'] and adopts it."""
    lost: list[str] = []

    class LoseCreateReply(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            answer = super().handle_request(request)
            if request.method == "POST" and request.url.path.endswith("/batch/jobs"):
                answer.read()
                lost.append(answer.json()["id"])
                raise httpx2.ReadTimeout("reply lost", request=request)
            return answer

    monkeypatch.setattr(compatible, "TRANSPORT", LoseCreateReply())
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "lost")
    jobs = pb.submit(manifest, client=pb.client(provider="mistral"))
    assert len(lost) == 1  # posted once: after the lost reply it looked instead
    assert jobs["batch_id"].tolist() == lost
    assert [j["id"] for j in _jobs(on_mistral)] == lost
    monkeypatch.setattr(compatible, "TRANSPORT", None)
    out = pb.aggregate_df(pb.poll(jobs, timeout=60), requests)
    assert out["status"].eq("succeeded").all()


def test_resume_by_run_hash_finds_the_jobs_from_their_metadata(
    on_mistral: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    c = pb.client(provider="mistral")
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "r", max_requests=2), client=c)
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    # found on Mistral by metadata alone, running or ended
    assert sorted(c.discover(run_hash)) == sorted(jobs["batch_id"])
    assert c.discover("0000000") == []


def test_statuses_map_to_ours() -> None:
    assert [
        batch_status(s)
        for s in (
            "QUEUED",
            "RUNNING",
            "SUCCESS",
            "FAILED",
            "TIMEOUT_EXCEEDED",
            "CANCELLATION_REQUESTED",
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
    with pytest.raises(pb.PortfolioBatchError, match=r"Mistral batch b-1 .*'PAUSED'.*Upgrade"):
        batch_status("PAUSED", batch_id="b-1")


def test_no_key_runs_on_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    for var in ("OPENAI_API_KEY", "MISTRAL_API_KEY", "MISTRAL_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PORTFOLIO_BATCH_ENGINE", "rules")
    with warnings.catch_warnings():
        # said once per process (SimulatedBackendWarning); the run is marked simulated below
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        c = pb.client(provider="mistral")
    assert c.simulated_engine == "rules"
    assert str(c.base_url).rstrip("/").endswith("/mistral/v1")
    assert backend_name(c) == "mistral:local:embedded:rules"
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "e"), client=c), timeout=60)
    out = pb.aggregate_df(jobs, requests)
    assert out["status"].eq("succeeded").all() and out.attrs["simulated"] is True


def test_openai_only_parameters_are_refused_naming_the_request() -> None:
    from portfolio_batch._providers.mistral import backend

    b = backend(api_key="k", base_url="http://127.0.0.1:9/mistral/v1")
    line = {
        "custom_id": "risk-A-1",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [], "reasoning_effort": "low"},
    }
    with pytest.raises(InputError, match=r"custom_id 'risk-A-1'.*reasoning_effort"):
        b.prepare(line)


def test_mistral_is_chosen_only_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from portfolio_batch._providers import provider_of

    assert provider_of(MODEL) == "openai"
    # a lone MISTRAL_API_KEY does not select Mistral, and OpenAI configured is not a fallback
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    with pytest.raises(InputError, match="needs MISTRAL_API_KEY"):
        pb.client(provider="mistral")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MISTRAL_API_KEY", "k")
    monkeypatch.setenv("PORTFOLIO_BATCH_ENGINE", "rules")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        assert not backend_name(pb.client()).startswith("mistral")


def test_mistral_is_priced_at_its_batch_rates() -> None:
    from portfolio_batch._cost import price_for

    price = price_for(MODEL, provider="mistral")
    # Mistral's own rates from genai-prices, not the half-of-standard fallback for an unknown one
    assert price.source == "genai-prices"
    assert price.batch_input == pytest.approx(price.input / 2) and price.batch_input > 0
    assert price.batch_output == pytest.approx(price.output / 2)


def test_submit_after_resume_with_no_home_records_creates_nothing_again(
    on_mistral: httpx2.Client, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    """The home lost (registry and the facade's records): resume rebuilds the records, and a
    submit of the same manifest still finds each shard's job by the pb_sha256 Mistral kept
    instead of paying for it twice."""
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "again", max_requests=2)
    jobs = pb.poll(pb.submit(manifest, client=pb.client(provider="mistral")), timeout=60)
    registry_path().unlink()
    shutil.rmtree(home() / "providers")
    run_hash = requests["custom_id"].iloc[0].rsplit("-", 1)[-1]
    found = pb.resume(run_hash, client=pb.client(provider="mistral"))
    assert sorted(found["batch_id"]) == sorted(jobs["batch_id"])
    again = pb.submit(manifest, client=pb.client(provider="mistral"))
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert len(_jobs(on_mistral)) == len(manifest)


def test_a_success_job_without_its_output_file_yet_caches_no_failed_rows(
    on_mistral: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SUCCESS before its output file is attached: nothing is kept as failed, and a later
    aggregate_df reads the answers."""
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    c = pb.client(provider="mistral")
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "u"), client=c), timeout=60)
    real = compatible.Rest.json

    def unattached(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        answer = real(self, method, path, **kwargs)
        if method == "GET" and path.startswith("/batch/jobs/"):
            answer = {**answer, "output_file": None}
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(compatible.Rest, "json", unattached)
        early = pb.aggregate_df(jobs, requests)
    assert not early["status"].isin(["failed", "succeeded"]).any()
    assert not early["error_code"].eq("batch_failed").any()
    later = pb.aggregate_df(jobs, requests)
    assert later["status"].eq("succeeded").all()


def test_the_upload_streams_through_a_temporary_file(
    on_mistral: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lines go to a temporary file (closed after), not one bytes object of the whole
    upload held in memory; every request arrives."""
    from portfolio_batch._providers import mistral

    real, made = mistral.tempfile.TemporaryFile, []

    def recorded() -> Any:
        made.append(real())
        return made[-1]

    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    with monkeypatch.context() as patch:
        patch.setattr(mistral.tempfile, "TemporaryFile", recorded)
        c = pb.client(provider="mistral")
        jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "t"), client=c)
    assert len(made) == 1 and made[0].closed
    out = pb.aggregate_df(pb.poll(jobs, timeout=60), requests)
    assert out["status"].eq("succeeded").all() and len(out) == len(requests)


def test_an_unknown_status_stops_poll_naming_the_batch_and_what_to_do(
    on_mistral: httpx2.Client,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = pb.build_requests(portfolio.head(2), model=MODEL)
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "s"), client=pb.client(provider="mistral"))
    real = compatible.Rest.json

    def paused(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        answer = real(self, method, path, **kwargs)
        if method == "GET" and path.startswith("/batch/jobs/"):
            answer = {**answer, "status": "PAUSED"}
        return answer

    monkeypatch.setattr(compatible.Rest, "json", paused)
    batch_id = jobs["batch_id"].iloc[0]
    with pytest.raises(
        pb.PortfolioBatchError, match=rf"Mistral batch {batch_id} .*'PAUSED'.*Upgrade"
    ):
        pb.poll(jobs, timeout=30, progress=False)


@pytest.mark.parametrize("provider", ["mistral", "together"])
@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (httpx2.Response(301, headers={"location": "https://api.example/v1/x"}), "redirect"),
        (httpx2.Response(200, html="<html>proxy login</html>"), "not JSON"),
    ],
)
def test_an_answer_that_is_not_the_api_names_the_url_and_the_variable(
    provider: str, answer: httpx2.Response, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirect (``http://`` for ``https://``) or a proxy's HTML page: an error saying to set
    <PROVIDER>_BASE_URL to the API root, not a bare JSONDecodeError."""
    import importlib

    module = importlib.import_module(f"portfolio_batch._providers.{provider}")
    monkeypatch.setattr(compatible, "TRANSPORT", httpx2.MockTransport(lambda request: answer))
    b = module.backend(api_key="k", base_url="http://api.example/v1", max_retries=0)
    var = f"{provider.upper()}_BASE_URL"
    with pytest.raises(
        InputError, match=rf"http://api\.example/v1/.*{said}.*{var} to the API root"
    ):
        b.status("b-1")


def test_a_password_in_the_base_url_stays_out_of_the_registry_and_the_logs(
    on_mistral: httpx2.Client,
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway that takes a user:password (and adds the key itself): the url with them is
    used, the backend name kept in the registry and logged is without them."""

    class Gateway(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            assert request.headers["authorization"].startswith("Basic ")
            request.headers["authorization"] = f"Bearer {local_server.api_key}"
            return super().handle_request(request)

    monkeypatch.setattr(compatible, "TRANSPORT", Gateway())
    base = local_server.base_url.removesuffix("/v1") + "/mistral/v1"
    monkeypatch.setenv("MISTRAL_BASE_URL", base.replace("http://", "http://me:s3cret@"))
    caplog.set_level("DEBUG", logger="portfolio_batch")
    c = pb.client(provider="mistral")
    assert "s3cret" in c.backend.base_url  # the url used keeps it
    assert backend_name(c) == f"mistral:{base}"
    requests = pb.build_requests(portfolio.head(2), model=MODEL)
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "p"), client=c)
    assert jobs["backend"].eq(f"mistral:{base}").all()
    with closing(sqlite3.connect(registry_path())) as db:
        kept = "\n".join(db.iterdump())
    assert f"mistral:{base}" in kept and "s3cret" not in kept
    assert "s3cret" not in caplog.text
    groq = compatible.client("groq", api_key="k", base_url="https://me:s3cret@gw.example/v1")
    assert backend_name(groq) == "groq:https://gw.example/v1" and "s3cret" in str(groq.base_url)
