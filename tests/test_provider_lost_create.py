"""A batch create whose answer is lost on Anthropic or Gemini is never paid twice: the facade's
intent (written before sending) makes the batch the provider made all the same findable by the
creation rule, through the whole pipeline against the local server's Anthropic and Gemini routes
(``anthropic_lost_creates`` / ``gemini_lost_creates`` make a create lose its answer after the
batch was made). And Gemini finds a run's jobs by the run hash in their display names, with no
record in the home."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import client as provider_client
from portfolio_batch._home import home
from portfolio_batch._providers import _facade
from portfolio_batch._providers._protocol import connection_error, status_error
from portfolio_batch._registry import registry_path
from portfolio_batch.errors import BatchFailedError, SubmitError

anthropic = pytest.importorskip("anthropic")
pytest.importorskip("google.genai")
from google import genai  # noqa: E402

CLAUDE = "claude-haiku-4-5"
GEMINI = "gemini-2.5-flash"


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    frame = pd.read_csv(testdata / "portfolio.csv")
    return frame[frame["ticker"].str.fullmatch(r"[A-Za-z0-9]+")].head(8)


def _root(server: Any) -> str:
    return str(server.base_url).removesuffix("/v1")


@pytest.fixture
def on_anthropic(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Only Anthropic configured, pointed at the local server; the raw SDK client to look."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", local_server.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", _root(local_server))
    return anthropic.Anthropic(
        api_key=local_server.api_key, base_url=_root(local_server), max_retries=0
    )


@pytest.fixture
def on_gemini(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Only Gemini configured, pointed at the local server; the raw SDK client to look."""
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", local_server.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", _root(local_server))
    return genai.Client(
        api_key=local_server.api_key,
        http_options={"base_url": _root(local_server) + "/"},
    )


def _claude_batches(sdk: Any) -> list[str]:
    return sorted(b.id for b in sdk.messages.batches.list(limit=100))


def _gemini_jobs(sdk: Any) -> dict[str, str]:
    """The server's Gemini jobs: id -> display name."""
    return {
        str(j.name).removeprefix("batches/"): str(j.display_name)
        for j in sdk.batches.list(config={"page_size": 100})
    }


def _intents(provider: str) -> list[Path]:
    return sorted((home() / "providers" / provider / "files").glob("intent-*.json"))


def _record(provider: str, batch_id: str) -> Path:
    return home() / "providers" / provider / "files" / f"batch-{batch_id}.json"


@pytest.mark.parametrize("answer", ["drop", "500"])
def test_anthropic_create_that_lost_its_answer_is_adopted_not_sent_again(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path, answer: str
) -> None:
    requests = pb.build_requests(portfolio, model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "a", max_requests=4)
    # still running when adopted: no custom_ids to read yet
    local_server.configure(anthropic_lost_creates=2, lost_create_answer=answer, request_delay=0.3)
    c = provider_client(provider="anthropic")
    jobs = pb.submit(manifest, client=c)
    # every create lost its answer, yet one batch per shard, each the job's
    assert local_server.config.anthropic_lost_creates == 0
    assert _claude_batches(on_anthropic) == sorted(jobs["batch_id"])
    assert len(jobs) == len(manifest) == 2
    assert _intents("anthropic") == []
    results = pb.aggregate_df(pb.poll(jobs, client=c, timeout=60), requests, client=c)
    assert results["status"].eq("succeeded").all()
    # once ended, their custom_ids confirmed them as ours
    for batch_id in jobs["batch_id"]:
        record = orjson.loads(_record("anthropic", batch_id).read_bytes())
        assert record["adopted"]["confirmed"] is True
    # submitting again finds them by content: still no second batch
    pb.submit(manifest, client=c)
    assert _claude_batches(on_anthropic) == sorted(jobs["batch_id"])


