"""The ``smollm2`` engine: real SmolLM2-135M output through a batch and the sync route.

Skipped only when llama-cpp-python is not installed and ``PB_REQUIRE_LLM`` is unset."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from test_local_support import create_batch, read_lines, risk_body, risk_line, wait

from portfolio_batch._tokens import count_body_tokens, count_text_tokens
from portfolio_batch.local import serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None and not os.environ.get("PB_REQUIRE_LLM"),
        reason="llama-cpp-python is not installed (pip install 'portfolio_batch[local-llm]')",
    ),
]


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with serve(engine="smollm2", data_dir=tmp_path_factory.mktemp("smollm2")) as server:
        yield server


def test_batch_of_real_model_answers(llm_server: Any) -> None:
    client = llm_server.client()
    lines = [risk_line(i, max_tokens=80) for i in range(2)]
    batch, _ = wait(client, create_batch(client, lines).id, timeout=240)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    output = read_lines(client, batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == ["pos-0", "pos-1"]
    for line in output:
        body = line["response"]["body"]
        assert body["system_fingerprint"] == "fp_local_smollm2"
        choice = body["choices"][0]
        content = choice["message"]["content"]
        assert content.strip()
        assert choice["finish_reason"] in ("stop", "length")
        request = lines[int(line["custom_id"].split("-")[1])]["body"]
        assert (
            body["usage"]["prompt_tokens"] == count_body_tokens([request], model="gpt-4o-mini")[0]
        )
        assert body["usage"]["completion_tokens"] == count_text_tokens(content) <= 80
        if choice["finish_reason"] == "stop":  # the schema is the grammar: a finished answer parses
            assert "risk_score" in orjson.loads(content)
    assert batch["usage"]["output_tokens"] == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in output
    )


def test_sync_chat_and_context_limit(llm_server: Any) -> None:
    client = llm_server.client()
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Name one stock index."}],
        max_tokens=16,
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 16
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**risk_body(0, notes="very long notes " * 800))
    assert info.value.body["code"] == "context_length_exceeded"
    assert "2048" in info.value.body["message"]


def test_missing_extra_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from portfolio_batch.errors import MissingDependencyError
    from portfolio_batch.local.engines.smollm2 import SmolLM2Engine

    real_import = builtins.__import__

    def no_llama(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "llama_cpp":
            raise ImportError("no llama_cpp here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(MissingDependencyError, match=r"portfolio_batch\[local-llm\]"):
        SmolLM2Engine()
