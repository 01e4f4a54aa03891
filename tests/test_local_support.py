"""Helpers for the local server tests (imported by the other test_local_* modules), and the checks
of the helpers themselves: the OpenAPI schemas (tests/data/openapi/, vendored from the API contract)
are loaded and actually reject bad objects."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from portfolio_batch._contract import TERMINAL
from portfolio_batch._requests import RISK_SCHEMA

# A vendored copy of the API contract's OpenAPI subset: the tests need nothing beside the repo.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "openapi" / "batch-subset.yaml"

SECTORS = ["Technology", "Energy", "Utilities", "Consumer Staples", "Financials"]


def default_sigint() -> None:
    """``preexec_fn`` for a child process that a test stops with SIGINT, as a user's Ctrl-C does.

    A test run started with ``nohup`` or ``&`` ignores SIGINT and its children inherit that, so
    Python never installs its KeyboardInterrupt handler in them and the signal is lost. A terminal's
    Ctrl-C reaches a process whose SIGINT is at its default: give the child that. Only the signal
    disposition is reset, before exec, so the child is the program the user runs, unchanged."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@cache
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def _drop_nulls(value: Any) -> Any:
    # The live API sends null for unset optional fields; the spec marks them optional, not nullable.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def validate(obj: Any, name: str) -> None:
    """Validate a wire JSON object against ``#/components/schemas/<name>`` of the OpenAPI subset."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": _spec()["components"]}
    jsonschema.Draft202012Validator(schema).validate(_drop_nulls(obj))


def wire(raw_call: Any, name: str) -> dict[str, Any]:
    """Run a ``client.<...>.with_raw_response.<method>`` result: validate and return its JSON."""
    body = raw_call.http_response.json()
    validate(body, name)
    return body


def risk_body(
    i: int, *, model: str = "gpt-4o-mini", max_tokens: int = 300, **position: Any
) -> dict[str, Any]:
    fields = {
        "ticker": f"T{i:03d}",
        "name": f"Company {i}",
        "sector": SECTORS[i % len(SECTORS)],
        "weight": round(0.01 + i / 1000, 4),
        "beta": 1.1,
        "volatility": 0.3,
    }
    fields.update(position)
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a portfolio risk analyst. Answer in JSON."},
            {"role": "user", "content": "Assess this position:\n" + orjson.dumps(fields).decode()},
        ],
        "max_tokens": max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "risk", "strict": True, "schema": RISK_SCHEMA},
        },
    }


def risk_line(i: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"pos-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": risk_body(i, **body),
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
    )


def upload(
    client: Any, lines: list[Any], name: str = "requests.jsonl", purpose: str = "batch"
) -> Any:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose=purpose)


def create_batch(client: Any, lines: list[Any], **kwargs: Any) -> Any:
    file = upload(client, lines)
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", **kwargs
    )


def wait(
    client: Any, batch_id: str, *, timeout: float = 30.0, until: Collection[str] = TERMINAL
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until the batch reaches one of ``until``; every poll's JSON is schema-checked.
    Returns the last batch JSON and every poll's JSON."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = wire(client.batches.with_raw_response.retrieve(batch_id), "Batch")
        seen.append(batch)
        if batch["status"] in until:
            return batch, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch['status']} after {timeout} s")
        time.sleep(0.02)


def read_lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = client.files.content(file_id).content
    lines = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    for line in lines:
        validate(line, "BatchRequestOutput")
    return lines


# the helpers' own checks ------------------------------------------------------------------------
def test_spec_is_loaded_and_rejects_bad_objects() -> None:
    good = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "validating",
        "created_at": 1,
        "errors": None,
    }
    validate(good, "Batch")
    with pytest.raises(jsonschema.ValidationError):
        validate({**good, "status": "running"}, "Batch")
    with pytest.raises(jsonschema.ValidationError):
        validate({k: v for k, v in good.items() if k != "created_at"}, "Batch")
    with pytest.raises(jsonschema.ValidationError):
        validate({"id": "f", "object": "file", "bytes": "12"}, "OpenAIFile")