@pytest.mark.parametrize("answer", ["drop", "500"])
def test_gemini_create_that_lost_its_answer_is_adopted_not_sent_again(
    on_gemini: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path, answer: str
) -> None:
    requests = pb.build_requests(portfolio, model=GEMINI)
    manifest = pb.to_jsonl(requests, tmp_path / "g", max_requests=4)
    local_server.configure(gemini_lost_creates=2, lost_create_answer=answer)
    c = provider_client(provider="gemini")
    jobs = pb.submit(manifest, client=c)
    assert local_server.config.gemini_lost_creates == 0
    made = _gemini_jobs(on_gemini)
    assert sorted(made) == sorted(jobs["batch_id"]) and len(made) == len(manifest) == 2
    # the display name carries the content hash and the run hash
    run_hash = requests.attrs["prompt_version"]
    assert sorted(made.values()) == sorted(
        f"pb-{sha}.run-{run_hash}.jsonl" for sha in manifest["sha256"]
    )
    assert _intents("gemini") == []
    # the keys each adopted job was sent are recorded, as for an answered create (an expired
    # job's requests come back as expired lines from them)
    for row in jobs.itertuples():
        keys = home() / "providers" / "gemini" / "keys" / f"{row.batch_id}.keys"
        assert len(keys.read_text().split()) == row.n_requests
    results = pb.aggregate_df(pb.poll(jobs, client=c, progress=False), requests, client=c)
    assert results["status"].eq("succeeded").all()


def _unrelated_claude_batch(sdk: Any, n: int) -> str:
    """A batch made outside the pipeline (another tool on the same key) with ``n`` requests."""
    made = sdk.messages.batches.create(
        requests=[
            {
                "custom_id": f"other-{i}",
                "params": {
                    "model": CLAUDE,
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": "hello"}],
                },
            }
            for i in range(n)
        ]
    )
    return str(made.id)


def test_two_anthropic_candidates_raise_naming_both_and_send_nothing_more(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(3), model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "amb")
    local_server.configure(request_delay=3.0)  # both still in progress: no custom_ids to read
    other = _unrelated_claude_batch(on_anthropic, n=3)
    local_server.configure(anthropic_lost_creates=1)
    c = provider_client(provider="anthropic")
    with pytest.raises(SubmitError) as caught:
        pb.submit(manifest, client=c)
    made = _claude_batches(on_anthropic)
    assert len(made) == 2 and other in made
    ours = next(b for b in made if b != other)
    message = str(caught.value)
    assert other in message and ours in message and "cancel" in message
    # again: still refused, nothing sent
    with pytest.raises(SubmitError, match=other):
        pb.submit(manifest, client=c)
    assert _claude_batches(on_anthropic) == made
    # the other one cancelled, as the error says: ours is adopted, still nothing sent
    on_anthropic.messages.batches.cancel(other)
    jobs = pb.submit(manifest, client=c)
    assert jobs["batch_id"].tolist() == [ours]
    assert _claude_batches(on_anthropic) == made


def test_ended_anthropic_candidates_are_told_apart_by_their_custom_ids(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(3), model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "ids")
    local_server.configure(request_delay=1.0)
    other = _unrelated_claude_batch(on_anthropic, n=3)
    local_server.configure(anthropic_lost_creates=1)
    c = provider_client(provider="anthropic")
    with pytest.raises(SubmitError, match=other):
        pb.submit(manifest, client=c)
    made = _claude_batches(on_anthropic)
    ours = next(b for b in made if b != other)
    local_server.configure(request_delay=0.0)
    for batch_id in made:  # both end
        while on_anthropic.messages.batches.retrieve(batch_id).processing_status != "ended":
            pass
    jobs = pb.submit(manifest, client=c)
    assert jobs["batch_id"].tolist() == [ours]
    assert _claude_batches(on_anthropic) == made


def test_a_stale_intent_does_not_adopt_a_later_unrelated_batch(
    on_anthropic: Any,
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = pb.build_requests(portfolio.head(3), model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "stale")
    from portfolio_batch._providers.anthropic import AnthropicBackend

    def timed_out(self: Any, requests: Any, *, display_name: str) -> Any:
        raise connection_error("timed out", sent=True)  # the create never reached Anthropic

    with monkeypatch.context() as patch:
        patch.setattr(AnthropicBackend, "submit", timed_out)
        with pytest.raises(SubmitError, match="got no answer"):
            pb.submit(manifest, client=provider_client(provider="anthropic"))
    assert len(_intents("anthropic")) == 1 and _claude_batches(on_anthropic) == []
    # 20 minutes later by Anthropic's clock, another tool makes a batch of the same size (in
    # progress: no custom_ids to tell it apart)
    local_server.configure(clock_offset=20 * 60, request_delay=3.0)
    other = _unrelated_claude_batch(on_anthropic, n=3)
    jobs = pb.submit(manifest, client=provider_client(provider="anthropic"))
    assert jobs["batch_id"].iloc[0] != other
    assert _claude_batches(on_anthropic) == sorted([other, jobs["batch_id"].iloc[0]])
    assert _intents("anthropic") == []  # past its window with no match: removed
    listed = {b.id: b for b in provider_client(provider="anthropic").batches.list()}
    assert listed[other].metadata is None


def test_gemini_resume_by_run_hash_with_no_record_in_the_home(
    on_gemini: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=GEMINI)
    c = provider_client(provider="gemini")
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "r", max_requests=4), client=c)
    # another run on the same key (another run hash) must stay out
    other = pb.build_requests(portfolio.head(3), model="gemini-2.5-pro")
    other_jobs = pb.submit(pb.to_jsonl(other, tmp_path / "o"), client=c)
    run_hash = requests.attrs["prompt_version"]
    assert run_hash != other.attrs["prompt_version"]
    registry_path().unlink()
    shutil.rmtree(home() / "providers")  # the facade's records and the keys sent: all gone

    found = pb.resume(run_hash, client=provider_client(provider="gemini"))
    assert sorted(found["batch_id"]) == sorted(jobs["batch_id"])
    assert not set(found["batch_id"]) & set(other_jobs["batch_id"])
    c = provider_client(provider="gemini")
    results = pb.aggregate_df(pb.poll(found, client=c, progress=False), requests, client=c)
    assert results["status"].eq("succeeded").all()
    assert sorted(results.index) == sorted(requests.index)


