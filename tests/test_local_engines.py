"""The engines and the synchronous routes: the rules engine's risk scores, schema-valid JSON for
any schema, max_tokens truncation, token usage as OpenAI counts it, embeddings and responses."""

from __future__ import annotations

from typing import Any

import jsonschema
import openai
import orjson
import pytest
from test_local_support import RISK_SCHEMA, risk_body

from portfolio_batch._tokens import (
    count_body_tokens,
    count_chat_tokens,
    count_text_tokens,
    response_format_tokens,
)
from portfolio_batch.errors import InputError
from portfolio_batch.local.engines import load_engine
from portfolio_batch.local.engines.rules import position_from_messages, risk_answer
from portfolio_batch.local.engines.schema_fill import conform

BASE = {"ticker": "X", "sector": "Industrials", "weight": 0.05, "beta": 1.0, "volatility": 0.25}


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("weight", 0.01, 0.12),
        ("volatility", 0.1, 0.45),
        ("beta", 0.6, 1.5),
        ("sector", "Utilities", "Technology"),
    ],
)
def test_risk_grows_with_each_factor(field: str, low: Any, high: Any) -> None:
    assert (
        risk_answer({**BASE, field: low})["risk_score"]
        < risk_answer({**BASE, field: high})["risk_score"]
    )


def test_risk_answer_is_schema_valid_and_explained() -> None:
    calm = risk_answer(
        {
            "ticker": "KO",
            "sector": "Consumer Staples",
            "weight": 0.01,
            "beta": 0.5,
            "volatility": 0.12,
        }
    )
    wild = risk_answer(
        {
            "ticker": "NVDA",
            "name": "Nvidia",
            "sector": "Technology",
            "weight": 0.15,
            "beta": 1.8,
            "volatility": 0.55,
        }
    )
    for answer in (calm, wild):
        jsonschema.validate(answer, RISK_SCHEMA)
    assert calm["risk_level"] == "low" and wild["risk_level"] == "high"
    assert "NVDA (Nvidia)" in wild["rationale"] and "Technology" in wild["rationale"]
    assert wild["drivers"][0].startswith("position weight 15.0%")
    # Missing or junk numbers fall back to neutral defaults rather than failing.
    jsonschema.validate(risk_answer({"ticker": "Z", "weight": "n/a"}), RISK_SCHEMA)


def test_position_is_read_from_the_last_line_only() -> None:
    fields = {"ticker": "AAPL", "weight": 0.1}
    user = {"role": "user", "content": "Assess:\n" + orjson.dumps(fields).decode()}
    assert position_from_messages([{"role": "system", "content": "x"}, user]) == fields
    assert (
        position_from_messages(
            [{"role": "user", "content": orjson.dumps(fields).decode() + "\nthanks"}]
        )
        is None
    )
    assert position_from_messages([{"role": "user", "content": '{"colour": "red"}'}]) is None


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 5, "maximum": 9},
            "b": {"type": "boolean"},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2, "maxItems": 2},
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "note": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
        },
        "required": ["tags", "score", "note"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"id": {"type": "string", "minLength": 4}},
                "required": ["id"],
            }
        },
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
            "kind": {"const": "list"},
            "maybe": {"type": ["integer", "null"]},
        },
        "required": ["items", "kind", "maybe"],
    },
    {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    {"type": "string", "enum": ["only"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_conform_is_valid_for_any_schema(schema: dict[str, Any]) -> None:
    jsonschema.validate(conform("anything", schema), schema)
    jsonschema.validate(
        conform({"a": 100, "tags": ["z", "x", "y"], "note": "toolong"}, schema), schema
    )


def test_conform_keeps_hints_that_fit() -> None:
    answer = risk_answer(BASE)
    assert conform(answer, RISK_SCHEMA) == answer
    clipped = conform(
        {**answer, "risk_score": 140, "risk_level": "extreme", "extra": 1}, RISK_SCHEMA
    )
    assert (
        clipped["risk_score"] == 100 and clipped["risk_level"] == "low" and "extra" not in clipped
    )


def test_unknown_engine_says_which_exist() -> None:
    with pytest.raises(InputError, match="--engine rules"):
        load_engine("gpt-local")


def test_sync_chat_honours_response_format(openai_client: Any) -> None:
    body = risk_body(3)
    reply = openai_client.chat.completions.create(**body)
    answer = orjson.loads(reply.choices[0].message.content)
    jsonschema.validate(answer, RISK_SCHEMA)
    assert reply.id.startswith("chatcmpl-") and reply.system_fingerprint == "fp_local_rules"
    assert reply.usage.prompt_tokens == count_body_tokens([body], model=body["model"])[0]
    assert reply.usage.completion_tokens == count_text_tokens(reply.choices[0].message.content)
    again = openai_client.chat.completions.create(**body)
    assert again.choices[0].message.content == reply.choices[0].message.content  # deterministic

    plain = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is a bond?"}]
    )
    assert "What is a bond?" in plain.choices[0].message.content
    as_object = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is a bond?"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(orjson.loads(as_object.choices[0].message.content), dict)
    custom = {
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 3}},
        "required": ["n"],
        "additionalProperties": False,
    }
    shaped = openai_client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": "Count"}],
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": custom}},
    )
    jsonschema.validate(orjson.loads(shaped.choices[0].message.content), custom)


def test_sync_chat_truncates_at_max_tokens(openai_client: Any) -> None:
    reply = openai_client.chat.completions.create(**risk_body(1, max_tokens=10))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 10
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.choices[0].message.content)
    newer = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there"}],
        max_completion_tokens=3,
    )
    assert newer.usage.completion_tokens == 3 and newer.choices[0].finish_reason == "length"


def test_sync_errors_are_openai_errors(local_server: Any, openai_client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.body["param"] == "messages"
    local_server.configure(context_tokens=30)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(**risk_body(0))
    assert info.value.body["code"] == "context_length_exceeded"


def test_embeddings_and_responses(openai_client: Any) -> None:
    emb = openai_client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])
    vectors = [d.embedding for d in emb.data]
    assert len(vectors[0]) == 1536 and vectors[0] == vectors[2] and vectors[0] != vectors[1]
    # the SDK asks for base64 (float32) and decodes it: unit length to float32 precision
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-6
    assert emb.usage.prompt_tokens == 3
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    resp = openai_client.responses.create(
        model="gpt-4o-mini",
        instructions="Answer in JSON.",
        input="Is this fine?",
        text={"format": {"type": "json_schema", "name": "ok", "schema": schema, "strict": True}},
    )
    assert resp.status == "completed"
    assert orjson.loads(resp.output_text) == {"ok": True}
    assert resp.usage.input_tokens == count_chat_tokens(
        [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Is this fine?"},
        ]
    ) + response_format_tokens({"type": "json_schema", "json_schema": {"schema": schema}})
