"""A contract test for any Batch API base URL: OpenAI, Azure's ``/openai/v1``, a proxy, this
package's local server. It runs the Files + Batches flow through the real ``openai`` SDK and
checks every answer against OpenAI's published schemas (vendored in
``portfolio_batch/local/openapi``), the status lifecycle, the request counts, the result lines
and the error shapes.

    python -m portfolio_batch.testing.contract --base-url http://127.0.0.1:8000/v1 \\
        --api-key-env PORTFOLIO_BATCH_SERVER_KEY

The key is read from the environment variable named by ``--api-key-env`` (never from the command
line). Against a paid API it uploads two tiny requests (``--model``, default gpt-4o-mini), runs
one batch of them, cancels a second, and deletes what it uploaded; ``--wait`` bounds how long it
waits for the first batch (default 10 minutes; after that, the batch is cancelled and the result
checks are skipped). Exit code 0 when every check passed, 1 when one failed, 2 on a usage error.

From Python: ``run_contract(base_url, api_key)`` returns the ``Check`` results.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import jsonschema
import orjson

from portfolio_batch._contract import CANCELLING, TERMINAL
from portfolio_batch.local.validate import response_schema

__all__ = ["Check", "run_contract"]

# Which status may follow which (OpenAI's batch guide and spec); a poll may skip stages.
NEXT = {
    "validating": {
        "validating",
        "in_progress",
        "finalizing",
        "completed",
        "failed",
        "cancelling",
        "cancelled",
        "expired",
    },
    "in_progress": {"in_progress", "finalizing", "completed", "cancelling", "cancelled", "expired"},
    "finalizing": {"finalizing", "completed", "cancelling", "cancelled", "expired"},
    "cancelling": {"cancelling", "cancelled"},
}


@dataclass
class Check:
    """One check: ``outcome`` is ``pass``, ``fail``, ``warn`` (worth knowing, not a failure)
    or ``skip``."""

    name: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.outcome.upper():4}  {self.name}" + (
            f": {self.detail}" if self.detail else ""
        )


class _Failed(Exception):
    pass


def _no_nulls(value: Any) -> Any:
    # The live API sends null for unset optional fields, which the spec lists as optional but not
    # nullable (the contract's §7): a null counts as absent.
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def _conforms(obj: Any, name: str) -> None:
    validator = jsonschema.Draft202012Validator(response_schema(name))
    if validator.is_valid(obj):  # e.g. an error's "code": null, which the spec allows
        return
    try:
        validator.validate(_no_nulls(obj))
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top)"
        raise _Failed(f"not a valid {name} at {where}: {exc.message}") from None


def _request_line(custom_id: str, model: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_completion_tokens": 20,
        },
    }


class _Run:
    """The flow, one check at a time; a check that fails skips those that need its result."""

    def __init__(
        self, client: Any, *, model: str, wait: float, poll: float, report: Callable[[Check], None]
    ) -> None:
        self.client = client
        self.model = model
        self.wait = wait
        self.poll = poll
        self.report = report
        self.results: list[Check] = []
        self.ctx: dict[str, Any] = {}
        self.lines = [
            _request_line(f"contract-{i}", model, f"Say the number {i}.") for i in range(2)
        ]
        self.data = b"".join(orjson.dumps(line) + b"\n" for line in self.lines)

    def check(self, name: str, needs: Sequence[str], step: Callable[[_Run], str | None]) -> None:
        missing = [n for n in needs if n not in self.ctx]
        if missing:
            result = Check(name, "skip", f"needs {', '.join(missing)}")
        else:
            try:
                result = Check(name, "pass", step(self) or "")
            except _Failed as exc:
                result = Check(name, "fail", str(exc))
            except Exception as exc:  # an SDK error is the server's answer: a failure
                result = Check(name, "fail", f"{type(exc).__name__}: {exc}")
        self.results.append(result)
        self.report(result)

    def raw(self, call: Any) -> tuple[Any, Any]:
        """(JSON body, headers) of a ``with_raw_response`` call."""
        return call.http_response.json(), call.http_response.headers

    def warn(self, name: str, detail: str) -> None:
        result = Check(name, "warn", detail)
        self.results.append(result)
        self.report(result)


def _files_create(run: _Run) -> str:
    body, headers = run.raw(
        run.client.files.with_raw_response.create(
            file=("contract.jsonl", io.BytesIO(run.data)), purpose="batch"
        )
    )
    _conforms(body, "OpenAIFile")
    if body["purpose"] != "batch" or body["bytes"] != len(run.data):
        raise _Failed(f"purpose {body['purpose']!r}, bytes {body['bytes']} (sent {len(run.data)})")
    run.ctx["file"] = body
    if not headers.get("x-request-id"):
        run.warn("x-request-id header", "files.create answered without one")
    return str(body["id"])


def _files_agree(run: _Run) -> None:
    client, file_id = run.client, run.ctx["file"]["id"]
    body, _ = run.raw(client.files.with_raw_response.retrieve(file_id))
    _conforms(body, "OpenAIFile")
    if body["id"] != file_id:
        raise _Failed(f"retrieve gave {body['id']}")
    listed, _ = run.raw(client.files.with_raw_response.list(purpose="batch"))
    _conforms(listed, "ListFilesResponse")
    if file_id not in [f["id"] for f in listed["data"]]:
        raise _Failed("the uploaded file is not in files.list(purpose='batch')")
    if client.files.content(file_id).content != run.data:
        raise _Failed("files.content differs from the uploaded bytes")


def _batches_create(run: _Run) -> str:
    file_id = run.ctx["file"]["id"]
    body, _ = run.raw(
        run.client.batches.with_raw_response.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"purpose": "portfolio_batch contract test"},
        )
    )
    _conforms(body, "Batch")
    run.ctx["batch"] = body
    if body["status"] != "validating":
        raise _Failed(f"status {body['status']!r} (expected 'validating')")
    if body["input_file_id"] != file_id or body["endpoint"] != "/v1/chat/completions":
        raise _Failed("input_file_id or endpoint differ from the request")
    extra = set(body) - set(
        response_schema("Batch")["components"]["schemas"]["Batch"]["properties"]
    )
    if extra:
        run.warn("Batch fields", f"fields outside the spec: {sorted(extra)}")
    return str(body["id"])


def _batches_list(run: _Run) -> None:
    body, _ = run.raw(run.client.batches.with_raw_response.list(limit=1))
    _conforms(body, "ListBatchesResponse")
    if len(body["data"]) > 1:
        raise _Failed(f"limit=1 gave {len(body['data'])} batches")
    if body["data"] and body.get("has_more") and body.get("last_id") is None:
        raise _Failed("has_more without last_id")


def _check_step(previous: dict[str, Any], body: dict[str, Any]) -> None:
    """One poll's answer against the one before: an allowed status move, counts that add up."""
    if body["status"] not in NEXT.get(previous["status"], {previous["status"]}):
        raise _Failed(f"status went {previous['status']!r} -> {body['status']!r}")
    counts, before = body.get("request_counts"), previous.get("request_counts")
    if not counts:
        return
    if counts["completed"] + counts["failed"] > counts["total"]:
        raise _Failed(f"request_counts {counts}: completed + failed > total")
    if before and counts["completed"] < before["completed"]:
        raise _Failed(f"request_counts.completed fell: {before} -> {counts}")


