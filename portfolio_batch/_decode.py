"""The lines of batch output and error files, decoded into results rows.

Each line is decoded by ``msgspec`` straight into typed Structs holding only the fields kept;
``row_of`` turns one into the row ``aggregate_df`` and ``run_sync`` store (see ``ROW``), its answer
decoded and checked by a ``validate.Validator``.

    >>> line = LINE_DECODER.decode(raw_line)  # doctest: +SKIP
    >>> row_of(line, validator.decode, validator.empty)[0]  # doctest: +SKIP
    'succeeded'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["LINE_DECODER", "LOCAL_FINGERPRINT", "ROW", "VALUES", "Line", "row_of"]


class _Err(msgspec.Struct, gc=False):
    code: str | int | None = None
    message: str | None = None
    type: str | None = None


class _Details(msgspec.Struct, gc=False):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None  # GPT-5.6 and later


class _OutDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None  # chat completions
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _OutDetails | None = None
    input_tokens: int | None = None  # responses
    output_tokens: int | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _OutDetails | None = None


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
    system_fingerprint: str | None = None
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
    "cache_write_tokens",
    "reasoning_tokens",
    "values",
)
# Where the answer's values are in a row, and how many columns come before them.
VALUES = len(ROW) - 1
# The local server (portfolio_batch.local) marks its answers with this system_fingerprint and its
# engine's name; OpenAI's are "fp_" and hex digits. The row's model is then "local:<engine>".
LOCAL_FINGERPRINT = "fp_local_"


def row_of(line: Line, decode: Callable[[str], Any] | None, empty: Any = None) -> tuple[Any, ...]:
    """The results row one output/error line gives (see ``ROW``); ``decode`` decodes and checks
    the answer text, ``empty`` is the answer slot of a row without a valid answer.

    Written for the common case, a 200 chat.completion with a valid answer: it runs 50,000 times
    per batch file, so it touches as few attributes as it can. The model is what answered:
    ``body.model``, or ``local:<engine>`` for the local server's answers.
    """
    resp = line.response
    if resp is None:
        return _no_response(line, empty)
    body = resp.body
    if resp.status_code != 200 or type(body) is not _Body or body.error is not None:
        return _http_failure(resp, empty)
    model, fp = body.model, body.system_fingerprint
    if fp is not None and fp.startswith(LOCAL_FINGERPRINT):
        model = "local:" + fp[len(LOCAL_FINGERPRINT) :]
    u = body.usage
    if u is None:
        pt = ct = cached = written = thought = None
    else:
        # OpenAI's usage: cached and cache-written tokens are parts of the prompt tokens,
        # reasoning tokens part of the completion tokens; each is billed once, at its own rate.
        pt = u.prompt_tokens
        if pt is not None or u.completion_tokens is not None:
            ct, d, o = u.completion_tokens, u.prompt_tokens_details, u.completion_tokens_details
        else:
            pt, ct = u.input_tokens, u.output_tokens
            d, o = u.input_tokens_details, u.output_tokens_details
        if d is None:
            cached = written = 0
        else:
            cached, written = d.cached_tokens or 0, d.cache_write_tokens or 0
        thought = (o.reasoning_tokens or 0) if o is not None else 0
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
                model,
                written,
                thought,
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
                model,
                written,
                thought,
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
            model,
            written,
            thought,
            empty,
        )
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
        model,
        written,
        thought,
        empty,
    )


# finish_reason .. reasoning_tokens of a row without a response
_NO_USAGE = (None,) * (VALUES - 4)


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
    return (status, None, code, msg, *_NO_USAGE, empty)


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
    return ("failed", resp.status_code, code, msg, *_NO_USAGE, empty)


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
