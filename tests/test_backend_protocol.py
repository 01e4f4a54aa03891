"""One conformance suite for every ``Backend`` (``portfolio_batch._providers._protocol``):
OpenAI, Azure OpenAI and Groq (``_providers.openai.OpenAIBackend`` over the ``openai`` client),
Anthropic and Gemini, each through its real SDK, and Mistral and Together over their REST APIs,
against the local server on 127.0.0.1."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._contract import CANCELLING, TERMINAL
from portfolio_batch._create import MAX_BATCHES_PER_HOUR
from portfolio_batch._decode import LINE_DECODER, row_of
from portfolio_batch._jsonl import to_jsonl
from portfolio_batch._providers import Backend, BatchState, backend_of
from portfolio_batch._providers._facade import BatchClient
from portfolio_batch._providers.openai import OpenAIBackend
from portfolio_batch.errors import InputError

BACKENDS = ("openai", "azure", "groq", "anthropic", "gemini", "mistral", "together")
# the model each provider's requests name (the local server answers every one)
MODEL = {
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "mistral": "mistral-small-latest",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
}
OTHER_MODEL = {
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-pro",
    "mistral": "mistral-large-latest",
    "together": "Qwen/Qwen2.5-72B-Instruct-Turbo",
}


def _without_api_version(request: Any) -> None:
    # Azure's server takes ?api-version=...; the local server (OpenAI's routes) refuses unknown
    # query parameters, so the Azure client's requests reach it without it
    request.url = request.url.copy_remove_param("api-version")


def _make(name: str, server: Any) -> Backend:
    root = server.base_url.removesuffix("/v1")
    if name == "openai":
        return backend_of(server.client(max_retries=0))
    if name == "azure":
        # AzureOpenAI sends a key as "api-key"; an Entra token goes as the Bearer header the
        # local server reads
        return backend_of(
            openai.AzureOpenAI(
                base_url=server.base_url,
                azure_ad_token=server.api_key,
                api_version="2024-10-21",
                max_retries=0,
                http_client=openai.DefaultHttpxClient(
                    event_hooks={"request": [_without_api_version]}
                ),
            )
        )
    if name == "groq":
        from portfolio_batch._providers import compatible

        return backend_of(compatible.client("groq", api_key=server.api_key, base_url=root + "/v1"))
    if name == "anthropic":
        pytest.importorskip("anthropic")
        from portfolio_batch._providers import anthropic

        return anthropic.backend(api_key=server.api_key, base_url=root, max_retries=0)
    if name in ("mistral", "together"):
        import importlib

        module = importlib.import_module(f"portfolio_batch._providers.{name}")
        return module.backend(  # type: ignore[no-any-return]
            api_key=server.api_key, base_url=root + module.LOCAL_PATH, max_retries=0
        )
    pytest.importorskip("google.genai")
    from portfolio_batch._providers import gemini

    return gemini.backend(api_key=server.api_key, base_url=root, max_retries=0)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, local_server: Any) -> Iterator[Backend]:
    made = _make(request.param, local_server)
    yield made


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    frame = pd.read_csv(testdata / "portfolio.csv")
    return frame[frame["ticker"].str.fullmatch(r"[A-Za-z0-9]+")].head(6)


def _lines(backend: Backend, rows: pd.DataFrame, *, other: bool = False) -> list[dict[str, Any]]:
    """The canonical lines of ``rows`` for the backend's provider (``other``: another model,
    so another run hash)."""
    models = OTHER_MODEL if other else MODEL
    model = models.get(backend.name, "gpt-4.1-nano" if other else "gpt-4.1-mini")
    requests = pb.build_requests(rows, model=model)
    return [
        {"custom_id": r.custom_id, "method": r.method, "url": r.url, "body": r.body}
        for r in requests.itertuples()
    ]


def _submit(backend: Backend, lines: list[dict[str, Any]], name: str = "conf") -> BatchState:
    return backend.submit([backend.prepare(line) for line in lines], display_name=f"{name}.jsonl")


def _until(backend: Backend, batch_id: str, done: Callable[[BatchState], bool]) -> BatchState:
    deadline = time.monotonic() + 60
    while True:
        state = backend.status(batch_id)
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def _ended(backend: Backend, batch_id: str) -> BatchState:
    return _until(backend, batch_id, lambda s: s.status in TERMINAL)


def _hash(lines: list[dict[str, Any]]) -> str:
    return str(lines[0]["custom_id"]).rsplit("-", 1)[1]


def test_limits_are_sane_and_agree_with_the_shard_defaults(
    backend: Backend, portfolio: pd.DataFrame
) -> None:
    limits = backend.limits
    assert limits.max_requests > 0 and limits.max_bytes > 0
    # every custom_id build_requests makes (keys with dots, slashes, accents, 100 characters)
    # fits the provider's id rule
    keys = pd.DataFrame({"ticker": ["BRK.B", "BRK/B", "ŽIL", "X" * 100], "weight": [1, 2, 3, 4]})
    ids = pb.build_requests(keys, model=MODEL.get(backend.name, "gpt-4.1-mini")).index
    assert all(re.fullmatch(limits.id_pattern, i) for i in ids)
    defaults = inspect.signature(to_jsonl).parameters
    if backend.name in ("openai", "azure"):
        # OpenAI's own limits are to_jsonl's shard defaults and the creation pacing's
        assert limits.max_requests == defaults["max_requests"].default == 50_000
        assert limits.max_bytes == defaults["max_bytes"].default
        assert limits.creations_per_hour == MAX_BATCHES_PER_HOUR == 2000
    else:
        # a default shard never holds more requests than the provider takes
        assert limits.max_requests >= defaults["max_requests"].default


def test_prepare_rejects_a_bad_line_naming_its_custom_id(
    backend: Backend, portfolio: pd.DataFrame
) -> None:
    line = _lines(backend, portfolio.head(1))[0]
    assert backend.prepare(line)  # the good line goes
    bad = {**line, "url": "/v1/embeddings"}
    with pytest.raises(InputError, match=re.escape(repr(line["custom_id"]))):
        backend.prepare(bad)


def test_submit_then_status_ends_with_five_counts_adding_up(
    backend: Backend, portfolio: pd.DataFrame
) -> None:
    lines = _lines(backend, portfolio)
    made = _submit(backend, lines)
    assert made.status in {"validating", "in_progress", "finalizing", "completed"}
    state = _ended(backend, made.id)
    assert state.status == "completed"
    counts = (state.succeeded, state.errored, state.expired, state.cancelled, state.processing)
    assert sum(counts) == state.total == len(lines)
    assert state.succeeded == len(lines) and state.failed == 0
    assert state.ended_at is not None and state.ended_at >= state.created_at


def test_results_stream_one_openai_line_per_request(
    backend: Backend, portfolio: pd.DataFrame
) -> None:
    lines = _lines(backend, portfolio)
    made = _submit(backend, lines)
    _ended(backend, made.id)
    got = list(backend.results(made.id))
    assert sorted(g["custom_id"] for g in got) == sorted(line["custom_id"] for line in lines)
    rows = [row_of(LINE_DECODER.decode(orjson.dumps(g)), None) for g in got]
    assert {r.status for r in rows} == {"succeeded"}
    assert all(r.prompt_tokens and r.completion_tokens for r in rows)


def test_results_carry_expired_requests_as_expired_lines(
    backend: Backend, local_server: Any, portfolio: pd.DataFrame
) -> None:
    lines = _lines(backend, portfolio)
    local_server.configure(request_delay=0.3, completion_window_seconds=0.5)
    state = _ended(backend, _submit(backend, lines).id)
    assert state.status == "expired" and state.expired >= 1
    assert state.succeeded + state.errored + state.expired + state.cancelled == len(lines)
    rows = [row_of(LINE_DECODER.decode(orjson.dumps(g)), None) for g in backend.results(state.id)]
    assert len(rows) == len(lines)
    assert sum(r.status == "expired" for r in rows) == state.expired


def test_cancel_maps_to_cancelling_then_cancelled(
    backend: Backend, local_server: Any, portfolio: pd.DataFrame
) -> None:
    lines = _lines(backend, portfolio)
    local_server.configure(request_delay=0.5)
    made = _submit(backend, lines)
    # once the provider counts the requests (OpenAI counts none before validation ends, and a
    # batch cancelled while validating stays at total 0)
    _until(backend, made.id, lambda s: s.total == len(lines))
    asked = backend.cancel(made.id)
    assert asked.status in CANCELLING | {"cancelled"}
    assert asked.cancel_requested
    state = _ended(backend, made.id)
    assert state.status == "cancelled" and state.cancel_requested
    assert state.total == len(lines) and state.processing == 0
    assert state.cancelled >= 1 and state.succeeded + state.cancelled == len(lines)


def test_list_is_newest_first(backend: Backend, portfolio: pd.DataFrame) -> None:
    lines = _lines(backend, portfolio.head(3))
    made = [_submit(backend, lines[i : i + 1], f"l{i}").id for i in range(3)]
    listed = [s.id for s in backend.list() if s.id in made]
    assert listed == made[::-1]


def test_discover_finds_exactly_the_runs_batches(backend: Backend, portfolio: pd.DataFrame) -> None:
    mine = _lines(backend, portfolio)
    other = _lines(backend, portfolio.head(3), other=True)
    assert _hash(mine) != _hash(other)
    ids = [_submit(backend, mine[:3], "a").id, _submit(backend, mine[3:], "b").id]
    theirs = _submit(backend, other, "c").id
    for batch_id in [*ids, theirs]:
        _ended(backend, batch_id)  # Anthropic shows custom_ids only once a batch has ended
    assert backend.discover(_hash(mine)) == ids[::-1]  # newest first
    assert backend.discover(_hash(other)) == [theirs]
    assert backend.discover("0123abcd") == []


def test_backend_of_every_client_the_pipeline_holds(local_server: Any) -> None:
    plain = local_server.client()
    assert isinstance(backend_of(plain), OpenAIBackend) and backend_of(plain).client is plain
    assert backend_of(plain).name == "openai"
    from portfolio_batch._providers import compatible

    groq = backend_of(compatible.client("groq", api_key="k", base_url=local_server.base_url))
    assert groq.name == "groq" and groq.limits == compatible.PROVIDERS["groq"].limits
    inner = _make("anthropic", local_server)
    assert backend_of(BatchClient(inner)) is inner


def test_resume_by_run_hash_keeps_a_retry_batchs_answers(
    local_server: Any, monkeypatch: pytest.MonkeyPatch, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    # A retry batch (retry_failed re-sends the same custom_ids) carries the run's hash: found
    # with the run, after its shards, and its answers win over the failures they replace
    pytest.importorskip("anthropic")
    import shutil

    from portfolio_batch._home import home
    from portfolio_batch._registry import registry_path

    monkeypatch.setenv("ANTHROPIC_API_KEY", local_server.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", local_server.base_url.removesuffix("/v1"))
    requests = pb.build_requests(portfolio.head(5), model=MODEL["anthropic"])
    local_server.configure(request_delay=0.3, completion_window_seconds=0.5)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "a")), timeout=60)
    first = pb.aggregate_df(jobs, requests)
    again = pb.retry_failed(first, requests)
    assert 1 <= len(again) < len(requests)
    local_server.configure(request_delay=0.0, completion_window_seconds=86400)
    retry = pb.poll(pb.submit(again, out_dir=tmp_path / "b"), timeout=60)
    registry_path().unlink()
    shutil.rmtree(home() / "providers" / "anthropic")

    found = pb.resume(requests.attrs["prompt_version"]).sort_values("shard")
    assert found["batch_id"].tolist() == [*jobs["batch_id"], *retry["batch_id"]]
    assert found["n_requests"].tolist() == [len(requests), len(again)]
    results = pb.aggregate_df(pb.poll(found, timeout=60), requests)
    assert sorted(results.index) == sorted(requests.index)  # one row per custom_id
    assert results["status"].eq("succeeded").all()
    retried = results.index.isin(again.index)
    assert results.loc[retried, "batch_id"].eq(retry["batch_id"].iloc[0]).all()
    assert results.loc[~retried, "batch_id"].eq(jobs["batch_id"].iloc[0]).all()
