"""Every batch provider as a ``Backend`` (``_protocol``): OpenAI's and the OpenAI-shaped ones
(Azure, Groq, the local server) in ``openai.py`` over the ``openai`` client the pipeline holds,
the others behind an OpenAI-shaped client (``_facade.BatchClient``) so every helper runs
unchanged on any of them. ``backend_of`` gives the Backend behind any client.

    >>> from portfolio_batch._providers import provider_of
    >>> provider_of("claude-haiku-4-5")
    'anthropic'
"""

from __future__ import annotations

from typing import Any

from portfolio_batch._providers._protocol import (
    PORTABLE_ID,
    Backend,
    BatchState,
    Limits,
    provider_of,
)

__all__ = ["PORTABLE_ID", "Backend", "BatchState", "Limits", "backend_of", "provider_of"]


def backend_of(client: Any) -> Backend:
    """The ``Backend`` behind a client the pipeline holds: a ``_facade.BatchClient``'s own, else
    (``openai.OpenAI``, ``AzureOpenAI``, Groq's client, the embedded local server's) an
    ``openai.OpenAIBackend`` over it.

        >>> import openai
        >>> backend_of(openai.OpenAI(api_key="sk-test")).name
        'openai'
    """
    inner = getattr(client, "backend", None)
    if inner is not None:  # a BatchClient
        found: Backend = inner
        return found
    from portfolio_batch._providers.openai import OpenAIBackend

    return OpenAIBackend(client)
