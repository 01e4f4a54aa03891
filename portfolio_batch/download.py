"""Batch result files: their streaming, cached, resumable download; the decoding of their lines
into result rows; and the validation of each answer against the request's JSON schema.

A file lands in ``home()/files/<file_id>.jsonl``. It is written to a ``.part`` file first and renamed
only once complete, so a cached file is always whole and a re-run never downloads it again.

    >>> path = download_file("file-abc123", client=client)  # doctest: +SKIP
    >>> path.name
    'file-abc123.jsonl'
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import openai
import orjson
from msgspec.structs import astuple

from portfolio_batch.errors import DownloadError, InputError
from portfolio_batch.home import cache_dir

__all__ = [
    "LINE_DECODER",
    "ROW",
    "Line",
    "Validator",
    "download_file",
    "row_of",
    "schema_of_body",
    "validator_for",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# File ids become file names: anything else could point outside the cache.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
# Failures worth another attempt: the connection dropped or the server hiccuped. A 404 (file
# deleted, e.g. 30 days after the batch) or 401 will not heal by retrying.
_RETRYABLE: tuple[type[BaseException], ...] = (
    httpx2.TransportError,
    openai.APIConnectionError,
    openai.InternalServerError,
    openai.RateLimitError,
)


def download_file(
    file_id: str,
    *,
    client: Any,
    attempts: int = 4,
    expected_bytes: int | None = None,
    backoff: float = 0.5,
) -> Path:
    """Download ``file_id`` into the home's ``files/`` cache and return its path.

    Streams with ``client.files.with_streaming_response.content`` in 1 MiB chunks. A cut connection
    or a size that differs from the file object's ``bytes`` is retried up to ``attempts`` times;
    when the server honours ``Range`` the download continues where it stopped.

    >>> download_file("file-abc123", client=client).read_bytes()[:1]  # doctest: +SKIP
    b'{'
    """
    if not isinstance(file_id, str) or not _SAFE_ID.match(file_id):
        raise InputError(f"file id {file_id!r} is not a valid OpenAI file id (e.g. 'file-abc123')")
    dest = cache_dir("files") / f"{file_id}.jsonl"
    if dest.exists():  # only ever created by the rename below, after the size check
        log.debug("using cached %s", dest)
        return dest
    if expected_bytes is None:
        expected_bytes = getattr(client.files.retrieve(file_id), "bytes", None)
    part = dest.with_name(dest.name + ".part")
    problem = "no attempt made"
    for attempt in range(1, max(1, attempts) + 1):
        have = part.stat().st_size if part.exists() else 0
        if expected_bytes is not None and have >= expected_bytes > 0:
            # a whole file left by a run stopped before the rename, or junk: no Range to ask for
            if have == expected_bytes:
                os.replace(part, dest)
                return dest
            part.unlink()
            have = 0
        try:
            _fetch(client, file_id, part, have)
        except _RETRYABLE as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            size = part.stat().st_size
            if expected_bytes is None or size == expected_bytes:
                os.replace(part, dest)
                log.info("downloaded %s (%d bytes) to %s", file_id, size, dest)
                return dest
            problem = f"got {size} bytes, the file object says {expected_bytes}"
            if size > expected_bytes:  # appended onto something else: start over
                part.unlink()
        log.warning(
            "download of %s incomplete (attempt %d/%d): %s", file_id, attempt, attempts, problem
        )
        if attempt < attempts:
            time.sleep(backoff * attempt)
    raise DownloadError(
        f"could not download file {file_id} completely after {attempts} attempts ({problem}). "
        f"The partial data is in {part}; run aggregate_df again to continue, or download the file "
        f"from the dashboard and pass it with output_files=/error_files=."
    )


def _fetch(client: Any, file_id: str, part: Path, have: int) -> None:
    """One streaming attempt; appends when the server answers a Range request with 206."""
    headers = {"Range": f"bytes={have}-"} if have else None
    with client.files.with_streaming_response.content(file_id, extra_headers=headers) as resp:
        mode = "ab" if have and resp.status_code == 206 else "wb"
        with open(part, mode) as fh:
            for chunk in resp.iter_bytes(_CHUNK):
                fh.write(chunk)


# -- the lines of output/error files: only the fields kept are decoded ------------------------


class _Err(msgspec.Struct, gc=False):
    code: str | int | None = None
    message: str | None = None
    type: str | None = None


class _Details(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None  # chat completions
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens: int | None = None  # responses
    output_tokens: int | None = None
    input_tokens_details: _Details | None = None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message | None = None
    finish_reason: str | None = None


class _Part(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None
    refusal: str | None = None


class _OutputItem(msgspec.Struct, gc=False):
    type: str | None = None
    content: list[_Part] | None = None


class _Incomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class _Body(msgspec.Struct, gc=False):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _Err | None = None
    output: list[_OutputItem] | None = None  # /v1/responses
    status: str | None = None
    incomplete_details: _Incomplete | None = None


class _Response(msgspec.Struct, gc=False):
    status_code: int = 0
    body: _Body | str | None = None


class Line(msgspec.Struct, gc=False):
    """One line of a batch output or error file (the kept fields)."""

    custom_id: str
    response: _Response | None = None
    error: _Err | None = None


LINE_DECODER = msgspec.json.Decoder(Line)


# The row row_of() returns, in this order; ``values`` is the answer's field values (or None).
ROW = (
    "status",
    "http_status",
    "error_code",
    "error_message",
    "finish_reason",
    "content",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "model",
    "values",
)


def row_of(line: Line, decode: Callable[[str], Any] | None, empty: Any = None) -> tuple[Any, ...]:
    """The results row one output/error line gives (see ``ROW``); ``decode`` decodes and checks
    the answer text, ``empty`` is the answer slot of a row without a valid answer.

    Written for the common case, a 200 chat.completion with a valid answer: it runs 50,000 times
    per batch file, so it touches as few attributes as it can.
    """
    resp = line.response
    if resp is None:
        return _no_response(line, empty)
    body = resp.body
    if resp.status_code != 200 or type(body) is not _Body or body.error is not None:
        return _http_failure(resp, empty)
    u = body.usage
    if u is None:
        pt = ct = cached = None
    else:
        pt = u.prompt_tokens
        if pt is not None or u.completion_tokens is not None:
            ct, d = u.completion_tokens, u.prompt_tokens_details
        else:
            pt, ct, d = u.input_tokens, u.output_tokens, u.input_tokens_details
        cached = (d.cached_tokens or 0) if d is not None else 0
    choices = body.choices
    if choices:
        ch = choices[0]
        msg, finish = ch.message, ch.finish_reason
        content, refusal = (msg.content, msg.refusal) if msg is not None else (None, None)
    else:
        content, finish, refusal = _responses_answer(body)
    if content is not None:
        if decode is None:
            return (
                "succeeded",
                200,
                None,
                None,
                finish,
                content,
                pt,
                ct,
                cached,
                body.model,
                empty,
            )
        try:
            answer = decode(content)  # validates while decoding
        except msgspec.ValidationError as exc:
            code, problem = "schema_mismatch", f"answer does not match the schema: {exc}"
        except msgspec.DecodeError as exc:
            code, problem = "invalid_json", f"answer is not valid JSON: {exc}"
        else:
            return (
                "succeeded",
                200,
                None,
                None,
                finish,
                content,
                pt,
                ct,
                cached,
                body.model,
                answer,
            )
        if finish in ("length", "max_output_tokens"):
            problem += (
                " (the answer was cut at max_tokens: retry_failed(..., max_tokens=) raises it)"
            )
    elif refusal is not None:
        code, problem = "refusal", f"the model refused: {refusal}"
    elif decode is not None:
        code, problem = "no_content", "the response has no answer text"
    else:
        return ("succeeded", 200, None, None, finish, content, pt, ct, cached, body.model, empty)
    return (
        "invalid_output",
        200,
        code,
        problem,
        finish,
        content,
        pt,
        ct,
        cached,
        body.model,
        empty,
    )


def _no_response(line: Line, empty: Any) -> tuple[Any, ...]:
    err = line.error
    code = None if err is None or err.code is None else str(err.code)
    status = (
        "expired"
        if code == "batch_expired"
        else "cancelled"
        if code == "batch_cancelled"
        else "failed"
    )
    msg = err.message if err is not None else "the line has neither a response nor an error"
    return (status, None, code, msg, None, None, None, None, None, None, empty)


def _http_failure(resp: _Response, empty: Any) -> tuple[Any, ...]:
    body = resp.body
    code: str | None = None
    if isinstance(body, _Body) and body.error is not None:
        e = body.error
        code, msg = (str(e.code) if e.code is not None else e.type), e.message
    elif isinstance(body, str):
        msg = body
    else:
        msg = "the response has no body"
    return ("failed", resp.status_code, code, msg, None, None, None, None, None, None, empty)


def _responses_answer(body: _Body) -> tuple[str | None, str | None, str | None]:
    """(content, finish_reason, refusal) of a /v1/responses Response object."""
    if body.output is None:
        return None, None, None
    texts, refusal = [], None
    for item in body.output:
        for part in item.content or ():
            if part.text is not None:
                texts.append(part.text)
            refusal = refusal or part.refusal
    if body.incomplete_details is not None:
        finish = body.incomplete_details.reason
    else:
        finish = "stop" if body.status == "completed" else body.status
    return ("".join(texts) if texts else None), finish, refusal


# -- answers: validated against the request's JSON schema while decoded ----------------------


class Validator:
    """Decodes an answer text against one JSON schema.

    ``decode(content)`` returns the answer (``to_tuple`` of it gives the top-level field values)
    or raises ``msgspec.DecodeError`` (not JSON) / ``msgspec.ValidationError`` (not the schema).
    ``empty`` stands for "no answer" in the field columns.
    """

    fields: list[str]
    dtypes: list[str]
    getters: list[Callable[[Any], Any]]  # field k of a decoded answer

    def getter(self, field: str) -> Callable[[Any], Any] | None:
        """The getter of a field of this schema, None if the schema has no such field."""
        return self.getters[self.fields.index(field)] if field in self.fields else None

    decode: Callable[[str], Any]
    to_tuple: Callable[[Any], tuple[Any, ...]]
    empty: Any

    def check(self, content: str) -> tuple[Any, ...] | str:
        """The answer's field values, or why it is not valid (a str)."""
        try:
            return self.to_tuple(self.decode(content))
        except msgspec.ValidationError as exc:
            return f"answer does not match the schema: {exc}"
        except msgspec.DecodeError as exc:
            return f"answer is not valid JSON: {exc}"