def test_gemini_jobs_named_the_old_way_are_found_by_the_keys_the_home_recorded(
    local_server: Any, portfolio: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from portfolio_batch._providers.gemini import GeminiBackend

    backend = GeminiBackend(
        api_key=local_server.api_key, base_url=_root(local_server), keys_dir=tmp_path / "keys"
    )
    requests = pb.build_requests(portfolio.head(3), model=GEMINI)
    lines = [
        backend.prepare({"custom_id": r.custom_id, "url": r.url, "body": r.body})
        for r in requests.itertuples()
    ]
    run_hash = requests.attrs["prompt_version"]
    with monkeypatch.context() as patch:  # as the previous version named jobs: pb-<sha>.jsonl
        patch.setattr(GeminiBackend, "display_name_for", lambda self, reqs, name: name)
        old = backend.submit(lines, display_name="pb-" + "ab" * 32 + ".jsonl")
    new = backend.submit(lines, display_name="pb-" + "cd" * 32 + ".jsonl")
    assert old.display_name == "pb-" + "ab" * 32 + ".jsonl"
    assert new.display_name == "pb-" + "cd" * 32 + f".run-{run_hash}.jsonl"
    assert sorted(backend.discover(run_hash)) == sorted([old.id, new.id])
    assert backend.discover(run_hash[:-1]) == []  # the last "-" part, not a substring
    shutil.rmtree(tmp_path / "keys")  # the home's record gone: only the new name tells
    assert backend.discover(run_hash) == [new.id]


def _adopted_foreign(
    sdk: Any, manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> tuple[pd.DataFrame, str]:
    """Submit ``manifest`` as a create that never reaches Anthropic while another user of the
    key makes a batch of the same size that same minute: that batch is taken for ours."""
    from portfolio_batch._providers.anthropic import AnthropicBackend

    theirs: list[str] = []

    def lost(self: Any, reqs: Any, *, display_name: str) -> Any:
        theirs.append(_unrelated_claude_batch(sdk, n=len(reqs)))
        raise connection_error("timed out", sent=True)

    with monkeypatch.context() as patch:
        patch.setattr(AnthropicBackend, "submit", lost)
        jobs = pb.submit(manifest, client=provider_client(provider="anthropic"))
    [other] = theirs
    assert jobs["batch_id"].tolist() == [other]  # size and creation time fit
    assert orjson.loads(_record("anthropic", other).read_bytes())["adopted"]["confirmed"] is False
    return jobs, other


def test_another_runs_batch_of_the_same_size_is_disowned_once_its_custom_ids_show(
    on_anthropic: Any,
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = pb.build_requests(portfolio.head(3), model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "foreign")
    local_server.configure(request_delay=1.0)  # running when submit looks: no custom_ids yet
    jobs, other = _adopted_foreign(on_anthropic, manifest, monkeypatch)

    c = provider_client(provider="anthropic")
    with pytest.raises(BatchFailedError) as caught:
        pb.poll(jobs, client=c, interval=0.2, timeout=60, progress=False)
    # once it ended, its custom_ids showed it is not ours: said, record gone, shard not live
    said = str(caught.value)
    assert other in said and "not ours" in said and "submit() the manifest again" in said
    assert "shard 0 of run" in said and f"file-{manifest['sha256'].iloc[0]}" in said
    assert not _record("anthropic", other).exists()
    # and never read as this shard's results
    with pytest.raises(SubmitError, match="not ours"):
        c.files.path_of(f"file-out-{other}")
    # nothing of the other run's batch was touched
    seen = on_anthropic.messages.batches.retrieve(other)
    assert seen.request_counts.succeeded == 3 and seen.request_counts.canceled == 0
    # submit() again sends the shard, and it is ours
    local_server.configure(request_delay=0.0)
    again = pb.submit(manifest, client=c)
    ours = again["batch_id"].iloc[0]
    assert ours != other and _claude_batches(on_anthropic) == sorted([other, ours])
    results = pb.aggregate_df(pb.poll(again, client=c, timeout=60), requests, client=c)
    assert results["status"].eq("succeeded").all()


class _Clock:
    """This machine's clock as the facade reads it, ``shift`` seconds off."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def time(self) -> float:
        return time.time() + self.shift

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.mark.parametrize(
    ("provider", "sent", "given_up"),
    [
        ("anthropic", -30 * 60, 0.0),  # within 15 min of giving up: adopted
        ("gemini", -60 * 60, -30 * 60),  # its exact name: adopted however late
    ],
)
def test_a_create_whose_upload_took_long_is_adopted_not_sent_again(
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    provider: str,
    sent: float,
    given_up: float,
) -> None:
    sdk = request.getfixturevalue(f"on_{provider}")
    requests = pb.build_requests(
        portfolio.head(3), model=CLAUDE if provider == "anthropic" else GEMINI
    )
    manifest = pb.to_jsonl(requests, tmp_path / "slow")
    from portfolio_batch._providers.anthropic import AnthropicBackend
    from portfolio_batch._providers.gemini import GeminiBackend

    backend = AnthropicBackend if provider == "anthropic" else GeminiBackend
    real = backend.submit
    clock = _Clock(sent)

    def slow(self: Any, reqs: Any, *, display_name: str) -> Any:
        clock.shift = given_up  # the upload took that long; then the answer is lost
        real(self, reqs, display_name=display_name)
        raise connection_error("timed out", sent=True)

    monkeypatch.setattr(_facade, "time", clock)
    with monkeypatch.context() as patch:
        patch.setattr(backend, "submit", slow)
        jobs = pb.submit(manifest, client=provider_client(provider=provider))
    made = _claude_batches(sdk) if provider == "anthropic" else sorted(_gemini_jobs(sdk))
    assert made == jobs["batch_id"].tolist() and len(made) == 1  # made once, paid once
    assert _intents(provider) == []


@pytest.mark.parametrize(
    "refused",
    [status_error(400, "invalid request"), connection_error("refused", sent=False)],
    ids=["4xx", "connection refused"],
)
def test_an_intent_is_dropped_when_the_create_surely_made_nothing(
    on_anthropic: Any,
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused: Exception,
) -> None:
    requests = pb.build_requests(portfolio.head(3), model=CLAUDE)
    manifest = pb.to_jsonl(requests, tmp_path / "none")
    from portfolio_batch._providers.anthropic import AnthropicBackend

    def refuse(self: Any, reqs: Any, *, display_name: str) -> Any:
        raise refused

    with monkeypatch.context() as patch:
        patch.setattr(AnthropicBackend, "submit", refuse)
        with pytest.raises(Exception):  # noqa: B017 - whatever submit makes of it
            pb.submit(manifest, client=provider_client(provider="anthropic"))
    # nothing can have been made: no intent left to adopt a later batch of the same size
    assert _intents("anthropic") == [] and _claude_batches(on_anthropic) == []
    jobs = pb.submit(manifest, client=provider_client(provider="anthropic"))
    assert _claude_batches(on_anthropic) == jobs["batch_id"].tolist()
    assert _intents("anthropic") == []


def test_cancelling_a_batch_adopted_by_size_alone_says_it_may_be_another_runs(
    on_anthropic: Any,
    local_server: Any,
    portfolio: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest = pb.to_jsonl(pb.build_requests(portfolio.head(3), model=CLAUDE), tmp_path / "c")
    local_server.configure(request_delay=3.0)
    jobs, other = _adopted_foreign(on_anthropic, manifest, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        pb.cancel(jobs, client=provider_client(provider="anthropic"))
    assert f"cancelling anthropic batch {other}" in caplog.text
    assert "another run's batch" in caplog.text
