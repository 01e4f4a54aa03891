"""The local server is as strict as OpenAI: every request body is checked against OpenAI's request
schema (a bad line is a 400 in the error file, with OpenAI's message, ``param`` and ``code``), every
batch endpoint is accepted, create always answers ``validating``, every answer has an
``x-request-id``, the Batch object has ``model`` and nothing outside the spec, and the live API's
odd behaviours can be played with settings."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from test_local_support import read_lines, risk_body, upload, validate, wait, wire

from portfolio_batch.local import serve
from portfolio_batch.local.validate import response_schema


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server for the module (a key of its own, as by default); settings reset per test."""
    with serve(engine="rules", data_dir=tmp_path_factory.mktemp("strict")) as running:
        yield running


@pytest.fixture
def client(server: Any) -> Iterator[Any]:
    yield server.client(max_retries=0)
    server.configure(
        request_delay=0.0,
        output_file_lag_polls=0,
        empty_error_file_id=False,
        max_batches_per_hour=2000,
        batch_usage_chat_fields=False,
        clock_offset=0.0,
    )


def _line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions") -> Any:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _run(client: Any, endpoint: str, lines: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a batch to its end: (the batch JSON, every output/error line by custom_id)."""
    file = upload(client, lines)
    created = client.batches.create(
        input_file_id=file.id, endpoint=endpoint, completion_window="24h"
    )
    batch, _ = wait(client, created.id)
    by_id = {
        line["custom_id"]: line
        for file_id in (batch["output_file_id"], batch["error_file_id"])
        for line in read_lines(client, file_id)
    }
    return batch, by_id


PROMPT = "Summarise in one paragraph the main risks of a portfolio concentrated in technology."


def _chat(**change: Any) -> dict[str, Any]:
    body = risk_body(1)
    body.update(change)
    return body


def _wizard() -> dict[str, Any]:
    body = risk_body(1)
    body["messages"][1]["role"] = "wizard"
    return body


# Each malformed body of issue 15, with what OpenAI answers: message, param, code.
MALFORMED = {
    "response_format without type": (
        _chat(response_format={"json_schema": {"name": "risk", "schema": {}}}),
        "Missing required parameter: 'response_format.type'.",
        "response_format.type",
        "missing_required_parameter",
    ),
    "unknown parameter": (
        _chat(temprature=0.2),
        "Unrecognized request argument supplied: temprature",
        "temprature",
        "unknown_parameter",
    ),
    "temperature hot": (
        _chat(temperature="hot"),
        "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        "temperature",
        "invalid_type",
    ),
    "temperature 5": (
        _chat(temperature=5),
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 5 "
        "instead.",
        "temperature",
        "decimal_above_max_value",
    ),
    "role wizard": (
        _wizard(),
        "Invalid value: 'wizard'. Supported values are: 'developer', 'system', 'user', "
        "'assistant', 'tool', and 'function'.",
        "messages[1].role",
        "invalid_value",
    ),
    "max_tokens on a reasoning model": (
        _chat(model="o3-mini"),
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
        "'max_completion_tokens' instead.",
        "max_tokens",
        "unsupported_parameter",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_body_is_a_400_line_in_the_error_file(client: Any, case: str) -> None:
    body, message, param, code = MALFORMED[case]
    good = risk_body(2, model=body["model"])
    if body["model"] == "o3-mini":  # what such a model takes instead
        good["max_completion_tokens"] = good.pop("max_tokens")
    batch, lines = _run(client, "/v1/chat/completions", [_line("bad", body), _line("ok", good)])
    # one bad line fails that request, not the batch (as on OpenAI)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    assert lines["ok"]["response"]["status_code"] == 200
    bad = lines["bad"]
    assert bad["error"] is None and bad["response"]["status_code"] == 400
    assert bad["response"]["body"] == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


USER = {"role": "user", "content": "hi"}
# Errors inside unions (anyOf): reported inside the branch the value was meant for.
NESTED = [
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": 5}]},
        "Invalid type for 'messages[0].content': expected one of a string or an array, but got "
        "an integer instead.",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "Missing required parameter: 'messages[0].content[0].text'.",
    ),
    (
        "/v1/chat/completions",
        {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {}}},
        "Missing required parameter: 'response_format.json_schema.name'.",
    ),
    (
        "/v1/responses",
        {"input": [{"role": "wizard", "content": "hi"}]},
        "Invalid value: 'wizard'. Supported values are: 'user', 'system', 'developer', and "
        "'assistant'.",
    ),
    (
        "/v1/responses",
        {"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}},
        "Missing required parameter: 'text.format.name'.",
    ),
]


@pytest.mark.parametrize(("endpoint", "body", "message"), NESTED)
def test_errors_inside_unions_name_the_value_meant(
    client: Any, endpoint: str, body: dict[str, Any], message: str
) -> None:
    create = client.chat.completions if "chat" in endpoint else client.responses
    with pytest.raises(openai.BadRequestError) as info:
        create.create(model="gpt-4o-mini", **body)
    assert info.value.body["message"] == message
    param = "input[0].role" if "wizard" in message else message.split("'")[1]
    assert info.value.body["param"] == param


def test_the_synchronous_routes_check_bodies_too(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**_chat(temperature=5))
    assert info.value.body["param"] == "temperature"
    assert info.value.body["code"] == "decimal_above_max_value"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="hi", extra_body={"colour": "red"})
    assert info.value.body["message"] == "Unknown parameter: 'colour'."


