"""A Batch API test double for your own tests: the local OpenAI-compatible Files + Batches server,
with a configured ``openai.OpenAI`` client, faults, a movable clock and added latency.

    >>> from portfolio_batch.testing import local_batch_api
    >>> with local_batch_api(request_delay=0.01) as api:             # doctest: +SKIP
    ...     api.configure(fault_rate_429=0.2, seed=1)   # the SDK's retries must get through
    ...     my_code_that_runs_a_batch(api.client)
    ...     api.advance_clock(31 * 86400)               # a month later: the files are gone

In pytest, load the plugin (``pytest_plugins = ["portfolio_batch.testing.pytest_plugin"]`` in
your ``conftest.py``) and take the ``batch_api`` fixture; it also points ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` at the server, so code that makes its own ``OpenAI()`` uses it too.

``python -m portfolio_batch.testing.contract --base-url URL --api-key-env VAR`` checks any Batch
API (this one, OpenAI, a proxy) against OpenAI's published contract.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portfolio_batch._contract import TERMINAL

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

    from portfolio_batch.local import LocalServer

__all__ = ["BatchAPI", "local_batch_api"]


@dataclass
class BatchAPI:
    """A running local Batch API: ``client`` (``openai.OpenAI``, its key set), ``server``
    (``portfolio_batch.local.LocalServer``), and the knobs a test turns."""

    server: LocalServer
    client: openai.OpenAI

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return str(self.server.base_url)

    @property
    def api_key(self) -> str:
        """The key the server requires (random, made at start)."""
        return str(self.server.api_key)

    def env(self) -> dict[str, str]:
        """``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` for code (or a child process) that builds
        its own client."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}

    def configure(self, **settings: Any) -> None:
        """Change settings while it runs: faults (``fault_rate_429``, ``fault_rate_500``,
        ``fault_rate_lost_reply`` (carried out, then a 500), ``fault_endpoints``,
        ``cut_download_after_bytes``, ``malformed_output_rate``, ``seed``), ``latency``,
        ``request_delay``, ``completion_window_seconds``, the live API's quirks
        (``output_file_lag_polls``, ``empty_error_file_id``, ``max_batches_per_hour``,
        ``batch_usage_chat_fields``) and the rest of ``portfolio_batch.local.ServerConfig``."""
        self.server.configure(**settings)

    def advance_clock(self, seconds: float) -> None:
        """Move the server's clock forward (timestamps, the 24 h window, file expiry)."""
        self.server.configure(clock_offset=self.server.config.clock_offset + seconds)

    def wait(self, batch_id: str, *, timeout: float = 30.0) -> Batch:
        """Poll a batch until it ends (completed, failed, expired or cancelled); the SDK's Batch.

        A helper for test set-up; your own polling is what the test is usually about."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout} s")
            time.sleep(0.02)


@contextlib.contextmanager
def local_batch_api(
    *,
    engine: str = "rules",
    data_dir: str | Path | None = None,
    max_retries: int | None = None,
    **settings: Any,
) -> Iterator[BatchAPI]:
    """Start a local Batch API for a ``with`` block and yield it as a ``BatchAPI``.

    ``engine`` is ``rules`` (instant, deterministic), ``smollm2`` or ``package.module:factory``;
    ``data_dir`` defaults to a temporary directory removed afterwards; ``max_retries`` goes to
    the client (the SDK's default, 2, when None); ``settings`` are the server's (see
    ``BatchAPI.configure``).

    >>> with local_batch_api(latency=0.01) as api:                   # doctest: +SKIP
    ...     api.client.files.list().data
    []
    """
    from portfolio_batch.local import LocalServer

    server = LocalServer(engine=engine, data_dir=data_dir, **settings)
    server.start()
    try:
        options = {} if max_retries is None else {"max_retries": max_retries}
        yield BatchAPI(server=server, client=server.client(**options))
    finally:
        server.stop()
