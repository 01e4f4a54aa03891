"""Exact, offline token counts: the cookbook's recorded numbers, and the batch counter."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from portfolio_batch._tokens import (
    RESPONSE_FORMAT_FRAME_TOKENS,
    count_body_tokens,
    count_chat_tokens,
    count_text_tokens,
    encoding_for_model,
    encoding_name_for_model,
    response_format_tokens,
)

# OpenAI cookbook, "How to count tokens with tiktoken": the example messages and the prompt_tokens
# the API returned for them.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)],
)
def test_cookbook_prompt_tokens(model: str, expected: int) -> None:
    assert count_chat_tokens(COOKBOOK_MESSAGES, model=model) == expected


def test_encoding_names() -> None:
    assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for_model("openai/gpt-4.1") == "o200k_base"
    assert encoding_name_for_model("o3-mini") == "o200k_base"
    assert encoding_name_for_model("gpt-4-0613") == "cl100k_base"
    assert encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert encoding_for_model("gpt-4o").name == "o200k_base"


def test_special_token_text_is_counted_as_text() -> None:
    assert count_text_tokens("<|endoftext|>", model="gpt-4o") > 1


def test_works_with_the_network_blocked() -> None:
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network blocked by test')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import os, tempfile; os.environ['TIKTOKEN_CACHE_DIR'] = tempfile.mkdtemp()\n"
        "from portfolio_batch._tokens import count_text_tokens\n"
        "print(count_text_tokens('hello world', model='gpt-4o'), count_text_tokens('hello world', model='gpt-4'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]


def test_response_format_tokens_by_hand() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": schema},
    }
    enc = encoding_for_model("gpt-4o-mini")
    by_hand = (
        len(enc.encode_ordinary(orjson.dumps(schema).decode()))
        + len(enc.encode_ordinary("answer"))
        + RESPONSE_FORMAT_FRAME_TOKENS
    )
    assert response_format_tokens(rf) == by_hand
    assert response_format_tokens({"type": "json_object"}) == RESPONSE_FORMAT_FRAME_TOKENS
    assert response_format_tokens({"type": "text"}) == 0
    assert response_format_tokens(None) == 0


def test_count_body_tokens_matches_the_single_counters() -> None:
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "r", "strict": True, "schema": {"type": "object"}},
    }
    system = {"role": "system", "content": "You are terse."}
    bodies = [
        {
            "model": "gpt-4o",
            "messages": [system, {"role": "user", "content": f"Row {i}: é ✓"}],
            "response_format": rf,
        }
        for i in range(5)
    ]
    bodies.append({"model": "gpt-4o", "messages": COOKBOOK_MESSAGES})
    bodies.append({"model": "text-embedding-3-small", "input": ["a b", "c"]})
    counts = count_body_tokens(bodies, model="gpt-4o")
    assert counts.dtype.kind == "i"
    for body, n in zip(bodies[:5], counts[:5], strict=True):
        assert n == count_chat_tokens(body["messages"], model="gpt-4o") + response_format_tokens(
            rf, model="gpt-4o"
        )
    assert counts[5] == 124
    assert counts[6] == count_text_tokens("a b", model="gpt-4o") + count_text_tokens(
        "c", model="gpt-4o"
    )
