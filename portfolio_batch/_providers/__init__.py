"""Batch providers other than OpenAI's, each a ``Backend`` (``_protocol``) behind an
OpenAI-shaped client (``_facade.BatchClient``) so every helper runs unchanged on any of them.

    >>> from portfolio_batch._providers import provider_of
    >>> provider_of("claude-haiku-4-5")
    'anthropic'
"""

from __future__ import annotations

from portfolio_batch._providers._protocol import (
    PORTABLE_ID,
    Backend,
    BatchState,
    Limits,
    provider_of,
)

__all__ = ["PORTABLE_ID", "Backend", "BatchState", "Limits", "provider_of"]
