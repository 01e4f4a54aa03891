"""One request to ``/v1/chat/completions``, ``/v1/embeddings`` or ``/v1/responses``, answered by an
engine and wrapped in OpenAI's response shape, with ``usage`` counted the way OpenAI counts it.

Both the synchronous routes and the batch worker go through ``Executor.run``, which returns
``(status_code, body, usage)``; a 4xx body is ``{"error": {...}}`` as the API would send it.

    >>> ex = Executor(load_engine("rules"), ServerConfig())            # doctest: +SKIP
    >>> status, body, usage = ex.run("/v1/chat/completions", {"model": "gpt-4o-mini",
    ...     "messages": [{"role": "user", "content": "hi"}]})          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.engines import Engine
from portfolio_batch.local.engines.process import EngineError
from portfolio_batch.local.store import ApiError
from portfolio_batch.tokens import (
    encoding_for_model,
    encoding_name_for_model,
    response_format_tokens,
)

__all__ = ["SUPPORTED_ENDPOINTS", "Executor", "Usage"]

SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def as_batch_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@lru_cache(maxsize=8192)
def _text_tokens(encoding: str, text: str) -> int:
    # The system prompt repeats on every line of a batch: counting it once saves most of the work.
    return len(encoding_for_model(_MODEL_FOR[encoding]).encode_ordinary(text))


_MODEL_FOR = {"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@lru_cache(maxsize=256)
def _format_tokens(response_format: str, model: str) -> int:
    return response_format_tokens(orjson.loads(response_format), model=model)


def count_prompt_tokens(
    messages: list[dict[str, Any]], model: str, response_format: Any = None
) -> int:
    """Same count as ``portfolio_batch.tokens.count_chat_tokens``, with a cache per text, plus
    the tokens of ``response_format``: the API bills a JSON schema as prompt tokens, and we count
    it as ``tokens.response_format_tokens`` does so estimates and actual usage agree."""
    encoding = encoding_name_for_model(model)
    total = 3
    if isinstance(response_format, dict):
        total += _format_tokens(orjson.dumps(response_format).decode(), model)
    for message in messages:
        total += 3
        for key, value in message.items():
            text = _content_text(value) if key == "content" else str(value)
            total += _text_tokens(encoding, text) if text else 0
            if key == "name":
                total += 1
    return total


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _check_chat_body(body: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("Missing required parameter: 'messages'.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise _bad(
                f"Invalid value for 'messages[{i}]': each message needs a 'role'.",
                param=f"messages[{i}]",
            )
    if body.get("stream"):
        raise _bad("The local server does not stream; set stream to false.", param="stream")
    return model, messages


def _max_tokens(body: dict[str, Any], key: str = "max_tokens") -> int | None:
    value = body.get("max_completion_tokens", body.get(key))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"Invalid '{key}': expected an integer of at least 1, got {value!r}.", param=key)
    return value


class Executor:
    """Runs requests on one engine under one server config."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config

    @property
    def context_tokens(self) -> int:
        return self.config.context_tokens or self.engine.context_tokens

    def run(self, endpoint: str, body: Any) -> tuple[int, dict[str, Any], Usage]:
        """Answer one request; a request-level error comes back as a 4xx/5xx body, not raised.
        A fatal ``EngineError`` (the engine keeps crashing) is raised: the caller stops."""
        try:
            if endpoint == "/v1/chat/completions":
                return self._chat(body)
            if endpoint == "/v1/embeddings":
                return self._embeddings(body)
            if endpoint == "/v1/responses":
                return self._responses(body)
            raise ApiError(
                404, f"The local server does not implement {endpoint}.", code="unknown_url"
            )
        except EngineError as exc:
            if exc.fatal:
                raise
            return exc.status, exc.body(), Usage()
        except ApiError as exc:
            return exc.status, exc.body(), Usage()

    # chat ----------------------------------------------------------------------------------
    def _complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        response_format: Any,
        max_tokens: int | None,
    ) -> tuple[str, str, Usage]:
        prompt_tokens = count_prompt_tokens(messages, model, response_format)
        limit = self.context_tokens
        if prompt_tokens > limit:
            raise _bad(
                f"This model's maximum context length is {limit} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > limit:
            raise _bad(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="messages",
                code="context_length_exceeded",
            )
        if response_format is not None and not isinstance(response_format, dict):
            raise _bad("Invalid 'response_format': expected an object.", param="response_format")
        content, finish_reason = self.engine.chat(
            messages, model=model, response_format=response_format, max_tokens=max_tokens
        )
        encoding = encoding_for_model(model)
        tokens = encoding.encode_ordinary(content)
        if max_tokens is not None and len(tokens) > max_tokens:
            # Cut like a model that ran out of tokens: the caller sees finish_reason "length".
            tokens = tokens[:max_tokens]
            content = encoding.decode(tokens)
            finish_reason = "length"
        return content, finish_reason, Usage(prompt_tokens, len(tokens))

    def _chat(self, body: Any) -> tuple[int, dict[str, Any], Usage]:
        model, messages = _check_chat_body(body)
        content, finish_reason, usage = self._complete(
            model, messages, body.get("response_format"), _max_tokens(body)
        )
        answer = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(self.config.now()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": f"fp_local_{self.engine.name}",
        }
        return 200, answer, usage

    # embeddings ----------------------------------------------------------------------------
    def _embeddings(self, body: Any) -> tuple[int, dict[str, Any], Usage]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _bad("you must provide a model parameter", param="model")
        raw = body.get("input")
        if isinstance(raw, str):
            inputs: list[Any] = [raw]
        elif isinstance(raw, list) and raw:
            inputs = [raw] if all(isinstance(x, int) for x in raw) else raw
        else:
            raise _bad("'input' must be a string or a non-empty array.", param="input")
        model = body["model"]
        dims = body.get("dimensions") or (3072 if "large" in model else 1536)
        if not isinstance(dims, int) or dims < 1:
            raise _bad(f"Invalid 'dimensions': {dims!r}.", param="dimensions")
        data = []
        tokens = 0
        encoding = encoding_name_for_model(model)
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else _text_tokens(encoding, text)
            rng = random.Random(hashlib.sha256(text.encode()).digest())
            vector = [rng.gauss(0.0, 1.0) for _ in range(dims)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            data.append(
                {"object": "embedding", "index": index, "embedding": [v / norm for v in vector]}
            )
        answer = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return 200, answer, Usage(tokens, 0)

    # responses -----------------------------------------------------------------------------
    def _responses(self, body: Any) -> tuple[int, dict[str, Any], Usage]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _bad("you must provide a model parameter", param="model")
        model = body["model"]
        messages: list[dict[str, Any]] = []
        if body.get("instructions"):
            messages.append({"role": "system", "content": str(body["instructions"])})
        raw = body.get("input")
        if isinstance(raw, str):
            messages.append({"role": "user", "content": raw})
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict) and "role" in item:
                    messages.append({"role": item["role"], "content": item.get("content", "")})
        if not messages:
            raise _bad("Missing required parameter: 'input'.", param="input")
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        response_format = None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            response_format = {
                "type": "json_schema",
                "json_schema": {"schema": fmt.get("schema", {})},
            }
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            response_format = {"type": "json_object"}
        max_tokens = _max_tokens({"max_tokens": body.get("max_output_tokens")}, "max_output_tokens")
        content, finish_reason, usage = self._complete(model, messages, response_format, max_tokens)
        answer = {
            "id": "resp_" + secrets.token_hex(24),
            "object": "response",
            "created_at": int(self.config.now()),
            "status": "completed" if finish_reason == "stop" else "incomplete",
            "incomplete_details": None
            if finish_reason == "stop"
            else {"reason": "max_output_tokens"},
            "error": None,
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + secrets.token_hex(24),
                    "status": "completed" if finish_reason == "stop" else "incomplete",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": content, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
        }
        return 200, answer, usage