class _StructValidator(Validator):
    """The fast path: a msgspec Struct built from a flat object schema (the default risk schema);
    its decoder validates while it decodes, in C."""

    def __init__(self, struct: type, fields: list[str], dtypes: list[str]) -> None:
        self.decode = msgspec.json.Decoder(struct).decode
        self.to_tuple = astuple
        self.empty = struct(**{f"f{n}": None for n in range(len(fields))})
        self.fields, self.dtypes = fields, dtypes
        self.getters = [attrgetter(f"f{n}") for n in range(len(fields))]


class _JsonSchemaValidator(Validator):
    """Any other schema, checked by ``jsonschema``."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InputError(
                f"the requests' response schema is not a valid JSON schema: {exc.message}"
            ) from exc
        self._validator = cls(schema)
        self._best = jsonschema.exceptions.best_match
        props = schema.get("properties") or {}
        self.fields = list(props)
        self.dtypes = [_dtype(p) for p in props.values()]
        self.to_tuple = tuple
        self.empty = (None,) * len(self.fields)
        self.getters = [itemgetter(n) for n in range(len(self.fields))]

    def decode(self, content: str) -> tuple[Any, ...]:  # type: ignore[override]
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise msgspec.DecodeError(str(exc)) from exc
        err = self._best(self._validator.iter_errors(data))
        if err is not None:
            raise msgspec.ValidationError(f"{err.message} - at `{err.json_path}`")
        if isinstance(data, dict):
            return tuple(data.get(f) for f in self.fields)
        return self.empty


_IGNORED_KEYWORDS = {"description", "title", "default", "examples", "format", "$comment"}
_NUMERIC = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_UNSUPPORTED = object()
_validator_cache: dict[bytes, Validator] = {}


def validator_for(schema: Any) -> Validator | None:
    """The (cached) validator of a JSON schema, a ``json_schema`` response format or a pydantic model."""
    if schema is None:
        return None
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if not isinstance(schema, dict):
        raise InputError(
            f"requests.attrs['schema'] must be a JSON schema dict, got {type(schema).__name__}"
        )
    if "schema" in schema and "name" in schema:  # the response_format.json_schema wrapper
        schema = schema["schema"]
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    found = _validator_cache.get(key)
    if found is None:
        found = _validator_cache[key] = _struct_validator(schema) or _JsonSchemaValidator(schema)
    return found


def schema_of_body(body: Any) -> Any:
    """The JSON schema in a request body's ``response_format`` (chat) or ``text.format`` (responses)."""
    if not isinstance(body, dict):
        return None
    fmt = body.get("response_format") or (body.get("text") or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return (fmt.get("json_schema") or fmt).get("schema")


def _struct_validator(schema: dict[str, Any]) -> Validator | None:
    """A msgspec Struct for a flat object schema, or None when the schema needs jsonschema."""
    if set(schema) - _IGNORED_KEYWORDS - {"type", "properties", "required", "additionalProperties"}:
        return None
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict) or not props:
        return None
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        return None
    required = set(schema.get("required") or ())
    fields: list[tuple[Any, ...]] = []
    for n, (name, prop) in enumerate(props.items()):
        typ = _py_type(prop)
        if typ is _UNSUPPORTED:
            return None
        # attribute names f0, f1…, renamed to the JSON names: any property name works
        fields.append((f"f{n}", typ) if name in required else (f"f{n}", typ | None, None))
    struct = msgspec.defstruct(
        "Answer",
        fields,
        kw_only=True,
        rename={f"f{n}": name for n, name in enumerate(props)},
        forbid_unknown_fields=not extra,
        gc=False,
    )
    return _StructValidator(struct, list(props), [_dtype(p) for p in props.values()])


