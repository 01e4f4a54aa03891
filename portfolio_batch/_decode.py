"""The lines of batch output and error files, decoded into results rows.

Each line is decoded by ``msgspec`` straight into typed Structs holding only the fields kept;
``row_of`` turns one into the ``ResultRow`` (``_contract``) ``aggregate_df`` and ``run_sync`` store,
its answer decoded and checked by a ``validate.Validator``.

    >>> line = LINE_DECODER.decode(raw_line)  # doctest: +SKIP
    >>> row_of(line, validator.decode, validator.empty).status  # doctest: +SKIP
    'succeeded'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from portfolio_batch._contract import ROW_COLUMNS, ResultRow

__all__ = ["LINE_DECODER", "LOCAL_FINGERPRINT", "Line", "failed_row", "row_of"]


class _Err(msgspec.Struct, gc=False):
    code: str | int | None = None
    message: str | None = None
    type: str | None = None
    # vLLM's run-batch writes its ErrorResponse, {"error": {message, type, param, code}}
    error: _Err | None = None


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
    error: _Err | str | None = None  # a plain message: vLLM run-batch's exceptions


LINE_DECODER = msgspec.json.Decoder(Line)


# The local server (portfolio_batch.local) marks its answers with this system_fingerprint and its
# engine's name; OpenAI's are "fp_" and hex digits. The row's model is then "local:<engine>".
LOCAL_FINGERPRINT = "fp_local_"
# ResultRow(*values) runs a Python __new__; this C call builds the same row from one tuple
_new = tuple.__new__
# finish_reason .. model of a row without a response
_NO_USAGE = (None,) * (len(ROW_COLUMNS) - 4)


def row_of(line: Line, decode: Callable[[str], Any] | None, empty: Any = None) -> ResultRow:
    """The results row one output/error line gives; ``decode`` decodes and checks the answer
    text, ``empty`` is the answer of a row without a valid one.

    Written for the common case, a 200 chat.completion with a valid answer: it runs 50,000 times
    per batch file, so it touches as few attributes as it can. The model is what answered:
    ``body.model``, or ``local:<engine>`` for the local server's answers.
    """
    resp = line.response
    if resp is None:
        return _no_response(line, empty)
    body = resp.body
    if resp.status_code != 200 or type(body) is not _Body or body.error is not None:
        return _http_failure(resp, empty, line.error)
    choices = body.choices
    if choices:
        ch = choices[0]
        msg, finish = ch.message, ch.finish_reason
        content, refusal = (msg.content, msg.refusal) if msg is not None else (None, None)
    else:
        content, finish, refusal = _responses_answer(body)
    answer, code, problem = empty, None, None
    if content is None:
        if refusal is not None:
            code, problem = "refusal", f"the model refused: {refusal}"
        elif decode is not None:
            code, problem = "no_content", "the response has no answer text"
    elif decode is not None:
        try:
            answer = decode(content)  # validates while decoding
        except msgspec.DecodeError as exc:  # ValidationError included
            code, problem = _undecodable(exc, finish)
    model, fp = body.model, body.system_fingerprint
    if fp is not None and fp.startswith(LOCAL_FINGERPRINT):
        model = "local:" + fp[len(LOCAL_FINGERPRINT) :]
    u = body.usage  # inline, not a helper: a call per row costs 15 % of this function
    if u is None:
        pt = ct = cached = written = thought = None
    else:
        # OpenAI's usage: cached and cache-written tokens are parts of the prompt tokens,
        # reasoning tokens part of the completion tokens; each is billed once, at its own rate.
        pt = u.prompt_tokens
        if pt is not None or u.completion_tokens is not None:
            ct, d, o = u.completion_tokens, u.prompt_tokens_details, u.completion_tokens_details
        else:  # the responses API's names
            pt, ct = u.input_tokens, u.output_tokens
            d, o = u.input_tokens_details, u.output_tokens_details
        cached, written = (0, 0) if d is None else (d.cached_tokens or 0, d.cache_write_tokens or 0)
        thought = (o.reasoning_tokens or 0) if o is not None else 0
    status = "succeeded" if code is None else "invalid_output"
    return _new(  # in ResultRow's field order
        ResultRow,
        (
            status,
            200,
            code,
            problem,
            finish,
            content,
            pt,
            ct,
            cached,
            written,
            thought,
            model,
            answer,
        ),
    )


def failed_row(
    status: str,
    code: str | None,
    message: str | None,
    *,
    http_status: int | None = None,
    empty: Any = None,
) -> ResultRow:
    """The row of a request without an answer: ``status`` and why.

    >>> failed_row("missing", "result_file_gone", "gone").error_code
    'result_file_gone'
    """
    return _new(ResultRow, (status, http_status, code, message, *_NO_USAGE, empty))


def _undecodable(exc: msgspec.DecodeError, finish: str | None) -> tuple[str, str]:
    """(error_code, error_message) of an answer text that does not decode to the schema."""
    if isinstance(exc, msgspec.ValidationError):
        code, problem = "schema_mismatch", f"answer does not match the schema: {exc}"
    else:
        code, problem = "invalid_json", f"answer is not valid JSON: {exc}"
    if finish in ("length", "max_output_tokens"):
        problem += " (the answer was cut at max_tokens: retry_failed(..., max_tokens=) raises it)"
    return code, problem


# The error code of a line the batch's end left unrun -> its row's status
_ENDED_BY = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


def _no_response(line: Line, empty: Any) -> ResultRow:
    err = line.error
    if isinstance(err, str):
        return failed_row("failed", None, err, empty=empty)
    err = err.error or err if err is not None else None
    code = None if err is None or err.code is None else str(err.code)
    status = _ENDED_BY.get(code, "failed") if code is not None else "failed"
    msg = err.message if err is not None else "the line has neither a response nor an error"
    return failed_row(status, code, msg, empty=empty)


def _http_failure(resp: _Response, empty: Any, line_error: _Err | str | None = None) -> ResultRow:
    body = resp.body
    code: str | None = None
    if isinstance(body, _Body) and body.error is not None:
        e = body.error
        code, msg = (str(e.code) if e.code is not None else e.type), e.message
    elif isinstance(body, str):
        msg = body
    elif isinstance(line_error, str):  # vLLM run-batch: no body, the error beside it
        msg = line_error
    elif line_error is not None:
        e = line_error.error or line_error
        code, msg = (str(e.code) if e.code is not None else e.type), e.message
    else:
        msg = "the response has no body"
    return failed_row("failed", code, msg, http_status=resp.status_code, empty=empty)


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