def test_create_always_answers_validating(client: Any) -> None:
    file = upload(client, [_line("a", risk_body(0))])
    statuses = [
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).status
        for _ in range(100)
    ]
    assert statuses == ["validating"] * 100


def test_a_responses_batch_gives_the_sdks_response_objects(client: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    bodies = [
        {"model": "gpt-4o-mini", "input": "Is this fine?"},
        {
            "model": "gpt-4o-mini",
            "instructions": "Answer in JSON.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Fine?"}]}],
            "text": {"format": {"type": "json_schema", "name": "ok", "schema": schema}},
            "max_output_tokens": 50,
            "tools": [],
            "temperature": 0.2,
        },
    ]
    lines = [_line(f"r{i}", body, "/v1/responses") for i, body in enumerate(bodies)]
    batch, by_id = _run(client, "/v1/responses", lines)
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    first = Response.model_validate(by_id["r0"]["response"]["body"])
    assert first.status == "completed" and first.output_text
    second = Response.model_validate(by_id["r1"]["response"]["body"])
    assert second.temperature == 0.2 and second.max_output_tokens == 50
    assert second.output_text == '{"ok":true}'
    assert second.usage is not None and second.usage.total_tokens > 0


def test_completions_embeddings_and_moderations_batches(client: Any) -> None:
    _, by_id = _run(
        client,
        "/v1/completions",
        [
            _line(
                "c",
                {"model": "gpt-3.5-turbo-instruct", "prompt": [PROMPT, "b"], "n": 2},
                "/v1/completions",
            )
        ],
    )
    completion = Completion.model_validate(by_id["c"]["response"]["body"])
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    # at most 16 tokens unless max_tokens says otherwise, as on OpenAI
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens <= 4 * 16

    embed = {"model": "text-embedding-3-small", "input": "risk", "dimensions": 8}
    _, by_id = _run(
        client,
        "/v1/embeddings",
        [
            _line("float", embed, "/v1/embeddings"),
            _line("b64", {**embed, "encoding_format": "base64"}, "/v1/embeddings"),
        ],
    )
    floats = CreateEmbeddingResponse.model_validate(by_id["float"]["response"]["body"])
    encoded = by_id["b64"]["response"]["body"]["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))  # little-endian float32
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-7)

    text = {"model": "omni-moderation-latest"}
    _, by_id = _run(
        client,
        "/v1/moderations",
        [
            _line("calm", {**text, "input": "Diversify the portfolio."}, "/v1/moderations"),
            _line("threat", {**text, "input": ["I will kill you", "hello"]}, "/v1/moderations"),
        ],
    )
    calm = ModerationCreateResponse.model_validate(by_id["calm"]["response"]["body"])
    threat = ModerationCreateResponse.model_validate(by_id["threat"]["response"]["body"])
    assert [r.flagged for r in calm.results] == [False]
    assert [r.flagged for r in threat.results] == [True, False]
    assert threat.results[0].categories.violence


def test_chat_n_gives_n_choices(client: Any) -> None:
    answer = client.chat.completions.create(**_chat(n=3))
    assert [c.index for c in answer.choices] == [0, 1, 2]
    one = client.chat.completions.create(**_chat())
    assert answer.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert answer.usage.prompt_tokens == one.usage.prompt_tokens


@pytest.mark.parametrize(
    ("endpoint", "body", "wrong"),
    [
        ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a chart"}, {"n": 0}),
        (
            "/v1/images/edits",
            {"model": "gpt-image-1", "prompt": "a chart", "images": [{"file_id": "file-abc"}]},
            {"n": 0},
        ),
        ("/v1/videos", {"model": "sora-2", "prompt": "a chart"}, {"size": "1x1"}),
    ],
)
def test_image_and_video_batches_are_accepted_and_refused_per_line(
    client: Any, endpoint: str, body: dict[str, Any], wrong: dict[str, Any]
) -> None:
    bad = {**body, **wrong}
    batch, by_id = _run(client, endpoint, [_line("a", body, endpoint), _line("b", bad, endpoint)])
    assert batch["status"] == "completed" and batch["output_file_id"] is None
    error = by_id["a"]["response"]["body"]["error"]
    assert by_id["a"]["response"]["status_code"] == 400
    assert error["code"] == "unsupported_endpoint"
    assert "cannot generate" in error["message"] and endpoint in error["message"]
    # the body is still checked against the endpoint's schema first
    assert by_id["b"]["response"]["body"]["error"]["param"] == next(iter(wrong))