def _lifecycle(run: _Run) -> str:
    batch_id = run.ctx["batch"]["id"]
    previous = run.ctx["batch"]
    deadline = time.monotonic() + run.wait
    delay = 0.05
    while True:
        body, _ = run.raw(run.client.batches.with_raw_response.retrieve(batch_id))
        _conforms(body, "Batch")
        _check_step(previous, body)
        previous = body
        if body["status"] in TERMINAL:
            run.ctx["done"] = body
            return f"{body['status']}, request_counts {body.get('request_counts')}"
        if time.monotonic() > deadline:
            run.client.batches.cancel(batch_id)
            raise _Failed(f"still {body['status']} after {run.wait:.0f} s (cancelled it)")
        time.sleep(delay)
        delay = min(delay * 2, run.poll)


def _result_lines(run: _Run, done: dict[str, Any]) -> dict[str, Any]:
    """The output and error files' lines by custom_id, each checked against the spec."""
    seen: dict[str, Any] = {}
    for file_id in (done.get("output_file_id"), done.get("error_file_id")):
        if not file_id:  # null or "" both mean no file
            continue
        for raw in run.client.files.content(file_id).content.splitlines():
            if raw.strip():
                line = orjson.loads(raw)
                _conforms(line, "BatchRequestOutput")
                seen[line["custom_id"]] = line
    return seen


def _results(run: _Run) -> str:
    done = run.ctx["done"]
    if done["status"] != "completed":
        raise _Failed(f"the batch ended {done['status']}: {done.get('errors')}")
    # the live API has shown a completed batch without its output file for a poll or two
    for _attempt in range(5):
        if done.get("output_file_id") or done.get("error_file_id"):
            break
        time.sleep(2)
        done, _ = run.raw(run.client.batches.with_raw_response.retrieve(done["id"]))
    seen = _result_lines(run, done)
    wanted = {line["custom_id"] for line in run.lines}
    if set(seen) != wanted:
        raise _Failed(f"result lines for {sorted(seen)}, requests were {sorted(wanted)}")
    ok = [c for c, line in seen.items() if (line.get("response") or {}).get("status_code") == 200]
    counts = done["request_counts"]
    if counts["completed"] != len(ok) or counts["total"] != len(wanted):
        raise _Failed(f"request_counts {counts} but {len(ok)} of {len(wanted)} lines are 200s")
    return f"{len(ok)} answered, {len(wanted) - len(ok)} failed"


