"""pytest fixtures for testing your own batch code against the local Batch API.

In your ``conftest.py``::

    pytest_plugins = ["portfolio_batch.testing.pytest_plugin"]

then::

    def test_my_batch_job(batch_api):
        batch_api.configure(fault_rate_500=0.2, seed=3)
        assert my_batch_job(batch_api.client) == ...

``batch_api`` is a ``portfolio_batch.testing.BatchAPI`` (a fresh server per test), with
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` pointing at it for the test's duration. Override the
``batch_api_settings`` fixture to start it with other settings (a slower ``request_delay``, the
``smollm2`` engine, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portfolio_batch.testing import BatchAPI, local_batch_api

__all__ = ["batch_api", "batch_api_settings"]


@pytest.fixture
def batch_api_settings() -> dict[str, Any]:
    """Keyword arguments of ``local_batch_api`` for the ``batch_api`` fixture; override it in
    a test module or conftest, e.g. ``return {"request_delay": 0.05}``."""
    return {}


@pytest.fixture
def batch_api(
    batch_api_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BatchAPI]:
    """A local Batch API for one test, with the environment pointing the SDK at it."""
    settings = {"data_dir": tmp_path / "batch-api", **batch_api_settings}
    with local_batch_api(**settings) as api:
        for name, value in api.env().items():
            monkeypatch.setenv(name, value)
        yield api