def test_every_answer_has_a_request_id(client: Any) -> None:
    raw = client.files.with_raw_response.list()
    first = raw.headers["x-request-id"]
    assert first.startswith("req_")
    assert client.files.with_raw_response.list().headers["x-request-id"] != first
    assert client.files.list()._request_id.startswith("req_")  # what the SDK shows
    with pytest.raises(openai.NotFoundError) as info:
        client.batches.retrieve("batch_doesnotexist00")
    assert info.value.request_id and info.value.request_id.startswith("req_")


def test_model_is_set_from_create_and_the_batch_has_only_spec_fields(client: Any) -> None:
    properties = set(response_schema("Batch")["components"]["schemas"]["Batch"]["properties"])
    # the first line is not JSON: the model is the first one named, and the batch fails
    file = upload(client, [b"{not json", _line("a", risk_body(0, model="gpt-4.1-mini"))])
    created = wire(
        client.batches.with_raw_response.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        ),
        "Batch",
    )
    failed, polls = wait(client, created["id"])
    assert failed["status"] == "failed"
    for batch in [created, *polls]:
        assert batch["model"] == "gpt-4.1-mini"
        assert set(batch) <= properties, set(batch) - properties


def test_list_parameters_the_route_does_not_take_are_refused(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.list(extra_query={"order": "asc"})
    assert info.value.body["param"] == "order"
    assert info.value.body["code"] == "unknown_parameter"
    assert client.files.list(order="asc").data is not None  # files take order


def test_output_file_lag_and_empty_error_file_id(server: Any, client: Any) -> None:
    server.configure(output_file_lag_polls=2, empty_error_file_id=True)
    file = upload(client, [_line("a", risk_body(0))])
    created = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    first, _ = wait(client, created.id)
    assert first["status"] == "completed" and first["request_counts"]["completed"] == 1
    assert first["output_file_id"] is None  # completed, but no output file yet
    assert first["error_file_id"] == ""  # a clean batch, as the live API has answered
    second = wire(client.batches.with_raw_response.retrieve(created.id), "Batch")
    assert second["output_file_id"] is None
    third = wire(client.batches.with_raw_response.retrieve(created.id), "Batch")
    assert third["output_file_id"] and len(read_lines(client, third["output_file_id"])) == 1


def test_batch_creations_per_hour_are_limited(tmp_path: Path) -> None:
    with serve(data_dir=tmp_path / "data", max_batches_per_hour=3) as server:
        _three_an_hour(server, server.client(max_retries=0))


def _three_an_hour(server: Any, client: Any) -> None:
    file = upload(client, [_line("a", risk_body(0))])
    args = {
        "input_file_id": file.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    for _ in range(3):
        client.batches.create(**args)
    with pytest.raises(openai.RateLimitError) as info:
        client.batches.create(**args)
    assert info.value.body["code"] == "rate_limit_exceeded"
    # over two minutes: the SDK (3.x) does not wait that long, the caller sees the 429
    assert int(info.value.response.headers["retry-after"]) > 120
    server.configure(clock_offset=3601)  # an hour later
    assert client.batches.create(**args).status == "validating"


def test_batch_usage_with_both_naming_schemes(server: Any, client: Any) -> None:
    server.configure(batch_usage_chat_fields=True)
    batch, _ = _run(client, "/v1/chat/completions", [_line("a", risk_body(0))])
    usage = batch["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["prompt_tokens"] == usage["completion_tokens"] == 0
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert client.batches.retrieve(batch["id"]).usage.input_tokens == usage["input_tokens"]


def test_wire_objects_validate_against_the_vendored_response_schemas(client: Any) -> None:
    batch, _ = _run(client, "/v1/chat/completions", [_line("a", risk_body(0))])
    for name, obj in [
        ("Batch", batch),
        (
            "OpenAIFile",
            client.files.with_raw_response.retrieve(batch["input_file_id"]).http_response.json(),
        ),
        ("ListBatchesResponse", client.batches.with_raw_response.list().http_response.json()),
    ]:
        jsonschema.validate(_no_nulls(obj), response_schema(name))
        validate(obj, name)  # and the contract's subset


def _no_nulls(value: Any) -> Any:
    # the live API sends null for unset optional fields, which the spec lists as not nullable
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def test_chat_answers_validate_as_the_sdks_type(client: Any) -> None:
    ChatCompletion.model_validate(
        client.chat.completions.with_raw_response.create(**_chat()).http_response.json()
    )


def test_the_vendored_spec_carries_its_licence() -> None:
    notice = (
        Path(response_schema.__code__.co_filename).parent / "openapi" / "LICENSE-openai-openapi.txt"
    )
    text = notice.read_text()
    assert "MIT License" in text and "openai/openai-openapi" in text