def _cancel(run: _Run) -> str:
    import openai

    client = run.client
    created = client.batches.create(
        input_file_id=run.ctx["file"]["id"],
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    try:
        body, _ = run.raw(client.batches.with_raw_response.cancel(created.id))
    except openai.BadRequestError:
        # what cancel does to a batch that already ended is not documented: a 400 is fine then
        ended = client.batches.retrieve(created.id)
        if ended.status not in TERMINAL:
            raise
        return f"it had already ended ({ended.status}) and cancel answered a 400"
    _conforms(body, "Batch")
    if body["status"] not in TERMINAL | CANCELLING:
        raise _Failed(f"cancel answered status {body['status']!r}")
    return str(body["status"])


def _error_shapes(run: _Run) -> None:
    import openai

    client = run.client
    tries: list[tuple[str, Callable[[], Any], type[openai.APIStatusError]]] = [
        (
            "an unknown batch",
            lambda: client.batches.retrieve("batch_contractdoesnotexist"),
            openai.NotFoundError,
        ),
        (
            "an unknown endpoint",
            lambda: client.batches.create(
                input_file_id=run.ctx.get("file", {}).get("id", "file-none"),
                endpoint="/v1/nothing",  # type: ignore[arg-type]
                completion_window="24h",
            ),
            openai.BadRequestError,
        ),
    ]
    for what, call, expected in tries:
        try:
            call()
        except expected as exc:
            body = {"error": exc.body} if isinstance(exc.body, dict) else exc.body
            _conforms(body, "ErrorResponse")
        except openai.APIStatusError as exc:
            raise _Failed(f"{what}: HTTP {exc.status_code}, expected {expected.__name__}") from None
        else:
            raise _Failed(f"{what} was accepted")
    # no key at all: a 401 in the same shape (the SDK cannot send none)
    answer = httpx2.get(f"{str(client.base_url).rstrip('/')}/files", timeout=60)
    if answer.status_code != 401:
        raise _Failed(f"a request without an API key got HTTP {answer.status_code}, not 401")
    _conforms(answer.json(), "ErrorResponse")


def _files_delete(run: _Run) -> None:
    body, _ = run.raw(run.client.files.with_raw_response.delete(run.ctx["file"]["id"]))
    _conforms(body, "DeleteFileResponse")
    if body.get("deleted") is not True:
        raise _Failed(f"deleted is {body.get('deleted')!r}")


# The checks in the order they run: (name, what they need from earlier ones, the check).
_CHECKS: list[tuple[str, tuple[str, ...], Callable[[_Run], str | None]]] = [
    ("files.create answers an OpenAIFile", (), _files_create),
    ("files.retrieve, files.list and files.content agree", ("file",), _files_agree),
    ("batches.create answers a validating Batch", ("file",), _batches_create),
    ("batches.list pages with first_id/last_id/has_more", ("batch",), _batches_list),
    ("the batch moves through the lifecycle to an end", ("batch",), _lifecycle),
    ("the output and error files hold one valid line per request", ("done",), _results),
    ("cancel answers cancelling or cancelled", ("file",), _cancel),
    ("errors have OpenAI's shape and status codes", (), _error_shapes),
    ("files.delete answers a DeleteFileResponse", ("file",), _files_delete),
]


def run_contract(
    base_url: str,
    api_key: str,
    *,
    model: str = "gpt-4o-mini",
    wait: float = 600.0,
    poll: float = 10.0,
    report: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run the contract checks against ``base_url`` (ending in ``/v1``) with ``api_key``; each
    result is also passed to ``report`` as it comes.

    >>> results = run_contract("http://127.0.0.1:8000/v1", key)       # doctest: +SKIP
    >>> [r for r in results if r.outcome == "fail"]                     # doctest: +SKIP
    []
    """
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    run = _Run(client, model=model, wait=wait, poll=poll, report=report or (lambda _: None))
    for name, needs, step in _CHECKS:
        run.check(name, needs, step)
    return run.results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m portfolio_batch.testing.contract",
        description="Check a Batch API (Files + Batches) against OpenAI's published contract.",
    )
    parser.add_argument("--base-url", required=True, help="the API's base URL, ending in /v1")
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="the environment variable holding the API key (default OPENAI_API_KEY)",
    )
    parser.add_argument("--model", default="gpt-4o-mini", help="model of the two test requests")
    parser.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the batch (default 600)"
    )
    parser.add_argument(
        "--poll", type=float, default=10.0, help="longest pause between polls (default 10 s)"
    )
    args = parser.parse_args(argv)
    key = os.environ.get(args.api_key_env)
    if not key:
        parser.error(
            f"${args.api_key_env} is not set; put the API key in it (or name another "
            "variable with --api-key-env)."
        )
    print(f"Batch API contract checks against {args.base_url}", flush=True)
    results = run_contract(
        args.base_url,
        key,
        model=args.model,
        wait=args.wait,
        poll=args.poll,
        report=lambda check: print(check, flush=True),
    )
    failed = sum(r.outcome == "fail" for r in results)
    passed = sum(r.outcome == "pass" for r in results)
    print(f"{passed} passed, {failed} failed, {len(results) - passed - failed} other")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
