"""OpenAI-compatible batch providers (``_providers/compatible.py``): Groq through
``openai.OpenAI(base_url=...)`` with ``GROQ_API_KEY`` / ``GROQ_BASE_URL`` pointed at the local
server (which speaks OpenAI's Files + Batches API, as Groq does); the providers whose batch API
is not OpenAI's refuse with what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import backend_name
from portfolio_batch._providers import provider_of
from portfolio_batch.errors import InputError

MODEL = "llama-3.3-70b-versatile"


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    return pd.read_csv(testdata / "portfolio.csv").head(6)


@pytest.fixture
def on_groq(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Groq's key and base URL pointed at the local server; OpenAI's key set too, to show that
    provider= decides, not the keys present. Returns the base URL."""
    monkeypatch.setenv("GROQ_API_KEY", local_server.api_key)
    monkeypatch.setenv("GROQ_BASE_URL", local_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    return str(local_server.base_url).rstrip("/")


def test_groq_run_end_to_end(
    on_groq: str, openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "groq", max_requests=4)
    c = pb.client(provider="groq")
    assert str(c.base_url).rstrip("/") == on_groq
    jobs = pb.submit(manifest, client=c)
    # another endpoint than api.groq.com: its url is in the name (part of the idempotency key)
    assert jobs["backend"].eq(f"groq:{on_groq}").all() and len(jobs) == 2
    # poll and aggregate find Groq again from the recorded backend, without a client
    jobs = pb.poll(jobs, timeout=60)
    assert jobs["status"].eq("completed").all()
    out = pb.aggregate_df(jobs, requests)
    assert out["status"].eq("succeeded").all() and len(out) == len(portfolio)
    # priced at Groq's rates for the model (genai-prices: llama-3.3-70b-versatile $0.59 in,
    # $0.79 out per M, no batch rate there, so half: Groq's batch discount), never left unknown
    assert (out["cached_tokens"] == 0).all()
    billed = (out["prompt_tokens"] * 0.295 + out["completion_tokens"] * 0.395) / 1e6
    assert out["cost_usd"].to_numpy() == pytest.approx(billed.to_numpy())
    assert jobs["est_cost_usd"].notna().all()
    assert sorted(out["ticker"]) == sorted(portfolio["ticker"])
    # the batches are on the server the base URL names, with our metadata (creation rule)
    on_server = {b.id: b for b in openai_client.batches.list(limit=100)}
    assert set(jobs["batch_id"]) <= set(on_server)
    assert all((on_server[b].metadata or {}).get("pb_sha256") for b in jobs["batch_id"])
    # submitting again creates nothing: the same backend name finds the same batches
    again = pb.submit(manifest, client=pb.client(provider="groq"))
    assert sorted(again["batch_id"]) == sorted(jobs["batch_id"])
    assert len(list(openai_client.batches.list(limit=100))) == len(on_server)


def test_groq_backend_name_is_stable_and_distinct(
    local_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-secret-value")
    c = pb.client(provider="groq", max_retries=5)
    assert str(c.base_url) == "https://api.groq.com/openai/v1/" and c.max_retries == 5
    assert backend_name(c) == "groq"
    # creates go out on a copy with max_retries=0: it must name the same backend
    assert backend_name(c.with_options(max_retries=0)) == "groq"
    # never the key
    assert "gsk-secret-value" not in backend_name(c)
    # the same url reached as plain OpenAI is another backend
    monkeypatch.setenv("GROQ_BASE_URL", local_server.base_url)
    groq = backend_name(pb.client(provider="groq"))
    assert groq.startswith("groq:") and groq != backend_name(local_server.client())


def test_groq_is_never_guessed_from_the_model_name() -> None:
    assert provider_of(MODEL) == "openai"
    assert provider_of("meta-llama/Llama-3.3-70B-Instruct-Turbo") == "openai"


def test_missing_groq_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAI configured: provider="groq" must not fall back to it
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    with pytest.raises(InputError, match="provider='groq' needs GROQ_API_KEY, which is not set"):
        pb.client(provider="groq")


def test_engine_with_groq_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-x")
    with pytest.raises(InputError, match="engine='rules' selects the embedded local server"):
        pb.client(provider="groq", engine="rules")


@pytest.mark.parametrize(("provider", "missing"), [("fireworks", "JOB_STATE_")])
def test_providers_without_openais_batch_api_say_what_is_missing(
    provider: str, missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # even with their key set: the API, not the key, is what is missing
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", "k")
    with pytest.raises(InputError) as info:
        pb.client(provider=provider)
    text = str(info.value)
    assert f"provider={provider!r}" in text and "batch API is not OpenAI's" in text
    assert missing in text and "'groq', 'together', 'mistral'" in text


def test_mistral_and_together_are_supported_through_their_own_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from portfolio_batch._providers import compatible

    assert {"groq", "mistral", "together"} <= set(compatible.SUPPORTED)
    assert "fireworks" not in compatible.SUPPORTED
    for name, base in (
        ("mistral", "https://api.mistral.ai/v1/"),
        ("together", "https://api.together.xyz/v1/"),
    ):
        monkeypatch.setenv(f"{name.upper()}_API_KEY", "k-secret")
        c = pb.client(provider=name)
        assert str(c.base_url) == base and backend_name(c) == name
        assert "k-secret" not in backend_name(c)
        # another endpoint is another backend (part of the idempotency key)
        monkeypatch.setenv(f"{name.upper()}_BASE_URL", "http://127.0.0.1:9/x/v1")
        assert backend_name(pb.client(provider=name)) == f"{name}:http://127.0.0.1:9/x/v1"


def test_unknown_provider_lists_the_compatible_ones() -> None:
    with pytest.raises(
        InputError, match=r"not known; use one of openai, .*mistral, together, groq, fireworks"
    ):
        pb.client(provider="grok")


def test_a_shard_over_groqs_100_mb_is_refused_before_any_upload(
    on_groq: str, openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    """to_jsonl's default shard is OpenAI's 200 MiB; Groq takes 100 MB per file. A shard over
    that is refused by submit, naming it and the to_jsonl limits that fit, before any upload
    (the manifest's n_bytes stands in for a 150 MB file)."""
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "big", max_requests=4)
    files_before = len(list(openai_client.files.list()))
    manifest.loc[manifest.index[1], "n_bytes"] = 150_000_000
    with pytest.raises(InputError) as info:
        pb.submit(manifest, client=pb.client(provider="groq"))
    message = str(info.value)
    assert "Shard 1" in message and "150,000,000 bytes" in message and "groq" in message
    assert "max_bytes=100000000" in message and "Nothing was uploaded" in message
    assert len(list(openai_client.files.list())) == files_before
    # the same shards fit OpenAI's limits: the check is Groq's, not a general one
    assert len(pb.submit(manifest, client=openai_client)) == len(manifest)
