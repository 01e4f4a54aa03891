"""The whole pipeline on Anthropic's Message Batches: the local server's Anthropic routes, driven
by the real ``anthropic`` SDK through the facade (``portfolio_batch._providers``), with only
``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL`` set."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._home import home
from portfolio_batch._providers.anthropic import batch_status, chat_completion
from portfolio_batch._registry import registry_path
from portfolio_batch.errors import InputError, RegistryError, SimulatedBackendWarning

anthropic = pytest.importorskip("anthropic")

MODEL = "claude-haiku-4-5"
ANSWER = ["status", "position_key", "risk_score", "risk_level", "drivers", "rationale"]


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    frame = pd.read_csv(testdata / "portfolio.csv")
    # keys such as BRK.B get portable ids from build_requests (helper "ids"); plain ones here
    return frame[frame["ticker"].str.fullmatch(r"[A-Za-z0-9]+")].head(8)


@pytest.fixture
def on_anthropic(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Only Anthropic configured, pointed at the local server; the raw SDK client to look."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = local_server.base_url.removesuffix("/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", local_server.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", root)
    return anthropic.Anthropic(api_key=local_server.api_key, base_url=root, max_retries=0)


def _server_batches(sdk: Any) -> list[str]:
    return [b.id for b in sdk.messages.batches.list(limit=100)]


def test_claude_run_gives_the_openai_paths_results(
    on_anthropic: Any, openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "claude", max_requests=3)
    jobs = pb.poll(pb.submit(manifest), timeout=60)
    assert jobs["backend"].str.startswith("anthropic:").all()
    assert jobs["batch_id"].str.startswith("msgbatch_").all()
    assert jobs["status"].eq("completed").all()
    assert sorted(_server_batches(on_anthropic)) == sorted(jobs["batch_id"])
    claude = pb.aggregate_df(jobs, requests)

    gpt_requests = pb.build_requests(portfolio)
    gpt_manifest = pb.to_jsonl(gpt_requests, tmp_path / "gpt", max_requests=3)
    gpt_jobs = pb.poll(pb.submit(gpt_manifest, client=openai_client), client=openai_client)
    gpt = pb.aggregate_df(gpt_jobs, gpt_requests, client=openai_client)

    assert list(claude.columns) == list(gpt.columns)
    key = "ticker"
    pd.testing.assert_frame_equal(
        claude.set_index(key)[ANSWER], gpt.set_index(key)[ANSWER], check_like=False
    )
    assert claude["status"].eq("succeeded").all()
    # the local server answered: simulated, like every local answer
    assert claude.attrs["simulated"] is True and claude["model"].eq("local:rules").all()
    assert (claude["prompt_tokens"] > 0).all() and (claude["completion_tokens"] > 0).all()


def test_expired_requests_stay_expired_and_only_they_are_resent(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(5), model=MODEL)
    local_server.configure(request_delay=0.3, completion_window_seconds=0.5)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "a")), timeout=60)
    # not "completed": any-llm's mistake (#1041)
    assert jobs["status"].tolist() == ["expired"]
    results = pb.aggregate_df(jobs, requests)
    expired = results.index[results["status"] == "expired"]
    assert len(expired) >= 1
    assert set(results["status"]) <= {"succeeded", "expired"}
    assert results.loc[expired, "error_code"].eq("batch_expired").all()

    again = pb.retry_failed(results, requests)
    assert sorted(again.index) == sorted(expired)
    local_server.configure(request_delay=0.0, completion_window_seconds=86400)
    jobs2 = pb.poll(pb.submit(again, out_dir=tmp_path / "b"), timeout=60)
    assert jobs2["batch_id"].iloc[0] not in set(jobs["batch_id"])
    sent = [r.custom_id for r in on_anthropic.messages.batches.results(jobs2["batch_id"].iloc[0])]
    assert sorted(sent) == sorted(expired)
    merged = pb.merge_results(results, pb.aggregate_df(jobs2, again))
    assert merged["status"].eq("succeeded").all()


def test_submitting_twice_makes_one_anthropic_batch(
    on_anthropic: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    manifest = pb.to_jsonl(
        pb.build_requests(portfolio, model=MODEL), tmp_path / "s", max_requests=4
    )
    first = pb.submit(manifest)
    again = pb.submit(manifest)
    assert again["batch_id"].tolist() == first["batch_id"].tolist()
    # the registry lost: the batches are found on Anthropic by content, not made again
    registry_path().unlink()
    third = pb.submit(manifest)
    assert third["batch_id"].tolist() == first["batch_id"].tolist()
    assert sorted(_server_batches(on_anthropic)) == sorted(first["batch_id"])


def test_resume_finds_a_runs_batches_without_the_registry(
    on_anthropic: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "r", max_requests=4)
    jobs = pb.submit(manifest, run_id="run-claude-1")
    registry_path().unlink()
    found = pb.resume("run-claude-1")
    assert sorted(found["batch_id"]) == sorted(jobs["batch_id"])
    assert sorted(found["shard"]) == [0, 1]
    results = pb.aggregate_df(pb.poll(found, timeout=60), requests)
    assert results["status"].eq("succeeded").all()


def _lose_the_home(home: Path) -> None:
    """Another machine, a deleted home: no registry and no facade records of the batches."""
    registry_path().unlink()
    shutil.rmtree(home / "providers" / "anthropic")


def test_resume_by_run_hash_recovers_a_run_with_no_local_record_at_all(
    on_anthropic: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "r", max_requests=4)), timeout=60)
    # another run on the same key, with another run hash (another model), must stay out
    other = pb.build_requests(portfolio.head(3), model="claude-sonnet-4-5")
    other_jobs = pb.poll(pb.submit(pb.to_jsonl(other, tmp_path / "o")), timeout=60)
    run_hash = requests.attrs["prompt_version"]
    assert run_hash != other.attrs["prompt_version"]
    assert requests.index.str.endswith(f"-{run_hash}").all()
    _lose_the_home(home())

    found = pb.resume(run_hash)
    assert sorted(found["batch_id"]) == sorted(jobs["batch_id"])
    assert not set(found["batch_id"]) & set(other_jobs["batch_id"])
    # shards numbered in creation order, as submit made them; the run id is the hash
    assert found.sort_values("shard")["batch_id"].tolist() == jobs["batch_id"].tolist()
    assert found["run_id"].eq(run_hash).all()
    assert found["n_requests"].tolist() == jobs["n_requests"].tolist()
    results = pb.aggregate_df(pb.poll(found, timeout=60), requests)
    assert results["status"].eq("succeeded").all()
    assert sorted(results.index) == sorted(requests.index)
    # the next resume finds the recovered run in the registry
    assert sorted(pb.resume(run_hash)["batch_id"]) == sorted(jobs["batch_id"])


def test_resume_by_run_hash_says_a_batch_in_progress_cannot_be_found(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    local_server.configure(request_delay=2.0)
    pb.submit(pb.to_jsonl(requests, tmp_path / "p"))
    _lose_the_home(home())
    # Anthropic shows custom_ids only in an ended batch's results: said, not guessed at
    with pytest.raises(RegistryError, match="only once it has ended"):
        pb.resume(requests.attrs["prompt_version"])


def test_cancel_shows_cancelling_then_cancelled_rows(
    on_anthropic: Any, local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    local_server.configure(request_delay=0.5)
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "c"))
    cancelled = pb.cancel(jobs)
    # Anthropic says "canceling" (one l); curator raised on it
    assert cancelled["status"].iloc[0] in ("cancelling", "cancelled")
    done = pb.poll(cancelled, timeout=60)
    assert done["status"].tolist() == ["cancelled"]
    results = pb.aggregate_df(done, requests)
    assert "cancelled" in set(results["status"])
    assert results.loc[results["status"] == "cancelled", "error_code"].eq("batch_cancelled").all()


@pytest.mark.parametrize(
    ("provider_status", "cancel", "expired", "ended_at", "want"),
    [
        ("in_progress", False, 0, None, "in_progress"),
        ("canceling", True, 0, None, "cancelling"),
        ("ended", True, 3, 200, "cancelled"),
        ("ended", False, 3, 200, "expired"),
        ("ended", False, 0, 200, "completed"),
        ("ended", False, 2, 150, "completed"),  # expired before the window ended: not expiry
    ],
)
def test_status_mapping(
    provider_status: str, cancel: bool, expired: int, ended_at: int | None, want: str
) -> None:
    got = batch_status(
        provider_status,
        cancel_requested=cancel,
        expired=expired,
        ended_at=ended_at,
        expires_at=200,
    )
    assert got == want


def test_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    body = chat_completion(
        {
            "id": "msg_1",
            "model": MODEL,
            "content": [{"type": "tool_use", "name": "risk", "input": {"risk_score": 7}}],
            "stop_reason": "tool_use",
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 90,
                "cache_creation_input_tokens": 5,
                "output_tokens": 7,
            },
        }
    )
    assert body["choices"][0]["message"]["content"] == '{"risk_score": 7}'
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 105
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 90, "cache_write_tokens": 5}
    assert body["usage"]["completion_tokens"] == 7


def test_a_claude_model_without_its_key_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    manifest = pb.to_jsonl(pb.build_requests(portfolio, model=MODEL), tmp_path / "k")
    with pytest.raises(InputError, match="ANTHROPIC_API_KEY"):
        pb.submit(manifest)


def test_no_key_at_all_runs_claude_on_the_embedded_server_marked_simulated(
    portfolio: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():  # the embedded server started (its imports may warn)
        warnings.simplefilter("ignore")
        pb.client()
    monkeypatch.setattr(pb._backend, "_announced", set())  # as in a new process
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    with pytest.warns(SimulatedBackendWarning, match="OPENAI_API_KEY"):
        pb.client()  # a simulated OpenAI run first, in the same process
    with pytest.warns(SimulatedBackendWarning, match="ANTHROPIC_API_KEY"):
        c = pb.client(provider="anthropic")  # still says which key makes a Claude run real
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "e")), timeout=60)
    assert jobs["backend"].eq("anthropic:local:embedded:rules").all()
    assert pb._backend.backend_name(c) == "anthropic:local:embedded:rules"
    results = pb.aggregate_df(jobs, requests)
    assert results["status"].eq("succeeded").all()
    assert results.attrs["simulated"] is True and results.attrs["engine"] == "rules"