def _py_type(prop: Any) -> Any:
    from typing import Annotated, Literal

    if not isinstance(prop, dict):
        return _UNSUPPORTED
    keys = set(prop) - _IGNORED_KEYWORDS
    if "enum" in prop:
        values = prop["enum"]
        if keys - {"enum", "type"} or not values or not all(isinstance(v, str) for v in values):
            return _UNSUPPORTED
        return Literal[tuple(values)]
    t = prop.get("type")
    nullable = isinstance(t, list) and "null" in t
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        if len(rest) != 1:
            return _UNSUPPORTED
        t = rest[0]
    meta: dict[str, Any] = {}
    if t in ("integer", "number"):
        if keys - {"type", *_NUMERIC}:
            return _UNSUPPORTED
        base: Any = int if t == "integer" else float
        meta = {_NUMERIC[k]: prop[k] for k in _NUMERIC if k in prop}
    elif t == "string":
        if keys - {"type", "minLength", "maxLength", "pattern"}:
            return _UNSUPPORTED
        base = str
        meta = {
            m: prop[k]
            for k, m in (
                ("minLength", "min_length"),
                ("maxLength", "max_length"),
                ("pattern", "pattern"),
            )
            if k in prop
        }
    elif t == "boolean":
        if keys - {"type"}:
            return _UNSUPPORTED
        base = bool
    elif t == "array":
        if keys - {"type", "items", "minItems", "maxItems"} or "items" not in prop:
            return _UNSUPPORTED
        item = _py_type(prop["items"])
        if item is _UNSUPPORTED:
            return _UNSUPPORTED
        base = list[item]  # type: ignore[valid-type]
        meta = {
            m: prop[k]
            for k, m in (("minItems", "min_length"), ("maxItems", "max_length"))
            if k in prop
        }
    else:
        return _UNSUPPORTED
    typ = Annotated[base, msgspec.Meta(**meta)] if meta else base
    return typ | None if nullable else typ


def _dtype(prop: Any) -> str:
    t = prop.get("type") if isinstance(prop, dict) else None
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return {"integer": "Int64", "number": "float64", "boolean": "boolean"}.get(t, "object")  # type: ignore[arg-type]
